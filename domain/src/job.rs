//! The `Job` aggregate: one script or command for one agent, from queued to its outcome.
//!
//! A job is queued with a per-agent sequence number and a deadline, dispatched to the agent's
//! queue, *claimed* by the agent right before it runs (the claim is where the server decides,
//! once, whether the job may still run: not cancelled, not expired), and finished with a result.
//! Every step is an event with its actor, and every job ends in exactly one of succeeded,
//! failed, timed out, expired or cancelled.
//!
//! ```text
//! queued ──dispatched──▶ dispatched ──claim──▶ started ──▶ succeeded | failed | timed out
//!    │                       │
//!    └──── cancelled / expired (deadline passed before a claim) ────┘
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, BulkJobId, JobId};

/// Longest a job may be allowed to run.
pub const MAX_TIMEOUT_SECS: u32 = 7 * 24 * 3600;
/// Most arguments or environment variables a script may have.
pub const MAX_ARGS: usize = 256;

/// The program that runs a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpreter {
    /// POSIX `sh`.
    Sh,
    /// `bash`.
    Bash,
    /// `python3`.
    Python3,
    /// PowerShell (`pwsh`), where installed.
    Pwsh,
}

impl Interpreter {
    /// Parses the API name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sh" => Some(Self::Sh),
            "bash" => Some(Self::Bash),
            "python3" => Some(Self::Python3),
            "pwsh" => Some(Self::Pwsh),
            _ => None,
        }
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sh => "sh",
            Self::Bash => "bash",
            Self::Python3 => "python3",
            Self::Pwsh => "pwsh",
        }
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSpec {
    /// A script run by an interpreter.
    Script {
        /// The interpreter.
        interpreter: Interpreter,
        /// The script's text.
        body: String,
        /// Arguments passed to the script.
        args: Vec<String>,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
        /// Longest it may run before it is killed.
        timeout_secs: u32,
        /// Directory to run in (the agent's default when absent).
        working_dir: Option<String>,
    },
    /// One command line, run by the platform's shell.
    Command {
        /// The command line.
        command_line: String,
        /// Longest it may run before it is killed.
        timeout_secs: u32,
        /// Directory to run in.
        working_dir: Option<String>,
    },
}

/// What is wrong with a job's definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The script or command is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// The script is larger than allowed.
    #[error("body is {size} bytes; at most {limit} are allowed")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The timeout is zero or too long.
    #[error("timeout_secs must be between 1 and {MAX_TIMEOUT_SECS}")]
    Timeout,
    /// Too many arguments or variables, or an invalid variable name.
    #[error("{0}")]
    Invalid(String),
}

impl JobSpec {
    /// Checks the definition; `max_body` bounds the script or command size in bytes.
    pub fn validate(&self, max_body: usize) -> Result<(), SpecError> {
        let (text, what, timeout) = match self {
            JobSpec::Script {
                body,
                timeout_secs,
                args,
                env,
                ..
            } => {
                if args.len() > MAX_ARGS {
                    return Err(SpecError::Invalid(format!("at most {MAX_ARGS} args")));
                }
                if env.len() > MAX_ARGS {
                    return Err(SpecError::Invalid(format!(
                        "at most {MAX_ARGS} env variables"
                    )));
                }
                if let Some(bad) = env.keys().find(|k| {
                    k.is_empty()
                        || k.contains('=')
                        || k.contains('\0')
                        || k.chars().next().is_some_and(|c| c.is_ascii_digit())
                }) {
                    return Err(SpecError::Invalid(format!(
                        "env name {bad:?} is not a valid variable name"
                    )));
                }
                (body, "body", *timeout_secs)
            }
            JobSpec::Command {
                command_line,
                timeout_secs,
                ..
            } => (command_line, "command_line", *timeout_secs),
        };
        if text.trim().is_empty() {
            return Err(SpecError::Empty(what));
        }
        if text.len() > max_body {
            return Err(SpecError::TooLarge {
                size: text.len(),
                limit: max_body,
            });
        }
        if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
            return Err(SpecError::Timeout);
        }
        Ok(())
    }
}

