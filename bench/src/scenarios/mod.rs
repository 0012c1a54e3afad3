//! The benchmark scenarios.

pub(crate) mod checkin;
