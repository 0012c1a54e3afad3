//! `checkin`: N simulated agents checking in over HTTP as fast as the gateway takes it, then at
//! a fixed rate; and, in the same run and on the same Postgres, the plain cqrs-es path
//! (`CqrsFramework::execute` with postgres-es, which writes postgres-es's `events` table) and a
//! raw batched `INSERT` into the table the gateway's check-ins go to (`checkins`).
//!
//! Each saturated phase is followed at once by one phase of each comparison path, and each ratio
//! is the median of the ratios of these pairs. The host's speed drifts over minutes (on some
//! hosts every part of the machine took a quarter more CPU per check-in in a run's third phase
//! than in its first, BENCHMARKS.md): measured in two blocks minutes apart, as they once were,
//! the same build's ratio to `execute` came out at 4.5x in one run and 8.1x in the next. The
//! comparison paths write a database of their own, in which the gateway (idle meanwhile) has
//! nothing to read or fold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use futures::{StreamExt, TryStreamExt};
use logbook_domain::checkin::{CheckinReport, CpuInfo, DiskUsage, MemoryInfo, OsInfo};
use logbook_domain::ids::CorrelationId;
use logbook_domain::metadata::{Actor, EventMetadata};
use logbook_proto::agent::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::env::{self, BenchDb, CpuSplit, CpuTimes, Gateway, RealAgent, SimAgent, Targets};
use crate::stats::{Latencies, Summary, median};
use crate::ui;

/// Options of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) agents: usize,
    pub(crate) duration: Duration,
    pub(crate) concurrency: usize,
    pub(crate) rate: u64,
    pub(crate) runs: usize,
    /// Where to write every check-in of the fixed-rate phase (see [`FixedRate::write_log`]).
    pub(crate) latency_log: Option<std::path::PathBuf>,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub(crate) agents: usize,
    pub(crate) runs: usize,
    /// Median over the runs; each run's figure is in `saturated_runs`.
    pub(crate) saturated_per_sec: f64,
    pub(crate) saturated_runs: Vec<f64>,
    /// Over every run's check-ins; each run's own is in `saturated_latency_runs`, so that a
    /// tail can be told apart from one run's bad seconds.
    pub(crate) saturated_latency: Summary,
    pub(crate) saturated_latency_runs: Vec<Summary>,
    pub(crate) fixed_rate_target: u64,
    pub(crate) fixed_rate_achieved: f64,
    pub(crate) fixed_rate_latency: Summary,
    /// The fixed-rate phase second by second (by scheduled start), so that a tail can be placed
    /// in time beside the server's logs (a checkpoint, a writeback burst).
    pub(crate) fixed_rate_by_second: Vec<Summary>,
    /// The host in each of those seconds ([`FixedRate::host_by_second`]).
    pub(crate) fixed_rate_host_by_second: Vec<env::HostInterval>,
    /// When the fixed-rate phase's first check-in was scheduled (UTC).
    pub(crate) fixed_rate_started_at: DateTime<Utc>,
    pub(crate) errors: u64,
    pub(crate) mean_batch: f64,
    pub(crate) mean_flush_ms: f64,
    pub(crate) cqrs_execute_per_sec: f64,
    pub(crate) cqrs_execute_runs: Vec<f64>,
    pub(crate) raw_insert_rows_per_sec: f64,
    pub(crate) raw_insert_runs: Vec<f64>,
    /// The median of `ratio_vs_execute_runs`.
    pub(crate) ratio_vs_execute: f64,
    /// Per run: its saturated phase's check-ins/s over the `execute` phase that followed it.
    pub(crate) ratio_vs_execute_runs: Vec<f64>,
    /// The median of the same ratios to the raw `INSERT`.
    pub(crate) ratio_vs_raw: f64,
    pub(crate) gateway_peak_rss_mib: f64,
    /// The gateway's RSS while every agent holds a connection of its own, as a fleet does
    /// between check-ins when they come more often than the gateway's `http.idle_timeout` (the
    /// phases above use a few hundred), after the phases above.
    pub(crate) gateway_rss_connected_mib: f64,
    /// How many agents' connections were open then.
    pub(crate) connections_held: usize,
    pub(crate) agent_rss_mib: f64,
    pub(crate) agent_peak_rss_mib: f64,
    /// Microseconds of CPU per recorded check-in while saturated (median over the runs): what
    /// limits the rate, measured with less noise than the rate itself.
    pub(crate) cpu_us_per_checkin: CpuSplit,
    pub(crate) cpu_us_per_checkin_runs: Vec<CpuSplit>,
}

