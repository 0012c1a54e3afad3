//! Jobs over HTTP: queue one (`POST /agents/{id}/jobs`) or many (`POST /jobs`), read them,
//! cancel them, retry a bulk job's failures.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use logbook_domain::bulk_job::BulkTarget;
use logbook_domain::ids::{AgentId, BulkJobId, ClientId, JobId, SiteId};
use logbook_domain::job::{Interpreter, Job, JobSpec};
use logbook_projections::fleet;
use logbook_projections::jobs::{self, BulkRow, JobRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::agent_api::path_id;
use super::auth::Admin;
use super::error::{ApiError, ErrorBody};
use super::wire::{JsonBody, QueryParams};

/// A script to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ScriptRequest {
    /// `sh`, `bash`, `python3` or `pwsh`.
    interpreter: String,
    /// The script (at most `jobs.max_script_bytes`, 256 KiB by default).
    body: String,
    /// Arguments.
    #[serde(default)]
    args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// What to run, and until when it may start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct JobRequest {
    /// A script (give this or `command`).
    script: Option<ScriptRequest>,
    /// One command line, run by the agent's shell (give this or `script`).
    command: Option<String>,
    /// Longest it may run, in seconds (default 300).
    timeout_secs: Option<u32>,
    /// Directory to run in.
    working_dir: Option<String>,
    /// The job expires if it has not started by then (RFC 3339).
    deadline: Option<DateTime<Utc>>,
    /// Or: how long from now it may wait, such as `2h` (default `jobs.default_deadline`).
    expires_in: Option<String>,
}

/// Which agents a bulk job targets: every given condition must hold; give at least one, or
/// `all: true`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetRequest {
    /// Every active agent.
    #[serde(default)]
    all: bool,
    /// A client's agents.
    client_id: Option<Uuid>,
    /// A site's agents.
    site_id: Option<Uuid>,
    /// These agents.
    agent_ids: Option<Vec<Uuid>>,
    /// Agents of this OS family (such as `linux`).
    os: Option<String>,
}

/// A bulk job request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkJobRequest {
    /// Which agents.
    target: TargetRequest,
    /// What to run and until when.
    #[serde(flatten)]
    job: JobRequest,
}

fn spec_of(request: &JobRequest) -> Result<JobSpec, ApiError> {
    let timeout_secs = request.timeout_secs.unwrap_or(300);
    match (&request.script, &request.command) {
        (Some(script), None) => {
            let interpreter = Interpreter::parse(&script.interpreter).ok_or_else(|| {
                ApiError::invalid_field(
                    "script.interpreter",
                    format!(
                        "{:?} is not one of sh, bash, python3, pwsh",
                        script.interpreter
                    ),
                )
            })?;
            Ok(JobSpec::Script {
                interpreter,
                body: script.body.clone(),
                args: script.args.clone(),
                env: script.env.clone(),
                timeout_secs,
                working_dir: request.working_dir.clone(),
            })
        }
        (None, Some(command)) => Ok(JobSpec::Command {
            command_line: command.clone(),
            timeout_secs,
            working_dir: request.working_dir.clone(),
        }),
        _ => Err(ApiError::invalid_field(
            "script",
            "give exactly one of script and command",
        )),
    }
}

fn deadline_of(request: &JobRequest, state: &AppState) -> Result<DateTime<Utc>, ApiError> {
    let jobs = state.jobs_config();
    let now = Utc::now();
    let deadline = match (&request.deadline, &request.expires_in) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field(
                "deadline",
                "give deadline or expires_in, not both",
            ));
        }
        (Some(deadline), None) => *deadline,
        (None, Some(text)) => {
            let wait = humantime::parse_duration(text).map_err(|e| {
                ApiError::invalid_field("expires_in", format!("is not a duration such as 2h: {e}"))
            })?;
            now + chrono::Duration::from_std(wait)
                .map_err(|_| ApiError::invalid_field("expires_in", "is too long"))?
        }
        (None, None) => now + chrono::Duration::from_std(jobs.default_deadline).unwrap_or_default(),
    };
    if deadline <= now {
        return Err(ApiError::invalid_field("deadline", "is in the past"));
    }
    let max = now + chrono::Duration::from_std(jobs.max_deadline).unwrap_or_default();
    if deadline > max {
        return Err(ApiError::invalid_field(
            "deadline",
            format!(
                "is beyond the longest allowed ({})",
                humantime::format_duration(jobs.max_deadline)
            ),
        ));
    }
    Ok(deadline)
}

