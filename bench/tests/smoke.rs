//! A smoke-sized run of the benchmark, so that the harness cannot rot: it must start a real
//! gateway, enroll agents, drive every phase and write its report.

use std::process::Command;

#[test]
fn a_smoke_run_completes_and_writes_its_report() {
    let dir = tempfile_path();
    let out = dir.join("bench.json");
    let latency_log = dir.join("fixed-rate.csv");
    let postgres = std::env::var("LOGBOOK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let output = Command::new(env!("CARGO_BIN_EXE_logbook-bench"))
        .args([
            "--smoke",
            // Other tests run alongside against the same PostgreSQL: stay well within its
            // connection limit.
            "--set",
            "database.max_connections=28",
            "--scenario",
            "checkin,jobs,reconnect,projections,history",
            "--postgres",
            &postgres,
            "--latency-log",
        ])
        .arg(&latency_log)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run logbook-bench");
    assert!(
        output.status.success(),
        "logbook-bench --smoke failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("report written")).expect("JSON report");
    let checkin = &report["checkin"];
    assert!(
        checkin["saturated_per_sec"].as_f64().expect("rate") > 0.0,
        "{report}"
    );
    assert!(checkin["cqrs_execute_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(checkin["raw_insert_rows_per_sec"].as_f64().expect("rate") > 0.0);
    // One ratio per run, each of a saturated phase to the `execute` phase right after it.
    let pairs = checkin["ratio_vs_execute_runs"]
        .as_array()
        .expect("the ratio of each run");
    assert_eq!(pairs.len(), 1, "{report}");
    assert_eq!(pairs[0], checkin["ratio_vs_execute"], "{report}");
    let expected = checkin["saturated_runs"][0].as_f64().expect("rate")
        / checkin["cqrs_execute_runs"][0].as_f64().expect("rate");
    assert!(
        (pairs[0].as_f64().expect("ratio") - expected).abs() < 1e-9 * expected,
        "{report}"
    );
    assert_eq!(checkin["errors"], 0);
    // Every agent held a connection of its own, and the gateway's memory was read then.
    assert_eq!(checkin["connections_held"], checkin["agents"], "{report}");
    assert!(
        checkin["gateway_rss_connected_mib"].as_f64().expect("RSS") > 0.0,
        "{report}"
    );
    // Each saturated run's own latency, beside the runs' pooled one.
    assert_eq!(
        checkin["saturated_latency_runs"]
            .as_array()
            .expect("each run's latency")
            .len(),
        1,
        "{report}"
    );
    let jobs_bulk_p99 = &report["jobs"]["bulk_dispatched_p99_secs"];
    assert!(jobs_bulk_p99.as_f64().is_some(), "{report}");
    // The host was read beside each second of the fixed-rate phase, and was busy then.
    let host = checkin["fixed_rate_host_by_second"]
        .as_array()
        .expect("the host by second");
    assert!(!host.is_empty(), "{report}");
    for second in host {
        for share in ["busy_pct", "iowait_pct", "steal_pct"] {
            let pct = second[share].as_f64().expect("a share");
            assert!((0.0..=100.0).contains(&pct), "{share} {pct} in {second}");
        }
    }
    assert!(
        host.iter()
            .any(|s| s["busy_pct"].as_f64().is_some_and(|b| b > 0.0)),
        "{report}"
    );
    // Every check-in the fixed-rate phase answered, one line each, in the order scheduled.
    let log = std::fs::read_to_string(&latency_log).expect("the latency log written");
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("scheduled_ms,agent,latency_ms"));
    let rows: Vec<Vec<f64>> = lines
        .map(|line| line.split(',').map(|v| v.parse().expect(line)).collect())
        .collect();
    assert_eq!(
        rows.len() as u64,
        checkin["fixed_rate_latency"]["count"]
            .as_u64()
            .expect("count"),
        "{log}"
    );
    assert!(rows.windows(2).all(|w| w[0][0] < w[1][0]), "{log}");
    assert!(
        rows.iter()
            .all(|r| r.len() == 3 && r[1] < 100.0 && r[2] > 0.0),
        "{log}"
    );
    let jobs = &report["jobs"];
    assert!(
        jobs["issue_to_start"]["count"].as_u64().expect("count") > 0,
        "{report}"
    );
    assert!(
        jobs["bulk_results_recorded_secs"].as_f64().is_some(),
        "the bulk job did not complete: {report}"
    );
    assert!(
        jobs["catch_up_secs"].as_f64().is_some(),
        "the catch-up did not complete: {report}"
    );
    assert!(
        jobs["reconnect_after_history_agents_per_sec"]
            .as_f64()
            .expect("rate")
            > 0.0
    );
    // Every simulated agent had a connection of its own, and each storm timed every agent's
    // bind and read nats-server's CPU time.
    assert!(jobs["nats_connections"].is_null(), "{report}");
    for storm in ["reconnect", "reconnect_after_history"] {
        assert_eq!(
            jobs[format!("{storm}_bound")]["count"].as_u64(),
            Some(100),
            "{report}"
        );
        // A hundred agents' storm may take less than a clock tick of nats-server's CPU.
        assert!(
            jobs[format!("{storm}_cpu")]["nats_server"]
                .as_f64()
                .is_some_and(|s| s >= 0.0),
            "{report}"
        );
    }
    let history = &report["history"];
    assert!(
        history["rebuild_timeline_events_per_sec"]
            .as_f64()
            .expect("rate")
            > 0.0
    );
    assert!(
        history["timeline_last_100"]["count"]
            .as_u64()
            .expect("count")
            > 0
    );
    // Every setting ops/postgresql.conf names is one the server knows.
    let settings = report["postgres"]["settings"].as_array().expect("settings");
    assert!(
        settings.iter().any(|s| s["recommended"].is_string()),
        "{report}"
    );
    for setting in settings {
        assert!(
            setting["value"].is_string(),
            "PostgreSQL does not know {setting}"
        );
    }
    // Every setting ops/sysctl.conf names is one the kernel has.
    let kernel = report["kernel"]["settings"]
        .as_array()
        .expect("kernel settings");
    assert!(!kernel.is_empty(), "{report}");
    for setting in kernel {
        assert!(setting["value"].is_string(), "the kernel has no {setting}");
    }
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("PostgreSQL"), "{table}");
    assert!(table.contains("Linux (this host): vm."), "{table}");
    assert!(table.contains("check-ins/s"), "{table}");
    assert!(table.contains("the host then: busy"), "{table}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_path() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("logbook-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
