//! The Logbook gateway: the composition root that wires Postgres, the event store, the
//! projections, NATS and the HTTP API into the `logbook` binary.
//!
//! - [`serve::run`] is the server; `main.rs` only parses flags, loads [`config::GatewayConfig`],
//!   installs logging and calls it (tests call it too).
//! - [`commands`] carries out every operator and agent action; [`ingest`] records check-ins in
//!   batches; [`jobs`] delivers jobs through NATS JetStream; [`store`] appends to the event log;
//!   [`http`] is the API.
//! - [`cli`] holds the other subcommands (`migrate`, `projections`, `admin`).

pub mod bootstrap;
pub mod cli;
pub mod commands;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod db;
pub mod hosting;
pub mod http;
pub mod ingest;
pub mod jobs;
pub mod notify;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod telemetry;
