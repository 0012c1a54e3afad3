//! The `logbook-agent` binary as an operator meets it: help, facts, configuration errors, and
//! running before enrolling.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_logbook-agent"))
}

#[test]
fn facts_prints_this_machines_report_as_json() {
    let output = agent().arg("facts").output().expect("run facts");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(report["hostname"], hostname.trim());
    assert_eq!(report["os"]["family"], "linux");
    assert!(!report["disks"].as_array().expect("disks").is_empty());
}

#[test]
fn a_bad_configuration_exits_64_naming_every_problem() {
    let output = agent()
        .arg("facts")
        .env("LOGBOOK_AGENT_CHECKIN__INTERVAL", "never")
        .env("LOGBOOK_AGENT_LOG__FORMAT", "xml")
        .env("LOGBOOK_AGENT_BOGUS__KEY", "1")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["checkin.interval", "log.format", "bogus"] {
        assert!(stderr.contains(key), "{key} missing: {stderr}");
    }
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn running_before_enrolling_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = agent()
        .arg("--state-dir")
        .arg(dir.path())
        .arg("run")
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("logbook-agent enroll"));
}

#[test]
fn help_explains_the_subcommands() {
    let output = agent().arg("--help").output().expect("help");
    let text = String::from_utf8_lossy(&output.stdout);
    for word in ["enroll", "run", "facts", "--state-dir"] {
        assert!(text.contains(word), "{word} missing from --help");
    }
}
