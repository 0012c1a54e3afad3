//! Harnesses that let tests run against the real things: a Postgres database of their own, a
//! nats-server of their own, and the built `logbook` and `logbook-agent` binaries.
//!
//! A missing service is a failing test with a hint on how to install or start it, never a
//! skipped one. This crate is a dev-dependency only; nothing that ships depends on it.

pub mod binaries;
pub mod nats;
pub mod postgres;
pub mod proxy;

pub use postgres::TestDb;
