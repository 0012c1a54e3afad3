//! The environment a benchmark runs in: its own database on the running Postgres, a real
//! `logbook serve` process, simulated agents enrolled through the API, and one real agent.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use logbook_proto::agent::v1 as pb;
use prost::Message;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};

/// Where the benchmark connects.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    /// A Postgres URL with the right to create databases (its database part is ignored).
    pub(crate) postgres: String,
    /// The NATS server.
    pub(crate) nats: String,
    /// Extra gateway settings (`LOGBOOK_*` variables) for every gateway the run starts.
    pub(crate) settings: Vec<(String, String)>,
}

/// The server settings Logbook recommends (`ops/postgresql.conf`), each value written the way
/// `current_setting` shows it, so that the two compare as text.
const RECOMMENDED_SETTINGS: &str = include_str!("../../ops/postgresql.conf");

/// The kernel settings Logbook recommends for the database's host (`ops/sysctl.conf`), each
/// value written the way `/proc/sys` shows it.
const RECOMMENDED_KERNEL_SETTINGS: &str = include_str!("../../ops/sysctl.conf");

/// Settings the report's header always shows, whatever the file recommends.
const SHOWN: [&str; 3] = ["shared_buffers", "fsync", "autovacuum"];

/// A connection to `--postgres`, and the options it was made with.
async fn admin_connection(
    targets: &Targets,
) -> anyhow::Result<(PgConnectOptions, sqlx::PgConnection)> {
    let admin: PgConnectOptions = targets
        .postgres
        .parse()
        .context("--postgres is not a Postgres URL")?;
    let conn = admin
        .connect()
        .await
        .with_context(|| format!("connecting to Postgres at {}", targets.postgres))?;
    Ok((admin, conn))
}

/// A setting of the server or the host the benchmark ran against.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Setting {
    pub(crate) name: String,
    /// `None` when the server (or the kernel) does not know the setting.
    pub(crate) value: Option<String>,
    /// What `ops/postgresql.conf` (or `ops/sysctl.conf`) recommends, if it names the setting.
    pub(crate) recommended: Option<String>,
}

/// The server the benchmark ran against: its figures depend on these settings as much as on
/// the code (with the default `max_wal_size`, check-ins at full speed force a checkpoint every
/// few seconds).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServerSettings {
    pub(crate) version: String,
    pub(crate) settings: Vec<Setting>,
}

impl ServerSettings {
    /// Reads the recommended settings and those of [`SHOWN`] the file does not name.
    pub(crate) async fn read(targets: &Targets) -> anyhow::Result<Self> {
        let (_, mut conn) = admin_connection(targets).await?;
        let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
            .fetch_one(&mut conn)
            .await?;
        let mut wanted: Vec<(String, Option<String>)> = settings_file(RECOMMENDED_SETTINGS)
            .into_iter()
            .map(|(name, value)| (name, Some(value)))
            .collect();
        for name in SHOWN {
            if !wanted.iter().any(|(wanted, _)| wanted == name) {
                wanted.push((name.to_string(), None));
            }
        }
        let mut settings = Vec::with_capacity(wanted.len());
        for (name, recommended) in wanted {
            let value: Option<String> = sqlx::query_scalar("SELECT current_setting($1, true)")
                .bind(&name)
                .fetch_one(&mut conn)
                .await?;
            settings.push(Setting {
                name,
                value,
                recommended,
            });
        }
        conn.close().await?;
        Ok(Self { version, settings })
    }

    /// One line for the report: the version, the settings that move the figures, and those
    /// that differ from the recommendation.
    pub(crate) fn describe(&self) -> String {
        let base: Vec<String> = SHOWN
            .iter()
            .filter_map(|name| self.settings.iter().find(|s| s.name == *name))
            .map(Setting::shown)
            .collect();
        format!(
            "PostgreSQL {}: {}; {}",
            self.version,
            base.join(", "),
            advice(&self.settings, "ops/postgresql.conf")
        )
    }
}

/// The kernel settings of this host (the database's: the benchmark runs beside it) that
/// `ops/sysctl.conf` names, read from `/proc/sys`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct KernelSettings {
    pub(crate) settings: Vec<Setting>,
}

