//! The `logbook` binary as an operator meets it: help and configuration errors.

use std::process::Command;

fn logbook() -> Command {
    Command::new(env!("CARGO_BIN_EXE_logbook"))
}

#[test]
fn a_bad_configuration_exits_64_with_one_line_naming_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("logbook.toml");
    std::fs::write(
        &file,
        "[http]\nlisten = \"nowhere\"\n[agents]\noverdue_after = \"10m\"\noffline_after = \"1m\"\n",
    )
    .expect("write config");
    let output = logbook()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .env("LOGBOOK_DATABASE__URL", "mysql://nope")
        .env("LOGBOOK_INGEST__MAX_BATCH", "0")
        .env("LOGBOOK_HTTP__LISTEN_BACKLOG", "0")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in [
        "http.listen",
        "agents.offline_after",
        "database.url",
        "ingest.max_batch",
        "http.listen_backlog",
    ] {
        assert!(stderr.contains(key), "{key} missing: {stderr}");
    }
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_missing_config_file_is_an_error_when_named() {
    let output = logbook()
        .args(["--config", "/nonexistent/logbook.toml", "check-config"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/logbook.toml"));
}

#[test]
fn help_explains_every_subcommand() {
    let output = logbook().arg("--help").output().expect("help");
    let text = String::from_utf8_lossy(&output.stdout);
    for word in ["serve", "migrate", "projections", "admin", "LOGBOOK_"] {
        assert!(text.contains(word), "{word} missing from --help: {text}");
    }
    let output = logbook()
        .args(["projections", "rebuild", "--help"])
        .output()
        .expect("help");
    assert!(String::from_utf8_lossy(&output.stdout).contains("fleet"));
}
