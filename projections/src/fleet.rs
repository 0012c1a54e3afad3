//! The `fleet` projection: clients, sites and the agent list (`clients_view`, `sites_view`,
//! `agents_view`), and the queries that read them.
//!
//! An agent's status (online, overdue, offline) depends on the time of the question, so it is not
//! stored: the view keeps the server time of the newest check-in and the query compares it with
//! the configured thresholds. Check-ins in a batch are folded per agent and written with one
//! statement, so a burst of check-ins costs one row update per agent, not one per check-in.

use std::time::Duration;

use chrono::{DateTime, Utc};
use logbook_domain::agent::AgentEvent;
use logbook_domain::api_token::ApiToken;
use logbook_domain::bulk_job::BulkJob;
use logbook_domain::checkin::{CHECKIN_STREAM, CheckinReport};
use logbook_domain::client::ClientEvent;
use logbook_domain::cqrs_es::Aggregate;
use logbook_domain::enrollment::EnrollmentToken;
use logbook_domain::event_log::LogbookEvent;
use logbook_domain::job::Job;
use logbook_domain::site::SiteEvent;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::log::{CHECKINS_WINDOW_SQL, LogWindow, ReadFilter, StoredEvent};
use crate::runner::Projection;

/// The kinds of events the fleet projection passes over inside Postgres: check-ins, most of the
/// log, are folded into the agent list by one statement over the window; jobs (with their
/// scripts and output) and tokens say nothing about clients, sites or agents, and would only be
/// sent and decoded to be dropped.
const PASSED_OVER: &[&str] = &[
    CHECKIN_STREAM,
    Job::TYPE,
    BulkJob::TYPE,
    EnrollmentToken::TYPE,
    ApiToken::TYPE,
];

/// The fleet projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetProjection;

impl FleetProjection {
    /// Its name.
    pub const NAME: &'static str = "fleet";
}

