//! The `Site` aggregate: a location or group of machines that belongs to one client.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, SiteId};
use crate::naming::{NameError, normalise_name};

/// Commands on a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteCommand {
    /// Creates the site under an existing client. The gateway checks that the client exists
    /// before sending this command, because the domain does no lookups of its own.
    CreateSite {
        /// The id chosen for the site.
        site_id: SiteId,
        /// The client it belongs to.
        client_id: ClientId,
        /// Its display name.
        name: String,
    },
    /// Gives the site a new name.
    RenameSite {
        /// The new name.
        name: String,
    },
}

/// Events of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteEvent {
    /// The site was created.
    SiteCreated {
        /// Its id.
        site_id: SiteId,
        /// Its client.
        client_id: ClientId,
        /// Its name.
        name: String,
    },
    /// The site was renamed.
    SiteRenamed {
        /// The new name.
        name: String,
    },
}

impl DomainEvent for SiteEvent {
    fn event_type(&self) -> String {
        match self {
            SiteEvent::SiteCreated { .. } => "SiteCreated",
            SiteEvent::SiteRenamed { .. } => "SiteRenamed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Why a site command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// The site already exists.
    #[error("site already exists")]
    AlreadyExists,
    /// The site does not exist.
    #[error("site not found")]
    NotFound,
    /// The name breaks the naming rules.
    #[error("name {0}")]
    InvalidName(#[from] NameError),
    /// The new name equals the current one.
    #[error("site is already called {0:?}")]
    Unchanged(String),
}

/// The state needed to decide site commands.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Site {
    id: Option<SiteId>,
    client_id: Option<ClientId>,
    name: String,
}

impl Site {
    /// The client the site belongs to, once created.
    pub fn client_id(&self) -> Option<ClientId> {
        self.client_id
    }

    /// Whether the site has been created.
    pub fn exists(&self) -> bool {
        self.id.is_some()
    }

    /// The site's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Aggregate for Site {
    const TYPE: &'static str = "site";
    type Command = SiteCommand;
    type Event = SiteEvent;
    type Error = SiteError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            SiteCommand::CreateSite {
                site_id,
                client_id,
                name,
            } => {
                if self.exists() {
                    return Err(SiteError::AlreadyExists);
                }
                SiteEvent::SiteCreated {
                    site_id,
                    client_id,
                    name: normalise_name(&name)?,
                }
            }
            SiteCommand::RenameSite { name } => {
                if !self.exists() {
                    return Err(SiteError::NotFound);
                }
                let name = normalise_name(&name)?;
                if name == self.name {
                    return Err(SiteError::Unchanged(name));
                }
                SiteEvent::SiteRenamed { name }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SiteEvent::SiteCreated {
                site_id,
                client_id,
                name,
            } => {
                self.id = Some(site_id);
                self.client_id = Some(client_id);
                self.name = name;
            }
            SiteEvent::SiteRenamed { name } => self.name = name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type Given = TestFramework<Site>;
    const SITE: SiteId = SiteId::from_uuid(Uuid::from_u128(10));
    const CLIENT: ClientId = ClientId::from_uuid(Uuid::from_u128(1));

    fn created() -> SiteEvent {
        SiteEvent::SiteCreated {
            site_id: SITE,
            client_id: CLIENT,
            name: "HQ".into(),
        }
    }

    #[test]
    fn a_site_is_created_once() {
        let create = SiteCommand::CreateSite {
            site_id: SITE,
            client_id: CLIENT,
            name: "HQ".into(),
        };
        Given::with(())
            .given_no_previous_events()
            .when(create.clone())
            .then_expect_events(vec![created()]);
        Given::with(())
            .given(vec![created()])
            .when(create)
            .then_expect_error(SiteError::AlreadyExists);
    }

    #[test]
    fn a_site_can_be_renamed() {
        Given::with(())
            .given(vec![created()])
            .when(SiteCommand::RenameSite {
                name: "Branch".into(),
            })
            .then_expect_events(vec![SiteEvent::SiteRenamed {
                name: "Branch".into(),
            }]);
        Given::with(())
            .given_no_previous_events()
            .when(SiteCommand::RenameSite {
                name: "Branch".into(),
            })
            .then_expect_error(SiteError::NotFound);
    }
}
