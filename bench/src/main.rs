//! `logbook-bench`: measures Logbook on the machine it runs on, against the running Postgres and
//! NATS, with simulated agents and a real `logbook serve` process. Prints a table, writes JSON.
//!
//! Every scenario creates its own database (and NATS names) and removes it afterwards; nothing
//! has to be started by hand. Build everything in release mode first (`ops/dev/bench.sh` does).

mod env;
mod scenarios;
mod stats;
mod ui;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Serialize;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure Logbook: check-in throughput and latency, job delivery, reconnect storms, projection
/// rebuilds and history queries, with the targets each figure is held to.
#[derive(Debug, Parser)]
#[command(name = "logbook-bench", version)]
struct Cli {
    /// Scenarios to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "checkin")]
    scenario: Vec<Scenario>,
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Length of each measured phase (the raw batched INSERT's: at most 5 s).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Requests in flight during the saturation phase.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Check-ins per second in the fixed-rate phase.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Repetitions of each measured phase; the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A small, quick run (100 agents, 1 s phases, one run) that checks the harness works.
    #[arg(long)]
    smoke: bool,
    /// Events in the log for the projections and history scenarios.
    #[arg(long, default_value_t = 10_000_000)]
    history_events: u64,
    /// Jobs pushed through the stream before the second reconnect storm.
    #[arg(long, default_value_t = 600_000)]
    stream_history_jobs: usize,
    /// NATS connections the jobs and reconnect scenarios' simulated agents share. By default
    /// every simulated agent opens one of its own, as every agent of a real fleet does, and a
    /// reconnect storm opens them all at once; a few shared connections measure nats-server
    /// without that per-connection work.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    nats_connections: Option<u64>,
    /// Keep the generated history database and reuse it next time (it takes minutes to write).
    #[arg(long)]
    reuse: bool,
    /// Postgres URL with the right to create databases.
    #[arg(
        long,
        env = "LOGBOOK_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// NATS URL.
    #[arg(
        long,
        env = "LOGBOOK_BENCH_NATS",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Also write every check-in of the check-in scenario's fixed-rate phase to this CSV file
    /// (when it was scheduled, in ms from the phase's start; its agent; its latency), to see
    /// whether a tail is the whole server stalling or some agents being slow.
    #[arg(long)]
    latency_log: Option<PathBuf>,
    /// Gateway settings to try, as section.key=value (for example ingest.max_batch=1000 or
    /// projections.enabled=false); passed as LOGBOOK_SECTION__KEY.
    #[arg(long = "set", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected section.key=value, got {text:?}"))?;
    let (section, field) = key
        .split_once('.')
        .ok_or_else(|| format!("expected section.key=value, got {text:?}"))?;
    Ok((
        format!(
            "LOGBOOK_{}__{}",
            section.to_ascii_uppercase(),
            field.to_ascii_uppercase()
        ),
        value.to_string(),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    Checkin,
    Jobs,
    Reconnect,
    Projections,
    History,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    machine: String,
    postgres: env::ServerSettings,
    kernel: env::KernelSettings,
    checkin: Option<scenarios::checkin::Results>,
    history: Option<scenarios::history::Results>,
    jobs: Option<scenarios::jobs::Results>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024 / 1024);
    format!("{cores} cores ({cpu}), {mem} GiB")
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.smoke {
        cli.agents = 100;
        cli.runs = 1;
        cli.duration = Duration::from_secs(1);
        cli.concurrency = 16;
        cli.rate = 200;
        cli.history_events = 5_000;
        cli.stream_history_jobs = 1_000;
    }
    // A connection per simulated agent: HTTP in the check-in scenario's last phase (the gateway
    // it starts inherits the limit), NATS in the jobs and reconnect scenarios.
    if cli
        .scenario
        .iter()
        .any(|s| matches!(s, Scenario::Checkin | Scenario::Jobs | Scenario::Reconnect))
    {
        let needed = cli.agents as u64 + 256;
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            // Where the limit may not be changed, the one in force may still do.
            Err(_) => {
                rlimit::Resource::NOFILE
                    .get()
                    .context("reading the open files limit")?
                    .0
            }
        };
        anyhow::ensure!(
            limit >= needed,
            "--agents {} needs about {needed} open files (a connection per simulated agent), \
             and this process may open only {limit}: raise the hard limit (as root: ulimit -Hn \
             {needed}; or LimitNOFILE), or simulate fewer agents",
            cli.agents
        );
    }
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let targets = env::Targets {
            postgres: cli.postgres.clone(),
            nats: cli.nats.clone(),
            settings: cli.settings.clone(),
        };
        let mut report = Report {
            machine: machine(),
            postgres: env::ServerSettings::read(&targets).await?,
            kernel: env::KernelSettings::read(),
            ..Default::default()
        };
        let work = async {
            for scenario in &cli.scenario {
                match scenario {
                    Scenario::Checkin => {
                        let options = scenarios::checkin::Options {
                            agents: cli.agents,
                            duration: cli.duration,
                            concurrency: cli.concurrency,
                            rate: cli.rate,
                            runs: cli.runs.max(1),
                            latency_log: cli.latency_log.clone(),
                        };
                        report.checkin = Some(scenarios::checkin::run(&targets, &options).await?);
                    }
                    Scenario::Jobs | Scenario::Reconnect => {
                        if report.jobs.is_none() {
                            let options = scenarios::jobs::Options {
                                agents: cli.agents,
                                single_jobs: if cli.smoke { 10 } else { 200 },
                                catch_up_jobs: if cli.smoke { 20 } else { 1000 },
                                history_jobs: cli.stream_history_jobs,
                                jobs: cli.scenario.contains(&Scenario::Jobs),
                                reconnect: cli.scenario.contains(&Scenario::Reconnect),
                                nats_connections: cli.nats_connections.map(|n| n as usize),
                            };
                            report.jobs = Some(scenarios::jobs::run(&targets, &options).await?);
                        }
                    }
                    Scenario::Projections | Scenario::History => {
                        if report.history.is_none() {
                            let options = scenarios::history::Options {
                                agents: cli.agents,
                                events: cli.history_events,
                                reuse: cli.reuse,
                                lag_rate: cli.rate,
                                duration: cli.duration,
                                queries: if cli.smoke { 20 } else { 200 },
                            };
                            report.history =
                                Some(scenarios::history::run(&targets, &options).await?);
                        }
                    }
                }
            }
            anyhow::Ok(())
        };
        // Interrupted, the scenario is dropped: its gateway and agents are stopped and its
        // streams deleted (thousands of consumers left on the nats-server would slow every
        // later run down).
        tokio::select! {
            done = work => done?,
            signal = interrupted() => anyhow::bail!("interrupted by {signal}; cleaned up"),
        }
        print_table(&report);
        std::fs::write(&cli.out, serde_json::to_string_pretty(&report)?)?;
        eprintln!("results written to {}", cli.out.display());
        Ok(())
    })
}

