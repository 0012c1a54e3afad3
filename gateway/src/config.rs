//! The gateway's configuration: one TOML file (`--config`, or `LOGBOOK_CONFIG`) plus
//! `LOGBOOK_<SECTION>__<KEY>` environment overrides, with defaults that work on a developer
//! machine (Postgres and NATS on localhost).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use logbook_config::{ConfigError, Problems, Sources};
use logbook_projections::fleet::StatusThresholds;
use serde::Deserialize;

/// The prefix of the gateway's environment overrides.
pub const ENV_PREFIX: &str = "LOGBOOK_";
/// The agent's overrides, which share the `LOGBOOK_` prefix but are not the gateway's.
pub const ENV_IGNORE: &[&str] = &["LOGBOOK_AGENT_"];

/// Everything `logbook` can be configured with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The HTTP API.
    pub http: HttpConfig,
    /// The event store and read models.
    pub database: DatabaseConfig,
    /// The command transport.
    pub nats: NatsConfig,
    /// Agent status rules.
    pub agents: AgentsConfig,
    /// The check-in ingest path.
    pub ingest: IngestConfig,
    /// Jobs.
    pub jobs: JobsConfig,
    /// Projection runners.
    pub projections: ProjectionsConfig,
    /// The bootstrap admin token.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
}

/// HTTP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Connections the kernel queues before the gateway accepts them (capped by the kernel's
    /// `net.core.somaxconn`). Thousands of agents reconnect at once after a restart; a short
    /// queue drops their connection attempts, and each dropped one waits a second or more.
    pub listen_backlog: u32,
    /// Largest request body accepted, in bytes (check-ins, enrollments, admin requests).
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered with 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest a connection waits for the next request's headers: a kept-open connection idle
    /// this long is closed, and so is a client that sends its headers slower than this. Agents
    /// whose check-ins come further apart (interval plus jitter, 60-70 s by default) open a new
    /// connection for each; above that, and below the agents' own 90 s limit on an idle
    /// connection, their connections are kept (17-20 KiB of memory each, BENCHMARKS.md).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_backlog: 4096,
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Postgres settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connection URL.
    pub url: String,
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered with 503.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/logbook".to_string(),
            max_connections: 32,
            acquire_timeout: Duration::from_secs(3),
            migrate_on_start: true,
        }
    }
}

/// NATS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL, as the gateway reaches it.
    pub url: String,
    /// Server URL as agents reach it (defaults to `url`).
    pub agent_url: Option<String>,
    /// Prefix of every subject, stream and consumer name.
    pub namespace: String,
    /// The gateway's `.creds` file, when nats-server requires authentication.
    pub credentials_file: Option<PathBuf>,
    /// The Logbook account (`A...`) whose signing key issues agents' identities. With
    /// `account_signing_key_file`, each agent gets its own NATS user limited to its own subjects;
    /// without, agents connect without authentication (development).
    pub account_public_key: Option<String>,
    /// File holding the account signing key seed (`SA...`).
    pub account_signing_key_file: Option<PathBuf>,
    /// How long an agent's NATS identity is valid before it renews it.
    #[serde(with = "humantime_serde")]
    pub agent_identity_lifetime: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_string(),
            agent_url: None,
            namespace: "logbook".to_string(),
            credentials_file: None,
            account_public_key: None,
            account_signing_key_file: None,
            agent_identity_lifetime: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Deadline of a job when the request gives none.
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// Longest deadline a request may ask for (jobs are kept in NATS this long).
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
    /// Largest script or command accepted, in bytes.
    pub max_script_bytes: usize,
    /// Most agents one bulk job may target.
    pub max_bulk_targets: usize,
    /// Most events the dispatcher reads per round.
    pub dispatch_batch: i64,
    /// How often jobs past their deadline are looked for.
    #[serde(with = "humantime_serde")]
    pub expiry_interval: Duration,
    /// Batches of results recorded at the same time (each one insert of up to 512).
    pub result_concurrency: usize,
    /// Batches of claims decided at the same time (each one insert of up to 512).
    pub claim_concurrency: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            default_deadline: Duration::from_secs(24 * 3600),
            max_deadline: Duration::from_secs(30 * 24 * 3600),
            max_script_bytes: 256 * 1024,
            max_bulk_targets: 100_000,
            dispatch_batch: 1000,
            expiry_interval: Duration::from_secs(1),
            result_concurrency: 4,
            claim_concurrency: 4,
        }
    }
}

