//! Telling log readers that new events committed.
//!
//! Readers in this process are woken directly. Readers in other gateway processes are woken by
//! `NOTIFY logbook_events`, sent from a transaction of its own, after the appending transaction
//! committed, and coalesced: a burst of commits costs one notification every few milliseconds.
//! (A `NOTIFY` inside the appending transaction would hold a database-wide lock through the
//! commit's WAL flush and serialise all appends.) Readers also poll, so a lost notification
//! only delays them.
//!
//! Commits of check-ins alone (the ingest's batches) wake only the readers that read check-ins:
//! the others would run a round per batch to find nothing for them. Likewise commits that
//! change no job queue (a job's claim, its result, its dispatch record) do not wake the job
//! dispatcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use logbook_projections::runner::{CHECKINS_ONLY, EVENTS_CHANNEL, LocalWake, NO_JOB_QUEUE_CHANGE};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The smallest gap between two notifications to other processes.
const COALESCE: Duration = Duration::from_millis(2);

/// Call [`LogNotifier::notify`] after every commit that appended events.
#[derive(Debug, Clone)]
pub struct LogNotifier {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    local: LocalWake,
    pending: Notify,
    /// Who must hear of the commits waiting to be notified: one of the `WAKE_*` levels, the
    /// widest of theirs.
    audience: AtomicU8,
}

/// Commits of check-ins alone.
const WAKE_CHECKIN_READERS: u8 = 0;
/// Commits that change no job queue.
const WAKE_BESIDE_JOB_QUEUES: u8 = 1;
/// Anything else.
const WAKE_EVERY_READER: u8 = 2;

impl LogNotifier {
    /// Starts the sender of cross-process notifications; stops with `shutdown`.
    pub fn start(pool: PgPool, local: LocalWake, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            local,
            pending: Notify::new(),
            audience: AtomicU8::new(WAKE_CHECKIN_READERS),
        });
        let sender = inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sender.pending.notified() => {}
                }
                let payload = match sender.audience.swap(WAKE_CHECKIN_READERS, Ordering::AcqRel) {
                    WAKE_CHECKIN_READERS => CHECKINS_ONLY,
                    WAKE_BESIDE_JOB_QUEUES => NO_JOB_QUEUE_CHANGE,
                    _ => "",
                };
                if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(EVENTS_CHANNEL)
                    .bind(payload)
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(error = %e, "could not notify other processes of new events; they will poll");
                }
                tokio::time::sleep(COALESCE).await;
            }
        });
        Self { inner: Some(inner) }
    }

    /// A notifier that does nothing (readers poll), for tools and tests.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// New events have committed.
    pub fn notify(&self) {
        if let Some(inner) = &self.inner {
            inner.local.wake();
            inner
                .audience
                .fetch_max(WAKE_EVERY_READER, Ordering::AcqRel);
            // Stores a permit when the sender is busy, so bursts coalesce into one NOTIFY.
            inner.pending.notify_one();
        }
    }

    /// New events have committed, none of which changes what an agent is to run.
    pub fn notify_beside_job_queues(&self) {
        if let Some(inner) = &self.inner {
            inner.local.wake_beside_job_queues();
            inner
                .audience
                .fetch_max(WAKE_BESIDE_JOB_QUEUES, Ordering::AcqRel);
            inner.pending.notify_one();
        }
    }

    /// Check-ins, and nothing else, have committed.
    pub fn notify_checkins(&self) {
        if let Some(inner) = &self.inner {
            inner.local.wake_for_checkins();
            inner.pending.notify_one();
        }
    }
}
