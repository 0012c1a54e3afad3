//! End to end with the real binaries: `logbook serve` on a fresh database and a real
//! `logbook-agent` enrolled into it, checking in with this machine's facts, riding out a gateway
//! crash, then going silent and turning overdue and offline.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logbook_testkit::{TestDb, binaries};
use serde_json::{Value, json};

struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A failing test must not leave a gateway running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a child process when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_gateway(db_url: &str, port: u16, dir: &Path) -> Gateway {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .expect("gateway log");
    let child = Command::new(env!("CARGO_BIN_EXE_logbook"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOGBOOK_DATABASE__URL", db_url)
        .env("LOGBOOK_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("LOGBOOK_AGENTS__OVERDUE_AFTER", "3s")
        .env("LOGBOOK_AGENTS__OFFLINE_AFTER", "6s")
        .env("LOGBOOK_ADMIN__TOKEN_FILE", dir.join("admin-token"))
        .env("LOGBOOK_PROJECTIONS__POLL_INTERVAL", "200ms")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start logbook serve");
    Gateway { child, port }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Value) {
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

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }
}

async fn wait_ready(base: &str, dir: &Path) {
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
        std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
    );
}

/// Polls the agent until `done` holds for it, or fails with the last state seen.
async fn wait_for_agent(
    api: &Api,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let (status, agent) = api.get(&format!("/api/v1/agents/{id}")).await;
        if status == 200 {
            if done(&agent) {
                return agent;
            }
            last = agent;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for the agent to be {what}; last seen: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_is_listed_online_rides_out_a_gateway_crash_and_goes_overdue_then_offline() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut gateway = start_gateway(&db.url, port, dir.path());
    let base = format!("http://127.0.0.1:{}", gateway.port);
    wait_ready(&base, dir.path()).await;

    let token = std::fs::read_to_string(dir.path().join("admin-token"))
        .expect("the first start wrote an admin token");
    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
        token: token.trim().to_string(),
    };
    let client = api.post("/api/v1/clients", json!({"name": "Acme"})).await;
    let site = api
        .post(
            &format!(
                "/api/v1/clients/{}/sites",
                client["id"].as_str().expect("id")
            ),
            json!({"name": "HQ"}),
        )
        .await;
    let enrollment = api
        .post(
            &format!(
                "/api/v1/sites/{}/enrollment-tokens",
                site["id"].as_str().expect("id")
            ),
            json!({}),
        )
        .await;

    let agent_bin = binaries::path("logbook-agent");
    let state_dir = dir.path().join("agent");
    let enrolled = Command::new(&agent_bin)
        .args(["--state-dir"])
        .arg(&state_dir)
        .args(["enroll", "--server", &base])
        .env(
            "LOGBOOK_AGENT_TOKEN",
            enrollment["token"].as_str().expect("token"),
        )
        .output()
        .expect("run logbook-agent enroll");
    assert!(
        enrolled.status.success(),
        "enroll failed: {}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let identity: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("identity.json")).expect("identity"))
            .expect("identity json");
    let agent_id = identity["agent_id"].as_str().expect("agent id").to_string();

    let agent_log = std::fs::File::create(dir.path().join("agent.log")).expect("agent log");
    let agent = Command::new(&agent_bin)
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("run")
        .env("LOGBOOK_AGENT_CHECKIN__INTERVAL", "1s")
        .env("LOGBOOK_AGENT_CHECKIN__JITTER", "0s")
        .env("LOGBOOK_AGENT_CHECKIN__MAX_BACKOFF", "1s")
        .stderr(agent_log)
        .spawn()
        .expect("start logbook-agent run");
    let mut agent = KillOnDrop(agent);

    // Online, with this machine's real facts.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string();
    let seen = wait_for_agent(
        &api,
        &agent_id,
        "online with metrics",
        Duration::from_secs(30),
        |a| a["status"] == "online" && !a["metrics"].is_null(),
    )
    .await;
    assert_eq!(seen["hostname"], hostname.as_str());
    assert_eq!(seen["os"]["family"], "linux");
    assert!(
        !seen["metrics"]["disks"]
            .as_array()
            .expect("disks")
            .is_empty(),
        "{seen}"
    );
    assert!(
        seen["metrics"]["memory"]["total_bytes"]
            .as_u64()
            .expect("memory")
            > 0
    );

    // The gateway crashes; the agent keeps collecting and delivers the missed check-ins, with
    // their original times, once the gateway is back.
    signal(&gateway.child, "KILL");
    gateway.child.wait().expect("gateway exit");
    let down_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up_at = chrono::Utc::now();
    drop(gateway);
    gateway = start_gateway(&db.url, port, dir.path());
    wait_ready(&base, dir.path()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered_late = loop {
        let (_, page) = api
            .get(&format!(
                "/api/v1/agents/{agent_id}/timeline?event_type=AgentCheckedIn&limit=100"
            ))
            .await;
        let late: Vec<Value> = page["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|item| {
                let collected = item["payload"]["AgentCheckedIn"]["report"]["collected_at"]
                    .as_str()
                    .unwrap_or_default();
                let collected: chrono::DateTime<chrono::Utc> =
                    collected.parse().unwrap_or_default();
                let recorded: chrono::DateTime<chrono::Utc> = item["recorded_at"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or_default();
                collected > down_at && collected < up_at && recorded > up_at
            })
            .collect();
        if late.len() >= 2 || Instant::now() > deadline {
            break late;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        delivered_late.len() >= 2,
        "check-ins collected during the outage were not delivered afterwards with their original times; agent log:\n{}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );

    // The agent dies: overdue after 3 s of silence, offline after 6 s.
    agent.0.kill().expect("kill agent");
    agent.0.wait().expect("agent exit");
    wait_for_agent(&api, &agent_id, "overdue", Duration::from_secs(15), |a| {
        a["status"] == "overdue"
    })
    .await;
    wait_for_agent(&api, &agent_id, "offline", Duration::from_secs(15), |a| {
        a["status"] == "offline"
    })
    .await;

    // SIGTERM stops the gateway cleanly.
    signal(&gateway.child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gateway.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "gateway exit status {status}");
}
