//! Reading any stored event back into its typed form.
//!
//! The log holds events of several aggregate types in one table. Readers (projections, the audit
//! API) see rows of `(aggregate_type, event_type, event_version, payload)`; [`LogbookEvent::decode`]
//! turns one into a typed event. It is also where upcasting lives: when an event's payload
//! changes shape, its `event_version` is bumped and the old version is converted here, so stored
//! events never need rewriting.

use cqrs_es::Aggregate;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::{Agent, AgentEvent};
use crate::api_token::{ApiToken, ApiTokenEvent};
use crate::bulk_job::{BulkJob, BulkJobEvent};
use crate::checkin::{CHECKIN_STREAM, CheckinEvent};
use crate::client::{Client, ClientEvent};
use crate::enrollment::{EnrollmentToken, EnrollmentTokenEvent};
use crate::job::{Job, JobEvent};
use crate::site::{Site, SiteEvent};

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
    /// A job's event.
    Job(JobEvent),
    /// A bulk job's event.
    BulkJob(BulkJobEvent),
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

/// A payload in either of the forms readers hold.
enum Payload<'a> {
    Value(Value),
    Text(&'a str),
}

impl Payload<'_> {
    fn parse<E: DeserializeOwned>(self, aggregate_type: &str) -> Result<E, DecodeError> {
        match self {
            Payload::Value(v) => serde_json::from_value(v),
            Payload::Text(t) => serde_json::from_str(t),
        }
        .map_err(|source| DecodeError::Payload {
            aggregate_type: aggregate_type.to_string(),
            source,
        })
    }
}

impl LogbookEvent {
    /// Decodes one stored event from its JSON payload.
    pub fn decode(
        aggregate_type: &str,
        event_version: &str,
        payload: Value,
    ) -> Result<Self, DecodeError> {
        Self::decode_payload(aggregate_type, event_version, Payload::Value(payload))
    }

    /// Decodes one stored event from its JSON payload as text (faster than going through a
    /// [`Value`] when reading many events).
    pub fn decode_str(
        aggregate_type: &str,
        event_version: &str,
        payload: &str,
    ) -> Result<Self, DecodeError> {
        Self::decode_payload(aggregate_type, event_version, Payload::Text(payload))
    }

    fn decode_payload(
        aggregate_type: &str,
        event_version: &str,
        payload: Payload<'_>,
    ) -> Result<Self, DecodeError> {
        // Every event type is at version 1; a later version adds its upcaster here.
        if event_version != "1" {
            return Err(DecodeError::UnknownVersion {
                aggregate_type: aggregate_type.to_string(),
                version: event_version.to_string(),
            });
        }
        let t = aggregate_type;
        Ok(match t {
            Client::TYPE => Self::Client(payload.parse(t)?),
            Site::TYPE => Self::Site(payload.parse(t)?),
            EnrollmentToken::TYPE => Self::EnrollmentToken(payload.parse(t)?),
            Agent::TYPE => Self::Agent(payload.parse(t)?),
            CHECKIN_STREAM => Self::Checkin(payload.parse(t)?),
            ApiToken::TYPE => Self::ApiToken(payload.parse(t)?),
            Job::TYPE => Self::Job(payload.parse(t)?),
            BulkJob::TYPE => Self::BulkJob(payload.parse(t)?),
            other => return Err(DecodeError::UnknownAggregateType(other.to_string())),
        })
    }
}