/// A realistic report: three disks, two users, three addresses (~600 bytes as JSON).
pub(crate) fn sample_report(hostname: &str, collected_at_ms: i64) -> pb::CheckinReport {
    pb::CheckinReport {
        collected_at_unix_ms: collected_at_ms,
        hostname: hostname.to_string(),
        os: Some(pb::OsInfo {
            family: "linux".into(),
            name: "Debian GNU/Linux".into(),
            version: "12".into(),
            kernel_version: "6.1.0-28-amd64".into(),
            arch: "x86_64".into(),
        }),
        agent_version: "0.1.0".into(),
        uptime_secs: 864_000,
        cpu: Some(pb::CpuInfo {
            logical_cores: 8,
            load_1m: 0.42,
            load_5m: 0.37,
            load_15m: 0.31,
        }),
        memory: Some(pb::MemoryInfo {
            total_bytes: 16 << 30,
            used_bytes: 6 << 30,
            swap_total_bytes: 2 << 30,
            swap_used_bytes: 1 << 20,
        }),
        disks: ["/", "/home", "/var"]
            .iter()
            .map(|m| pb::DiskUsage {
                mount_point: (*m).into(),
                file_system: "ext4".into(),
                total_bytes: 500 << 30,
                used_bytes: 123 << 30,
            })
            .collect(),
        logged_in_users: vec!["alice".into(), "bob".into()],
        ip_addresses: vec![
            "192.0.2.10".into(),
            "10.1.2.3".into(),
            "2001:db8::10".into(),
        ],
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The HTTP/1.1 client of the simulated agents' check-ins. Each request's head (target, host,
/// credential and media types) and report are prepared once per agent and every connection is
/// kept open, so that the load generator, which shares the two cores with the gateway and
/// Postgres, spends as little of them as it can. For the same reason a connection is a plain
/// TCP stream owned by the task that sends on it: the request goes out in one write and the
/// answer is read back in the same task and parsed with `httparse`. (A general-purpose client
/// cost about twice as much per request; hyper's connection-level client passes each request
/// and its answer between two tasks, BENCHMARKS.md.)
pub(crate) struct CheckinClient {
    addr: std::net::SocketAddr,
    /// Per agent: the request's head up to its `content-length` value.
    heads: Vec<Box<[u8]>>,
    /// Per agent: its report, encoded without the collection time (see [`checkin_body`]).
    reports: Vec<Box<[u8]>>,
    /// Open connections not in use (for requests sent from many tasks).
    idle: std::sync::Mutex<Vec<Connection>>,
}

/// One keep-alive connection to the gateway and the buffers its requests reuse.
struct Connection {
    stream: tokio::net::TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
}

/// The most a check-in's answer may take (headers and body); the gateway's are far smaller.
const MAX_RESPONSE: usize = 64 * 1024;

/// What a connection's answer said.
struct Answer {
    status: u16,
    /// Whether the gateway keeps the connection open for the next request.
    keep_alive: bool,
}

impl Connection {
    /// Sends `request` and reads the whole answer.
    async fn exchange(&mut self) -> anyhow::Result<Answer> {
        use tokio::io::AsyncWriteExt;
        // Emptied first, so that a failed write leaves it empty: nothing of an answer was read.
        self.response.clear();
        self.stream.write_all(&self.request).await?;
        let (answer, whole) = loop {
            self.read_more().await?;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.response)? {
                break Self::head(&response, head)?;
            }
        };
        while self.response.len() < whole {
            self.read_more().await?;
        }
        if self.response.len() > whole {
            bail!("the gateway sent more than one answer");
        }
        Ok(answer)
    }

    /// The answer's status and whether the connection stays open, and its whole length from
    /// the head's `head` bytes and its `content-length`.
    fn head(response: &httparse::Response, head: usize) -> anyhow::Result<(Answer, usize)> {
        let status = response.code.context("an answer without a status")?;
        let mut length = None;
        let mut keep_alive = true;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                length = Some(std::str::from_utf8(header.value)?.trim().parse::<usize>()?);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("an answer with a transfer encoding, which this client does not read");
            } else if header.name.eq_ignore_ascii_case("connection") {
                keep_alive &= !header
                    .value
                    .split(|&byte| byte == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
        }
        let whole = head + length.context("an answer without a content-length")?;
        if whole > MAX_RESPONSE {
            bail!("the answer is larger than {MAX_RESPONSE} bytes");
        }
        Ok((Answer { status, keep_alive }, whole))
    }

    /// Reads what the gateway has sent next into `response`.
    async fn read_more(&mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt;
        if self.response.len() >= MAX_RESPONSE {
            bail!("the answer is larger than {MAX_RESPONSE} bytes");
        }
        if self.stream.read_buf(&mut self.response).await? == 0 {
            bail!("the gateway closed the connection before answering in full");
        }
        Ok(())
    }
}

impl CheckinClient {
    pub(crate) fn new(gateway: &Gateway, agents: &[SimAgent]) -> anyhow::Result<Arc<Self>> {
        let authority = gateway
            .base
            .strip_prefix("http://")
            .context("the gateway's address is not http://")?;
        let heads = agents
            .iter()
            .map(|agent| {
                format!(
                    "POST /api/v1/agents/{}/checkins HTTP/1.1\r\nhost: {authority}\r\n\
                     authorization: Bearer {}\r\ncontent-type: {PROTOBUF}\r\n\
                     accept: {PROTOBUF}\r\ncontent-length: ",
                    agent.id, agent.credential
                )
                .into_bytes()
                .into_boxed_slice()
            })
            .collect();
        let reports = (0..agents.len())
            .map(|index| {
                sample_report(&format!("sim-{index:06}"), 0)
                    .encode_to_vec()
                    .into_boxed_slice()
            })
            .collect();
        Ok(Arc::new(Self {
            addr: authority.parse()?,
            heads,
            reports,
            idle: std::sync::Mutex::default(),
        }))
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            request: Vec::with_capacity(2048),
            response: Vec::with_capacity(1024),
        })
    }

    /// Sends one check-in of agent `index` on `connection` (opened first if there is none; left
    /// empty if it broke or the gateway is closing it, so that the next request opens another);
    /// succeeds on `201 Created`. A kept-open connection that the gateway closed while it was
    /// idle fails before any answer is read; the check-in is then sent once more on a new
    /// connection, which is safe because it keeps its id: had the first attempt been recorded
    /// after all, the second is answered `200 OK` as a duplicate, which also counts as done.
    async fn send_on(
        &self,
        connection: &mut Option<Connection>,
        index: usize,
    ) -> anyhow::Result<()> {
        use std::io::Write;
        let (mut open, reused) = match connection.take() {
            Some(open) => (open, true),
            None => (self.connect().await?, false),
        };
        let body = checkin_body(uuid::Uuid::now_v7(), now_ms(), &self.reports[index]);
        open.request.clear();
        open.request.extend_from_slice(&self.heads[index]);
        write!(open.request, "{}\r\n\r\n", body.len())?;
        open.request.extend_from_slice(&body);
        let (answer, resent) = match open.exchange().await {
            Ok(answer) => (answer, false),
            Err(_) if reused && open.response.is_empty() => {
                let mut fresh = self.connect().await?;
                std::mem::swap(&mut fresh.request, &mut open.request);
                open = fresh;
                (open.exchange().await?, true)
            }
            Err(error) => return Err(error),
        };
        if answer.keep_alive {
            *connection = Some(open);
        }
        match answer.status {
            201 => Ok(()),
            200 if resent => Ok(()),
            status => bail!("check-in answered {status}"),
        }
    }

    /// Opens connections until at least `n` are idle, a few at a time: a burst of hundreds of
    /// connects overflows the gateway's accept queue on a busy machine, and each dropped SYN
    /// costs a second (measured: 1.1 s latency maxima), which is not what a check-in costs.
    pub(crate) async fn open(&self, n: usize) -> anyhow::Result<()> {
        let idle = self.idle.lock().map(|idle| idle.len()).unwrap_or(0);
        let opened: Vec<Connection> = futures::stream::iter(idle..n)
            .map(|_| self.connect())
            .buffer_unordered(8)
            .try_collect()
            .await?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.extend(opened);
        }
        Ok(())
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None)
    }

    fn put_idle(&self, connection: Option<Connection>) {
        if let (Some(sender), Ok(mut idle)) = (connection, self.idle.lock()) {
            idle.push(sender);
        }
    }

    /// Sends one check-in of agent `index` on any open connection not in use.
    async fn send(&self, index: usize) -> anyhow::Result<()> {
        let mut connection = self.take_idle();
        let result = self.send_on(&mut connection, index).await;
        self.put_idle(connection);
        result
    }
}

