//! The Postgres pool and the classification of database failures.
//!
//! A request that fails because Postgres is down or saturated is answered with 503 and can be
//! retried; the pool reconnects on its own when Postgres returns. Everything else is a bug or a
//! constraint violation and is handled where it happens.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::DatabaseConfig;

/// Builds the pool without connecting: the gateway starts, and answers health checks, while
/// Postgres is still unreachable.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url.parse()?;
    let options = options
        .application_name("logbook")
        // A transaction left open would hold back every log reader (see projections::log).
        // JIT compilation costs more than the short queries of an API ever gain from it (it
        // added 100 ms to a timeline page at 10 million events).
        .options([
            ("idle_in_transaction_session_timeout", "60s"),
            ("jit", "off"),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(0)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// A pooled connection idle at least this long is pinged before it is handed out; one used
/// more recently is not. A ping is a round trip to Postgres, and sqlx's default pings before
/// every acquisition: a second round trip for every statement run on the pool (a job's claim
/// and its result each take two), with nothing to find on a connection used a moment ago. A
/// connection that broke since (Postgres restarted within that second) fails its statement with
/// an I/O error, answered 503 and retried like any outage, and is dropped from the pool.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// A small pool for the check-in ingest: one connection per lane, with generic plans forced so
/// that the large batch statement is planned once per connection rather than per batch.
/// Connections are not pinged before each use (a round trip per batch): a connection that broke
/// fails its batch with an I/O error, answered 503 (agents retry with the same id), and is
/// dropped from the pool.
///
/// Its sessions also ask the kernel to write back what they write as they go
/// (`backend_flush_after`). These sessions write most of what reaches the disk, a log that is
/// appended to and never rewritten, so nothing is gained by leaving it dirty in the page cache;
/// left there, check-ins at full speed left 700 MB dirty, which the kernel wrote back in one
/// burst 30 s later, and every commit in that second waited behind it (p99 of 120–240 ms at a
/// steady 5,000 check-ins/s after a saturated phase: BENCHMARKS.md, the fifteenth machine).
pub fn ingest_pool(config: &DatabaseConfig, lanes: usize) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url.parse()?;
    let options = options.application_name("logbook-ingest").options([
        ("plan_cache_mode", "force_generic_plan"),
        ("backend_flush_after", "256kB"),
    ]);
    Ok(PgPoolOptions::new()
        .max_connections(lanes as u32 + 1)
        .test_before_acquire(false)
        .min_connections(0)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    logbook_migrations::migrator().run(pool).await
}

/// Whether a failure means "Postgres is not available right now" (retry later) rather than a
/// problem with the request or the code.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources; 57P01-57P03: shutting down
            // or starting up.
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
        }),
        _ => false,
    }
}

/// Whether a failure is a unique-key violation (an optimistic-concurrency conflict on `events`).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Whether a failure is a deadlock or serialization failure: the statement lost a race with a
/// concurrent one and can simply run again.
pub fn is_transient_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}
