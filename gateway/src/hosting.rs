//! Running the projections inside the gateway process, and reporting how far behind they are.

use std::time::Duration;

use logbook_projections::fleet::FleetProjection;
use logbook_projections::runner::{self, LogWaker, RunnerConfig};
use logbook_projections::timeline::TimelineProjection;
use logbook_projections::{PROJECTION_NAMES, log};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ProjectionsConfig;

/// Starts every projection's runner and the lag reporter on `tasks`.
pub fn spawn(
    pool: &PgPool,
    waker: LogWaker,
    config: &ProjectionsConfig,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let runner_config = RunnerConfig {
        batch_size: config.batch_size,
        poll_interval: config.poll_interval,
        retry_after: Duration::from_secs(1),
        linger: config.linger,
    };
    tasks.spawn(runner::run(
        pool.clone(),
        FleetProjection,
        waker.clone(),
        runner_config.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(runner::run(
        pool.clone(),
        TimelineProjection,
        waker,
        runner_config,
        shutdown.clone(),
    ));
    tasks.spawn(report_lag(pool.clone(), shutdown.clone()));
}

/// Every second, publishes each projection's backlog (events not yet applied, counted up to a
/// cap) and lag (age of the first of them) as gauges.
async fn report_lag(pool: PgPool, shutdown: CancellationToken) {
    const CAP: i64 = 10_000;
    loop {
        for name in PROJECTION_NAMES {
            let sample = async {
                let cursor = runner::checkpoint(&pool, name).await?.unwrap_or_default();
                let mut conn = pool.acquire().await?;
                log::backlog(&mut conn, cursor, CAP).await
            };
            match sample.await {
                Ok((events, oldest)) => {
                    let seconds = oldest
                        .map(|t| {
                            (chrono::Utc::now() - t)
                                .to_std()
                                .unwrap_or_default()
                                .as_secs_f64()
                        })
                        .unwrap_or(0.0);
                    metrics::gauge!("logbook_projection_lag_events", "projection" => *name)
                        .set(events as f64);
                    metrics::gauge!("logbook_projection_lag_seconds", "projection" => *name)
                        .set(seconds);
                }
                Err(e) => {
                    tracing::debug!(projection = name, error = %e, "cannot measure projection lag")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