/// A `CheckinRequest` as protobuf, byte for byte what encoding the message would give, from
/// its id, its collection time and the rest of its report already encoded (`report` without
/// `collected_at_unix_ms`, field 1, which protobuf writes first), so that a request costs no
/// report to build and encode.
fn checkin_body(checkin_id: uuid::Uuid, collected_at_ms: i64, report: &[u8]) -> Vec<u8> {
    use prost::bytes::BufMut;
    use prost::encoding::{WireType, encode_key, encode_varint, int64};
    let mut id = uuid::Uuid::encode_buffer();
    let id = checkin_id.hyphenated().encode_lower(&mut id).as_bytes();
    // As protobuf does, a zero time is left out.
    let time_len = if collected_at_ms == 0 {
        0
    } else {
        int64::encoded_len(1, &collected_at_ms)
    };
    let report_len = time_len + report.len();
    let mut body = Vec::with_capacity(8 + id.len() + report_len);
    encode_key(1, WireType::LengthDelimited, &mut body);
    encode_varint(id.len() as u64, &mut body);
    body.put_slice(id);
    encode_key(2, WireType::LengthDelimited, &mut body);
    encode_varint(report_len as u64, &mut body);
    if collected_at_ms != 0 {
        int64::encode(1, &collected_at_ms, &mut body);
    }
    body.put_slice(report);
    body
}

