//! The jobs API against real Postgres (no transport running: jobs stay queued unless a test
//! drives them through the same commands the claims and results handlers use).

mod support;

use axum::http::{Method, StatusCode};
use logbook_domain::ids::{AgentId, JobId};
use logbook_domain::job::{JobResult, Outcome};
use logbook_gateway::jobs::{Claim, ResultOutcome};
use serde_json::json;
use support::{TestApp, new_id};

fn command(line: &str) -> serde_json::Value {
    json!({"command": line, "timeout_secs": 30})
}

fn result(exit_code: i32) -> JobResult {
    JobResult {
        exit_code: Some(exit_code),
        stdout: "out".into(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration_ms: 3,
        finished_at: chrono::Utc::now(),
        error: None,
    }
}

/// Queues `true` for `agent_id` through the API and returns the job's id.
async fn queue_true(app: &TestApp, agent_id: &str) -> JobId {
    let (status, job) = app
        .admin(
            Method::POST,
            &format!("/api/v1/agents/{agent_id}/jobs"),
            Some(command("true")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job["id"].as_str().expect("id").parse().expect("uuid")
}

#[tokio::test]
async fn a_job_is_queued_in_agent_order_and_can_be_cancelled_before_it_starts() {
    let app = TestApp::new().await;
    let agent = app.agent("web-01").await;
    let (status, first) = app
        .admin(
            Method::POST,
            &format!("/api/v1/agents/{}/jobs", agent.id),
            Some(command("uptime")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["agent_seq"], 1);
    let (_, second) = app
        .admin(
            Method::POST,
            &format!("/api/v1/agents/{}/jobs", agent.id),
            Some(json!({"script": {"interpreter": "bash", "body": "echo $1", "args": ["hi"], "env": {"X": "1"}}, "expires_in": "2h"})),
        )
        .await;
    assert_eq!(second["agent_seq"], 2);
    app.settle().await;
    let (status, job) = app
        .admin(
            Method::GET,
            &format!("/api/v1/jobs/{}", first["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["type"], "job");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["summary"], "uptime");

    let path = format!("/api/v1/jobs/{}/cancel", first["id"].as_str().expect("id"));
    let (status, cancelled) = app.admin(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let (status, _) = app.admin(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    app.settle().await;
    let (_, page) = app
        .admin(
            Method::GET,
            &format!("/api/v1/agents/{}/jobs", agent.id),
            None,
        )
        .await;
    let statuses: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|j| j["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["queued", "cancelled"], "newest first");
    // Cancelled jobs show on the agent's timeline, with who did it.
    let (_, timeline) = app
        .admin(
            Method::GET,
            &format!(
                "/api/v1/agents/{}/timeline?event_type=JobCancelled",
                agent.id
            ),
            None,
        )
        .await;
    assert!(
        timeline["items"][0]["actor"]
            .as_str()
            .expect("actor")
            .starts_with("api_token:")
    );
}

#[tokio::test]
async fn bad_jobs_are_refused_naming_the_problem_and_nothing_is_queued() {
    let app = TestApp::with(|c| c.jobs.max_script_bytes = 2048).await;
    let agent = app.agent("web-01").await;
    let url = format!("/api/v1/agents/{}/jobs", agent.id);
    let before = app.event_count().await;
    let cases = [
        (
            json!({"script": {"interpreter": "cobol", "body": "x"}}),
            "script.interpreter",
        ),
        (
            json!({"script": {"interpreter": "sh", "body": "   "}}),
            "body",
        ),
        (
            json!({"script": {"interpreter": "sh", "body": "x".repeat(4096)}}),
            "body",
        ),
        (
            json!({"command": "ls", "deadline": "2001-01-01T00:00:00Z"}),
            "deadline",
        ),
        (
            json!({"command": "ls", "expires_in": "tomorrow"}),
            "expires_in",
        ),
        (json!({"command": "ls", "timeout_secs": 0}), "timeout_secs"),
        (
            json!({"command": "ls", "script": {"interpreter": "sh", "body": "ls"}}),
            "script",
        ),
        (json!({}), "script"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.admin(Method::POST, &url, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        assert_eq!(
            answer["error"]["details"][0]["field"], field,
            "{body} -> {answer}"
        );
    }
    let (status, _) = app
        .admin(
            Method::POST,
            &format!("/api/v1/agents/{}/jobs", new_id()),
            Some(command("ls")),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .json(Method::POST, &url, None, Some(command("ls")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.event_count().await,
        before,
        "a refused job left a trace"
    );

    app.admin(
        Method::POST,
        &format!("/api/v1/agents/{}/decommission", agent.id),
        Some(json!({})),
    )
    .await;
    let (status, _) = app.admin(Method::POST, &url, Some(command("ls"))).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn claims_and_results_are_decided_by_the_server_once() {
    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let a = app.agent_in(&client_id, &site_id, "a").await;
    let b = app.agent_in(&client_id, &site_id, "b").await;
    let job_id = queue_true(&app, &a.id).await;
    let (agent_a, agent_b): (AgentId, AgentId) =
        (a.id.parse().expect("uuid"), b.id.parse().expect("uuid"));
    let before = app.event_count().await;

    // Another agent can neither claim nor report the job, and leaves no trace.
    assert_eq!(
        app.commands
            .claim_job(agent_b, job_id, None)
            .await
            .expect("claim"),
        Claim::Refused
    );
    let rejected = app
        .commands
        .record_job_result(agent_b, job_id, Outcome::Succeeded, result(0))
        .await
        .expect("result");
    assert!(
        matches!(rejected, ResultOutcome::Rejected(_)),
        "{rejected:?}"
    );
    let unknown = app
        .commands
        .record_job_result(
            agent_a,
            JobId::from(uuid::Uuid::now_v7()),
            Outcome::Succeeded,
            result(0),
        )
        .await
        .expect("result");
    assert!(matches!(unknown, ResultOutcome::Rejected(_)));
    let unclaimed = app
        .commands
        .record_job_result(agent_a, job_id, Outcome::Succeeded, result(0))
        .await
        .expect("result");
    assert!(
        matches!(unclaimed, ResultOutcome::Rejected(_)),
        "a result for a job never claimed"
    );
    assert_eq!(app.event_count().await, before);

    assert_eq!(
        app.commands
            .claim_job(agent_a, job_id, None)
            .await
            .expect("claim"),
        Claim::Run
    );
    assert_eq!(
        app.commands
            .claim_job(agent_a, job_id, None)
            .await
            .expect("claim"),
        Claim::AlreadyStarted
    );
    assert_eq!(
        app.commands
            .cancel_job(&support_ctx(), job_id)
            .await
            .map_err(|e| e.to_string()),
        Err("job has already started".into())
    );
    assert_eq!(
        app.commands
            .record_job_result(agent_a, job_id, Outcome::Failed, result(2))
            .await
            .expect("result"),
        ResultOutcome::Recorded
    );
    assert_eq!(
        app.commands
            .record_job_result(agent_a, job_id, Outcome::Failed, result(2))
            .await
            .expect("result"),
        ResultOutcome::Duplicate
    );
    app.settle().await;
    let (_, job) = app
        .admin(Method::GET, &format!("/api/v1/jobs/{job_id}"), None)
        .await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["exit_code"], 2);
    assert_eq!(job["result"]["stdout"], "out");
    assert_eq!(job["ended_by"], format!("agent:{}", a.id));
}

#[tokio::test]
async fn a_claim_asked_again_by_the_same_attempt_is_granted_again_and_no_other_is() {
    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let a = app.agent_in(&client_id, &site_id, "a").await;
    let job_id = queue_true(&app, &a.id).await;
    let agent: AgentId = a.id.parse().expect("uuid");
    let claim = async |attempt: Option<&str>| {
        app.commands
            .claim_job(agent, job_id, attempt)
            .await
            .expect("claim")
    };

    assert_eq!(claim(Some("first-attempt")).await, Claim::Run);
    let after_start = app.event_count().await;
    // The answer was lost and the agent asks again: granted again, recorded once.
    assert_eq!(claim(Some("first-attempt")).await, Claim::Run);
    assert_eq!(app.event_count().await, after_start);
    // Another attempt (the agent after a restart, or a clone with its identity) is not.
    assert_eq!(claim(Some("second-attempt")).await, Claim::AlreadyStarted);
    // Nor a claim that names no attempt.
    assert_eq!(claim(None).await, Claim::AlreadyStarted);
    assert_eq!(app.event_count().await, after_start);
}

#[tokio::test]
async fn claims_and_results_decided_in_one_batch_are_answered_one_by_one() {
    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let a = app.agent_in(&client_id, &site_id, "a").await;
    let b = app.agent_in(&client_id, &site_id, "b").await;
    let (agent_a, agent_b): (AgentId, AgentId) =
        (a.id.parse().expect("uuid"), b.id.parse().expect("uuid"));
    let mut jobs = Vec::new();
    for agent in [&a, &a, &b] {
        jobs.push(queue_true(&app, &agent.id).await);
    }
    let cancelled = queue_true(&app, &b.id).await;
    app.commands
        .cancel_job(&support_ctx(), cancelled)
        .await
        .expect("cancel");
    let before = app.event_count().await;

    let claim = |agent_id, job_id| logbook_gateway::jobs::ClaimRequest {
        agent_id,
        job_id,
        attempt: None,
    };
    let answers: Vec<Claim> = app
        .commands
        .claim_jobs(vec![
            claim(agent_a, jobs[0]),
            claim(agent_a, jobs[1]),
            // The same job twice in one batch: the second claim sees the first.
            claim(agent_a, jobs[0]),
            // Another agent's job.
            claim(agent_a, jobs[2]),
            claim(agent_b, jobs[2]),
            claim(agent_b, cancelled),
        ])
        .await
        .expect("batch")
        .into_iter()
        .map(|answer| answer.expect("claim"))
        .collect();
    assert_eq!(
        answers,
        [
            Claim::Run,
            Claim::Run,
            Claim::AlreadyStarted,
            Claim::Refused,
            Claim::Run,
            Claim::Cancelled
        ]
    );
    assert_eq!(
        app.event_count().await,
        before + 3,
        "one JobStarted for each granted claim, nothing for the others"
    );

    let reported = |agent_id, job_id, exit_code| logbook_gateway::jobs::ReportedResult {
        agent_id,
        job_id,
        outcome: Outcome::Succeeded,
        result: result(exit_code),
    };
    let answers: Vec<ResultOutcome> = app
        .commands
        .record_job_results(vec![
            reported(agent_a, jobs[0], 0),
            reported(agent_a, jobs[0], 0),
            reported(agent_b, jobs[1], 0),
            reported(agent_b, jobs[2], 0),
        ])
        .await
        .expect("batch")
        .into_iter()
        .map(|answer| answer.expect("result"))
        .collect();
    assert_eq!(answers[0], ResultOutcome::Recorded);
    assert_eq!(answers[1], ResultOutcome::Duplicate);
    assert!(
        matches!(answers[2], ResultOutcome::Rejected(_)),
        "another agent's result: {:?}",
        answers[2]
    );
    assert_eq!(answers[3], ResultOutcome::Recorded);
    assert_eq!(app.event_count().await, before + 5);
}

#[tokio::test]
async fn batches_racing_for_the_same_jobs_grant_each_claim_once() {
    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let a = app.agent_in(&client_id, &site_id, "a").await;
    let agent_a: AgentId = a.id.parse().expect("uuid");
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.push(queue_true(&app, &a.id).await);
    }
    let batch = |reverse: bool| {
        let mut claims: Vec<_> = jobs
            .iter()
            .map(|job_id| logbook_gateway::jobs::ClaimRequest {
                agent_id: agent_a,
                job_id: *job_id,
                attempt: None,
            })
            .collect();
        if reverse {
            claims.reverse();
        }
        let commands = app.commands.clone();
        async move { commands.claim_jobs(claims).await }
    };
    let (first, second) = tokio::join!(batch(false), batch(true));
    let granted = first
        .expect("first batch")
        .into_iter()
        .chain(second.expect("second batch"))
        .map(|answer| answer.expect("claim"))
        .filter(|claim| *claim == Claim::Run)
        .count();
    assert_eq!(granted, jobs.len(), "every job granted exactly once");
}

fn support_ctx() -> logbook_gateway::commands::Ctx {
    logbook_gateway::commands::Ctx::new(
        logbook_domain::metadata::Actor::System("test".into()),
        "test",
    )
}

#[tokio::test]
async fn a_bulk_job_resolves_its_targets_counts_their_states_and_retries_failures() {
    let app = TestApp::new().await;
    let (client_id, site_id) = app.site().await;
    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(app.agent_in(&client_id, &site_id, &format!("h{i}")).await);
    }
    let (_, other_site) = app.site().await;
    app.agent_in(&client_id, &other_site, "elsewhere").await;
    app.settle().await;

    let (status, body) = app
        .admin(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"target": {"agent_ids": [agents[0].id, new_id()]}, "command": "ls"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "target.agent_ids");
    let (status, _) = app
        .admin(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"target": {}, "command": "ls"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .admin(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"target": {"os": "plan9"}, "command": "ls"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, bulk) = app
        .admin(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"target": {"site_id": site_id}, "command": "ls"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{bulk}");
    assert_eq!(bulk["targets"], 3);
    let bulk_id = bulk["id"].as_str().expect("id").to_string();
    app.settle().await;
    let (_, summary) = app
        .admin(Method::GET, &format!("/api/v1/jobs/{bulk_id}"), None)
        .await;
    assert_eq!(summary["type"], "bulk");
    assert_eq!(summary["counts"]["queued"], 3);

    // One member runs and fails; one is cancelled with the rest of the remaining ones... after
    // the failure, cancel the remaining two, then retry the failed one.
    let (_, members) = app
        .admin(Method::GET, &format!("/api/v1/jobs/{bulk_id}/jobs"), None)
        .await;
    let first = &members["items"][0];
    let (agent, job): (AgentId, JobId) = (
        first["agent_id"]
            .as_str()
            .expect("agent")
            .parse()
            .expect("uuid"),
        first["id"].as_str().expect("id").parse().expect("uuid"),
    );
    assert_eq!(
        app.commands
            .claim_job(agent, job, None)
            .await
            .expect("claim"),
        Claim::Run
    );
    app.commands
        .record_job_result(agent, job, Outcome::Failed, result(1))
        .await
        .expect("result");
    app.settle().await;
    let (status, cancelled) = app
        .admin(
            Method::POST,
            &format!("/api/v1/jobs/{bulk_id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["jobs"].as_array().expect("jobs").len(), 2);
    let (status, retried) = app
        .admin(
            Method::POST,
            &format!("/api/v1/jobs/{bulk_id}/retry-failed"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["jobs"].as_array().expect("jobs").len(), 1);
    app.settle().await;
    let (_, summary) = app
        .admin(Method::GET, &format!("/api/v1/jobs/{bulk_id}"), None)
        .await;
    assert_eq!(
        summary["counts"],
        json!({"cancelled": 2, "failed": 1, "queued": 1})
    );
    let (_, failed) = app
        .admin(
            Method::GET,
            &format!("/api/v1/jobs/{bulk_id}/jobs?status=failed"),
            None,
        )
        .await;
    assert_eq!(failed["items"][0]["agent_id"], agent.to_string());
    let (_, agent_jobs) = app
        .admin(Method::GET, &format!("/api/v1/agents/{agent}/jobs"), None)
        .await;
    assert_eq!(
        agent_jobs["items"][0]["agent_seq"], 2,
        "the retry is the agent's next job"
    );
}
