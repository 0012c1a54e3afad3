//! `jobs` and `reconnect`: simulated agents that speak the real job protocol over NATS (bind
//! their consumer, claim, publish results, acknowledge), against a real gateway. Each simulated
//! agent has a NATS connection of its own unless `--nats-connections` says how many they share.
//!
//! - single jobs to online agents: time from the API request to the agent's claim being granted;
//! - a bulk job to every agent: time until every agent has it (the message is in the agent's
//!   hands), until every agent's claim was granted, and until every result is recorded;
//! - an offline catch-up: a real `logbook-agent` that was stopped while 1,000 jobs were queued;
//! - reconnect storms: every agent connects at once, binds and drains one waiting job, before and
//!   after hundreds of thousands of jobs have passed through the stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use logbook_proto::agent::v1 as pb;
use logbook_proto::subjects::{JOB_PULL, Names};
use prost::Message;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::env::{self, BenchDb, CpuSplit, CpuTimes, Gateway, RealAgent, SimAgent, Targets};
use crate::stats::{Latencies, Summary};
use crate::ui;

/// Options of the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) agents: usize,
    pub(crate) single_jobs: usize,
    pub(crate) catch_up_jobs: usize,
    pub(crate) history_jobs: usize,
    pub(crate) jobs: bool,
    pub(crate) reconnect: bool,
    /// NATS connections the simulated agents share; `None`: one each, as a real fleet has.
    pub(crate) nats_connections: Option<usize>,
}

/// What they measured.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Results {
    pub(crate) agents: usize,
    pub(crate) issue_to_start: Option<Summary>,
    pub(crate) bulk_queued_secs: Option<f64>,
    pub(crate) bulk_dispatched_half_secs: Option<f64>,
    /// When 90 % and 99 % of the agents had it: a tail of a few agents apart from a slow whole.
    pub(crate) bulk_dispatched_p90_secs: Option<f64>,
    pub(crate) bulk_dispatched_p99_secs: Option<f64>,
    pub(crate) bulk_dispatched_all_secs: Option<f64>,
    pub(crate) bulk_started_all_secs: Option<f64>,
    pub(crate) bulk_results_recorded_secs: Option<f64>,
    pub(crate) catch_up_jobs: usize,
    pub(crate) catch_up_secs: Option<f64>,
    /// The catch-up's jobs as the server saw them: from the agent's start to the first claim
    /// granted, then the median and 90th percentile of the interval between consecutive claims.
    pub(crate) catch_up_first_claim_secs: Option<f64>,
    pub(crate) catch_up_claim_interval_p50_ms: Option<f64>,
    pub(crate) catch_up_claim_interval_p90_ms: Option<f64>,
    pub(crate) reconnect_agents_per_sec: Option<f64>,
    /// Per agent, from the storm's start until its waiting job was acknowledged.
    pub(crate) reconnect_drain: Option<Summary>,
    /// Per agent, from the storm's start until its pull stream was bound (its consumer looked
    /// up and its inbox subscribed; the pulls start as the stream is first read).
    pub(crate) reconnect_bound: Option<Summary>,
    /// CPU seconds the storm cost (until every agent had drained its job).
    pub(crate) reconnect_cpu: Option<StormCpu>,
    /// The local nats-server's resident memory once the storm had drained, every agent still
    /// connected.
    pub(crate) reconnect_nats_server_rss_mib: Option<f64>,
    pub(crate) history_jobs: usize,
    pub(crate) reconnect_after_history_agents_per_sec: Option<f64>,
    pub(crate) reconnect_after_history_drain: Option<Summary>,
    pub(crate) reconnect_after_history_bound: Option<Summary>,
    pub(crate) reconnect_after_history_cpu: Option<StormCpu>,
    pub(crate) reconnect_after_history_nats_server_rss_mib: Option<f64>,
    /// NATS connections the simulated agents shared; `None`: one each.
    pub(crate) nats_connections: Option<usize>,
    pub(crate) gateway_peak_rss_mib: f64,
    pub(crate) agent_rss_mib: f64,
}

/// What a simulated agent does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Claim, "run" (instantly), publish the result, acknowledge: the real protocol.
    Protocol,
    /// Only acknowledge (for pushing volume through the stream).
    AckOnly,
}