impl KernelSettings {
    pub(crate) fn read() -> Self {
        let settings = settings_file(RECOMMENDED_KERNEL_SETTINGS)
            .into_iter()
            .map(|(name, recommended)| {
                let path = format!("/proc/sys/{}", name.replace('.', "/"));
                let value = std::fs::read_to_string(path)
                    .ok()
                    .map(|value| value.trim().to_string());
                Setting {
                    name,
                    value,
                    recommended: Some(recommended),
                }
            })
            .collect();
        Self { settings }
    }

    /// One line for the report: each setting, and whether it is as recommended.
    pub(crate) fn describe(&self) -> String {
        let all: Vec<String> = self.settings.iter().map(Setting::shown).collect();
        format!(
            "Linux (this host): {}; {}",
            all.join(", "),
            advice(&self.settings, "ops/sysctl.conf")
        )
    }
}

impl Setting {
    fn shown(&self) -> String {
        format!(
            "{} {}",
            self.name,
            self.value.as_deref().unwrap_or("unknown")
        )
    }
}

/// Says whether `settings` are as `file` recommends, naming those that are not.
fn advice(settings: &[Setting], file: &str) -> String {
    let differing: Vec<String> = settings
        .iter()
        .filter_map(|s| {
            let recommended = s.recommended.as_deref()?;
            (s.value.as_deref() != Some(recommended))
                .then(|| format!("{} (recommended {recommended})", s.shown()))
        })
        .collect();
    if differing.is_empty() {
        format!("set as {file} recommends")
    } else {
        format!("differs from {file}: {}", differing.join(", "))
    }
}

/// The `name = value` lines of a settings file (quotes taken off, comments left out).
fn settings_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let (name, value) = line.split_once('=')?;
            Some((
                name.trim().to_string(),
                value.trim().trim_matches('\'').to_string(),
            ))
        })
        .collect()
}

/// A database created for one benchmark run. Dropped by [`BenchDb::drop_unless_kept`], or, when
/// a run fails or is interrupted before that, when the value is dropped: a database left behind
/// under one role stops the next run under another.
pub(crate) struct BenchDb {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) pool: PgPool,
    admin: PgConnectOptions,
    keep: bool,
    /// Set once the database was dropped (or kept) on purpose.
    settled: bool,
}

impl BenchDb {
    /// Creates (or, with `reuse`, reopens) the database `name` and migrates it.
    pub(crate) async fn open(
        targets: &Targets,
        name: &str,
        reuse: bool,
        keep: bool,
    ) -> anyhow::Result<Self> {
        let (admin, mut conn) = admin_connection(targets).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&mut conn)
                .await?;
        if exists && !reuse {
            // Left by an earlier run that did not finish; under another role it is not ours to
            // drop.
            conn.execute(format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#).as_str())
                .await
                .with_context(|| {
                    format!(
                        "dropping the database {name} an earlier run left behind (if another \
                         role owns it, drop it as that role or as a superuser)"
                    )
                })?;
        }
        if !exists || !reuse {
            conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
                .await?;
        }
        conn.close().await?;
        let options = admin.clone().database(name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await?;
        logbook_migrations::migrator()
            .run(&pool)
            .await
            .context("migrating the benchmark database")?;
        Ok(Self {
            name: name.to_string(),
            url,
            pool,
            admin,
            keep,
            settled: false,
        })
    }

    pub(crate) async fn drop_unless_kept(mut self) {
        self.settled = true;
        self.pool.close().await;
        if !self.keep {
            drop_database(&self.admin, &self.name).await;
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if self.settled || self.keep {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        finish_aside(async move { drop_database(&admin, &name).await });
    }
}

/// Runs `work` to its end, or for at most 30 s, on a runtime of its own in a thread of its own,
/// and waits for it: `Drop` cannot wait for a future, and may run on the runtime's own thread.
fn finish_aside(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
            });
        }
    })
    .join();
}

/// Drops the database `name`, closing whatever is still connected to it.
async fn drop_database(admin: &PgConnectOptions, name: &str) {
    if let Ok(mut conn) = admin.connect().await {
        let _ = conn
            .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
            .await;
    }
}

/// The directory holding the workspace's binaries (next to this one).
pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .context("locating the binaries")?;
    if !path.exists() {
        bail!(
            "{} is missing; build everything first: cargo build --release --bins (or use ops/dev/bench.sh)",
            path.display()
        );
    }
    Ok(path)
}