impl Projection for FleetProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["clients_view", "sites_view", "agents_view"]
    }

    fn reads(&self) -> ReadFilter<'static> {
        ReadFilter::PassOver {
            ignored: PASSED_OVER,
            times: true,
        }
    }

    /// Large: the events it reads are the few that change clients, sites and agents, and a
    /// batch folds each agent's check-ins into one update of its row. With 10,000 agents a
    /// batch of 5,000 rewrote a row per check-in, one of 50,000 one per five, and one of
    /// 200,000 one per twenty (a rebuild of 800,000 events took 8.3-8.6 s against 11.3-12.7 s
    /// with 50,000 on the same machine; BENCHMARKS.md).
    fn rebuild_batch_size(&self) -> i64 {
        200_000
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
        window: LogWindow,
    ) -> Result<(), sqlx::Error> {
        for stored in events {
            let at = stored.metadata.recorded_at;
            let id = || Uuid::parse_str(&stored.aggregate_id).ok();
            let Some(event) = &stored.event else { continue };
            match event {
                LogbookEvent::Client(ClientEvent::ClientCreated { client_id, name }) => {
                    sqlx::query(
                        "INSERT INTO clients_view (client_id, name, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (client_id) DO NOTHING",
                    )
                    .bind(client_id.as_uuid())
                    .bind(name)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                LogbookEvent::Client(ClientEvent::ClientRenamed { name }) => {
                    sqlx::query("UPDATE clients_view SET name = $2 WHERE client_id = $1")
                        .bind(id())
                        .bind(name)
                        .execute(&mut *conn)
                        .await?;
                }
                LogbookEvent::Site(SiteEvent::SiteCreated {
                    site_id,
                    client_id,
                    name,
                }) => {
                    sqlx::query(
                        "INSERT INTO sites_view (site_id, client_id, name, created_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (site_id) DO NOTHING",
                    )
                    .bind(site_id.as_uuid())
                    .bind(client_id.as_uuid())
                    .bind(name)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                LogbookEvent::Site(SiteEvent::SiteRenamed { name }) => {
                    sqlx::query("UPDATE sites_view SET name = $2 WHERE site_id = $1")
                        .bind(id())
                        .bind(name)
                        .execute(&mut *conn)
                        .await?;
                }
                LogbookEvent::Agent(event) => {
                    apply_agent_event(conn, id(), event, at).await?;
                }
                LogbookEvent::Checkin(_)
                | LogbookEvent::EnrollmentToken(_)
                | LogbookEvent::ApiToken(_)
                | LogbookEvent::Job(_)
                | LogbookEvent::BulkJob(_) => {}
            }
        }
        // After the lifecycle events: an agent's enrollment precedes its check-ins, and no
        // other lifecycle event touches what a check-in sets.
        fold_checkins(conn, window).await
    }
}

async fn apply_agent_event(
    conn: &mut PgConnection,
    agent_id: Option<Uuid>,
    event: &AgentEvent,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    match event {
        AgentEvent::AgentEnrolled {
            agent_id,
            client_id,
            site_id,
            identity,
            ..
        } => {
            sqlx::query(
                "INSERT INTO agents_view (agent_id, client_id, site_id, hostname, display_name, \
                     os_family, arch, agent_version, enrolled_at) \
                 VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8) ON CONFLICT (agent_id) DO NOTHING",
            )
            .bind(agent_id.as_uuid())
            .bind(client_id.as_uuid())
            .bind(site_id.as_uuid())
            .bind(&identity.hostname)
            .bind(&identity.os)
            .bind(&identity.arch)
            .bind(&identity.agent_version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        AgentEvent::AgentRenamed { display_name } => {
            sqlx::query("UPDATE agents_view SET display_name = $2 WHERE agent_id = $1")
                .bind(agent_id)
                .bind(display_name)
                .execute(&mut *conn)
                .await?;
        }
        AgentEvent::AgentMoved {
            to_client_id,
            to_site_id,
            ..
        } => {
            sqlx::query("UPDATE agents_view SET client_id = $2, site_id = $3 WHERE agent_id = $1")
                .bind(agent_id)
                .bind(to_client_id.as_uuid())
                .bind(to_site_id.as_uuid())
                .execute(&mut *conn)
                .await?;
        }
        AgentEvent::AgentDecommissioned { .. } => {
            sqlx::query("UPDATE agents_view SET decommissioned_at = $2 WHERE agent_id = $1")
                .bind(agent_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Folds the window's check-ins into the agent list, inside Postgres: per agent, the count, the
/// newest server time, and the report collected last (a report collected before the one already
/// shown, sent late after an outage, counts as a check-in but does not replace the newer facts).
/// Everything it needs is a typed column of `checkins` (docs/adr/0005): no report is parsed and
/// none travels to this process; the row keeps the chosen report's sequence, not a copy of it
/// (queries read it from the log). (Its agent ids are grouped in the window as they come, by
/// `uuid` order: the agent list's rows are then updated in that order.)
///
/// Each agent's row is found through the agent list's primary key, one probe per agent of the
/// window: hash and merge joins are switched off for the statement. Left to itself, the planner
/// read the whole agent list and hashed it for every window, a cost that follows the fleet, not
/// the window, and grows with the dead row versions the fold leaves behind: on a window of 450
/// check-ins and 10,000 agents, 12.5 ms against 7.2 ms (BENCHMARKS.md).
async fn fold_checkins(conn: &mut PgConnection, window: LogWindow) -> Result<(), sqlx::Error> {
    // Whether the folded report replaces the one shown: written out in each assignment rather
    // than computed in `u`, which would need a second lookup of the agent's row.
    let newer = "(a.last_collected_at IS NULL OR u.collected_at >= a.last_collected_at)";
    let fold = format!(
        "WITH u AS ( \
            SELECT DISTINCT ON (agent_id) agent_id, sequence, collected_at, hostname, agent_version, \
                   os_family, os_name, os_version, kernel_version, arch, \
                   count(*) OVER agent AS n, max(recorded_at) OVER agent AS recorded_at \
              FROM {CHECKINS_WINDOW_SQL} w \
            WINDOW agent AS (PARTITION BY agent_id ORDER BY collected_at DESC, sequence DESC \
                             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) \
             ORDER BY agent_id, collected_at DESC, sequence DESC \
         ) \
         UPDATE agents_view a SET \
            checkins = a.checkins + u.n, \
            last_checkin_at = GREATEST(a.last_checkin_at, u.recorded_at), \
            hostname = CASE WHEN {newer} THEN u.hostname ELSE a.hostname END, \
            os_family = CASE WHEN {newer} THEN u.os_family ELSE a.os_family END, \
            os_name = CASE WHEN {newer} THEN u.os_name ELSE a.os_name END, \
            os_version = CASE WHEN {newer} THEN u.os_version ELSE a.os_version END, \
            kernel_version = CASE WHEN {newer} THEN u.kernel_version ELSE a.kernel_version END, \
            arch = CASE WHEN {newer} THEN u.arch ELSE a.arch END, \
            agent_version = CASE WHEN {newer} THEN u.agent_version ELSE a.agent_version END, \
            last_collected_at = CASE WHEN {newer} THEN u.collected_at ELSE a.last_collected_at END, \
            latest_report_sequence = CASE WHEN {newer} THEN u.sequence ELSE a.latest_report_sequence END \
           FROM u \
          WHERE a.agent_id = u.agent_id"
    );
    // For the batch's transaction (`is_local`), and set back right after the fold to what they
    // were (read first: the `MATERIALIZED` step runs before the settings change).
    let (hashjoin, mergejoin): (String, String) = sqlx::query_as(
        "WITH before AS MATERIALIZED ( \
            SELECT current_setting('enable_hashjoin') AS h, current_setting('enable_mergejoin') AS m) \
         SELECT h, m FROM before \
          WHERE set_config('enable_hashjoin', 'off', true) IS NOT NULL \
            AND set_config('enable_mergejoin', 'off', true) IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    window.bind(sqlx::query(&fold)).execute(&mut *conn).await?;
    sqlx::query(
        "SELECT set_config('enable_hashjoin', $1, true), set_config('enable_mergejoin', $2, true)",
    )
    .bind(hashjoin)
    .bind(mergejoin)
    .execute(conn)
    .await?;
    Ok(())
}

/// A client, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientRow {
    /// Its id.
    pub client_id: Uuid,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A site, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteRow {
    /// Its id.
    pub site_id: Uuid,
    /// Its client.
    pub client_id: Uuid,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Whether an agent is checking in as expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Checked in within the overdue threshold.
    Online,
    /// Silent for longer than the overdue threshold, not yet the offline one.
    Overdue,
    /// Silent for longer than the offline threshold.
    Offline,
    /// Retired.
    Decommissioned,
}

impl AgentStatus {
    /// Its name in the API and in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Overdue => "overdue",
            Self::Offline => "offline",
            Self::Decommissioned => "decommissioned",
        }
    }
}

impl std::str::FromStr for AgentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(Self::Online),
            "overdue" => Ok(Self::Overdue),
            "offline" => Ok(Self::Offline),
            "decommissioned" => Ok(Self::Decommissioned),
            other => Err(format!(
                "unknown status {other:?}; expected online, overdue, offline or decommissioned"
            )),
        }
    }
}

/// When a silent agent counts as overdue, then offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusThresholds {
    /// Silence after which an agent is overdue.
    pub overdue_after: Duration,
    /// Silence after which an agent is offline.
    pub offline_after: Duration,
}

/// One row of the agent list.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    /// Its id.
    pub agent_id: Uuid,
    /// Its client.
    pub client_id: Uuid,
    /// Its client's name.
    pub client_name: Option<String>,
    /// Its site.
    pub site_id: Uuid,
    /// Its site's name.
    pub site_name: Option<String>,
    /// The hostname it reports.
    pub hostname: String,
    /// The name operators gave it (its hostname until renamed).
    pub display_name: String,
    /// OS family.
    pub os_family: String,
    /// OS name.
    pub os_name: String,
    /// OS version.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
    /// When it enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// When it was retired.
    pub decommissioned_at: Option<DateTime<Utc>>,
    /// Server time of its newest check-in.
    pub last_checkin_at: Option<DateTime<Utc>>,
    /// How many check-ins it has made.
    pub checkins: i64,
    /// Its status now.
    pub status: AgentStatus,
    /// Its newest report.
    pub latest_report: Option<Json<CheckinReport>>,
}

/// Where the next page of the agent list starts: after this hostname and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPageCursor {
    /// Hostname of the last row of the previous page.
    pub hostname: String,
    /// Id of the last row of the previous page.
    pub agent_id: Uuid,
}

