//! The `Agent` aggregate: one endpoint's lifecycle (enrolled, renamed, moved between sites,
//! decommissioned).
//!
//! Check-ins are deliberately *not* events of this aggregate: they live in their own stream
//! ([`crate::checkin`]) so that deciding a lifecycle command never replays an agent's telemetry,
//! and recording a check-in never loads the aggregate.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, ClientId, EnrollmentTokenId, SiteId};
use crate::naming::{NameError, normalise_name};
use crate::secret::SecretHash;

/// What an agent says about itself when it enrolls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// The machine's hostname.
    pub hostname: String,
    /// Operating system family, such as `linux`.
    pub os: String,
    /// CPU architecture, such as `x86_64`.
    pub arch: String,
    /// The agent's version.
    pub agent_version: String,
}

/// Commands on an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// Enrolls a new agent into a site. Sent together with the token redemption that allowed it.
    EnrollAgent {
        /// The id chosen for the agent.
        agent_id: AgentId,
        /// The client of its site.
        client_id: ClientId,
        /// The site it joins.
        site_id: SiteId,
        /// The token that let it in.
        enrollment_token_id: EnrollmentTokenId,
        /// Hash of the credential issued to it.
        credential_hash: SecretHash,
        /// What it said about itself.
        identity: AgentIdentity,
    },
    /// Sets the name operators see (the hostname stays what the machine reports).
    RenameAgent {
        /// The new display name.
        display_name: String,
    },
    /// Moves the agent to another site, possibly of another client. The gateway resolves the
    /// site's client before sending this.
    MoveAgent {
        /// The client of the new site.
        to_client_id: ClientId,
        /// The new site.
        to_site_id: SiteId,
    },
    /// Retires the agent: its credential stops working and it cannot be changed any more.
    DecommissionAgent {
        /// Why, for the audit trail.
        reason: String,
    },
}

/// Events of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEvent {
    /// The agent joined a site.
    AgentEnrolled {
        /// Its id.
        agent_id: AgentId,
        /// The client of its site.
        client_id: ClientId,
        /// Its site.
        site_id: SiteId,
        /// The token that let it in.
        enrollment_token_id: EnrollmentTokenId,
        /// Hash of its credential.
        credential_hash: SecretHash,
        /// What it said about itself.
        identity: AgentIdentity,
    },
    /// The agent's display name changed.
    AgentRenamed {
        /// The new display name.
        display_name: String,
    },
    /// The agent moved to another site.
    AgentMoved {
        /// Client before the move.
        from_client_id: ClientId,
        /// Site before the move.
        from_site_id: SiteId,
        /// Client after the move.
        to_client_id: ClientId,
        /// Site after the move.
        to_site_id: SiteId,
    },
    /// The agent was retired.
    AgentDecommissioned {
        /// Why.
        reason: String,
    },
}

impl DomainEvent for AgentEvent {
    fn event_type(&self) -> String {
        match self {
            AgentEvent::AgentEnrolled { .. } => "AgentEnrolled",
            AgentEvent::AgentRenamed { .. } => "AgentRenamed",
            AgentEvent::AgentMoved { .. } => "AgentMoved",
            AgentEvent::AgentDecommissioned { .. } => "AgentDecommissioned",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Why an agent command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The agent id is taken.
    #[error("agent already enrolled")]
    AlreadyEnrolled,
    /// No such agent.
    #[error("agent not found")]
    NotFound,
    /// The agent was decommissioned and can no longer change.
    #[error("agent is decommissioned")]
    Decommissioned,
    /// The display name breaks the naming rules.
    #[error("display_name {0}")]
    InvalidName(#[from] NameError),
    /// The hostname it reported is empty or too long.
    #[error("hostname must be 1 to 253 characters")]
    InvalidHostname,
    /// The agent is already in the target site.
    #[error("agent is already in site {0}")]
    AlreadyInSite(SiteId),
    /// The new display name equals the current one.
    #[error("agent is already called {0:?}")]
    Unchanged(String),
}

/// Where an agent is in its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentLifecycle {
    /// Not enrolled (the aggregate has no events).
    #[default]
    Unknown,
    /// Enrolled and working.
    Active,
    /// Retired.
    Decommissioned,
}

/// The state needed to decide agent commands.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Agent {
    lifecycle: AgentLifecycle,
    client_id: Option<ClientId>,
    site_id: Option<SiteId>,
    display_name: String,
}

impl Agent {
    /// Where the agent is in its life.
    pub fn lifecycle(&self) -> AgentLifecycle {
        self.lifecycle
    }

