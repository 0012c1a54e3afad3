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

/// Runs `cleanup` to its end from a `Drop` (a test's database, the streams its gateway made):
/// on a short-lived thread with a runtime of its own, since a drop may run inside the test's
/// runtime, which cannot be blocked on there. Returns when `cleanup` has finished.
pub fn block_on_aside<F>(cleanup: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(cleanup);
        }
    })
    .join();
}
