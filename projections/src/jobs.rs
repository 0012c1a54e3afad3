//! The `jobs` projection: every job with its current state (`jobs_view`) and every bulk job
//! (`bulk_jobs_view`), and the queries that read them: one job, an agent's jobs, a bulk job's
//! counts per state and its members.
//!
//! A batch folds all events of each job into one row change, so a bulk job to 10,000 agents costs
//! one multi-row insert and a few multi-row updates, not 10,000 statements per step.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use logbook_domain::bulk_job::BulkJobEvent;
use logbook_domain::event_log::LogbookEvent;
use logbook_domain::job::{JobEvent, JobSpec, JobStatus};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::log::{LogWindow, ReadFilter, StoredEvent};
use crate::runner::Projection;

/// The jobs projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct JobsProjection;

impl JobsProjection {
    /// Its name.
    pub const NAME: &'static str = "jobs";
}

/// A short description of what a job runs, for lists.
pub fn summary(spec: &JobSpec) -> (&'static str, Option<&'static str>, String) {
    let short = |text: &str| {
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let mut s: String = line.chars().take(200).collect();
        if line.chars().count() > 200 || text.lines().filter(|l| !l.trim().is_empty()).count() > 1 {
            s.push('…');
        }
        s
    };
    match spec {
        JobSpec::Script {
            interpreter, body, ..
        } => ("script", Some(interpreter.as_str()), short(body)),
        JobSpec::Command { command_line, .. } => ("command", None, short(command_line)),
    }
}

#[derive(Default)]
struct RowChange {
    insert: Option<NewJob>,
    status: Option<JobStatus>,
    dispatched_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    exit_code: Option<i32>,
    duration_ms: Option<i64>,
    final_sequence: Option<i64>,
    ended_by: Option<String>,
}

struct NewJob {
    agent_id: Uuid,
    agent_seq: i64,
    bulk_id: Option<Uuid>,
    kind: &'static str,
    interpreter: Option<&'static str>,
    summary: String,
    queued_by: String,
    queued_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
}

impl Projection for JobsProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["jobs_view", "bulk_jobs_view"]
    }

    fn reads(&self) -> ReadFilter<'static> {
        // Check-ins are most of the log and say nothing about jobs.
        ReadFilter::SkipCheckins
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
        _window: LogWindow,
    ) -> Result<(), sqlx::Error> {
        let mut order: Vec<Uuid> = Vec::new();
        let mut changes: HashMap<Uuid, RowChange> = HashMap::new();
        for stored in events {
            let at = stored.metadata.recorded_at;
            let actor = stored.metadata.actor.to_string();
            match &stored.event {
                Some(LogbookEvent::Job(event)) => {
                    let Ok(job_id) = Uuid::parse_str(&stored.aggregate_id) else {
                        continue;
                    };
                    let change = changes.entry(job_id).or_insert_with(|| {
                        order.push(job_id);
                        RowChange::default()
                    });
                    let end = |status: JobStatus, change: &mut RowChange| {
                        change.status = Some(status);
                        change.finished_at = Some(at);
                        change.final_sequence = Some(stored.sequence);
                        change.ended_by = Some(actor.clone());
                    };
                    match event {
                        JobEvent::JobQueued {
                            agent_id,
                            agent_seq,
                            spec,
                            deadline,
                            bulk_id,
                            ..
                        } => {
                            let (kind, interpreter, summary) = summary(spec);
                            change.insert = Some(NewJob {
                                agent_id: agent_id.as_uuid(),
                                agent_seq: *agent_seq as i64,
                                bulk_id: bulk_id.map(|b| b.as_uuid()),
                                kind,
                                interpreter,
                                summary,
                                queued_by: actor.clone(),
                                queued_at: at,
                                deadline: *deadline,
                            });
                            change.status = Some(JobStatus::Queued);
                        }
                        JobEvent::JobDispatched { .. } => {
                            change.status = Some(JobStatus::Dispatched);
                            change.dispatched_at = Some(at);
                        }
                        JobEvent::JobStarted { .. } => {
                            change.status = Some(JobStatus::Running);
                            change.started_at = Some(at);
                        }
                        JobEvent::JobSucceeded { result, .. }
                        | JobEvent::JobFailed { result, .. }
                        | JobEvent::JobTimedOut { result, .. } => {
                            let status = match event {
                                JobEvent::JobSucceeded { .. } => JobStatus::Succeeded,
                                JobEvent::JobFailed { .. } => JobStatus::Failed,
                                _ => JobStatus::TimedOut,
                            };
                            end(status, change);
                            change.exit_code = result.exit_code;
                            change.duration_ms = Some(result.duration_ms as i64);
                        }
                        JobEvent::JobExpired { .. } => end(JobStatus::Expired, change),
                        JobEvent::JobCancelled { .. } => end(JobStatus::Cancelled, change),
                    }
                }
                Some(LogbookEvent::BulkJob(BulkJobEvent::BulkJobIssued {
                    bulk_id,
                    target,
                    members,
                    spec,
                    deadline,
                })) => {
                    let (kind, _, summary) = summary(spec);
                    sqlx::query(
                        "INSERT INTO bulk_jobs_view (bulk_id, target, kind, summary, members, issued_by, issued_at, deadline) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (bulk_id) DO NOTHING",
                    )
                    .bind(bulk_id.as_uuid())
                    .bind(serde_json::to_value(target).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
                    .bind(kind)
                    .bind(summary)
                    .bind(members.len() as i32)
                    .bind(&actor)
                    .bind(at)
                    .bind(deadline)
                    .execute(&mut *conn)
                    .await?;
                }
                _ => {}
            }
        }
        write_changes(conn, &order, &mut changes).await
    }
}

