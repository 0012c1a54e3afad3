//! Who is calling: operators and integrations with an API token, agents with their credential.
//! Both present `Authorization: Bearer <secret>`.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use logbook_domain::ids::ApiTokenId;
use logbook_domain::metadata::Actor;
use logbook_domain::secret::SecretHash;

use super::AppState;
use super::error::ApiError;
use crate::commands::Ctx;
use crate::credentials;
use crate::secrets::{self, SecretKind};

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The request id set by the request-id layer.
fn request_id(parts: &Parts) -> String {
    parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The request's id (`x-request-id`, set by the router's middleware), as the events it causes
/// record it. Extracting only this header spares a handler a copy of the whole header map.
#[derive(Debug, Clone)]
pub(super) struct RequestId(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(request_id(parts)))
    }
}

/// An authenticated operator or integration.
#[derive(Debug, Clone)]
pub(super) struct Admin {
    /// The acting context for commands.
    pub(super) ctx: Ctx,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized("an API token is required: Authorization: Bearer <token>".into())
        })?;
        let subject =
            credentials::subject(state.pool(), &secrets::hash(token), SecretKind::ApiToken)
                .await?
                .ok_or_else(|| ApiError::Unauthorized("invalid or revoked API token".into()))?;
        Ok(Admin {
            ctx: Ctx::new(
                Actor::ApiToken(ApiTokenId::from(subject)),
                request_id(parts),
            ),
        })
    }
}

/// The credential an agent presented. It is checked where it is used: the check-in append
/// verifies it in the same statement that records the check-in.
#[derive(Debug, Clone, Copy)]
pub(super) struct AgentCredential(pub(super) SecretHash);

impl<S: Send + Sync> FromRequestParts<S> for AgentCredential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        bearer(parts)
            .map(|token| AgentCredential(secrets::hash(token)))
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "the agent credential is required: Authorization: Bearer <credential>".into(),
                )
            })
    }
}
