//! Dependencies going away: Postgres down means 503 for writes (nothing half written) and
//! recovery without a restart; NATS down shows in readiness.

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use logbook_testkit::TestDb;
use logbook_testkit::proxy::TcpProxy;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{TestApp, checkin_body, new_id};

#[tokio::test]
async fn postgres_down_answers_503_and_recovers_on_its_own() {
    let db = TestDb::new().await;
    let direct: PgConnectOptions = db.url.parse().expect("url");
    let target = format!("127.0.0.1:{}", direct.get_port())
        .parse()
        .expect("address");
    let proxy = TcpProxy::start(target).await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(
            direct
                .clone()
                .host("127.0.0.1")
                .port(proxy.address().port()),
        );
    let app = TestApp::on(db, pool, |_| {}).await;
    let agent = app.agent("web-01").await;
    let before = app.event_count().await;

    proxy.cut();
    let (status, body) = app.checkin(&agent, checkin_body(&new_id(), "web-01")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, body) = app
        .admin(
            Method::POST,
            "/api/v1/clients",
            Some(serde_json::json!({"name": "B"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        app.event_count().await,
        before,
        "nothing may be written while Postgres is away"
    );

    proxy.restore();
    let id = new_id();
    let mut recovered = None;
    for _ in 0..50 {
        let (status, body) = app.checkin(&agent, checkin_body(&id, "web-01")).await;
        if status == StatusCode::CREATED {
            recovered = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = recovered.expect("the gateway recovered without a restart");
    assert_eq!(body["sequence"], 1);
    assert_eq!(app.event_count().await, before + 1);
}

#[tokio::test]
async fn the_ingests_sessions_plan_once_and_write_back_as_they_go() {
    let db = TestDb::new().await;
    let config = logbook_gateway::config::DatabaseConfig {
        url: db.url.clone(),
        ..Default::default()
    };
    let pool = logbook_gateway::db::ingest_pool(&config, 2).expect("ingest pool");
    let (plans, flush): (String, String) = sqlx::query_as(
        "SELECT current_setting('plan_cache_mode'), current_setting('backend_flush_after')",
    )
    .fetch_one(&pool)
    .await
    .expect("the session's settings");
    assert_eq!(plans, "force_generic_plan");
    assert_eq!(flush, "256kB");
}