    /// The agent's client and site, once enrolled.
    pub fn placement(&self) -> Option<(ClientId, SiteId)> {
        self.client_id.zip(self.site_id)
    }

    fn require_active(&self) -> Result<(ClientId, SiteId), AgentError> {
        match self.lifecycle {
            AgentLifecycle::Unknown => Err(AgentError::NotFound),
            AgentLifecycle::Decommissioned => Err(AgentError::Decommissioned),
            AgentLifecycle::Active => self.placement().ok_or(AgentError::NotFound),
        }
    }
}

impl Aggregate for Agent {
    const TYPE: &'static str = "agent";
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            AgentCommand::EnrollAgent {
                agent_id,
                client_id,
                site_id,
                enrollment_token_id,
                credential_hash,
                identity,
            } => {
                if self.lifecycle != AgentLifecycle::Unknown {
                    return Err(AgentError::AlreadyEnrolled);
                }
                let hostname = identity.hostname.trim();
                if hostname.is_empty() || hostname.len() > 253 {
                    return Err(AgentError::InvalidHostname);
                }
                AgentEvent::AgentEnrolled {
                    agent_id,
                    client_id,
                    site_id,
                    enrollment_token_id,
                    credential_hash,
                    identity: AgentIdentity {
                        hostname: hostname.to_string(),
                        ..identity
                    },
                }
            }
            AgentCommand::RenameAgent { display_name } => {
                self.require_active()?;
                let display_name = normalise_name(&display_name)?;
                if display_name == self.display_name {
                    return Err(AgentError::Unchanged(display_name));
                }
                AgentEvent::AgentRenamed { display_name }
            }
            AgentCommand::MoveAgent {
                to_client_id,
                to_site_id,
            } => {
                let (from_client_id, from_site_id) = self.require_active()?;
                if from_site_id == to_site_id {
                    return Err(AgentError::AlreadyInSite(to_site_id));
                }
                AgentEvent::AgentMoved {
                    from_client_id,
                    from_site_id,
                    to_client_id,
                    to_site_id,
                }
            }
            AgentCommand::DecommissionAgent { reason } => {
                self.require_active()?;
                AgentEvent::AgentDecommissioned {
                    reason: reason.trim().to_string(),
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AgentEvent::AgentEnrolled {
                client_id,
                site_id,
                identity,
                ..
            } => {
                self.lifecycle = AgentLifecycle::Active;
                self.client_id = Some(client_id);
                self.site_id = Some(site_id);
                self.display_name = identity.hostname;
            }
            AgentEvent::AgentRenamed { display_name } => self.display_name = display_name,
            AgentEvent::AgentMoved {
                to_client_id,
                to_site_id,
                ..
            } => {
                self.client_id = Some(to_client_id);
                self.site_id = Some(to_site_id);
            }
            AgentEvent::AgentDecommissioned { .. } => {
                self.lifecycle = AgentLifecycle::Decommissioned;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type Given = TestFramework<Agent>;
    const AGENT: AgentId = AgentId::from_uuid(Uuid::from_u128(100));
    const CLIENT: ClientId = ClientId::from_uuid(Uuid::from_u128(1));
    const SITE: SiteId = SiteId::from_uuid(Uuid::from_u128(2));
    const OTHER_CLIENT: ClientId = ClientId::from_uuid(Uuid::from_u128(3));
    const OTHER_SITE: SiteId = SiteId::from_uuid(Uuid::from_u128(4));
    const TOKEN: EnrollmentTokenId = EnrollmentTokenId::from_uuid(Uuid::from_u128(5));

    fn identity(hostname: &str) -> AgentIdentity {
        AgentIdentity {
            hostname: hostname.into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
        }
    }

    fn enroll(hostname: &str) -> AgentCommand {
        AgentCommand::EnrollAgent {
            agent_id: AGENT,
            client_id: CLIENT,
            site_id: SITE,
            enrollment_token_id: TOKEN,
            credential_hash: SecretHash::from_bytes([9; 32]),
            identity: identity(hostname),
        }
    }

    fn enrolled() -> AgentEvent {
        AgentEvent::AgentEnrolled {
            agent_id: AGENT,
            client_id: CLIENT,
            site_id: SITE,
            enrollment_token_id: TOKEN,
            credential_hash: SecretHash::from_bytes([9; 32]),
            identity: identity("web-01"),
        }
    }

    fn decommissioned() -> AgentEvent {
        AgentEvent::AgentDecommissioned {
            reason: "replaced".into(),
        }
    }

    #[test]
    fn enrolling_records_the_identity_with_a_trimmed_hostname() {
        Given::with(())
            .given_no_previous_events()
            .when(enroll(" web-01 "))
            .then_expect_events(vec![enrolled()]);
    }

    #[test]
    fn an_agent_enrolls_once_and_needs_a_hostname() {
        Given::with(())
            .given(vec![enrolled()])
            .when(enroll("web-01"))
            .then_expect_error(AgentError::AlreadyEnrolled);
        Given::with(())
            .given_no_previous_events()
            .when(enroll("  "))
            .then_expect_error(AgentError::InvalidHostname);
    }

    #[test]
    fn moving_records_both_ends() {
        Given::with(())
            .given(vec![enrolled()])
            .when(AgentCommand::MoveAgent {
                to_client_id: OTHER_CLIENT,
                to_site_id: OTHER_SITE,
            })
            .then_expect_events(vec![AgentEvent::AgentMoved {
                from_client_id: CLIENT,
                from_site_id: SITE,
                to_client_id: OTHER_CLIENT,
                to_site_id: OTHER_SITE,
            }]);
        Given::with(())
            .given(vec![enrolled()])
            .when(AgentCommand::MoveAgent {
                to_client_id: CLIENT,
                to_site_id: SITE,
            })
            .then_expect_error(AgentError::AlreadyInSite(SITE));
    }

    #[test]
    fn renaming_validates_and_refuses_no_ops() {
        Given::with(())
            .given(vec![enrolled()])
            .when(AgentCommand::RenameAgent {
                display_name: "Reception PC".into(),
            })
            .then_expect_events(vec![AgentEvent::AgentRenamed {
                display_name: "Reception PC".into(),
            }]);
        Given::with(())
            .given(vec![enrolled()])
            .when(AgentCommand::RenameAgent {
                display_name: "web-01".into(),
            })
            .then_expect_error(AgentError::Unchanged("web-01".into()));
        Given::with(())
            .given(vec![enrolled()])
            .when(AgentCommand::RenameAgent {
                display_name: "".into(),
            })
            .then_expect_error(AgentError::InvalidName(NameError::Empty));
    }

    #[test]
    fn a_decommissioned_agent_cannot_change() {
        Given::with(())
            .given(vec![enrolled()])
            .when(AgentCommand::DecommissionAgent {
                reason: " replaced ".into(),
            })
            .then_expect_events(vec![decommissioned()]);
        for command in [
            AgentCommand::RenameAgent {
                display_name: "x".into(),
            },
            AgentCommand::MoveAgent {
                to_client_id: OTHER_CLIENT,
                to_site_id: OTHER_SITE,
            },
            AgentCommand::DecommissionAgent { reason: "".into() },
        ] {
            Given::with(())
                .given(vec![enrolled(), decommissioned()])
                .when(command)
                .then_expect_error(AgentError::Decommissioned);
        }
    }

    #[test]
    fn commands_on_an_unknown_agent_are_not_found() {
        Given::with(())
            .given_no_previous_events()
            .when(AgentCommand::DecommissionAgent { reason: "".into() })
            .then_expect_error(AgentError::NotFound);
    }
}