/// A queued job.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct QueuedView {
    id: Uuid,
    agent_id: Uuid,
    /// Its place in the agent's queue.
    agent_seq: u64,
    deadline: DateTime<Utc>,
    status: String,
}

/// Queues a script or command for one agent. It runs when the agent is next online (in queue
/// order, at most once) unless it expires or is cancelled first.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/jobs", tag = "jobs", request_body = JobRequest,
    params(("agent_id" = Uuid, Path)),
    responses((status = 201, body = QueuedView),
        (status = 400, body = ErrorBody, description = "Invalid job: unknown interpreter, empty or oversized script, deadline in the past…; nothing is queued"),
        (status = 404, body = ErrorBody, description = "No such agent"), (status = 409, body = ErrorBody, description = "Agent decommissioned")),
    security(("api_token" = [])))]
pub(super) async fn queue(
    State(state): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<JobRequest>,
) -> Result<(StatusCode, Json<QueuedView>), ApiError> {
    let agent_id: AgentId = path_id("agent_id", &agent_id)?;
    let spec = spec_of(&body)?;
    let deadline = deadline_of(&body, &state)?;
    let queued = state
        .commands()
        .queue_job(
            &admin.ctx,
            agent_id,
            spec,
            deadline,
            state.jobs_config().max_script_bytes,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(QueuedView {
            id: queued.job_id.as_uuid(),
            agent_id: agent_id.as_uuid(),
            agent_seq: queued.agent_seq,
            deadline: queued.deadline,
            status: "queued".into(),
        }),
    ))
}

/// A bulk job as issued.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BulkIssuedView {
    id: Uuid,
    /// How many agents it targets.
    targets: usize,
    deadline: DateTime<Utc>,
}

/// Issues a job to many agents at once. The targets are resolved now, from the agent list, and
/// recorded; each gets its own job, tracked together.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = BulkJobRequest,
    responses((status = 201, body = BulkIssuedView),
        (status = 400, body = ErrorBody, description = "Invalid job or target (an unknown agent id is named); nothing is queued")),
    security(("api_token" = [])))]
pub(super) async fn queue_bulk(
    State(state): State<AppState>,
    admin: Admin,
    JsonBody(body): JsonBody<BulkJobRequest>,
) -> Result<(StatusCode, Json<BulkIssuedView>), ApiError> {
    let spec = spec_of(&body.job)?;
    let deadline = deadline_of(&body.job, &state)?;
    let t = &body.target;
    if !t.all
        && t.client_id.is_none()
        && t.site_id.is_none()
        && t.agent_ids.is_none()
        && t.os.is_none()
    {
        return Err(ApiError::invalid_field(
            "target",
            "give all: true or at least one of client_id, site_id, agent_ids, os",
        ));
    }
    let target = BulkTarget {
        client_id: t.client_id.map(ClientId::from),
        site_id: t.site_id.map(SiteId::from),
        agent_ids: t
            .agent_ids
            .as_ref()
            .map(|ids| ids.iter().copied().map(AgentId::from).collect()),
        os: t.os.clone(),
    };
    let matched = fleet::active_agent_ids(
        state.pool(),
        t.client_id,
        t.site_id,
        t.agent_ids.as_deref(),
        t.os.as_deref(),
    )
    .await?;
    if let Some(wanted) = &t.agent_ids {
        let found: std::collections::HashSet<&Uuid> = matched.iter().collect();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|id| !found.contains(id))
            .map(Uuid::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::invalid_field(
                "target.agent_ids",
                format!(
                    "unknown, decommissioned or not matching the other conditions: {}",
                    missing.join(", ")
                ),
            ));
        }
    }
    if matched.is_empty() {
        return Err(ApiError::invalid_field("target", "matches no active agent"));
    }
    let limit = state.jobs_config().max_bulk_targets;
    if matched.len() > limit {
        return Err(ApiError::invalid_field(
            "target",
            format!(
                "matches {} agents; at most {limit} per bulk job",
                matched.len()
            ),
        ));
    }
    let agents: Vec<AgentId> = matched.into_iter().map(AgentId::from).collect();
    let (bulk_id, members) = state
        .commands()
        .queue_bulk_job(
            &admin.ctx,
            target,
            agents,
            spec,
            deadline,
            state.jobs_config().max_script_bytes,
        )
        .await?;
    tracing::info!(%bulk_id, targets = members.len(), "bulk job issued");
    Ok((
        StatusCode::CREATED,
        Json(BulkIssuedView {
            id: bulk_id.as_uuid(),
            targets: members.len(),
            deadline,
        }),
    ))
}

