//! The agent list, one agent, its timeline and its state at a point in time, and the operator
//! actions on an agent (rename, move, decommission).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use logbook_domain::checkin::CheckinReport;
use logbook_domain::ids::{AgentId, SiteId};
use logbook_projections::LogCursor;
use logbook_projections::fleet::{self, AgentFilter, AgentPageCursor, AgentRow, AgentStatus};
use logbook_projections::timeline::{self, TimelineEntry, TimelineQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::agent_api::path_id;
use super::auth::Admin;
use super::error::{ApiError, ErrorBody};
use super::wire::{JsonBody, QueryParams};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and {MAX_PAGE}, got {n}"),
        )),
    }
}

/// A client or site reference.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Named {
    id: Uuid,
    /// Absent if the read model has not caught up with its creation yet.
    name: Option<String>,
}

/// Operating system facts.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OsView {
    family: String,
    name: String,
    version: String,
    kernel_version: String,
    arch: String,
}

/// The newest facts an agent reported.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MetricsView {
    /// When the agent collected them (agent clock).
    collected_at: DateTime<Utc>,
    uptime_secs: u64,
    cpu: CpuView,
    memory: MemoryView,
    disks: Vec<DiskView>,
    logged_in_users: Vec<String>,
    ip_addresses: Vec<String>,
}

/// CPU count and load.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CpuView {
    logical_cores: u32,
    load_1m: f64,
    load_5m: f64,
    load_15m: f64,
}

/// Memory use in bytes.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MemoryView {
    total_bytes: u64,
    used_bytes: u64,
    swap_total_bytes: u64,
    swap_used_bytes: u64,
}

/// One disk's use in bytes.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DiskView {
    mount_point: String,
    file_system: String,
    total_bytes: u64,
    used_bytes: u64,
}

impl From<CheckinReport> for MetricsView {
    fn from(r: CheckinReport) -> Self {
        Self {
            collected_at: r.collected_at,
            uptime_secs: r.uptime_secs,
            cpu: CpuView {
                logical_cores: r.cpu.logical_cores,
                load_1m: r.cpu.load_1m,
                load_5m: r.cpu.load_5m,
                load_15m: r.cpu.load_15m,
            },
            memory: MemoryView {
                total_bytes: r.memory.total_bytes,
                used_bytes: r.memory.used_bytes,
                swap_total_bytes: r.memory.swap_total_bytes,
                swap_used_bytes: r.memory.swap_used_bytes,
            },
            disks: r
                .disks
                .into_iter()
                .map(|d| DiskView {
                    mount_point: d.mount_point,
                    file_system: d.file_system,
                    total_bytes: d.total_bytes,
                    used_bytes: d.used_bytes,
                })
                .collect(),
            logged_in_users: r.logged_in_users,
            ip_addresses: r.ip_addresses,
        }
    }
}

/// An agent as the agent list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AgentView {
    id: Uuid,
    client: Named,
    site: Named,
    /// The hostname the machine reports.
    hostname: String,
    /// The name operators gave it (its hostname until renamed).
    display_name: String,
    os: OsView,
    agent_version: String,
    /// `online`, `overdue`, `offline` or `decommissioned`, by the configured thresholds.
    #[schema(value_type = String)]
    status: AgentStatus,
    enrolled_at: DateTime<Utc>,
    /// Server time of the newest check-in.
    last_checkin_at: Option<DateTime<Utc>>,
    decommissioned_at: Option<DateTime<Utc>>,
    /// Check-ins recorded so far.
    checkins: i64,
    /// The newest report; absent until the first check-in.
    metrics: Option<MetricsView>,
}

impl From<AgentRow> for AgentView {
    fn from(a: AgentRow) -> Self {
        Self {
            id: a.agent_id,
            client: Named {
                id: a.client_id,
                name: a.client_name,
            },
            site: Named {
                id: a.site_id,
                name: a.site_name,
            },
            hostname: a.hostname,
            display_name: a.display_name,
            os: OsView {
                family: a.os_family,
                name: a.os_name,
                version: a.os_version,
                kernel_version: a.kernel_version,
                arch: a.arch,
            },
            agent_version: a.agent_version,
            status: a.status,
            enrolled_at: a.enrolled_at,
            last_checkin_at: a.last_checkin_at,
            decommissioned_at: a.decommissioned_at,
            checkins: a.checkins,
            metrics: a.latest_report.map(|r| r.0.into()),
        }
    }
}

