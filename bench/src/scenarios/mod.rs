//! The benchmark scenarios.

pub(crate) mod checkin;
pub(crate) mod history;
pub(crate) mod jobs;
