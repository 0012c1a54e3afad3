//! Jobs: scripts and commands for agents, delivered through NATS JetStream.
//!
//! Postgres is the system of record and JetStream the transport (docs/adr/0004):
//!
//! - [`Commands`] gains the job actions here: queue (one agent or many), cancel, retry, and the
//!   two the agents drive, claim and result.
//! - [`dispatch`] tails the log and publishes each queued job to its agent's subject, moving its
//!   checkpoint only after JetStream acknowledged.
//! - [`claims`] answers agents' claims (may this job still run?), [`results`] records the results
//!   they publish, [`expiry`] expires jobs whose deadline passed unclaimed.
//! - [`transport`] owns the streams and consumers; [`nats_auth`] issues each agent's NATS
//!   identity.

pub mod claims;
pub mod dispatch;
pub mod expiry;
pub mod nats_auth;
pub mod results;
pub mod transport;

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use logbook_domain::agent::{Agent, AgentLifecycle};
use logbook_domain::bulk_job::{
    BulkJob, BulkJobCommand, BulkJobError, BulkMember, BulkRetry, BulkTarget,
};
use logbook_domain::ids::{AgentId, BulkJobId, JobId};
use logbook_domain::job::{Job, JobCommand, JobError, JobEvent, JobResult, JobSpec, Outcome};
use logbook_domain::metadata::Actor;
use sqlx::Row;
use uuid::Uuid;

use crate::commands::{CommandError, Commands, Ctx, Executed, Rejection, decide};
use crate::store::{Conflicts, EventStore, Loaded, NewEvent, StoreError};

impl Rejection for JobError {
    fn into_command_error(self) -> CommandError {
        match self {
            JobError::NotFound => CommandError::NotFound(self.to_string()),
            JobError::InvalidSpec(e) => CommandError::Invalid {
                field: Some(match e {
                    logbook_domain::job::SpecError::Empty(field) => field,
                    logbook_domain::job::SpecError::TooLarge { .. } => "body",
                    logbook_domain::job::SpecError::Timeout => "timeout_secs",
                    logbook_domain::job::SpecError::Invalid(_) => "script",
                }),
                message: e.to_string(),
            },
            JobError::DeadlineInPast => CommandError::Invalid {
                field: Some("deadline"),
                message: self.to_string(),
            },
            JobError::WrongAgent => CommandError::NotFound("job not found".into()),
            JobError::AlreadyExists
            | JobError::Cancelled
            | JobError::Expired(_)
            | JobError::AlreadyStarted
            | JobError::AlreadyFinished
            | JobError::NotStarted => CommandError::Conflict(self.to_string()),
        }
    }
}

impl Rejection for BulkJobError {
    fn into_command_error(self) -> CommandError {
        match self {
            BulkJobError::NotFound => CommandError::NotFound(self.to_string()),
            BulkJobError::NoTargets => CommandError::Invalid {
                field: Some("target"),
                message: self.to_string(),
            },
            BulkJobError::AlreadyExists | BulkJobError::NothingTo(_) => {
                CommandError::Conflict(self.to_string())
            }
        }
    }
}

/// A queued job.
#[derive(Debug, Clone, Copy)]
pub struct QueuedJob {
    /// Its id.
    pub job_id: JobId,
    /// Its place in the agent's queue.
    pub agent_seq: u64,
    /// When it expires if not started.
    pub deadline: DateTime<Utc>,
}

/// An agent's claim of one of its jobs.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The agent that claims.
    pub agent_id: AgentId,
    /// The job it claims.
    pub job_id: JobId,
    /// The agent's token for this delivery of the job, repeated when it asks again without an
    /// answer; `None` from an agent that sends none.
    pub attempt: Option<String>,
}

impl ClaimRequest {
    /// The request id recorded with a granted claim: the same for every question of one
    /// attempt, which is how a repeated question is told from a claim by another attempt.
    fn request_id(&self) -> String {
        match &self.attempt {
            Some(attempt) => format!("claim-{}-{attempt}", self.job_id),
            None => format!("claim-{}", self.job_id),
        }
    }
}

