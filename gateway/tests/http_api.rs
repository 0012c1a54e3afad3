//! The HTTP API against real Postgres: enrollment, check-ins, the agent list and timeline, and
//! every kind of bad input (which must be refused with a clear error and record nothing).

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use logbook_proto::agent::v1 as pb;
use prost::Message;
use serde_json::json;
use support::{TestApp, checkin_body, new_id};

#[tokio::test]
async fn an_enrolled_agent_checks_in_once_per_checkin_id() {
    let app = TestApp::new().await;
    let agent = app.agent("web-01").await;
    let before = app.event_count().await;
    let id = new_id();

    let (status, first) = app.checkin(&agent, checkin_body(&id, "web-01")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["sequence"], 1);
    assert_eq!(first["duplicate"], false);

    // The agent retries the same check-in (it never saw the answer): recorded once.
    let (status, again) = app.checkin(&agent, checkin_body(&id, "web-01")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["sequence"], 1);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["recorded_at_unix_ms"], first["recorded_at_unix_ms"]);

    let (status, second) = app.checkin(&agent, checkin_body(&new_id(), "web-01")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(second["sequence"], 2);
    assert_eq!(app.event_count().await, before + 2);

    // The stored event carries who, which request and when.
    let metadata: serde_json::Value = sqlx::query_scalar(
        "SELECT metadata FROM checkins WHERE agent_id = $1::uuid AND sequence = 1",
    )
    .bind(&agent.id)
    .fetch_one(&app.db.pool)
    .await
    .expect("event");
    assert_eq!(metadata["actor"], format!("agent:{}", agent.id));
    assert_eq!(metadata["correlation_id"], id);
    assert!(
        metadata["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(metadata["recorded_at"].as_str().is_some());
}

#[tokio::test]
async fn a_replayed_checkin_id_fails_one_batch_then_the_agents_ids_are_looked_up_first() {
    let app = TestApp::new().await;
    let agent = app.agent("web-01").await;
    let id = new_id();
    let (status, first) = app.checkin(&agent, checkin_body(&id, "web-01")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");

    // The gateway now numbers this agent's check-ins from memory, without looking ids up; the
    // first replay is refused by the unique index and appended again with the lookups, and
    // from then on the agent's ids are looked up first, however its new check-ins and
    // replays alternate.
    for n in 0..4 {
        let (status, again) = app.checkin(&agent, checkin_body(&id, "web-01")).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["sequence"], 1);
        assert_eq!(again["duplicate"], true);
        let (status, next) = app.checkin(&agent, checkin_body(&new_id(), "web-01")).await;
        assert_eq!(status, StatusCode::CREATED, "{next}");
        assert_eq!(next["sequence"], n + 2);
    }

    let metrics = app.metrics().await;
    let probed_again = metrics
        .lines()
        .find_map(|line| line.strip_prefix("logbook_ingest_probed_again_batches_total "))
        .and_then(|value| value.trim().parse::<f64>().ok());
    assert_eq!(probed_again, Some(1.0), "{metrics}");
}

#[tokio::test]
async fn check_ins_are_accepted_and_answered_as_protobuf() {
    let app = TestApp::new().await;
    let agent = app.agent("web-01").await;
    let request = pb::CheckinRequest {
        checkin_id: new_id(),
        report: Some(pb::CheckinReport {
            collected_at_unix_ms: chrono::Utc::now().timestamp_millis(),
            hostname: "web-01".into(),
            os: Some(pb::OsInfo {
                family: "linux".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let (status, headers, body) = app
        .send(
            Request::post(format!("/api/v1/agents/{}/checkins", agent.id))
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", agent.credential),
                )
                .header(header::CONTENT_TYPE, "application/x-protobuf")
                .header(header::ACCEPT, "application/x-protobuf")
                .body(Body::from(request.encode_to_vec()))
                .expect("request"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
    let answer = pb::CheckinResponse::decode(body.as_slice()).expect("protobuf answer");
    assert_eq!(answer.sequence, 1);
}

#[tokio::test]
async fn a_checkin_costs_no_replay_of_the_agents_history() {
    let app = TestApp::new().await;
    let agent = app.agent("busy").await;
    // A long history, written directly: the next check-in continues the sequence from it.
    sqlx::query(
        "INSERT INTO checkins (agent_id, sequence, checkin_id, recorded_at, collected_at, hostname, os_family, \
                               os_name, os_version, kernel_version, arch, agent_version, payload, metadata) \
         SELECT $1::uuid, s, gen_random_uuid(), now(), now(), 'busy', '', '', '', '', '', '', '{}', '{}' \
           FROM generate_series(1, 5000) s",
    )
    .bind(&agent.id)
    .execute(&app.db.pool)
    .await
    .expect("history");
    let (status, answer) = app.checkin(&agent, checkin_body(&new_id(), "busy")).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["sequence"], 5001);
}

#[tokio::test]
async fn many_agents_checking_in_at_once_are_all_recorded_in_order() {
    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let mut agents = Vec::new();
    for i in 0..20 {
        agents.push(
            app.agent_in(&client_id, &site_id, &format!("host-{i}"))
                .await,
        );
    }
    let mut tasks = Vec::new();
    for agent in agents {
        let router = app.router.clone();
        tasks.push(tokio::spawn(async move {
            let mut sequences = Vec::new();
            for _ in 0..10 {
                let request = Request::post(format!("/api/v1/agents/{}/checkins", agent.id))
                    .header(
                        header::AUTHORIZATION,
                        format!("Bearer {}", agent.credential),
                    )
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(checkin_body(&new_id(), "h").to_string()))
                    .expect("request");
                let response = tower::ServiceExt::oneshot(router.clone(), request)
                    .await
                    .expect("answer");
                assert_eq!(response.status(), StatusCode::CREATED);
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
                sequences.push(answer["sequence"].as_u64().expect("sequence"));
            }
            sequences
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await.expect("agent task"),
            (1..=10).collect::<Vec<u64>>()
        );
    }
}

/// A check-in submitted to an ingest directly, as the check-in handler would.
fn submission(
    agent: &support::Agent,
    checkin_id: logbook_domain::ids::CheckinId,
    hostname: &str,
) -> logbook_gateway::ingest::Submission {
    logbook_gateway::ingest::Submission {
        agent_id: agent.id.parse().expect("agent id"),
        credential: logbook_gateway::secrets::hash(&agent.credential),
        checkin_id,
        payload: json!({ "AgentCheckedIn": { "checkin_id": checkin_id } }).to_string(),
        facts: logbook_gateway::ingest::CheckinFacts {
            collected_at: chrono::Utc::now(),
            hostname: hostname.into(),
            os_family: "linux".into(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            kernel_version: "6.1.0".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
        },
        request_id: String::new(),
    }
}

#[tokio::test]
async fn two_gateways_checking_in_one_agent_at_once_record_each_checkin_once_in_order() {
    use logbook_domain::ids::CheckinId;
    use logbook_gateway::config::IngestConfig;
    use logbook_gateway::ingest::Ingest;
    use logbook_gateway::notify::LogNotifier;

    let app = TestApp::new().await;
    let agent = app.agent("contended").await;
    // Two gateways' ingests on one database: nothing keeps their batches of this agent apart,
    // so they race for its sequence numbers, and a retry sent to the other gateway races the
    // first copy for its check-in id.
    let gateways: Vec<Ingest> = (0..2)
        .map(|_| {
            Ingest::start(
                app.pool.clone(),
                IngestConfig::default(),
                LogNotifier::disabled(),
            )
            .0
        })
        .collect();
    let ids: Vec<CheckinId> = (0..400).map(|_| new_id().parse().expect("id")).collect();
    let submit = |ingest: Ingest, checkin_id: CheckinId| {
        let submission = submission(&agent, checkin_id, "racer");
        tokio::spawn(async move { ingest.submit(submission).await })
    };
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        tasks.push((*id, submit(gateways[i % 2].clone(), *id)));
        // Every other check-in is also retried through the other gateway.
        if i % 2 == 0 {
            tasks.push((*id, submit(gateways[(i + 1) % 2].clone(), *id)));
        }
    }
    let mut sequences = std::collections::HashMap::new();
    let mut first_copies = 0;
    for (id, task) in tasks {
        let recorded = task.await.expect("task").expect("recorded");
        first_copies += usize::from(!recorded.duplicate);
        // Both copies of a retried check-in are answered with the one sequence it got.
        let sequence = *sequences.entry(id).or_insert(recorded.sequence);
        assert_eq!(
            sequence, recorded.sequence,
            "two sequences for one check-in"
        );
    }
    assert_eq!(
        first_copies,
        ids.len(),
        "each check-in recorded exactly once"
    );

    let stored: Vec<(i64, uuid::Uuid)> = sqlx::query_as(
        "SELECT sequence, checkin_id FROM checkins WHERE agent_id = $1::uuid ORDER BY sequence",
    )
    .bind(&agent.id)
    .fetch_all(&app.pool)
    .await
    .expect("stream");
    assert_eq!(
        stored.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "the stream is numbered without gaps"
    );
    for (sequence, key) in stored {
        assert_eq!(sequences[&CheckinId::from(key)], sequence);
    }
}

/// An ingest of one lane (so that check-ins submitted together share a batch) whose batches
/// below `ingest.min_batch` (32) wait up to `max_wait` for company.
fn one_lane_ingest(
    app: &TestApp,
    max_wait: std::time::Duration,
) -> logbook_gateway::ingest::Ingest {
    let config = logbook_gateway::config::IngestConfig {
        concurrent_flushes: 1,
        min_batch: 32,
        max_wait,
        ..Default::default()
    };
    let notifier = logbook_gateway::notify::LogNotifier::disabled();
    logbook_gateway::ingest::Ingest::start(app.pool.clone(), config, notifier).0
}

#[tokio::test]
async fn a_lane_waits_for_company_after_a_batch_of_several_and_not_after_a_lone_checkin() {
    use std::time::{Duration, Instant};

    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let agents = [
        app.agent_in(&client_id, &site_id, "first").await,
        app.agent_in(&client_id, &site_id, "second").await,
    ];
    let wait = Duration::from_secs(3);
    let ingest = one_lane_ingest(&app, wait);
    let submit = |agent: &support::Agent| {
        let ingest = ingest.clone();
        let submission = submission(agent, new_id().parse().expect("id"), "h");
        async move {
            let submitted = Instant::now();
            ingest.submit(submission).await.expect("recorded");
            submitted.elapsed()
        }
    };
    // A lane starts quiet: its first check-in is appended at once.
    assert!(submit(&agents[0]).await < wait, "the first check-in waited");
    // Two submitted together (this test's runtime has one thread: both are queued before the
    // lane runs) make a batch of two, not a quiet lane: the next lone check-in waits for company.
    futures::future::join_all(agents.iter().map(&submit)).await;
    let waited = submit(&agents[0]).await;
    assert!(
        waited >= wait,
        "after a batch of two a lone check-in waited only {waited:?}"
    );
    // It found none, so the lane is quiet again and the next is appended at once.
    let answered = submit(&agents[1]).await;
    assert!(
        answered < wait,
        "after a lone check-in the next waited {answered:?}"
    );
}

#[tokio::test]
async fn a_batch_the_lane_vouches_for_records_its_agents_in_order_and_refuses_a_revoked_one() {
    use logbook_gateway::ingest::IngestError;

    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let agents = [
        app.agent_in(&client_id, &site_id, "kept").await,
        app.agent_in(&client_id, &site_id, "revoked").await,
        app.agent_in(&client_id, &site_id, "other").await,
    ];
    // One lane: check-ins submitted together (on this test's one-thread runtime, all queued
    // before the lane runs) share a batch, and later ones wait for company for a while.
    let ingest = one_lane_ingest(&app, std::time::Duration::from_millis(300));
    let submit = |agent: &support::Agent| {
        let ingest = ingest.clone();
        let submission = submission(agent, new_id().parse().expect("id"), "h");
        async move { ingest.submit(submission).await }
    };
    // First batch: the lane knows none of them yet, and numbers them from the log.
    let first = futures::future::join_all(agents.iter().map(&submit)).await;
    for recorded in &first {
        assert_eq!(recorded.as_ref().expect("recorded").sequence, 1);
    }
    let (status, _) = app
        .admin(
            Method::POST,
            &format!("/api/v1/agents/{}/decommission", agents[1].id),
            Some(json!({"reason": "stolen"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Second and third batches: the lane vouches for every agent, each appears once.
    for sequence in [2, 3] {
        let answers = futures::future::join_all(agents.iter().map(&submit)).await;
        assert_eq!(answers[0].as_ref().expect("kept").sequence, sequence);
        assert!(matches!(answers[1], Err(IngestError::Unauthorized)));
        assert_eq!(answers[2].as_ref().expect("other").sequence, sequence);
    }
    let vouched = app
        .metrics()
        .await
        .lines()
        .find(|line| line.starts_with("logbook_ingest_vouched_batches_total"))
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(
        vouched >= 2.0,
        "the vouched statement appended {vouched} batches"
    );
    for (agent, expected) in agents.iter().zip([vec![1, 2, 3], vec![1], vec![1, 2, 3]]) {
        let stored: Vec<i64> = sqlx::query_scalar(
            "SELECT sequence FROM checkins WHERE agent_id = $1::uuid ORDER BY sequence",
        )
        .bind(&agent.id)
        .fetch_all(&app.pool)
        .await
        .expect("stream");
        assert_eq!(stored, expected, "the stream of {}", agent.id);
    }
}

#[tokio::test]
async fn enrollment_refuses_unknown_expired_used_up_and_revoked_tokens_and_records_nothing() {
    let app = TestApp::new().await;
    let (_, site_id) = app.site().await;

    let before = app.event_count().await;
    let (status, body) = app.enroll("lbe_not-a-token", "h").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(app.event_count().await, before);

    let once = app.enrollment_token(&site_id, json!({"max_uses": 1})).await;
    assert_eq!(app.enroll(&once, "first").await.0, StatusCode::CREATED);
    let before = app.event_count().await;
    let (status, body) = app.enroll(&once, "second").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("used up"),
        "{body}"
    );
    assert_eq!(app.event_count().await, before);

    let short = app
        .enrollment_token(&site_id, json!({"expires_in": "1s"}))
        .await;
    let before = app.event_count().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = app.enroll(&short, "late").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("expired"),
        "{body}"
    );
    assert_eq!(app.event_count().await, before);

    let (status, token) = app
        .admin(
            Method::POST,
            &format!("/api/v1/sites/{site_id}/enrollment-tokens"),
            Some(json!({"max_uses": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .admin(
            Method::POST,
            &format!(
                "/api/v1/enrollment-tokens/{}/revoke",
                token["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let before = app.event_count().await;
    let (status, _) = app
        .enroll(token["token"].as_str().expect("token"), "x")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.event_count().await, before);

    let (status, body) = app.enroll("", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| d["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["token", "hostname"]);
}

#[tokio::test]
async fn concurrent_enrollments_never_exceed_a_tokens_uses() {
    let app = TestApp::new().await;
    let (_, site_id) = app.site().await;
    let token = app.enrollment_token(&site_id, json!({"max_uses": 3})).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let router = app.router.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let request = Request::post("/api/v1/enroll")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"token": token, "hostname": format!("h{i}"), "os": "linux"}).to_string(),
                ))
                .expect("request");
            tower::ServiceExt::oneshot(router, request)
                .await
                .expect("answer")
                .status()
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task") {
            StatusCode::CREATED => created += 1,
            StatusCode::UNAUTHORIZED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 3);
}

#[tokio::test]
async fn foreign_missing_and_decommissioned_credentials_are_refused_and_record_nothing() {
    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let a = app.agent_in(&client_id, &site_id, "a").await;
    let b = app.agent_in(&client_id, &site_id, "b").await;
    let before = app.event_count().await;

    // B's credential on A's check-in URL.
    let (status, body) = app
        .json(
            Method::POST,
            &format!("/api/v1/agents/{}/checkins", a.id),
            Some(&b.credential),
            Some(checkin_body(&new_id(), "a")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // No credential.
    let (status, _) = app
        .json(
            Method::POST,
            &format!("/api/v1/agents/{}/checkins", a.id),
            None,
            Some(checkin_body(&new_id(), "a")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An unknown agent id.
    let (status, _) = app
        .json(
            Method::POST,
            &format!("/api/v1/agents/{}/checkins", new_id()),
            Some(&a.credential),
            Some(checkin_body(&new_id(), "a")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.event_count().await, before);

    let (status, _) = app
        .admin(
            Method::POST,
            &format!("/api/v1/agents/{}/decommission", a.id),
            Some(json!({"reason": "stolen"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let before = app.event_count().await;
    let (status, _) = app.checkin(&a, checkin_body(&new_id(), "a")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.event_count().await, before);
    // B is unaffected.
    assert_eq!(
        app.checkin(&b, checkin_body(&new_id(), "b")).await.0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn malformed_invalid_oversized_and_mistyped_check_ins_are_refused_and_record_nothing() {
    let app = TestApp::with(|c| c.http.max_body_bytes = 4096).await;
    let agent = app.agent("web-01").await;
    let before = app.event_count().await;
    let url = format!("/api/v1/agents/{}/checkins", agent.id);
    let post = |content_type: &'static str, body: Vec<u8>| {
        Request::post(url.clone())
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", agent.credential),
            )
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("request")
    };

    let (status, _, body) = app
        .send(post("application/json", b"{not json".to_vec()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(body["error"]["details"][0]["field"], "body");

    let (status, _, _) = app
        .send(post("application/x-protobuf", vec![0xff, 0xff, 0xff]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let mut invalid = checkin_body("not-a-uuid", "");
    invalid["report"]["memory"]["used_bytes"] = json!(999_999);
    invalid["report"]["ip_addresses"] = json!(["300.1.1.1"]);
    let (status, body) = app.checkin(&agent, invalid).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| d["field"].as_str().expect("field"))
        .collect();
    assert_eq!(
        fields,
        [
            "checkin_id",
            "report.hostname",
            "report.memory.used_bytes",
            "report.ip_addresses[0]"
        ]
    );

    let mut big = checkin_body(&new_id(), "web-01");
    big["report"]["logged_in_users"] = json!(vec!["x".repeat(100); 100]);
    let (status, _, body) = app
        .send(post("application/json", big.to_string().into_bytes()))
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, _, _) = app.send(post("text/plain", b"hello".to_vec())).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, body) = app
        .json(
            Method::POST,
            "/api/v1/agents/not-a-uuid/checkins",
            Some(&agent.credential),
            Some(checkin_body(&new_id(), "x")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "agent_id");

    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn admin_endpoints_need_a_live_api_token() {
    let app = TestApp::new().await;
    let (status, body) = app.json(Method::GET, "/api/v1/agents", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = app
        .json(Method::GET, "/api/v1/agents", Some("lbk_wrong"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, issued) = app
        .admin(
            Method::POST,
            "/api/v1/api-tokens",
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = issued["token"].as_str().expect("token");
    assert_eq!(
        app.json(Method::GET, "/api/v1/clients", Some(token), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = app
        .admin(
            Method::POST,
            &format!(
                "/api/v1/api-tokens/{}/revoke",
                issued["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.json(Method::GET, "/api/v1/clients", Some(token), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn tenancy_validation_and_conflicts_are_explained() {
    let app = TestApp::new().await;
    let (status, body) = app
        .admin(Method::POST, "/api/v1/clients", Some(json!({"name": "  "})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "name");
    let (status, body) = app
        .admin(Method::POST, "/api/v1/clients", Some(json!({"nom": "x"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app
        .admin(
            Method::POST,
            &format!("/api/v1/clients/{}/sites", new_id()),
            Some(json!({"name": "HQ"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, site_id) = app.site().await;
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/api/v1/sites/{site_id}/enrollment-tokens"),
            Some(json!({"expires_in": "soon"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "expires_in");
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/api/v1/sites/{site_id}/enrollment-tokens"),
            Some(json!({"max_uses": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "max_uses");
}

#[tokio::test]
async fn the_agent_list_filters_pages_and_shows_latest_metrics() {
    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let (_, other_site) = app.site().await;
    let mut agents = Vec::new();
    for i in 0..5 {
        let agent = app
            .agent_in(&client_id, &site_id, &format!("host-{i}"))
            .await;
        assert_eq!(
            app.checkin(&agent, checkin_body(&new_id(), &format!("host-{i}")))
                .await
                .0,
            StatusCode::CREATED
        );
        agents.push(agent);
    }
    let (status, _) = app
        .admin(
            Method::POST,
            &format!("/api/v1/agents/{}/move", agents[4].id),
            Some(json!({"site_id": other_site})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .admin(
            Method::PATCH,
            &format!("/api/v1/agents/{}", agents[0].id),
            Some(json!({"display_name": "Reception"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.settle().await;

    let mut hostnames = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/agents?limit=2&cursor={c}"),
            None => "/api/v1/agents?limit=2".to_string(),
        };
        let (status, page) = app.admin(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for item in page["items"].as_array().expect("items") {
            hostnames.push(item["hostname"].as_str().expect("hostname").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(
        hostnames,
        ["host-0", "host-1", "host-2", "host-3", "host-4"]
    );

    let (_, page) = app
        .admin(
            Method::GET,
            &format!("/api/v1/agents?site_id={site_id}"),
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().expect("items").len(), 4);
    let (_, page) = app
        .admin(
            Method::GET,
            "/api/v1/agents?status=online&search=host-3",
            None,
        )
        .await;
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    let agent = &items[0];
    assert_eq!(agent["client"]["name"], "Acme");
    assert_eq!(agent["metrics"]["disks"][0]["mount_point"], "/");
    assert_eq!(agent["metrics"]["logged_in_users"][0], "alice");

    let (status, one) = app
        .admin(
            Method::GET,
            &format!("/api/v1/agents/{}", agents[0].id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["display_name"], "Reception");
    assert_eq!(one["hostname"], "host-0");

    let (status, body) = app
        .admin(Method::GET, "/api/v1/agents?status=sleepy", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "status");
    let (status, _) = app.admin(Method::GET, "/api/v1/agents?limit=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .admin(Method::GET, "/api/v1/agents?cursor=garbage", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .admin(Method::GET, &format!("/api/v1/agents/{}", new_id()), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_timeline_pages_through_history_and_answers_what_a_machine_looked_like() {
    let app = TestApp::new().await;
    let agent = app.agent("web-01").await;
    for _ in 0..3 {
        assert_eq!(
            app.checkin(&agent, checkin_body(&new_id(), "web-01"))
                .await
                .0,
            StatusCode::CREATED
        );
    }
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut later = checkin_body(&new_id(), "web-01");
    later["report"]["disks"][0]["used_bytes"] = json!(999);
    assert_eq!(app.checkin(&agent, later).await.0, StatusCode::CREATED);
    app.settle().await;

    let (status, page) = app
        .admin(
            Method::GET,
            &format!("/api/v1/agents/{}/timeline?limit=3", agent.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["sequence"], 4);
    assert_eq!(
        items[0]["payload"]["AgentCheckedIn"]["report"]["disks"][0]["used_bytes"],
        999
    );
    assert_eq!(items[0]["actor"], format!("agent:{}", agent.id));
    let next = page["next_cursor"].as_str().expect("more pages");
    let (_, older) = app
        .admin(
            Method::GET,
            &format!("/api/v1/agents/{}/timeline?limit=3&before={next}", agent.id),
            None,
        )
        .await;
    let types: Vec<&str> = older["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["AgentCheckedIn", "AgentEnrolled"]);
    assert!(older["next_cursor"].is_null());

    let (status, state) = app
        .admin(
            Method::GET,
            &format!(
                "/api/v1/agents/{}/state?at={}",
                agent.id,
                between.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["checkin"]["sequence"], 3);
    assert_eq!(
        state["checkin"]["payload"]["AgentCheckedIn"]["report"]["disks"][0]["used_bytes"],
        400
    );

    let (status, _) = app
        .admin(
            Method::GET,
            &format!("/api/v1/agents/{}/timeline", new_id()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .admin(
            Method::GET,
            &format!("/api/v1/agents/{}/timeline?before=x", agent.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let app = TestApp::new().await;
    let (status, doc) = app
        .json(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/api/v1/enroll",
        "/api/v1/agents/{agent_id}/checkins",
        "/api/v1/agents",
        "/api/v1/agents/{agent_id}/timeline",
        "/readyz",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(
        doc["components"]["securitySchemes"]
            .get("api_token")
            .is_some()
    );
}

#[tokio::test]
async fn unknown_routes_and_metrics() {
    let app = TestApp::new().await;
    let (status, body) = app.json(Method::GET, "/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(app.metrics().await.contains("logbook_http_requests_total"));
}

/// A fleet rollout: many agents enrolling with one token at once queue on the token, each in
/// a transaction that holds a connection. The one whose turn it is must not need a second
/// connection, or with more enrollments waiting than the pool has connections none gets one.
#[tokio::test]
async fn more_agents_enrolling_at_once_than_the_pool_has_connections_all_enroll() {
    use std::time::Duration;

    let db = logbook_testkit::TestDb::new().await;
    let options: sqlx::postgres::PgConnectOptions = db.url.parse().expect("url");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let app = TestApp::on(db, pool, |_| {}).await;
    let (_, site_id) = app.site().await;
    let token = app
        .enrollment_token(&site_id, json!({"max_uses": 100}))
        .await;

    let enrollments = (0..16).map(|i| {
        let (app, token) = (&app, &token);
        async move { app.enroll(token, &format!("rollout-{i:02}")).await }
    });
    let answers = futures::future::join_all(enrollments).await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    let agents: std::collections::HashSet<&str> = answers
        .iter()
        .map(|(_, body)| body["agent_id"].as_str().expect("agent_id"))
        .collect();
    assert_eq!(agents.len(), 16);
}

/// A token used by many agents is loaded from a snapshot of its state and the redemptions after
/// it (not its whole history), and counts its uses across the snapshot all the same.
#[tokio::test]
async fn a_token_used_past_a_snapshot_still_counts_every_use() {
    let app = TestApp::new().await;
    let (_, site_id) = app.site().await;
    let token = app
        .enrollment_token(&site_id, json!({"max_uses": 102}))
        .await;
    for i in 0..102 {
        let (status, body) = app.enroll(&token, &format!("fleet-{i:03}")).await;
        assert_eq!(status, StatusCode::CREATED, "enrollment {i}: {body}");
    }
    // Issued at sequence 1, the 99th redemption at 100: the snapshot sums up those 100 events.
    let snapshots: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT last_sequence, payload::json FROM snapshots WHERE aggregate_type = 'enrollment_token'",
    )
    .fetch_all(&app.db.pool)
    .await
    .expect("snapshots");
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0].0, 100);
    assert_eq!(snapshots[0].1["uses"], 99, "{}", snapshots[0].1);

    let before = app.event_count().await;
    let (status, body) = app.enroll(&token, "one-too-many").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("used up (102 of 102 uses)"),
        "{body}"
    );
    assert_eq!(app.event_count().await, before);
}

/// Reads one answer (head and `content-length` body) from `stream`; `None` if the gateway closed
/// the connection first.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + length {
                return Some(text);
            }
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf).await.expect("read") {
            0 => return None,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_kept_open_connection_lives_while_used_and_is_closed_after_the_idle_timeout() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let idle_timeout = Duration::from_secs(1);
    let server = tokio::spawn(logbook_gateway::http::server::serve(
        listener,
        app.router.clone(),
        idle_timeout,
        shutdown.clone(),
    ));
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    // Requests half the timeout apart keep sharing the one connection.
    let mut answered = Instant::now();
    for _ in 0..3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .expect("write");
        let answer = read_answer(&mut stream)
            .await
            .expect("the connection was closed while in use");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answered = Instant::now();
        tokio::time::sleep(idle_timeout / 2).await;
    }
    // Left idle, it is closed once the timeout has passed since the last answer.
    let idle_since = answered;
    let mut rest = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut rest))
        .await
        .expect("the idle connection was not closed within 10 s")
        .expect("read");
    assert_eq!(read, 0, "the gateway sent more than it was asked");
    let idle = idle_since.elapsed();
    assert!(
        idle >= idle_timeout - Duration::from_millis(100) && idle < idle_timeout * 4,
        "closed after {idle:?} idle, with a timeout of {idle_timeout:?}"
    );
    shutdown.cancel();
    server.await.expect("the server stops");
}
