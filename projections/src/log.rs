//! Gap-free, in-order reading of the global event log.
//!
//! Events are ordered by `(tx_id, position)`: the id of the transaction that wrote them, then
//! their identity value. A reader only reads rows whose `tx_id` is below
//! `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still running. Every
//! transaction below that horizon has finished, and any transaction that starts later gets a
//! larger id, so no row can ever appear behind a cursor that a reader has passed: the reader
//! skips nothing and sees nothing twice (docs/adr/0001-global-event-order.md).
//!
//! The log is two tables with one order: `checkins`, the agents' check-ins (most of the log),
//! and `events`, everything else (postgres-es's table). Both draw `position` from one sequence
//! and record `tx_id` alike; the view `log` shows them as one (docs/adr/0005), and the view
//! `log_text`, which these readers read, the same with payload and metadata as text. A reader
//! that needs nothing of check-ins reads `events` alone.
//!
//! One consequence for writers: a transaction's id is assigned at its first write, so an append
//! must be the first write of its transaction. Then an aggregate's later events always carry a
//! larger `tx_id` than its earlier ones, and the global order agrees with every stream's order.

use std::collections::HashMap;

use logbook_domain::event_log::{DecodeError, LogbookEvent};
use logbook_domain::metadata::{EventMetadata, MetadataError};
use sqlx::{PgConnection, Row};

/// A place in the log: everything up to and including this event has been read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogCursor {
    /// The writing transaction's id (`xid8`).
    pub tx_id: i64,
    /// The event's identity value.
    pub position: i64,
}

impl LogCursor {
    /// The cursor before the first event.
    pub const START: LogCursor = LogCursor {
        tx_id: 0,
        position: 0,
    };
}

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.tx_id, self.position)
    }
}

impl std::str::FromStr for LogCursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, pos) = s.split_once('.').ok_or(())?;
        Ok(Self {
            tx_id: tx.parse().map_err(|_| ())?,
            position: pos.parse().map_err(|_| ())?,
        })
    }
}

/// One event read from the log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Where it is in the global order.
    pub cursor: LogCursor,
    /// Its aggregate type (stream kind).
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Its sequence number within the aggregate.
    pub sequence: i64,
    /// Its event type.
    pub event_type: String,
    /// Its metadata.
    pub metadata: EventMetadata,
    /// The typed event; `None` for aggregate types this build does not know, and for events
    /// read without their payload.
    pub event: Option<LogbookEvent>,
}

/// Why the log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The database failed.
    #[error("reading the event log")]
    Database(#[from] sqlx::Error),
    /// An event of a known type could not be decoded.
    #[error("event at {cursor} ({aggregate_type} {aggregate_id} #{sequence}) cannot be decoded")]
    Decode {
        /// Where it is.
        cursor: LogCursor,
        /// Its stream kind.
        aggregate_type: String,
        /// Its stream.
        aggregate_id: String,
        /// Its sequence.
        sequence: i64,
        /// What was wrong.
        #[source]
        source: DecodeError,
    },
    /// An event's metadata could not be read.
    #[error("event at {cursor} has unreadable metadata")]
    Metadata {
        /// Where it is.
        cursor: LogCursor,
        /// What was wrong.
        #[source]
        source: MetadataError,
    },
}

/// Reads up to `limit` events after `after`, in log order, stopping at the commit-safe horizon.
pub async fn read_after(
    conn: &mut PgConnection,
    after: LogCursor,
    limit: i64,
) -> Result<Vec<StoredEvent>, LogError> {
    Ok(read_batch(conn, after, limit, ReadFilter::default())
        .await?
        .events)
}

/// What a reader needs of the log.
#[derive(Debug, Clone, Copy, Default)]
pub enum ReadFilter<'a> {
    /// Every event, with its payload.
    #[default]
    Everything,
    /// Events of the `ignored` aggregate types are passed over inside Postgres (nothing is sent
    /// or decoded) and only move the batch's end: for a reader that handles them with SQL over
    /// the batch's [`LogWindow`].
    PassOver {
        /// The aggregate types passed over.
        ignored: &'a [&'a str],
        /// Whether the batch also says when each passed-over event was recorded (for a reader
        /// that reports its lag; [`LogBatch::passed_over_recorded_at`]).
        times: bool,
    },
    /// Check-ins are not read at all, not even as part of a window: the reader reads the
    /// `events` table, which holds every other event, so a stream of check-ins costs it
    /// nothing. A batch that is not full ends at the newest event
    /// below the horizon, whatever its kind, so that the reader's cursor still reaches the end
    /// of the log. For readers that need nothing of check-ins.
    SkipCheckins,
}

