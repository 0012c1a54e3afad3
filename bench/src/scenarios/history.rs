//! `projections` and `history`: a log of millions of events (simulated agents enrolled through
//! the API, their check-ins written in bulk), then
//!
//! - rebuilding the agent list and the timeline from zero (events/s),
//! - the live projection lag while check-ins arrive at a fixed rate,
//! - the latency of one agent's last 100 timeline entries and of the agent list's first page.
//!
//! The generated database is kept between runs (`--reuse`), as writing ten million events takes
//! minutes.

use std::time::{Duration, Instant};

use anyhow::Context;
use logbook_projections::Projection;
use logbook_projections::fleet::FleetProjection;
use logbook_projections::rebuild;
use logbook_projections::timeline::TimelineProjection;
use serde::Serialize;
use serde_json::json;

use crate::env::{self, BenchDb, Gateway, SimAgent, Targets};
use crate::scenarios::checkin;
use crate::stats::{Latencies, Summary};
use crate::ui;

/// Options of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) agents: usize,
    pub(crate) events: u64,
    pub(crate) reuse: bool,
    pub(crate) lag_rate: u64,
    pub(crate) duration: Duration,
    pub(crate) queries: usize,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub(crate) events_in_log: i64,
    pub(crate) agents: usize,
    pub(crate) rebuild_fleet_events_per_sec: f64,
    pub(crate) rebuild_timeline_events_per_sec: f64,
    pub(crate) live_lag_rate: u64,
    pub(crate) live_lag_p50_ms: f64,
    pub(crate) live_lag_p99_ms: f64,
    pub(crate) timeline_last_100: Summary,
    pub(crate) agent_list_first_page: Summary,
    pub(crate) gateway_peak_rss_mib: f64,
}

/// Writes check-in events in bulk until the log holds `target` events.
async fn fill(db: &BenchDb, agents: &[SimAgent], target: u64) -> anyhow::Result<i64> {
    let mut have: i64 = sqlx::query_scalar("SELECT count(*) FROM log")
        .fetch_one(&db.pool)
        .await?;
    if have as u64 >= target {
        return Ok(have);
    }
    let bar = ui::bar("writing check-in events");
    bar.set_length(target);
    bar.set_position(have as u64);
    let report = serde_json::to_string(&json!({
        "AgentCheckedIn": {
            "checkin_id": "00000000-0000-0000-0000-000000000000",
            "report": checkin_report_json(),
        }
    }))?;
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    // Each round gives every agent one more check-in, continuing its sequence.
    while (have as u64) < target {
        let per_round = ids.len() as i64;
        sqlx::query(
            "INSERT INTO checkins (agent_id, sequence, checkin_id, recorded_at, collected_at, hostname, os_family, \
                                   os_name, os_version, kernel_version, arch, agent_version, payload, metadata) \
             SELECT a.id::uuid, \
                    COALESCE((SELECT max(k.sequence) FROM checkins k WHERE k.agent_id = a.id::uuid), 0) + 1, \
                    c.id, clock_timestamp(), '2026-01-01T00:00:00Z', 'sim', 'linux', 'Debian GNU/Linux', '12', \
                    '6.1.0', 'x86_64', '0.1.0', \
                    replace($2, '00000000-0000-0000-0000-000000000000', c.id::text), \
                    json_build_object('actor', 'agent:' || a.id, 'correlation_id', c.id::text, \
                                      'request_id', 'bench', 'recorded_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) \
               FROM unnest($1::text[]) AS a(id) CROSS JOIN LATERAL (SELECT gen_random_uuid() AS id) c",
        )
        .bind(&ids)
        .bind(&report)
        .execute(&db.pool)
        .await?;
        have += per_round;
        bar.set_position(have as u64);
    }
    bar.finish_and_clear();
    sqlx::query("ANALYZE events, checkins")
        .execute(&db.pool)
        .await?;
    Ok(have)
}

