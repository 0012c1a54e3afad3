//! Jobs end to end: the real `logbook` and `logbook-agent` binaries, real Postgres and a real
//! nats-server of each test's own, through stops, crashes and restarts.

mod e2e;

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{Agent, Api, Gateway, GatewaySetup};
use logbook_testkit::TestDb;
use logbook_testkit::nats::NatsServer;
use serde_json::{Value, json};

/// A gateway on a nats-server and a database of its own, and one enrolled agent, not started.
/// Fields drop in order: the agent and the gateway stop before their directory goes.
struct OneAgent {
    agent: Agent,
    api: Api,
    _gateway: Gateway,
    setup: GatewaySetup,
    dir: tempfile::TempDir,
    db: TestDb,
    nats: NatsServer,
}

impl OneAgent {
    async fn start() -> Self {
        let nats = NatsServer::start();
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let setup = GatewaySetup::new(&db.url, &nats.url(), dir.path());
        let gateway = setup.start_ready().await;
        let api = Api::new(&setup.base(), dir.path());
        let token = api.enrollment_token(1).await;
        let agent = Agent::enroll(&setup.base(), &token, dir.path(), "agent");
        Self {
            agent,
            api,
            _gateway: gateway,
            setup,
            dir,
            db,
            nats,
        }
    }
}

/// A nats-server of its own that authenticates every client (an operator, an account and its
/// signing key, written to `dir`), and the gateway settings that go with it.
struct NatsWithAuth {
    server: NatsServer,
    env: Vec<(&'static str, String)>,
}

impl NatsWithAuth {
    fn start(dir: &Path) -> Self {
        let files =
            logbook_gateway::jobs::nats_auth::init_operator(&dir.join("js")).expect("operator");
        let config = dir.join("nats-server.conf");
        std::fs::write(&config, &files.server_config).expect("config");
        std::fs::write(dir.join("gateway.creds"), &files.gateway_creds).expect("creds");
        std::fs::write(dir.join("signing.nk"), &files.account_signing_seed).expect("seed");
        Self {
            server: NatsServer::start_with_config(&config),
            env: vec![
                (
                    "LOGBOOK_NATS__CREDENTIALS_FILE",
                    dir.join("gateway.creds").display().to_string(),
                ),
                ("LOGBOOK_NATS__ACCOUNT_PUBLIC_KEY", files.account_public_key),
                (
                    "LOGBOOK_NATS__ACCOUNT_SIGNING_KEY_FILE",
                    dir.join("signing.nk").display().to_string(),
                ),
            ],
        }
    }

