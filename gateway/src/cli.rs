//! The `logbook` command line: what each subcommand does. `main.rs` parses it and calls
//! [`execute`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use logbook_domain::ids::{ApiTokenId, ClientId, EnrollmentTokenId, SiteId};
use logbook_domain::metadata::Actor;
use logbook_projections::fleet::FleetProjection;
use logbook_projections::jobs::JobsProjection;
use logbook_projections::rebuild::{self, Progress, RebuildReport};
use logbook_projections::timeline::TimelineProjection;
use logbook_projections::{PROJECTION_NAMES, Projection, runner};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::commands::{Commands, Ctx};
use crate::config::GatewayConfig;
use crate::notify::LogNotifier;
use crate::store::EventStore;
use crate::{db, serve};

/// Logbook: an event-sourced RMM control plane.
///
/// Every agent check-in and operator action is recorded as an immutable event in Postgres;
/// the API serves read models projected from that log.
#[derive(Debug, Parser)]
#[command(name = "logbook", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Every key can also be set with LOGBOOK_<SECTION>__<KEY>,
    /// for example LOGBOOK_DATABASE__URL. Without a file, defaults suit a developer machine.
    #[arg(
        long,
        short,
        env = "LOGBOOK_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: HTTP API, check-in ingest and projections. Migrates the database
    /// first unless database.migrate_on_start is false; issues a bootstrap admin API token on
    /// the first start and writes it to admin.token_file.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect or rebuild read models.
    Projections {
        /// What to do.
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Administer tenancy and access from the command line (the same actions as the API).
    Admin {
        /// What to do.
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Check the configuration and print it.
    CheckConfig,
    /// Set up NATS authentication: per-agent identities without reloading nats-server.
    Nats {
        /// What to do.
        #[command(subcommand)]
        command: NatsCommand,
    },
}

/// `logbook nats ...`
#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    /// Create fresh operator, account and signing keys and write: `nats-server.conf` (operator
    /// mode, Logbook's account preloaded, JetStream on), `gateway.creds` (the gateway's NATS
    /// user) and `account-signing.nk` (the key that issues agents' identities). Prints the
    /// gateway settings that go with them.
    Init {
        /// Where to write the files (created, mode 0700; existing files are not overwritten).
        #[arg(long)]
        out_dir: PathBuf,
        /// nats-server's JetStream store directory.
        #[arg(long, default_value = "/var/lib/nats-server/jetstream")]
        store_dir: PathBuf,
    },
}

/// `logbook projections ...`
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// List the projections with their position and backlog.
    Status,
    /// Rebuild a read model from the start of the event log. The current read model keeps
    /// serving until the new one has caught up, then they are swapped in one transaction.
    Rebuild {
        /// The projection: fleet (clients, sites, agent list), timeline (agent history) or jobs.
        name: String,
        /// Events applied per transaction (larger is faster: one agent's check-ins in a batch
        /// become one update of the agent list; the events a projection reads are held in
        /// memory a batch at a time). Default: the projection's own, 200000 for fleet, 50000
        /// for the others.
        #[arg(long)]
        batch_size: Option<i64>,
    },
}

/// `logbook admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Issue an API token and print it (it is shown only once).
    CreateApiToken {
        /// What the token is for.
        #[arg(long)]
        name: String,
    },
    /// Revoke an API token.
    RevokeApiToken {
        /// The token's id.
        id: ApiTokenId,
    },
    /// Create a client and print its id.
    CreateClient {
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// Create a site under a client and print its id.
    CreateSite {
        /// The client's id.
        #[arg(long)]
        client: ClientId,
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// Issue an enrollment token for a site and print it (shown only once).
    CreateEnrollmentToken {
        /// The site's id.
        #[arg(long)]
        site: SiteId,
        /// How long it works, such as 30m, 24h or 7d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expires_in: Duration,
        /// How many agents it may enroll.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
    },
    /// Revoke an enrollment token.
    RevokeEnrollmentToken {
        /// The token's id.
        id: EnrollmentTokenId,
    },
}

/// Runs a subcommand.
pub async fn execute(
    command: Command,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve::run(config, None, shutdown).await,
        Command::Migrate => {
            let pool = connect(&config).await?;
            db::migrate(&pool).await.context("applying migrations")?;
            println!(
                "database is up to date ({} migrations)",
                logbook_migrations::MIGRATIONS.len()
            );
            Ok(())
        }
        Command::Projections { command } => projections(command, &config).await,
        Command::Admin { command } => admin(command, &config).await,
        Command::CheckConfig => {
            println!("{config:#?}");
            Ok(())
        }
        Command::Nats {
            command: NatsCommand::Init { out_dir, store_dir },
        } => nats_init(&out_dir, &store_dir),
    }
}

