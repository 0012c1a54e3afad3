//! Helpers for projection tests: appending events the way the gateway does (the projections
//! crate itself never writes events).

#![allow(dead_code, unreachable_pub)]

use chrono::{DateTime, Utc};
use logbook_domain::cqrs_es::DomainEvent;
use logbook_domain::ids::CorrelationId;
use logbook_domain::metadata::{Actor, EventMetadata};
use sqlx::PgConnection;
use uuid::Uuid;

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
