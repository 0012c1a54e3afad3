//! The `ApiToken` aggregate: a bearer token with which operators and integrations call the
//! admin API. Until users and roles exist, every API token has full rights.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::ApiTokenId;
use crate::naming::{NameError, normalise_name};
use crate::secret::SecretHash;

/// Commands on an API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTokenCommand {
    /// Issues the token.
    IssueApiToken {
        /// The id chosen for it.
        token_id: ApiTokenId,
        /// What it is for ("bootstrap", "ci").
        name: String,
        /// Hash of its secret.
        secret_hash: SecretHash,
    },
    /// Stops the token from working.
    RevokeApiToken,
}

/// Events of an API token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiTokenEvent {
    /// A token was issued.
    ApiTokenIssued {
        /// Its id.
        token_id: ApiTokenId,
        /// What it is for.
        name: String,
        /// Hash of its secret.
        secret_hash: SecretHash,
    },
    /// The token was revoked.
    ApiTokenRevoked,
}

impl DomainEvent for ApiTokenEvent {
    fn event_type(&self) -> String {
        match self {
            ApiTokenEvent::ApiTokenIssued { .. } => "ApiTokenIssued",
            ApiTokenEvent::ApiTokenRevoked => "ApiTokenRevoked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Why an API token command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiTokenError {
    /// The id is taken.
    #[error("API token already issued")]
    AlreadyIssued,
    /// No such token.
    #[error("API token not found")]
    NotFound,
    /// Already revoked.
    #[error("API token already revoked")]
    AlreadyRevoked,
    /// The name breaks the naming rules.
    #[error("name {0}")]
    InvalidName(#[from] NameError),
}

/// The state needed to decide API token commands.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ApiToken {
    issued: bool,
    revoked: bool,
}

impl Aggregate for ApiToken {
    const TYPE: &'static str = "api_token";
    type Command = ApiTokenCommand;
    type Event = ApiTokenEvent;
    type Error = ApiTokenError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            ApiTokenCommand::IssueApiToken {
                token_id,
                name,
                secret_hash,
            } => {
                if self.issued {
                    return Err(ApiTokenError::AlreadyIssued);
                }
                ApiTokenEvent::ApiTokenIssued {
                    token_id,
                    name: normalise_name(&name)?,
                    secret_hash,
                }
            }
            ApiTokenCommand::RevokeApiToken => {
                if !self.issued {
                    return Err(ApiTokenError::NotFound);
                }
                if self.revoked {
                    return Err(ApiTokenError::AlreadyRevoked);
                }
                ApiTokenEvent::ApiTokenRevoked
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ApiTokenEvent::ApiTokenIssued { .. } => self.issued = true,
            ApiTokenEvent::ApiTokenRevoked => self.revoked = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type Given = TestFramework<ApiToken>;
    const ID: ApiTokenId = ApiTokenId::from_uuid(Uuid::from_u128(1));

    fn issued() -> ApiTokenEvent {
        ApiTokenEvent::ApiTokenIssued {
            token_id: ID,
            name: "bootstrap".into(),
            secret_hash: SecretHash::from_bytes([3; 32]),
        }
    }

    #[test]
    fn a_token_is_issued_then_revoked_once() {
        Given::with(())
            .given_no_previous_events()
            .when(ApiTokenCommand::IssueApiToken {
                token_id: ID,
                name: "bootstrap".into(),
                secret_hash: SecretHash::from_bytes([3; 32]),
            })
            .then_expect_events(vec![issued()]);
        Given::with(())
            .given(vec![issued()])
            .when(ApiTokenCommand::RevokeApiToken)
            .then_expect_events(vec![ApiTokenEvent::ApiTokenRevoked]);
        Given::with(())
            .given(vec![issued(), ApiTokenEvent::ApiTokenRevoked])
            .when(ApiTokenCommand::RevokeApiToken)
            .then_expect_error(ApiTokenError::AlreadyRevoked);
    }
}