/// Waits for Ctrl-C or SIGTERM and names it.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

fn row(what: &str, value: String, target: &str, ok: Option<bool>) {
    let verdict = match ok {
        Some(true) => "ok",
        Some(false) => "MISSED",
        None => "",
    };
    println!("| {what:<48} | {value:>18} | {target:<16} | {verdict:<6} |");
}

/// A reconnect storm's per-agent times until bound and until drained.
fn storm_rows(
    bound: Option<&stats::Summary>,
    drain: Option<&stats::Summary>,
    cpu: Option<&scenarios::jobs::StormCpu>,
    nats_server_rss_mib: Option<f64>,
) {
    for (what, summary) in [("bound", bound), ("drained", drain)] {
        if let Some(s) = summary {
            row(
                &format!("  per agent, until {what}: p50 / p99 / max (ms)"),
                format!("{:.0} / {:.0} / {:.0}", s.p50_ms, s.p99_ms, s.max_ms),
                "",
                None,
            );
        }
    }
    if let Some(c) = cpu {
        row(
            "  CPU s: nats-server / load gen / gateway / machine",
            format!(
                "{} / {:.1} / {:.1} / {:.1}",
                c.nats_server.map_or("n/a".into(), |s| format!("{s:.1}")),
                c.split.load_generator,
                c.split.gateway,
                c.split.machine
            ),
            "",
            None,
        );
    }
    if let Some(mib) = nats_server_rss_mib {
        row(
            "  nats-server RSS, every agent connected (MiB)",
            format!("{mib:.0}"),
            "",
            None,
        );
    }
}