/// A job.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobView {
    id: Uuid,
    agent_id: Uuid,
    agent_seq: i64,
    bulk_id: Option<Uuid>,
    /// `script` or `command`.
    kind: String,
    interpreter: Option<String>,
    /// What it runs, shortened.
    summary: String,
    /// `queued`, `dispatched`, `running`, `succeeded`, `failed`, `timed_out`, `expired` or `cancelled`.
    status: String,
    queued_by: String,
    queued_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
    dispatched_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    exit_code: Option<i32>,
    duration_ms: Option<i64>,
    /// Who ended it: the agent, or the operator or system that cancelled or expired it.
    ended_by: Option<String>,
    /// For a job that ran: its output and details, as recorded.
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
}

impl JobView {
    fn new(row: JobRow, outcome: Option<serde_json::Value>) -> Self {
        let result = outcome.and_then(|event| {
            event
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|inner| inner.get("result"))
                .cloned()
        });
        Self {
            id: row.job_id,
            agent_id: row.agent_id,
            agent_seq: row.agent_seq,
            bulk_id: row.bulk_id,
            kind: row.kind,
            interpreter: row.interpreter,
            summary: row.summary,
            status: row.status,
            queued_by: row.queued_by,
            queued_at: row.queued_at,
            deadline: row.deadline,
            dispatched_at: row.dispatched_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            exit_code: row.exit_code,
            duration_ms: row.duration_ms,
            ended_by: row.ended_by,
            result,
        }
    }
}

/// A bulk job with its live counts per state.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BulkView {
    id: Uuid,
    #[schema(value_type = Object)]
    target: serde_json::Value,
    kind: String,
    summary: String,
    /// Agents targeted.
    targets: i32,
    issued_by: String,
    issued_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
    /// Jobs per state (retries included).
    counts: BTreeMap<String, i64>,
}

impl From<BulkRow> for BulkView {
    fn from(b: BulkRow) -> Self {
        Self {
            id: b.bulk_id,
            target: b.target,
            kind: b.kind,
            summary: b.summary,
            targets: b.members,
            issued_by: b.issued_by,
            issued_at: b.issued_at,
            deadline: b.deadline,
            counts: b.counts,
        }
    }
}

/// A job or a bulk job.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum JobOrBulk {
    /// A job.
    Job(JobView),
    /// A bulk job.
    Bulk(BulkView),
}

/// One job (with its output once it ran) or one bulk job (with its counts per state).
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path, description = "A job id or a bulk job id")),
    responses((status = 200, body = JobOrBulk), (status = 404, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn get(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<JobOrBulk>, ApiError> {
    let id: Uuid = path_id("id", &id)?;
    if let Some((row, outcome)) = jobs::get_job(state.pool(), id).await? {
        return Ok(Json(JobOrBulk::Job(JobView::new(row, outcome))));
    }
    if let Some(bulk) = jobs::bulk_job(state.pool(), id).await? {
        return Ok(Json(JobOrBulk::Bulk(bulk.into())));
    }
    // Just queued, and the read model has not caught up yet: answer from the log.
    let job = state
        .commands()
        .store()
        .load::<Job>(&id.to_string())
        .await?;
    if let Some(agent_id) = job.state.agent_id() {
        return Err(ApiError::Unavailable(format!(
            "job {id} of agent {agent_id} is {}; its details are not readable yet, retry in a moment",
            job.state.status().as_str()
        )));
    }
    Err(ApiError::NotFound(format!("no job or bulk job {id}")))
}

/// Which of an agent's jobs to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentJobsParams {
    /// Only jobs in this state.
    status: Option<String>,
    /// Jobs before this place in the agent's queue (for the next page).
    before_seq: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobPage {
    items: Vec<JobView>,
    /// Pass as `before_seq` (agent jobs) or `after` (bulk members) for the next page.
    next: Option<String>,
}

fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and 1000, got {n}"),
        )),
    }
}

const STATUSES: &[&str] = &[
    "queued",
    "dispatched",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "expired",
    "cancelled",
];

fn check_status(status: &str) -> Result<(), ApiError> {
    if STATUSES.contains(&status) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "status",
            format!("{status:?} is not one of {}", STATUSES.join(", ")),
        ))
    }
}

