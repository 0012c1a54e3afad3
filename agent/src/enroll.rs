//! `logbook-agent enroll`: exchange an enrollment token for an identity and store it.

use std::time::Duration;

use logbook_proto::agent::v1::EnrollRequest;

use crate::client::{SendError, Server};
use crate::collector;
use crate::state::{Identity, NatsIdentity, StateDir, StateError};

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Already enrolled; enrolling again would orphan the existing identity.
    #[error("already enrolled as agent {agent_id} with {server}; remove {path} to enroll again")]
    AlreadyEnrolled {
        /// The existing agent id.
        agent_id: String,
        /// Its server.
        server: String,
        /// The identity file.
        path: String,
    },
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The HTTP client could not be built.
    #[error("cannot create the HTTP client")]
    Client(#[from] reqwest::Error),
    /// The server refused or could not be reached.
    #[error("enrollment failed")]
    Server(#[from] SendError),
    /// The NATS key could not be made.
    #[error("creating the agent's NATS key: {0}")]
    Key(String),
}

/// Enrolls with the server at `server_url` and stores the identity in `state_dir`.
pub async fn enroll(
    server_url: &str,
    token: &str,
    state_dir: &std::path::Path,
    timeout: Duration,
) -> Result<Identity, EnrollError> {
    let state = StateDir::open(state_dir)?;
    if let Some(existing) = state.identity()? {
        return Err(EnrollError::AlreadyEnrolled {
            agent_id: existing.agent_id,
            server: existing.server_url,
            path: state.path().join("identity.json").display().to_string(),
        });
    }
    // The agent's own NATS key: the seed stays here, the server only sees the public half.
    let seed = match state.nkey_seed()? {
        Some(seed) => seed,
        None => {
            let seed = nkeys::KeyPair::new_user()
                .seed()
                .map_err(|e| EnrollError::Key(e.to_string()))?;
            state.save_nkey_seed(&seed)?;
            seed
        }
    };
    let public_key = nkeys::KeyPair::from_seed(&seed)
        .map_err(|e| EnrollError::Key(e.to_string()))?
        .public_key();
    let server = Server::new(server_url, timeout)?;
    let response = server
        .enroll(&EnrollRequest {
            token: token.trim().to_string(),
            hostname: collector::hostname(),
            os: collector::os_family().to_string(),
            arch: std::env::consts::ARCH.to_string(),
            agent_version: collector::AGENT_VERSION.to_string(),
            nats_public_key: public_key,
        })
        .await?;
    let identity = Identity {
        server_url: server_url.trim_end_matches('/').to_string(),
        agent_id: response.agent_id,
        credential: response.credential,
        client_id: response.client_id,
        site_id: response.site_id,
        nats: response
            .nats
            .filter(|n| !n.url.is_empty())
            .map(|n| NatsIdentity {
                url: n.url,
                namespace: n.namespace,
                user_jwt: n.user_jwt,
            }),
    };
    state.save_identity(&identity)?;
    Ok(identity)
}
