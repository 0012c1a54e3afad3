//! Check-ins in a table of their own (`checkins`, migration 0011): the check-ins an older
//! release recorded in `events` move over with their place in the log, the view `log` reads
//! both tables as one log, and check-ins are as immutable as every other event.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{Ping, read_all};
use logbook_domain::checkin::{CHECKIN_STREAM, CheckinEvent};
use logbook_domain::event_log::LogbookEvent;
use logbook_domain::ids::CheckinId;
use logbook_projections::log;
use logbook_testkit::TestDb;
use sqlx::PgConnection;
use uuid::Uuid;

/// A check-in as releases before 0011 recorded it: a row of `events`, with its id as the
/// idempotency key (or, `keyed` false, only in its payload).
async fn old_checkin(
    conn: &mut PgConnection,
    agent: Uuid,
    sequence: i64,
    event: &CheckinEvent,
    at: DateTime<Utc>,
    keyed: bool,
) {
    let CheckinEvent::AgentCheckedIn { checkin_id, .. } = event;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
                             metadata, idempotency_key) \
         VALUES ($1, $2, $3, 'AgentCheckedIn', '1', $4, $5, $6)",
    )
    .bind(CHECKIN_STREAM)
    .bind(agent.to_string())
    .bind(sequence)
    .bind(serde_json::to_value(event).expect("payload"))
    .bind(common::metadata(at))
    .bind(keyed.then(|| checkin_id.as_uuid()))
    .execute(conn)
    .await
    .expect("old check-in");
}

/// Sequence, check-in id, hostname, collected at, recorded at, OS name.
type MovedCheckin = (i64, Uuid, String, DateTime<Utc>, DateTime<Utc>, String);

type Place = (String, i64, String, String, i64);

async fn places(conn: &mut PgConnection, table: &str) -> Vec<Place> {
    sqlx::query_as(&format!(
        "SELECT tx_id::text, position, aggregate_type, aggregate_id, sequence FROM {table} \
          ORDER BY tx_id, position"
    ))
    .fetch_all(conn)
    .await
    .expect("places")
}