/// How a job that ran ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The process's exit code (absent when it was killed or never started).
    pub exit_code: Option<i32>,
    /// Standard output, capped by the agent.
    pub stdout: String,
    /// Standard error, capped by the agent.
    pub stderr: String,
    /// Whether stdout was cut at the cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    pub stderr_truncated: bool,
    /// How long it ran.
    pub duration_ms: u64,
    /// When it finished (agent clock).
    pub finished_at: DateTime<Utc>,
    /// Why it failed without an exit code (could not start, agent restarted mid-run…).
    pub error: Option<String>,
}

/// How a job that ran ended, as reported by its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit code 0.
    Succeeded,
    /// Any other exit code, or could not run.
    Failed,
    /// Killed at its timeout.
    TimedOut,
}

/// Commands on a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCommand {
    /// Queues the job for its agent.
    QueueJob {
        /// The job's id.
        job_id: JobId,
        /// The agent that will run it.
        agent_id: AgentId,
        /// Its place in the agent's queue (1, 2, 3…).
        agent_seq: u64,
        /// What it runs.
        spec: JobSpec,
        /// When it expires if not started.
        deadline: DateTime<Utc>,
        /// The bulk job it belongs to, if any.
        bulk_id: Option<BulkJobId>,
        /// The largest script accepted, in bytes.
        max_body: usize,
        /// The server's current time.
        now: DateTime<Utc>,
    },
    /// Records that the job was handed to the transport.
    RecordDispatch {
        /// Its sequence in the transport's stream.
        stream_seq: u64,
    },
    /// The agent asks to start the job.
    ClaimJob {
        /// The agent asking.
        agent_id: AgentId,
        /// The server's current time.
        now: DateTime<Utc>,
    },
    /// The agent reports how the job ended.
    RecordResult {
        /// The agent reporting.
        agent_id: AgentId,
        /// How it ended.
        outcome: Outcome,
        /// The details.
        result: JobResult,
    },
    /// Expires the job if its deadline passed before it started.
    ExpireJob {
        /// The server's current time.
        now: DateTime<Utc>,
    },
    /// Cancels the job if it has not started.
    CancelJob,
}

/// Events of a job. Every event names the job's agent, so that its history can be placed on
/// the agent's timeline without looking anything up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEvent {
    /// The job was queued.
    JobQueued {
        /// Its id.
        job_id: JobId,
        /// Its agent.
        agent_id: AgentId,
        /// Its place in the agent's queue.
        agent_seq: u64,
        /// What it runs.
        spec: JobSpec,
        /// When it expires if not started.
        deadline: DateTime<Utc>,
        /// Its bulk job, if any.
        bulk_id: Option<BulkJobId>,
    },
    /// The job was published to the agent's queue.
    JobDispatched {
        /// Its agent.
        agent_id: AgentId,
        /// Its sequence in the transport's stream.
        stream_seq: u64,
    },
    /// The agent claimed the job and is running it.
    JobStarted {
        /// Its agent.
        agent_id: AgentId,
    },
    /// The job exited with code 0.
    JobSucceeded {
        /// Its agent.
        agent_id: AgentId,
        /// The details.
        result: JobResult,
    },
    /// The job failed.
    JobFailed {
        /// Its agent.
        agent_id: AgentId,
        /// The details.
        result: JobResult,
    },
    /// The job was killed at its timeout.
    JobTimedOut {
        /// Its agent.
        agent_id: AgentId,
        /// The details.
        result: JobResult,
    },
    /// The deadline passed before the job could start.
    JobExpired {
        /// Its agent.
        agent_id: AgentId,
        /// The deadline that passed.
        deadline: DateTime<Utc>,
    },
    /// An operator cancelled the job before it started.
    JobCancelled {
        /// Its agent.
        agent_id: AgentId,
    },
}

