//! End to end with the real binaries: `logbook serve` on a fresh database and a real
//! `logbook-agent` enrolled into it, checking in with this machine's facts, riding out a gateway
//! crash, then going silent and turning overdue and offline.

mod e2e;

use std::time::{Duration, Instant};

use e2e::{Agent, Api, GatewaySetup, signal};
use logbook_testkit::TestDb;
use serde_json::Value;

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
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = GatewaySetup::new(&db.url, SHARED_NATS, dir.path())
        .with("LOGBOOK_AGENTS__OVERDUE_AFTER", "3s")
        .with("LOGBOOK_AGENTS__OFFLINE_AFTER", "6s");
    let _streams = SharedStreams {
        namespace: setup.namespace.clone(),
    };
    let mut gateway = setup.start_ready().await;
    let api = Api::new(&setup.base(), dir.path());
    let token = api.enrollment_token(1).await;
    let mut agent = Agent::enroll(&setup.base(), &token, dir.path(), "agent");
    agent.start(&[]);
    let agent_id = agent.id.clone();

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
    gateway = setup.start_ready().await;
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
        std::fs::read_to_string(&agent.log).unwrap_or_default()
    );

    // The agent dies: overdue after 3 s of silence, offline after 6 s.
    agent.stop();
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

/// The nats-server every test shares.
const SHARED_NATS: &str = "nats://127.0.0.1:4222";

/// The streams a test's gateway made on the shared nats-server, deleted when the test ends,
/// whether it passed or failed (declared before the gateway, it is dropped after it).
struct SharedStreams {
    namespace: String,
}

impl Drop for SharedStreams {
    fn drop(&mut self) {
        let names = logbook_proto::subjects::Names::new(&self.namespace);
        logbook_testkit::block_on_aside(async move {
            let Ok(nats) = async_nats::connect(SHARED_NATS).await else {
                return;
            };
            let js = async_nats::jetstream::new(nats);
            for stream in names.jobs_streams().chain([names.results_stream()]) {
                let _ = js.delete_stream(&stream).await;
            }
        });
    }
}
