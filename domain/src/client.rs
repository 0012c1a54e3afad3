//! The `Client` aggregate: a customer organisation, the top of the tenancy tree.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::ClientId;
use crate::naming::{NameError, normalise_name};

/// Commands on a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// Creates the client.
    CreateClient {
        /// The id chosen for it.
        client_id: ClientId,
        /// Its display name.
        name: String,
    },
    /// Gives it a new name.
    RenameClient {
        /// The new name.
        name: String,
    },
}

/// Events of a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientEvent {
    /// The client was created.
    ClientCreated {
        /// Its id.
        client_id: ClientId,
        /// Its name.
        name: String,
    },
    /// The client was renamed.
    ClientRenamed {
        /// The new name.
        name: String,
    },
}

impl DomainEvent for ClientEvent {
    fn event_type(&self) -> String {
        match self {
            ClientEvent::ClientCreated { .. } => "ClientCreated",
            ClientEvent::ClientRenamed { .. } => "ClientRenamed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Why a client command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The client already exists.
    #[error("client already exists")]
    AlreadyExists,
    /// The client does not exist.
    #[error("client not found")]
    NotFound,
    /// The name breaks the naming rules.
    #[error("name {0}")]
    InvalidName(#[from] NameError),
    /// The new name equals the current one.
    #[error("client is already called {0:?}")]
    Unchanged(String),
}

/// The state needed to decide client commands.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Client {
    id: Option<ClientId>,
    name: String,
}

impl Client {
    /// The client's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the client has been created.
    pub fn exists(&self) -> bool {
        self.id.is_some()
    }
}

impl Aggregate for Client {
    const TYPE: &'static str = "client";
    type Command = ClientCommand;
    type Event = ClientEvent;
    type Error = ClientError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            ClientCommand::CreateClient { client_id, name } => {
                if self.exists() {
                    return Err(ClientError::AlreadyExists);
                }
                ClientEvent::ClientCreated {
                    client_id,
                    name: normalise_name(&name)?,
                }
            }
            ClientCommand::RenameClient { name } => {
                if !self.exists() {
                    return Err(ClientError::NotFound);
                }
                let name = normalise_name(&name)?;
                if name == self.name {
                    return Err(ClientError::Unchanged(name));
                }
                ClientEvent::ClientRenamed { name }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ClientEvent::ClientCreated { client_id, name } => {
                self.id = Some(client_id);
                self.name = name;
            }
            ClientEvent::ClientRenamed { name } => self.name = name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type Given = TestFramework<Client>;
    const ID: ClientId = ClientId::from_uuid(Uuid::from_u128(1));

    fn created() -> ClientEvent {
        ClientEvent::ClientCreated {
            client_id: ID,
            name: "Acme".into(),
        }
    }

    #[test]
    fn creating_a_client_trims_its_name() {
        Given::with(())
            .given_no_previous_events()
            .when(ClientCommand::CreateClient {
                client_id: ID,
                name: " Acme ".into(),
            })
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn a_client_cannot_be_created_twice() {
        Given::with(())
            .given(vec![created()])
            .when(ClientCommand::CreateClient {
                client_id: ID,
                name: "Other".into(),
            })
            .then_expect_error(ClientError::AlreadyExists);
    }

    #[test]
    fn an_empty_name_is_refused() {
        Given::with(())
            .given_no_previous_events()
            .when(ClientCommand::CreateClient {
                client_id: ID,
                name: "  ".into(),
            })
            .then_expect_error(ClientError::InvalidName(NameError::Empty));
    }

    #[test]
    fn renaming_needs_an_existing_client_and_a_new_name() {
        Given::with(())
            .given_no_previous_events()
            .when(ClientCommand::RenameClient { name: "B".into() })
            .then_expect_error(ClientError::NotFound);
        Given::with(())
            .given(vec![created()])
            .when(ClientCommand::RenameClient {
                name: "Acme".into(),
            })
            .then_expect_error(ClientError::Unchanged("Acme".into()));
        Given::with(())
            .given(vec![created()])
            .when(ClientCommand::RenameClient {
                name: "Acme Ltd".into(),
            })
            .then_expect_events(vec![ClientEvent::ClientRenamed {
                name: "Acme Ltd".into(),
            }]);
    }
}