async fn write_changes(
    conn: &mut PgConnection,
    order: &[Uuid],
    changes: &mut HashMap<Uuid, RowChange>,
) -> Result<(), sqlx::Error> {
    let (mut ids, mut agents, mut seqs, mut bulks, mut kinds, mut interpreters, mut summaries) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut queued_by, mut queued_at, mut deadlines) = (Vec::new(), Vec::new(), Vec::new());
    for id in order {
        if let Some(new) = changes.get_mut(id).and_then(|c| c.insert.take()) {
            ids.push(*id);
            agents.push(new.agent_id);
            seqs.push(new.agent_seq);
            bulks.push(new.bulk_id);
            kinds.push(new.kind);
            interpreters.push(new.interpreter);
            summaries.push(new.summary);
            queued_by.push(new.queued_by);
            queued_at.push(new.queued_at);
            deadlines.push(new.deadline);
        }
    }
    if !ids.is_empty() {
        sqlx::query(
            "INSERT INTO jobs_view (job_id, agent_id, agent_seq, bulk_id, kind, interpreter, summary, status, \
                                    queued_by, queued_at, deadline) \
             SELECT job_id, agent_id, agent_seq, bulk_id, kind, interpreter, summary, 'queued', queued_by, queued_at, deadline \
               FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::text[], $6::text[], $7::text[], \
                           $8::text[], $9::timestamptz[], $10::timestamptz[]) \
                    AS t(job_id, agent_id, agent_seq, bulk_id, kind, interpreter, summary, queued_by, queued_at, deadline) \
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&agents)
        .bind(&seqs)
        .bind(&bulks)
        .bind(&kinds)
        .bind(&interpreters)
        .bind(&summaries)
        .bind(&queued_by)
        .bind(&queued_at)
        .bind(&deadlines)
        .execute(&mut *conn)
        .await?;
    }
    let mut ids = Vec::new();
    let (mut statuses, mut dispatched, mut started, mut finished) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut exits, mut durations, mut finals, mut ended_by) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for id in order {
        let Some(c) = changes.get(id) else { continue };
        ids.push(*id);
        statuses.push(c.status.map(JobStatus::as_str));
        dispatched.push(c.dispatched_at);
        started.push(c.started_at);
        finished.push(c.finished_at);
        exits.push(c.exit_code);
        durations.push(c.duration_ms);
        finals.push(c.final_sequence);
        ended_by.push(c.ended_by.clone());
    }
    if !ids.is_empty() {
        // Planned for each batch, not once per connection: a plan cached while the read model
        // was small (the first jobs after a start) joined it by a sequential scan and a hash,
        // and kept doing so with 10,000 jobs, 4 to 7 ms per batch (BENCHMARKS.md); planned with
        // the table's real size it is an index lookup per job.
        sqlx::query(
            "UPDATE jobs_view j SET \
                status = COALESCE(u.status, j.status), \
                dispatched_at = COALESCE(u.dispatched_at, j.dispatched_at), \
                started_at = COALESCE(u.started_at, j.started_at), \
                finished_at = COALESCE(u.finished_at, j.finished_at), \
                exit_code = COALESCE(u.exit_code, j.exit_code), \
                duration_ms = COALESCE(u.duration_ms, j.duration_ms), \
                final_sequence = COALESCE(u.final_sequence, j.final_sequence), \
                ended_by = COALESCE(u.ended_by, j.ended_by) \
             FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[], \
                         $6::int[], $7::bigint[], $8::bigint[], $9::text[]) \
                  AS u(job_id, status, dispatched_at, started_at, finished_at, exit_code, duration_ms, final_sequence, ended_by) \
             WHERE j.job_id = u.job_id",
        )
        .persistent(false)
        .bind(&ids)
        .bind(&statuses)
        .bind(&dispatched)
        .bind(&started)
        .bind(&finished)
        .bind(&exits)
        .bind(&durations)
        .bind(&finals)
        .bind(&ended_by)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A job as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    /// Its id.
    pub job_id: Uuid,
    /// Its agent.
    pub agent_id: Uuid,
    /// Its place in the agent's queue.
    pub agent_seq: i64,
    /// Its bulk job.
    pub bulk_id: Option<Uuid>,
    /// `script` or `command`.
    pub kind: String,
    /// The interpreter of a script.
    pub interpreter: Option<String>,
    /// What it runs, shortened.
    pub summary: String,
    /// Where it is.
    pub status: String,
    /// Who queued it.
    pub queued_by: String,
    /// When.
    pub queued_at: DateTime<Utc>,
    /// When it expires if not started.
    pub deadline: DateTime<Utc>,
    /// When it was handed to the transport.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When its agent claimed it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its exit code.
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration_ms: Option<i64>,
    /// Sequence of its final event.
    pub final_sequence: Option<i64>,
    /// Who ended it (agent, operator, system).
    pub ended_by: Option<String>,
}

