//! Helpers for projection tests: appending events the way the gateway does (the projections
//! crate itself never writes events).

#![allow(dead_code, unreachable_pub)]

use chrono::{DateTime, Utc};
use logbook_domain::checkin::{
    CheckinEvent, CheckinReport, CpuInfo, DiskUsage, MemoryInfo, OsInfo,
};
use logbook_domain::cqrs_es::DomainEvent;
use logbook_domain::ids::CheckinId;
use logbook_domain::ids::CorrelationId;
use logbook_domain::metadata::{Actor, EventMetadata};
use logbook_projections::log::{self, LogCursor};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

/// An event of no aggregate of the domain, for tests of the log itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping(pub u32);

impl DomainEvent for Ping {
    fn event_type(&self) -> String {
        "Ping".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

/// The whole log once it holds `count` readable events: other tests' transactions on the same
/// server can hold the horizon back for a moment.
pub async fn read_all(conn: &mut PgConnection, count: usize) -> Vec<log::StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let all = log::read_after(conn, LogCursor::START, 100)
            .await
            .expect("read the log");
        if all.len() == count || std::time::Instant::now() > deadline {
            assert_eq!(all.len(), count);
            return all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn metadata(at: DateTime<Utc>) -> serde_json::Value {
    let meta = EventMetadata {
        actor: Actor::System("test".into()),
        correlation_id: CorrelationId::from(Uuid::new_v4()),
        request_id: "test".into(),
        recorded_at: at,
    };
    serde_json::to_value(meta.to_map()).expect("metadata json")
}

/// Appends one event as the first write of its own statement.
pub async fn append<E: DomainEvent>(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event: &E,
    at: DateTime<Utc>,
) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .bind(event.event_type())
    .bind(event.event_version())
    .bind(serde_json::to_value(event).expect("payload json"))
    .bind(metadata(at))
    .execute(conn)
    .await
    .expect("append event");
}

/// A report as an agent on a small Linux machine sends it.
pub fn report(hostname: &str, collected_at: DateTime<Utc>, used_gib: u64) -> CheckinReport {
    CheckinReport {
        collected_at,
        hostname: hostname.into(),
        os: OsInfo {
            family: "linux".into(),
            name: "Debian GNU/Linux".into(),
            version: "12".into(),
            kernel_version: "6.1.0".into(),
            arch: "x86_64".into(),
        },
        agent_version: "0.1.0".into(),
        uptime_secs: 100,
        cpu: CpuInfo {
            logical_cores: 2,
            load_1m: 0.1,
            load_5m: 0.1,
            load_15m: 0.1,
        },
        memory: MemoryInfo {
            total_bytes: 8 << 30,
            used_bytes: 1 << 30,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
        },
        disks: vec![DiskUsage {
            mount_point: "/".into(),
            file_system: "ext4".into(),
            total_bytes: 100 << 30,
            used_bytes: used_gib << 30,
        }],
        logged_in_users: vec![],
        ip_addresses: vec!["192.0.2.1".into()],
    }
}

/// Appends one check-in of agent `agent_id` (a uuid; its `sequence`th) as the first write of its
/// own statement, as the gateway's ingest writes it.
pub async fn append_checkin(
    conn: &mut PgConnection,
    agent_id: &str,
    sequence: i64,
    at: DateTime<Utc>,
) {
    append_report(conn, agent_id, sequence, report("host", at, 1), at).await;
}

/// Appends `report` as check-in `sequence` of agent `agent_id`, recorded at `at`, as the first
/// write of its own statement.
pub async fn append_report(
    conn: &mut PgConnection,
    agent_id: &str,
    sequence: i64,
    report: CheckinReport,
    at: DateTime<Utc>,
) {
    let checkin_id = CheckinId::from(Uuid::new_v4());
    let event = CheckinEvent::AgentCheckedIn {
        checkin_id,
        report: report.clone(),
    };
    sqlx::query(
        "INSERT INTO checkins (agent_id, sequence, checkin_id, recorded_at, collected_at, hostname, \
                               os_family, os_name, os_version, kernel_version, arch, agent_version, \
                               payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::json)",
    )
    .bind(Uuid::parse_str(agent_id).expect("a check-in's agent id is a uuid"))
    .bind(sequence)
    .bind(checkin_id.as_uuid())
    .bind(at)
    .bind(report.collected_at)
    .bind(&report.hostname)
    .bind(&report.os.family)
    .bind(&report.os.name)
    .bind(&report.os.version)
    .bind(&report.os.kernel_version)
    .bind(&report.os.arch)
    .bind(&report.agent_version)
    .bind(serde_json::to_string(&event).expect("payload json"))
    .bind(metadata(at).to_string())
    .execute(conn)
    .await
    .expect("append check-in");
}
