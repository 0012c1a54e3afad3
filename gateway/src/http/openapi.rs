//! The OpenAPI document, served at `/api/v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, agent_api, agents, error, health, jobs};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Logbook",
        description = "Event-sourced RMM control plane. Every write is recorded as immutable events; \
                       reads are served from projections of the event log and follow it within milliseconds. \
                       Operators authenticate with an API token, agents with their credential \
                       (`Authorization: Bearer ...`). Errors are `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    paths(
        agent_api::enroll, agent_api::checkin,
        admin::create_client, admin::list_clients, admin::rename_client,
        admin::create_site, admin::list_sites, admin::rename_site,
        admin::create_enrollment_token, admin::revoke_enrollment_token,
        admin::create_api_token, admin::revoke_api_token,
        agents::list, agents::get, agents::rename, agents::move_agent, agents::decommission,
        agents::timeline, agents::state_at, agent_api::nats_credentials,
        jobs::queue, jobs::queue_bulk, jobs::get, jobs::agent_jobs, jobs::bulk_members, jobs::cancel, jobs::retry_failed,
        health::healthz, health::readyz, health::metrics,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "agents", description = "Enrollment, check-ins, the agent list and history"),
        (name = "jobs", description = "Scripts and commands for agents, delivered when they are online, run at most once"),
        (name = "tenancy", description = "Clients, sites and enrollment tokens"),
        (name = "access", description = "API tokens"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub(super) struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description.to_string()))
                    .build(),
            )
        };
        components.add_security_scheme("api_token", bearer("An API token (`lbk_...`)"));
        components.add_security_scheme(
            "agent_credential",
            bearer("An agent credential (`lba_...`)"),
        );
    }
}

/// The document.
pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