impl DomainEvent for JobEvent {
    fn event_type(&self) -> String {
        match self {
            JobEvent::JobQueued { .. } => "JobQueued",
            JobEvent::JobDispatched { .. } => "JobDispatched",
            JobEvent::JobStarted { .. } => "JobStarted",
            JobEvent::JobSucceeded { .. } => "JobSucceeded",
            JobEvent::JobFailed { .. } => "JobFailed",
            JobEvent::JobTimedOut { .. } => "JobTimedOut",
            JobEvent::JobExpired { .. } => "JobExpired",
            JobEvent::JobCancelled { .. } => "JobCancelled",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Why a job command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job id is taken.
    #[error("job already exists")]
    AlreadyExists,
    /// No such job.
    #[error("job not found")]
    NotFound,
    /// The definition is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// The deadline is not in the future.
    #[error("deadline must be in the future")]
    DeadlineInPast,
    /// The job belongs to another agent.
    #[error("job belongs to another agent")]
    WrongAgent,
    /// The job was cancelled.
    #[error("job was cancelled")]
    Cancelled,
    /// The job expired.
    #[error("job expired at {0}")]
    Expired(DateTime<Utc>),
    /// The job has already been claimed.
    #[error("job has already started")]
    AlreadyStarted,
    /// The job has already finished.
    #[error("job has already finished")]
    AlreadyFinished,
    /// A result arrived for a job that never started.
    #[error("job has not started")]
    NotStarted,
}

/// Where a job is in its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Not queued (no events).
    #[default]
    Unknown,
    /// Waiting for its agent.
    Queued,
    /// In the agent's queue.
    Dispatched,
    /// Running on the agent.
    Running,
    /// Exit code 0.
    Succeeded,
    /// Failed.
    Failed,
    /// Killed at its timeout.
    TimedOut,
    /// Deadline passed before it started.
    Expired,
    /// Cancelled before it started.
    Cancelled,
}

impl JobStatus {
    /// Whether the job can still start.
    pub fn is_pending(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Dispatched)
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded
                | JobStatus::Failed
                | JobStatus::TimedOut
                | JobStatus::Expired
                | JobStatus::Cancelled
        )
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Unknown => "unknown",
            JobStatus::Queued => "queued",
            JobStatus::Dispatched => "dispatched",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Expired => "expired",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// The state needed to decide job commands.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Job {
    status: JobStatus,
    agent_id: Option<AgentId>,
    deadline: Option<DateTime<Utc>>,
}

impl Job {
    /// Where the job is.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// Its agent.
    pub fn agent_id(&self) -> Option<AgentId> {
        self.agent_id
    }

    fn agent(&self) -> Result<AgentId, JobError> {
        self.agent_id.ok_or(JobError::NotFound)
    }

    fn refuse_unless_pending(&self) -> Result<(), JobError> {
        match self.status {
            JobStatus::Unknown => Err(JobError::NotFound),
            JobStatus::Queued | JobStatus::Dispatched => Ok(()),
            JobStatus::Running => Err(JobError::AlreadyStarted),
            JobStatus::Cancelled => Err(JobError::Cancelled),
            JobStatus::Expired => Err(JobError::Expired(self.deadline.unwrap_or_default())),
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::TimedOut => {
                Err(JobError::AlreadyFinished)
            }
        }
    }
}

