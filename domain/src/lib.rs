//! Logbook's domain: the tenancy tree (clients, sites, agents), enrollment, check-ins, jobs and
//! API tokens, as cqrs-es aggregates, commands and events.
//!
//! This crate holds business rules only. It never touches a database, the network, the clock or
//! the environment: the current time and every outside fact (a site's client, a secret's hash)
//! arrive inside commands. Persisted names (`Aggregate::TYPE`, `event_type()`,
//! `event_version()`) are schema: they are never renamed, and payload changes go through
//! [`event_log::LogbookEvent::decode`].

pub mod agent;
pub mod api_token;
pub mod bulk_job;
pub mod checkin;
pub mod client;
pub mod enrollment;
pub mod event_log;
pub mod ids;
pub mod job;
pub mod metadata;
pub mod naming;
pub mod secret;
pub mod site;

pub use cqrs_es;