/// Which agents to list.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Only this client's agents.
    pub client_id: Option<Uuid>,
    /// Only this site's agents.
    pub site_id: Option<Uuid>,
    /// Only agents with this status.
    pub status: Option<AgentStatus>,
    /// Only this OS family.
    pub os_family: Option<String>,
    /// Hostname or display name contains this (case-insensitive).
    pub search: Option<String>,
    /// Include decommissioned agents (excluded unless asked for, or filtered by status).
    pub include_decommissioned: bool,
    /// Start after this row.
    pub after: Option<AgentPageCursor>,
    /// Page size.
    pub limit: i64,
}

const AGENT_COLUMNS: &str = "a.agent_id, a.client_id, c.name AS client_name, a.site_id, s.name AS site_name, \
     a.hostname, a.display_name, a.os_family, a.os_name, a.os_version, a.kernel_version, a.arch, \
     a.agent_version, a.enrolled_at, a.decommissioned_at, a.last_checkin_at, a.checkins, a.latest_report_sequence";

/// The newest report of the agent in `row`, read from the log by primary key (the agent list
/// keeps only its sequence); joined after the page is chosen so only its rows pay for it.
fn report_join(row: &str) -> String {
    format!(
        "LEFT JOIN LATERAL (SELECT k.payload::json->'AgentCheckedIn'->'report' AS latest_report FROM checkins k \
          WHERE k.agent_id = {row}.agent_id AND k.sequence = {row}.latest_report_sequence) r ON true"
    )
}

