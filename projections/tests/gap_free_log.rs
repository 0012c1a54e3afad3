//! The log reader never skips an event that commits late and never returns one twice, under
//! concurrent writers that hold their transactions open for random times and sometimes roll back.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Ping, read_all};
use logbook_domain::checkin::CHECKIN_STREAM;
use logbook_projections::log::{self, LogCursor};
use logbook_testkit::TestDb;
use rand::Rng;
use tokio::sync::Mutex;
use uuid::Uuid;

/// Appends a ping, or a check-in when `aggregate_type` is the check-ins'.
async fn append(conn: &mut sqlx::PgConnection, aggregate_type: &str, id: &str, seq: i64) {
    let now = chrono::Utc::now();
    if aggregate_type == CHECKIN_STREAM {
        common::append_checkin(conn, id, seq, now).await;
    } else {
        common::append(conn, aggregate_type, id, seq, &Ping(seq as u32), now).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_with_delays_and_rollbacks_lose_nothing() {
    let db = TestDb::new().await;
    const WRITERS: usize = 12;
    const TXS_PER_WRITER: usize = 40;

    // A third of the writers append check-ins (to agents whose ids are uuids), which the
    // second reader skips.
    let stream_type = |w: usize| {
        if w.is_multiple_of(3) {
            CHECKIN_STREAM
        } else {
            "test_stream"
        }
    };
    let stream_id = move |w: usize| {
        if stream_type(w) == CHECKIN_STREAM {
            Uuid::from_u128(w as u128).to_string()
        } else {
            format!("writer-{w}")
        }
    };
    let committed: Arc<Mutex<HashSet<(String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = db.pool.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            let stream = stream_id(w);
            let mut next_seq = 1i64;
            for _ in 0..TXS_PER_WRITER {
                let (events, delay_ms, rollback) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(1..=3),
                        rng.random_range(0..15u64),
                        rng.random_bool(0.2),
                    )
                };
                let mut tx = pool.begin().await.expect("begin");
                let mut written = Vec::new();
                for i in 0..events {
                    let seq = next_seq + i;
                    append(&mut tx, stream_type(w), &stream, seq).await;
                    written.push((stream.clone(), seq));
                    // Hold the transaction open between and after writes so that other writers
                    // take later positions and commit first.
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                if rollback {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                    next_seq += events;
                    committed.lock().await.extend(written);
                }
            }
        }));
    }

    let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = |filter: log::ReadFilter<'static>| {
        let pool = db.pool.clone();
        let done = writers_done.clone();
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.expect("reader connection");
            let mut cursor = LogCursor::START;
            let mut seen = Vec::new();
            // Read until the writers are done and nothing committed is left after the cursor.
            // The horizon can hold events back for a while (transaction ids are server-wide, so
            // other tests' transactions count too); that only delays them.
            loop {
                let batch = log::read_batch(&mut conn, cursor, 7, filter)
                    .await
                    .expect("read");
                for event in &batch.events {
                    assert!(event.cursor > cursor, "cursor went backwards");
                    seen.push((event.aggregate_id.clone(), event.sequence));
                }
                match batch.end {
                    Some((end, _)) => {
                        assert!(end > cursor, "the batch's end is not after its start");
                        cursor = end;
                    }
                    None => {
                        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                        if finished
                            && !log::has_events_beyond_horizon(&mut conn, cursor, filter)
                                .await
                                .expect("check")
                        {
                            return seen;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        })
    };
    let everything = reader(log::ReadFilter::Everything);
    let beside_checkins = reader(log::ReadFilter::SkipCheckins);

    for w in writers {
        w.await.expect("writer");
    }
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = everything.await.expect("reader");
    let seen_beside_checkins = beside_checkins.await.expect("reader skipping check-ins");
    let committed = committed.lock().await.clone();
    check_read(&seen, &committed);
    let without_checkins: HashSet<_> = committed
        .iter()
        .filter(|(stream, _)| stream.starts_with("writer-"))
        .cloned()
        .collect();
    check_read(&seen_beside_checkins, &without_checkins);
}

/// `seen` holds each of `committed` once, nothing else, and each stream in its own order.
fn check_read(seen: &[(String, i64)], committed: &HashSet<(String, i64)>) {
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "the reader saw an event twice");
    let skipped: Vec<_> = committed.difference(&unique).collect();
    assert!(
        skipped.is_empty(),
        "the reader skipped {} events, such as {:?}",
        skipped.len(),
        &skipped[..skipped.len().min(5)]
    );
    let phantom: Vec<_> = unique.difference(committed).collect();
    assert!(
        phantom.is_empty(),
        "the reader saw rolled-back events: {phantom:?}"
    );
    assert!(
        committed.len() > 100,
        "the test wrote too little to mean anything"
    );

    // Within each stream, the global order agrees with the stream's own order.
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for (stream, seq) in seen {
        let prev = last.insert(stream.clone(), *seq).unwrap_or(0);
        assert!(*seq > prev, "{stream} out of order: {seq} after {prev}");
    }
}

