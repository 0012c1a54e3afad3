//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// What readiness found.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// True when every check passed.
    ready: bool,
    /// `ok` or what is wrong with Postgres.
    postgres: String,
    /// `ok` or what is wrong with NATS.
    nats: String,
    /// `ok`, or `starting` while migrations and bootstrap have not finished.
    startup: String,
}

/// Readiness: Postgres and NATS are reachable and start-up has finished.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = match tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(state.pool()),
    )
    .await
    {
        Ok(Ok(_)) => "ok".to_string(),
        Ok(Err(e)) => format!("unreachable: {e}"),
        Err(_) => "no answer within 2s".to_string(),
    };
    let nats = match state.nats() {
        Some(client) => match client.connection_state() {
            async_nats::connection::State::Connected => "ok".to_string(),
            other => format!("{other:?}").to_lowercase(),
        },
        None => "not configured".to_string(),
    };
    let startup = if state.is_started() { "ok" } else { "starting" }.to_string();
    let ready = postgres == "ok" && nats == "ok" && startup == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            postgres,
            nats,
            startup,
        }),
    )
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub(super) async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::metrics().render(),
    )
}
