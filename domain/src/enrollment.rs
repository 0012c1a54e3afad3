//! The `EnrollmentToken` aggregate: a secret that lets agents join one site, until it expires,
//! is used up or is revoked.
//!
//! Redeeming a token and enrolling the agent are two aggregates' events; the gateway appends both
//! in one transaction, so a token use is never recorded without its agent or the reverse.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, ClientId, EnrollmentTokenId, SiteId};
use crate::secret::SecretHash;

/// Most agents one token may enroll.
pub const MAX_TOKEN_USES: u32 = 1_000_000;

/// Commands on an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentTokenCommand {
    /// Issues a new token for a site.
    IssueEnrollmentToken {
        /// The id chosen for the token.
        token_id: EnrollmentTokenId,
        /// The client of the site.
        client_id: ClientId,
        /// The site agents will join.
        site_id: SiteId,
        /// Hash of the token's secret.
        secret_hash: SecretHash,
        /// When it stops working.
        expires_at: DateTime<Utc>,
        /// How many agents it may enroll.
        max_uses: u32,
        /// The server's current time.
        now: DateTime<Utc>,
    },
    /// Uses the token to enroll one agent.
    RedeemEnrollmentToken {
        /// Hash of the secret the agent presented.
        presented: SecretHash,
        /// The agent being enrolled.
        agent_id: AgentId,
        /// The server's current time.
        now: DateTime<Utc>,
    },
    /// Stops the token from working.
    RevokeEnrollmentToken,
}

/// Events of an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollmentTokenEvent {
    /// A token was issued.
    EnrollmentTokenIssued {
        /// Its id.
        token_id: EnrollmentTokenId,
        /// The client of its site.
        client_id: ClientId,
        /// The site agents join with it.
        site_id: SiteId,
        /// Hash of its secret.
        secret_hash: SecretHash,
        /// When it stops working.
        expires_at: DateTime<Utc>,
        /// How many agents it may enroll.
        max_uses: u32,
    },
    /// The token enrolled an agent.
    EnrollmentTokenRedeemed {
        /// The agent it enrolled.
        agent_id: AgentId,
        /// 1 for the first use, 2 for the second…
        use_number: u32,
    },
    /// The token was revoked.
    EnrollmentTokenRevoked,
}

