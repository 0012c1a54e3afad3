//! The `BulkJob` aggregate: one request that targets many agents, tracked as a unit.
//!
//! The targets are resolved by the gateway when the bulk job is issued and recorded in
//! [`BulkJobEvent::BulkJobIssued`], so an auditor sees exactly which agents were meant, whatever
//! the fleet looks like later. Each target gets its own [`crate::job::Job`] (queued in the same
//! transaction); the bulk job records the operator's follow-ups: cancelling what has not run,
//! retrying what failed.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, BulkJobId, ClientId, JobId, SiteId};
use crate::job::JobSpec;

/// Which agents a bulk job targets; every given condition must hold, none given means all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkTarget {
    /// Only this client's agents.
    pub client_id: Option<ClientId>,
    /// Only this site's agents.
    pub site_id: Option<SiteId>,
    /// Only these agents.
    pub agent_ids: Option<Vec<AgentId>>,
    /// Only this OS family.
    pub os: Option<String>,
}

/// One agent's job within a bulk job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkMember {
    /// The agent.
    pub agent_id: AgentId,
    /// Its job.
    pub job_id: JobId,
}

/// Commands on a bulk job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once per request and moved, never stored in bulk"
)]
pub enum BulkJobCommand {
    /// Issues the bulk job to its resolved members.
    IssueBulkJob {
        /// Its id.
        bulk_id: BulkJobId,
        /// What was asked for.
        target: BulkTarget,
        /// The agents it resolved to, each with its job id.
        members: Vec<BulkMember>,
        /// What every job runs.
        spec: JobSpec,
        /// When the jobs expire if not started.
        deadline: DateTime<Utc>,
    },
    /// Records that the jobs that had not started were cancelled.
    CancelRemaining {
        /// The jobs cancelled.
        cancelled: Vec<JobId>,
    },
    /// Records new jobs for members whose job failed.
    RetryFailed {
        /// Old job → new job, per agent.
        retries: Vec<BulkRetry>,
    },
}

/// A retried member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRetry {
    /// The agent.
    pub agent_id: AgentId,
    /// The job that failed.
    pub failed_job_id: JobId,
    /// The job queued in its place.
    pub new_job_id: JobId,
}

/// Events of a bulk job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[expect(
    clippy::large_enum_variant,
    reason = "decided once and serialized, never stored in bulk"
)]
pub enum BulkJobEvent {
    /// The bulk job was issued.
    BulkJobIssued {
        /// Its id.
        bulk_id: BulkJobId,
        /// What was asked for.
        target: BulkTarget,
        /// The agents it resolved to.
        members: Vec<BulkMember>,
        /// What every job runs.
        spec: JobSpec,
        /// When the jobs expire if not started.
        deadline: DateTime<Utc>,
    },
    /// An operator cancelled the jobs that had not started.
    BulkJobRemainingCancelled {
        /// The jobs cancelled.
        cancelled: Vec<JobId>,
    },
    /// An operator retried the failed jobs.
    BulkJobFailedRetried {
        /// What was retried.
        retries: Vec<BulkRetry>,
    },
}