impl FromRow<'_, PgRow> for JobRow {
    fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            job_id: r.try_get("job_id")?,
            agent_id: r.try_get("agent_id")?,
            agent_seq: r.try_get("agent_seq")?,
            bulk_id: r.try_get("bulk_id")?,
            kind: r.try_get("kind")?,
            interpreter: r.try_get("interpreter")?,
            summary: r.try_get("summary")?,
            status: r.try_get("status")?,
            queued_by: r.try_get("queued_by")?,
            queued_at: r.try_get("queued_at")?,
            deadline: r.try_get("deadline")?,
            dispatched_at: r.try_get("dispatched_at")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            exit_code: r.try_get("exit_code")?,
            duration_ms: r.try_get("duration_ms")?,
            final_sequence: r.try_get("final_sequence")?,
            ended_by: r.try_get("ended_by")?,
        })
    }
}

const JOB_COLUMNS: &str = "job_id, agent_id, agent_seq, bulk_id, kind, interpreter, summary, status, queued_by, \
     queued_at, deadline, dispatched_at, started_at, finished_at, exit_code, duration_ms, final_sequence, ended_by";

/// One job, with the payload of its final event (which holds the output) when it has ended.
pub async fn get_job(
    pool: &PgPool,
    job_id: Uuid,
) -> Result<Option<(JobRow, Option<Value>)>, sqlx::Error> {
    let Some(row) = sqlx::query_as::<_, JobRow>(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs_view WHERE job_id = $1"
    ))
    .bind(job_id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let outcome = match row.final_sequence {
        Some(sequence) => {
            sqlx::query_scalar("SELECT payload FROM events WHERE aggregate_type = 'job' AND aggregate_id = $1 AND sequence = $2")
                .bind(job_id.to_string())
                .bind(sequence)
                .fetch_optional(pool)
                .await?
        }
        None => None,
    };
    Ok(Some((row, outcome)))
}

/// An agent's jobs, newest first.
pub async fn agent_jobs(
    pool: &PgPool,
    agent_id: Uuid,
    status: Option<&str>,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs_view \
          WHERE agent_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR agent_seq < $3) \
          ORDER BY agent_seq DESC LIMIT $4"
    ))
    .bind(agent_id)
    .bind(status)
    .bind(before_seq)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A bulk job with its counts per state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkRow {
    /// Its id.
    pub bulk_id: Uuid,
    /// What was targeted.
    pub target: Value,
    /// `script` or `command`.
    pub kind: String,
    /// What it runs, shortened.
    pub summary: String,
    /// How many agents it resolved to.
    pub members: i32,
    /// Who issued it.
    pub issued_by: String,
    /// When.
    pub issued_at: DateTime<Utc>,
    /// When its jobs expire if not started.
    pub deadline: DateTime<Utc>,
    /// Jobs per state (including retries).
    pub counts: BTreeMap<String, i64>,
}

/// One bulk job and its live counts.
pub async fn bulk_job(pool: &PgPool, bulk_id: Uuid) -> Result<Option<BulkRow>, sqlx::Error> {
    let Some(r) = sqlx::query(
        "SELECT bulk_id, target, kind, summary, members, issued_by, issued_at, deadline FROM bulk_jobs_view WHERE bulk_id = $1",
    )
    .bind(bulk_id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let counts: Vec<(String, i64)> = sqlx::query(
        "SELECT status, count(*) AS n FROM jobs_view WHERE bulk_id = $1 GROUP BY status",
    )
    .bind(bulk_id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| Ok((row.try_get("status")?, row.try_get("n")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(Some(BulkRow {
        bulk_id: r.try_get("bulk_id")?,
        target: r.try_get("target")?,
        kind: r.try_get("kind")?,
        summary: r.try_get("summary")?,
        members: r.try_get("members")?,
        issued_by: r.try_get("issued_by")?,
        issued_at: r.try_get("issued_at")?,
        deadline: r.try_get("deadline")?,
        counts: counts.into_iter().collect(),
    }))
}

/// A bulk job's jobs, optionally in some states, in agent order.
pub async fn bulk_members(
    pool: &PgPool,
    bulk_id: Uuid,
    statuses: &[String],
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs_view \
          WHERE bulk_id = $1 AND (cardinality($2::text[]) = 0 OR status = ANY($2)) \
            AND ($3::uuid IS NULL OR job_id > $3) \
          ORDER BY job_id LIMIT $4"
    ))
    .bind(bulk_id)
    .bind(statuses)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Jobs that are still pending although their deadline has passed.
pub async fn overdue_pending(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT job_id FROM jobs_view WHERE status IN ('queued', 'dispatched') AND deadline <= $1 ORDER BY deadline LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}