/// SQL for an agent's status, with `$1`/`$2` the overdue/offline thresholds in seconds.
const STATUS_SQL: &str = "CASE WHEN a.decommissioned_at IS NOT NULL THEN 'decommissioned' \
     WHEN COALESCE(a.last_checkin_at, a.enrolled_at) >= now() - make_interval(secs => $1) THEN 'online' \
     WHEN COALESCE(a.last_checkin_at, a.enrolled_at) >= now() - make_interval(secs => $2) THEN 'overdue' \
     ELSE 'offline' END";

/// Lists agents in hostname order, one page at a time.
pub async fn list_agents(
    pool: &PgPool,
    filter: &AgentFilter,
    thresholds: StatusThresholds,
) -> Result<Vec<AgentRow>, sqlx::Error> {
    let report = report_join("page");
    let sql = format!(
        "SELECT page.*, r.latest_report FROM (SELECT * FROM ( \
            SELECT {AGENT_COLUMNS}, {STATUS_SQL} AS status \
              FROM agents_view a \
              LEFT JOIN clients_view c ON c.client_id = a.client_id \
              LEFT JOIN sites_view s ON s.site_id = a.site_id \
             WHERE ($3::uuid IS NULL OR a.client_id = $3) \
               AND ($4::uuid IS NULL OR a.site_id = $4) \
               AND ($5::text IS NULL OR a.os_family = $5) \
               AND ($6::text IS NULL OR a.hostname ILIKE $6 OR a.display_name ILIKE $6) \
               AND ($7 OR $8::text IS NOT NULL OR a.decommissioned_at IS NULL) \
               AND ($9::text IS NULL OR (a.hostname, a.agent_id) > ($9, $10::uuid)) \
         ) page \
         WHERE ($8::text IS NULL OR status = $8) \
         ORDER BY hostname, agent_id \
         LIMIT $11) page {report} \
         ORDER BY page.hostname, page.agent_id"
    );
    let search = filter.search.as_ref().map(|s| {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let status = filter.status.map(AgentStatus::as_str);
    sqlx::query_as::<_, AgentRow>(&sql)
        .bind(thresholds.overdue_after.as_secs_f64())
        .bind(thresholds.offline_after.as_secs_f64())
        .bind(filter.client_id)
        .bind(filter.site_id)
        .bind(&filter.os_family)
        .bind(search)
        .bind(filter.include_decommissioned)
        .bind(status)
        .bind(filter.after.as_ref().map(|c| c.hostname.clone()))
        .bind(filter.after.as_ref().map(|c| c.agent_id))
        .bind(filter.limit)
        .fetch_all(pool)
        .await
}

/// One agent.
pub async fn get_agent(
    pool: &PgPool,
    agent_id: Uuid,
    thresholds: StatusThresholds,
) -> Result<Option<AgentRow>, sqlx::Error> {
    let report = report_join("a");
    let sql = format!(
        "SELECT {AGENT_COLUMNS}, {STATUS_SQL} AS status, r.latest_report \
           FROM agents_view a \
           LEFT JOIN clients_view c ON c.client_id = a.client_id \
           LEFT JOIN sites_view s ON s.site_id = a.site_id \
           {report} \
          WHERE a.agent_id = $3"
    );
    sqlx::query_as::<_, AgentRow>(&sql)
        .bind(thresholds.overdue_after.as_secs_f64())
        .bind(thresholds.offline_after.as_secs_f64())
        .bind(agent_id)
        .fetch_optional(pool)
        .await
}

/// All clients, by name.
pub async fn list_clients(pool: &PgPool) -> Result<Vec<ClientRow>, sqlx::Error> {
    sqlx::query_as("SELECT client_id, name, created_at FROM clients_view ORDER BY name, client_id")
        .fetch_all(pool)
        .await
}

/// One client.
pub async fn get_client(pool: &PgPool, client_id: Uuid) -> Result<Option<ClientRow>, sqlx::Error> {
    sqlx::query_as("SELECT client_id, name, created_at FROM clients_view WHERE client_id = $1")
        .bind(client_id)
        .fetch_optional(pool)
        .await
}

/// Sites, of one client or all, by name.
pub async fn list_sites(
    pool: &PgPool,
    client_id: Option<Uuid>,
) -> Result<Vec<SiteRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT site_id, client_id, name, created_at FROM sites_view \
          WHERE ($1::uuid IS NULL OR client_id = $1) ORDER BY name, site_id",
    )
    .bind(client_id)
    .fetch_all(pool)
    .await
}