/// A stretch of the log: the events after `after` up to `end`, `len` of them. A reader
/// that passes over check-ins in Rust can still handle them with SQL over the window, inside
/// Postgres: [`CHECKINS_WINDOW_SQL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogWindow {
    /// Where the window starts (exclusive).
    pub after: LogCursor,
    /// Where it ends (inclusive).
    pub end: LogCursor,
    /// How many events it holds; `None` when the reader skipped check-ins without counting
    /// them ([`ReadFilter::SkipCheckins`]).
    pub len: Option<i64>,
}

/// The check-ins of a [`LogWindow`] bound as `$1`..`$5` (`after.tx_id`, `after.position`,
/// `end.tx_id`, `end.position`, `len`; a `NULL` limit is none), as a subquery of the `checkins`
/// table to select from: a range of its `checkins_log_order` index. (The order and the limit,
/// which the window's bounds make redundant, are what make it that range: the planner cannot
/// estimate how many rows a row comparison of `xid8`s selects, and without them it read the
/// whole table.)
pub const CHECKINS_WINDOW_SQL: &str = "(SELECT * FROM checkins \
    WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) \
      AND (tx_id, position) <= ($3::bigint::text::xid8, $4) \
    ORDER BY tx_id, position LIMIT $5)";

impl LogWindow {
    /// Binds the window as `$1`..`$5` of [`CHECKINS_WINDOW_SQL`].
    pub fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.after.tx_id)
            .bind(self.after.position)
            .bind(self.end.tx_id)
            .bind(self.end.position)
            .bind(self.len)
    }
}

/// Events read from the log.
#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    /// The events the reader needs, in log order.
    pub events: Vec<StoredEvent>,
    /// How many events the batch read or passed over, needed or not (at most the limit asked
    /// for). Check-ins skipped by [`ReadFilter::SkipCheckins`] are not counted: the batch is
    /// full when it holds the limit of other events.
    pub scanned: usize,
    /// Where the reader's cursor moves (the last event read or passed over, or with
    /// [`ReadFilter::SkipCheckins`] the newest event below the horizon), and when that event
    /// was recorded. `None` when there is nothing new.
    pub end: Option<(LogCursor, chrono::DateTime<chrono::Utc>)>,
    /// When each event passed over inside Postgres was recorded, if the filter asked for it.
    pub passed_over_recorded_at: Vec<chrono::DateTime<chrono::Utc>>,
}

/// Reads up to `limit` events after `after`, in log order, stopping at the commit-safe horizon,
/// leaving out what `filter` says the reader does not need.
pub async fn read_batch(
    conn: &mut PgConnection,
    after: LogCursor,
    limit: i64,
    filter: ReadFilter<'_>,
) -> Result<LogBatch, LogError> {
    let (ignored, times) = match filter {
        ReadFilter::PassOver { ignored, times } if !ignored.is_empty() => (ignored, times),
        ReadFilter::SkipCheckins => return read_beside_checkins(conn, after, limit).await,
        _ => (&[][..], false),
    };
    if ignored.is_empty() {
        let rows = sqlx::query(
            "SELECT tx_id::text::bigint AS tx, position, aggregate_type, aggregate_id, sequence, \
                    event_type, event_version, metadata::text AS metadata, payload::text AS payload \
               FROM log_text \
              WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) \
                AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
              ORDER BY tx_id, position \
              LIMIT $3",
        )
        .bind(after.tx_id)
        .bind(after.position)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        let events = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
        return Ok(LogBatch {
            scanned: events.len(),
            end: events.last().map(|e| (e.cursor, e.metadata.recorded_at)),
            passed_over_recorded_at: Vec::new(),
            events,
        });
    }
    // The window is taken first; of it, only the needed events and the last one (whose cursor
    // ends the batch, and which carries when each passed-over event was recorded) leave
    // Postgres.
    let rows = sqlx::query(
        "SELECT tx_id::text::bigint AS tx, position, aggregate_type, aggregate_id, sequence, \
                event_type, event_version, metadata::text AS metadata, payload::text AS payload, \
                wanted, n, scanned, CASE WHEN n = scanned THEN passed_over END AS passed_over \
           FROM (SELECT w.*, row_number() OVER (ORDER BY w.tx_id, w.position) AS n, \
                        count(*) OVER () AS scanned, \
                        array_agg(w.recorded_at) FILTER (WHERE NOT w.wanted AND $5) \
                            OVER () \
                            AS passed_over \
                   FROM (SELECT tx_id, position, aggregate_type, aggregate_id, sequence, event_type, \
                                event_version, metadata, recorded_at, \
                                CASE WHEN aggregate_type = ANY($4) THEN NULL ELSE payload END AS payload, \
                                aggregate_type <> ALL($4) AS wanted \
                           FROM log_text \
                          WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) \
                            AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                          ORDER BY tx_id, position \
                          LIMIT $3) w) x \
          WHERE wanted OR n = scanned \
          ORDER BY tx_id, position",
    )
    .bind(after.tx_id)
    .bind(after.position)
    .bind(limit)
    .bind(ignored)
    .bind(times)
    .fetch_all(&mut *conn)
    .await?;
    let mut batch = LogBatch::default();
    for row in &rows {
        let event = decode_row(row)?;
        batch.scanned = row.try_get::<i64, _>("scanned")? as usize;
        batch.end = Some((event.cursor, event.metadata.recorded_at));
        if row.try_get::<i64, _>("n")? as usize == batch.scanned {
            let passed_over: Option<Vec<chrono::DateTime<chrono::Utc>>> =
                row.try_get("passed_over")?;
            batch.passed_over_recorded_at = passed_over.unwrap_or_default();
        }
        if row.try_get::<bool, _>("wanted")? {
            batch.events.push(event);
        }
    }
    Ok(batch)
}