    /// A gateway on this nats-server and `db`, with its files in `dir`.
    fn gateway(&self, db: &TestDb, dir: &Path) -> GatewaySetup {
        self.env.iter().fold(
            GatewaySetup::new(&db.url, &self.server.url(), dir),
            |setup, (key, value)| setup.with(key, value.clone()),
        )
    }
}

/// A command that appends `line` to `file`.
fn append(file: &Path, line: &str) -> Value {
    json!({"command": format!("echo {line} >> {}", file.display()), "timeout_secs": 30})
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn statuses(api: &Api, agent: &str) -> Vec<(i64, String)> {
    let (_, page) = api
        .get(&format!("/api/v1/agents/{agent}/jobs?limit=1000"))
        .await;
    let mut jobs: Vec<(i64, String)> = page["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|j| {
            (
                j["agent_seq"].as_i64().unwrap_or(0),
                j["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    jobs.sort();
    jobs
}

/// Waits until `count` of the agent's jobs have succeeded.
async fn wait_for_succeeded(api: &Api, agent: &str, count: usize, what: &str, timeout: Duration) {
    wait_until(what, timeout, async || {
        statuses(api, agent)
            .await
            .iter()
            .filter(|(_, s)| s == "succeeded")
            .count()
            == count
    })
    .await;
}

/// Asserts that `job`, which appends `ran` to `out`, ran once, and that its start and its result
/// were each recorded once.
async fn assert_ran_once(db: &TestDb, job: &str, out: &Path) {
    assert_eq!(lines(out), ["ran"], "the job ran a second time");
    assert_eq!(
        count_events(db, job, "JobSucceeded").await,
        1,
        "the result was recorded more than once"
    );
    assert_eq!(count_events(db, job, "JobStarted").await, 1);
}

async fn count_events(db: &TestDb, job: &str, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'job' AND aggregate_id = $1 AND event_type = $2")
        .bind(job)
        .bind(event_type)
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_was_stopped_runs_its_queued_jobs_once_in_order_and_skips_expired_ones() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = GatewaySetup::new(&db.url, &nats.url(), dir.path())
        .with("LOGBOOK_JOBS__EXPIRY_INTERVAL", "200ms");
    let _gateway = setup.start_ready().await;
    let api = Api::new(&setup.base(), dir.path());
    let token = api.enrollment_token(1).await;
    let mut agent = Agent::enroll(&setup.base(), &token, dir.path(), "agent");
    let out = dir.path().join("out.txt");

    // The agent is stopped (it never started): 100 jobs queue up, and five more that will expire
    // before it comes back.
    let mut expiring = Vec::new();
    for n in 1..=100 {
        api.queue(&agent.id, append(&out, &n.to_string())).await;
        if n % 20 == 10 {
            let mut body = append(&out, &format!("EXPIRED-{n}"));
            body["expires_in"] = json!("1s");
            expiring.push(api.queue(&agent.id, body).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let started = Instant::now();
    agent.start(&[]);
    wait_for_succeeded(
        &api,
        &agent.id,
        100,
        "all 100 jobs to succeed",
        Duration::from_secs(60),
    )
    .await;
    let took = started.elapsed();

    let expected: Vec<String> = (1..=100).map(|n| n.to_string()).collect();
    assert_eq!(
        lines(&out),
        expected,
        "each job ran exactly once, in queue order, and no expired job ran"
    );
    for job in &expiring {
        let (_, view) = api.get(&format!("/api/v1/jobs/{job}")).await;
        assert_eq!(view["status"], "expired", "{view}");
    }
    assert!(took < Duration::from_secs(30), "catching up took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_committed_before_the_gateway_crashed_is_delivered_after_a_restart() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = GatewaySetup::new(&db.url, &nats.url(), dir.path());
    let gateway = setup.start_ready().await;
    let api = Api::new(&setup.base(), dir.path());
    let token = api.enrollment_token(1).await;
    let mut agent = Agent::enroll(&setup.base(), &token, dir.path(), "agent");
    agent.start(&[]);
    drop(gateway);

    // A gateway that dies (kill -9 style, abort) after the job is committed, before it is
    // published.
    let crashing = setup
        .clone()
        .with("LOGBOOK_FAILPOINT", "dispatch-before-publish");
    let mut gateway = crashing.start_ready().await;
    let out = dir.path().join("out.txt");
    let job = api.queue(&agent.id, append(&out, "ran")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while gateway.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the failpoint did not fire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count_events(&db, &job, "JobQueued").await,
        1,
        "the job was committed"
    );
    assert!(
        lines(&out).is_empty(),
        "the job was published before the crash"
    );

    let _gateway = setup.start_ready().await;
    let finished = api
        .wait_job(&job, Duration::from_secs(30), |j| {
            j["status"] == "succeeded"
        })
        .await;
    assert_eq!(finished["exit_code"], 0);
    assert_eq!(lines(&out), ["ran"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_a_job_finished_reports_it_once_without_running_it_again() {
    let mut one = OneAgent::start().await;
    let OneAgent {
        db,
        dir,
        api,
        agent,
        ..
    } = &mut one;
    let out = dir.path().join("out.txt");

    agent.start(&[("LOGBOOK_AGENT_FAILPOINT", "after-job-finished")]);
    let job = api.queue(&agent.id, append(&out, "ran")).await;
    agent.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(lines(&out), ["ran"], "the job ran before the crash");
    assert_eq!(count_events(db, &job, "JobStarted").await, 1);
    assert_eq!(
        count_events(db, &job, "JobSucceeded").await,
        0,
        "its result was not reported before the crash"
    );
    api.wait_job(&job, Duration::from_secs(10), |j| j["status"] == "running")
        .await;

    agent.start(&[]);
    api.wait_job(&job, Duration::from_secs(30), |j| {
        j["status"] == "succeeded"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ran_once(db, &job, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_agent_could_not_publish_before_it_was_stopped_is_published_when_it_starts_again()
 {
    let mut one = OneAgent::start().await;
    let OneAgent {
        db,
        dir,
        api,
        agent,
        nats,
        ..
    } = &mut one;
    let out = dir.path().join("out.txt");
    agent.start(&[]);
    let job = api
        .queue(
            &agent.id,
            json!({"command": format!("sleep 2; echo ran >> {}", out.display()), "timeout_secs": 30}),
        )
        .await;
    api.wait_job(&job, Duration::from_secs(30), |j| j["status"] == "running")
        .await;
    // The job finishes while NATS is away: its result cannot be published, nor the job
    // acknowledged. Then the agent is stopped, gracefully, still without NATS.
    nats.stop();
    wait_until("the job to finish", Duration::from_secs(30), async || {
        lines(&out) == ["ran"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    e2e::signal(agent.child.as_ref().expect("the agent runs"), "TERM");
    agent.wait_exit(Duration::from_secs(60)).await;

    nats.restart();
    agent.start(&[]);
    api.wait_job(&job, Duration::from_secs(30), |j| {
        j["status"] == "succeeded"
    })
    .await;
    assert_ran_once(db, &job, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ride_out_a_nats_server_restart_and_nothing_is_lost() {
    let mut nats = NatsServer::start();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = GatewaySetup::new(&db.url, &nats.url(), dir.path());
    let _gateway = setup.start_ready().await;
    let api = Api::new(&setup.base(), dir.path());
    let token = api.enrollment_token(2).await;
    let mut agents = [
        Agent::enroll(&setup.base(), &token, dir.path(), "a"),
        Agent::enroll(&setup.base(), &token, dir.path(), "b"),
    ];
    for agent in &mut agents {
        agent.start(&[]);
    }
    let outs = [dir.path().join("a.txt"), dir.path().join("b.txt")];
    for n in 1..=10 {
        for (agent, out) in agents.iter().zip(&outs) {
            api.queue(&agent.id, json!({"command": format!("sleep 0.05; echo {n} >> {}", out.display()), "timeout_secs": 30})).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.stop();
    // Jobs queued while NATS is down wait in Postgres and are delivered once it is back.
    for (agent, out) in agents.iter().zip(&outs) {
        api.queue(&agent.id, append(out, "11")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.restart();

    for agent in &agents {
        wait_for_succeeded(
            &api,
            &agent.id,
            11,
            "every job to succeed after the restart",
            Duration::from_secs(60),
        )
        .await;
    }
    let expected: Vec<String> = (1..=11).map(|n| n.to_string()).collect();
    for out in &outs {
        assert_eq!(
            lines(out),
            expected,
            "a job was lost, repeated or reordered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_claim_answer_was_lost_runs_once_when_the_agent_asks_again() {
    let mut one = OneAgent::start().await;
    let OneAgent {
        db,
        dir,
        api,
        agent,
        ..
    } = &mut one;
    // The agent drops the first answer to each claim, as a NATS reconnect between the server's
    // answer and the agent would: the claim is granted and recorded, the agent never hears it.
    agent.start(&[("LOGBOOK_AGENT_FAILPOINT", "lose-first-claim-answer")]);
    let out = dir.path().join("out.txt");
    let job = api.queue(&agent.id, append(&out, "ran")).await;
    let done = api
        .wait_job(&job, Duration::from_secs(30), |j| {
            !["queued", "dispatched", "running"].contains(&j["status"].as_str().unwrap_or(""))
        })
        .await;
    assert_eq!(
        done["status"], "succeeded",
        "the job did not run after its claim's answer was lost: {done}"
    );
    assert_eq!(lines(&out), ["ran"], "the job did not run exactly once");
    assert_eq!(count_events(db, &job, "JobStarted").await, 1);
    assert_eq!(count_events(db, &job, "JobSucceeded").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_claimed_by_another_attempt_is_reported_interrupted_and_never_run() {
    use logbook_proto::agent::v1 as pb;
    use prost::Message;

    let mut one = OneAgent::start().await;
    let OneAgent {
        nats,
        db,
        dir,
        setup,
        api,
        agent,
        ..
    } = &mut one;
    let out = dir.path().join("out.txt");
    let job = api.queue(&agent.id, append(&out, "ran")).await;
    api.wait_job(&job, Duration::from_secs(30), |j| {
        j["status"] == "dispatched"
    })
    .await;
    // Another process with this agent's identity (a cloned machine) claims the job on the
    // agent's subject; asked again by the same attempt, the claim is granted again.
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let names = logbook_proto::subjects::Names::new(&setup.namespace);
    let claim = async |attempt: &str| {
        let request = pb::ClaimRequest {
            job_id: job.clone(),
            attempt: attempt.to_string(),
        };
        let answer = client
            .request(names.claims(&agent.id), request.encode_to_vec().into())
            .await
            .expect("the claim is answered");
        pb::ClaimResponse::decode(answer.payload).expect("claim response")
    };
    assert_eq!(claim("clone").await.verdict, pb::ClaimVerdict::Run as i32);
    assert_eq!(claim("clone").await.verdict, pb::ClaimVerdict::Run as i32);
    let refused = claim("not a token!").await;
    assert_eq!(refused.verdict, pb::ClaimVerdict::Refused as i32);
    assert!(refused.reason.contains("attempt"), "{refused:?}");
    assert_eq!(count_events(db, &job, "JobStarted").await, 1);

    // The agent itself then gets the job: claimed by another attempt, it must not run here.
    agent.start(&[]);
    let done = api
        .wait_job(&job, Duration::from_secs(30), |j| j["status"] == "failed")
        .await;
    assert!(
        done["result"]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("interrupted"),
        "{done}"
    );
    assert!(
        lines(&out).is_empty(),
        "the job ran although another attempt claimed it"
    );
    assert_eq!(count_events(db, &job, "JobStarted").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_nats_server_lost_after_acknowledging_it_is_published_again_and_runs_once() {
    let mut one = OneAgent::start().await;
    let OneAgent {
        nats,
        db,
        dir,
        setup,
        api,
        agent,
        ..
    } = &mut one;
    let out = dir.path().join("out.txt");
    // The agent is not running: its jobs wait in its stream.
    for n in 1..=3 {
        api.queue(&agent.id, append(&out, &n.to_string())).await;
    }
    let dispatched = async || -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT aggregate_id, (payload->'JobDispatched'->>'stream_seq')::bigint FROM events \
              WHERE aggregate_type = 'job' AND event_type = 'JobDispatched' ORDER BY position",
        )
        .fetch_all(&db.pool)
        .await
        .expect("dispatches")
    };
    wait_until(
        "the jobs to be dispatched",
        Duration::from_secs(30),
        async || dispatched().await.len() == 3,
    )
    .await;
    // nats-server loses the second job after acknowledging it (as a crash before its disk
    // write would), then restarts; the dispatcher's checkpoint is long past that job.
    let (lost_job, lost_seq) = dispatched().await[1].clone();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let stream = async_nats::jetstream::new(client)
        .get_stream(logbook_proto::subjects::Names::new(&setup.namespace).jobs_stream(&agent.id))
        .await
        .expect("stream");
    assert!(
        stream
            .delete_message(lost_seq as u64)
            .await
            .expect("delete")
    );
    nats.restart();

    agent.start(&[]);
    wait_for_succeeded(
        api,
        &agent.id,
        3,
        "every job to succeed",
        Duration::from_secs(60),
    )
    .await;
    let mut ran = lines(&out);
    ran.sort();
    assert_eq!(ran, ["1", "2", "3"], "a job was lost or ran twice");
    assert_eq!(count_events(db, &lost_job, "JobStarted").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_authentication_an_agent_can_neither_fetch_another_agents_jobs_nor_report_their_results()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsWithAuth::start(dir.path());
    let db = TestDb::new().await;
    let setup = nats.gateway(&db, dir.path());
    let _gateway = setup.start_ready().await;
    let api = Api::new(&setup.base(), dir.path());
    let token = api.enrollment_token(2).await;
    let mut a = Agent::enroll(&setup.base(), &token, dir.path(), "a");
    let mut b = Agent::enroll(&setup.base(), &token, dir.path(), "b");
    assert!(
        !a.identity()["nats"]["user_jwt"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "agents get their own NATS identity"
    );

    // A works normally with its own identity.
    a.start(&[]);
    let out = dir.path().join("out.txt");
    let own = api.queue(&a.id, append(&out, "a")).await;
    api.wait_job(&own, Duration::from_secs(30), |j| {
        j["status"] == "succeeded"
    })
    .await;

    // B is offline with a job waiting in its queue.
    let theirs = api.queue(&b.id, append(&out, "b")).await;
    api.wait_job(&theirs, Duration::from_secs(30), |j| {
        j["status"] == "dispatched"
    })
    .await;

    // Connect as A, with A's JWT and key.
    let jwt = a.identity()["nats"]["user_jwt"]
        .as_str()
        .expect("jwt")
        .to_string();
    let seed = std::fs::read_to_string(a.state.join("nats.nk")).expect("seed");
    let key = std::sync::Arc::new(nkeys::KeyPair::from_seed(seed.trim()).expect("key"));
    let names = logbook_proto::subjects::Names::new(&setup.namespace);
    let as_a = async_nats::ConnectOptions::with_jwt(jwt, move |nonce| {
        let key = key.clone();
        async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
    })
    .custom_inbox_prefix(names.inbox_prefix(&a.id))
    .request_timeout(Some(Duration::from_secs(2)))
    .connect(nats.server.url())
    .await
    .expect("A connects");
    let js = async_nats::jetstream::new(as_a.clone());
    type Pull = async_nats::jetstream::consumer::pull::Config;
    js.get_consumer_from_stream::<Pull, _, _>(
        names.agent_consumer(&a.id),
        names.jobs_stream(&a.id),
    )
    .await
    .expect("A may bind its own consumer");
    assert!(
        js.get_consumer_from_stream::<Pull, _, _>(
            names.agent_consumer(&b.id),
            names.jobs_stream(&b.id)
        )
        .await
        .is_err(),
        "A could bind B's consumer"
    );
    let next = as_a
        .request(
            format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                names.jobs_stream(&b.id),
                names.agent_consumer(&b.id)
            ),
            "1".into(),
        )
        .await;
    assert!(next.is_err(), "A could fetch B's jobs: {next:?}");

    // A forges a result for B's job: on B's subject it is refused by NATS, on its own subject
    // it is refused by the gateway, and nothing is recorded.
    let forged = logbook_proto::agent::v1::JobResultReport {
        job_id: theirs.clone(),
        outcome: logbook_proto::agent::v1::JobOutcome::Succeeded as i32,
        has_exit_code: true,
        finished_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        ..Default::default()
    };
    let bytes: Vec<u8> = prost::Message::encode_to_vec(&forged);
    let on_b = match js.publish(names.results(&b.id), bytes.clone().into()).await {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(on_b.is_err(), "A could publish on B's result subject");
    js.publish(names.results(&a.id), bytes.into())
        .await
        .expect("publish")
        .await
        .expect("A may publish on its own subject");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count_events(&db, &theirs, "JobSucceeded").await,
        0,
        "the forged result was recorded"
    );
    let (_, view) = api.get(&format!("/api/v1/jobs/{theirs}")).await;
    assert_eq!(view["status"], "dispatched");

    // B comes online and runs its own job.
    b.start(&[]);
    api.wait_job(&theirs, Duration::from_secs(30), |j| {
        j["status"] == "succeeded"
    })
    .await;
    let mut ran = lines(&out);
    ran.sort();
    assert_eq!(ran, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_its_nats_identity_between_jobs_and_works_on_after_the_first_one_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsWithAuth::start(dir.path());
    let db = TestDb::new().await;
    // Agents' identities live 12 s: an agent renews its identity 8 s after it was issued.
    let setup = nats
        .gateway(&db, dir.path())
        .with("LOGBOOK_NATS__AGENT_IDENTITY_LIFETIME", "12s");
    let _gateway = setup.start_ready().await;
    let api = Api::new(&setup.base(), dir.path());
    let token = api.enrollment_token(1).await;
    let issued = Instant::now();
    let mut agent = Agent::enroll(&setup.base(), &token, dir.path(), "agent");
    let jwt = |agent: &Agent| {
        agent.identity()["nats"]["user_jwt"]
            .as_str()
            .expect("jwt")
            .to_string()
    };
    let first = jwt(&agent);
    agent.start(&[("LOGBOOK_AGENT_JOBS__MIN_IDENTITY_RENEWAL", "1s")]);
    let out = dir.path().join("out.txt");

    // A job that runs from about 5 s to 10 s is running when the renewal falls due: it is not
    // cut short for it, and the renewal follows it.
    tokio::time::sleep((issued + Duration::from_secs(5)).saturating_duration_since(Instant::now()))
        .await;
    let long = api
        .queue(
            &agent.id,
            json!({"command": format!("sleep 5; echo long >> {}", out.display()), "timeout_secs": 30}),
        )
        .await;
    api.wait_job(&long, Duration::from_secs(30), |j| {
        j["status"] == "succeeded"
    })
    .await;
    wait_until(
        "the agent to renew its NATS identity",
        Duration::from_secs(20),
        async || jwt(&agent) != first,
    )
    .await;

    // Once the first identity has expired (nats-server closes connections that use it), the
    // agent still receives and runs jobs: it connects with the renewed one.
    tokio::time::sleep(
        (issued + Duration::from_secs(13)).saturating_duration_since(Instant::now()),
    )
    .await;
    let after = api.queue(&agent.id, append(&out, "after")).await;
    api.wait_job(&after, Duration::from_secs(30), |j| {
        j["status"] == "succeeded"
    })
    .await;
    assert_eq!(lines(&out), ["long", "after"]);
    assert_eq!(count_events(&db, &long, "JobStarted").await, 1);
}