#[tokio::test]
async fn an_event_that_commits_late_is_read_after_it_commits_not_skipped() {
    let db = TestDb::new().await;
    let now = chrono::Utc::now();

    // T1 writes first (lower position) but stays open.
    let mut slow = db.pool.begin().await.expect("begin slow");
    common::append(&mut slow, "test_stream", "slow", 1, &Ping(1), now).await;
    // T2 writes later and commits first.
    let mut fast = db.pool.acquire().await.expect("fast");
    common::append(&mut fast, "test_stream", "fast", 1, &Ping(2), now).await;

    let mut reader = db.pool.acquire().await.expect("reader");
    let early = log::read_after(&mut reader, LogCursor::START, 100)
        .await
        .expect("read");
    assert!(
        early.is_empty(),
        "nothing may be read while an older transaction is open, else the reader would pass it: {early:?}"
    );
    assert!(
        log::has_events_beyond_horizon(&mut reader, LogCursor::START, Default::default())
            .await
            .expect("check")
    );

    slow.commit().await.expect("commit slow");
    // Transactions of other tests on the same server can hold the horizon back for a moment
    // (transaction ids are server-wide), so wait for both events to become readable.
    let mut late = Vec::new();
    for _ in 0..500 {
        late = log::read_after(&mut reader, LogCursor::START, 100)
            .await
            .expect("read");
        if late.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let streams: Vec<&str> = late.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(streams, ["slow", "fast"]);
}

#[tokio::test]
async fn checkins_held_back_hold_back_only_the_readers_of_checkins() {
    let db = TestDb::new().await;
    let now = chrono::Utc::now();

    // One check-in batch still in flight, and a later one committed: the later one lies beyond
    // the horizon, as check-ins nearly always do while the ingest's batches overlap.
    let mut in_flight = db.pool.begin().await.expect("begin check-in");
    common::append_checkin(&mut in_flight, &Uuid::new_v4().to_string(), 1, now).await;
    let mut later = db.pool.acquire().await.expect("later");
    common::append_checkin(&mut later, &Uuid::new_v4().to_string(), 1, now).await;

    let mut reader = db.pool.acquire().await.expect("reader");
    let everything = log::ReadFilter::Everything;
    let skip = log::ReadFilter::SkipCheckins;
    assert!(
        log::has_events_beyond_horizon(&mut reader, LogCursor::START, everything)
            .await
            .expect("check"),
        "a reader of check-ins must look again for the committed one"
    );
    assert!(
        !log::has_events_beyond_horizon(&mut reader, LogCursor::START, skip)
            .await
            .expect("check"),
        "a reader that skips check-ins has nothing to wait for"
    );
    let (backlog, oldest) = log::backlog(&mut reader, LogCursor::START, 100, everything)
        .await
        .expect("backlog");
    assert_eq!((backlog, oldest.is_some()), (1, true));
    let (backlog, oldest) = log::backlog(&mut reader, LogCursor::START, 100, skip)
        .await
        .expect("backlog");
    assert_eq!(
        (backlog, oldest),
        (0, None),
        "check-ins are no backlog for a reader that skips them"
    );

    // An event of another kind, committed beyond the horizon, holds back both.
    common::append(&mut later, "test_stream", "other", 1, &Ping(1), now).await;
    assert!(
        log::has_events_beyond_horizon(&mut reader, LogCursor::START, skip)
            .await
            .expect("check")
    );
    let (backlog, _) = log::backlog(&mut reader, LogCursor::START, 100, skip)
        .await
        .expect("backlog");
    assert_eq!(backlog, 1);
    in_flight.commit().await.expect("commit check-in");
}

#[tokio::test]
async fn ignored_streams_are_passed_over_and_still_move_the_batch_end() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.expect("begin");
    // In log order: noise 1..3, wanted 1, noise 4..6.
    let order = [("noise", 1), ("noise", 2), ("noise", 3), ("wanted", 1)]
        .into_iter()
        .chain((4..=6).map(|seq| ("noise", seq)));
    for (stream, seq) in order {
        let id = &stream[..1];
        common::append(
            &mut tx,
            stream,
            id,
            seq,
            &Ping(seq as u32),
            chrono::Utc::now(),
        )
        .await;
    }
    tx.commit().await.expect("commit");
    let filter = log::ReadFilter::PassOver {
        ignored: &["noise"],
        times: true,
    };
    let mut conn = db.pool.acquire().await.expect("connection");

    let all = read_all(&mut conn, 7).await;

    // The whole window: one event wanted, seven passed over, the end at the last noise event.
    let batch = log::read_batch(&mut conn, LogCursor::START, 100, filter)
        .await
        .expect("read");
    assert_eq!(batch.scanned, 7);
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].aggregate_type, "wanted");
    assert!(
        batch.events[0].event.is_none(),
        "unknown types decode to no event"
    );
    assert_eq!(batch.end.map(|(c, _)| c), Some(all[6].cursor));
    let noise_times: Vec<_> = all
        .iter()
        .filter(|e| e.aggregate_type == "noise")
        .map(|e| e.metadata.recorded_at)
        .collect();
    let mut passed_over = batch.passed_over_recorded_at.clone();
    passed_over.sort();
    assert_eq!(passed_over, noise_times);

    // A reader that reports no lag is not told when passed-over events were recorded.
    let quiet = log::ReadFilter::PassOver {
        ignored: &["noise"],
        times: false,
    };
    let batch = log::read_batch(&mut conn, LogCursor::START, 100, quiet)
        .await
        .expect("read");
    assert_eq!((batch.scanned, batch.events.len()), (7, 1));
    assert!(batch.passed_over_recorded_at.is_empty());

    // A window of noise only: nothing to apply, but the end still moves.
    let batch = log::read_batch(&mut conn, LogCursor::START, 2, filter)
        .await
        .expect("read");
    assert_eq!((batch.scanned, batch.events.len()), (2, 0));
    assert_eq!(batch.end.map(|(c, _)| c), Some(all[1].cursor));

    // A window that ends on the wanted event.
    let batch = log::read_batch(&mut conn, all[1].cursor, 2, filter)
        .await
        .expect("read");
    assert_eq!((batch.scanned, batch.events.len()), (2, 1));
    assert_eq!(batch.end.map(|(c, _)| c), Some(all[3].cursor));
    assert_eq!(
        batch.passed_over_recorded_at,
        vec![all[2].metadata.recorded_at]
    );

    // Past the end: nothing scanned, no end.
    let batch = log::read_batch(&mut conn, all[6].cursor, 100, filter)
        .await
        .expect("read");
    assert_eq!((batch.scanned, batch.events.len()), (0, 0));
    assert!(batch.end.is_none());
}

