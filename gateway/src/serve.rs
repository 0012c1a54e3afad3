//! `logbook serve`: the long-running gateway process.
//!
//! Start-up order matters for availability: the HTTP listener comes up first (so health checks
//! answer and say "starting"), then a start-up task waits for Postgres, migrates, issues the
//! bootstrap admin token if needed and starts the projections; only then do API requests get
//! through. Shutdown runs the other way: stop accepting, let requests in flight finish (up to the
//! grace period), flush the check-ins already accepted, stop the projections, close the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use logbook_projections::runner::LogWaker;
use logbook_proto::subjects::Names;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bootstrap::{self, AdminToken};
use crate::commands::Commands;
use crate::config::GatewayConfig;
use crate::http::{self, AgentNats, AppState, StateParts};
use crate::ingest::Ingest;
use crate::jobs::nats_auth::AgentIdentities;
use crate::jobs::transport::{Transport, TransportSettings};
use crate::notify::LogNotifier;
use crate::store::EventStore;
use crate::{db, hosting};

/// Raises this process's soft limit on open files to its hard limit, and returns the limit now
/// in force. Every agent that keeps its connection open holds a file; a shell's soft limit is
/// often 1,024 where the hard one allows far more (a gateway started by systemd has the
/// `LimitNOFILE` of `ops/systemd/logbook.service`).
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Runs the gateway until `shutdown` is cancelled. Binds `config.http.listen` unless a listener
/// is given (tests pass one bound to port 0).
pub async fn run(
    config: GatewayConfig,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match raise_open_files_limit() {
        Ok(limit) => tracing::info!(limit, "open files"),
        Err(e) => tracing::warn!(error = %e, "the open files limit could not be raised"),
    }
    let pool = db::pool(&config.database).context("database.url")?;
    let nats_options = match &config.nats.credentials_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("reading nats.credentials_file {}", path.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    let nats = nats_options
        .name("logbook-gateway")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(config.nats.url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats.url))?;
    let names = Names::new(&config.nats.namespace);
    let transport = Arc::new(Transport::new(
        nats.clone(),
        names.clone(),
        TransportSettings {
            job_max_age: config.jobs.max_deadline + Duration::from_secs(24 * 3600),
            ..TransportSettings::default()
        },
    ));
    let identities = match (
        &config.nats.account_public_key,
        &config.nats.account_signing_key_file,
    ) {
        (Some(account), Some(seed_file)) => Some(Arc::new(
            AgentIdentities::from_seed_file(
                account,
                seed_file,
                config.nats.agent_identity_lifetime,
                names.clone(),
            )
            .context("nats.account_signing_key_file")?,
        )),
        _ => None,
    };
    let (waker, local_wake) = LogWaker::spawn(pool.clone(), shutdown.clone());
    let notifier = LogNotifier::start(pool.clone(), local_wake, shutdown.clone());
    let commands = Commands::new(EventStore::new(pool.clone()), notifier.clone());
    let ingest_pool = db::ingest_pool(&config.database, config.ingest.concurrent_flushes)
        .context("database.url")?;
    let (ingest, ingest_done) = Ingest::start(ingest_pool.clone(), config.ingest.clone(), notifier);
    let started = Arc::new(AtomicBool::new(false));
    let state = AppState::new(StateParts {
        pool: pool.clone(),
        commands: commands.clone(),
        ingest,
        thresholds: config.agents.thresholds(),
        nats: Some(nats.clone()),
        max_body_bytes: config.http.max_body_bytes,
        request_timeout: config.http.request_timeout,
        started: started.clone(),
        jobs: config.jobs.clone(),
        agent_nats: AgentNats {
            url: config
                .nats
                .agent_url
                .clone()
                .unwrap_or_else(|| config.nats.url.clone()),
            namespace: config.nats.namespace.clone(),
            identities,
            transport: Some(transport.clone()),
        },
    });

    let listener = match listener {
        Some(listener) => listener,
        None => listen(config.http.listen, config.http.listen_backlog)
            .with_context(|| format!("listening on {}", config.http.listen))?,
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, "Logbook API listening on http://{address}");

    let server = http::server::serve(
        listener,
        http::router(state),
        config.http.idle_timeout,
        shutdown.clone(),
    );
    tokio::pin!(server);
    let startup = start_up(&pool, &commands, &config, &shutdown);
    tokio::pin!(startup);

    let mut tasks = JoinSet::new();
    let mut failure = None;
    let mut starting = true;
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.http.shutdown_grace).await;
    };
    tokio::pin!(grace);
    loop {
        tokio::select! {
            () = &mut server => break,
            result = &mut startup, if starting => {
                starting = false;
                match result {
                    Ok(()) => {
                        if config.projections.enabled {
                            hosting::spawn(&pool, waker.clone(), &config.projections, &shutdown, &mut tasks);
                        }
                        hosting::spawn_jobs(
                            hosting::JobHost {
                                pool: pool.clone(),
                                commands: commands.clone(),
                                transport: transport.clone(),
                                waker: waker.clone(),
                                config: config.jobs.clone(),
                                poll_interval: config.projections.poll_interval,
                            },
                            &shutdown,
                            &mut tasks,
                        );
                        started.store(true, Ordering::Release);
                        tracing::info!("Logbook is ready");
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "start-up failed; shutting down");
                        failure = Some(e);
                        shutdown.cancel();
                    }
                }
            }
            () = &mut grace => {
                tracing::warn!("requests still in flight after the shutdown grace period; closing them");
                break;
            }
        }
    }

    // The router (and with it the last ingest handle) is gone: the collector flushes what it
    // accepted and stops.
    let _ = tokio::time::timeout(Duration::from_secs(10), ingest_done).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    nats.flush().await.ok();
    ingest_pool.close().await;
    pool.close().await;
    tracing::info!("Logbook stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits for Postgres, migrates, and makes sure an admin token exists.
async fn start_up(
    pool: &PgPool,
    commands: &Commands,
    config: &GatewayConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match sqlx::query("SELECT 1").execute(pool).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "waiting for Postgres");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shut down while waiting for Postgres"),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    if config.database.migrate_on_start {
        db::migrate(pool)
            .await
            .context("applying database migrations")?;
    }
    match bootstrap::ensure_admin_token(commands, &config.admin.token_file).await? {
        AdminToken::Created(path) => {
            tracing::info!(path = %path.display(), "created the bootstrap admin API token; it is stored in {}", path.display());
        }
        AdminToken::AlreadyExists => {
            tracing::debug!("API tokens exist; no bootstrap token needed");
        }
    }
    Ok(())
}

