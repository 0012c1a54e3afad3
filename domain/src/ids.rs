//! Identifier newtypes for everything that crosses a crate boundary.
//!
//! Ids are UUIDs chosen by the caller (the gateway uses time-ordered v7 UUIDs); the domain never
//! generates them, because generating one reads the clock or a random source.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A customer organisation: the top of the tenancy tree.
    ClientId
);
id_type!(
    /// A location or group of machines inside a client.
    SiteId
);
id_type!(
    /// One endpoint running `logbook-agent`.
    AgentId
);
id_type!(
    /// An enrollment token that lets agents join a site.
    EnrollmentTokenId
);
id_type!(
    /// An API token used by operators and integrations.
    ApiTokenId
);
id_type!(
    /// One check-in, chosen by the agent so that a retried check-in is recognised.
    CheckinId
);
id_type!(
    /// Ties together the events caused by one operator action or agent request.
    CorrelationId
);
id_type!(
    /// One job for one agent.
    JobId
);
id_type!(
    /// A job issued to many agents at once.
    BulkJobId
);
