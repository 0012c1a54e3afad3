//! The dispatcher: a reader of the event log that publishes each queued job to its agent.
//!
//! It tails the log like a projection (gap-free, in order) from its own checkpoint, but its
//! effects are outside Postgres, so it cannot commit them together with the checkpoint.
//! Instead it is at-least-once: publish, wait for JetStream's acknowledgement, record
//! `JobDispatched`, and only then move the checkpoint. A crash anywhere in between means the
//! same jobs are published again after a restart; the job id as `Nats-Msg-Id` makes JetStream
//! drop the copy within its duplicate window, and the agent's journal beyond it. Cancelled and
//! expired jobs are removed from their agent's queue the same way.
//!
//! JetStream acknowledges a publish before its disk holds it, so a nats-server that dies (rather
//! than stops) can lose jobs it acknowledged, after the checkpoint moved past them. Whenever the
//! dispatcher starts leading and after every reconnection to NATS, it looks up each job that was
//! dispatched and has not started at its stream sequence, and publishes again the ones that are
//! gone ([`republish_lost`]).

use std::time::Duration;

use logbook_domain::event_log::LogbookEvent;
use logbook_domain::ids::{AgentId, JobId};
use logbook_domain::job::{JobEvent, JobSpec};
use logbook_projections::jobs::JobsProjection;
use logbook_projections::log::{self, LogCursor, ReadFilter, StoredEvent};
use logbook_projections::runner::{self, LogWaker};
use logbook_proto::agent::v1 as pb;
use prost::Message;
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;

use super::transport::Transport;
use crate::commands::Commands;

/// Set to `dispatch-before-publish` to make the gateway abort after jobs committed and before
/// they are published: a testing hook for the crash-recovery path, inert otherwise.
pub const FAILPOINT_ENV: &str = "LOGBOOK_FAILPOINT";

/// The dispatcher's checkpoint name (and leadership lock).
pub const CHECKPOINT: &str = "dispatcher";

/// Whether the dispatcher acts on events of this type: a job queued (published to its agent),
/// cancelled or expired (removed from its agent's queue). Commits of nothing else do not wake
/// it ([`LogWaker::for_job_queues`]); it reads them at its next round.
pub(crate) fn acts_on(event_type: &str) -> bool {
    ACTED_ON.contains(&event_type)
}

/// The event types of [`acts_on`].
const ACTED_ON: [&str; 3] = ["JobQueued", "JobCancelled", "JobExpired"];

/// How the dispatcher paces itself.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Most events read per round.
    pub batch_size: i64,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
}

