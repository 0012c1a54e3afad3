//! `logbook`: parses the command line, loads the configuration, installs logging, and runs the
//! subcommand (see `logbook_gateway::cli`).

use std::process::ExitCode;

use clap::Parser;
use logbook_config::Sources;
use logbook_gateway::cli::{self, Cli};
use logbook_gateway::config::{ENV_IGNORE, ENV_PREFIX, GatewayConfig};
use logbook_gateway::telemetry;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources::new(
        cli.config.as_deref(),
        cli.config.is_some(),
        ENV_PREFIX,
        ENV_IGNORE,
    );
    let config = match GatewayConfig::load(&sources) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("logbook: {e}");
            return ExitCode::from(64);
        }
    };
    telemetry::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("logbook: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        cli::execute(cli.command, config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logbook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