/// When silent agents are shown as overdue and offline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Silence after which an agent is overdue.
    #[serde(with = "humantime_serde")]
    pub overdue_after: Duration,
    /// Silence after which an agent is offline.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            overdue_after: Duration::from_secs(3 * 60),
            offline_after: Duration::from_secs(10 * 60),
        }
    }
}

impl AgentsConfig {
    /// The thresholds as the read model takes them.
    pub fn thresholds(&self) -> StatusThresholds {
        StatusThresholds {
            overdue_after: self.overdue_after,
            offline_after: self.offline_after,
        }
    }
}

/// Group commit of check-ins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most check-ins appended by one statement.
    pub max_batch: usize,
    /// A batch smaller than this waits up to `max_wait` for more check-ins before it is
    /// appended (not when the lane's previous batch was a lone check-in: a quiet gateway
    /// answers at once).
    pub min_batch: usize,
    /// How long a batch smaller than `min_batch` may wait for more check-ins (0: append at once
    /// whenever a lane is free; batches still grow under load while the lanes are busy).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Batches being appended at the same time.
    pub concurrent_flushes: usize,
    /// Check-ins waiting to be appended before new ones are refused with 503.
    pub queue_capacity: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch: 500,
            min_batch: 32,
            max_wait: Duration::from_millis(2),
            concurrent_flushes: 2,
            queue_capacity: 10_000,
        }
    }
}

/// Projection runners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionsConfig {
    /// Run the projections in this process (several gateways may; one leads each projection).
    pub enabled: bool,
    /// Most events per projection transaction. Larger batches amortise more but make each
    /// transaction hold back other log readers longer and grow connection buffers.
    pub batch_size: i64,
    /// Fallback poll when no notification arrives.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long events may accumulate after a notification before they are applied (fewer,
    /// larger transactions under load, at the cost of this much lag). Every projection runs a
    /// round per notification it wakes to, and every commit to the log notifies: when commits
    /// come one at a time (an agent working through its queued jobs, two commits per job), a
    /// short linger means a round of every projection per commit, competing with the commits
    /// themselves (BENCHMARKS.md: 10 ms against 2 ms took a fifth off a 1,000-job catch-up and
    /// changed nothing measurable for check-ins).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_size: 1000,
            poll_interval: Duration::from_secs(1),
            linger: Duration::from_millis(10),
        }
    }
}