async fn connect(config: &GatewayConfig) -> anyhow::Result<PgPool> {
    let pool = db::pool(&config.database).context("database.url")?;
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .with_context(|| format!("connecting to Postgres ({})", redact(&config.database.url)))?;
    Ok(pool)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if url[scheme + 3..at].contains(':') => {
            let user_end = url[scheme + 3..at].find(':').map_or(at, |i| scheme + 3 + i);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

async fn projections(command: ProjectionsCommand, config: &GatewayConfig) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    match command {
        ProjectionsCommand::Status => {
            println!(
                "{:<10} {:>14} {:>14} {:>12}  last event recorded",
                "projection", "applied", "backlog", "position"
            );
            for name in PROJECTION_NAMES {
                let row = sqlx::query(
                    "SELECT events_applied, position, last_recorded_at FROM projection_checkpoints WHERE projection = $1",
                )
                .bind(name)
                .fetch_optional(&pool)
                .await?;
                let cursor = runner::checkpoint(&pool, name).await?.unwrap_or_default();
                let mut conn = pool.acquire().await?;
                let (backlog, _) = logbook_projections::log::backlog(
                    &mut conn,
                    cursor,
                    10_000_000,
                    logbook_projections::reads_of(name).unwrap_or_default(),
                )
                .await?;
                let (applied, position, last): (i64, i64, Option<chrono::DateTime<chrono::Utc>>) =
                    match row {
                        Some(r) => (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                        None => (0, 0, None),
                    };
                println!(
                    "{name:<10} {applied:>14} {backlog:>14} {position:>12}  {}",
                    last.map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
                );
            }
            Ok(())
        }
        ProjectionsCommand::Rebuild { name, batch_size } => {
            anyhow::ensure!(
                batch_size.is_none_or(|n| n > 0),
                "--batch-size must be positive"
            );
            let report = match name.as_str() {
                FleetProjection::NAME => {
                    rebuild_with_progress(&pool, &FleetProjection, batch_size).await?
                }
                JobsProjection::NAME => {
                    rebuild_with_progress(&pool, &JobsProjection, batch_size).await?
                }
                TimelineProjection::NAME => {
                    rebuild_with_progress(&pool, &TimelineProjection, batch_size).await?
                }
                other => anyhow::bail!(
                    "unknown projection {other:?}; known: {}",
                    PROJECTION_NAMES.join(", ")
                ),
            };
            println!(
                "rebuilt {name}: {} events applied; now at {}",
                report.applied, report.cursor
            );
            Ok(())
        }
    }
}

async fn rebuild_with_progress<P: Projection>(
    pool: &PgPool,
    projection: &P,
    batch_size: Option<i64>,
) -> anyhow::Result<RebuildReport> {
    let batch_size = batch_size.unwrap_or_else(|| projection.rebuild_batch_size());
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec}, eta {eta})",
        )
        .expect("the progress template is valid"),
    );
    bar.set_message(format!("rebuilding {}", projection.name()));
    let report = rebuild::rebuild(
        pool,
        projection,
        batch_size,
        |Progress { applied, total }| {
            bar.set_length(total);
            bar.set_position(applied);
        },
    )
    .await
    .with_context(|| format!("rebuilding projection {}", projection.name()))?;
    bar.finish();
    Ok(report)
}

async fn admin(command: AdminCommand, config: &GatewayConfig) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    let commands = Commands::new(EventStore::new(pool.clone()), LogNotifier::disabled());
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_string());
    let ctx = Ctx::new(
        Actor::System(format!("cli:{user}")),
        format!("cli-{}", uuid::Uuid::now_v7()),
    );
    match command {
        AdminCommand::CreateApiToken { name } => {
            let issued = commands.issue_api_token(&ctx, &name).await?;
            println!(
                "api token {} created; it is shown only once:\n{}",
                issued.token_id, issued.token
            );
        }
        AdminCommand::RevokeApiToken { id } => {
            commands.revoke_api_token(&ctx, id).await?;
            println!("api token {id} revoked");
        }
        AdminCommand::CreateClient { name } => {
            let id = commands.create_client(&ctx, &name).await?;
            println!("{id}");
        }
        AdminCommand::CreateSite { client, name } => {
            let id = commands.create_site(&ctx, client, &name).await?;
            println!("{id}");
        }
        AdminCommand::CreateEnrollmentToken {
            site,
            expires_in,
            max_uses,
        } => {
            let issued = commands
                .issue_enrollment_token(&ctx, site, expires_in, max_uses)
                .await?;
            println!("{}", issued.token);
            eprintln!(
                "enrollment token {} for site {} (expires {}, {} use(s))",
                issued.token_id, issued.site_id, issued.expires_at, issued.max_uses
            );
        }
        AdminCommand::RevokeEnrollmentToken { id } => {
            commands.revoke_enrollment_token(&ctx, id).await?;
            println!("enrollment token {id} revoked");
        }
    }
    // Wake the running gateways' projections now rather than at their next poll.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(logbook_projections::runner::EVENTS_CHANNEL)
        .execute(&pool)
        .await?;
    Ok(())
}

fn nats_init(out_dir: &std::path::Path, store_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let setup = crate::jobs::nats_auth::init_operator(store_dir)?;
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(out_dir)
        .with_context(|| format!("creating {}", out_dir.display()))?;
    let files = [
        ("nats-server.conf", setup.server_config.as_str()),
        ("gateway.creds", setup.gateway_creds.as_str()),
        ("account-signing.nk", setup.account_signing_seed.as_str()),
    ];
    for (name, content) in files {
        let path = out_dir.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(content.as_bytes())?;
    }
    println!(
        "Wrote {dir}/nats-server.conf, gateway.creds and account-signing.nk.\n\
         Run nats-server with: nats-server -c {dir}/nats-server.conf\n\
         and configure the gateway with:\n\n\
         [nats]\n\
         credentials_file = \"{dir}/gateway.creds\"\n\
         account_public_key = \"{account}\"\n\
         account_signing_key_file = \"{dir}/account-signing.nk\"",
        dir = out_dir.display(),
        account = setup.account_public_key,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