/// A received job: which agent, which job id, when the message arrived, and when the claim was
/// granted (for agents that only acknowledge: when the acknowledgement was confirmed).
type Received = (usize, String, Instant, Instant);

/// Binds every agent's consumer and consumes until the returned handle is dropped.
struct Fleet {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Every connection the fleet opened, so that [`Fleet::close`] can fence each and the
    /// connections close when the fleet is dropped.
    clients: Arc<Mutex<Vec<async_nats::Client>>>,
    /// How often an agent's pull stream ended or failed and was bound again.
    rebinds: Arc<AtomicU64>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Fleet {
    /// Disconnects the fleet the way the next phase needs it: once this returns, the server has
    /// handled every pull subscription's unsubscribe, so no request the fleet left waiting on a
    /// consumer can be handed a later message (which would then wait out the ack wait).
    ///
    /// Dropping the connections is not enough: the server notices a closed connection on its own
    /// time, and a job published in between goes to the dead connection's pull request.
    ///
    /// Says how often an agent's pull stream had to be bound again, if it did.
    async fn close(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        // Aborted tasks drop their pull streams, whose subscriptions send their unsubscribes.
        for task in tasks {
            let _ = task.await;
        }
        // A JetStream request on each connection is answered only after the server has read
        // everything sent before it on that connection, the unsubscribes included.
        let clients = std::mem::take(&mut *self.clients.lock().unwrap_or_else(|e| e.into_inner()));
        futures::stream::iter(clients)
            .for_each_concurrent(256, |client| async move {
                let _ = jetstream::new(client).query_account().await;
            })
            .await;
        let rebinds = self.rebinds.load(Ordering::Relaxed);
        if rebinds > 0 {
            ui::step(&format!(
                "{rebinds} pull streams of the simulated agents ended or failed and were bound again"
            ));
        }
    }
}

/// How the simulated agents reach NATS: `connections` shared among them, or, when `None`, one
/// connection each, opened by the agent itself as it starts (a real fleet: every agent
/// connects, then binds).
#[derive(Debug, Clone)]
struct FleetNats {
    url: String,
    connections: Option<usize>,
}

impl FleetNats {
    /// A connection with the real agent's settings (it keeps trying until it is connected, and
    /// reconnects without limit) and a smaller read buffer.
    async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::new()
            // A simulated agent receives messages of a few hundred bytes; the client's default
            // 64 KiB read buffer, ten thousand times over, cost the load generator about half as
            // much CPU again in a fresh process's first reconnect storm (BENCHMARKS.md, the
            // twenty-fourth machine). The buffer grows for a larger message.
            .read_buffer_capacity(4096)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(self.url.as_str())
            .await
    }
}

