//! `logbook-agent run`: check in on an interval, forever, whatever the server does.
//!
//! Each round collects the machine's facts into a check-in with a fresh id, spools it, then
//! sends everything in the spool oldest first. A check-in leaves the spool only when the server
//! confirmed it (or refused it for good), so during an outage check-ins pile up and are sent,
//! with their original collection time, once the server is back. Failed rounds back off
//! exponentially (up to `checkin.max_backoff`) while new check-ins keep being collected on
//! schedule.

use std::time::Duration;

use logbook_proto::agent::v1::CheckinRequest;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::client::{SendError, Server};
use crate::collector::{self, Collector};
use crate::config::AgentConfig;
use crate::state::{Identity, StateDir, StateError};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The agent has not enrolled yet.
    #[error("this agent is not enrolled (no identity in {0}); run `logbook-agent enroll` first")]
    NotEnrolled(String),
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The HTTP client could not be built.
    #[error("cannot create the HTTP client")]
    Client(#[from] reqwest::Error),
}

/// The outcome of sending the spool.
enum Drain {
    /// Everything was sent.
    Empty,
    /// The server is unreachable; try again later.
    Unavailable,
}

/// Runs until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let state = StateDir::open(&config.state.dir)?;
    let _lock = state.lock()?;
    let identity = state
        .identity()?
        .ok_or_else(|| RunError::NotEnrolled(state.path().display().to_string()))?;
    let server = Server::new(&identity.server_url, config.checkin.timeout)?;
    let jobs = tokio::spawn(crate::jobs::run(
        state.clone(),
        server.clone(),
        crate::jobs::JobSettings {
            output_cap: config.jobs.output_cap_bytes,
            min_renewal: config.jobs.min_identity_renewal,
            ..Default::default()
        },
        shutdown.clone(),
    ));
    let result = check_in_loop(&config, &state, &server, &identity, &shutdown).await;
    match jobs.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the job worker stopped"),
        Err(e) => tracing::error!(error = %e, "the job worker panicked"),
    }
    result
}

async fn check_in_loop(
    config: &AgentConfig,
    state: &StateDir,
    server: &Server,
    identity: &Identity,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let mut collector = collector::for_this_platform();
    tracing::info!(agent_id = %identity.agent_id, server = %identity.server_url, interval = ?config.checkin.interval, "agent running");

    let mut next_collect = tokio::time::Instant::now();
    let mut backoff: Option<Duration> = None;
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_collect {
            spool_new_checkin(state, collector.as_mut(), config.state.max_spooled)?;
            next_collect = now + with_jitter(config.checkin.interval, config.checkin.jitter);
        }
        let wake = match drain(state, server, identity, shutdown).await? {
            Drain::Empty => {
                backoff = None;
                next_collect
            }
            Drain::Unavailable => {
                let delay = backoff.map_or(Duration::from_secs(1), |d| {
                    (d * 2).min(config.checkin.max_backoff)
                });
                backoff = Some(delay);
                let pending = state.spool().pending()?.len();
                tracing::warn!(retry_in = ?delay, pending, "server unreachable; check-ins are kept and will be sent later");
                (tokio::time::Instant::now() + with_jitter(delay, delay / 4)).min(next_collect)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!("agent stopping");
                return Ok(());
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn with_jitter(base: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return base;
    }
    base + rand::rng().random_range(Duration::ZERO..=jitter)
}

fn spool_new_checkin(
    state: &StateDir,
    collector: &mut dyn Collector,
    max_spooled: usize,
) -> Result<(), StateError> {
    let request = CheckinRequest {
        checkin_id: uuid::Uuid::now_v7().to_string(),
        report: Some(collector.collect()),
    };
    let spool = state.spool();
    spool.push(&request)?;
    let dropped = spool.trim(max_spooled)?;
    if dropped > 0 {
        tracing::warn!(
            dropped,
            max_spooled,
            "spool full; dropped the oldest unsent check-ins"
        );
    }
    Ok(())
}

async fn drain(
    state: &StateDir,
    server: &Server,
    identity: &Identity,
    shutdown: &CancellationToken,
) -> Result<Drain, StateError> {
    let spool = state.spool();
    for path in spool.pending()? {
        if shutdown.is_cancelled() {
            return Ok(Drain::Unavailable);
        }
        let request = match spool.read(&path) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(error = %e, "dropping an unreadable spooled check-in");
                spool.remove(&path)?;
                continue;
            }
        };
        match server
            .checkin(&identity.agent_id, &identity.credential, &request)
            .await
        {
            Ok(response) => {
                tracing::debug!(
                    sequence = response.sequence,
                    duplicate = response.duplicate,
                    "check-in recorded"
                );
                spool.remove(&path)?;
            }
            Err(SendError::Retry(reason)) => {
                tracing::debug!(%reason, "check-in not delivered");
                return Ok(Drain::Unavailable);
            }
            Err(SendError::Unauthorized { status, body }) => {
                // Decommissioned, or the credential was revoked: keep the check-ins (an
                // operator may restore access) and keep asking, slowly.
                tracing::error!(%status, %body, "the server refuses this agent's credential");
                return Ok(Drain::Unavailable);
            }
            Err(SendError::Rejected { status, body }) => {
                // Sending it again cannot succeed; keeping it would block every later one.
                tracing::error!(%status, %body, checkin_id = %request.checkin_id, "the server refused a check-in; dropping it");
                spool.remove(&path)?;
            }
        }
    }
    Ok(Drain::Empty)
}