impl DomainEvent for EnrollmentTokenEvent {
    fn event_type(&self) -> String {
        match self {
            Self::EnrollmentTokenIssued { .. } => "EnrollmentTokenIssued",
            Self::EnrollmentTokenRedeemed { .. } => "EnrollmentTokenRedeemed",
            Self::EnrollmentTokenRevoked => "EnrollmentTokenRevoked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Why an enrollment token command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentTokenError {
    /// A token with this id was already issued.
    #[error("enrollment token already issued")]
    AlreadyIssued,
    /// No token with this id, or the secret does not match. The two are one error so that a
    /// caller cannot probe which token ids exist.
    #[error("unknown enrollment token")]
    Unknown,
    /// The token's expiry has passed.
    #[error("enrollment token expired at {0}")]
    Expired(DateTime<Utc>),
    /// The token has enrolled as many agents as it may.
    #[error("enrollment token is used up ({0} of {0} uses)")]
    UsedUp(u32),
    /// The token was revoked.
    #[error("enrollment token was revoked")]
    Revoked,
    /// The expiry is not in the future.
    #[error("expiry must be in the future")]
    ExpiryNotInFuture,
    /// The use count is zero or too large.
    #[error("max_uses must be between 1 and {MAX_TOKEN_USES}, got {0}")]
    InvalidMaxUses(u32),
}

/// The state needed to decide enrollment token commands.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct EnrollmentToken {
    issued: Option<Issued>,
    uses: u32,
    revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Issued {
    client_id: ClientId,
    site_id: SiteId,
    secret_hash: SecretHash,
    expires_at: DateTime<Utc>,
    max_uses: u32,
}

impl EnrollmentToken {
    /// The client and site the token enrolls agents into, once issued.
    pub fn target(&self) -> Option<(ClientId, SiteId)> {
        self.issued.as_ref().map(|i| (i.client_id, i.site_id))
    }
}

impl Aggregate for EnrollmentToken {
    const TYPE: &'static str = "enrollment_token";
    type Command = EnrollmentTokenCommand;
    type Event = EnrollmentTokenEvent;
    type Error = EnrollmentTokenError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            EnrollmentTokenCommand::IssueEnrollmentToken {
                token_id,
                client_id,
                site_id,
                secret_hash,
                expires_at,
                max_uses,
                now,
            } => {
                if self.issued.is_some() {
                    return Err(EnrollmentTokenError::AlreadyIssued);
                }
                if expires_at <= now {
                    return Err(EnrollmentTokenError::ExpiryNotInFuture);
                }
                if max_uses == 0 || max_uses > MAX_TOKEN_USES {
                    return Err(EnrollmentTokenError::InvalidMaxUses(max_uses));
                }
                EnrollmentTokenEvent::EnrollmentTokenIssued {
                    token_id,
                    client_id,
                    site_id,
                    secret_hash,
                    expires_at,
                    max_uses,
                }
            }
            EnrollmentTokenCommand::RedeemEnrollmentToken {
                presented,
                agent_id,
                now,
            } => {
                let issued = self.issued.as_ref().ok_or(EnrollmentTokenError::Unknown)?;
                if issued.secret_hash != presented {
                    return Err(EnrollmentTokenError::Unknown);
                }
                if self.revoked {
                    return Err(EnrollmentTokenError::Revoked);
                }
                if now >= issued.expires_at {
                    return Err(EnrollmentTokenError::Expired(issued.expires_at));
                }
                if self.uses >= issued.max_uses {
                    return Err(EnrollmentTokenError::UsedUp(issued.max_uses));
                }
                EnrollmentTokenEvent::EnrollmentTokenRedeemed {
                    agent_id,
                    use_number: self.uses + 1,
                }
            }
            EnrollmentTokenCommand::RevokeEnrollmentToken => {
                if self.issued.is_none() {
                    return Err(EnrollmentTokenError::Unknown);
                }
                if self.revoked {
                    return Err(EnrollmentTokenError::Revoked);
                }
                EnrollmentTokenEvent::EnrollmentTokenRevoked
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            EnrollmentTokenEvent::EnrollmentTokenIssued {
                client_id,
                site_id,
                secret_hash,
                expires_at,
                max_uses,
                ..
            } => {
                self.issued = Some(Issued {
                    client_id,
                    site_id,
                    secret_hash,
                    expires_at,
                    max_uses,
                });
            }
            EnrollmentTokenEvent::EnrollmentTokenRedeemed { use_number, .. } => {
                self.uses = use_number;
            }
            EnrollmentTokenEvent::EnrollmentTokenRevoked => self.revoked = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type Given = TestFramework<EnrollmentToken>;
    const TOKEN: EnrollmentTokenId = EnrollmentTokenId::from_uuid(Uuid::from_u128(5));
    const SECRET: SecretHash = SecretHash::from_bytes([1; 32]);
    const AGENT: AgentId = AgentId::from_uuid(Uuid::from_u128(100));

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, hour, 0, 0)
            .single()
            .expect("valid time")
    }

    fn issued(max_uses: u32) -> EnrollmentTokenEvent {
        EnrollmentTokenEvent::EnrollmentTokenIssued {
            token_id: TOKEN,
            client_id: ClientId::from_uuid(Uuid::from_u128(1)),
            site_id: SiteId::from_uuid(Uuid::from_u128(2)),
            secret_hash: SECRET,
            expires_at: at(12),
            max_uses,
        }
    }

    fn redeem(presented: SecretHash, hour: u32) -> EnrollmentTokenCommand {
        EnrollmentTokenCommand::RedeemEnrollmentToken {
            presented,
            agent_id: AGENT,
            now: at(hour),
        }
    }

    #[test]
    fn issuing_checks_expiry_and_uses() {
        let issue = |expires: u32, max_uses: u32| EnrollmentTokenCommand::IssueEnrollmentToken {
            token_id: TOKEN,
            client_id: ClientId::from_uuid(Uuid::from_u128(1)),
            site_id: SiteId::from_uuid(Uuid::from_u128(2)),
            secret_hash: SECRET,
            expires_at: at(expires),
            max_uses,
            now: at(10),
        };
        Given::with(())
            .given_no_previous_events()
            .when(issue(12, 3))
            .then_expect_events(vec![issued(3)]);
        Given::with(())
            .given_no_previous_events()
            .when(issue(9, 3))
            .then_expect_error(EnrollmentTokenError::ExpiryNotInFuture);
        Given::with(())
            .given_no_previous_events()
            .when(issue(12, 0))
            .then_expect_error(EnrollmentTokenError::InvalidMaxUses(0));
    }

    #[test]
    fn a_valid_token_is_redeemed_and_counts_its_uses() {
        Given::with(())
            .given(vec![issued(2)])
            .when(redeem(SECRET, 11))
            .then_expect_events(vec![EnrollmentTokenEvent::EnrollmentTokenRedeemed {
                agent_id: AGENT,
                use_number: 1,
            }]);
    }

    #[test]
    fn a_used_up_token_is_refused() {
        Given::with(())
            .given(vec![
                issued(1),
                EnrollmentTokenEvent::EnrollmentTokenRedeemed {
                    agent_id: AGENT,
                    use_number: 1,
                },
            ])
            .when(redeem(SECRET, 11))
            .then_expect_error(EnrollmentTokenError::UsedUp(1));
    }

    #[test]
    fn an_expired_token_is_refused() {
        Given::with(())
            .given(vec![issued(5)])
            .when(redeem(SECRET, 12))
            .then_expect_error(EnrollmentTokenError::Expired(at(12)));
    }

    #[test]
    fn a_wrong_secret_or_unknown_token_look_the_same() {
        Given::with(())
            .given(vec![issued(5)])
            .when(redeem(SecretHash::from_bytes([2; 32]), 11))
            .then_expect_error(EnrollmentTokenError::Unknown);
        Given::with(())
            .given_no_previous_events()
            .when(redeem(SECRET, 11))
            .then_expect_error(EnrollmentTokenError::Unknown);
    }

    #[test]
    fn a_revoked_token_is_refused() {
        Given::with(())
            .given(vec![issued(5)])
            .when(EnrollmentTokenCommand::RevokeEnrollmentToken)
            .then_expect_events(vec![EnrollmentTokenEvent::EnrollmentTokenRevoked]);
        Given::with(())
            .given(vec![
                issued(5),
                EnrollmentTokenEvent::EnrollmentTokenRevoked,
            ])
            .when(redeem(SECRET, 11))
            .then_expect_error(EnrollmentTokenError::Revoked);
    }
}