#[tokio::test]
async fn checkins_recorded_in_events_move_to_their_table_keeping_their_place_in_the_log() {
    let db = TestDb::empty().await;
    let mut conn = db.pool.acquire().await.expect("connection");
    logbook_migrations::migrator_through(10)
        .run(&mut *conn)
        .await
        .expect("migrations through 0010");

    let agent = Uuid::new_v4();
    // Whole microseconds, as Postgres keeps times.
    let at = DateTime::from_timestamp_micros((Utc::now() - Duration::hours(1)).timestamp_micros())
        .expect("a time");
    let checkin = |hostname: &str, minutes: i64| CheckinEvent::AgentCheckedIn {
        checkin_id: CheckinId::from(Uuid::new_v4()),
        report: common::report(hostname, at + Duration::minutes(minutes), 3),
    };
    let first = checkin("before-rename", 0);
    let second = checkin("after-rename", 5);
    // Each append its own transaction, check-ins and other events interleaved.
    common::append(&mut conn, "test_stream", "s", 1, &Ping(1), at).await;
    old_checkin(&mut conn, agent, 1, &first, at, true).await;
    common::append(&mut conn, "test_stream", "s", 2, &Ping(2), at).await;
    old_checkin(
        &mut conn,
        agent,
        2,
        &second,
        at + Duration::minutes(5),
        false,
    )
    .await;
    let before = places(&mut conn, "events").await;
    assert_eq!(before.len(), 4);

    logbook_migrations::migrator()
        .run(&mut *conn)
        .await
        .expect("migration 0011 over existing check-ins");

    // The same log, in the same order, each event at the place it had.
    assert_eq!(places(&mut conn, "log").await, before);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = $1")
        .bind(CHECKIN_STREAM)
        .fetch_one(&mut *conn)
        .await
        .expect("count");
    assert_eq!(left, 0, "no check-in is left in events");

    // The typed columns say what the reports say; the id comes from the key or the payload.
    let rows: Vec<MovedCheckin> = sqlx::query_as(
        "SELECT sequence, checkin_id, hostname, collected_at, recorded_at, os_name FROM checkins \
          WHERE agent_id = $1 ORDER BY sequence",
    )
    .bind(agent)
    .fetch_all(&mut *conn)
    .await
    .expect("checkins");
    let expected: Vec<_> = [(1, &first, at), (2, &second, at + Duration::minutes(5))]
        .into_iter()
        .map(|(sequence, event, recorded_at)| {
            let CheckinEvent::AgentCheckedIn { checkin_id, report } = event;
            (
                sequence,
                checkin_id.as_uuid(),
                report.hostname.clone(),
                report.collected_at,
                recorded_at,
                report.os.name.clone(),
            )
        })
        .collect();
    assert_eq!(rows, expected);

    // Readers decode the moved check-ins into the events that were recorded.
    let events = read_all(&mut conn, 4).await;
    let checkins: Vec<CheckinEvent> = events
        .into_iter()
        .filter_map(|e| match e.event {
            Some(LogbookEvent::Checkin(c)) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(checkins, [first, second]);

    // Events appended now continue the one order after them.
    common::append(&mut conn, "test_stream", "s", 3, &Ping(3), Utc::now()).await;
    let after = places(&mut conn, "log").await;
    assert_eq!(after.len(), 5);
    assert!(after[4].1 > before.iter().map(|p| p.1).max().unwrap_or_default());
}

#[tokio::test]
async fn checkins_cannot_be_changed_or_removed() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.expect("connection");
    let agent = Uuid::new_v4().to_string();
    common::append_checkin(&mut conn, &agent, 1, Utc::now()).await;
    for statement in [
        "UPDATE checkins SET hostname = 'forged'",
        "DELETE FROM checkins",
        "TRUNCATE checkins",
    ] {
        let error = sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("events are immutable"),
            "{statement}: {error}"
        );
    }
    let (hostname, n): (String, i64) =
        sqlx::query_as("SELECT min(hostname), count(*) FROM checkins")
            .fetch_one(&mut *conn)
            .await
            .expect("count");
    assert_eq!((hostname.as_str(), n), ("host", 1));
}

#[tokio::test]
async fn the_log_view_merges_both_tables_in_one_order() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.expect("connection");
    let agent = Uuid::new_v4().to_string();
    let now = Utc::now();
    for i in 1..=3 {
        common::append(&mut conn, "test_stream", "s", i, &Ping(i as u32), now).await;
        common::append_checkin(&mut conn, &agent, i, now).await;
    }
    let events = read_all(&mut conn, 6).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.aggregate_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "test_stream",
            CHECKIN_STREAM,
            "test_stream",
            CHECKIN_STREAM,
            "test_stream",
            CHECKIN_STREAM
        ]
    );
    assert!(events.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!(log::end(&mut conn).await.expect("end"), events[5].cursor);
    assert_eq!(
        log::count(&mut conn, log::ReadFilter::Everything)
            .await
            .expect("count"),
        6
    );
    assert_eq!(
        log::count(&mut conn, log::ReadFilter::SkipCheckins)
            .await
            .expect("count"),
        3
    );
}

#[tokio::test]
async fn a_checkins_payload_is_stored_as_its_text_and_read_through_the_log_as_json() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.expect("connection");
    let agent = Uuid::new_v4().to_string();
    common::append_checkin(&mut conn, &agent, 1, Utc::now()).await;
    let (stored, through_log, report_hostname): (String, String, Option<String>) = sqlx::query_as(
        "SELECT pg_typeof(k.payload)::text, json_typeof(l.payload), \
                l.payload #>> '{AgentCheckedIn,report,hostname}' \
           FROM checkins k JOIN log l ON l.position = k.position",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("the check-in");
    assert_eq!(stored, "text");
    assert_eq!(through_log, "object");
    let hostname: String = sqlx::query_scalar("SELECT hostname FROM checkins")
        .fetch_one(&mut *conn)
        .await
        .expect("hostname");
    assert_eq!(report_hostname.as_deref(), Some(hostname.as_str()));
}
