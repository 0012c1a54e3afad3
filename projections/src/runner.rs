//! Keeping one projection up to date by tailing the log.
//!
//! Each batch is one transaction: lock the projection's checkpoint row, read the events after it
//! (below the commit-safe horizon, see [`crate::log`]), apply them to the read model, move the
//! checkpoint, commit. The read model and the checkpoint move together or not at all, so every
//! event takes effect exactly once whatever crashes in between.
//!
//! Several gateway processes may run the same projection. A session advisory lock elects one
//! leader per projection (its batches run on the connection that holds the lock) so that the
//! others do not contend; correctness does not depend on it, because the checkpoint row lock
//! already serialises batches (a process that lost leadership without noticing re-reads the
//! checkpoint under the lock and applies nothing twice).
//!
//! The leader sleeps until it is woken (by writers in its own process, or by a
//! `NOTIFY logbook_events` that writers send after committing) or the poll interval passes,
//! whichever comes first; the poll is the fallback when a notification is lost.

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::log::{self, LogBatch, LogCursor, LogError, LogWindow, ReadFilter, StoredEvent};

/// A read model maintained from the log.
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the checkpoint key and the name on the command line.
    fn name(&self) -> &'static str;

    /// The tables this projection owns and writes (and a rebuild recreates).
    fn tables(&self) -> &'static [&'static str];

    /// What it reads of the log ([`ReadFilter`]): every event unless it says otherwise. Events
    /// it passes over never reach [`Projection::apply`] as [`StoredEvent`]s; a projection that
    /// needs them handles them with SQL over the batch's window.
    fn reads(&self) -> ReadFilter<'static> {
        ReadFilter::Everything
    }

    /// Events a rebuild applies per transaction unless told otherwise. A batch's events that
    /// the projection [reads](Projection::reads) are held in memory at once; what it passes
    /// over stays in Postgres.
    fn rebuild_batch_size(&self) -> i64 {
        crate::rebuild::DEFAULT_BATCH_SIZE
    }

    /// Applies the events of `window`, inside the caller's transaction: `events` are those it
    /// [reads](Projection::reads), in log order (possibly none). Must be idempotent per
    /// event only in the sense that it never sees an event twice; it may assume that.
    fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
        window: LogWindow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// How a runner paces itself.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most events applied per transaction.
    pub batch_size: i64,
    /// How long to sleep when no notification arrives.
    pub poll_interval: Duration,
    /// How long to wait after an error before trying again.
    pub retry_after: Duration,
    /// How long to let events accumulate after a wake-up before applying them: a few
    /// milliseconds turn a burst of small transactions into one batch.
    pub linger: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            linger: Duration::from_millis(5),
        }
    }
}

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Applying or checkpointing failed.
    #[error("applying events to projection {projection}")]
    Apply {
        /// The projection.
        projection: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// Another process moved a rebuild's checkpoint while this one was rebuilding.
    #[error(
        "the rebuild of {projection} was moved from {expected:?} to {found:?} by another process"
    )]
    Moved {
        /// The projection.
        projection: &'static str,
        /// Where this rebuild left it.
        expected: LogCursor,
        /// Where it was found.
        found: LogCursor,
    },
}

impl From<sqlx::Error> for RunError {
    fn from(e: sqlx::Error) -> Self {
        RunError::Log(LogError::Database(e))
    }
}

/// The result of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchOutcome {
    /// Events applied or passed over.
    pub applied: usize,
    /// The checkpoint after the batch.
    pub cursor: LogCursor,
}

/// Makes sure the checkpoint row for `checkpoint` exists.
pub async fn ensure_checkpoint(pool: &PgPool, checkpoint: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(checkpoint)
    .execute(pool)
    .await?;
    Ok(())
}

/// Reads a checkpoint without locking it.
pub async fn checkpoint<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    checkpoint: &str,
) -> Result<Option<LogCursor>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tx_id::text::bigint AS tx, position FROM projection_checkpoints WHERE projection = $1",
    )
    .bind(checkpoint)
    .fetch_optional(executor)
    .await?;
    row.map(|r| {
        Ok(LogCursor {
            tx_id: r.try_get("tx")?,
            position: r.try_get("position")?,
        })
    })
    .transpose()
}

