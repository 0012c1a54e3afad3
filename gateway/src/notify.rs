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

use logbook_projections::runner::{Appended, EVENTS_CHANNEL, LocalWake};
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
    /// What the commits waiting to be notified appended: the greatest of their
    /// [`Appended`] kinds, as its index in [`Appended::ALL`].
    pending_kind: AtomicU8,
}

impl LogNotifier {
    /// Starts the sender of cross-process notifications; stops with `shutdown`.
    pub fn start(pool: PgPool, local: LocalWake, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            local,
            pending: Notify::new(),
            pending_kind: AtomicU8::new(Appended::CheckinsOnly as u8),
        });
        let sender = inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sender.pending.notified() => {}
                }
                let kind = sender
                    .pending_kind
                    .swap(Appended::CheckinsOnly as u8, Ordering::AcqRel);
                let payload = Appended::ALL
                    .get(usize::from(kind))
                    .map_or("", |kind| kind.payload());
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

    /// Events of the kind `appended` have committed.
    pub fn notify(&self, appended: Appended) {
        if let Some(inner) = &self.inner {
            inner.local.wake(appended);
            inner
                .pending_kind
                .fetch_max(appended as u8, Ordering::AcqRel);
            // Stores a permit when the sender is busy, so bursts coalesce into one NOTIFY.
            inner.pending.notify_one();
        }
    }
}
