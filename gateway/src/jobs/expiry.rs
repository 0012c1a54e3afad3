//! Expiring jobs whose deadline passed before they were claimed. A claim after the deadline
//! also expires the job; this sweep covers agents that never come back. One leader across
//! gateways.

use std::time::Duration;

use logbook_domain::ids::JobId;
use logbook_projections::jobs;
use logbook_projections::runner;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::commands::Commands;

/// Sweeps every `interval` until `shutdown`.
pub async fn run(
    pool: PgPool,
    commands: Commands,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let result = async {
            let Some(mut leadership) =
                runner::acquire_leadership(&pool, "expiry", interval, &shutdown).await?
            else {
                return Ok(());
            };
            loop {
                for job in jobs::overdue_pending(&pool, chrono::Utc::now(), 1000).await? {
                    if commands.expire_job(JobId::from(job)).await? {
                        metrics::counter!("logbook_jobs_expired_total").increment(1);
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(interval) => {}
                }
                sqlx::query("SELECT 1").execute(&mut leadership).await?;
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                let e: anyhow::Error = e;
                tracing::warn!(error = %format!("{e:#}"), "job expiry interrupted; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