/// Peak and current resident memory of a process, in MiB, from /proc.
pub(crate) fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (mib_field(&status, "VmHWM:"), mib_field(&status, "VmRSS:"))
}

/// A `Name:   1234 kB` line of a `/proc` file (`status`, `meminfo`) in MiB; 0 when it is missing.
fn mib_field(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU time (user and system) consumed so far by the processes that serve a check-in: the
/// gateway, Postgres (the backends connected to the benchmark's database and the server's own
/// processes), and this process (the load generator); and by the whole machine. From /proc.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuTimes {
    gateway: f64,
    /// Per backend process id: seconds.
    postgres: std::collections::HashMap<u32, f64>,
    generator: f64,
    machine: f64,
}

/// Seconds of CPU per process, split as [`CpuTimes`] is, and of the whole machine (everything
/// that ran, these processes included).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct CpuSplit {
    pub(crate) gateway: f64,
    pub(crate) postgres: f64,
    pub(crate) load_generator: f64,
    pub(crate) machine: f64,
}

impl CpuSplit {
    /// Every figure multiplied by `factor` (seconds to microseconds per check-in, say).
    pub(crate) fn scaled(self, factor: f64) -> Self {
        Self {
            gateway: self.gateway * factor,
            postgres: self.postgres * factor,
            load_generator: self.load_generator * factor,
            machine: self.machine * factor,
        }
    }
}

/// User plus system time of a process in seconds, from `/proc/<pid>/stat` (clock ticks of
/// `USER_HZ`, which is 100 on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

impl CpuTimes {
    /// Reads the times now. Postgres processes are recognised by their titles: client backends
    /// (`postgres: ... <user> <database> <client> <state>`) count when they serve `database`,
    /// the server's own processes (WAL writer, checkpointer, autovacuum...) always.
    pub(crate) fn now(gateway: u32, database: &str) -> Self {
        let mut postgres = std::collections::HashMap::new();
        let needle = format!(" {database} ");
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&title);
            // A client backend's title names its client's address, `host(port)` or `[local]`.
            let client_backend = title.contains(")") || title.contains("[local]");
            if title.starts_with("postgres:")
                && (!client_backend || title.contains(&needle))
                && let (Ok(id), Some(seconds)) = (pid.parse(), cpu_seconds(pid))
            {
                postgres.insert(id, seconds);
            }
        }
        Self {
            gateway: cpu_seconds(&gateway.to_string()).unwrap_or_default(),
            postgres,
            generator: cpu_seconds("self").unwrap_or_default(),
            machine: machine_busy_seconds().unwrap_or_default(),
        }
    }

    /// CPU spent since `earlier` (a backend that started in between counts from its start; one
    /// that ended in between is missed).
    pub(crate) fn since(&self, earlier: &CpuTimes) -> CpuSplit {
        CpuSplit {
            gateway: self.gateway - earlier.gateway,
            postgres: self
                .postgres
                .iter()
                .map(|(pid, now)| now - earlier.postgres.get(pid).copied().unwrap_or_default())
                .sum(),
            load_generator: self.generator - earlier.generator,
            machine: self.machine - earlier.machine,
        }
    }
}

/// The process ids of every process named `nats-server` (the benchmark's NATS is a local one).
fn nats_servers() -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.to_string();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == "nats-server").then_some(pid)
        })
        .collect()
}

/// CPU seconds consumed so far by every local nats-server (an idle one adds nothing to a
/// difference of two readings); `None` if there is none.
pub(crate) fn nats_server_cpu_seconds() -> Option<f64> {
    let servers = nats_servers();
    (!servers.is_empty()).then(|| servers.iter().filter_map(|pid| cpu_seconds(pid)).sum())
}

/// The resident memory of the largest local nats-server now, in MiB (the one the benchmark
/// loads, where an idle one runs beside it); `None` if there is none.
pub(crate) fn nats_server_rss_mib() -> Option<f64> {
    nats_servers()
        .iter()
        .filter_map(|pid| pid.parse().ok())
        .map(|pid| memory_mib(pid).1)
        .reduce(f64::max)
}

/// Seconds the machine's CPUs have spent on anything but idling and waiting for I/O, summed
/// over the CPUs, from the first line of `/proc/stat` (in `USER_HZ` ticks).
fn machine_busy_seconds() -> Option<f64> {
    let (busy, _) = busy_and_total(&machine_ticks()?);
    Some(busy as f64 / 100.0)
}