/// One page of agents.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AgentPage {
    items: Vec<AgentView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Which agents to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentListQuery {
    /// Only this client's agents.
    client_id: Option<Uuid>,
    /// Only this site's agents.
    site_id: Option<Uuid>,
    /// `online`, `overdue`, `offline` or `decommissioned`.
    status: Option<String>,
    /// OS family, such as `linux`.
    os: Option<String>,
    /// Hostname or display name contains this (case-insensitive).
    search: Option<String>,
    /// Include decommissioned agents (default false).
    include_decommissioned: Option<bool>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn encode_cursor(cursor: &AgentPageCursor) -> Result<String, ApiError> {
    Ok(URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).map_err(ApiError::internal)?))
}

fn decode_cursor(text: &str) -> Result<AgentPageCursor, ApiError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| {
            ApiError::invalid_field("cursor", "is not a cursor returned by this endpoint")
        })
}

/// Lists agents in hostname order with keyset pagination.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(AgentListQuery),
    responses((status = 200, body = AgentPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    QueryParams(query): QueryParams<AgentListQuery>,
) -> Result<Json<AgentPage>, ApiError> {
    let limit = page_size(query.limit)?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<AgentStatus>)
        .transpose()
        .map_err(|e| ApiError::invalid_field("status", e))?;
    let filter = AgentFilter {
        client_id: query.client_id,
        site_id: query.site_id,
        status,
        os_family: query.os,
        search: query.search.filter(|s| !s.is_empty()),
        include_decommissioned: query.include_decommissioned.unwrap_or(false),
        after: query.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit + 1,
    };
    let mut rows = fleet::list_agents(state.pool(), &filter, state.thresholds()).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let last = rows
            .last()
            .ok_or_else(|| ApiError::internal(std::fmt::Error))?;
        Some(encode_cursor(&AgentPageCursor {
            hostname: last.hostname.clone(),
            agent_id: last.agent_id,
        })?)
    } else {
        None
    };
    Ok(Json(AgentPage {
        items: rows.into_iter().map(AgentView::from).collect(),
        next_cursor,
    }))
}

