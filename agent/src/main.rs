//! `logbook-agent`: parses the command line, loads the configuration, installs logging, and
//! runs the subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use logbook_agent::config::{AgentConfig, ENV_PREFIX};
use logbook_agent::{collector, enroll, run};
use logbook_config::Sources;
use tokio_util::sync::CancellationToken;

/// The Logbook agent: reports this machine's facts to a Logbook server.
///
/// Enroll once with a token from an operator, then run it (usually as a service). Check-ins
/// that cannot be delivered are kept in the state directory and sent when the server is back.
#[derive(Debug, Parser)]
#[command(name = "logbook-agent", version, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML). Keys can also be set with LOGBOOK_AGENT_<SECTION>__<KEY>.
    #[arg(
        long,
        short,
        env = "LOGBOOK_AGENT_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// State directory (identity and unsent check-ins); overrides state.dir.
    #[arg(
        long,
        env = "LOGBOOK_AGENT_STATE_DIR",
        global = true,
        value_name = "DIR"
    )]
    state_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this machine with a Logbook server, using an enrollment token from an operator.
    Enroll {
        /// The server's base URL, such as https://logbook.example.com.
        #[arg(long)]
        server: String,
        /// The enrollment token (lbe_...). Prefer the environment variable, which other users
        /// cannot see in the process list.
        #[arg(long, env = "LOGBOOK_AGENT_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Check in on the configured interval until stopped (SIGINT or SIGTERM).
    Run,
    /// Print the facts a check-in would report, as JSON, and exit.
    Facts,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources::new(cli.config.as_deref(), cli.config.is_some(), ENV_PREFIX, &[]);
    let mut config = match AgentConfig::load(&sources) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("logbook-agent: {e}");
            return ExitCode::from(64);
        }
    };
    if let Some(dir) = cli.state_dir {
        config.state.dir = dir;
    }
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("logbook-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Enroll { server, token } => {
                let identity =
                    enroll::enroll(&server, &token, &config.state.dir, config.checkin.timeout)
                        .await?;
                println!(
                    "enrolled as agent {} (client {}, site {}); identity stored in {}",
                    identity.agent_id,
                    identity.client_id,
                    identity.site_id,
                    config.state.dir.display()
                );
                Ok(())
            }
            Command::Run => {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                run::run(config, shutdown).await?;
                Ok(())
            }
            Command::Facts => {
                let report = collector::for_this_platform().collect();
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logbook-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &AgentConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}