/// Locks the checkpoint row inside `conn`'s transaction and returns it.
pub(crate) async fn lock_checkpoint(
    conn: &mut PgConnection,
    checkpoint: &str,
) -> Result<LogCursor, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tx_id::text::bigint AS tx, position FROM projection_checkpoints \
          WHERE projection = $1 FOR UPDATE",
    )
    .bind(checkpoint)
    .fetch_one(&mut *conn)
    .await?;
    Ok(LogCursor {
        tx_id: row.try_get("tx")?,
        position: row.try_get("position")?,
    })
}

/// Applies events after `cursor` to `projection` inside `conn`'s open transaction and moves the
/// checkpoint named `checkpoint` past them. Does not commit.
pub(crate) async fn apply_batch<P: Projection>(
    conn: &mut PgConnection,
    projection: &P,
    checkpoint: &str,
    cursor: LogCursor,
    limit: i64,
) -> Result<BatchOutcome, RunError> {
    let batch = log::read_batch(conn, cursor, limit, projection.reads()).await?;
    apply_events(conn, projection, checkpoint, cursor, &batch).await
}

/// Applies `batch` (read after `cursor`) to `projection` inside `conn`'s open transaction and
/// moves the checkpoint named `checkpoint` to its end. Does not commit.
pub(crate) async fn apply_events<P: Projection>(
    conn: &mut PgConnection,
    projection: &P,
    checkpoint: &str,
    cursor: LogCursor,
    batch: &LogBatch,
) -> Result<BatchOutcome, RunError> {
    let Some((new_cursor, last_recorded_at)) = batch.end else {
        return Ok(BatchOutcome { applied: 0, cursor });
    };
    let apply_error = |source| RunError::Apply {
        projection: projection.name(),
        source,
    };
    let window = LogWindow {
        after: cursor,
        end: new_cursor,
        len: match projection.reads() {
            ReadFilter::SkipCheckins => None,
            _ => Some(batch.scanned as i64),
        },
    };
    projection
        .apply(conn, &batch.events, window)
        .await
        .map_err(apply_error)?;
    sqlx::query(
        "UPDATE projection_checkpoints \
            SET tx_id = $2::bigint::text::xid8, position = $3, \
                events_applied = events_applied + $4, last_recorded_at = $5, updated_at = now() \
          WHERE projection = $1",
    )
    .bind(checkpoint)
    .bind(new_cursor.tx_id)
    .bind(new_cursor.position)
    .bind(batch.scanned as i64)
    .bind(last_recorded_at)
    .execute(&mut *conn)
    .await
    .map_err(apply_error)?;
    let now = chrono::Utc::now();
    let delay = |at: chrono::DateTime<chrono::Utc>| (now - at).to_std().unwrap_or_default();
    let delays = metrics::histogram!("logbook_projection_apply_delay_seconds", "projection" => projection.name());
    for event in &batch.events {
        delays.record(delay(event.metadata.recorded_at).as_secs_f64());
    }
    for at in &batch.passed_over_recorded_at {
        delays.record(delay(*at).as_secs_f64());
    }
    Ok(BatchOutcome {
        applied: batch.scanned,
        cursor: new_cursor,
    })
}

/// Runs one batch for the live projection in its own transaction on `conn`.
pub async fn run_batch<P: Projection>(
    conn: &mut PgConnection,
    projection: &P,
    limit: i64,
) -> Result<BatchOutcome, RunError> {
    let mut tx = conn.begin().await?;
    let cursor = lock_checkpoint(&mut tx, projection.name()).await?;
    let outcome = apply_batch(&mut tx, projection, projection.name(), cursor, limit).await?;
    // A batch may move the checkpoint past skipped check-ins without applying anything.
    if outcome.cursor != cursor {
        tx.commit().await?;
        metrics::counter!("logbook_projection_events_applied_total", "projection" => projection.name())
            .increment(outcome.applied as u64);
    }
    Ok(outcome)
}

/// What a catch-up found.
#[derive(Debug, Clone, Copy)]
pub struct CatchUp {
    /// Events applied.
    pub applied: usize,
    /// Whether committed events remain beyond the horizon, held back by an older transaction
    /// that is still running.
    pub held_back: bool,
}

