//! The endpoints agents call: enrollment and check-ins.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use logbook_domain::checkin::CheckinEvent;
use logbook_domain::ids::AgentId;
use logbook_proto::agent::v1 as pb;

use super::AppState;
use super::auth::{AgentCredential, RequestId};
use super::error::{ApiError, ErrorBody};
use super::wire::{Reply, Wire};
use crate::convert;
use crate::ingest::{CheckinFacts, IngestError, Submission};

/// How long a new agent's job consumer waits for the job streams of a gateway still starting.
const CONSUMER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The buffer a check-in's event is serialized into; a larger report grows it.
const PAYLOAD_CAPACITY: usize = 2048;

/// Parses an id from the path, naming the parameter when it is not a UUID.
pub(super) fn path_id<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid_field(name, format!("must be a UUID, got {raw:?}")))
}

/// Exchanges an enrollment token for an agent id and credential.
#[utoipa::path(
    post, path = "/api/v1/enroll", tag = "agents",
    request_body(content = inline(Object), description = "`logbook.agent.v1.EnrollRequest` as JSON or protobuf (`application/x-protobuf`)"),
    responses(
        (status = 201, description = "`logbook.agent.v1.EnrollResponse`: the agent id and its credential (shown once)"),
        (status = 400, body = ErrorBody, description = "Malformed request"),
        (status = 401, body = ErrorBody, description = "Unknown, expired, revoked or used-up token; nothing is recorded"),
        (status = 503, body = ErrorBody, description = "Database unavailable; retry"),
    )
)]
pub(super) async fn enroll(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    Wire { message, reply_as }: Wire<pb::EnrollRequest>,
) -> Result<Reply<pb::EnrollResponse>, ApiError> {
    let nats_public_key = message.nats_public_key.clone();
    let nats = state.agent_nats();
    if nats.identities.is_some() && nats_public_key.is_empty() {
        return Err(ApiError::invalid_field(
            "nats_public_key",
            "is required: this server gives each agent its own NATS identity",
        ));
    }
    let (token, identity) = convert::enrollment(message).map_err(|problems| {
        ApiError::invalid_fields("the enrollment request is invalid", problems)
    })?;
    if let Some(identities) = &nats.identities {
        // Check the key before anything is recorded.
        identities
            .agent_jwt(AgentId::from(uuid::Uuid::nil()), &nats_public_key)
            .map_err(|e| ApiError::invalid_field("nats_public_key", e.to_string()))?;
    }
    let enrolled = state
        .commands()
        .enroll_agent(&request_id, &token, identity)
        .await?;
    tracing::info!(agent_id = %enrolled.agent_id, site_id = %enrolled.site_id, "agent enrolled");
    let access = nats_access(&state, enrolled.agent_id, &nats_public_key)?;
    if let Some(transport) = nats.transport.clone() {
        // The consumer is also created by the dispatcher before the first job; doing it now
        // lets the agent bind at once. NATS being down must not fail the enrollment. A gateway
        // that has just started may still be creating the streams: wait for them first.
        let agent_id = enrolled.agent_id;
        tokio::spawn(async move {
            if !transport.streams_ready(CONSUMER_WAIT).await {
                tracing::warn!(%agent_id, "the job streams do not exist yet; the agent's job consumer will be created before its first job");
                return;
            }
            if let Err(e) = transport.ensure_agent_consumer(agent_id).await {
                tracing::warn!(error = %e, %agent_id, "could not create the agent's job consumer yet");
            }
        });
    }
    Ok(Reply {
        status: StatusCode::CREATED,
        format: reply_as,
        message: pb::EnrollResponse {
            agent_id: enrolled.agent_id.to_string(),
            credential: enrolled.credential,
            client_id: enrolled.client_id.to_string(),
            site_id: enrolled.site_id.to_string(),
            nats: Some(access),
        },
    })
}

fn nats_access(
    state: &AppState,
    agent_id: AgentId,
    public_key: &str,
) -> Result<pb::NatsAccess, ApiError> {
    let nats = state.agent_nats();
    let user_jwt = match &nats.identities {
        Some(identities) => identities
            .agent_jwt(agent_id, public_key)
            .map_err(|e| ApiError::invalid_field("nats_public_key", e.to_string()))?,
        None => String::new(),
    };
    Ok(pb::NatsAccess {
        url: nats.url.clone(),
        namespace: nats.namespace.clone(),
        user_jwt,
    })
}

