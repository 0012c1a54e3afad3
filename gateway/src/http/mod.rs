//! The HTTP API (axum): routes, shared state, middleware.
//!
//! `router(state)` is the whole API; tests drive it with `oneshot` and `serve` binds it to a
//! socket. Handlers stay thin: they parse and authenticate, then call [`crate::commands`],
//! [`crate::ingest`] or a read-model query in `logbook_projections`.

mod admin;
mod agent_api;
mod agents;
mod auth;
mod envelope;
pub mod error;
mod health;
mod jobs;
mod openapi;
pub mod server;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::{get, post};
use logbook_projections::fleet::StatusThresholds;
use sqlx::PgPool;

use crate::commands::Commands;
use crate::config::JobsConfig;
use crate::ingest::Ingest;
use crate::jobs::nats_auth::AgentIdentities;
use crate::jobs::transport::Transport;
use error::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    pool: PgPool,
    commands: Commands,
    ingest: Ingest,
    thresholds: StatusThresholds,
    nats: Option<async_nats::Client>,
    max_body_bytes: usize,
    request_timeout: Duration,
    started: Arc<AtomicBool>,
    jobs: JobsConfig,
    agent_nats: AgentNats,
}

/// What agents are told about NATS at enrollment.
#[derive(Debug, Clone, Default)]
pub struct AgentNats {
    /// The URL agents connect to.
    pub url: String,
    /// The names' namespace.
    pub namespace: String,
    /// Issues each agent's NATS identity; `None` when NATS runs without authentication.
    pub identities: Option<Arc<AgentIdentities>>,
    /// Creates agents' consumers at enrollment and removes them at decommissioning.
    pub transport: Option<Arc<Transport>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The parts an [`AppState`] is made of.
#[derive(Debug)]
pub struct StateParts {
    /// The database pool.
    pub pool: PgPool,
    /// The command side.
    pub commands: Commands,
    /// The check-in ingest.
    pub ingest: Ingest,
    /// Agent status thresholds.
    pub thresholds: StatusThresholds,
    /// The NATS client, for readiness.
    pub nats: Option<async_nats::Client>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// Set once migrations and bootstrap have finished.
    pub started: Arc<AtomicBool>,
    /// Job limits.
    pub jobs: JobsConfig,
    /// NATS as agents see it.
    pub agent_nats: AgentNats,
}

impl AppState {
    /// Assembles the state.
    pub fn new(parts: StateParts) -> Self {
        AppState(Arc::new(Inner {
            pool: parts.pool,
            commands: parts.commands,
            ingest: parts.ingest,
            thresholds: parts.thresholds,
            nats: parts.nats,
            max_body_bytes: parts.max_body_bytes,
            request_timeout: parts.request_timeout,
            started: parts.started,
            jobs: parts.jobs,
            agent_nats: parts.agent_nats,
        }))
    }

    fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    fn commands(&self) -> &Commands {
        &self.0.commands
    }

    fn ingest(&self) -> &Ingest {
        &self.0.ingest
    }

    fn thresholds(&self) -> StatusThresholds {
        self.0.thresholds
    }

    fn nats(&self) -> Option<&async_nats::Client> {
        self.0.nats.as_ref()
    }

    fn max_body_bytes(&self) -> usize {
        self.0.max_body_bytes
    }

    fn jobs_config(&self) -> &JobsConfig {
        &self.0.jobs
    }

    fn agent_nats(&self) -> &AgentNats {
        &self.0.agent_nats
    }

    fn is_started(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    // Install the metrics recorder before the first request is counted.
    crate::telemetry::metrics();
    let api = Router::new()
        .route("/api/v1/enroll", post(agent_api::enroll))
        .route(
            "/api/v1/agents/{agent_id}/checkins",
            post(agent_api::checkin),
        )
        .route(
            "/api/v1/clients",
            get(admin::list_clients).post(admin::create_client),
        )
        .route(
            "/api/v1/clients/{client_id}",
            axum::routing::patch(admin::rename_client),
        )
        .route(
            "/api/v1/clients/{client_id}/sites",
            post(admin::create_site),
        )
        .route("/api/v1/sites", get(admin::list_sites))
        .route(
            "/api/v1/sites/{site_id}",
            axum::routing::patch(admin::rename_site),
        )
        .route(
            "/api/v1/sites/{site_id}/enrollment-tokens",
            post(admin::create_enrollment_token),
        )
        .route(
            "/api/v1/enrollment-tokens/{token_id}/revoke",
            post(admin::revoke_enrollment_token),
        )
        .route("/api/v1/api-tokens", post(admin::create_api_token))
        .route(
            "/api/v1/api-tokens/{token_id}/revoke",
            post(admin::revoke_api_token),
        )
        .route("/api/v1/agents", get(agents::list))
        .route(
            "/api/v1/agents/{agent_id}",
            get(agents::get).patch(agents::rename),
        )
        .route("/api/v1/agents/{agent_id}/move", post(agents::move_agent))
        .route(
            "/api/v1/agents/{agent_id}/decommission",
            post(agents::decommission),
        )
        .route("/api/v1/agents/{agent_id}/timeline", get(agents::timeline))
        .route("/api/v1/agents/{agent_id}/state", get(agents::state_at))
        .route(
            "/api/v1/agents/{agent_id}/nats-credentials",
            post(agent_api::nats_credentials),
        )
        .route(
            "/api/v1/agents/{agent_id}/jobs",
            get(jobs::agent_jobs).post(jobs::queue),
        )
        .route("/api/v1/jobs", post(jobs::queue_bulk))
        .route("/api/v1/jobs/{id}", get(jobs::get))
        .route("/api/v1/jobs/{id}/jobs", get(jobs::bulk_members))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{id}/retry-failed", post(jobs::retry_failed))
        .route_layer(envelope::StartGateLayer {
            started: state.0.started.clone(),
        });

    let timeout = state.0.request_timeout;
    let max_body = state.0.max_body_bytes;
    Router::new()
        .merge(api)
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(envelope::EnvelopeLayer { timeout })
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}
