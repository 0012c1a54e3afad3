//! Tenancy and credentials administration: clients, sites, enrollment tokens, API tokens.
//!
//! Writes answer once their events are committed; lists are served from the read models, which
//! follow the log within milliseconds.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use logbook_domain::ids::{ApiTokenId, ClientId, EnrollmentTokenId, SiteId};
use logbook_projections::fleet;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::agent_api::path_id;
use super::auth::Admin;
use super::error::{ApiError, ErrorBody};
use super::wire::{JsonBody, QueryParams};

/// A name to create or rename something with.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NameRequest {
    /// 1 to 200 characters; surrounding whitespace is trimmed.
    name: String,
}

/// A client.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ClientView {
    id: Uuid,
    name: String,
    /// When it was created (absent in the answer to the create request itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<DateTime<Utc>>,
}

/// A site.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SiteView {
    id: Uuid,
    client_id: Uuid,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<DateTime<Utc>>,
}

/// A list.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Items<T> {
    items: Vec<T>,
}

/// Creates a client.
#[utoipa::path(post, path = "/api/v1/clients", tag = "tenancy", request_body = NameRequest,
    responses((status = 201, body = ClientView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn create_client(
    State(state): State<AppState>,
    admin: Admin,
    JsonBody(body): JsonBody<NameRequest>,
) -> Result<(StatusCode, Json<ClientView>), ApiError> {
    let id = state
        .commands()
        .create_client(&admin.ctx, &body.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ClientView {
            id: id.as_uuid(),
            name: body.name.trim().to_string(),
            created_at: None,
        }),
    ))
}

