//! Talking to the gateway: enrollment and check-ins, as protobuf over HTTP(S).

use std::time::Duration;

use logbook_proto::PROTOBUF_MEDIA_TYPE;
use logbook_proto::agent::v1::{
    CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, NatsAccess,
    NatsCredentialsRequest,
};
use prost::Message;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server is unreachable, overloaded or failing; try again later.
    #[error("server unavailable: {0}")]
    Retry(String),
    /// The server does not accept our credential (or enrollment token).
    #[error("not authorised ({status}): {body}")]
    Unauthorized {
        /// The HTTP status.
        status: StatusCode,
        /// The server's explanation.
        body: String,
    },
    /// The server refused this request for good; sending it again will not help.
    #[error("refused ({status}): {body}")]
    Rejected {
        /// The HTTP status.
        status: StatusCode,
        /// The server's explanation.
        body: String,
    },
}

/// A connection to one gateway.
#[derive(Debug, Clone)]
pub struct Server {
    http: reqwest::Client,
    base: String,
}

impl Server {
    /// A client for the gateway at `base_url` (such as `https://logbook.example.com`).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        // rustls needs one process-wide crypto provider; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("logbook-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
        })
    }

    /// Exchanges an enrollment token for an identity.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, SendError> {
        self.post("/api/v1/enroll", None, request.encode_to_vec())
            .await
    }

    /// Sends one check-in.
    pub async fn checkin(
        &self,
        agent_id: &str,
        credential: &str,
        request: &CheckinRequest,
    ) -> Result<CheckinResponse, SendError> {
        self.post(
            &format!("/api/v1/agents/{agent_id}/checkins"),
            Some(credential),
            request.encode_to_vec(),
        )
        .await
    }

    /// Asks for a fresh NATS identity for the agent's key.
    pub async fn renew_nats(
        &self,
        agent_id: &str,
        credential: &str,
        nats_public_key: &str,
    ) -> Result<NatsAccess, SendError> {
        let request = NatsCredentialsRequest {
            nats_public_key: nats_public_key.to_string(),
        };
        self.post(
            &format!("/api/v1/agents/{agent_id}/nats-credentials"),
            Some(credential),
            request.encode_to_vec(),
        )
        .await
    }

    async fn post<T: Message + Default>(
        &self,
        path: &str,
        credential: Option<&str>,
        body: Vec<u8>,
    ) -> Result<T, SendError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, PROTOBUF_MEDIA_TYPE)
            .header(ACCEPT, PROTOBUF_MEDIA_TYPE)
            .body(body);
        if let Some(credential) = credential {
            request = request.header(AUTHORIZATION, format!("Bearer {credential}"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| SendError::Retry(error_chain(&e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| SendError::Retry(error_chain(&e)))?;
        if status.is_success() {
            return T::decode(bytes)
                .map_err(|e| SendError::Retry(format!("unreadable answer: {e}")));
        }
        let body = String::from_utf8_lossy(&bytes)
            .chars()
            .take(500)
            .collect::<String>();
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                SendError::Unauthorized { status, body }
            }
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                SendError::Retry(format!("{status}: {body}"))
            }
            s if s.is_server_error() => SendError::Retry(format!("{status}: {body}")),
            _ => SendError::Rejected { status, body },
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
