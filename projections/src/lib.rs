//! Read models built from the event log, and the machinery that keeps them up to date.
//!
//! - [`log`] reads the global log in order without ever skipping an event that commits late.
//! - [`runner`] tails the log for one projection: one leader per projection across processes,
//!   woken by `NOTIFY`, with its checkpoint stored in the same transaction as its read model.
//! - [`rebuild`] recreates a projection's tables from zero beside the live ones and swaps them in
//!   once caught up.
//! - [`fleet`] (clients, sites, the agent list), [`timeline`] (per-agent history) and [`jobs`]
//!   (jobs and bulk jobs) are the projections, each with the queries that read them.
//!
//! This crate never appends events and knows nothing of HTTP, gRPC or NATS.

pub mod fleet;
pub mod jobs;
pub mod log;
pub mod rebuild;
pub mod runner;
pub mod timeline;

pub use log::{LogCursor, StoredEvent};
pub use runner::{Projection, RunnerConfig};

/// The projections this build has, by name.
pub const PROJECTION_NAMES: &[&str] = &[
    fleet::FleetProjection::NAME,
    timeline::TimelineProjection::NAME,
    jobs::JobsProjection::NAME,
];

/// What the projection named `name` reads of the log; `None` for a name this build does not have.
pub fn reads_of(name: &str) -> Option<log::ReadFilter<'static>> {
    match name {
        fleet::FleetProjection::NAME => Some(fleet::FleetProjection.reads()),
        timeline::TimelineProjection::NAME => Some(timeline::TimelineProjection.reads()),
        jobs::JobsProjection::NAME => Some(jobs::JobsProjection.reads()),
        _ => None,
    }
}