/// Lists clients by name.
#[utoipa::path(get, path = "/api/v1/clients", tag = "tenancy",
    responses((status = 200, body = Items<ClientView>), (status = 401, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn list_clients(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Items<ClientView>>, ApiError> {
    let items = fleet::list_clients(state.pool())
        .await?
        .into_iter()
        .map(|c| ClientView {
            id: c.client_id,
            name: c.name,
            created_at: Some(c.created_at),
        })
        .collect();
    Ok(Json(Items { items }))
}

/// Renames a client.
#[utoipa::path(patch, path = "/api/v1/clients/{client_id}", tag = "tenancy", request_body = NameRequest,
    params(("client_id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn rename_client(
    State(state): State<AppState>,
    admin: Admin,
    Path(client_id): Path<String>,
    JsonBody(body): JsonBody<NameRequest>,
) -> Result<StatusCode, ApiError> {
    let client_id: ClientId = path_id("client_id", &client_id)?;
    state
        .commands()
        .rename_client(&admin.ctx, client_id, &body.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a site under a client.
#[utoipa::path(post, path = "/api/v1/clients/{client_id}/sites", tag = "tenancy", request_body = NameRequest,
    params(("client_id" = Uuid, Path)),
    responses((status = 201, body = SiteView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "No such client")),
    security(("api_token" = [])))]
pub(super) async fn create_site(
    State(state): State<AppState>,
    admin: Admin,
    Path(client_id): Path<String>,
    JsonBody(body): JsonBody<NameRequest>,
) -> Result<(StatusCode, Json<SiteView>), ApiError> {
    let client_id: ClientId = path_id("client_id", &client_id)?;
    let id = state
        .commands()
        .create_site(&admin.ctx, client_id, &body.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SiteView {
            id: id.as_uuid(),
            client_id: client_id.as_uuid(),
            name: body.name.trim().to_string(),
            created_at: None,
        }),
    ))
}

/// Which sites to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct SiteQuery {
    /// Only this client's sites.
    client_id: Option<Uuid>,
}

/// Lists sites by name.
#[utoipa::path(get, path = "/api/v1/sites", tag = "tenancy", params(SiteQuery),
    responses((status = 200, body = Items<SiteView>), (status = 401, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn list_sites(
    State(state): State<AppState>,
    _admin: Admin,
    QueryParams(query): QueryParams<SiteQuery>,
) -> Result<Json<Items<SiteView>>, ApiError> {
    let items = fleet::list_sites(state.pool(), query.client_id)
        .await?
        .into_iter()
        .map(|s| SiteView {
            id: s.site_id,
            client_id: s.client_id,
            name: s.name,
            created_at: Some(s.created_at),
        })
        .collect();
    Ok(Json(Items { items }))
}

/// Renames a site.
#[utoipa::path(patch, path = "/api/v1/sites/{site_id}", tag = "tenancy", request_body = NameRequest,
    params(("site_id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn rename_site(
    State(state): State<AppState>,
    admin: Admin,
    Path(site_id): Path<String>,
    JsonBody(body): JsonBody<NameRequest>,
) -> Result<StatusCode, ApiError> {
    let site_id: SiteId = path_id("site_id", &site_id)?;
    state
        .commands()
        .rename_site(&admin.ctx, site_id, &body.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How long and how often an enrollment token may be used.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EnrollmentTokenRequest {
    /// How long the token works, such as `30m`, `24h` or `7d` (default `24h`, at most `365d`).
    #[serde(default)]
    expires_in: Option<String>,
    /// How many agents it may enroll (default 1).
    #[serde(default)]
    max_uses: Option<u32>,
}

/// A new enrollment token. `token` is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct EnrollmentTokenView {
    id: Uuid,
    /// Give this to `logbook-agent enroll --token`.
    token: String,
    site_id: Uuid,
    client_id: Uuid,
    expires_at: DateTime<Utc>,
    max_uses: u32,
}

const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Issues an enrollment token for a site.
#[utoipa::path(post, path = "/api/v1/sites/{site_id}/enrollment-tokens", tag = "tenancy", request_body = EnrollmentTokenRequest,
    params(("site_id" = Uuid, Path)),
    responses((status = 201, body = EnrollmentTokenView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "No such site")),
    security(("api_token" = [])))]
pub(super) async fn create_enrollment_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(site_id): Path<String>,
    JsonBody(body): JsonBody<EnrollmentTokenRequest>,
) -> Result<(StatusCode, Json<EnrollmentTokenView>), ApiError> {
    let site_id: SiteId = path_id("site_id", &site_id)?;
    let expires_in = match body.expires_in.as_deref() {
        None => Duration::from_secs(24 * 3600),
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::invalid_field("expires_in", format!("is not a duration such as 24h: {e}"))
        })?,
    };
    if expires_in.is_zero() || expires_in > MAX_TOKEN_LIFETIME {
        return Err(ApiError::invalid_field(
            "expires_in",
            "must be between 1s and 365d",
        ));
    }
    let issued = state
        .commands()
        .issue_enrollment_token(&admin.ctx, site_id, expires_in, body.max_uses.unwrap_or(1))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentTokenView {
            id: issued.token_id.as_uuid(),
            token: issued.token,
            site_id: issued.site_id.as_uuid(),
            client_id: issued.client_id.as_uuid(),
            expires_at: issued.expires_at,
            max_uses: issued.max_uses,
        }),
    ))
}

/// Revokes an enrollment token.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens/{token_id}/revoke", tag = "tenancy",
    params(("token_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Already revoked")),
    security(("api_token" = [])))]
pub(super) async fn revoke_enrollment_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(token_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let token_id: EnrollmentTokenId = path_id("token_id", &token_id)?;
    state
        .commands()
        .revoke_enrollment_token(&admin.ctx, token_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new API token. `token` is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ApiTokenView {
    id: Uuid,
    name: String,
    token: String,
}

/// Issues an API token.
#[utoipa::path(post, path = "/api/v1/api-tokens", tag = "access", request_body = NameRequest,
    responses((status = 201, body = ApiTokenView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn create_api_token(
    State(state): State<AppState>,
    admin: Admin,
    JsonBody(body): JsonBody<NameRequest>,
) -> Result<(StatusCode, Json<ApiTokenView>), ApiError> {
    let issued = state
        .commands()
        .issue_api_token(&admin.ctx, &body.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiTokenView {
            id: issued.token_id.as_uuid(),
            name: body.name.trim().to_string(),
            token: issued.token,
        }),
    ))
}

/// Revokes an API token (possibly the caller's own).
#[utoipa::path(post, path = "/api/v1/api-tokens/{token_id}/revoke", tag = "access",
    params(("token_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("api_token" = [])))]
pub(super) async fn revoke_api_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(token_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let token_id: ApiTokenId = path_id("token_id", &token_id)?;
    state
        .commands()
        .revoke_api_token(&admin.ctx, token_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