impl Aggregate for Job {
    const TYPE: &'static str = "job";
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            JobCommand::QueueJob {
                job_id,
                agent_id,
                agent_seq,
                spec,
                deadline,
                bulk_id,
                max_body,
                now,
            } => {
                if self.status != JobStatus::Unknown {
                    return Err(JobError::AlreadyExists);
                }
                spec.validate(max_body)?;
                if deadline <= now {
                    return Err(JobError::DeadlineInPast);
                }
                JobEvent::JobQueued {
                    job_id,
                    agent_id,
                    agent_seq,
                    spec,
                    deadline,
                    bulk_id,
                }
            }
            JobCommand::RecordDispatch { stream_seq } => {
                // Dispatch is at-least-once: a second record, or one that arrives after the
                // agent already claimed the job, changes nothing.
                if self.status != JobStatus::Queued {
                    return Ok(());
                }
                JobEvent::JobDispatched {
                    agent_id: self.agent()?,
                    stream_seq,
                }
            }
            JobCommand::ClaimJob { agent_id, now } => {
                if self.agent_id.is_some_and(|a| a != agent_id) {
                    return Err(JobError::WrongAgent);
                }
                self.refuse_unless_pending()?;
                let deadline = self.deadline.unwrap_or_default();
                if now >= deadline {
                    // The claim itself settles the expiry; the caller sees the event.
                    JobEvent::JobExpired { agent_id, deadline }
                } else {
                    JobEvent::JobStarted { agent_id }
                }
            }
            JobCommand::RecordResult {
                agent_id,
                outcome,
                result,
            } => {
                if self.agent_id.is_some_and(|a| a != agent_id) {
                    return Err(JobError::WrongAgent);
                }
                match self.status {
                    JobStatus::Unknown => return Err(JobError::NotFound),
                    JobStatus::Running => {}
                    // The agent re-sent a result that was already recorded.
                    JobStatus::Succeeded | JobStatus::Failed | JobStatus::TimedOut => {
                        return Err(JobError::AlreadyFinished);
                    }
                    _ => return Err(JobError::NotStarted),
                }
                match outcome {
                    Outcome::Succeeded => JobEvent::JobSucceeded { agent_id, result },
                    Outcome::Failed => JobEvent::JobFailed { agent_id, result },
                    Outcome::TimedOut => JobEvent::JobTimedOut { agent_id, result },
                }
            }
            JobCommand::ExpireJob { now } => {
                self.refuse_unless_pending()?;
                let deadline = self.deadline.unwrap_or_default();
                if now < deadline {
                    return Ok(());
                }
                JobEvent::JobExpired {
                    agent_id: self.agent()?,
                    deadline,
                }
            }
            JobCommand::CancelJob => {
                self.refuse_unless_pending()?;
                JobEvent::JobCancelled {
                    agent_id: self.agent()?,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.status = match event {
            JobEvent::JobQueued {
                agent_id, deadline, ..
            } => {
                self.agent_id = Some(agent_id);
                self.deadline = Some(deadline);
                JobStatus::Queued
            }
            JobEvent::JobDispatched { .. } => JobStatus::Dispatched,
            JobEvent::JobStarted { .. } => JobStatus::Running,
            JobEvent::JobSucceeded { .. } => JobStatus::Succeeded,
            JobEvent::JobFailed { .. } => JobStatus::Failed,
            JobEvent::JobTimedOut { .. } => JobStatus::TimedOut,
            JobEvent::JobExpired { .. } => JobStatus::Expired,
            JobEvent::JobCancelled { .. } => JobStatus::Cancelled,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type Given = TestFramework<Job>;
    const JOB: JobId = JobId::from_uuid(Uuid::from_u128(1));
    const AGENT: AgentId = AgentId::from_uuid(Uuid::from_u128(2));
    const OTHER: AgentId = AgentId::from_uuid(Uuid::from_u128(3));

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, hour, 0, 0)
            .single()
            .expect("time")
    }

    fn spec() -> JobSpec {
        JobSpec::Command {
            command_line: "echo hi".into(),
            timeout_secs: 60,
            working_dir: None,
        }
    }

    fn queued() -> JobEvent {
        JobEvent::JobQueued {
            job_id: JOB,
            agent_id: AGENT,
            agent_seq: 1,
            spec: spec(),
            deadline: at(12),
            bulk_id: None,
        }
    }

    fn result() -> JobResult {
        JobResult {
            exit_code: Some(0),
            stdout: "hi\n".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 5,
            finished_at: at(11),
            error: None,
        }
    }

    fn queue(spec: JobSpec, deadline: DateTime<Utc>) -> JobCommand {
        JobCommand::QueueJob {
            job_id: JOB,
            agent_id: AGENT,
            agent_seq: 1,
            spec,
            deadline,
            bulk_id: None,
            max_body: 1024,
            now: at(10),
        }
    }

    #[test]
    fn a_valid_job_is_queued() {
        Given::with(())
            .given_no_previous_events()
            .when(queue(spec(), at(12)))
            .then_expect_events(vec![queued()]);
    }

    #[test]
    fn bad_definitions_and_past_deadlines_are_refused() {
        Given::with(())
            .given_no_previous_events()
            .when(queue(spec(), at(9)))
            .then_expect_error(JobError::DeadlineInPast);
        let empty = JobSpec::Command {
            command_line: "  ".into(),
            timeout_secs: 60,
            working_dir: None,
        };
        Given::with(())
            .given_no_previous_events()
            .when(queue(empty, at(12)))
            .then_expect_error(JobError::InvalidSpec(SpecError::Empty("command_line")));
        let big = JobSpec::Script {
            interpreter: Interpreter::Sh,
            body: "x".repeat(2000),
            args: vec![],
            env: BTreeMap::new(),
            timeout_secs: 60,
            working_dir: None,
        };
        Given::with(())
            .given_no_previous_events()
            .when(queue(big, at(12)))
            .then_expect_error(JobError::InvalidSpec(SpecError::TooLarge {
                size: 2000,
                limit: 1024,
            }));
        let no_timeout = JobSpec::Command {
            command_line: "x".into(),
            timeout_secs: 0,
            working_dir: None,
        };
        Given::with(())
            .given_no_previous_events()
            .when(queue(no_timeout, at(12)))
            .then_expect_error(JobError::InvalidSpec(SpecError::Timeout));
    }

    #[test]
    fn a_claim_before_the_deadline_starts_the_job_once() {
        Given::with(())
            .given(vec![queued()])
            .when(JobCommand::ClaimJob {
                agent_id: AGENT,
                now: at(11),
            })
            .then_expect_events(vec![JobEvent::JobStarted { agent_id: AGENT }]);
        Given::with(())
            .given(vec![queued(), JobEvent::JobStarted { agent_id: AGENT }])
            .when(JobCommand::ClaimJob {
                agent_id: AGENT,
                now: at(11),
            })
            .then_expect_error(JobError::AlreadyStarted);
    }

    #[test]
    fn a_claim_after_the_deadline_expires_the_job() {
        Given::with(())
            .given(vec![
                queued(),
                JobEvent::JobDispatched {
                    agent_id: AGENT,
                    stream_seq: 7,
                },
            ])
            .when(JobCommand::ClaimJob {
                agent_id: AGENT,
                now: at(12),
            })
            .then_expect_events(vec![JobEvent::JobExpired {
                agent_id: AGENT,
                deadline: at(12),
            }]);
    }

    #[test]
    fn another_agent_can_neither_claim_nor_report() {
        Given::with(())
            .given(vec![queued()])
            .when(JobCommand::ClaimJob {
                agent_id: OTHER,
                now: at(11),
            })
            .then_expect_error(JobError::WrongAgent);
        Given::with(())
            .given(vec![queued(), JobEvent::JobStarted { agent_id: AGENT }])
            .when(JobCommand::RecordResult {
                agent_id: OTHER,
                outcome: Outcome::Succeeded,
                result: result(),
            })
            .then_expect_error(JobError::WrongAgent);
    }

    #[test]
    fn a_cancelled_job_cannot_be_claimed() {
        Given::with(())
            .given(vec![queued()])
            .when(JobCommand::CancelJob)
            .then_expect_events(vec![JobEvent::JobCancelled { agent_id: AGENT }]);
        Given::with(())
            .given(vec![queued(), JobEvent::JobCancelled { agent_id: AGENT }])
            .when(JobCommand::ClaimJob {
                agent_id: AGENT,
                now: at(11),
            })
            .then_expect_error(JobError::Cancelled);
        Given::with(())
            .given(vec![queued(), JobEvent::JobStarted { agent_id: AGENT }])
            .when(JobCommand::CancelJob)
            .then_expect_error(JobError::AlreadyStarted);
    }

    #[test]
    fn results_are_recorded_once_and_only_for_started_jobs() {
        Given::with(())
            .given(vec![queued(), JobEvent::JobStarted { agent_id: AGENT }])
            .when(JobCommand::RecordResult {
                agent_id: AGENT,
                outcome: Outcome::Succeeded,
                result: result(),
            })
            .then_expect_events(vec![JobEvent::JobSucceeded {
                agent_id: AGENT,
                result: result(),
            }]);
        Given::with(())
            .given(vec![
                queued(),
                JobEvent::JobStarted { agent_id: AGENT },
                JobEvent::JobSucceeded {
                    agent_id: AGENT,
                    result: result(),
                },
            ])
            .when(JobCommand::RecordResult {
                agent_id: AGENT,
                outcome: Outcome::Succeeded,
                result: result(),
            })
            .then_expect_error(JobError::AlreadyFinished);
        Given::with(())
            .given(vec![queued()])
            .when(JobCommand::RecordResult {
                agent_id: AGENT,
                outcome: Outcome::Failed,
                result: result(),
            })
            .then_expect_error(JobError::NotStarted);
    }

    #[test]
    fn dispatch_records_are_idempotent_and_expiry_waits_for_the_deadline() {
        Given::with(())
            .given(vec![
                queued(),
                JobEvent::JobDispatched {
                    agent_id: AGENT,
                    stream_seq: 1,
                },
            ])
            .when(JobCommand::RecordDispatch { stream_seq: 1 })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![queued()])
            .when(JobCommand::ExpireJob { now: at(11) })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![queued()])
            .when(JobCommand::ExpireJob { now: at(13) })
            .then_expect_events(vec![JobEvent::JobExpired {
                agent_id: AGENT,
                deadline: at(12),
            }]);
    }
}