async fn connect_fleet(
    nats: &FleetNats,
    names: &Names,
    agents: &[SimAgent],
    mode: Mode,
    received: mpsc::UnboundedSender<Received>,
    bound: mpsc::UnboundedSender<(usize, Instant)>,
) -> anyhow::Result<Fleet> {
    let mut shared = Vec::new();
    for _ in 0..nats.connections.unwrap_or(0) {
        shared.push(nats.connect().await?);
    }
    let clients = Arc::new(Mutex::new(shared.clone()));
    let mut tasks = Vec::new();
    let rebinds = Arc::new(AtomicU64::new(0));
    for (i, agent) in agents.iter().enumerate() {
        let shared = (!shared.is_empty()).then(|| shared[i % shared.len()].clone());
        let (nats, names, agent_id, received, bound) = (
            nats.clone(),
            names.clone(),
            agent.id.clone(),
            received.clone(),
            bound.clone(),
        );
        let (rebinds, clients) = (rebinds.clone(), clients.clone());
        tasks.push(tokio::spawn(async move {
            let client = match shared {
                Some(client) => client,
                None => match nats.connect().await {
                    Ok(client) => {
                        clients
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(client.clone());
                        client
                    }
                    // Only a malformed address fails here (a refused connection is retried);
                    // the agent is then never bound, which `wait_bound` and the storm report.
                    Err(_) => return,
                },
            };
            let js = jetstream::new(client.clone());
            let mut bound_before = false;
            // As the real agent does: bind, receive until the pull stream ends or fails (a
            // missed heartbeat, a reconnect), and bind again.
            loop {
                let Some(mut messages) = bind(&js, &names, &agent_id).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                if std::mem::replace(&mut bound_before, true) {
                    rebinds.fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = bound.send((i, Instant::now()));
                }
                while let Some(Ok(message)) = messages.next().await {
                    let at = Instant::now();
                    let job = pb::JobDispatch::decode(message.payload.clone())
                        .map(|d| d.job_id)
                        .unwrap_or_default();
                    let granted_at = match mode {
                        Mode::Protocol => run_job(&client, &js, &names, &agent_id, &job).await,
                        Mode::AckOnly => None,
                    };
                    // Counted once acknowledged: a phase that ends when every job was counted
                    // leaves no message unacknowledged for the next one.
                    let _ = message.double_ack().await;
                    let counted = match mode {
                        Mode::Protocol => granted_at,
                        Mode::AckOnly => Some(Instant::now()),
                    };
                    if let Some(when) = counted {
                        let _ = received.send((i, job, at, when));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    Ok(Fleet {
        tasks,
        clients,
        rebinds,
    })
}

/// The agent's pull stream, with the real agent's settings; `None` while its consumer cannot be
/// had.
async fn bind(
    js: &jetstream::Context,
    names: &Names,
    agent_id: &str,
) -> Option<consumer::pull::Stream> {
    let consumer = js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(
            names.agent_consumer(agent_id),
            names.jobs_stream(agent_id),
        )
        .await
        .ok()?;
    consumer
        .stream()
        .max_messages_per_batch(JOB_PULL.batch)
        .expires(JOB_PULL.expires)
        .heartbeat(JOB_PULL.heartbeat)
        .messages()
        .await
        .ok()
}

/// Claims `job` for the agent and, if the claim is granted, "runs" it (instantly) and publishes
/// its result. Returns when the claim was granted.
async fn run_job(
    client: &async_nats::Client,
    js: &jetstream::Context,
    names: &Names,
    agent_id: &str,
    job: &str,
) -> Option<Instant> {
    let claim = pb::ClaimRequest {
        job_id: job.to_string(),
        attempt: String::new(),
    }
    .encode_to_vec();
    let granted = client
        .request(names.claims(agent_id), claim.into())
        .await
        .ok()
        .and_then(|r| pb::ClaimResponse::decode(r.payload).ok())
        .is_some_and(|r| r.verdict == pb::ClaimVerdict::Run as i32);
    if !granted {
        return None;
    }
    let granted_at = Instant::now();
    let report = pb::JobResultReport {
        job_id: job.to_string(),
        outcome: pb::JobOutcome::Succeeded as i32,
        has_exit_code: true,
        finished_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        ..Default::default()
    };
    let publish = jetstream::message::PublishMessage::build()
        .payload(report.encode_to_vec().into())
        .message_id(names.result_msg_id(job));
    if let Ok(ack) = js.send_publish(names.results(agent_id), publish).await {
        let _ = ack.await;
    }
    Some(granted_at)
}

async fn wait_count<T>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize, timeout: Duration) -> Vec<T> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => got.push(item),
            _ => break,
        }
    }
    got
}

/// Waits until `n` agents have bound their consumers, and fails naming the likely causes if
/// they do not within two minutes: a client that cannot connect keeps trying without an error.
async fn wait_bound(
    rx: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
    n: usize,
) -> anyhow::Result<()> {
    let bound = wait_count(rx, n, Duration::from_secs(120)).await.len();
    anyhow::ensure!(
        bound == n,
        "only {bound} of {n} simulated agents bound their consumers within 120 s: is nats-server \
         reachable, and does its open files limit allow a connection per agent?"
    );
    Ok(())
}

/// Publishes sent before their acknowledgements are awaited.
const PUBLISH_WINDOW: usize = 2048;

/// Runs the scenarios.
pub(crate) async fn run(targets: &Targets, options: &Options) -> anyhow::Result<Results> {
    let db = BenchDb::open(targets, "logbook_bench_jobs", false, false).await?;
    let mut gateway = Gateway::start(&db, targets).await?;
    let bar = ui::bar("enrolling simulated agents");
    let (site_id, agents) = env::enroll_fleet(&gateway, options.agents, &bar).await?;
    bar.finish_and_clear();
    let names = gateway.names();
    let nats = FleetNats {
        url: gateway.nats_url.clone(),
        connections: options.nats_connections,
    };
    let mut results = Results {
        agents: agents.len(),
        nats_connections: options.nats_connections,
        ..Default::default()
    };

    if options.jobs {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (bound_tx, mut bound_rx) = mpsc::unbounded_channel();
        let fleet = connect_fleet(&nats, &names, &agents, Mode::Protocol, tx, bound_tx).await?;
        wait_bound(&mut bound_rx, agents.len()).await?;

        ui::step(&format!(
            "{} single jobs to online agents",
            options.single_jobs
        ));
        let issued: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
        let mut latencies = Latencies::default();
        for n in 0..options.single_jobs {
            let i = (n * 7919) % agents.len();
            issued
                .lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .insert(i, Instant::now());
            gateway
                .admin(
                    reqwest::Method::POST,
                    &format!("/api/v1/agents/{}/jobs", agents[i].id),
                    Some(json!({"command": "true"})),
                )
                .await?;
            if let Some((agent, _, _, at)) =
                wait_count(&mut rx, 1, Duration::from_secs(10)).await.pop()
                && let Some(start) = issued
                    .lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .remove(&agent)
            {
                latencies.record(at - start);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        results.issue_to_start = Some(latencies.summary());

        ui::step(&format!("a bulk job to all {} agents", agents.len()));
        let started = Instant::now();
        let bulk = gateway
            .admin(
                reqwest::Method::POST,
                "/api/v1/jobs",
                Some(json!({"target": {"all": true}, "command": "true"})),
            )
            .await?;
        results.bulk_queued_secs = Some(started.elapsed().as_secs_f64());
        let bulk_id = bulk["id"].as_str().context("bulk id")?.to_string();
        let got = wait_count(&mut rx, agents.len(), Duration::from_secs(300)).await;
        let mut arrivals: Vec<f64> = got
            .iter()
            .map(|(_, _, at, _)| (*at - started).as_secs_f64())
            .collect();
        arrivals.sort_by(f64::total_cmp);
        let share = |q: f64| {
            arrivals
                .get(((arrivals.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        results.bulk_dispatched_half_secs = share(0.5);
        results.bulk_dispatched_p90_secs = share(0.9);
        results.bulk_dispatched_p99_secs = share(0.99);
        results.bulk_dispatched_all_secs = arrivals.last().copied();
        if let (Some(half), Some(p90), Some(p99), Some(all)) = (
            results.bulk_dispatched_half_secs,
            results.bulk_dispatched_p90_secs,
            results.bulk_dispatched_p99_secs,
            results.bulk_dispatched_all_secs,
        ) {
            ui::step(&format!(
                "agents that have the bulk job: half at {half:.2} s, 90 % at {p90:.2} s, \
                 99 % at {p99:.2} s, all at {all:.2} s"
            ));
        }
        results.bulk_started_all_secs = got
            .iter()
            .map(|(_, _, _, at)| (*at - started).as_secs_f64())
            .reduce(f64::max);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let summary = gateway
                .admin(
                    reqwest::Method::GET,
                    &format!("/api/v1/jobs/{bulk_id}"),
                    None,
                )
                .await
                .unwrap_or_default();
            if summary["counts"]["succeeded"].as_u64() == Some(agents.len() as u64) {
                results.bulk_results_recorded_secs = Some(started.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fleet.close().await;

        ui::step(&format!(
            "offline catch-up: {} jobs queued for a stopped agent",
            options.catch_up_jobs
        ));
        let real = RealAgent::enroll_only(&gateway, &site_id).await?;
        let path = format!("/api/v1/agents/{}/jobs", real.id);
        let queue = futures::stream::iter(0..options.catch_up_jobs)
            .map(|_| {
                gateway.admin(
                    reqwest::Method::POST,
                    &path,
                    Some(json!({"command": "true"})),
                )
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        // Jobs run in queue order, so the catch-up is over when the last one is recorded; the
        // clock polls only that one (polling the whole list would load the machine it measures).
        let mut last: Option<(u64, String)> = None;
        for queued in queue {
            let queued = queued?;
            let seq = queued["agent_seq"].as_u64().context("agent_seq")?;
            let id = queued["id"].as_str().context("job id")?.to_string();
            if last.as_ref().is_none_or(|(s, _)| seq > *s) {
                last = Some((seq, id));
            }
        }
        let (_, last_job) = last.context("no job queued")?;
        let mut real = real;
        let started = Instant::now();
        real.run("60s")?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let job = gateway
                .admin(
                    reqwest::Method::GET,
                    &format!("/api/v1/jobs/{last_job}"),
                    None,
                )
                .await
                .unwrap_or_default();
            if job["status"] == "succeeded" {
                let elapsed = started.elapsed().as_secs_f64();
                let page = gateway
                    .admin(
                        reqwest::Method::GET,
                        &format!(
                            "/api/v1/agents/{}/jobs?status=succeeded&limit=1000",
                            real.id
                        ),
                        None,
                    )
                    .await?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                let succeeded = items.len();
                let mut starts: Vec<(u64, chrono::DateTime<chrono::Utc>)> = items
                    .iter()
                    .filter_map(|job| {
                        Some((
                            job["agent_seq"].as_u64()?,
                            job["started_at"].as_str()?.parse().ok()?,
                        ))
                    })
                    .collect();
                starts.sort();
                let mut intervals: Vec<f64> = starts
                    .windows(2)
                    .map(|w| (w[1].1 - w[0].1).as_seconds_f64() * 1000.0)
                    .collect();
                intervals.sort_by(f64::total_cmp);
                let at = |q: f64| {
                    intervals
                        .get(((intervals.len() as f64 - 1.0) * q).round() as usize)
                        .copied()
                };
                results.catch_up_claim_interval_p50_ms = at(0.5);
                results.catch_up_claim_interval_p90_ms = at(0.9);
                if let Some((_, first)) = starts.first() {
                    let finished_ago = (chrono::Utc::now() - *first).as_seconds_f64();
                    results.catch_up_first_claim_secs =
                        Some(started.elapsed().as_secs_f64() - finished_ago);
                }
                anyhow::ensure!(
                    succeeded >= options.catch_up_jobs.min(1000),
                    "the last queued job succeeded but only {succeeded} of {} did",
                    options.catch_up_jobs
                );
                results.catch_up_secs = Some(elapsed);
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        results.catch_up_jobs = options.catch_up_jobs;
        results.agent_rss_mib = real.pid().map_or(0.0, |pid| env::memory_mib(pid).1);
    }

    if options.reconnect {
        let storm = reconnect_storm(&gateway, &nats, &names, &agents).await?;
        results.reconnect_agents_per_sec = Some(storm.agents_per_sec);
        results.reconnect_drain = Some(storm.drained);
        results.reconnect_bound = Some(storm.bound);
        results.reconnect_cpu = Some(storm.cpu);
        results.reconnect_nats_server_rss_mib = storm.nats_server_rss_mib;
        ui::step(&format!(
            "pushing {} jobs through the stream",
            options.history_jobs
        ));
        push_history(&gateway, &nats, &names, &agents, options.history_jobs).await?;
        results.history_jobs = options.history_jobs;
        let storm = reconnect_storm(&gateway, &nats, &names, &agents).await?;
        results.reconnect_after_history_agents_per_sec = Some(storm.agents_per_sec);
        results.reconnect_after_history_drain = Some(storm.drained);
        results.reconnect_after_history_bound = Some(storm.bound);
        results.reconnect_after_history_cpu = Some(storm.cpu);
        results.reconnect_after_history_nats_server_rss_mib = storm.nats_server_rss_mib;
    }

    results.gateway_peak_rss_mib = env::memory_mib(gateway.pid()).0;
    gateway.remove_streams().await;
    gateway.stop();
    db.drop_unless_kept().await;
    Ok(results)
}

/// CPU seconds a reconnect storm cost: split as a check-in's is, and every local nats-server's.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct StormCpu {
    #[serde(flatten)]
    pub(crate) split: CpuSplit,
    /// `None` when no local nats-server was found (a remote one is not measured).
    pub(crate) nats_server: Option<f64>,
}

/// What a reconnect storm measured.
struct Storm {
    agents_per_sec: f64,
    cpu: StormCpu,
    /// nats-server's resident memory once every agent had drained, all still connected.
    nats_server_rss_mib: Option<f64>,
    /// Per agent, from the storm's start until its pull stream was bound.
    bound: Summary,
    /// Per agent, from the storm's start until its job was acknowledged.
    drained: Summary,
}

/// One waiting job per agent, then every agent connects at once, binds and drains it.
async fn reconnect_storm(
    gateway: &Gateway,
    nats: &FleetNats,
    names: &Names,
    agents: &[SimAgent],
) -> anyhow::Result<Storm> {
    let client = async_nats::connect(gateway.nats_url.as_str()).await?;
    let js = jetstream::new(client);
    // In windows: the JetStream context holds at most 5,000 unacknowledged publishes, and a
    // publish waits for room that only awaiting earlier acknowledgements makes.
    for window in agents.chunks(PUBLISH_WINDOW) {
        let mut acks = Vec::with_capacity(window.len());
        for agent in window {
            acks.push(js.publish(names.jobs(&agent.id), "wake".into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    ui::step(&format!("reconnect storm: {} agents at once", agents.len()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (bound_tx, mut bound_rx) = mpsc::unbounded_channel();
    let cpu_before = CpuTimes::now(gateway.pid(), &gateway.database);
    let nats_server_before = env::nats_server_cpu_seconds();
    let started = Instant::now();
    let fleet = connect_fleet(nats, names, agents, Mode::AckOnly, tx, bound_tx).await?;
    let drained = wait_count(&mut rx, agents.len(), Duration::from_secs(300)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = StormCpu {
        split: CpuTimes::now(gateway.pid(), &gateway.database).since(&cpu_before),
        nats_server: env::nats_server_cpu_seconds()
            .zip(nats_server_before)
            .map(|(now, before)| now - before),
    };
    let nats_server_rss_mib = env::nats_server_rss_mib();
    fleet.close().await;
    let mut bound = Latencies::default();
    while let Ok((_, at)) = bound_rx.try_recv() {
        bound.record(at - started);
    }
    let mut per_agent = Latencies::default();
    for (_, _, _, acked) in &drained {
        per_agent.record(*acked - started);
    }
    anyhow::ensure!(
        drained.len() == agents.len(),
        "only {} of {} agents drained",
        drained.len(),
        agents.len()
    );
    let rate = agents.len() as f64 / elapsed;
    let (bound, drained) = (bound.summary(), per_agent.summary());
    ui::step(&format!(
        "{rate:.0} agents/s; per agent bound p50 {:.0} ms, slowest {:.0} ms; drained p50 {:.0} \
         ms, slowest {:.0} ms; CPU s: nats-server {}, load generator {:.2}, gateway {:.2}, \
         machine {:.2}; nats-server RSS {} MiB",
        bound.p50_ms,
        bound.max_ms,
        drained.p50_ms,
        drained.max_ms,
        cpu.nats_server.map_or("n/a".into(), |s| format!("{s:.2}")),
        cpu.split.load_generator,
        cpu.split.gateway,
        cpu.split.machine,
        nats_server_rss_mib.map_or("n/a".into(), |m| format!("{m:.0}"))
    ));
    Ok(Storm {
        agents_per_sec: rate,
        cpu,
        nats_server_rss_mib,
        bound,
        drained,
    })
}

/// Publishes `total` jobs spread over the agents' subjects and lets the agents consume them.
async fn push_history(
    gateway: &Gateway,
    nats: &FleetNats,
    names: &Names,
    agents: &[SimAgent],
    total: usize,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (bound_tx, mut bound_rx) = mpsc::unbounded_channel();
    let fleet = connect_fleet(nats, names, agents, Mode::AckOnly, tx, bound_tx).await?;
    wait_bound(&mut bound_rx, agents.len()).await?;
    let client = async_nats::connect(gateway.nats_url.as_str()).await?;
    let js = jetstream::new(client);
    let bar = ui::bar("jobs through the stream");
    bar.set_length(total as u64);
    let mut sent = 0;
    while sent < total {
        let chunk = (total - sent).min(PUBLISH_WINDOW);
        let mut acks = Vec::with_capacity(chunk);
        for n in sent..sent + chunk {
            acks.push(
                js.publish(names.jobs(&agents[n % agents.len()].id), "history".into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        sent += chunk;
        // Consumption runs alongside; keep the backlog bounded.
        let _ = wait_count(&mut rx, chunk, Duration::from_secs(120)).await;
        bar.set_position(sent as u64);
    }
    bar.finish_and_clear();
    fleet.close().await;
    Ok(())
}