/// Listens on `address` with a queue of `backlog` connections not yet accepted (tokio's own
/// `bind` queues 128).
fn listen(address: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::listen;

    /// Opens `n` connections at once to a listener that accepts none, and counts those the
    /// kernel completed within `wait`.
    async fn queued(backlog: u32, n: usize, wait: Duration) -> usize {
        let listener = listen(([127, 0, 0, 1], 0).into(), backlog).expect("listen");
        let address = listener.local_addr().expect("address");
        let connects =
            (0..n).map(|_| tokio::time::timeout(wait, tokio::net::TcpStream::connect(address)));
        let streams = futures::future::join_all(connects).await;
        drop(listener);
        streams.iter().filter(|s| matches!(s, Ok(Ok(_)))).count()
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        // A soft limit below the hard one, as a login shell's 1,024 usually is; one below, so
        // that tests sharing this process (under `cargo test`) keep nearly all of it.
        let (_, hard) = rlimit::Resource::NOFILE.get().expect("read the limit");
        let low = hard - 1;
        rlimit::Resource::NOFILE
            .set(low, hard)
            .expect("lower the soft limit");
        assert_eq!(super::raise_open_files_limit().expect("raise"), hard);
        assert_eq!(
            rlimit::Resource::NOFILE.get().expect("read the limit"),
            (hard, hard)
        );
    }

    #[tokio::test]
    async fn a_fleet_reconnecting_at_once_is_queued_not_dropped() {
        // 600 at once: with tokio's own queue of 128 most of them would wait for a
        // retransmission (a second) instead; the kernel's cap here is net.core.somaxconn.
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let n = 600.min(somaxconn);
        assert_eq!(queued(4096, n, Duration::from_millis(800)).await, n);
        // And the setting is what decides: a queue of 16 does not hold them.
        assert!(queued(16, n, Duration::from_millis(800)).await < n);
    }
}