#[tokio::test]
async fn a_reader_skipping_checkins_reads_every_other_event_and_ends_at_the_newest() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.expect("begin");
    // In log order: check-ins 1..3, wanted 1, check-ins 4..6, wanted 2, check-in 7.
    let order = [
        (CHECKIN_STREAM, 1),
        (CHECKIN_STREAM, 2),
        (CHECKIN_STREAM, 3),
        ("wanted", 1),
        (CHECKIN_STREAM, 4),
        (CHECKIN_STREAM, 5),
        (CHECKIN_STREAM, 6),
        ("wanted", 2),
        (CHECKIN_STREAM, 7),
    ];
    let agent = Uuid::new_v4().to_string();
    for (stream, seq) in order {
        append(&mut tx, stream, &agent, seq).await;
    }
    tx.commit().await.expect("commit");
    let mut conn = db.pool.acquire().await.expect("connection");
    let all = read_all(&mut conn, 9).await;
    let skip = log::ReadFilter::SkipCheckins;
    let read = async |conn: &mut sqlx::PgConnection, after: LogCursor, limit: i64| {
        let batch = log::read_batch(conn, after, limit, skip)
            .await
            .expect("read");
        let sequences: Vec<i64> = batch.events.iter().map(|e| e.sequence).collect();
        assert!(batch.events.iter().all(|e| e.aggregate_type == "wanted"));
        assert_eq!(batch.scanned, sequences.len());
        (sequences, batch.end)
    };

    // Every other event at once; the end is the newest event, a check-in, and its time.
    let (sequences, end) = read(&mut conn, LogCursor::START, 100).await;
    assert_eq!(sequences, [1, 2]);
    assert_eq!(end, Some((all[8].cursor, all[8].metadata.recorded_at)));

    // A full batch ends at its last event: more may follow.
    let (sequences, end) = read(&mut conn, LogCursor::START, 1).await;
    assert_eq!(sequences, [1]);
    assert_eq!(end.map(|(c, _)| c), Some(all[3].cursor));
    let (sequences, end) = read(&mut conn, all[3].cursor, 1).await;
    assert_eq!(sequences, [2]);
    assert_eq!(end.map(|(c, _)| c), Some(all[7].cursor));

    // Only check-ins left: nothing read, and the end still moves past them.
    let (sequences, end) = read(&mut conn, all[7].cursor, 1).await;
    assert!(sequences.is_empty());
    assert_eq!(end.map(|(c, _)| c), Some(all[8].cursor));

    // Past the end: nothing, no end.
    let (sequences, end) = read(&mut conn, all[8].cursor, 100).await;
    assert!(sequences.is_empty());
    assert!(end.is_none());
}