impl DomainEvent for BulkJobEvent {
    fn event_type(&self) -> String {
        match self {
            BulkJobEvent::BulkJobIssued { .. } => "BulkJobIssued",
            BulkJobEvent::BulkJobRemainingCancelled { .. } => "BulkJobRemainingCancelled",
            BulkJobEvent::BulkJobFailedRetried { .. } => "BulkJobFailedRetried",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Why a bulk job command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkJobError {
    /// The id is taken.
    #[error("bulk job already exists")]
    AlreadyExists,
    /// No such bulk job.
    #[error("bulk job not found")]
    NotFound,
    /// The target matched no agent.
    #[error("the target matches no agent")]
    NoTargets,
    /// Nothing to cancel or retry.
    #[error("nothing to {0}")]
    NothingTo(&'static str),
}

/// The state needed to decide bulk job commands.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BulkJob {
    issued: bool,
    spec: Option<JobSpec>,
    deadline: Option<DateTime<Utc>>,
}

impl BulkJob {
    /// What every job of the bulk job runs, once issued.
    pub fn spec(&self) -> Option<&JobSpec> {
        self.spec.as_ref()
    }

    /// The deadline the jobs were issued with.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline
    }
}

impl Aggregate for BulkJob {
    const TYPE: &'static str = "bulk_job";
    type Command = BulkJobCommand;
    type Event = BulkJobEvent;
    type Error = BulkJobError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            BulkJobCommand::IssueBulkJob {
                bulk_id,
                target,
                members,
                spec,
                deadline,
            } => {
                if self.issued {
                    return Err(BulkJobError::AlreadyExists);
                }
                if members.is_empty() {
                    return Err(BulkJobError::NoTargets);
                }
                BulkJobEvent::BulkJobIssued {
                    bulk_id,
                    target,
                    members,
                    spec,
                    deadline,
                }
            }
            BulkJobCommand::CancelRemaining { cancelled } => {
                if !self.issued {
                    return Err(BulkJobError::NotFound);
                }
                if cancelled.is_empty() {
                    return Err(BulkJobError::NothingTo("cancel"));
                }
                BulkJobEvent::BulkJobRemainingCancelled { cancelled }
            }
            BulkJobCommand::RetryFailed { retries } => {
                if !self.issued {
                    return Err(BulkJobError::NotFound);
                }
                if retries.is_empty() {
                    return Err(BulkJobError::NothingTo("retry"));
                }
                BulkJobEvent::BulkJobFailedRetried { retries }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let BulkJobEvent::BulkJobIssued { spec, deadline, .. } = event {
            self.issued = true;
            self.spec = Some(spec);
            self.deadline = Some(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    fn spec() -> JobSpec {
        JobSpec::Command {
            command_line: "uptime".into(),
            timeout_secs: 30,
            working_dir: None,
        }
    }

    fn deadline() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn a_bulk_job_needs_targets_and_is_issued_once() {
        let bulk_id = BulkJobId::from(Uuid::from_u128(1));
        let member = BulkMember {
            agent_id: AgentId::from(Uuid::from_u128(2)),
            job_id: JobId::from(Uuid::from_u128(3)),
        };
        let issue = |members: Vec<BulkMember>| BulkJobCommand::IssueBulkJob {
            bulk_id,
            target: BulkTarget::default(),
            members,
            spec: spec(),
            deadline: deadline(),
        };
        TestFramework::<BulkJob>::with(())
            .given_no_previous_events()
            .when(issue(vec![]))
            .then_expect_error(BulkJobError::NoTargets);
        let issued = BulkJobEvent::BulkJobIssued {
            bulk_id,
            target: BulkTarget::default(),
            members: vec![member],
            spec: spec(),
            deadline: deadline(),
        };
        TestFramework::<BulkJob>::with(())
            .given_no_previous_events()
            .when(issue(vec![member]))
            .then_expect_events(vec![issued.clone()]);
        TestFramework::<BulkJob>::with(())
            .given(vec![issued])
            .when(issue(vec![member]))
            .then_expect_error(BulkJobError::AlreadyExists);
    }

    #[test]
    fn follow_ups_need_an_issued_bulk_job_and_something_to_do() {
        TestFramework::<BulkJob>::with(())
            .given_no_previous_events()
            .when(BulkJobCommand::CancelRemaining {
                cancelled: vec![JobId::from(Uuid::from_u128(9))],
            })
            .then_expect_error(BulkJobError::NotFound);
        TestFramework::<BulkJob>::with(())
            .given(vec![BulkJobEvent::BulkJobIssued {
                bulk_id: BulkJobId::from(Uuid::from_u128(1)),
                target: BulkTarget::default(),
                members: vec![],
                spec: spec(),
                deadline: deadline(),
            }])
            .when(BulkJobCommand::RetryFailed { retries: vec![] })
            .then_expect_error(BulkJobError::NothingTo("retry"));
    }
}
