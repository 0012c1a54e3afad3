//! The metadata every event carries: who caused it, which request and which larger action it
//! belongs to, and the server time at which it was recorded.
//!
//! cqrs-es stores metadata as a string map; [`EventMetadata`] is the typed view of that map and
//! the only place that knows its keys.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::ids::{AgentId, ApiTokenId, CorrelationId};

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An operator or integration authenticated with an API token.
    ApiToken(ApiTokenId),
    /// An agent authenticated with its credential.
    Agent(AgentId),
    /// The server itself (bootstrap, schedules, expiry), named by the component that acted.
    System(String),
    /// Someone holding an enrollment token, before an agent identity exists.
    Enrollment,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::ApiToken(id) => write!(f, "api_token:{id}"),
            Actor::Agent(id) => write!(f, "agent:{id}"),
            Actor::System(name) => write!(f, "system:{name}"),
            Actor::Enrollment => f.write_str("enrollment"),
        }
    }
}

/// A metadata value that could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event metadata `{key}` is missing or malformed: {value:?}")]
pub struct MetadataError {
    /// The metadata key.
    pub key: &'static str,
    /// What was stored, if anything.
    pub value: Option<String>,
}

impl FromStr for Actor {
    type Err = MetadataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MetadataError {
            key: ACTOR,
            value: Some(s.to_string()),
        };
        if s == "enrollment" {
            return Ok(Actor::Enrollment);
        }
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "api_token" => rest.parse().map(Actor::ApiToken).map_err(|_| bad()),
            "agent" => rest.parse().map(Actor::Agent).map_err(|_| bad()),
            "system" if !rest.is_empty() => Ok(Actor::System(rest.to_string())),
            _ => Err(bad()),
        }
    }
}

const ACTOR: &str = "actor";
const CORRELATION_ID: &str = "correlation_id";
const REQUEST_ID: &str = "request_id";
const RECORDED_AT: &str = "recorded_at";

/// The typed form of an event's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    /// Who caused the event.
    pub actor: Actor,
    /// The larger action this event is part of (one bulk job, one enrollment).
    pub correlation_id: CorrelationId,
    /// The request that carried the command (the `x-request-id` of an HTTP call).
    pub request_id: String,
    /// The server's time when the event was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl EventMetadata {
    /// The string map cqrs-es persists.
    pub fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            (ACTOR.to_string(), self.actor.to_string()),
            (CORRELATION_ID.to_string(), self.correlation_id.to_string()),
            (REQUEST_ID.to_string(), self.request_id.clone()),
            (RECORDED_AT.to_string(), self.recorded_at_text()),
        ])
    }

    /// How `recorded_at` is written: RFC 3339, UTC, microseconds.
    fn recorded_at_text(&self) -> String {
        self.recorded_at
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// The same map as a JSON object, written directly rather than through a map of eight
    /// strings: what the check-in ingest stores with every check-in.
    pub fn to_json(&self) -> String {
        /// Serializes a value as its `Display` form.
        struct Shown<T>(T);
        impl<T: fmt::Display> serde::Serialize for Shown<T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }
        struct Map<'a>(&'a EventMetadata);
        impl serde::Serialize for Map<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let meta = self.0;
                let mut map = s.serialize_map(Some(4))?;
                map.serialize_entry(ACTOR, &Shown(&meta.actor))?;
                map.serialize_entry(CORRELATION_ID, &Shown(&meta.correlation_id))?;
                map.serialize_entry(REQUEST_ID, &meta.request_id)?;
                map.serialize_entry(RECORDED_AT, &meta.recorded_at_text())?;
                map.end()
            }
        }
        // Writing strings into a `Vec` cannot fail.
        serde_json::to_string(&Map(self)).unwrap_or_default()
    }

    /// Reads the map back.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, MetadataError> {
        let get = |key: &'static str| map.get(key).ok_or(MetadataError { key, value: None });
        let bad = |key: &'static str, v: &str| MetadataError {
            key,
            value: Some(v.to_string()),
        };
        let actor = get(ACTOR)?.parse()?;
        let correlation = get(CORRELATION_ID)?;
        let correlation_id = Uuid::parse_str(correlation)
            .map(CorrelationId::from)
            .map_err(|_| bad(CORRELATION_ID, correlation))?;
        let recorded = get(RECORDED_AT)?;
        let recorded_at = DateTime::parse_from_rfc3339(recorded)
            .map_err(|_| bad(RECORDED_AT, recorded))?
            .with_timezone(&Utc);
        Ok(Self {
            actor,
            correlation_id,
            request_id: get(REQUEST_ID)?.clone(),
            recorded_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_the_string_map() {
        let meta = EventMetadata {
            actor: Actor::Agent(AgentId::from(Uuid::from_u128(7))),
            correlation_id: CorrelationId::from(Uuid::from_u128(9)),
            request_id: "req-1".into(),
            recorded_at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
                .expect("valid")
                .with_timezone(&Utc),
        };
        assert_eq!(EventMetadata::from_map(&meta.to_map()), Ok(meta));
    }

    #[test]
    fn the_json_form_is_the_string_map() {
        for actor in [
            Actor::Agent(AgentId::from(Uuid::from_u128(7))),
            Actor::System("a \"quoted\" name".into()),
        ] {
            for recorded_at in ["2026-01-02T03:04:05.123456Z", "2026-01-02T03:04:05Z"] {
                let meta = EventMetadata {
                    actor: actor.clone(),
                    correlation_id: CorrelationId::from(Uuid::from_u128(9)),
                    request_id: "req-\u{1}-1".into(),
                    recorded_at: DateTime::parse_from_rfc3339(recorded_at)
                        .expect("valid")
                        .with_timezone(&Utc),
                };
                let map: HashMap<String, String> =
                    serde_json::from_str(&meta.to_json()).expect("a JSON object of strings");
                assert_eq!(map, meta.to_map());
            }
        }
    }

    #[test]
    fn every_actor_kind_round_trips() {
        for actor in [
            Actor::ApiToken(ApiTokenId::from(Uuid::from_u128(1))),
            Actor::Agent(AgentId::from(Uuid::from_u128(2))),
            Actor::System("bootstrap".into()),
            Actor::Enrollment,
        ] {
            assert_eq!(actor.to_string().parse::<Actor>(), Ok(actor));
        }
        assert!("nobody:x".parse::<Actor>().is_err());
        assert!("agent:not-a-uuid".parse::<Actor>().is_err());
    }

    #[test]
    fn missing_keys_are_named() {
        let err = EventMetadata::from_map(&HashMap::new()).expect_err("empty map");
        assert_eq!(err.key, "actor");
    }
}