const PROTOBUF: &str = logbook_proto::PROTOBUF_MEDIA_TYPE;

/// As many check-ins as `concurrency` connections can push for `duration`.
pub(crate) async fn saturate(
    client: &Arc<CheckinClient>,
    agents: usize,
    concurrency: usize,
    duration: Duration,
) -> (f64, Latencies, u64) {
    let errors = Arc::new(AtomicU64::new(0));
    if client.open(concurrency).await.is_err() {
        errors.fetch_add(1, Ordering::Relaxed);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let workers = (0..concurrency).map(|w| {
        let client = client.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let mut connection = client.take_idle();
            let mine: Vec<usize> = (w..agents).step_by(concurrency).collect();
            let mut next = 0;
            while Instant::now() < deadline && !mine.is_empty() {
                let i = mine[next % mine.len()];
                next += 1;
                let sent = Instant::now();
                match client.send_on(&mut connection, i).await {
                    Ok(()) => latencies.record(sent.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            client.put_idle(connection);
            latencies
        })
    });
    let mut all = Latencies::default();
    for latencies in futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
    {
        all.extend(latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    (
        all.len() as f64 / elapsed,
        all,
        errors.load(Ordering::Relaxed),
    )
}

/// Check-ins started at a fixed rate; latency counts from the scheduled start, so a stall is
/// not hidden by fewer requests being sent (no coordinated omission).
pub(crate) async fn fixed_rate(
    client: &Arc<CheckinClient>,
    agents: usize,
    rate: u64,
    duration: Duration,
) -> FixedRate {
    let errors = Arc::new(AtomicU64::new(0));
    // Enough open connections for a second of latency at this rate's usual concurrency.
    if client.open(256).await.is_err() {
        errors.fetch_add(1, Ordering::Relaxed);
    }
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = tokio::time::Instant::now();
    let started_at = Utc::now();
    // The host, second by second beside the latencies (see `FixedRate::host_by_second`).
    let host = tokio::spawn(async move {
        let mut seconds = Vec::new();
        let mut earlier = env::HostSample::now();
        let mut tick =
            tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
        // One reading per second that check-ins are scheduled in, as `by_second` has.
        for _ in 0..total.div_ceil(rate).max(1) {
            tick.tick().await;
            let now = env::HostSample::now();
            seconds.push(now.since(&earlier));
            earlier = now;
        }
        seconds
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Answered>();
    for n in 0..total {
        let scheduled = started + interval * n as u32;
        tokio::time::sleep_until(scheduled).await;
        let i = (n as usize) % agents;
        let client = client.clone();
        let errors = errors.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match client.send(i).await {
                Ok(()) => {
                    let _ = tx.send(Answered {
                        n,
                        agent: i,
                        latency: scheduled.elapsed(),
                    });
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    drop(tx);
    let mut seconds: Vec<Latencies> = Vec::new();
    let mut answered = Vec::with_capacity(total as usize);
    while let Some(check_in) = rx.recv().await {
        let second = (check_in.n / rate) as usize;
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Latencies::default);
        }
        seconds[second].record(check_in.latency);
        answered.push(check_in);
    }
    answered.sort_unstable_by_key(|check_in| check_in.n);
    let elapsed = started.elapsed().as_secs_f64();
    let by_second = seconds.iter_mut().map(Latencies::summary).collect();
    let mut latencies = Latencies::default();
    for second in seconds {
        latencies.extend(second);
    }
    FixedRate {
        achieved: latencies.len() as f64 / elapsed,
        latencies,
        by_second,
        host_by_second: host.await.unwrap_or_default(),
        started_at,
        errors: errors.load(Ordering::Relaxed),
        rate,
        answered,
    }
}

/// What a fixed-rate phase measured.
pub(crate) struct FixedRate {
    /// Check-ins answered per second.
    pub(crate) achieved: f64,
    pub(crate) latencies: Latencies,
    /// Each second's latencies, by scheduled start.
    pub(crate) by_second: Vec<Summary>,
    /// The host in each second of the phase: CPU busy, in iowait and stolen by the hypervisor,
    /// the page cache's dirty and writeback sizes. A slow second with steal is the host's.
    pub(crate) host_by_second: Vec<env::HostInterval>,
    /// When the first check-in was scheduled.
    pub(crate) started_at: DateTime<Utc>,
    /// Check-ins that failed.
    pub(crate) errors: u64,
    rate: u64,
    /// Every check-in answered, in the order scheduled.
    answered: Vec<Answered>,
}

/// A check-in of the fixed-rate phase that was answered.
struct Answered {
    /// Its place in the schedule: the phase's `n`th check-in.
    n: u64,
    /// The simulated agent that sent it, by index.
    agent: usize,
    /// From when it was scheduled until it was answered.
    latency: Duration,
}

impl FixedRate {
    /// Writes every answered check-in as a CSV line (when it was scheduled, in ms from the
    /// phase's start, `fixed_rate_started_at` in the report; which agent sent it, by its index;
    /// its latency in ms), in the order they were scheduled. A tail's shape shows there: a stall
    /// of the whole server makes every check-in of one window late whatever its agent, while
    /// something wrong with some agents makes the same agents late each time round.
    pub(crate) fn write_log(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        writeln!(out, "scheduled_ms,agent,latency_ms")?;
        for check_in in &self.answered {
            writeln!(
                out,
                "{:.3},{},{:.3}",
                check_in.n as f64 * 1000.0 / self.rate as f64,
                check_in.agent,
                check_in.latency.as_secs_f64() * 1000.0
            )?;
        }
        out.flush()?;
        Ok(())
    }
}

/// The aggregate a plain cqrs-es design would use: every check-in an event of the agent,
/// recorded by `CqrsFramework::execute` (load, decide, insert, commit).
#[derive(Debug, Default, Serialize, Deserialize)]
struct PlainAgent {
    checkins: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum PlainEvent {
    CheckedIn {
        checkin_id: uuid::Uuid,
        report: CheckinReport,
    },
}

impl DomainEvent for PlainEvent {
    fn event_type(&self) -> String {
        "CheckedIn".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

/// The plain aggregate's only rejection.
#[derive(Debug)]
struct Invalid(String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

impl Aggregate for PlainAgent {
    const TYPE: &'static str = "bench_plain_agent";
    type Command = CheckinReport;
    type Event = PlainEvent;
    type Error = Invalid;
    type Services = ();

    async fn handle(
        &mut self,
        report: CheckinReport,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Invalid> {
        report
            .validate()
            .map_err(|p| Invalid(format!("{} problems", p.len())))?;
        sink.write(
            PlainEvent::CheckedIn {
                checkin_id: uuid::Uuid::now_v7(),
                report,
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, _event: PlainEvent) {
        self.checkins += 1;
    }
}

fn domain_report(i: usize) -> CheckinReport {
    let r = sample_report(&format!("sim-{i:06}"), now_ms());
    let os = r.os.unwrap_or_default();
    let cpu = r.cpu.unwrap_or_default();
    let memory = r.memory.unwrap_or_default();
    CheckinReport {
        collected_at: chrono::Utc::now(),
        hostname: r.hostname,
        os: OsInfo {
            family: os.family,
            name: os.name,
            version: os.version,
            kernel_version: os.kernel_version,
            arch: os.arch,
        },
        agent_version: r.agent_version,
        uptime_secs: r.uptime_secs,
        cpu: CpuInfo {
            logical_cores: cpu.logical_cores,
            load_1m: cpu.load_1m,
            load_5m: cpu.load_5m,
            load_15m: cpu.load_15m,
        },
        memory: MemoryInfo {
            total_bytes: memory.total_bytes,
            used_bytes: memory.used_bytes,
            swap_total_bytes: memory.swap_total_bytes,
            swap_used_bytes: memory.swap_used_bytes,
        },
        disks: r
            .disks
            .into_iter()
            .map(|d| DiskUsage {
                mount_point: d.mount_point,
                file_system: d.file_system,
                total_bytes: d.total_bytes,
                used_bytes: d.used_bytes,
            })
            .collect(),
        logged_in_users: r.logged_in_users,
        ip_addresses: r.ip_addresses,
    }
}

fn metadata(agent: &str) -> std::collections::HashMap<String, String> {
    EventMetadata {
        actor: Actor::Agent(agent.parse().unwrap_or_else(|_| uuid::Uuid::nil().into())),
        correlation_id: CorrelationId::from(uuid::Uuid::now_v7()),
        request_id: "bench".into(),
        recorded_at: chrono::Utc::now(),
    }
    .to_map()
}

/// `CqrsFramework::execute` against `aggregates` aggregates from 16 tasks.
async fn cqrs_execute(pool: &PgPool, aggregates: usize, duration: Duration) -> anyhow::Result<f64> {
    let cqrs = Arc::new(postgres_es::postgres_cqrs::<PlainAgent>(
        pool.clone(),
        Vec::new(),
        (),
    ));
    let ids: Arc<Vec<String>> = Arc::new(
        (0..aggregates)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect(),
    );
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = (0..16).map(|t| {
        let cqrs = cqrs.clone();
        let ids = ids.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut i = t;
            while Instant::now() < deadline {
                let id = &ids[i % ids.len()];
                match cqrs
                    .execute_with_metadata(id, domain_report(i), metadata(id))
                    .await
                {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    // Two tasks on one aggregate: the loser retries, as a caller would.
                    Err(cqrs_es::AggregateError::AggregateConflict) => continue,
                    Err(e) => return Err(anyhow::Error::new(e)),
                }
                i += 16;
            }
            Ok::<_, anyhow::Error>(())
        })
    });
    for task in futures::future::join_all(tasks).await {
        task??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Multi-row `INSERT ... SELECT FROM unnest` of 500 check-ins per statement from 16 tasks, into
/// the table the gateway's check-ins go to (`checkins`), with the same columns, the payload
/// and metadata as the gateway sends them, and nothing else: no authentication, no numbering.
async fn raw_insert(pool: &PgPool, duration: Duration) -> anyhow::Result<f64> {
    const BATCH: usize = 500;
    let report = domain_report(0);
    let payload = serde_json::to_string(&logbook_domain::checkin::CheckinEvent::AgentCheckedIn {
        checkin_id: uuid::Uuid::nil().into(),
        report: report.clone(),
    })?;
    let meta = serde_json::to_string(&metadata("00000000-0000-0000-0000-000000000000"))?;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = (0..16).map(|_| {
        let pool = pool.clone();
        let done = done.clone();
        let payload = payload.clone();
        let meta = meta.clone();
        let report = report.clone();
        tokio::spawn(async move {
            let agent = uuid::Uuid::now_v7();
            let mut next = 1i64;
            while Instant::now() < deadline {
                let sequences: Vec<i64> = (next..next + BATCH as i64).collect();
                let ids: Vec<uuid::Uuid> = (0..BATCH).map(|_| uuid::Uuid::now_v7()).collect();
                let payloads = vec![payload.as_str(); BATCH];
                let metas = vec![meta.as_str(); BATCH];
                next += BATCH as i64;
                sqlx::query(
                    "INSERT INTO checkins (agent_id, sequence, checkin_id, recorded_at, collected_at, hostname, \
                                           os_family, os_name, os_version, kernel_version, arch, agent_version, \
                                           payload, metadata) \
                     SELECT $1, s, id, now(), $2, $3, $4, $5, $6, $7, $8, $9, p, m::json \
                       FROM unnest($10::bigint[], $11::uuid[], $12::text[], $13::text[]) AS i(s, id, p, m)",
                )
                .bind(agent)
                .bind(report.collected_at)
                .bind(&report.hostname)
                .bind(&report.os.family)
                .bind(&report.os.name)
                .bind(&report.os.version)
                .bind(&report.os.kernel_version)
                .bind(&report.os.arch)
                .bind(&report.agent_version)
                .bind(&sequences)
                .bind(&ids)
                .bind(&payloads)
                .bind(&metas)
                .execute(&pool)
                .await?;
                done.fetch_add(BATCH as u64, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        })
    });
    for task in futures::future::join_all(tasks).await {
        task??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Runs the scenario.
pub(crate) async fn run(targets: &Targets, options: &Options) -> anyhow::Result<Results> {
    let db = BenchDb::open(targets, "logbook_bench_checkin", false, false).await?;
    let mut gateway = Gateway::start(&db, targets).await?;
    let bar = ui::bar("enrolling simulated agents");
    let (site_id, agents) = env::enroll_fleet(&gateway, options.agents, &bar).await?;
    bar.finish_and_clear();
    let client = CheckinClient::new(&gateway, &agents)?;
    let real_agent = RealAgent::start(&gateway, &site_id, "5s").await?;

    // Created before the first phase: its migration writes too.
    let compare = BenchDb::open(targets, "logbook_bench_checkin_compare", false, false).await?;
    let mut saturated_runs = Vec::new();
    let mut saturated = Latencies::default();
    let mut saturated_latency_runs = Vec::new();
    let mut errors_a = 0;
    let mut cpu_runs = Vec::new();
    let mut cqrs_execute_runs = Vec::new();
    let mut raw_insert_runs = Vec::new();
    for run in 1..=options.runs {
        warm_up(&client, agents.len(), options.concurrency).await;
        ui::step(&format!(
            "check-ins at saturation for {} (run {run} of {})",
            humantime::format_duration(options.duration),
            options.runs
        ));
        let before = CpuTimes::now(gateway.pid(), &db.name);
        let (rate, mut latencies, errors) =
            saturate(&client, agents.len(), options.concurrency, options.duration).await;
        let cpu = CpuTimes::now(gateway.pid(), &db.name).since(&before);
        cpu_runs.push(cpu.scaled(1e6 / latencies.len().max(1) as f64));
        let summary = latencies.summary();
        ui::step(&format!(
            "{rate:.0} check-ins/s, latency p99 {:.1} ms",
            summary.p99_ms
        ));
        saturated_runs.push(rate);
        saturated_latency_runs.push(summary);
        saturated.extend(latencies);
        errors_a += errors;

        // The read models catch up on the phase's last check-ins before the next path starts.
        tokio::time::sleep(SETTLE).await;
        ui::step(&format!(
            "CqrsFramework::execute into events (run {run} of {})",
            options.runs
        ));
        cqrs_execute_runs.push(
            cqrs_execute(
                &compare.pool,
                10_000.min(options.agents.max(100)),
                options.duration,
            )
            .await
            .context("the CqrsFramework::execute path")?,
        );
        ui::step(&format!(
            "raw batched INSERT into checkins (run {run} of {})",
            options.runs
        ));
        raw_insert_runs.push(
            raw_insert(&compare.pool, options.duration.min(RAW_INSERT_PHASE))
                .await
                .context("the raw INSERT path")?,
        );
    }
    let metrics = gateway.metrics().await.unwrap_or_default();
    if let Some(path) = std::env::var_os("LOGBOOK_BENCH_METRICS_DUMP") {
        let _ = std::fs::write(path, &metrics);
    }
    let mean_batch = histogram_mean(&metrics, "logbook_ingest_batch_size");
    let mean_flush_ms = histogram_mean(&metrics, "logbook_ingest_flush_seconds") * 1000.0;
    ui::step(&format!(
        "mean ingest batch {mean_batch:.0} check-ins, mean flush {mean_flush_ms:.1} ms"
    ));
    warm_up(&client, agents.len(), options.concurrency).await;
    ui::step(&format!("check-ins at {}/s", options.rate));
    let phase = fixed_rate(&client, agents.len(), options.rate, options.duration).await;
    if let Some(path) = &options.latency_log {
        phase.write_log(path)?;
        ui::step(&format!(
            "every check-in of the fixed-rate phase written to {}",
            path.display()
        ));
    }
    let FixedRate {
        achieved: fixed_rate_achieved,
        latencies: mut fixed,
        by_second: fixed_rate_by_second,
        host_by_second: fixed_rate_host_by_second,
        started_at: fixed_rate_started_at,
        errors: errors_b,
        ..
    } = phase;

    let (gateway_peak_rss_mib, _) = env::memory_mib(gateway.pid());
    ui::step(&format!(
        "every agent checks in on a connection of its own and keeps it open ({})",
        agents.len()
    ));
    let held = hold_every_connection(&client, agents.len()).await;
    let connections_held = held.len();
    // The gateway has answered each of them; what it keeps per idle connection is what counts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, gateway_rss_connected_mib) = env::memory_mib(gateway.pid());
    drop(held);
    if connections_held < agents.len() {
        ui::step(&format!(
            "only {connections_held} of {} connections could be opened and used",
            agents.len()
        ));
    }
    let (agent_peak_rss_mib, agent_rss_mib) = real_agent.pid().map_or((0.0, 0.0), env::memory_mib);
    drop(real_agent);
    gateway.remove_streams().await;
    gateway.stop();
    // Dropped only now: `DROP DATABASE` forces an immediate checkpoint and frees gigabytes of
    // files, which a measured phase after it would share its seconds with.
    compare.drop_unless_kept().await;
    db.drop_unless_kept().await;
    let saturated_per_sec = median(&mut saturated_runs.clone());
    let cqrs_execute_per_sec = median(&mut cqrs_execute_runs.clone());
    let raw_insert_rows_per_sec = median(&mut raw_insert_runs.clone());
    let ratio_vs_execute_runs = pair_ratios(&saturated_runs, &cqrs_execute_runs);
    let ratio_vs_raw = median(&mut pair_ratios(&saturated_runs, &raw_insert_runs));
    let cpu_median =
        |part: fn(&CpuSplit) -> f64| median(&mut cpu_runs.iter().map(part).collect::<Vec<_>>());
    let cpu_us_per_checkin = CpuSplit {
        gateway: cpu_median(|c| c.gateway),
        postgres: cpu_median(|c| c.postgres),
        load_generator: cpu_median(|c| c.load_generator),
        machine: cpu_median(|c| c.machine),
    };

    Ok(Results {
        agents: options.agents,
        runs: options.runs,
        saturated_per_sec,
        saturated_runs,
        saturated_latency: saturated.summary(),
        saturated_latency_runs,
        fixed_rate_target: options.rate,
        fixed_rate_achieved,
        fixed_rate_latency: fixed.summary(),
        fixed_rate_by_second,
        fixed_rate_host_by_second,
        fixed_rate_started_at,
        errors: errors_a + errors_b,
        mean_batch,
        mean_flush_ms,
        cqrs_execute_per_sec,
        cqrs_execute_runs,
        raw_insert_rows_per_sec,
        raw_insert_runs,
        ratio_vs_execute: median(&mut ratio_vs_execute_runs.clone()),
        ratio_vs_execute_runs,
        ratio_vs_raw,
        gateway_peak_rss_mib,
        gateway_rss_connected_mib,
        connections_held,
        agent_rss_mib,
        agent_peak_rss_mib,
        cpu_us_per_checkin,
        cpu_us_per_checkin_runs: cpu_runs,
    })
}

/// The longest phase of the raw `INSERT`. A 20-second phase wrote 2.5-2.7 GB of WAL (a
/// saturated check-in phase about 0.5 GB), four fifths of a run's, and set off checkpoints by
/// WAL volume during the run that the check-in phases after it paid for (spread writes, and a
/// whole-page image of every page they first touched after each checkpoint: one leaf of the
/// primary key per agent). Five seconds measure the rate as well and leave the check-ins the
/// checkpoints of their own WAL (BENCHMARKS.md, the twentieth machine).
const RAW_INSERT_PHASE: Duration = Duration::from_secs(5);

/// How long the gateway is left to finish a saturated phase's work (the read models' last
/// windows) before a comparison path is measured beside it.
const SETTLE: Duration = Duration::from_secs(2);

/// One check-in per agent, each on a new connection that is then kept open (32 at a time, so
/// that the gateway's accept queue does not overflow, see [`CheckinClient::open`]); returns
/// the connections the gateway answered and kept open.
async fn hold_every_connection(client: &Arc<CheckinClient>, agents: usize) -> Vec<Connection> {
    futures::stream::iter(0..agents)
        .map(|index| async move {
            let mut connection = None;
            client
                .send_on(&mut connection, index)
                .await
                .ok()
                .and(connection)
        })
        .buffer_unordered(32)
        .filter_map(|connection| async move { connection })
        .collect()
        .await
}

/// Two seconds of saturated check-ins, not measured, before each measured phase: the first
/// opens the connections, and the later ones reopen any the gateway closed while it idled
/// through the comparison paths, so that no measured phase pays for it.
async fn warm_up(client: &Arc<CheckinClient>, agents: usize, concurrency: usize) {
    ui::step("warming up");
    saturate(client, agents, concurrency, Duration::from_secs(2)).await;
}

/// Each run's rate over the comparison path's rate measured right after it.
fn pair_ratios(checkins: &[f64], path: &[f64]) -> Vec<f64> {
    checkins
        .iter()
        .zip(path)
        .map(|(checkins, path)| checkins / path.max(f64::MIN_POSITIVE))
        .collect()
}

/// The mean of a Prometheus histogram in the text exposition.
pub(crate) fn histogram_mean(metrics: &str, name: &str) -> f64 {
    let value = |suffix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}_{suffix}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    value("sum") / value("count").max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_checkin_body_is_the_encoded_request() {
        let id = uuid::Uuid::now_v7();
        for collected_at in [1_764_000_000_000, 1, 0, -5] {
            let report = sample_report("sim-000042", 0).encode_to_vec();
            let expected = pb::CheckinRequest {
                checkin_id: id.to_string(),
                report: Some(sample_report("sim-000042", collected_at)),
            }
            .encode_to_vec();
            assert_eq!(checkin_body(id, collected_at, &report), expected);
        }
    }
}