/// Applies everything currently below the horizon, on a connection from `pool`.
pub async fn catch_up<P: Projection>(
    pool: &PgPool,
    projection: &P,
    config: &RunnerConfig,
) -> Result<CatchUp, RunError> {
    let mut conn = pool.acquire().await?;
    catch_up_on(&mut conn, projection, config).await
}

/// Applies everything currently below the horizon, on `conn`.
pub async fn catch_up_on<P: Projection>(
    conn: &mut PgConnection,
    projection: &P,
    config: &RunnerConfig,
) -> Result<CatchUp, RunError> {
    let mut applied = 0;
    loop {
        let outcome = run_batch(&mut *conn, projection, config.batch_size).await?;
        applied += outcome.applied;
        if (outcome.applied as i64) < config.batch_size {
            let held_back =
                log::has_events_beyond_horizon(&mut *conn, outcome.cursor, projection.reads())
                    .await?;
            return Ok(CatchUp { applied, held_back });
        }
    }
}

/// How soon to look again when events are held back by a running transaction. A transaction
/// that appends events sends its own notification when it commits; this covers those that do
/// not (a projection's own transaction, say).
const HELD_BACK_RETRY: Duration = Duration::from_millis(20);

/// The channel writers `NOTIFY` after committing events, so that readers in other processes
/// wake at once instead of at their next poll.
pub const EVENTS_CHANNEL: &str = "logbook_events";

/// The payload of a notification on [`EVENTS_CHANNEL`] for commits that appended check-ins and
/// nothing else ([`Appended::CheckinsOnly`]).
pub const CHECKINS_ONLY: &str = "checkins";

/// The payload of a notification for commits that changed no job queue
/// ([`Appended::NoJobQueueChange`]).
pub const NO_JOB_QUEUE_CHANGE: &str = "no-job-queue-change";

/// What a commit appended, as far as waking readers goes. Each kind wakes the readers the one
/// before it wakes and more, so a writer that owes several notifications owes the greatest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Appended {
    /// Check-ins and nothing else: readers that skip check-ins ([`ReadFilter::SkipCheckins`])
    /// stay asleep. Check-ins are most of the log and arrive in a steady stream; those readers
    /// would otherwise run a round (and move their checkpoint past them) for every batch.
    CheckinsOnly,
    /// Events that change no job queue (a job's claim, its result, its dispatch record): the
    /// reader of job queues ([`LogWaker::for_job_queues`]) stays asleep. An agent working
    /// through its queued jobs commits two of these per job, every few milliseconds; the job
    /// dispatcher would otherwise run a round for each, to find nothing to publish.
    NoJobQueueChange,
    /// Anything else: every reader wakes.
    Anything,
}

impl Appended {
    /// Every kind, in order.
    pub const ALL: [Appended; 3] = [
        Appended::CheckinsOnly,
        Appended::NoJobQueueChange,
        Appended::Anything,
    ];

    /// The payload of its notification on [`EVENTS_CHANNEL`].
    pub fn payload(self) -> &'static str {
        match self {
            Appended::CheckinsOnly => CHECKINS_ONLY,
            Appended::NoJobQueueChange => NO_JOB_QUEUE_CHANGE,
            Appended::Anything => "",
        }
    }

    /// The kind a notification's payload names; any payload but the two named wakes every
    /// reader.
    pub fn from_payload(payload: &str) -> Self {
        match payload {
            CHECKINS_ONLY => Appended::CheckinsOnly,
            NO_JOB_QUEUE_CHANGE => Appended::NoJobQueueChange,
            _ => Appended::Anything,
        }
    }
}

/// Wakes log readers when new events commit: on `NOTIFY logbook_events` from any process, and
/// directly through [`LocalWake`] from writers in this process. One per process; each reader
/// takes the one for what it reads ([`LogWaker::for_reads`]).
#[derive(Debug, Clone)]
pub struct LogWaker {
    any: watch::Receiver<u64>,
    beside_checkins: watch::Receiver<u64>,
    job_queues: watch::Receiver<u64>,
    audience: Audience,
}

/// Which commits wake a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// Every commit.
    Everything,
    /// Every commit but those of check-ins alone.
    BesideCheckins,
    /// Only commits that may change what an agent is to run.
    JobQueues,
}

