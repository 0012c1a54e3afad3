//! Harness for end-to-end tests: the real `logbook` and `logbook-agent` binaries as child
//! processes, on a fresh database, against a nats-server.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logbook_testkit::binaries;
use serde_json::{Value, json};

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Sends a signal to a child.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A running `logbook serve`, killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ---\n{}",
                tail(&log_of(&self.dir, "gateway.log"), 150)
            );
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How to start the gateway.
#[derive(Debug, Clone)]
pub struct GatewaySetup {
    pub db_url: String,
    pub nats_url: String,
    pub namespace: String,
    pub port: u16,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl GatewaySetup {
    pub fn new(db_url: &str, nats_url: &str, dir: &Path) -> Self {
        Self {
            db_url: db_url.to_string(),
            nats_url: nats_url.to_string(),
            namespace: format!("t{}", uuid::Uuid::new_v4().simple()),
            port: free_port(),
            dir: dir.to_path_buf(),
            env: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the gateway (without waiting for it).
    pub fn start(&self) -> Gateway {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))
            .expect("gateway log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_logbook"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LOGBOOK_DATABASE__URL", &self.db_url)
            .env("LOGBOOK_NATS__URL", &self.nats_url)
            .env("LOGBOOK_NATS__NAMESPACE", &self.namespace)
            .env("LOGBOOK_HTTP__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("LOGBOOK_ADMIN__TOKEN_FILE", self.dir.join("admin-token"))
            .env("LOGBOOK_PROJECTIONS__POLL_INTERVAL", "200ms")
            // Tests run side by side against one PostgreSQL (100 connections by default).
            .env("LOGBOOK_DATABASE__MAX_CONNECTIONS", "10")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        Gateway {
            child: command.spawn().expect("start logbook serve"),
            port: self.port,
            dir: self.dir.clone(),
        }
    }

    /// Starts the gateway and waits until it is ready.
    pub async fn start_ready(&self) -> Gateway {
        let gateway = self.start();
        wait_ready(&self.base(), &self.dir).await;
        gateway
    }
}

pub async fn wait_ready(base: &str, dir: &Path) {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the gateway did not become ready; its log:\n{}",
        log_of(dir, "gateway.log")
    );
}

pub fn log_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// The admin API.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn new(base: &str, dir: &Path) -> Self {
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
        let token = std::fs::read_to_string(dir.join("admin-token"))
            .expect("the first start wrote an admin token");
        Self {
            http: reqwest::Client::new(),
            base: base.to_string(),
            token: token.trim().to_string(),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        match self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    pub async fn post_status(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request");
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.post_status(path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {value}");
        value
    }

    /// A client, a site and an enrollment token for `uses` agents.
    pub async fn enrollment_token(&self, uses: u32) -> String {
        let client = self.post("/api/v1/clients", json!({"name": "Acme"})).await;
        let site = self
            .post(
                &format!(
                    "/api/v1/clients/{}/sites",
                    client["id"].as_str().expect("id")
                ),
                json!({"name": "HQ"}),
            )
            .await;
        let token = self
            .post(
                &format!(
                    "/api/v1/sites/{}/enrollment-tokens",
                    site["id"].as_str().expect("id")
                ),
                json!({"max_uses": uses}),
            )
            .await;
        token["token"].as_str().expect("token").to_string()
    }

    /// Queues a shell command for an agent; returns the job id.
    pub async fn queue(&self, agent_id: &str, body: Value) -> String {
        let job = self
            .post(&format!("/api/v1/agents/{agent_id}/jobs"), body)
            .await;
        job["id"].as_str().expect("job id").to_string()
    }

    /// Polls a job until `done` holds.
    pub async fn wait_job(
        &self,
        job_id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let (status, job) = self.get(&format!("/api/v1/jobs/{job_id}")).await;
            if status == 200 {
                if done(&job) {
                    return job;
                }
                last = job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for job {job_id}; last seen: {last}");
    }
}

/// An enrolled agent's state directory, and the agent process when running.
pub struct Agent {
    pub state: PathBuf,
    pub id: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- agent {} log ---\n{}",
                self.id,
                tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 100)
            );
        }
    }
}

impl Agent {
    /// Enrolls a new agent with `token` (state under `dir/name`).
    pub fn enroll(base: &str, token: &str, dir: &Path, name: &str) -> Self {
        let state = dir.join(name);
        let output = Command::new(binaries::path("logbook-agent"))
            .arg("--state-dir")
            .arg(&state)
            .args(["enroll", "--server", base])
            .env("LOGBOOK_AGENT_TOKEN", token)
            .output()
            .expect("run logbook-agent enroll");
        assert!(
            output.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let identity: Value =
            serde_json::from_slice(&std::fs::read(state.join("identity.json")).expect("identity"))
                .expect("json");
        Self {
            id: identity["agent_id"].as_str().expect("agent id").to_string(),
            state,
            child: None,
            log: dir.join(format!("{name}.log")),
        }
    }

    pub fn identity(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.join("identity.json")).expect("identity"))
            .expect("json")
    }

    /// Starts `logbook-agent run` with extra environment.
    pub fn start(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut command = Command::new(binaries::path("logbook-agent"));
        command
            .arg("--state-dir")
            .arg(&self.state)
            .arg("run")
            .env("LOGBOOK_AGENT_CHECKIN__INTERVAL", "1s")
            .env("LOGBOOK_AGENT_CHECKIN__JITTER", "0s")
            .env("LOGBOOK_AGENT_CHECKIN__MAX_BACKOFF", "1s")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("start logbook-agent run"));
    }

    /// Kills the agent process (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own (after a failpoint).
    pub async fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the agent did not exit; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}