impl FromRow<'_, PgRow> for ClientRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            client_id: row.try_get("client_id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl FromRow<'_, PgRow> for SiteRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            site_id: row.try_get("site_id")?,
            client_id: row.try_get("client_id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl FromRow<'_, PgRow> for AgentRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let status: &str = row.try_get("status")?;
        Ok(Self {
            agent_id: row.try_get("agent_id")?,
            client_id: row.try_get("client_id")?,
            client_name: row.try_get("client_name")?,
            site_id: row.try_get("site_id")?,
            site_name: row.try_get("site_name")?,
            hostname: row.try_get("hostname")?,
            display_name: row.try_get("display_name")?,
            os_family: row.try_get("os_family")?,
            os_name: row.try_get("os_name")?,
            os_version: row.try_get("os_version")?,
            kernel_version: row.try_get("kernel_version")?,
            arch: row.try_get("arch")?,
            agent_version: row.try_get("agent_version")?,
            enrolled_at: row.try_get("enrolled_at")?,
            decommissioned_at: row.try_get("decommissioned_at")?,
            last_checkin_at: row.try_get("last_checkin_at")?,
            checkins: row.try_get("checkins")?,
            status: status
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            latest_report: row.try_get("latest_report")?,
        })
    }
}

/// Every active (not decommissioned) agent matching all the given conditions, for resolving a
/// bulk job's targets.
pub async fn active_agent_ids(
    pool: &PgPool,
    client_id: Option<Uuid>,
    site_id: Option<Uuid>,
    agent_ids: Option<&[Uuid]>,
    os_family: Option<&str>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT agent_id FROM agents_view \
          WHERE decommissioned_at IS NULL \
            AND ($1::uuid IS NULL OR client_id = $1) \
            AND ($2::uuid IS NULL OR site_id = $2) \
            AND ($3::uuid[] IS NULL OR agent_id = ANY($3)) \
            AND ($4::text IS NULL OR os_family = $4) \
          ORDER BY agent_id",
    )
    .bind(client_id)
    .bind(site_id)
    .bind(agent_ids)
    .bind(os_family)
    .fetch_all(pool)
    .await
}