/// Of `/proc/stat` CPU ticks (counters, or the differences of two readings): those spent on
/// anything but idling and waiting for I/O, and all of them (the first eight fields).
fn busy_and_total(ticks: &[u64]) -> (u64, u64) {
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The first line of `/proc/stat`: ticks of all CPUs spent in user, nice, system, idle, iowait,
/// irq, softirq and steal time, then the rest.
fn machine_ticks() -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()
}

/// What the host was doing, read at one moment: the CPUs' tick counters and the page cache's
/// dirty and writeback sizes. Two of them, a second apart, say what that second held besides
/// the benchmark's own work: a hypervisor taking the CPUs away (steal), CPUs idle while I/O
/// was pending (iowait), a writeback burst.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostSample {
    ticks: Vec<u64>,
    dirty_mib: f64,
    writeback_mib: f64,
}

/// The host over an interval between two [`HostSample`]s: CPU shares as percentages of all
/// CPUs' time, the page cache at the interval's end.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct HostInterval {
    pub(crate) busy_pct: f64,
    pub(crate) iowait_pct: f64,
    pub(crate) steal_pct: f64,
    pub(crate) dirty_mib: f64,
    pub(crate) writeback_mib: f64,
}

impl HostSample {
    pub(crate) fn now() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            ticks: machine_ticks().unwrap_or_default(),
            dirty_mib: mib_field(&meminfo, "Dirty:"),
            writeback_mib: mib_field(&meminfo, "Writeback:"),
        }
    }

    /// The interval from `earlier` to this sample (zeros where `/proc` could not be read).
    pub(crate) fn since(&self, earlier: &HostSample) -> HostInterval {
        let delta: Vec<u64> = self
            .ticks
            .iter()
            .zip(&earlier.ticks)
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        let (busy, total) = busy_and_total(&delta);
        let pct = |ticks: u64| {
            if total > 0 {
                100.0 * ticks as f64 / total as f64
            } else {
                0.0
            }
        };
        let field = |i: usize| delta.get(i).copied().unwrap_or(0);
        HostInterval {
            busy_pct: pct(busy),
            iowait_pct: pct(field(4)),
            steal_pct: pct(field(7)),
            dirty_mib: self.dirty_mib,
            writeback_mib: self.writeback_mib,
        }
    }
}

/// A running `logbook serve`.
pub(crate) struct Gateway {
    child: Child,
    /// The database it serves, whose Postgres backends [`CpuTimes`] counts.
    pub(crate) database: String,
    pub(crate) namespace: String,
    pub(crate) nats_url: String,
    pub(crate) base: String,
    pub(crate) admin_token: String,
    pub(crate) http: reqwest::Client,
    dir: tempfile_dir::TempDir,
    /// Whether this run's streams were removed; a run that fails half-way removes them on drop.
    streams_removed: bool,
}