/// The statement behind [`ReadFilter::SkipCheckins`]: up to `$3` events after the cursor from
/// `events` (every event but check-ins), then the newest event of the whole log below the
/// horizon (`wanted` false, no payload), found by walking both tables' order indexes back from
/// the horizon. Both halves see the same horizon: it is the statement's snapshot. (The second
/// half's columns are qualified: its `ORDER BY` must name the view's `tx_id`, which the
/// indexes hold, not the output column of the same name.)
const BESIDE_CHECKINS_SQL: &str = "SELECT * FROM ( \
           (SELECT tx_id::text::bigint AS tx, position, aggregate_type, aggregate_id, sequence, \
                   event_type, event_version, metadata::text AS metadata, payload::text AS payload, \
                   true AS wanted \
              FROM events \
             WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) \
               AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY tx_id, position \
             LIMIT $3) \
           UNION ALL \
           (SELECT e.tx_id::text::bigint, e.position, e.aggregate_type, e.aggregate_id, \
                   e.sequence, e.event_type, e.event_version, e.metadata::text, NULL, false \
              FROM log_text e \
             WHERE (e.tx_id, e.position) > ($1::bigint::text::xid8, $2) \
               AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY e.tx_id DESC, e.position DESC \
             LIMIT 1)) batch \
         ORDER BY tx, position, wanted DESC";

async fn read_beside_checkins(
    conn: &mut PgConnection,
    after: LogCursor,
    limit: i64,
) -> Result<LogBatch, LogError> {
    let rows = sqlx::query(BESIDE_CHECKINS_SQL)
        .bind(after.tx_id)
        .bind(after.position)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    let mut batch = LogBatch::default();
    let mut newest = None;
    for row in &rows {
        let event = decode_row(row)?;
        if row.try_get::<bool, _>("wanted")? {
            batch.events.push(event);
        } else {
            newest = Some((event.cursor, event.metadata.recorded_at));
        }
    }
    batch.scanned = batch.events.len();
    let last_read = batch
        .events
        .last()
        .map(|e| (e.cursor, e.metadata.recorded_at));
    batch.end = if batch.scanned as i64 >= limit {
        // Full: more events may follow the last one read; the next batch starts there.
        last_read
    } else {
        // Everything below the horizon other than check-ins was read: the end is the newest
        // event there (never before the last one read).
        newest.max(last_read)
    };
    Ok(batch)
}

fn decode_row(row: &sqlx::postgres::PgRow) -> Result<StoredEvent, LogError> {
    let cursor = LogCursor {
        tx_id: row.try_get("tx")?,
        position: row.try_get("position")?,
    };
    let aggregate_type: String = row.try_get("aggregate_type")?;
    let aggregate_id: String = row.try_get("aggregate_id")?;
    let sequence: i64 = row.try_get("sequence")?;
    let event_version: String = row.try_get("event_version")?;
    let payload: Option<&str> = row.try_get("payload")?;
    let metadata: &str = row.try_get("metadata")?;
    let map: HashMap<String, String> =
        serde_json::from_str(metadata).map_err(|_| LogError::Metadata {
            cursor,
            source: MetadataError {
                key: "metadata",
                value: Some(metadata.to_string()),
            },
        })?;
    let metadata =
        EventMetadata::from_map(&map).map_err(|source| LogError::Metadata { cursor, source })?;
    let decoded = payload.map(|p| LogbookEvent::decode_str(&aggregate_type, &event_version, p));
    let event = match decoded {
        None => None,
        Some(Ok(event)) => Some(event),
        // Written by a newer build: not ours to interpret; projections pass over it.
        Some(Err(DecodeError::UnknownAggregateType(_))) => None,
        Some(Err(source)) => {
            return Err(LogError::Decode {
                cursor,
                aggregate_type,
                aggregate_id,
                sequence,
                source,
            });
        }
    };
    Ok(StoredEvent {
        cursor,
        aggregate_type,
        aggregate_id,
        sequence,
        event_type: row.try_get("event_type")?,
        metadata,
        event,
    })
}