fn checkin_report_json() -> serde_json::Value {
    json!({
        "agent_version": "0.1.0", "collected_at": "2026-01-01T00:00:00Z", "hostname": "sim",
        "cpu": {"load_15m": 0.31, "load_1m": 0.42, "load_5m": 0.37, "logical_cores": 8},
        "disks": [{"file_system": "ext4", "mount_point": "/", "total_bytes": 536870912000u64, "used_bytes": 132070244352u64}],
        "ip_addresses": ["192.0.2.10"], "logged_in_users": ["alice"],
        "memory": {"swap_total_bytes": 0, "swap_used_bytes": 0, "total_bytes": 17179869184u64, "used_bytes": 6442450944u64},
        "os": {"arch": "x86_64", "family": "linux", "kernel_version": "6.1.0", "name": "Debian GNU/Linux", "version": "12"},
        "uptime_secs": 864000
    })
}

/// Rebuilds `projection` and returns the rate over the whole log: events in the log per second
/// of rebuild, whether the projection read each of them or skipped it (the timeline never reads
/// check-ins).
async fn time_rebuild<P: Projection>(
    db: &BenchDb,
    projection: &P,
    events_in_log: i64,
) -> anyhow::Result<f64> {
    let bar = ui::bar(&format!("rebuilding {}", projection.name()));
    let started = Instant::now();
    let report = rebuild::rebuild(&db.pool, projection, projection.rebuild_batch_size(), |p| {
        bar.set_length(p.total);
        bar.set_position(p.applied);
    })
    .await
    .with_context(|| format!("rebuilding {}", projection.name()))?;
    bar.finish_and_clear();
    let rate = events_in_log as f64 / started.elapsed().as_secs_f64();
    ui::step(&format!(
        "{}: a log of {events_in_log} events in {:.1?} ({rate:.0}/s; {} of them read and applied)",
        projection.name(),
        started.elapsed(),
        report.applied,
    ));
    Ok(rate)
}

async fn time_queries(gateway: &Gateway, paths: &[String], n: usize) -> Latencies {
    let mut latencies = Latencies::default();
    for i in 0..n {
        let path = &paths[i % paths.len()];
        let started = Instant::now();
        let ok = gateway
            .http
            .get(format!("{}{path}", gateway.base))
            .bearer_auth(&gateway.admin_token)
            .send()
            .await
            .map(|r| r.status().is_success());
        if matches!(ok, Ok(true)) {
            latencies.record(started.elapsed());
        }
    }
    latencies
}

/// Waits until every live projection and the dispatcher have followed the log to its end: the
/// rebuilds above cover the agent list and the timeline, the others start from where the fill
/// left them, and queries measured while they catch up would measure the catching up.
async fn caught_up(db: &BenchDb) -> anyhow::Result<()> {
    let end: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM log")
        .fetch_one(&db.pool)
        .await?;
    let bar = ui::bar("live projections catching up");
    bar.set_length(end as u64);
    let started = Instant::now();
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT COALESCE(min(position), 0) FROM projection_checkpoints \
              WHERE projection NOT LIKE '%@rebuild'",
        )
        .fetch_one(&db.pool)
        .await?;
        bar.set_position(behind.max(0) as u64);
        if behind >= end {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "the live projections did not catch up within an hour"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_and_clear();
    ui::step(&format!(
        "live projections caught up with {end} events in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// p50 and p99 (in ms) of a Prometheus histogram's samples between two scrapes, from its buckets
/// (each quantile is reported as the upper bound of its bucket).
fn histogram_quantiles(before: &str, after: &str, name: &str, label: &str) -> (f64, f64) {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains(label))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
                Some((le, count))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let deltas: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, count)| {
            (
                *le,
                count - b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c),
            )
        })
        .collect();
    let total = deltas.last().map_or(0.0, |(_, c)| *c);
    if total == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| {
        deltas
            .iter()
            .find(|(_, c)| *c >= total * q)
            .map_or(f64::NAN, |(le, _)| le * 1000.0)
    };
    (at(0.5), at(0.99))
}