/// An agent's jobs, newest first.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/jobs", tag = "jobs", params(("agent_id" = Uuid, Path), AgentJobsParams),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn agent_jobs(
    State(state): State<AppState>,
    _admin: Admin,
    Path(agent_id): Path<String>,
    QueryParams(params): QueryParams<AgentJobsParams>,
) -> Result<Json<JobPage>, ApiError> {
    let agent_id: Uuid = path_id("agent_id", &agent_id)?;
    if let Some(status) = &params.status {
        check_status(status)?;
    }
    let limit = page_limit(params.limit)?;
    let mut rows = jobs::agent_jobs(
        state.pool(),
        agent_id,
        params.status.as_deref(),
        params.before_seq,
        limit + 1,
    )
    .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.agent_seq.to_string())
    } else {
        None
    };
    Ok(Json(JobPage {
        items: rows.into_iter().map(|r| JobView::new(r, None)).collect(),
        next,
    }))
}

/// Which members of a bulk job to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct MembersParams {
    /// Only jobs in these states (comma-separated).
    status: Option<String>,
    /// `next` of the previous page.
    after: Option<Uuid>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

/// A bulk job's jobs, one per agent (and retries): the drill-down behind its counts.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/jobs", tag = "jobs", params(("id" = Uuid, Path, description = "A bulk job id"), MembersParams),
    responses((status = 200, body = JobPage), (status = 404, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn bulk_members(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<MembersParams>,
) -> Result<Json<JobPage>, ApiError> {
    let id: Uuid = path_id("id", &id)?;
    if jobs::bulk_job(state.pool(), id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no bulk job {id}")));
    }
    let statuses: Vec<String> = params
        .status
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    for status in &statuses {
        check_status(status)?;
    }
    let limit = page_limit(params.limit)?;
    let mut rows = jobs::bulk_members(state.pool(), id, &statuses, params.after, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.job_id.to_string())
    } else {
        None
    };
    Ok(Json(JobPage {
        items: rows.into_iter().map(|r| JobView::new(r, None)).collect(),
        next,
    }))
}

/// What a cancel or retry did.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AffectedView {
    /// The jobs cancelled, or the new jobs queued.
    jobs: Vec<Uuid>,
}

/// Cancels a job that has not started, or every not-yet-started job of a bulk job.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path, description = "A job id or a bulk job id")),
    responses((status = 200, body = AffectedView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The job already started or ended")),
    security(("api_token" = [])))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<AffectedView>, ApiError> {
    let id: Uuid = path_id("id", &id)?;
    if jobs::bulk_job(state.pool(), id).await?.is_some() {
        let pending: Vec<JobId> = jobs::bulk_members(
            state.pool(),
            id,
            &["queued".into(), "dispatched".into()],
            None,
            i64::MAX,
        )
        .await?
        .into_iter()
        .map(|r| JobId::from(r.job_id))
        .collect();
        let cancelled = state
            .commands()
            .cancel_bulk_remaining(&admin.ctx, BulkJobId::from(id), pending)
            .await?;
        return Ok(Json(AffectedView {
            jobs: cancelled.into_iter().map(|j| j.as_uuid()).collect(),
        }));
    }
    state
        .commands()
        .cancel_job(&admin.ctx, JobId::from(id))
        .await?;
    Ok(Json(AffectedView { jobs: vec![id] }))
}

/// Queues a new job for every agent of a bulk job whose job failed or timed out.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry-failed", tag = "jobs", params(("id" = Uuid, Path, description = "A bulk job id")),
    responses((status = 200, body = AffectedView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Nothing failed")),
    security(("api_token" = [])))]
pub(super) async fn retry_failed(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<AffectedView>, ApiError> {
    let id: Uuid = path_id("id", &id)?;
    if jobs::bulk_job(state.pool(), id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no bulk job {id}")));
    }
    let failed: Vec<(AgentId, JobId)> = jobs::bulk_members(
        state.pool(),
        id,
        &["failed".into(), "timed_out".into()],
        None,
        i64::MAX,
    )
    .await?
    .into_iter()
    .map(|r| (AgentId::from(r.agent_id), JobId::from(r.job_id)))
    .collect();
    let deadline = chrono::Duration::from_std(state.jobs_config().default_deadline)
        .unwrap_or_else(|_| chrono::Duration::hours(24));
    let retries = state
        .commands()
        .retry_bulk_failed(
            &admin.ctx,
            BulkJobId::from(id),
            failed,
            deadline,
            state.jobs_config().max_script_bytes,
        )
        .await?;
    Ok(Json(AffectedView {
        jobs: retries
            .into_iter()
            .map(|r| r.new_job_id.as_uuid())
            .collect(),
    }))
}