/// Wakes this process's log readers without a round trip through Postgres.
#[derive(Debug, Clone)]
pub struct LocalWake {
    any: std::sync::Arc<watch::Sender<u64>>,
    beside_checkins: std::sync::Arc<watch::Sender<u64>>,
    job_queues: std::sync::Arc<watch::Sender<u64>>,
}

impl LocalWake {
    /// Wakes the readers waiting on the paired [`LogWaker`]s that a commit of `appended` wakes.
    pub fn wake(&self, appended: Appended) {
        let bump = |n: &mut u64| *n = n.wrapping_add(1);
        self.any.send_modify(bump);
        if appended >= Appended::NoJobQueueChange {
            self.beside_checkins.send_modify(bump);
        }
        if appended >= Appended::Anything {
            self.job_queues.send_modify(bump);
        }
    }

    fn pair() -> (Self, LogWaker) {
        let (any, any_rx) = watch::channel(0u64);
        let (beside_checkins, beside_rx) = watch::channel(0u64);
        let (job_queues, job_queues_rx) = watch::channel(0u64);
        (
            Self {
                any: std::sync::Arc::new(any),
                beside_checkins: std::sync::Arc::new(beside_checkins),
                job_queues: std::sync::Arc::new(job_queues),
            },
            LogWaker {
                any: any_rx,
                beside_checkins: beside_rx,
                job_queues: job_queues_rx,
                audience: Audience::Everything,
            },
        )
    }
}

impl LogWaker {
    /// Listens for `NOTIFY logbook_events` until `shutdown`. Reconnects on its own; while it is
    /// disconnected readers fall back to polling.
    pub fn spawn(pool: PgPool, shutdown: CancellationToken) -> (Self, LocalWake) {
        let (local, waker) = LocalWake::pair();
        let listening = local.clone();
        tokio::spawn(async move {
            loop {
                let listener = async {
                    let mut listener = PgListener::connect_with(&pool).await?;
                    listener.listen(EVENTS_CHANNEL).await?;
                    loop {
                        let notification = listener.recv().await?;
                        listening.wake(Appended::from_payload(notification.payload()));
                    }
                    #[expect(unreachable_code, reason = "the loop only ends with an error")]
                    Ok::<(), sqlx::Error>(())
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = listener => {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "event notifications interrupted; polling until they resume");
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        (waker, local)
    }

    /// A waker that never fires (readers poll).
    pub fn polling_only() -> Self {
        let (local, waker) = LocalWake::pair();
        std::mem::forget(local);
        waker
    }

    /// The waker for a reader with `filter`: one that skips check-ins is not woken by commits
    /// of check-ins alone.
    pub fn for_reads(mut self, filter: ReadFilter<'_>) -> Self {
        self.audience = match filter {
            ReadFilter::SkipCheckins => Audience::BesideCheckins,
            _ => Audience::Everything,
        };
        self
    }

    /// The waker for the reader of job queues (the job dispatcher, which reads the log beside
    /// check-ins and acts only on jobs queued, cancelled or expired): not woken by commits of
    /// check-ins alone, nor by those that change no job queue. What it sleeps through it reads
    /// at its next round.
    pub fn for_job_queues(mut self) -> Self {
        self.audience = Audience::JobQueues;
        self
    }

    /// Waits for the next notification or `timeout`; true when it was a notification.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let rx = match self.audience {
            Audience::Everything => &mut self.any,
            Audience::BesideCheckins => &mut self.beside_checkins,
            Audience::JobQueues => &mut self.job_queues,
        };
        matches!(
            tokio::time::timeout(timeout, rx.changed()).await,
            Ok(Ok(()))
        )
    }
}

/// Waits until this process holds the leadership of `name` (a session advisory lock on a
/// connection of its own, so that it never travels back into the pool) and returns that
/// connection: leadership lasts as long as it stays open. `None` when `shutdown` came first.
pub async fn acquire_leadership(
    pool: &PgPool,
    name: &str,
    retry_every: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    loop {
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(name))
            .fetch_one(&mut conn)
            .await?;
        if leader {
            return Ok(Some(conn));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(retry_every) => {}
        }
    }
}

fn lock_key(name: &str) -> i64 {
    // FNV-1a: stable across builds and processes, unlike the std hasher.
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in b"logbook.projection.".iter().chain(name.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash as i64
}

/// Runs `projection` until `shutdown`: competes for leadership, and while leading, applies new
/// events as they arrive. Errors are logged and retried; this never returns early.
pub async fn run<P: Projection>(
    pool: PgPool,
    projection: P,
    waker: LogWaker,
    config: RunnerConfig,
    shutdown: CancellationToken,
) {
    let name = projection.name();
    let mut waker = waker.for_reads(projection.reads());
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match lead(&pool, &projection, &mut waker, &config, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(projection = name, error = %error_chain(&e), "projection runner failed; retrying");
                metrics::counter!("logbook_projection_errors_total", "projection" => name)
                    .increment(1);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.retry_after) => {}
        }
    }
}