/// Whether `attempt` is a usable claim attempt token: 1 to 64 ASCII letters, digits and dashes.
pub fn valid_attempt(attempt: &str) -> bool {
    (1..=64).contains(&attempt.len())
        && attempt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A result an agent reported.
#[derive(Debug, Clone)]
pub struct ReportedResult {
    /// The agent that reported it.
    pub agent_id: AgentId,
    /// Its job.
    pub job_id: JobId,
    /// How the job ended.
    pub outcome: Outcome,
    /// Exit code, output and timing.
    pub result: JobResult,
}

/// What the server says to an agent's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Run it.
    Run,
    /// It was cancelled.
    Cancelled,
    /// Its deadline passed (now recorded).
    Expired,
    /// It was already claimed by another attempt (or by an agent that sends no attempt).
    AlreadyStarted,
    /// It already has a result.
    Finished,
    /// Not this agent's job, or no such job.
    Refused,
}

/// What happened to a reported result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultOutcome {
    /// Recorded now.
    Recorded,
    /// Already recorded before (a re-sent result).
    Duplicate,
    /// Refused and recorded nowhere: unknown job, another agent's job, or one never claimed.
    Rejected(String),
}

impl Commands {
    async fn require_active_agent(&self, agent_id: AgentId) -> Result<(), CommandError> {
        let agent = self.store().load::<Agent>(&agent_id.to_string()).await?;
        match agent.state.lifecycle() {
            AgentLifecycle::Active => Ok(()),
            AgentLifecycle::Unknown => Err(CommandError::NotFound(format!(
                "agent {agent_id} not found"
            ))),
            AgentLifecycle::Decommissioned => Err(CommandError::Conflict(format!(
                "agent {agent_id} is decommissioned"
            ))),
        }
    }

