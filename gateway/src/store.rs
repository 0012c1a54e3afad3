//! The write side of the event log: loading an aggregate and appending its new events, alone or
//! together with other aggregates' events and credential changes in one transaction.
//!
//! Aggregates are loaded through postgres-es's `PostgresEventRepository` (the `events` table is
//! postgres-es's, extended). Appends are our own multi-row `INSERT` rather than
//! `CqrsFramework::execute`, for two reasons: some commands must record several aggregates'
//! events atomically (enrolling an agent redeems its token in the same transaction), and the
//! credential table must change in the same transaction as the events that issue or revoke a
//! secret. Optimistic concurrency is the primary key `(aggregate_type, aggregate_id, sequence)`,
//! exactly as in postgres-es.
//!
//! Every append is the first write of its transaction (see `logbook_projections::log`): callers
//! append events before touching any other table.

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventRepository;
use cqrs_es::{Aggregate, DomainEvent};
use logbook_domain::metadata::EventMetadata;
use postgres_es::PostgresEventRepository;
use sqlx::{PgConnection, PgPool};

use crate::db;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres is unavailable; the request can be retried.
    #[error("the event store is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Another writer appended to the same aggregate first.
    #[error("concurrent modification of {aggregate_type} {aggregate_id}")]
    Conflict {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The aggregate id.
        aggregate_id: String,
    },
    /// Any other database failure.
    #[error("event store query failed")]
    Database(#[source] sqlx::Error),
    /// The postgres-es repository failed in a way that is not a database error.
    #[error("event repository failed")]
    Repository(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored event could not be read back.
    #[error("stored {aggregate_type} event cannot be decoded")]
    Corrupt {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if db::is_unavailable(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Database(error)
        }
    }
}

impl StoreError {
    /// A value of aggregate type `A` that serde could not read or write.
    fn corrupt<A: Aggregate>(source: serde_json::Error) -> Self {
        StoreError::Corrupt {
            aggregate_type: A::TYPE,
            source,
        }
    }

    fn from_persistence(error: cqrs_es::persist::PersistenceError) -> Self {
        use cqrs_es::persist::PersistenceError as P;
        match error {
            P::OptimisticLockError => {
                StoreError::Repository("optimistic lock error while reading".into())
            }
            P::ConnectionError(source)
            | P::DeserializationError(source)
            | P::UnknownError(source) => match source.downcast::<sqlx::Error>() {
                Ok(sqlx) => StoreError::from(*sqlx),
                Err(other) => StoreError::Repository(other),
            },
        }
    }
}

/// An aggregate's state and the sequence number of its last event (0 when new).
#[derive(Debug)]
pub struct Loaded<A> {
    /// The state after applying every event.
    pub state: A,
    /// The sequence of the last event.
    pub version: i64,
}

impl<A: Aggregate> Default for Loaded<A> {
    /// An aggregate with no events yet.
    fn default() -> Self {
        Self {
            state: A::default(),
            version: 0,
        }
    }
}

impl<A: Aggregate> Loaded<A> {
    /// Applies one stored event (its sequence and JSON payload).
    fn apply_stored(
        &mut self,
        sequence: i64,
        payload: serde_json::Value,
    ) -> Result<(), StoreError> {
        let event: A::Event = serde_json::from_value(payload).map_err(StoreError::corrupt::<A>)?;
        self.state.apply(event);
        self.version = sequence;
        Ok(())
    }

    /// Runs a command against the state; the new events are applied to it and returned.
    pub async fn decide(&mut self, command: A::Command) -> Result<Vec<A::Event>, A::Error>
    where
        A: Aggregate<Services = ()>,
    {
        let sink = EventSink::default();
        self.state.handle(command, &(), &sink).await?;
        Ok(sink.collect().await)
    }
}

/// How many events of an aggregate pass between two of its snapshots
/// ([`EventStore::snapshot_in`]).
pub const SNAPSHOT_EVERY: i64 = 100;

/// Loads and appends events.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    repo: std::sync::Arc<PostgresEventRepository>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore").finish_non_exhaustive()
    }
}