/// Issues a fresh NATS identity to an agent whose previous one is about to expire.
#[utoipa::path(
    post, path = "/api/v1/agents/{agent_id}/nats-credentials", tag = "agents",
    params(("agent_id" = String, Path, description = "The agent's id")),
    request_body(content = inline(Object), description = "`logbook.agent.v1.NatsCredentialsRequest` as JSON or protobuf"),
    responses(
        (status = 200, description = "`logbook.agent.v1.NatsAccess`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "Not this agent's live credential"),
    ),
    security(("agent_credential" = []))
)]
pub(super) async fn nats_credentials(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    AgentCredential(credential): AgentCredential,
    Wire { message, reply_as }: Wire<pb::NatsCredentialsRequest>,
) -> Result<Reply<pb::NatsAccess>, ApiError> {
    let agent_id: AgentId = path_id("agent_id", &agent_id)?;
    let owner =
        crate::credentials::subject(state.pool(), &credential, crate::secrets::SecretKind::Agent)
            .await?;
    if owner != Some(agent_id.as_uuid()) {
        return Err(ApiError::Unauthorized(format!(
            "invalid agent credential for agent {agent_id}"
        )));
    }
    Ok(Reply {
        status: StatusCode::OK,
        format: reply_as,
        message: nats_access(&state, agent_id, &message.nats_public_key)?,
    })
}

/// Records one check-in. Answers only after it is committed to the event log.
#[utoipa::path(
    post, path = "/api/v1/agents/{agent_id}/checkins", tag = "agents",
    params(("agent_id" = String, Path, description = "The agent's id")),
    request_body(content = inline(Object), description = "`logbook.agent.v1.CheckinRequest` as JSON or protobuf (`application/x-protobuf`), at most `http.max_body_bytes`"),
    responses(
        (status = 201, description = "`logbook.agent.v1.CheckinResponse`: recorded"),
        (status = 200, description = "`logbook.agent.v1.CheckinResponse` with `duplicate: true`: this check-in id was already recorded"),
        (status = 400, body = ErrorBody, description = "Malformed report; every offending field is named; nothing is recorded"),
        (status = 401, body = ErrorBody, description = "Missing credential, or not this agent's live credential; nothing is recorded"),
        (status = 413, body = ErrorBody, description = "Body too large; nothing is recorded"),
        (status = 503, body = ErrorBody, description = "Database unavailable or ingest saturated; retry with the same check-in id"),
    ),
    security(("agent_credential" = []))
)]
pub(super) async fn checkin(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    RequestId(request_id): RequestId,
    AgentCredential(credential): AgentCredential,
    Wire { message, reply_as }: Wire<pb::CheckinRequest>,
) -> Result<Reply<pb::CheckinResponse>, ApiError> {
    let agent_id: AgentId = path_id("agent_id", &agent_id)?;
    let (checkin_id, report) = convert::checkin(message)
        .map_err(|problems| ApiError::invalid_fields("the check-in is invalid", problems))?;
    // Written into a buffer the size of a typical event (about 1.1 KiB), where
    // `serde_json::to_string` would start at 128 bytes and grow and copy four times.
    let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
    let event = CheckinEvent::AgentCheckedIn { checkin_id, report };
    serde_json::to_writer(&mut payload, &event).map_err(ApiError::internal)?;
    let payload = String::from_utf8(payload).map_err(ApiError::internal)?;
    let CheckinEvent::AgentCheckedIn { report, .. } = event;
    let recorded = state
        .ingest()
        .submit(Submission {
            agent_id,
            credential,
            checkin_id,
            payload,
            facts: CheckinFacts::of(report),
            request_id,
        })
        .await
        .map_err(|e| match e {
            IngestError::Unauthorized => {
                ApiError::Unauthorized(format!("{e} for agent {agent_id}"))
            }
            IngestError::Unavailable | IngestError::Overloaded | IngestError::ShuttingDown => {
                ApiError::Unavailable(e.to_string())
            }
            IngestError::Internal => ApiError::internal(e),
        })?;
    Ok(Reply {
        status: if recorded.duplicate {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        format: reply_as,
        message: pb::CheckinResponse {
            sequence: recorded.sequence as u64,
            duplicate: recorded.duplicate,
            recorded_at_unix_ms: recorded.recorded_at.timestamp_millis(),
        },
    })
}
