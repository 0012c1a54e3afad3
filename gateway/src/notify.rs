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
//! the others would run a round per batch to find nothing for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use logbook_projections::runner::{CHECKINS_ONLY, EVENTS_CHANNEL, LocalWake};
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
    /// Whether a commit waiting to be notified appended more than check-ins.
    beyond_checkins: AtomicBool,
}

impl LogNotifier {
    /// Starts the sender of cross-process notifications; stops with `shutdown`.
    pub fn start(pool: PgPool, local: LocalWake, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            local,
            pending: Notify::new(),
            beyond_checkins: AtomicBool::new(false),
        });
        let sender = inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sender.pending.notified() => {}
                }
                let payload = if sender.beyond_checkins.swap(false, Ordering::AcqRel) {
                    ""
                } else {
                    CHECKINS_ONLY
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
            inner.beyond_checkins.store(true, Ordering::Release);
            // Stores a permit when the sender is busy, so bursts coalesce into one NOTIFY.
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
