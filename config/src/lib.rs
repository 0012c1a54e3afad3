//! Loading of a binary's typed configuration from one TOML file plus `LOGBOOK_*` environment
//! overrides.
//!
//! What this crate owns: the layering rules (file, then environment), and the promise that a bad
//! configuration is reported with *every* problem at once rather than the first one serde trips
//! over. What it deliberately does not own: the configuration types themselves (each binary
//! defines its own, with `#[serde(deny_unknown_fields)]`) and semantic validation beyond types
//! (the binaries add their own checks through [`Problems`]).
//!
//! Environment overrides name a key path with double underscores after the binary's prefix:
//! `LOGBOOK_DATABASE__URL` sets the gateway's `database.url`, `LOGBOOK_AGENT_CHECKIN__INTERVAL`
//! the agent's `checkin.interval`. The value is read as a TOML value when it parses as one (`5`, `true`,
//! `["a", "b"]`) and as a plain string otherwise, so `LOGBOOK_HTTP__LISTEN=127.0.0.1:8080` works
//! without quoting.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// Every problem found while loading a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// Where the configuration came from, for the message.
    pub source_name: String,
    /// One line per problem, each naming the key it is about.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration ({}): {}",
            self.source_name,
            self.problems.join("; ")
        )
    }
}

/// A list of problems collected while validating a loaded configuration.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records one problem about `key`.
    pub fn push(&mut self, key: &str, message: impl fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }

    /// Records a problem when `ok` is false.
    pub fn check(&mut self, ok: bool, key: &str, message: impl fmt::Display) {
        if !ok {
            self.push(key, message);
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where a configuration is read from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The TOML file. `None` means "defaults plus environment only".
    pub file: Option<PathBuf>,
    /// Whether a missing file is an error (true when the user named the file explicitly).
    pub file_required: bool,
    /// The environment variables to consider, usually `std::env::vars()`.
    pub env: Vec<(String, String)>,
    /// The prefix of this binary's overrides, such as `LOGBOOK_`.
    pub env_prefix: &'static str,
    /// Prefixes of other binaries' overrides to ignore (the agent's `LOGBOOK_AGENT_` when the
    /// gateway reads `LOGBOOK_`).
    pub env_ignore: &'static [&'static str],
}

impl Sources {
    /// The file at `path` (required when `explicit`) and this process's environment variables
    /// that start with `env_prefix` (but none of `env_ignore`).
    pub fn new(
        path: Option<&Path>,
        explicit: bool,
        env_prefix: &'static str,
        env_ignore: &'static [&'static str],
    ) -> Self {
        Self {
            file: path.map(Path::to_path_buf),
            file_required: explicit,
            env: std::env::vars().collect(),
            env_prefix,
            env_ignore,
        }
    }
}

/// Loads `T` from `sources`, then runs `validate` on it. Every type error, unknown key and
/// validation problem is returned together.
pub fn load<T, F>(sources: &Sources, validate: F) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    F: FnOnce(&T, &mut Problems),
{
    let source_name = describe(sources);
    let fail = |problems: Vec<String>| ConfigError {
        source_name: source_name.clone(),
        problems,
    };

    let mut table = match &sources.file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text
                .parse::<Table>()
                .map_err(|e| fail(vec![format!("{}: {}", path.display(), one_line(&e))]))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !sources.file_required => {
                Table::new()
            }
            Err(e) => return Err(fail(vec![format!("{}: {e}", path.display())])),
        },
        None => Table::new(),
    };

    let mut problems = Vec::new();
    for (name, raw) in &sources.env {
        if sources.env_ignore.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let Some(rest) = name.strip_prefix(sources.env_prefix) else {
            continue;
        };
        // `LOGBOOK_CONFIG` and friends name the file itself, not a key in it.
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if let Err(message) = set_path(&mut table, &path, env_value(raw)) {
            problems.push(format!("{name}: {message}"));
        }
    }

    // serde stops at the first error, so remove each offending key and try again until the rest
    // deserializes; every removed key is one reported problem.
    let value = loop {
        match serde_path_to_error::deserialize::<_, T>(Value::Table(table.clone())) {
            Ok(value) => break value,
            Err(err) => {
                let path = err.path().to_string();
                let message = one_line(err.inner());
                // The path names the offending key itself, unknown keys included.
                let segments: Vec<String> = if path == "." {
                    Vec::new()
                } else {
                    path.split('.').map(str::to_string).collect()
                };
                let key = if segments.is_empty() {
                    "(top level)".to_string()
                } else {
                    segments.join(".")
                };
                problems.push(format!("{key}: {message}"));
                if segments.is_empty() || !remove_path(&mut table, &segments) {
                    return Err(fail(problems));
                }
            }
        }
    };

    let mut extra = Problems::default();
    validate(&value, &mut extra);
    problems.extend(extra.0);
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(fail(problems))
    }
}