/// Runs the scenario.
pub(crate) async fn run(targets: &Targets, options: &Options) -> anyhow::Result<Results> {
    // Named by size, so that a smoke run never replaces a large database kept with `--reuse`.
    let db_name = format!("logbook_bench_history_{}", options.events);
    let db = BenchDb::open(targets, &db_name, options.reuse, options.reuse).await?;
    // Agents enroll through the API (so the log has real enrollment events); check-ins are then
    // written in bulk.
    let agents_file = std::env::temp_dir().join(format!("{db_name}-agents.json"));
    let existing: Option<Vec<(String, String)>> = options
        .reuse
        .then(|| std::fs::read(&agents_file).ok())
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(|a: &Vec<(String, String)>| a.len() == options.agents);
    let agents: Vec<SimAgent> = match existing {
        Some(saved) => saved
            .into_iter()
            .map(|(id, credential)| SimAgent { id, credential })
            .collect(),
        None => {
            let mut gateway = Gateway::start(&db, targets).await?;
            let bar = ui::bar("enrolling simulated agents");
            let (_, agents) = env::enroll_fleet(&gateway, options.agents, &bar).await?;
            bar.finish_and_clear();
            gateway.remove_streams().await;
            gateway.stop();
            let saved: Vec<(String, String)> = agents
                .iter()
                .map(|a| (a.id.clone(), a.credential.clone()))
                .collect();
            std::fs::write(&agents_file, serde_json::to_vec(&saved)?)?;
            agents
        }
    };
    let events_in_log = fill(&db, &agents, options.events).await?;
    ui::step(&format!("the log holds {events_in_log} events"));

    let rebuild_fleet_events_per_sec = time_rebuild(&db, &FleetProjection, events_in_log).await?;
    let rebuild_timeline_events_per_sec =
        time_rebuild(&db, &TimelineProjection, events_in_log).await?;

    let mut gateway = Gateway::start(&db, targets).await?;
    caught_up(&db).await?;
    ui::step("timeline and agent list queries");
    let timeline_paths: Vec<String> = agents
        .iter()
        .step_by((agents.len() / 50).max(1))
        .map(|a| format!("/api/v1/agents/{}/timeline?limit=100", a.id))
        .collect();
    time_queries(&gateway, &timeline_paths, 20).await;
    let mut timeline = time_queries(&gateway, &timeline_paths, options.queries).await;
    let list = ["/api/v1/agents?limit=100".to_string()];
    time_queries(&gateway, &list, 20).await;
    let mut agent_list = time_queries(&gateway, &list, options.queries).await;

    ui::step(&format!(
        "projection lag with check-ins at {}/s",
        options.lag_rate
    ));
    let before = gateway.metrics().await?;
    let client = checkin::CheckinClient::new(&gateway, &agents)?;
    checkin::fixed_rate(&client, agents.len(), options.lag_rate, options.duration).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = gateway.metrics().await?;
    let (p50_fleet, p99_fleet) = histogram_quantiles(
        &before,
        &after,
        "logbook_projection_apply_delay_seconds",
        "projection=\"fleet\"",
    );
    let (gateway_peak_rss_mib, _) = env::memory_mib(gateway.pid());
    gateway.remove_streams().await;
    gateway.stop();
    db.drop_unless_kept().await;
    Ok(Results {
        events_in_log,
        agents: options.agents,
        rebuild_fleet_events_per_sec,
        rebuild_timeline_events_per_sec,
        live_lag_rate: options.lag_rate,
        // The agent list is the read model check-ins wait for: the timeline and the jobs read
        // model skip them (the timeline's query reads them from the log itself).
        live_lag_p50_ms: p50_fleet,
        live_lag_p99_ms: p99_fleet,
        timeline_last_100: timeline.summary(),
        agent_list_first_page: agent_list.summary(),
        gateway_peak_rss_mib,
    })
}
