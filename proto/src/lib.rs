//! The messages agents and the gateway exchange, generated from `proto/**/*.proto` by prost.
//!
//! This crate knows the wire format only. Conversions to domain types live in the gateway
//! (`convert` module) and to OS facts in the agent, never here. The generated code is checked
//! in (`src/gen`); `tests/bootstrap.rs` regenerates it and fails on any difference.

/// `logbook.agent.v1`: enrollment and check-in.
pub mod agent {
    /// Version 1 of the agent protocol.
    pub mod v1 {
        include!("gen/logbook.agent.v1.rs");
    }
}

pub mod subjects;

/// The media type of protobuf bodies.
pub const PROTOBUF_MEDIA_TYPE: &str = "application/x-protobuf";

pub use prost::Message;
