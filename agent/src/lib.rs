//! `logbook-agent`: runs on each managed endpoint, enrolls with the gateway once, then checks in
//! with what it sees on the machine (keeping every check-in it could not deliver until it can)
//! and runs the jobs queued for it, each at most once.
//!
//! This crate knows the wire protocol (`logbook_proto`) and the operating system; it never
//! depends on the server's crates, so what ships to endpoints stays small.

pub mod client;
pub mod collector;
pub mod config;
pub mod enroll;
pub mod jobs;
pub mod run;
pub mod state;
