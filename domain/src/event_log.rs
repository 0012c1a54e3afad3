//! Reading any stored event back into its typed form.
//!
//! The log holds events of several aggregate types in one table. Readers (projections, the audit
//! API) see rows of `(aggregate_type, event_type, event_version, payload)`; [`LogbookEvent::decode`]
//! turns one into a typed event. It is also where upcasting lives: when an event's payload
//! changes shape, its `event_version` is bumped and the old version is converted here, so stored
//! events never need rewriting.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::AgentEvent;
use crate::api_token::ApiTokenEvent;
use crate::checkin::{CHECKIN_STREAM, CheckinEvent};
use crate::client::ClientEvent;
use crate::enrollment::EnrollmentTokenEvent;
use crate::site::SiteEvent;
use cqrs_es::Aggregate;

/// Any event Logbook stores.
#[derive(Debug, Clone, PartialEq)]
pub enum LogbookEvent {
    /// A client's event.
    Client(ClientEvent),
    /// A site's event.
    Site(SiteEvent),
    /// An enrollment token's event.
    EnrollmentToken(EnrollmentTokenEvent),
    /// An agent lifecycle event.
    Agent(AgentEvent),
    /// A check-in.
    Checkin(CheckinEvent),
    /// An API token's event.
    ApiToken(ApiTokenEvent),
}

/// Why a stored event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The aggregate type is not one this build knows (written by a newer version).
    #[error("unknown aggregate type {0:?}")]
    UnknownAggregateType(String),
    /// The event version is not one this build knows.
    #[error("unknown version {version:?} of {aggregate_type} event")]
    UnknownVersion {
        /// The aggregate type.
        aggregate_type: String,
        /// The version found.
        version: String,
    },
    /// The payload does not match the event's schema.
    #[error("malformed {aggregate_type} event payload")]
    Payload {
        /// The aggregate type.
        aggregate_type: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

impl LogbookEvent {
    /// Decodes one stored event.
    pub fn decode(
        aggregate_type: &str,
        event_version: &str,
        payload: Value,
    ) -> Result<Self, DecodeError> {
        // Every event type is at version 1; a later version adds its upcaster here.
        if event_version != "1" {
            return Err(DecodeError::UnknownVersion {
                aggregate_type: aggregate_type.to_string(),
                version: event_version.to_string(),
            });
        }
        fn parse<E: DeserializeOwned>(
            aggregate_type: &str,
            payload: Value,
        ) -> Result<E, DecodeError> {
            serde_json::from_value(payload).map_err(|source| DecodeError::Payload {
                aggregate_type: aggregate_type.to_string(),
                source,
            })
        }
        Ok(match aggregate_type {
            t if t == crate::client::Client::TYPE => Self::Client(parse(t, payload)?),
            t if t == crate::site::Site::TYPE => Self::Site(parse(t, payload)?),
            t if t == crate::enrollment::EnrollmentToken::TYPE => {
                Self::EnrollmentToken(parse(t, payload)?)
            }
            t if t == crate::agent::Agent::TYPE => Self::Agent(parse(t, payload)?),
            t if t == CHECKIN_STREAM => Self::Checkin(parse(t, payload)?),
            t if t == crate::api_token::ApiToken::TYPE => Self::ApiToken(parse(t, payload)?),
            other => return Err(DecodeError::UnknownAggregateType(other.to_string())),
        })
    }
}