mod tempfile_dir {
    //! A temporary directory removed on drop (std only, to keep this tool's dependencies lean).
    use std::path::{Path, PathBuf};

    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(prefix: &str) -> std::io::Result<Self> {
            let path =
                std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub(crate) use tempfile_dir::TempDir;

impl Gateway {
    /// Starts the gateway on `db`, with the run's extra `LOGBOOK_*` settings.
    pub(crate) async fn start(db: &BenchDb, targets: &Targets) -> anyhow::Result<Self> {
        let dir = TempDir::new("logbook-bench")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("gateway.log"))?;
        let namespace = format!("bench-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let mut command = Command::new(binary("logbook")?);
        command
            .arg("serve")
            .env("LOGBOOK_NATS__NAMESPACE", &namespace)
            .env("LOGBOOK_DATABASE__URL", &db.url)
            .env("LOGBOOK_DATABASE__MAX_CONNECTIONS", "40")
            .env("LOGBOOK_NATS__URL", &targets.nats)
            .env("LOGBOOK_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("LOGBOOK_ADMIN__TOKEN_FILE", dir.path().join("admin-token"))
            .env("LOGBOOK_LOG__FILTER", "warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &targets.settings {
            command.env(key, value);
        }
        let child = command.spawn().context("starting logbook serve")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway did not become ready: {}",
                    std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let admin_token = match std::fs::read_to_string(dir.path().join("admin-token")) {
            Ok(token) => token.trim().to_string(),
            // The database already had API tokens (a reused database): issue one for this run.
            Err(_) => {
                let output = Command::new(binary("logbook")?)
                    .args(["admin", "create-api-token", "--name", "benchmark"])
                    .env("LOGBOOK_DATABASE__URL", &db.url)
                    .output()
                    .context("issuing an API token")?;
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            }
        };
        Ok(Self {
            child,
            namespace,
            nats_url: targets.nats.clone(),
            base,
            admin_token,
            http,
            dir,
            streams_removed: false,
            database: db.name.clone(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An admin API call.
    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// The subject and stream names of this gateway's installation.
    pub(crate) fn names(&self) -> logbook_proto::subjects::Names {
        logbook_proto::subjects::Names::new(&self.namespace)
    }

    /// Removes this run's streams from the shared nats-server.
    pub(crate) async fn remove_streams(&mut self) {
        remove_streams(&self.nats_url, self.names()).await;
        self.streams_removed = true;
    }

    /// Prometheus metrics of the gateway, as `name{labels} -> value` lines.
    pub(crate) async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Stops the gateway with SIGTERM (it drains and exits). Its log is kept at
    /// `LOGBOOK_BENCH_GATEWAY_LOG` when that is set.
    pub(crate) fn stop(mut self) {
        if let Some(keep) = std::env::var_os("LOGBOOK_BENCH_GATEWAY_LOG") {
            let _ = std::fs::copy(self.dir.path().join("gateway.log"), keep);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Drop kills what did not stop.
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A run that fails half-way must not leave a gateway behind, nor its streams: 10,000
        // consumers left on the shared nats-server slow every later run down.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.streams_removed {
            let (url, names) = (self.nats_url.clone(), self.names());
            finish_aside(async move { remove_streams(&url, names).await });
        }
    }
}

/// Deletes the jobs and results streams of `names` from the nats-server at `url`.
async fn remove_streams(url: &str, names: logbook_proto::subjects::Names) {
    if let Ok(client) = async_nats::connect(url).await {
        let js = async_nats::jetstream::new(client);
        for stream in names.jobs_streams() {
            let _ = js.delete_stream(stream).await;
        }
        let _ = js.delete_stream(names.results_stream()).await;
    }
}

/// One simulated agent.
#[derive(Debug, Clone)]
pub(crate) struct SimAgent {
    pub(crate) id: String,
    pub(crate) credential: String,
}

/// Creates a client and a site, and enrolls `n` agents through the API.
pub(crate) async fn enroll_fleet(
    gateway: &Gateway,
    n: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(String, Vec<SimAgent>)> {
    let client = gateway
        .admin(
            reqwest::Method::POST,
            "/api/v1/clients",
            Some(json!({"name": "Bench"})),
        )
        .await?;
    let client_id = client["id"].as_str().context("client id")?.to_string();
    let site = gateway
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/clients/{client_id}/sites"),
            Some(json!({"name": "Load"})),
        )
        .await?;
    let site_id = site["id"].as_str().context("site id")?.to_string();
    // One token for the whole fleet, as a rollout uses it: its uses are serialised on its lock,
    // and each enrollment loads it from its newest snapshot, so the rate holds to the last
    // agent (it fell with each use when every enrollment replayed the token's history).
    let token = gateway
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/sites/{site_id}/enrollment-tokens"),
            Some(json!({"max_uses": n.max(1), "expires_in": "2h"})),
        )
        .await?;
    let token = token["token"].as_str().context("token")?.to_string();
    progress.set_length(n as u64);
    let enrolling = Instant::now();
    let results = futures::future::join_all((0..16).map(|worker| {
        let token = token.clone();
        let http = gateway.http.clone();
        let base = gateway.base.clone();
        let progress = progress.clone();
        async move {
            let mut agents = Vec::new();
            for i in (worker..n).step_by(16) {
                let request = pb::EnrollRequest {
                    token: token.clone(),
                    hostname: format!("sim-{i:06}"),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                    agent_version: "bench".into(),
                    nats_public_key: String::new(),
                };
                let response = http
                    .post(format!("{base}/api/v1/enroll"))
                    .header("content-type", logbook_proto::PROTOBUF_MEDIA_TYPE)
                    .header("accept", logbook_proto::PROTOBUF_MEDIA_TYPE)
                    .body(request.encode_to_vec())
                    .send()
                    .await?;
                let status = response.status();
                let bytes = response.bytes().await?;
                if !status.is_success() {
                    bail!(
                        "enrollment failed: {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                let enrolled = pb::EnrollResponse::decode(bytes)?;
                agents.push((
                    i,
                    SimAgent {
                        id: enrolled.agent_id,
                        credential: enrolled.credential,
                    },
                ));
                progress.inc(1);
            }
            Ok::<_, anyhow::Error>(agents)
        }
    }))
    .await;
    let mut agents = Vec::with_capacity(n);
    for result in results {
        agents.extend(result?);
    }
    agents.sort_by_key(|(i, _)| *i);
    progress.finish_and_clear();
    let took = enrolling.elapsed().as_secs_f64();
    crate::ui::step(&format!(
        "{n} agents enrolled through one enrollment token in {took:.1} s ({:.0}/s)",
        n as f64 / took
    ));
    wait_for_job_consumers(gateway, n).await?;
    Ok((site_id, agents.into_iter().map(|(_, a)| a).collect()))
}

/// Waits until JetStream holds a job consumer for each of `n` enrolled agents: the gateway
/// creates them in the background after each enrollment, and measuring anything while
/// nats-server is still busy creating them would measure that instead. Prints the rate.
async fn wait_for_job_consumers(gateway: &Gateway, n: usize) -> anyhow::Result<()> {
    let client = async_nats::connect(gateway.nats_url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let started = Instant::now();
    let bar = crate::ui::bar("waiting for the agents' job consumers");
    bar.set_length(n as u64);
    loop {
        let mut count = 0;
        for name in gateway.names().jobs_streams() {
            if let Ok(mut stream) = js.get_stream(name).await {
                count += stream.info().await.map_or(0, |i| i.state.consumer_count);
            }
        }
        bar.set_position(count.min(n) as u64);
        if count >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!("only {count} of {n} job consumers exist after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    crate::ui::step(&format!(
        "{n} job consumers ready {elapsed:.1}s after the last enrollment",
    ));
    Ok(())
}

/// A real `logbook-agent` enrolled into `site_id` and running with `interval`.
pub(crate) struct RealAgent {
    child: Option<Child>,
    dir: TempDir,
    /// Its agent id.
    pub(crate) id: String,
}

impl RealAgent {
    /// Enrolls and starts an agent.
    pub(crate) async fn start(
        gateway: &Gateway,
        site_id: &str,
        interval: &str,
    ) -> anyhow::Result<Self> {
        let mut agent = Self::enroll_only(gateway, site_id).await?;
        agent.run(interval)?;
        Ok(agent)
    }

    /// Enrolls an agent without starting it.
    pub(crate) async fn enroll_only(gateway: &Gateway, site_id: &str) -> anyhow::Result<Self> {
        let token = gateway
            .admin(
                reqwest::Method::POST,
                &format!("/api/v1/sites/{site_id}/enrollment-tokens"),
                Some(json!({})),
            )
            .await?;
        let dir = TempDir::new("logbook-bench-agent")?;
        let enrolled = Command::new(binary("logbook-agent")?)
            .arg("--state-dir")
            .arg(dir.path())
            .args(["enroll", "--server", &gateway.base])
            .env(
                "LOGBOOK_AGENT_TOKEN",
                token["token"].as_str().context("token")?,
            )
            .output()?;
        if !enrolled.status.success() {
            bail!(
                "logbook-agent enroll: {}",
                String::from_utf8_lossy(&enrolled.stderr)
            );
        }
        let identity: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("identity.json"))?)?;
        let id = identity["agent_id"]
            .as_str()
            .context("agent id")?
            .to_string();
        Ok(Self {
            child: None,
            dir,
            id,
        })
    }

    /// Starts `logbook-agent run`.
    pub(crate) fn run(&mut self, interval: &str) -> anyhow::Result<()> {
        let child = Command::new(binary("logbook-agent")?)
            .arg("--state-dir")
            .arg(self.dir.path())
            .arg("run")
            .env("LOGBOOK_AGENT_CHECKIN__INTERVAL", interval)
            .env("LOGBOOK_AGENT_LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