/// Runs the dispatcher until `shutdown`: one leader across gateway processes.
pub async fn run(
    pool: PgPool,
    commands: Commands,
    transport: std::sync::Arc<Transport>,
    waker: LogWaker,
    settings: DispatchSettings,
    shutdown: CancellationToken,
) {
    // It reads nothing of check-ins (see `round`), and wakes only to commits that may change
    // what an agent is to run.
    let mut waker = waker.for_job_queues();
    loop {
        let result = async {
            runner::ensure_checkpoint(&pool, CHECKPOINT).await?;
            let Some(mut leadership) =
                runner::acquire_leadership(&pool, CHECKPOINT, settings.poll_interval, &shutdown)
                    .await?
            else {
                return Ok(());
            };
            // The checkpoint is written on the leadership connection, without waiting for the
            // disk: dispatch is at-least-once (see above), so a checkpoint lost in a crash only
            // means a batch read and published again, dropped as duplicates. What must survive,
            // the `JobDispatched` events, commits through the pool and waits as every append
            // does. A checkpoint written every round otherwise cost a WAL flush per round (a round
            // follows every commit to the log), which the appends then queued behind.
            sqlx::query("SET synchronous_commit = off")
                .execute(&mut leadership)
                .await?;
            tracing::info!("leading job dispatch");
            let connects = transport.client().statistics();
            // The number of connections last checked for lost jobs (none yet), and the end of
            // the log when the pending check began.
            let mut checked = None;
            let mut pending: Option<(u64, LogCursor)> = None;
            loop {
                let now = connects.connects.load(std::sync::atomic::Ordering::Relaxed);
                if checked != Some(now) {
                    let goal = match pending {
                        Some((connection, goal)) if connection == now => goal,
                        _ => {
                            let goal = log::end(&mut *pool.acquire().await?).await?;
                            pending = Some((now, goal));
                            goal
                        }
                    };
                    if check_for_lost_jobs(&pool, &transport, goal).await? {
                        checked = Some(now);
                    }
                }
                loop {
                    let (handled, held_back) = round(
                        &pool,
                        &mut leadership,
                        &commands,
                        &transport,
                        settings.batch_size,
                    )
                    .await?;
                    if handled < settings.batch_size as usize && !held_back {
                        break;
                    }
                    if handled == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = waker.wait(settings.poll_interval) => {}
                }
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                let e: anyhow::Error = e;
                tracing::warn!(error = %format!("{e:#}"), "job dispatch interrupted; retrying");
                metrics::counter!("logbook_dispatch_errors_total").increment(1);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One round: returns how many events were handled, and whether events beyond the horizon are
/// waiting for an older transaction.
/// `leadership` is the leader's own connection: the checkpoint is read and written on it.
async fn round(
    pool: &PgPool,
    leadership: &mut PgConnection,
    commands: &Commands,
    transport: &Transport,
    batch_size: i64,
) -> anyhow::Result<(usize, bool)> {
    let cursor = runner::checkpoint(&mut *leadership, CHECKPOINT)
        .await?
        .unwrap_or(LogCursor::START);
    // Check-ins are most of the log and say nothing about jobs.
    let batch = log::read_batch(
        &mut *leadership,
        cursor,
        batch_size,
        ReadFilter::SkipCheckins,
    )
    .await?;
    let events = &batch.events;
    let Some((last, _)) = batch.end else {
        return Ok((0, acted_on_beyond_horizon(leadership, cursor).await?));
    };

    let queued: Vec<(&StoredEvent, JobId, AgentId, Vec<u8>)> = events
        .iter()
        .filter_map(|stored| match &stored.event {
            Some(LogbookEvent::Job(
                event @ JobEvent::JobQueued {
                    job_id, agent_id, ..
                },
            )) => Some((
                stored,
                *job_id,
                *agent_id,
                dispatch_message(event)?.encode_to_vec(),
            )),
            _ => None,
        })
        .collect();
    let ended: Vec<JobId> = events
        .iter()
        .filter_map(|stored| match &stored.event {
            Some(LogbookEvent::Job(
                JobEvent::JobCancelled { .. } | JobEvent::JobExpired { .. },
            )) => stored.aggregate_id.parse().ok(),
            _ => None,
        })
        .collect();

    if !queued.is_empty() {
        // A job cancelled or expired before it was published stays unpublished.
        let ids: Vec<String> = queued
            .iter()
            .map(|(_, job, _, _)| job.to_string())
            .collect();
        let settled: std::collections::HashSet<String> = sqlx::query_scalar(
            "SELECT aggregate_id FROM events WHERE aggregate_type = 'job' AND aggregate_id = ANY($1) \
               AND event_type IN ('JobCancelled', 'JobExpired')",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        let to_publish: Vec<_> = queued
            .into_iter()
            .filter(|(_, job, _, _)| !settled.contains(&job.to_string()))
            .collect();
        transport
            .ensure_agent_consumers(to_publish.iter().map(|(_, _, agent, _)| *agent))
            .await?;
        if !to_publish.is_empty()
            && std::env::var(FAILPOINT_ENV).is_ok_and(|f| f == "dispatch-before-publish")
        {
            tracing::error!("failpoint dispatch-before-publish: aborting");
            std::process::abort();
        }
        let published = transport
            .publish_jobs(
                to_publish
                    .iter()
                    .map(|(_, job, agent, bytes)| (*agent, *job, bytes.clone()))
                    .collect(),
            )
            .await;
        let mut dispatched = Vec::with_capacity(published.len());
        for ((_, job, agent, _), result) in to_publish.iter().zip(published) {
            // Stop at the first failure: the checkpoint stays before this batch and the whole
            // batch is published again (the acknowledged ones are dropped as duplicates).
            dispatched.push((*job, *agent, result?));
        }
        metrics::counter!("logbook_jobs_dispatched_total").increment(dispatched.len() as u64);
        commands.record_dispatches(&dispatched).await?;
    }

    for job in ended {
        let dispatched = sqlx::query(
            "SELECT (payload->'JobDispatched'->>'stream_seq')::bigint AS seq, \
                    payload->'JobDispatched'->>'agent_id' AS agent FROM events \
              WHERE aggregate_type = 'job' AND aggregate_id = $1 AND event_type = 'JobDispatched'",
        )
        .bind(job.to_string())
        .fetch_optional(pool)
        .await?;
        let Some(row) = dispatched else { continue };
        let seq: i64 = row.try_get("seq")?;
        let agent: Option<AgentId> = row
            .try_get::<String, _>("agent")
            .ok()
            .and_then(|a| a.parse().ok());
        if let Some(agent) = agent {
            // Best effort: if the agent already holds the message, its claim is refused.
            if let Err(e) = transport.remove_job(agent, seq as u64).await {
                tracing::debug!(error = %e, %job, "could not remove a settled job from its agent's queue");
            }
        }
    }

    sqlx::query(
        "UPDATE projection_checkpoints SET tx_id = $2::bigint::text::xid8, position = $3, \
                events_applied = events_applied + $4, updated_at = now() WHERE projection = $1",
    )
    .bind(CHECKPOINT)
    .bind(last.tx_id)
    .bind(last.position)
    .bind(batch.scanned as i64)
    .execute(&mut *leadership)
    .await?;
    // A batch that is not full ended at the horizon. Nothing wakes the dispatcher for the
    // claims and results it read here, so a job queued behind the horizon (its commit's
    // notification already spent on this round) must be looked for again soon, not at the next
    // poll.
    let held_back =
        batch.scanned < batch_size as usize && acted_on_beyond_horizon(leadership, last).await?;
    Ok((batch.scanned, held_back))
}

/// Whether an event the dispatcher acts on ([`acts_on`]) lies after `after` but beyond the
/// horizon, held back by an older transaction still running. Claims and results held back the
/// same way are not waited for: they are read at the next round, whatever wakes it.
async fn acted_on_beyond_horizon(
    conn: &mut PgConnection,
    after: LogCursor,
) -> Result<bool, sqlx::Error> {
    log::has_events_of_types_beyond_horizon(conn, after, &ACTED_ON).await
}

/// Looks for jobs that nats-server lost, once the jobs read model has read the log up to `goal`
/// (the log's end when the check began): the read model says which jobs were dispatched, and
/// after a crash it may still be catching up, or applying again batches whose commits did not
/// reach the disk. Says whether the check was made.
async fn check_for_lost_jobs(
    pool: &PgPool,
    transport: &Transport,
    goal: LogCursor,
) -> Result<bool, sqlx::Error> {
    let read = runner::checkpoint(pool, JobsProjection::NAME).await?;
    if read.is_none_or(|read| read < goal) {
        tracing::debug!("waiting for the jobs read model before checking for lost jobs");
        return Ok(false);
    }
    match republish_lost(pool, transport).await {
        Ok(0) => Ok(true),
        Ok(n) => {
            tracing::warn!(
                jobs = n,
                "published again jobs that nats-server no longer held"
            );
            Ok(true)
        }
        // The streams may still be recovering; the next round tries again.
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "cannot check for lost jobs yet");
            Ok(false)
        }
    }
}

/// Publishes again every job that was dispatched, has not started and is no longer in its
/// agent's stream; returns how many. A job that is gone because its agent already ran it (its
/// start not yet recorded) reaches the agent a second time and is dropped by the agent's
/// journal; the claim decides in every case, so a job never runs twice. A republished job may
/// arrive after later jobs of its agent: after nats-server lost messages, order is kept only
/// among those it kept.
async fn republish_lost(pool: &PgPool, transport: &Transport) -> anyhow::Result<usize> {
    let rows = sqlx::query(
        "SELECT j.job_id, j.agent_id, (d.payload->'JobDispatched'->>'stream_seq')::bigint AS stream_seq, \
                q.event_version, q.payload AS queued \
           FROM jobs_view j \
           JOIN LATERAL (SELECT e.event_type, e.payload FROM events e \
                          WHERE e.aggregate_type = 'job' AND e.aggregate_id = j.job_id::text \
                          ORDER BY e.sequence DESC LIMIT 1) d ON d.event_type = 'JobDispatched' \
           JOIN events q ON q.aggregate_type = 'job' AND q.aggregate_id = j.job_id::text \
                        AND q.event_type = 'JobQueued' \
          WHERE j.status IN ('queued', 'dispatched') AND j.deadline > now() \
          ORDER BY j.agent_id, j.agent_seq",
    )
    .fetch_all(pool)
    .await?;
    let mut lost = Vec::new();
    for row in rows {
        let job: JobId = row.try_get::<uuid::Uuid, _>("job_id")?.into();
        let agent: AgentId = row.try_get::<uuid::Uuid, _>("agent_id")?.into();
        let seq: i64 = row.try_get("stream_seq")?;
        if transport.holds_job(agent, job, seq as u64).await? {
            continue;
        }
        let event = LogbookEvent::decode(
            "job",
            row.try_get::<&str, _>("event_version")?,
            row.try_get("queued")?,
        )?;
        if let LogbookEvent::Job(event) = event
            && let Some(message) = dispatch_message(&event)
        {
            lost.push((agent, job, message.encode_to_vec()));
        }
    }
    let count = lost.len();
    for result in transport.publish_jobs(lost).await {
        result?;
    }
    metrics::counter!("logbook_jobs_republished_total").increment(count as u64);
    Ok(count)
}

/// The message an agent receives for a queued job.
pub fn dispatch_message(event: &JobEvent) -> Option<pb::JobDispatch> {
    let JobEvent::JobQueued {
        job_id,
        agent_seq,
        spec,
        deadline,
        ..
    } = event
    else {
        return None;
    };
    let (timeout_secs, working_dir, spec) = match spec {
        JobSpec::Script {
            interpreter,
            body,
            args,
            env,
            timeout_secs,
            working_dir,
        } => (
            *timeout_secs,
            working_dir.clone(),
            pb::job_dispatch::Spec::Script(pb::Script {
                interpreter: crate::convert::interpreter(*interpreter) as i32,
                body: body.clone(),
                args: args.clone(),
                env: env.clone().into_iter().collect(),
            }),
        ),
        JobSpec::Command {
            command_line,
            timeout_secs,
            working_dir,
        } => (
            *timeout_secs,
            working_dir.clone(),
            pb::job_dispatch::Spec::Command(pb::CommandLine {
                command_line: command_line.clone(),
            }),
        ),
    };
    Some(pb::JobDispatch {
        job_id: job_id.to_string(),
        agent_seq: *agent_seq,
        deadline_unix_ms: deadline.timestamp_millis(),
        timeout_secs,
        working_dir: working_dir.unwrap_or_default(),
        spec: Some(spec),
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use cqrs_es::DomainEvent;
    use logbook_domain::job::JobResult;

    use super::*;

    /// The dispatcher is woken only by commits of the events it acts on; a name here that the
    /// domain does not produce would leave it asleep until its next poll.
    #[test]
    fn the_dispatcher_wakes_for_what_round_acts_on() {
        let agent_id = AgentId::from(uuid::Uuid::now_v7());
        let result = JobResult {
            exit_code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 1,
            finished_at: Utc::now(),
            error: None,
        };
        let queued = JobEvent::JobQueued {
            job_id: JobId::from(uuid::Uuid::now_v7()),
            agent_id,
            agent_seq: 1,
            spec: JobSpec::Command {
                command_line: "true".into(),
                timeout_secs: 10,
                working_dir: None,
            },
            deadline: Utc::now(),
            bulk_id: None,
        };
        let acted_on = [
            queued,
            JobEvent::JobCancelled { agent_id },
            JobEvent::JobExpired {
                agent_id,
                deadline: Utc::now(),
            },
        ];
        let passed = [
            JobEvent::JobDispatched {
                agent_id,
                stream_seq: 1,
            },
            JobEvent::JobStarted { agent_id },
            JobEvent::JobSucceeded {
                agent_id,
                result: result.clone(),
            },
            JobEvent::JobFailed {
                agent_id,
                result: result.clone(),
            },
            JobEvent::JobTimedOut { agent_id, result },
        ];
        for event in &acted_on {
            assert!(acts_on(&event.event_type()), "{}", event.event_type());
        }
        for event in &passed {
            assert!(!acts_on(&event.event_type()), "{}", event.event_type());
        }
        assert!(!acts_on("AgentCheckedIn"));
    }
}