/// Where the first start writes the bootstrap admin token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File (mode 0600) that receives the bootstrap admin API token.
    pub token_file: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token_file: PathBuf::from(".logbook/admin-token"),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `logbook_gateway=debug,info`. `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_string(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl GatewayConfig {
    /// Loads and checks the configuration, reporting every problem at once.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        logbook_config::load(sources, Self::validate)
    }

    fn validate(&self, p: &mut Problems) {
        p.check(
            (1..=65_535).contains(&self.http.listen_backlog),
            "http.listen_backlog",
            "must be between 1 and 65535",
        );
        p.check(
            self.http.max_body_bytes >= 1024,
            "http.max_body_bytes",
            "must be at least 1024",
        );
        p.check(
            !self.http.request_timeout.is_zero(),
            "http.request_timeout",
            "must be more than 0",
        );
        p.check(
            self.http.idle_timeout >= Duration::from_secs(1),
            "http.idle_timeout",
            "must be at least 1s",
        );
        p.check(
            self.database.url.starts_with("postgres://")
                || self.database.url.starts_with("postgresql://"),
            "database.url",
            "must start with postgres:// or postgresql://",
        );
        p.check(
            self.database.max_connections >= 4,
            "database.max_connections",
            "must be at least 4 (ingest, projections and the API share the pool)",
        );
        p.check(
            self.nats.url.starts_with("nats://") || self.nats.url.starts_with("tls://"),
            "nats.url",
            "must start with nats:// or tls://",
        );
        p.check(
            !self.nats.namespace.is_empty()
                && self
                    .nats
                    .namespace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "nats.namespace",
            "must be letters, digits, - or _",
        );
        p.check(
            self.nats.account_public_key.is_some() == self.nats.account_signing_key_file.is_some(),
            "nats.account_signing_key_file",
            "nats.account_public_key and nats.account_signing_key_file go together",
        );
        p.check(
            self.jobs.default_deadline > Duration::ZERO
                && self.jobs.default_deadline <= self.jobs.max_deadline,
            "jobs.default_deadline",
            "must be more than 0 and at most jobs.max_deadline",
        );
        p.check(
            (1024..=16 * 1024 * 1024).contains(&self.jobs.max_script_bytes),
            "jobs.max_script_bytes",
            "must be between 1024 and 16777216",
        );
        p.check(
            (1..=100_000).contains(&self.jobs.dispatch_batch),
            "jobs.dispatch_batch",
            "must be between 1 and 100000",
        );
        p.check(
            self.jobs.max_bulk_targets >= 1,
            "jobs.max_bulk_targets",
            "must be at least 1",
        );
        p.check(
            !self.agents.overdue_after.is_zero(),
            "agents.overdue_after",
            "must be more than 0",
        );
        p.check(
            self.agents.offline_after > self.agents.overdue_after,
            "agents.offline_after",
            format!(
                "must be longer than agents.overdue_after ({})",
                humantime::format_duration(self.agents.overdue_after)
            ),
        );
        p.check(
            (1..=10_000).contains(&self.ingest.max_batch),
            "ingest.max_batch",
            "must be between 1 and 10000",
        );
        p.check(
            (1..=self.ingest.max_batch.max(1)).contains(&self.ingest.min_batch),
            "ingest.min_batch",
            format!(
                "must be between 1 and ingest.max_batch ({})",
                self.ingest.max_batch
            ),
        );
        p.check(
            self.ingest.max_wait <= Duration::from_secs(1),
            "ingest.max_wait",
            "must be at most 1s (a check-in in a batch below ingest.min_batch may wait that long)",
        );
        p.check(
            (1..=64).contains(&self.ingest.concurrent_flushes),
            "ingest.concurrent_flushes",
            "must be between 1 and 64",
        );
        p.check(
            self.ingest.queue_capacity >= self.ingest.max_batch,
            "ingest.queue_capacity",
            "must be at least ingest.max_batch",
        );
        p.check(
            (1..=100_000).contains(&self.projections.batch_size),
            "projections.batch_size",
            "must be between 1 and 100000",
        );
        p.check(
            !self.admin.token_file.as_os_str().is_empty(),
            "admin.token_file",
            "must not be empty",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logbook.toml");
        std::fs::write(&path, toml).expect("write");
        GatewayConfig::load(&Sources {
            file: Some(path),
            file_required: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env_prefix: ENV_PREFIX,
            env_ignore: ENV_IGNORE,
        })
    }

    #[test]
    fn defaults_work_on_a_developer_machine() {
        let config = load("", &[]).expect("defaults are valid");
        assert_eq!(config.http.listen.port(), 8080);
        assert!(config.database.url.contains("127.0.0.1:5432"));
        assert!(config.nats.url.contains("127.0.0.1:4222"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "[agents]\noverdue_after = \"1m\"\noffline_after = \"5m\"\n",
            &[("LOGBOOK_AGENTS__OVERDUE_AFTER", "2m")],
        )
        .expect("valid");
        assert_eq!(config.agents.overdue_after, Duration::from_secs(120));
        assert_eq!(config.agents.offline_after, Duration::from_secs(300));
    }

    #[test]
    fn a_zero_max_wait_turns_the_ingest_wait_off() {
        load("[ingest]\nmin_batch = 1\nmax_wait = \"0s\"\n", &[]).expect("no wait");
    }

    #[test]
    fn every_problem_is_named() {
        let err = load(
            "[http]\nlisten = \"nowhere\"\n[agents]\noverdue_after = \"10m\"\noffline_after = \"5m\"\n[database]\nurl = \"mysql://x\"\nbogus = 1\n[ingest]\nmax_batch = 100\nmin_batch = 101\nmax_wait = \"5s\"\n",
            &[],
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "http.listen",
            "database.bogus",
            "database.url",
            "agents.offline_after",
            "ingest.min_batch",
            "ingest.max_wait",
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
    }

    #[test]
    fn the_example_config_under_ops_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/logbook.toml");
        GatewayConfig::load(&Sources {
            file: Some(path.clone()),
            file_required: true,
            env: Vec::new(),
            env_prefix: ENV_PREFIX,
            env_ignore: ENV_IGNORE,
        })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