/// Whether any committed event that a reader with `filter` wants lies after `after` but beyond
/// the horizon, held back by an older transaction that is still running. A reader that finds
/// one should look again shortly. A reader that skips check-ins is not held back by check-ins:
/// the ingest's transactions are nearly always running, and the cursor passes over them later
/// anyway.
pub async fn has_events_beyond_horizon(
    conn: &mut PgConnection,
    after: LogCursor,
    filter: ReadFilter<'_>,
) -> Result<bool, sqlx::Error> {
    // Not `EXISTS`: the planner misjudges row comparisons and would scan the table from its
    // start; ordering by the index makes it look at the cursor's place only.
    let sql = match filter {
        ReadFilter::SkipCheckins => NEXT_BESIDE_CHECKINS_SQL,
        _ => NEXT_SQL,
    };
    let next: Option<i64> = sqlx::query_scalar(sql)
        .bind(after.tx_id)
        .bind(after.position)
        .fetch_optional(conn)
        .await?;
    Ok(next.is_some())
}

const NEXT_SQL: &str = "SELECT position FROM log WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) \
                          ORDER BY tx_id, position LIMIT 1";

/// [`NEXT_SQL`] in `events` alone, which holds every event but check-ins.
const NEXT_BESIDE_CHECKINS_SQL: &str = "SELECT position FROM events \
    WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) ORDER BY tx_id, position LIMIT 1";

/// Whether a committed event of one of `event_types` (none of them check-ins) lies after
/// `after` but beyond the horizon: [`has_events_beyond_horizon`] for a reader that waits only
/// for those (the job dispatcher) and reads the rest at its next round, whatever wakes it.
pub async fn has_events_of_types_beyond_horizon(
    conn: &mut PgConnection,
    after: LogCursor,
    event_types: &[&str],
) -> Result<bool, sqlx::Error> {
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM events \
          WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) AND event_type = ANY($3) \
          ORDER BY tx_id, position LIMIT 1",
    )
    .bind(after.tx_id)
    .bind(after.position)
    .bind(event_types)
    .fetch_optional(conn)
    .await?;
    Ok(next.is_some())
}

/// How many events of the log a reader with `filter` reads or passes over: all of them, or with
/// [`ReadFilter::SkipCheckins`] those that are not check-ins.
pub async fn count(conn: &mut PgConnection, filter: ReadFilter<'_>) -> Result<u64, sqlx::Error> {
    let sql = match filter {
        ReadFilter::SkipCheckins => "SELECT count(*) FROM events",
        ReadFilter::Everything | ReadFilter::PassOver { .. } => "SELECT count(*) FROM log",
    };
    let count: i64 = sqlx::query_scalar(sql).fetch_one(conn).await?;
    Ok(count as u64)
}

/// The newest committed event of the log (the start when it is empty).
pub async fn end(conn: &mut PgConnection) -> Result<LogCursor, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tx_id::text::bigint AS tx, position FROM log \
          ORDER BY tx_id DESC, position DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    row.map_or(Ok(LogCursor::START), |row| {
        Ok(LogCursor {
            tx_id: row.try_get("tx")?,
            position: row.try_get("position")?,
        })
    })
}

/// How far behind `after` a reader with `filter` is: the number of committed events after it
/// that it has still to read or pass over (counting at most `cap`; for a reader that skips
/// check-ins, the others), and the recorded time of the first of them.
pub async fn backlog(
    conn: &mut PgConnection,
    after: LogCursor,
    cap: i64,
    filter: ReadFilter<'_>,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), sqlx::Error> {
    // `events` holds every event but check-ins; `log` both.
    let table = match filter {
        ReadFilter::SkipCheckins => "events",
        _ => "log",
    };
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT 1 FROM {table} \
          WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) ORDER BY tx_id, position LIMIT $3) pending"
    ))
    .bind(after.tx_id)
    .bind(after.position)
    .bind(cap)
    .fetch_one(&mut *conn)
    .await?;
    if count == 0 {
        return Ok((0, None));
    }
    let oldest = sqlx::query_scalar(&format!(
        "SELECT (metadata->>'recorded_at')::timestamptz FROM {table} \
          WHERE (tx_id, position) > ($1::bigint::text::xid8, $2) ORDER BY tx_id, position LIMIT 1"
    ))
    .bind(after.tx_id)
    .bind(after.position)
    .fetch_optional(&mut *conn)
    .await?;
    Ok((count, oldest))
}