async fn lead<P: Projection>(
    pool: &PgPool,
    projection: &P,
    waker: &mut LogWaker,
    config: &RunnerConfig,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let name = projection.name();
    ensure_checkpoint(pool, name).await?;
    let Some(mut lock_conn) =
        acquire_leadership(pool, name, config.poll_interval, shutdown).await?
    else {
        return Ok(());
    };
    // A read model can always be derived again from the log, and its checkpoint commits with
    // it: a crash that loses its last batches (commits not yet flushed) rolls both back
    // together, and the batches are applied again. So the leader does not wait for its commits
    // to reach the disk, which leaves the WAL flushes to the appends that need them.
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut lock_conn)
        .await?;
    tracing::info!(projection = name, "leading projection");
    metrics::gauge!("logbook_projection_leader", "projection" => name).set(1.0);
    let result = async {
        loop {
            // On the leadership connection: no pool round trip per batch, and a leader that
            // lost its connection (and so its leadership) finds out at its next batch.
            let caught = catch_up_on(&mut lock_conn, projection, config).await?;
            let wait = if caught.held_back {
                HELD_BACK_RETRY
            } else {
                config.poll_interval
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = waker.wait(wait) => {}
            }
            tokio::time::sleep(config.linger).await;
        }
    }
    .await;
    metrics::gauge!("logbook_projection_leader", "projection" => name).set(0.0);
    let _ = lock_conn.close().await;
    result
}

/// Formats an error with its sources, for log lines.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_that_skip_checkins_sleep_through_checkin_commits() {
        let (local, waker) = LocalWake::pair();
        let mut everything = waker.clone().for_reads(ReadFilter::Everything);
        let mut skipping = waker.for_reads(ReadFilter::SkipCheckins);
        let short = Duration::from_millis(20);
        let long = Duration::from_secs(5);

        local.wake(Appended::CheckinsOnly);
        assert!(everything.wait(long).await, "check-ins wake their readers");
        assert!(
            !skipping.wait(short).await,
            "check-ins alone wake no one else"
        );

        local.wake(Appended::Anything);
        assert!(everything.wait(long).await);
        assert!(skipping.wait(long).await, "other events wake every reader");
        assert!(!skipping.wait(short).await, "one commit, one wake-up");
    }

    #[tokio::test]
    async fn the_reader_of_job_queues_sleeps_through_commits_that_change_none() {
        let (local, waker) = LocalWake::pair();
        let mut everything = waker.clone().for_reads(ReadFilter::Everything);
        let mut skipping = waker.clone().for_reads(ReadFilter::SkipCheckins);
        let mut queues = waker.for_job_queues();
        let short = Duration::from_millis(20);
        let long = Duration::from_secs(5);

        local.wake(Appended::NoJobQueueChange);
        assert!(everything.wait(long).await);
        assert!(skipping.wait(long).await, "readers beside check-ins wake");
        assert!(
            !queues.wait(short).await,
            "the reader of job queues does not"
        );

        local.wake(Appended::CheckinsOnly);
        assert!(everything.wait(long).await);
        assert!(!queues.wait(short).await, "nor for check-ins");

        local.wake(Appended::Anything);
        assert!(queues.wait(long).await, "anything else wakes it");
        assert!(!queues.wait(short).await, "one commit, one wake-up");
    }

    #[test]
    fn each_kind_of_commit_is_named_by_its_payload() {
        for appended in Appended::ALL {
            assert_eq!(Appended::from_payload(appended.payload()), appended);
        }
        assert_eq!(Appended::from_payload("anything"), Appended::Anything);
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("fleet"), lock_key("fleet"));
        assert_ne!(lock_key("fleet"), lock_key("timeline"));
    }
}