fn print_table(report: &Report) {
    println!(
        "\nLogbook benchmark on {}\n{}\n{}\n",
        report.machine,
        report.postgres.describe(),
        report.kernel.describe()
    );
    println!(
        "| {:<48} | {:>18} | {:<16} | {:<6} |",
        "measure", "value", "target", ""
    );
    println!("|{:-<50}|{:-<20}|{:-<18}|{:-<8}|", "", "", "", "");
    if let Some(c) = &report.checkin {
        row(
            &format!(
                "check-ins/s, saturated ({} agents, median of {})",
                c.agents, c.runs
            ),
            format!("{:.0}", c.saturated_per_sec),
            ">= 20000",
            Some(c.saturated_per_sec >= 20_000.0),
        );
        row(
            "  latency p50 / p99 / max (ms)",
            format!(
                "{:.1} / {:.1} / {:.0}",
                c.saturated_latency.p50_ms, c.saturated_latency.p99_ms, c.saturated_latency.max_ms
            ),
            "p99 <= 50",
            Some(c.saturated_latency.p99_ms <= 50.0),
        );
        row(
            &format!("check-ins at a fixed {}/s: achieved", c.fixed_rate_target),
            format!("{:.0}", c.fixed_rate_achieved),
            "",
            None,
        );
        row(
            "  latency p50 / p99 / max (ms)",
            format!(
                "{:.1} / {:.1} / {:.0}",
                c.fixed_rate_latency.p50_ms,
                c.fixed_rate_latency.p99_ms,
                c.fixed_rate_latency.max_ms
            ),
            "p99 <= 50",
            Some(c.fixed_rate_latency.p99_ms <= 50.0),
        );
        // Of the seconds that ran at least half the rate (a last, partial second is too few
        // check-ins for its p99 to mean anything).
        if let Some((second, slowest)) = c
            .fixed_rate_by_second
            .iter()
            .enumerate()
            .filter(|(_, s)| s.count as u64 >= c.fixed_rate_target / 2)
            .max_by(|a, b| a.1.p99_ms.total_cmp(&b.1.p99_ms))
        {
            let at = c.fixed_rate_started_at + chrono::Duration::seconds(second as i64);
            row(
                "  slowest second (UTC): p99 / max (ms)",
                format!(
                    "{}: {:.1} / {:.0}",
                    at.format("%H:%M:%S"),
                    slowest.p99_ms,
                    slowest.max_ms
                ),
                "",
                None,
            );
            if let Some(host) = c.fixed_rate_host_by_second.get(second) {
                row(
                    "    the host then: busy / iowait / steal (%)",
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        host.busy_pct, host.iowait_pct, host.steal_pct
                    ),
                    "",
                    None,
                );
                row(
                    "    page cache dirty / writeback (MiB)",
                    format!("{:.0} / {:.0}", host.dirty_mib, host.writeback_mib),
                    "",
                    None,
                );
            }
        }
        row(
            "CqrsFramework::execute commands/s (same run)",
            format!("{:.0}", c.cqrs_execute_per_sec),
            "",
            None,
        );
        row(
            "raw batched INSERT rows/s (same run)",
            format!("{:.0}", c.raw_insert_rows_per_sec),
            "",
            None,
        );
        row(
            "ratio: check-ins / execute (median of pairs)",
            format!("{:.1}x", c.ratio_vs_execute),
            ">= 6x",
            Some(c.ratio_vs_execute >= 6.0),
        );
        row(
            "ratio: check-ins / raw INSERT (median of pairs)",
            format!("{:.2}", c.ratio_vs_raw),
            "",
            None,
        );
        row(
            "CPU µs per check-in: gateway / Postgres / load gen",
            format!(
                "{:.0} / {:.0} / {:.0}",
                c.cpu_us_per_checkin.gateway,
                c.cpu_us_per_checkin.postgres,
                c.cpu_us_per_checkin.load_generator
            ),
            "",
            None,
        );
        row(
            "  the whole machine (µs per check-in)",
            format!("{:.0}", c.cpu_us_per_checkin.machine),
            "",
            None,
        );
        row(
            "failed requests",
            c.errors.to_string(),
            "0",
            Some(c.errors == 0),
        );
        row(
            "gateway peak RSS (MiB)",
            format!("{:.0}", c.gateway_peak_rss_mib),
            "< 300",
            Some(c.gateway_peak_rss_mib < 300.0),
        );
        row(
            &format!(
                "gateway RSS, {} agents' connections open (MiB)",
                c.connections_held
            ),
            format!("{:.0}", c.gateway_rss_connected_mib),
            "< 300",
            Some(c.gateway_rss_connected_mib < 300.0 && c.connections_held == c.agents),
        );
        row(
            "agent RSS idle / peak (MiB)",
            format!("{:.1} / {:.1}", c.agent_rss_mib, c.agent_peak_rss_mib),
            "< 20",
            Some(c.agent_rss_mib < 20.0),
        );
    }
    if let Some(j) = &report.jobs {
        row(
            "simulated agents' NATS connections",
            j.nats_connections
                .map_or("one each".to_string(), |n| format!("{n} shared")),
            "",
            None,
        );
        if let Some(l) = &j.issue_to_start {
            row(
                "job issue-to-start, online agent p50 / p99 (ms)",
                format!("{:.1} / {:.1}", l.p50_ms, l.p99_ms),
                "p99 <= 100",
                Some(l.p99_ms <= 100.0),
            );
        }
        if let (Some(queued), Some(half)) = (j.bulk_queued_secs, j.bulk_dispatched_half_secs) {
            row(
                "bulk job: queued (API answered) / half have it (s)",
                format!("{queued:.2} / {half:.2}"),
                "",
                None,
            );
        }
        if let Some(secs) = j.bulk_dispatched_all_secs {
            row(
                &format!("bulk job to {} agents: all have it (s)", j.agents),
                format!("{secs:.2}"),
                "<= 5",
                Some(secs <= 5.0),
            );
        }
        if let Some(secs) = j.bulk_started_all_secs {
            row(
                "bulk job: every agent's claim granted (s)",
                format!("{secs:.2}"),
                "",
                None,
            );
        }
        if let Some(secs) = j.bulk_results_recorded_secs {
            row(
                "bulk job: every result recorded (s)",
                format!("{secs:.2}"),
                "",
                None,
            );
        }
        if let Some(secs) = j.catch_up_secs {
            row(
                &format!(
                    "offline catch-up of {} jobs, real agent (s)",
                    j.catch_up_jobs
                ),
                format!("{secs:.2}"),
                "<= 5",
                Some(secs <= 5.0),
            );
        }
        if let (Some(first), Some(p50), Some(p90)) = (
            j.catch_up_first_claim_secs,
            j.catch_up_claim_interval_p50_ms,
            j.catch_up_claim_interval_p90_ms,
        ) {
            row(
                "catch-up: first claim (s) / claim interval p50, p90 (ms)",
                format!("{first:.2} / {p50:.2}, {p90:.2}"),
                "",
                None,
            );
        }
        if let Some(rate) = j.reconnect_agents_per_sec {
            row(
                &format!("reconnect storm, {} agents: agents/s", j.agents),
                format!("{rate:.0}"),
                ">= 2000",
                Some(rate >= 2000.0),
            );
        }
        storm_rows(
            j.reconnect_bound.as_ref(),
            j.reconnect_drain.as_ref(),
            j.reconnect_cpu.as_ref(),
            j.reconnect_nats_server_rss_mib,
        );
        if let Some(rate) = j.reconnect_after_history_agents_per_sec {
            row(
                &format!("  again after {} jobs through the stream", j.history_jobs),
                format!("{rate:.0}"),
                ">= 2000",
                Some(rate >= 2000.0),
            );
        }
        storm_rows(
            j.reconnect_after_history_bound.as_ref(),
            j.reconnect_after_history_drain.as_ref(),
            j.reconnect_after_history_cpu.as_ref(),
            j.reconnect_after_history_nats_server_rss_mib,
        );
        row(
            "gateway peak RSS (MiB)",
            format!("{:.0}", j.gateway_peak_rss_mib),
            "< 300",
            Some(j.gateway_peak_rss_mib < 300.0),
        );
        if j.agent_rss_mib > 0.0 {
            row(
                "agent RSS after catch-up (MiB)",
                format!("{:.1}", j.agent_rss_mib),
                "< 20",
                Some(j.agent_rss_mib < 20.0),
            );
        }
    }
    if let Some(h) = &report.history {
        row(
            &format!("rebuild agent list ({} events), events/s", h.events_in_log),
            format!("{:.0}", h.rebuild_fleet_events_per_sec),
            ">= 100000",
            Some(h.rebuild_fleet_events_per_sec >= 100_000.0),
        );
        row(
            "rebuild timeline, events/s",
            format!("{:.0}", h.rebuild_timeline_events_per_sec),
            ">= 100000",
            Some(h.rebuild_timeline_events_per_sec >= 100_000.0),
        );
        row(
            &format!(
                "agent list lag at {} check-ins/s, p50 / p99 (ms, bucket)",
                h.live_lag_rate
            ),
            format!("<= {:.0} / <= {:.0}", h.live_lag_p50_ms, h.live_lag_p99_ms),
            "p99 <= 100",
            Some(h.live_lag_p99_ms <= 100.0),
        );
        row(
            "timeline, last 100 entries p50 / p99 (ms)",
            format!(
                "{:.1} / {:.1}",
                h.timeline_last_100.p50_ms, h.timeline_last_100.p99_ms
            ),
            "p99 <= 20",
            Some(h.timeline_last_100.p99_ms <= 20.0),
        );
        row(
            "agent list, first page p50 / p99 (ms)",
            format!(
                "{:.1} / {:.1}",
                h.agent_list_first_page.p50_ms, h.agent_list_first_page.p99_ms
            ),
            "p99 <= 20",
            Some(h.agent_list_first_page.p99_ms <= 20.0),
        );
        row(
            "gateway peak RSS (MiB)",
            format!("{:.0}", h.gateway_peak_rss_mib),
            "< 300",
            Some(h.gateway_peak_rss_mib < 300.0),
        );
    }
}
