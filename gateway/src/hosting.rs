//! Running the background work inside the gateway process: the projections (and how far behind
//! they are), and the job dispatcher, claims, results and expiry.

use std::time::Duration;

use std::sync::Arc;

use logbook_projections::fleet::FleetProjection;
use logbook_projections::jobs::JobsProjection;
use logbook_projections::runner::{self, LogWaker, RunnerConfig};
use logbook_projections::timeline::TimelineProjection;
use logbook_projections::{PROJECTION_NAMES, log};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::commands::Commands;
use crate::config::{JobsConfig, ProjectionsConfig};
use crate::jobs::transport::Transport;
use crate::jobs::{claims, dispatch, expiry, results};

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
        waker.clone(),
        runner_config.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(runner::run(
        pool.clone(),
        JobsProjection,
        waker,
        runner_config,
        shutdown.clone(),
    ));
    tasks.spawn(report_lag(pool.clone(), shutdown.clone()));
}

/// What the reader behind the checkpoint `name` reads of the log.
fn reads_of(name: &str) -> log::ReadFilter<'static> {
    // The only checkpoint that is not a projection's is the dispatcher's, which skips check-ins.
    logbook_projections::reads_of(name).unwrap_or(log::ReadFilter::SkipCheckins)
}

/// Every second, publishes each projection's backlog (events not yet applied, counted up to a
/// cap) and lag (age of the first of them) as gauges.
async fn report_lag(pool: PgPool, shutdown: CancellationToken) {
    const CAP: i64 = 10_000;
    loop {
        for name in PROJECTION_NAMES.iter().chain([&dispatch::CHECKPOINT]) {
            let sample = async {
                let cursor = runner::checkpoint(&pool, name).await?.unwrap_or_default();
                let mut conn = pool.acquire().await?;
                log::backlog(&mut conn, cursor, CAP, reads_of(name)).await
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

/// What the job machinery runs with.
#[derive(Debug)]
pub struct JobHost {
    /// The database.
    pub pool: PgPool,
    /// The command side.
    pub commands: Commands,
    /// Streams and consumers.
    pub transport: Arc<Transport>,
    /// Wakes the dispatcher when events commit.
    pub waker: LogWaker,
    /// Job settings.
    pub config: JobsConfig,
    /// Fallback poll of the dispatcher.
    pub poll_interval: Duration,
}

/// Starts the job machinery on `tasks`: claims at once, and the dispatcher and results consumer
/// once the streams exist (NATS may still be down when the gateway starts).
pub fn spawn_jobs(host: JobHost, shutdown: &CancellationToken, tasks: &mut JoinSet<()>) {
    let JobHost {
        pool,
        commands,
        transport,
        waker,
        config,
        poll_interval,
    } = host;
    tasks.spawn(claims::run(
        transport.client().clone(),
        transport.names().clone(),
        commands.clone(),
        config.claim_concurrency,
        shutdown.clone(),
    ));
    tasks.spawn(expiry::run(
        pool.clone(),
        commands.clone(),
        config.expiry_interval,
        shutdown.clone(),
    ));
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            match transport.ensure_streams().await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "waiting for NATS JetStream to create the job streams"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        match transport.learn_existing_consumers().await {
            Ok(count) => tracing::info!(consumers = count, "agents' job consumers found"),
            // Not fatal: they are then re-created (idempotently) before their next job.
            Err(e) => tracing::warn!(error = %e, "could not list the agents' job consumers"),
        }
        let settings = dispatch::DispatchSettings { batch_size: config.dispatch_batch, poll_interval };
        let dispatcher = dispatch::run(pool, commands.clone(), transport.clone(), waker, settings, shutdown.clone());
        let results = results::run(transport, commands, config.result_concurrency, shutdown);
        tokio::join!(dispatcher, results);
    });
}