/// One agent.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}", tag = "agents",
    params(("agent_id" = Uuid, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn get(
    State(state): State<AppState>,
    _admin: Admin,
    Path(agent_id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    let agent_id: Uuid = path_id("agent_id", &agent_id)?;
    fleet::get_agent(state.pool(), agent_id, state.thresholds())
        .await?
        .map(|a| Json(a.into()))
        .ok_or_else(|| ApiError::NotFound(format!("agent {agent_id} not found")))
}

/// A new display name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RenameAgentRequest {
    /// 1 to 200 characters.
    display_name: String,
}

/// Sets an agent's display name.
#[utoipa::path(patch, path = "/api/v1/agents/{agent_id}", tag = "agents", request_body = RenameAgentRequest,
    params(("agent_id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn rename(
    State(state): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<RenameAgentRequest>,
) -> Result<StatusCode, ApiError> {
    let agent_id: AgentId = path_id("agent_id", &agent_id)?;
    state
        .commands()
        .rename_agent(&admin.ctx, agent_id, &body.display_name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Where to move an agent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveAgentRequest {
    /// The new site (of any client).
    site_id: Uuid,
}

/// Moves an agent to another site.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/move", tag = "agents", request_body = MoveAgentRequest,
    params(("agent_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody, description = "No such agent or site"), (status = 409, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn move_agent(
    State(state): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<MoveAgentRequest>,
) -> Result<StatusCode, ApiError> {
    let agent_id: AgentId = path_id("agent_id", &agent_id)?;
    state
        .commands()
        .move_agent(&admin.ctx, agent_id, SiteId::from(body.site_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Why an agent is retired.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DecommissionRequest {
    /// Free text for the audit trail.
    #[serde(default)]
    reason: String,
}

/// Retires an agent: its credential stops working at once.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/decommission", tag = "agents", request_body = DecommissionRequest,
    params(("agent_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Already decommissioned")),
    security(("api_token" = [])))]
pub(super) async fn decommission(
    State(state): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<DecommissionRequest>,
) -> Result<StatusCode, ApiError> {
    let agent_id: AgentId = path_id("agent_id", &agent_id)?;
    state
        .commands()
        .decommission_agent(&admin.ctx, agent_id, &body.reason)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One event in an agent's history.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TimelineItem {
    /// The event's place in the log; pass as `before` to page further back.
    cursor: String,
    event_type: String,
    /// The stream it belongs to (`agent`, `agent_checkins`).
    aggregate_type: String,
    /// Its sequence in that stream.
    sequence: i64,
    /// Who caused it: `api_token:<id>`, `agent:<id>`, `system:<name>`, `enrollment`.
    actor: String,
    recorded_at: DateTime<Utc>,
    /// The event as stored.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// Its metadata as stored (actor, correlation_id, request_id, recorded_at).
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
}

impl From<TimelineEntry> for TimelineItem {
    fn from(e: TimelineEntry) -> Self {
        Self {
            cursor: e.cursor.to_string(),
            event_type: e.event_type,
            aggregate_type: e.aggregate_type,
            sequence: e.sequence,
            actor: e.actor,
            recorded_at: e.recorded_at,
            payload: e.payload,
            metadata: e.metadata,
        }
    }
}

/// A page of history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TimelinePage {
    items: Vec<TimelineItem>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    next_cursor: Option<String>,
}

/// Which part of the history to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct TimelineParams {
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    before: Option<String>,
    /// Only this event type (such as `AgentCheckedIn`); comma-separate several.
    event_type: Option<String>,
    /// Only events recorded at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only events recorded before this time (RFC 3339).
    until: Option<DateTime<Utc>>,
}

/// An agent's history, newest first: every lifecycle event and check-in, with payloads.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/timeline", tag = "agents",
    params(("agent_id" = Uuid, Path), TimelineParams),
    responses((status = 200, body = TimelinePage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn timeline(
    State(state): State<AppState>,
    _admin: Admin,
    Path(agent_id): Path<String>,
    QueryParams(params): QueryParams<TimelineParams>,
) -> Result<Json<TimelinePage>, ApiError> {
    let agent_id: Uuid = path_id("agent_id", &agent_id)?;
    let limit = page_size(params.limit)?;
    let before = params
        .before
        .as_deref()
        .map(|b| {
            b.parse::<LogCursor>().map_err(|()| {
                ApiError::invalid_field("before", "is not a cursor returned by this endpoint")
            })
        })
        .transpose()?;
    let event_types = params
        .event_type
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let query = TimelineQuery {
        before,
        event_types,
        since: params.since,
        until: params.until,
        limit: limit + 1,
    };
    let mut entries = timeline::agent_timeline(state.pool(), agent_id, &query).await?;
    if entries.is_empty()
        && before.is_none()
        && fleet::get_agent(state.pool(), agent_id, state.thresholds())
            .await?
            .is_none()
    {
        return Err(ApiError::NotFound(format!("agent {agent_id} not found")));
    }
    let next_cursor = if entries.len() as i64 > limit {
        entries.truncate(limit as usize);
        entries.last().map(|e| e.cursor.to_string())
    } else {
        None
    };
    Ok(Json(TimelinePage {
        items: entries.into_iter().map(TimelineItem::from).collect(),
        next_cursor,
    }))
}

/// The point in time to look at.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StateParams {
    /// RFC 3339 time.
    at: DateTime<Utc>,
}

/// What the agent reported as of a time.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StateAt {
    /// The time asked about.
    at: DateTime<Utc>,
    /// The newest check-in recorded at or before `at`.
    checkin: TimelineItem,
}

/// What a machine looked like at a past time: the newest check-in recorded by then.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/state", tag = "agents",
    params(("agent_id" = Uuid, Path), StateParams),
    responses((status = 200, body = StateAt), (status = 404, body = ErrorBody, description = "No such agent, or no check-in by then")),
    security(("api_token" = [])))]
pub(super) async fn state_at(
    State(state): State<AppState>,
    _admin: Admin,
    Path(agent_id): Path<String>,
    QueryParams(params): QueryParams<StateParams>,
) -> Result<Json<StateAt>, ApiError> {
    let agent_id: Uuid = path_id("agent_id", &agent_id)?;
    let entry = timeline::checkin_at(state.pool(), agent_id, params.at)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "agent {agent_id} has no check-in recorded by {}",
                params.at
            ))
        })?;
    Ok(Json(StateAt {
        at: params.at,
        checkin: entry.into(),
    }))
}
