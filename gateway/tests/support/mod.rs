//! A gateway router on a fresh database, driven in-process with `oneshot`.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use logbook_domain::metadata::Actor;
use logbook_gateway::commands::{Commands, Ctx};
use logbook_gateway::config::GatewayConfig;
use logbook_gateway::http::{self, AgentNats, AppState, StateParts};
use logbook_gateway::ingest::Ingest;
use logbook_gateway::notify::LogNotifier;
use logbook_gateway::store::EventStore;
use logbook_projections::fleet::FleetProjection;
use logbook_projections::jobs::JobsProjection;
use logbook_projections::runner::{self, RunnerConfig};
use logbook_projections::timeline::TimelineProjection;
use logbook_projections::{Projection, log};
use logbook_testkit::TestDb;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

pub struct TestApp {
    pub db: TestDb,
    pub pool: PgPool,
    pub router: Router,
    pub admin_token: String,
    pub commands: Commands,
}

pub struct Agent {
    pub id: String,
    pub credential: String,
    pub site_id: String,
    pub client_id: String,
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A router on a fresh database, with `configure` applied to the default config. The router
    /// uses `pool` when given (a pool through a proxy, for outage tests).
    pub async fn with(configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        let db = TestDb::new().await;
        let pool = db.pool.clone();
        Self::on(db, pool, configure).await
    }

    pub async fn on(db: TestDb, pool: PgPool, configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        let mut config = GatewayConfig::default();
        configure(&mut config);
        let commands = Commands::new(EventStore::new(pool.clone()), LogNotifier::disabled());
        let (ingest, _done) =
            Ingest::start(pool.clone(), config.ingest.clone(), LogNotifier::disabled());
        let state = AppState::new(StateParts {
            pool: pool.clone(),
            commands: commands.clone(),
            ingest,
            thresholds: config.agents.thresholds(),
            nats: None,
            max_body_bytes: config.http.max_body_bytes,
            request_timeout: config.http.request_timeout,
            started: Arc::new(AtomicBool::new(true)),
            jobs: config.jobs.clone(),
            agent_nats: AgentNats::default(),
        });
        let admin = Commands::new(EventStore::new(db.pool.clone()), LogNotifier::disabled())
            .issue_api_token(
                &Ctx::new(Actor::System("test".into()), "test"),
                "test admin",
            )
            .await
            .expect("admin token");
        for name in [
            FleetProjection::NAME,
            TimelineProjection::NAME,
            JobsProjection::NAME,
        ] {
            runner::ensure_checkpoint(&db.pool, name)
                .await
                .expect("checkpoint");
        }
        Self {
            db,
            pool,
            router: http::router(state),
            admin_token: admin.token,
            commands,
        }
    }

    pub async fn send(
        &self,
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    /// The Prometheus metrics page.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = self
            .send(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8_lossy(&body).into_owned()
    }

    /// A JSON request; returns the status and the JSON answer (Null when empty).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        let (status, _, bytes) = self.send(request).await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes))
            })
        };
        (status, value)
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.json(method, path, Some(&self.admin_token.clone()), body)
            .await
    }

    /// Creates a client and a site; returns the site id.
    pub async fn site(&self) -> (String, String) {
        let (status, client) = self
            .admin(
                Method::POST,
                "/api/v1/clients",
                Some(json!({"name": "Acme"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{client}");
        let client_id = client["id"].as_str().expect("id").to_string();
        let (status, site) = self
            .admin(
                Method::POST,
                &format!("/api/v1/clients/{client_id}/sites"),
                Some(json!({"name": "HQ"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{site}");
        (client_id, site["id"].as_str().expect("id").to_string())
    }

    pub async fn enrollment_token(&self, site_id: &str, body: Value) -> String {
        let (status, token) = self
            .admin(
                Method::POST,
                &format!("/api/v1/sites/{site_id}/enrollment-tokens"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{token}");
        token["token"].as_str().expect("token").to_string()
    }

    pub async fn enroll(&self, token: &str, hostname: &str) -> (StatusCode, Value) {
        self.json(
            Method::POST,
            "/api/v1/enroll",
            None,
            Some(json!({"token": token, "hostname": hostname, "os": "linux", "arch": "x86_64", "agent_version": "0.1.0"})),
        )
        .await
    }

    /// A client, a site and an agent enrolled into it.
    pub async fn agent(&self, hostname: &str) -> Agent {
        let (client_id, site_id) = self.site().await;
        self.agent_in(&client_id, &site_id, hostname).await
    }

    pub async fn agent_in(&self, client_id: &str, site_id: &str, hostname: &str) -> Agent {
        let token = self.enrollment_token(site_id, json!({})).await;
        let (status, enrolled) = self.enroll(&token, hostname).await;
        assert_eq!(status, StatusCode::CREATED, "{enrolled}");
        Agent {
            id: enrolled["agent_id"].as_str().expect("agent_id").to_string(),
            credential: enrolled["credential"]
                .as_str()
                .expect("credential")
                .to_string(),
            site_id: site_id.to_string(),
            client_id: client_id.to_string(),
        }
    }

    pub async fn checkin(&self, agent: &Agent, body: Value) -> (StatusCode, Value) {
        self.json(
            Method::POST,
            &format!("/api/v1/agents/{}/checkins", agent.id),
            Some(&agent.credential),
            Some(body),
        )
        .await
    }

    /// Events in the whole log, check-ins included.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM log")
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }

    /// Brings both projections up to date with the log.
    pub async fn settle(&self) {
        settle_projection(&self.db.pool, &FleetProjection).await;
        settle_projection(&self.db.pool, &TimelineProjection).await;
        settle_projection(&self.db.pool, &JobsProjection).await;
    }
}

async fn settle_projection<P: Projection>(pool: &PgPool, projection: &P) {
    let config = RunnerConfig::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        runner::catch_up(pool, projection, &config)
            .await
            .expect("catch up");
        let cursor = runner::checkpoint(pool, projection.name())
            .await
            .expect("checkpoint")
            .unwrap_or_default();
        let mut conn = pool.acquire().await.expect("connection");
        if !log::has_events_beyond_horizon(&mut conn, cursor, projection.reads())
            .await
            .expect("check")
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "projection {} did not catch up",
            projection.name()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A valid check-in body.
pub fn checkin_body(checkin_id: &str, hostname: &str) -> Value {
    json!({
        "checkin_id": checkin_id,
        "report": {
            "collected_at_unix_ms": chrono::Utc::now().timestamp_millis(),
            "hostname": hostname,
            "os": {"family": "linux", "name": "Debian GNU/Linux", "version": "12", "kernel_version": "6.1.0", "arch": "x86_64"},
            "agent_version": "0.1.0",
            "uptime_secs": 3600,
            "cpu": {"logical_cores": 2, "load_1m": 0.5, "load_5m": 0.4, "load_15m": 0.3},
            "memory": {"total_bytes": 8000, "used_bytes": 4000, "swap_total_bytes": 0, "swap_used_bytes": 0},
            "disks": [{"mount_point": "/", "file_system": "ext4", "total_bytes": 1000, "used_bytes": 400}],
            "logged_in_users": ["alice"],
            "ip_addresses": ["192.0.2.7"]
        }
    })
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