fn describe(sources: &Sources) -> String {
    let prefix = sources.env_prefix;
    match &sources.file {
        Some(path) => format!("{} and {prefix}* environment", path.display()),
        None => format!("defaults and {prefix}* environment"),
    }
}

fn one_line(e: &impl fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn env_value(raw: &str) -> Value {
    // Parse as a TOML value by embedding it in a one-key document; anything that is not valid
    // TOML (a bare host:port, a path) is taken as a string.
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for (i, segment) in parents.iter().enumerate() {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(t) => t,
            _ => return Err(format!("`{}` is not a table", path[..=i].join("."))),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn remove_path(table: &mut Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = table;
    for segment in parents {
        match current.get_mut(segment) {
            Some(Value::Table(t)) => current = t,
            _ => return false,
        }
    }
    current.remove(last).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        #[serde(default)]
        http: Http,
        #[serde(default = "default_name")]
        name: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Http {
        port: u16,
        host: String,
    }

    impl Default for Http {
        fn default() -> Self {
            Self {
                port: 80,
                host: "localhost".into(),
            }
        }
    }

    fn default_name() -> String {
        "x".into()
    }

    fn from(text: &str, env: &[(&str, &str)]) -> Result<Example, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        let sources = Sources {
            file: Some(path),
            file_required: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env_prefix: "LOGBOOK_",
            env_ignore: &["LOGBOOK_AGENT_"],
        };
        load(&sources, |c: &Example, p| {
            p.check(c.name != "bad", "name", "must not be `bad`")
        })
    }

    #[test]
    fn defaults_apply_and_env_overrides_file() {
        let c = from(
            "[http]\nport = 8080\n",
            &[("LOGBOOK_HTTP__HOST", "0.0.0.0")],
        )
        .expect("ok");
        assert_eq!(c.http.port, 8080);
        assert_eq!(c.http.host, "0.0.0.0");
        assert_eq!(c.name, "x");
    }

    #[test]
    fn other_binaries_overrides_are_ignored() {
        let c = from("", &[("LOGBOOK_AGENT_CHECKIN__INTERVAL", "5s")]).expect("ignored");
        assert_eq!(c.http.port, 80);
    }

    #[test]
    fn env_value_is_typed_when_it_parses() {
        let c = from("", &[("LOGBOOK_HTTP__PORT", "9000")]).expect("ok");
        assert_eq!(c.http.port, 9000);
    }

    #[test]
    fn every_problem_is_reported() {
        let err = from(
            "name = \"bad\"\ncolour = 1\n[http]\nport = \"eighty\"\nhots = \"a\"\n",
            &[],
        )
        .expect_err("bad config");
        let text = err.to_string();
        assert!(text.contains("http.port"), "{text}");
        assert!(text.contains("http.hots"), "{text}");
        assert!(text.contains("colour"), "{text}");
        assert!(text.contains("name: must not be `bad`"), "{text}");
        assert_eq!(err.problems.len(), 4, "{text}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = from("[http\n", &[]).expect_err("bad toml");
        assert!(err.to_string().contains("c.toml"), "{err}");
    }
}
