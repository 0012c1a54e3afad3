//! Serving the router: HTTP/1.1 over TCP, one task per connection, with graceful shutdown.
//!
//! Agents keep their connection open between check-ins (as long as `http.idle_timeout` allows),
//! so a fleet of 10,000 can hold 10,000 idle connections, and what one costs decides the
//! gateway's memory. `axum::serve` detects HTTP/2 on every connection (the API is HTTP/1.1 only)
//! and cost about 31 KiB per idle connection in a bare router; hyper's HTTP/1.1 connection alone
//! about 19 KiB.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `shutdown`; then stops accepting, closes idle
/// connections and waits for requests in flight to be answered.
///
/// A connection waits at most `idle_timeout` for the next request's headers: hyper starts that
/// clock when it begins waiting, so it closes a kept-open connection idle that long as well as
/// a client that sends its headers too slowly (`http.idle_timeout`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new());
    http.header_read_timeout(idle_timeout);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for connections to close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
