//! The agent's configuration: an optional TOML file plus `LOGBOOK_AGENT_<SECTION>__<KEY>`
//! environment overrides. Where the server is and who the agent is come from enrollment (stored
//! in the state directory), not from here.

use std::path::PathBuf;
use std::time::Duration;

use logbook_config::{ConfigError, Problems, Sources};
use serde::Deserialize;

/// The prefix of the agent's environment overrides.
pub const ENV_PREFIX: &str = "LOGBOOK_AGENT_";

/// Everything `logbook-agent` can be configured with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Where the agent keeps its credential and unsent check-ins.
    pub state: StateConfig,
    /// How often to check in.
    pub checkin: CheckinConfig,
    /// Running jobs.
    pub jobs: JobsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Running jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Most bytes of stdout, and of stderr, kept per job (the rest is cut with a marker).
    pub output_cap_bytes: usize,
    /// The agent renews its NATS identity two thirds into its life, but never sooner than this
    /// after connecting: a server that issued a very short identity, or a clock far off, must
    /// not make the agent ask again and again.
    #[serde(with = "humantime_serde")]
    pub min_identity_renewal: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            output_cap_bytes: 1024 * 1024,
            min_identity_renewal: crate::jobs::DEFAULT_MIN_RENEWAL,
        }
    }
}

/// The state directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The directory (created with mode 0700).
    pub dir: PathBuf,
    /// Most unsent check-ins kept while the server is unreachable; the oldest are dropped
    /// beyond this (10,080 is a week at one per minute).
    pub max_spooled: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        let dir = if is_root() {
            PathBuf::from("/var/lib/logbook-agent")
        } else {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".local/state/logbook-agent"))
                .unwrap_or_else(|| PathBuf::from(".logbook-agent"))
        };
        Self {
            dir,
            max_spooled: 10_080,
        }
    }
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
        || std::env::var_os("HOME").is_some_and(|h| h == "/root")
}

/// Check-in pacing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckinConfig {
    /// Time between check-ins.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Up to this much random time is added to each interval, so that a fleet that restarted
    /// together does not check in together.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Longest a request to the server may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait between retries while the server is unreachable.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for CheckinConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            jitter: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter; `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

impl AgentConfig {
    /// Loads and checks the configuration, reporting every problem at once.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        logbook_config::load(sources, Self::validate)
    }

    fn validate(&self, p: &mut Problems) {
        p.check(
            self.checkin.interval >= Duration::from_secs(1),
            "checkin.interval",
            "must be at least 1s",
        );
        p.check(
            !self.checkin.timeout.is_zero(),
            "checkin.timeout",
            "must be more than 0",
        );
        p.check(
            self.checkin.max_backoff >= Duration::from_secs(1),
            "checkin.max_backoff",
            "must be at least 1s",
        );
        p.check(
            self.jobs.min_identity_renewal >= Duration::from_secs(1),
            "jobs.min_identity_renewal",
            "must be at least 1s",
        );
        p.check(
            self.state.max_spooled >= 1,
            "state.max_spooled",
            "must be at least 1",
        );
        p.check(
            self.log.format == "text" || self.log.format == "json",
            "log.format",
            format!("must be \"text\" or \"json\", got {:?}", self.log.format),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_under_ops_parses_and_bad_values_are_all_named() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/logbook-agent.toml");
        AgentConfig::load(&Sources {
            file: Some(path.clone()),
            file_required: true,
            env: Vec::new(),
            env_prefix: ENV_PREFIX,
            env_ignore: &[],
        })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));

        let err = AgentConfig::load(&Sources {
            file: None,
            file_required: false,
            env: vec![
                ("LOGBOOK_AGENT_CHECKIN__INTERVAL".into(), "0s".into()),
                ("LOGBOOK_AGENT_LOG__FORMAT".into(), "xml".into()),
                ("LOGBOOK_AGENT_CHECKIN__TIMEOUT".into(), "soon".into()),
                (
                    "LOGBOOK_AGENT_JOBS__MIN_IDENTITY_RENEWAL".into(),
                    "0s".into(),
                ),
            ],
            env_prefix: ENV_PREFIX,
            env_ignore: &[],
        })
        .expect_err("invalid");
        let text = err.to_string();
        for key in [
            "checkin.interval",
            "log.format",
            "checkin.timeout",
            "jobs.min_identity_renewal",
        ] {
            assert!(text.contains(key), "{key} missing: {text}");
        }
    }
}