impl EventStore {
    /// A store on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            repo: std::sync::Arc::new(PostgresEventRepository::new(pool.clone())),
            pool,
        }
    }

    /// The pool, for transactions that span an append and other writes.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Loads an aggregate by replaying its events.
    pub async fn load<A: Aggregate>(&self, aggregate_id: &str) -> Result<Loaded<A>, StoreError> {
        let events = self
            .repo
            .get_events::<A>(aggregate_id)
            .await
            .map_err(StoreError::from_persistence)?;
        let mut loaded = Loaded::default();
        for event in events {
            loaded.apply_stored(event.sequence as i64, event.payload)?;
        }
        Ok(loaded)
    }

    /// Loads an aggregate on `conn`, inside the caller's transaction (a transaction that waits
    /// its turn holding a connection, a lock taken first, must not need a second one from the
    /// pool, which the others waiting may all hold), starting from its newest snapshot
    /// ([`Self::snapshot_in`]) and replaying only the events after it: for an aggregate that
    /// gathers events without end and is loaded for each new one (an enrollment token, one
    /// redemption per agent enrolled with it, up to a million), so that the millionth costs
    /// what the first did.
    pub async fn load_in_snapshotted<A: Aggregate>(
        conn: &mut PgConnection,
        aggregate_id: &str,
    ) -> Result<Loaded<A>, StoreError> {
        let snapshot: Option<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT last_sequence, payload FROM snapshots \
              WHERE aggregate_type = $1 AND aggregate_id = $2 \
              ORDER BY last_sequence DESC LIMIT 1",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .fetch_optional(&mut *conn)
        .await?;
        let mut loaded = Loaded::default();
        if let Some((last_sequence, state)) = snapshot {
            loaded.state = serde_json::from_value(state).map_err(StoreError::corrupt::<A>)?;
            loaded.version = last_sequence;
        }
        let rows: Vec<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT sequence, payload FROM events \
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(loaded.version)
        .fetch_all(conn)
        .await?;
        for (sequence, payload) in rows {
            loaded.apply_stored(sequence, payload)?;
        }
        Ok(loaded)
    }

    /// Inside the caller's transaction, after it appended events up to `loaded.version` (with
    /// `loaded.state` the state after them): records a snapshot of that state when the append
    /// passed a multiple of [`SNAPSHOT_EVERY`] events since `before`, and drops the older
    /// snapshots. A snapshot is a cache of what the aggregate's events say, not a fact: it
    /// commits with the events it sums up or not at all, and deleting every snapshot only
    /// makes the next loads replay the whole history (as after changing what an aggregate's
    /// `apply` does).
    pub async fn snapshot_in<A: Aggregate>(
        conn: &mut PgConnection,
        aggregate_id: &str,
        loaded: &Loaded<A>,
        before: i64,
    ) -> Result<(), StoreError> {
        if loaded.version / SNAPSHOT_EVERY == before / SNAPSHOT_EVERY {
            return Ok(());
        }
        let state = serde_json::to_value(&loaded.state).map_err(StoreError::corrupt::<A>)?;
        sqlx::query(
            "WITH old AS (DELETE FROM snapshots \
                           WHERE aggregate_type = $1 AND aggregate_id = $2 AND last_sequence < $3) \
             INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
             VALUES ($1, $2, $3, $3 / $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(loaded.version)
        .bind(SNAPSHOT_EVERY)
        .bind(state)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Loads several aggregates of one type with one query; ids without events are absent
    /// from the map (they are new aggregates: [`Loaded::default`]).
    pub async fn load_many<A: Aggregate>(
        &self,
        aggregate_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Loaded<A>>, StoreError> {
        let rows: Vec<(String, i64, serde_json::Value)> = sqlx::query_as(
            "SELECT aggregate_id, sequence, payload FROM events \
              WHERE aggregate_type = $1 AND aggregate_id = ANY($2) \
              ORDER BY aggregate_id, sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut loaded = std::collections::HashMap::<String, Loaded<A>>::new();
        for (id, sequence, payload) in rows {
            loaded
                .entry(id)
                .or_default()
                .apply_stored(sequence, payload)?;
        }
        Ok(loaded)
    }

    /// Appends `events` of one aggregate after `version`, inside the caller's transaction.
    pub async fn append<A: Aggregate>(
        conn: &mut PgConnection,
        aggregate_id: &str,
        version: i64,
        events: &[A::Event],
        metadata: &EventMetadata,
    ) -> Result<(), StoreError> {
        let rows = NewEvent::for_aggregate::<A>(aggregate_id, version, events, metadata)?;
        Self::append_rows(conn, &rows, Conflicts::Fail)
            .await
            .map(drop)
    }

    /// Appends rows of any aggregates with one statement, inside the caller's transaction.
    /// With [`Conflicts::Skip`], rows whose sequence is taken are left out (for facts that
    /// another writer may have overtaken, such as a dispatch record); returns how many were
    /// inserted.
    pub async fn append_rows(
        conn: &mut PgConnection,
        rows: &[NewEvent],
        conflicts: Conflicts,
    ) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut types = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut sequences = Vec::with_capacity(rows.len());
        let mut event_types = Vec::with_capacity(rows.len());
        let mut versions = Vec::with_capacity(rows.len());
        let mut payloads = Vec::with_capacity(rows.len());
        let mut metadata = Vec::with_capacity(rows.len());
        for row in rows {
            types.push(row.aggregate_type);
            ids.push(row.aggregate_id.as_str());
            sequences.push(row.sequence);
            event_types.push(row.event_type.as_str());
            versions.push(row.event_version.as_str());
            payloads.push(&row.payload);
            metadata.push(&row.metadata);
        }
        let on_conflict = match conflicts {
            Conflicts::Fail => "",
            Conflicts::Skip => " ON CONFLICT DO NOTHING",
        };
        let result = sqlx::query(&format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[]){on_conflict}"
        ))
        .bind(&types)
        .bind(&ids)
        .bind(&sequences)
        .bind(&event_types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .execute(conn)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected()),
            Err(e) if db::is_unique_violation(&e) => Err(StoreError::Conflict {
                aggregate_type: rows[0].aggregate_type,
                aggregate_id: rows[0].aggregate_id.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// What to do when an appended row's sequence is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflicts {
    /// Fail the append (optimistic concurrency).
    Fail,
    /// Leave the row out.
    Skip,
}

/// One event row to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// The aggregate id.
    pub aggregate_id: String,
    /// Its sequence in the aggregate.
    pub sequence: i64,
    /// `event_type()`.
    pub event_type: String,
    /// `event_version()`.
    pub event_version: String,
    /// The serialized event.
    pub payload: serde_json::Value,
    /// The serialized metadata.
    pub metadata: serde_json::Value,
}

impl NewEvent {
    /// Rows for `events` of one aggregate, numbered after `version`.
    pub fn for_aggregate<A: Aggregate>(
        aggregate_id: &str,
        version: i64,
        events: &[A::Event],
        metadata: &EventMetadata,
    ) -> Result<Vec<Self>, StoreError> {
        let corrupt = StoreError::corrupt::<A>;
        let metadata = serde_json::to_value(metadata.to_map()).map_err(corrupt)?;
        events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                Ok(NewEvent {
                    aggregate_type: A::TYPE,
                    aggregate_id: aggregate_id.to_string(),
                    sequence: version + 1 + i as i64,
                    event_type: event.event_type(),
                    event_version: event.event_version(),
                    payload: serde_json::to_value(event).map_err(corrupt)?,
                    metadata: metadata.clone(),
                })
            })
            .collect()
    }
}