    /// Queues a job for one agent.
    pub async fn queue_job(
        &self,
        ctx: &Ctx,
        agent_id: AgentId,
        spec: JobSpec,
        deadline: DateTime<Utc>,
        max_body: usize,
    ) -> Result<QueuedJob, CommandError> {
        self.require_active_agent(agent_id).await?;
        // Validate before taking a sequence number, so a refused job leaves no trace.
        spec.validate(max_body)
            .map_err(|e| JobError::InvalidSpec(e).into_command_error())?;
        let now = Utc::now();
        if deadline <= now {
            return Err(JobError::DeadlineInPast.into_command_error());
        }
        let job_id = JobId::from(Uuid::now_v7());
        let mut tx = self.store().pool().begin().await?;
        // The counter row's lock orders two queue operations for one agent: the second waits for
        // the first to commit, so agent order and log order agree (docs/adr/0004).
        let agent_seq: i64 = sqlx::query_scalar(
            "INSERT INTO agent_job_sequences (agent_id, last_seq) VALUES ($1, 1) \
             ON CONFLICT (agent_id) DO UPDATE SET last_seq = agent_job_sequences.last_seq + 1 RETURNING last_seq",
        )
        .bind(agent_id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        let mut job = Loaded::<Job>::default();
        let events = decide(
            &mut job,
            JobCommand::QueueJob {
                job_id,
                agent_id,
                agent_seq: agent_seq as u64,
                spec,
                deadline,
                bulk_id: None,
                max_body,
                now,
            },
        )
        .await?;
        EventStore::append::<Job>(&mut tx, &job_id.to_string(), 0, &events, &ctx.metadata(now))
            .await?;
        self.commit(tx, events.iter().map(DomainEvent::event_type))
            .await?;
        Ok(QueuedJob {
            job_id,
            agent_seq: agent_seq as u64,
            deadline,
        })
    }

    /// Issues one job to each of `agents` (already resolved from `target`), as one bulk job, in
    /// one transaction.
    pub async fn queue_bulk_job(
        &self,
        ctx: &Ctx,
        target: BulkTarget,
        agents: Vec<AgentId>,
        spec: JobSpec,
        deadline: DateTime<Utc>,
        max_body: usize,
    ) -> Result<(BulkJobId, Vec<BulkMember>), CommandError> {
        spec.validate(max_body)
            .map_err(|e| JobError::InvalidSpec(e).into_command_error())?;
        let now = Utc::now();
        if deadline <= now {
            return Err(JobError::DeadlineInPast.into_command_error());
        }
        let bulk_id = BulkJobId::from(Uuid::now_v7());
        let members: Vec<BulkMember> = agents
            .iter()
            .map(|agent_id| BulkMember {
                agent_id: *agent_id,
                job_id: JobId::from(Uuid::now_v7()),
            })
            .collect();
        let mut bulk = Loaded::<BulkJob>::default();
        let bulk_events = decide(
            &mut bulk,
            BulkJobCommand::IssueBulkJob {
                bulk_id,
                target,
                members: members.clone(),
                spec: spec.clone(),
                deadline,
            },
        )
        .await?;
        let metadata = ctx.metadata(now);
        let mut tx = self.store().pool().begin().await?;
        let sequences = take_sequences(&mut tx, &agents).await?;
        let mut rows =
            NewEvent::for_aggregate::<BulkJob>(&bulk_id.to_string(), 0, &bulk_events, &metadata)?;
        let template = MemberTemplate {
            spec: &spec,
            deadline,
            bulk_id,
            max_body,
            now,
        };
        for member in &members {
            rows.extend(
                template
                    .queued_rows(member.job_id, member.agent_id, &sequences, &metadata)
                    .await?,
            );
        }
        EventStore::append_rows(&mut tx, &rows, Conflicts::Fail).await?;
        self.commit(tx, rows.iter().map(|row| &row.event_type))
            .await?;
        Ok((bulk_id, members))
    }

    /// Cancels a job that has not started.
    pub async fn cancel_job(&self, ctx: &Ctx, job_id: JobId) -> Result<(), CommandError> {
        self.execute_job(ctx, job_id, JobCommand::CancelJob)
            .await
            .map(drop)
    }

    /// Cancels the given pending jobs of a bulk job; returns the ones actually cancelled (the
    /// others started or ended meanwhile).
    pub async fn cancel_bulk_remaining(
        &self,
        ctx: &Ctx,
        bulk_id: BulkJobId,
        pending: Vec<JobId>,
    ) -> Result<Vec<JobId>, CommandError> {
        self.require_bulk(bulk_id).await?;
        let mut cancelled = Vec::new();
        for job_id in pending {
            match self.execute_job(ctx, job_id, JobCommand::CancelJob).await {
                Ok(_) => cancelled.push(job_id),
                Err(CommandError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if !cancelled.is_empty() {
            self.execute_bulk(
                ctx,
                bulk_id,
                BulkJobCommand::CancelRemaining {
                    cancelled: cancelled.clone(),
                },
            )
            .await?;
        }
        Ok(cancelled)
    }

    /// Queues a new job for each failed member of a bulk job.
    pub async fn retry_bulk_failed(
        &self,
        ctx: &Ctx,
        bulk_id: BulkJobId,
        failed: Vec<(AgentId, JobId)>,
        default_deadline: chrono::Duration,
        max_body: usize,
    ) -> Result<Vec<BulkRetry>, CommandError> {
        let bulk = self.require_bulk(bulk_id).await?;
        let spec = bulk
            .state
            .spec()
            .cloned()
            .ok_or_else(|| CommandError::NotFound("bulk job not found".into()))?;
        if failed.is_empty() {
            return Err(BulkJobError::NothingTo("retry").into_command_error());
        }
        let now = Utc::now();
        let deadline = now + default_deadline;
        let retries: Vec<BulkRetry> = failed
            .iter()
            .map(|(agent_id, failed_job_id)| BulkRetry {
                agent_id: *agent_id,
                failed_job_id: *failed_job_id,
                new_job_id: JobId::from(Uuid::now_v7()),
            })
            .collect();
        let metadata = ctx.metadata(now);
        let mut tx = self.store().pool().begin().await?;
        let agents: Vec<AgentId> = retries.iter().map(|r| r.agent_id).collect();
        let sequences = take_sequences(&mut tx, &agents).await?;
        let mut bulk = bulk;
        let bulk_events = decide(
            &mut bulk,
            BulkJobCommand::RetryFailed {
                retries: retries.clone(),
            },
        )
        .await?;
        let mut rows = NewEvent::for_aggregate::<BulkJob>(
            &bulk_id.to_string(),
            bulk.version,
            &bulk_events,
            &metadata,
        )?;
        let template = MemberTemplate {
            spec: &spec,
            deadline,
            bulk_id,
            max_body,
            now,
        };
        for retry in &retries {
            rows.extend(
                template
                    .queued_rows(retry.new_job_id, retry.agent_id, &sequences, &metadata)
                    .await?,
            );
        }
        EventStore::append_rows(&mut tx, &rows, Conflicts::Fail).await?;
        self.commit(tx, rows.iter().map(|row| &row.event_type))
            .await?;
        Ok(retries)
    }

    async fn require_bulk(&self, bulk_id: BulkJobId) -> Result<Loaded<BulkJob>, CommandError> {
        let bulk = self.store().load::<BulkJob>(&bulk_id.to_string()).await?;
        if bulk.version == 0 {
            return Err(CommandError::NotFound(format!(
                "bulk job {bulk_id} not found"
            )));
        }
        Ok(bulk)
    }

    async fn execute_bulk(
        &self,
        ctx: &Ctx,
        bulk_id: BulkJobId,
        command: BulkJobCommand,
    ) -> Result<(), CommandError> {
        self.execute::<BulkJob>(ctx, &bulk_id.to_string(), command)
            .await
            .map(drop)
    }

    async fn execute_job(
        &self,
        ctx: &Ctx,
        job_id: JobId,
        command: JobCommand,
    ) -> Result<Vec<JobEvent>, CommandError> {
        self.execute::<Job>(ctx, &job_id.to_string(), command).await
    }

    /// An agent asks to start one of its jobs; the answer is final.
    pub async fn claim_job(
        &self,
        agent_id: AgentId,
        job_id: JobId,
        attempt: Option<&str>,
    ) -> Result<Claim, CommandError> {
        let answers = self
            .claim_jobs(vec![ClaimRequest {
                agent_id,
                job_id,
                attempt: attempt.map(str::to_string),
            }])
            .await?;
        only_answer(answers)
    }

    /// Answers many claims with one load and one insert (see [`Commands::try_execute_batch`]); the
    /// answers come back in the order of `claims`. `Err` means none was recorded.
    ///
    /// A claim of a job that already started is granted again when it repeats the attempt the
    /// job was started by (its answer was lost on the way, so the agent asked again); the start
    /// is not recorded twice. Any other claim of a started job is answered "already started".
    pub async fn claim_jobs(
        &self,
        claims: Vec<ClaimRequest>,
    ) -> Result<Vec<Result<Claim, CommandError>>, CommandError> {
        let now = Utc::now();
        let request_ids: Vec<String> = claims.iter().map(ClaimRequest::request_id).collect();
        let commands = claims
            .iter()
            .zip(&request_ids)
            .map(|(claim, request_id)| {
                (
                    Ctx::new(Actor::Agent(claim.agent_id), request_id.clone()),
                    claim.job_id.to_string(),
                    JobCommand::ClaimJob {
                        agent_id: claim.agent_id,
                        now,
                    },
                )
            })
            .collect();
        let mut answers: Vec<Result<Claim, CommandError>> = self
            .try_execute_batch::<Job>(commands)
            .await?
            .into_iter()
            .map(|answer| match answer {
                Ok(events) => Ok(match events.first() {
                    Some(JobEvent::JobStarted { .. }) => Claim::Run,
                    _ => Claim::Expired,
                }),
                Err(Executed::Rejected(rejection)) => Ok(match rejection {
                    JobError::Cancelled => Claim::Cancelled,
                    JobError::Expired(_) => Claim::Expired,
                    JobError::AlreadyStarted => Claim::AlreadyStarted,
                    JobError::AlreadyFinished => Claim::Finished,
                    _ => Claim::Refused,
                }),
                Err(Executed::Failed(e)) => Err(e),
            })
            .collect();
        let repeated: Vec<usize> = (0..claims.len())
            .filter(|&i| {
                claims[i].attempt.is_some() && matches!(answers[i], Ok(Claim::AlreadyStarted))
            })
            .collect();
        if !repeated.is_empty() {
            let jobs: Vec<String> = repeated
                .iter()
                .map(|&i| claims[i].job_id.to_string())
                .collect();
            let started: std::collections::HashMap<String, String> = sqlx::query_as(
                "SELECT aggregate_id, metadata->>'request_id' FROM events \
                  WHERE aggregate_type = 'job' AND aggregate_id = ANY($1) AND event_type = 'JobStarted'",
            )
            .bind(&jobs)
            .fetch_all(self.store().pool())
            .await?
            .into_iter()
            .collect();
            for i in repeated {
                if started.get(&claims[i].job_id.to_string()) == Some(&request_ids[i]) {
                    answers[i] = Ok(Claim::Run);
                }
            }
        }
        Ok(answers)
    }

    /// Records the result an agent reported for one of its jobs.
    pub async fn record_job_result(
        &self,
        agent_id: AgentId,
        job_id: JobId,
        outcome: Outcome,
        result: JobResult,
    ) -> Result<ResultOutcome, CommandError> {
        let answers = self
            .record_job_results(vec![ReportedResult {
                agent_id,
                job_id,
                outcome,
                result,
            }])
            .await?;
        only_answer(answers)
    }

    /// Records many results with one load and one insert (see [`Commands::try_execute_batch`]); the
    /// answers come back in the order of `results`. `Err` means none was recorded.
    pub async fn record_job_results(
        &self,
        results: Vec<ReportedResult>,
    ) -> Result<Vec<Result<ResultOutcome, CommandError>>, CommandError> {
        let commands = results
            .into_iter()
            .map(|reported| {
                (
                    Ctx::new(
                        Actor::Agent(reported.agent_id),
                        format!("result-{}", reported.job_id),
                    ),
                    reported.job_id.to_string(),
                    JobCommand::RecordResult {
                        agent_id: reported.agent_id,
                        outcome: reported.outcome,
                        result: reported.result,
                    },
                )
            })
            .collect();
        Ok(self
            .try_execute_batch::<Job>(commands)
            .await?
            .into_iter()
            .map(|answer| match answer {
                Ok(_) => Ok(ResultOutcome::Recorded),
                Err(Executed::Rejected(JobError::AlreadyFinished)) => Ok(ResultOutcome::Duplicate),
                Err(Executed::Rejected(rejection)) => {
                    Ok(ResultOutcome::Rejected(rejection.to_string()))
                }
                Err(Executed::Failed(e)) => Err(e),
            })
            .collect())
    }

    /// Expires a job whose deadline passed unclaimed; false when there was nothing to do.
    pub async fn expire_job(&self, job_id: JobId) -> Result<bool, CommandError> {
        let ctx = Ctx::new(Actor::System("expiry".into()), "expiry");
        match self
            .execute_job(&ctx, job_id, JobCommand::ExpireJob { now: Utc::now() })
            .await
        {
            Ok(events) => Ok(!events.is_empty()),
            Err(CommandError::Conflict(_) | CommandError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records that jobs were published, at their stream sequences. Jobs that moved on
    /// meanwhile (claimed, cancelled) are left alone.
    pub async fn record_dispatches(
        &self,
        dispatched: &[(JobId, AgentId, u64)],
    ) -> Result<(), CommandError> {
        if dispatched.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = dispatched
            .iter()
            .map(|(job, _, _)| job.to_string())
            .collect();
        let versions: std::collections::HashMap<String, i64> = sqlx::query(
            "SELECT aggregate_id, max(sequence) AS version FROM events \
              WHERE aggregate_type = $1 AND aggregate_id = ANY($2) GROUP BY aggregate_id",
        )
        .bind(Job::TYPE)
        .bind(&ids)
        .fetch_all(self.store().pool())
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get::<String, _>("aggregate_id")?,
                row.try_get::<i64, _>("version")?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
        let ctx = Ctx::new(Actor::System("dispatcher".into()), "dispatch");
        let metadata = ctx.metadata(Utc::now());
        let mut rows = Vec::new();
        for (job_id, agent_id, stream_seq) in dispatched {
            // Only a job still at its first event (queued) is recorded as dispatched.
            if versions.get(&job_id.to_string()) != Some(&1) {
                continue;
            }
            let event = JobEvent::JobDispatched {
                agent_id: *agent_id,
                stream_seq: *stream_seq,
            };
            rows.extend(NewEvent::for_aggregate::<Job>(
                &job_id.to_string(),
                1,
                &[event],
                &metadata,
            )?);
        }
        let mut tx = self.store().pool().begin().await?;
        // A claim that got there first owns sequence 2; the dispatch record then simply
        // does not happen.
        EventStore::append_rows(&mut tx, &rows, Conflicts::Skip).await?;
        self.commit(tx, rows.iter().map(|row| &row.event_type))
            .await
    }
}

/// Takes the next job sequence number of each agent (agents may repeat: each occurrence gets
/// the next number... callers pass each agent once).
async fn take_sequences(
    tx: &mut sqlx::PgConnection,
    agents: &[AgentId],
) -> Result<std::collections::HashMap<AgentId, u64>, StoreError> {
    let ids: Vec<Uuid> = agents.iter().map(|a| a.as_uuid()).collect();
    let rows = sqlx::query(
        "INSERT INTO agent_job_sequences (agent_id, last_seq) SELECT a, 1 FROM unnest($1::uuid[]) a \
         ON CONFLICT (agent_id) DO UPDATE SET last_seq = agent_job_sequences.last_seq + 1 \
         RETURNING agent_id, last_seq",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                AgentId::from(row.try_get::<Uuid, _>("agent_id")?),
                row.try_get::<i64, _>("last_seq")? as u64,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// The answer of a batch of one.
fn only_answer<T>(answers: Vec<Result<T, CommandError>>) -> Result<T, CommandError> {
    answers.into_iter().next().unwrap_or_else(|| {
        Err(CommandError::Store(StoreError::Repository(
            "a batch of one came back without an answer".into(),
        )))
    })
}

/// What `stream` has ready now, up to `max` items, without waiting: what claims and results
/// add to a batch after its first item.
fn ready_now<S: futures::Stream + Unpin>(stream: &mut S, max: usize) -> Vec<S::Item> {
    use futures::{FutureExt, StreamExt};
    let mut ready = Vec::new();
    while ready.len() < max {
        match stream.next().now_or_never() {
            Some(Some(item)) => ready.push(item),
            _ => break,
        }
    }
    ready
}

/// What every member job of a bulk job shares.
struct MemberTemplate<'a> {
    spec: &'a JobSpec,
    deadline: DateTime<Utc>,
    bulk_id: BulkJobId,
    max_body: usize,
    now: DateTime<Utc>,
}

impl MemberTemplate<'_> {
    /// The rows that queue one member job, numbered in its agent's sequence.
    async fn queued_rows(
        &self,
        job_id: JobId,
        agent_id: AgentId,
        sequences: &std::collections::HashMap<AgentId, u64>,
        metadata: &logbook_domain::metadata::EventMetadata,
    ) -> Result<Vec<NewEvent>, CommandError> {
        let mut job = Loaded::<Job>::default();
        let events = decide(
            &mut job,
            JobCommand::QueueJob {
                job_id,
                agent_id,
                agent_seq: sequences[&agent_id],
                spec: self.spec.clone(),
                deadline: self.deadline,
                bulk_id: Some(self.bulk_id),
                max_body: self.max_body,
                now: self.now,
            },
        )
        .await?;
        Ok(NewEvent::for_aggregate::<Job>(
            &job_id.to_string(),
            0,
            &events,
            metadata,
        )?)
    }
}
