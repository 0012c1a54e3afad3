//! The fleet and timeline projections against real Postgres: what the API will serve, built only
//! from events.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::report;
use logbook_domain::agent::{AgentEvent, AgentIdentity};
use logbook_domain::checkin::CheckinReport;
use logbook_domain::client::ClientEvent;
use logbook_domain::ids::*;
use logbook_domain::secret::SecretHash;
use logbook_domain::site::SiteEvent;
use logbook_projections::fleet::{
    self, AgentFilter, AgentPageCursor, AgentStatus, FleetProjection, StatusThresholds,
};
use logbook_projections::runner::{self, LogWaker, RunnerConfig};
use logbook_projections::timeline::{self, TimelineProjection, TimelineQuery};
use logbook_projections::{Projection, rebuild};
use logbook_testkit::TestDb;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const THRESHOLDS: StatusThresholds = StatusThresholds {
    overdue_after: Duration::from_secs(60),
    offline_after: Duration::from_secs(600),
};

struct Fleet {
    client: ClientId,
    site: SiteId,
}

async fn conn(pool: &PgPool) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    pool.acquire().await.expect("connection")
}

async fn seed_fleet(pool: &PgPool) -> Fleet {
    let client = ClientId::from(Uuid::now_v7());
    let site = SiteId::from(Uuid::now_v7());
    let mut c = conn(pool).await;
    common::append(
        &mut c,
        "client",
        &client.to_string(),
        1,
        &ClientEvent::ClientCreated {
            client_id: client,
            name: "Acme".into(),
        },
        Utc::now(),
    )
    .await;
    common::append(
        &mut c,
        "site",
        &site.to_string(),
        1,
        &SiteEvent::SiteCreated {
            site_id: site,
            client_id: client,
            name: "HQ".into(),
        },
        Utc::now(),
    )
    .await;
    Fleet { client, site }
}

async fn enroll(pool: &PgPool, fleet: &Fleet, hostname: &str) -> AgentId {
    let agent = AgentId::from(Uuid::now_v7());
    common::append(
        &mut *conn(pool).await,
        "agent",
        &agent.to_string(),
        1,
        &AgentEvent::AgentEnrolled {
            agent_id: agent,
            client_id: fleet.client,
            site_id: fleet.site,
            enrollment_token_id: EnrollmentTokenId::from(Uuid::nil()),
            credential_hash: SecretHash::from_bytes([1; 32]),
            identity: AgentIdentity {
                hostname: hostname.into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                agent_version: "0.1.0".into(),
            },
        },
        Utc::now(),
    )
    .await;
    agent
}

async fn check_in(
    pool: &PgPool,
    agent: AgentId,
    seq: i64,
    report: CheckinReport,
    recorded_at: DateTime<Utc>,
) {
    common::append_report(
        &mut *conn(pool).await,
        &agent.to_string(),
        seq,
        report,
        recorded_at,
    )
    .await;
}

async fn catch_up<P: Projection>(pool: &PgPool, projection: &P) {
    // Other tests' transactions on the same server can hold the horizon back briefly.
    let config = RunnerConfig::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        runner::catch_up(pool, projection, &config)
            .await
            .expect("catch up");
        let checkpoint = runner::checkpoint(pool, projection.name())
            .await
            .expect("checkpoint");
        let mut c = conn(pool).await;
        let behind = logbook_projections::log::has_events_beyond_horizon(
            &mut c,
            checkpoint.unwrap_or_default(),
            projection.reads(),
        )
        .await
        .expect("check");
        if !behind || std::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The agent list's first page of ten, in the default order and filters.
async fn first_page(pool: &PgPool) -> Vec<fleet::AgentRow> {
    fleet::list_agents(
        pool,
        &AgentFilter {
            limit: 10,
            ..Default::default()
        },
        THRESHOLDS,
    )
    .await
    .expect("list")
}

async fn ensure(pool: &PgPool, name: &str) {
    runner::ensure_checkpoint(pool, name)
        .await
        .expect("checkpoint row");
}

#[tokio::test]
async fn the_agent_list_shows_names_status_and_the_newest_report() {
    let db = TestDb::new().await;
    ensure(&db.pool, FleetProjection::NAME).await;
    let fleet = seed_fleet(&db.pool).await;
    let now = Utc::now();
    let fresh = enroll(&db.pool, &fleet, "web-01").await;
    let quiet = enroll(&db.pool, &fleet, "db-01").await;
    let silent = enroll(&db.pool, &fleet, "old-01").await;
    check_in(&db.pool, fresh, 1, report("web-01", now, 40), now).await;
    let five_min_ago = now - chrono::Duration::minutes(5);
    check_in(
        &db.pool,
        quiet,
        1,
        report("db-01", five_min_ago, 10),
        five_min_ago,
    )
    .await;
    let an_hour_ago = now - chrono::Duration::hours(1);
    check_in(
        &db.pool,
        silent,
        1,
        report("old-01", an_hour_ago, 10),
        an_hour_ago,
    )
    .await;
    // A report collected earlier but delivered late (after an outage) counts as a check-in but
    // must not replace the newer facts.
    check_in(
        &db.pool,
        fresh,
        2,
        report("web-01", now - chrono::Duration::minutes(30), 99),
        now,
    )
    .await;
    catch_up(&db.pool, &FleetProjection).await;

    let all = first_page(&db.pool).await;
    let summary: Vec<(&str, AgentStatus)> = all
        .iter()
        .map(|a| (a.hostname.as_str(), a.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("db-01", AgentStatus::Overdue),
            ("old-01", AgentStatus::Offline),
            ("web-01", AgentStatus::Online)
        ]
    );
    let web = &all[2];
    assert_eq!(web.client_name.as_deref(), Some("Acme"));
    assert_eq!(web.site_name.as_deref(), Some("HQ"));
    assert_eq!(web.checkins, 2);
    let latest = web.latest_report.as_ref().expect("report").0.clone();
    assert_eq!(
        latest.disks[0].used_bytes,
        40 << 30,
        "the late, older report replaced the newer one"
    );
    assert_eq!(web.os_name, "Debian GNU/Linux");

    let online = fleet::list_agents(
        &db.pool,
        &AgentFilter {
            status: Some(AgentStatus::Online),
            limit: 10,
            ..Default::default()
        },
        THRESHOLDS,
    )
    .await
    .expect("list online");
    assert_eq!(online.len(), 1);
    assert_eq!(online[0].agent_id, fresh.as_uuid());
}

/// What one agent's row shows: its identity columns, its latest report's disk use (GiB) and
/// its check-in count.
fn shown(row: &fleet::AgentRow) -> (Vec<String>, u64, i64) {
    let columns = [
        &row.hostname,
        &row.os_family,
        &row.os_name,
        &row.os_version,
        &row.kernel_version,
        &row.arch,
        &row.agent_version,
    ]
    .map(String::clone)
    .to_vec();
    let used = row.latest_report.as_ref().expect("report").0.disks[0].used_bytes >> 30;
    (columns, used, row.checkins)
}

#[tokio::test]
async fn a_newer_report_in_a_later_batch_replaces_every_column_and_a_late_older_one_none() {
    let db = TestDb::new().await;
    ensure(&db.pool, FleetProjection::NAME).await;
    let fleet = seed_fleet(&db.pool).await;
    let agent = enroll(&db.pool, &fleet, "web-01").await;
    let now = Utc::now();
    // Each check-in is folded in a batch of its own; then the agent's row is read.
    let fold = async |seq: i64, report: CheckinReport| {
        check_in(&db.pool, agent, seq, report, now).await;
        catch_up(&db.pool, &FleetProjection).await;
        shown(&first_page(&db.pool).await[0])
    };
    let columns = |row: [&str; 7]| row.map(str::to_string).to_vec();

    assert_eq!(
        fold(1, report("web-01", now - chrono::Duration::minutes(2), 10)).await,
        (
            columns([
                "web-01",
                "linux",
                "Debian GNU/Linux",
                "12",
                "6.1.0",
                "x86_64",
                "0.1.0"
            ]),
            10,
            1
        )
    );

    // The machine was renamed, upgraded and moved to another architecture.
    let mut upgraded = report("web-02", now - chrono::Duration::minutes(1), 20);
    upgraded.os.family = "windows".into();
    upgraded.os.name = "Windows Server".into();
    upgraded.os.version = "2022".into();
    upgraded.os.kernel_version = "10.0.20348".into();
    upgraded.os.arch = "aarch64".into();
    upgraded.agent_version = "0.2.0".into();
    let expected = columns([
        "web-02",
        "windows",
        "Windows Server",
        "2022",
        "10.0.20348",
        "aarch64",
        "0.2.0",
    ]);
    assert_eq!(fold(2, upgraded).await, (expected.clone(), 20, 2));

    // A report collected before the one shown, delivered in a batch of its own, counts as a
    // check-in and changes nothing else.
    assert_eq!(
        fold(3, report("web-01", now - chrono::Duration::minutes(3), 30)).await,
        (expected, 20, 3)
    );
}

#[tokio::test]
async fn lifecycle_events_rename_move_and_decommission() {
    let db = TestDb::new().await;
    ensure(&db.pool, FleetProjection::NAME).await;
    let fleet = seed_fleet(&db.pool).await;
    let agent = enroll(&db.pool, &fleet, "web-01").await;
    let other_site = SiteId::from(Uuid::now_v7());
    let mut c = conn(&db.pool).await;
    common::append(
        &mut c,
        "site",
        &other_site.to_string(),
        1,
        &SiteEvent::SiteCreated {
            site_id: other_site,
            client_id: fleet.client,
            name: "Branch".into(),
        },
        Utc::now(),
    )
    .await;
    common::append(
        &mut c,
        "agent",
        &agent.to_string(),
        2,
        &AgentEvent::AgentRenamed {
            display_name: "Reception".into(),
        },
        Utc::now(),
    )
    .await;
    common::append(
        &mut c,
        "agent",
        &agent.to_string(),
        3,
        &AgentEvent::AgentMoved {
            from_client_id: fleet.client,
            from_site_id: fleet.site,
            to_client_id: fleet.client,
            to_site_id: other_site,
        },
        Utc::now(),
    )
    .await;
    drop(c);
    catch_up(&db.pool, &FleetProjection).await;
    let row = fleet::get_agent(&db.pool, agent.as_uuid(), THRESHOLDS)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(row.display_name, "Reception");
    assert_eq!(row.site_name.as_deref(), Some("Branch"));

    common::append(
        &mut *conn(&db.pool).await,
        "agent",
        &agent.to_string(),
        4,
        &AgentEvent::AgentDecommissioned {
            reason: "replaced".into(),
        },
        Utc::now(),
    )
    .await;
    catch_up(&db.pool, &FleetProjection).await;
    let listed = first_page(&db.pool).await;
    assert!(
        listed.is_empty(),
        "decommissioned agents are hidden unless asked for"
    );
    let row = fleet::get_agent(&db.pool, agent.as_uuid(), THRESHOLDS)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(row.status, AgentStatus::Decommissioned);
}

#[tokio::test]
async fn keyset_pages_cover_every_agent_once_in_order() {
    let db = TestDb::new().await;
    ensure(&db.pool, FleetProjection::NAME).await;
    let fleet = seed_fleet(&db.pool).await;
    for i in 0..7 {
        enroll(&db.pool, &fleet, &format!("host-{}", 6 - i)).await;
    }
    // Two agents with the same hostname: the id breaks the tie.
    enroll(&db.pool, &fleet, "host-3").await;
    catch_up(&db.pool, &FleetProjection).await;

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = fleet::list_agents(
            &db.pool,
            &AgentFilter {
                limit: 3,
                after: after.clone(),
                ..Default::default()
            },
            THRESHOLDS,
        )
        .await
        .expect("page");
        if page.is_empty() {
            break;
        }
        let last = page.last().expect("non-empty");
        after = Some(AgentPageCursor {
            hostname: last.hostname.clone(),
            agent_id: last.agent_id,
        });
        seen.extend(page.into_iter().map(|a| (a.hostname, a.agent_id)));
    }
    assert_eq!(seen.len(), 8);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    sorted.dedup();
    assert_eq!(sorted.len(), 8);

    let found = fleet::list_agents(
        &db.pool,
        &AgentFilter {
            search: Some("ST-5".into()),
            limit: 10,
            ..Default::default()
        },
        THRESHOLDS,
    )
    .await
    .expect("search");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].hostname, "host-5");
}

#[tokio::test]
async fn the_timeline_lists_an_agents_events_newest_first_with_payloads() {
    let db = TestDb::new().await;
    ensure(&db.pool, TimelineProjection::NAME).await;
    let fleet = seed_fleet(&db.pool).await;
    let agent = enroll(&db.pool, &fleet, "web-01").await;
    let other = enroll(&db.pool, &fleet, "web-02").await;
    for seq in 1..=5 {
        check_in(
            &db.pool,
            agent,
            seq,
            report("web-01", Utc::now(), seq as u64),
            Utc::now(),
        )
        .await;
    }
    check_in(
        &db.pool,
        other,
        1,
        report("web-02", Utc::now(), 1),
        Utc::now(),
    )
    .await;
    catch_up(&db.pool, &TimelineProjection).await;

    let first = timeline::agent_timeline(
        &db.pool,
        agent.as_uuid(),
        &TimelineQuery {
            limit: 4,
            ..Default::default()
        },
    )
    .await
    .expect("page 1");
    let types: Vec<(&str, i64)> = first
        .iter()
        .map(|e| (e.event_type.as_str(), e.sequence))
        .collect();
    assert_eq!(
        types,
        [
            ("AgentCheckedIn", 5),
            ("AgentCheckedIn", 4),
            ("AgentCheckedIn", 3),
            ("AgentCheckedIn", 2)
        ]
    );
    assert_eq!(
        first[0].payload["AgentCheckedIn"]["report"]["disks"][0]["used_bytes"],
        5u64 << 30
    );
    let second = timeline::agent_timeline(
        &db.pool,
        agent.as_uuid(),
        &TimelineQuery {
            limit: 4,
            before: Some(first[3].cursor),
            ..Default::default()
        },
    )
    .await
    .expect("page 2");
    let types: Vec<&str> = second.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["AgentCheckedIn", "AgentEnrolled"]);
}

#[tokio::test]
async fn timeline_pages_merge_checkins_from_the_log_with_indexed_events_in_log_order() {
    let db = TestDb::new().await;
    ensure(&db.pool, TimelineProjection::NAME).await;
    let fleet = seed_fleet(&db.pool).await;
    let agent = enroll(&db.pool, &fleet, "web-01").await;
    let other = enroll(&db.pool, &fleet, "web-02").await;
    // Check-ins (not indexed by the timeline) interleaved with renames (indexed), and another
    // agent's check-ins in between that must never show.
    let mut expected = vec![("AgentEnrolled", 1)];
    let (mut checkins, mut renames) = (0, 1);
    for round in 0..6 {
        for _ in 0..3 {
            checkins += 1;
            check_in(
                &db.pool,
                agent,
                checkins,
                report("web-01", Utc::now(), 1),
                Utc::now(),
            )
            .await;
            expected.push(("AgentCheckedIn", checkins));
            check_in(
                &db.pool,
                other,
                checkins,
                report("web-02", Utc::now(), 1),
                Utc::now(),
            )
            .await;
        }
        renames += 1;
        common::append(
            &mut *conn(&db.pool).await,
            "agent",
            &agent.to_string(),
            renames,
            &AgentEvent::AgentRenamed {
                display_name: format!("name-{round}"),
            },
            Utc::now(),
        )
        .await;
        expected.push(("AgentRenamed", renames));
    }
    expected.reverse();
    catch_up(&db.pool, &TimelineProjection).await;

    // Pages of every size end on check-ins and on renames alike; together they are the whole
    // history, newest first, each event once.
    for limit in [1, 2, 3, 4, 7, 100] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = timeline::agent_timeline(
                &db.pool,
                agent.as_uuid(),
                &TimelineQuery {
                    limit,
                    before,
                    ..Default::default()
                },
            )
            .await
            .expect("page");
            let cursors: Vec<_> = page
                .iter()
                .map(|e| (e.cursor.tx_id, e.cursor.position))
                .collect();
            let mut sorted = cursors.clone();
            sorted.sort_by(|a, b| b.cmp(a));
            assert_eq!(cursors, sorted, "a page is in log order, newest first");
            seen.extend(page.iter().map(|e| (e.event_type.clone(), e.sequence)));
            match page.last() {
                Some(last) if page.len() as i64 == limit => before = Some(last.cursor),
                _ => break,
            }
        }
        let seen: Vec<(&str, i64)> = seen.iter().map(|(t, s)| (t.as_str(), *s)).collect();
        assert_eq!(seen, expected, "pages of {limit}");
    }

    // Filters apply to both sources.
    let renamed = timeline::agent_timeline(
        &db.pool,
        agent.as_uuid(),
        &TimelineQuery {
            event_types: vec!["AgentRenamed".into()],
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .expect("renames");
    assert_eq!(renamed.len(), 6);
    let checked_in = timeline::agent_timeline(
        &db.pool,
        agent.as_uuid(),
        &TimelineQuery {
            event_types: vec!["AgentCheckedIn".into()],
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .expect("check-ins");
    assert_eq!(
        checked_in.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=18).rev().collect::<Vec<_>>()
    );
    assert!(
        checked_in
            .iter()
            .all(|e| e.payload["AgentCheckedIn"]["report"]["hostname"] == "web-01")
    );
}

#[tokio::test]
async fn a_rebuild_recreates_the_read_model_and_the_live_runner_carries_on() {
    let db = TestDb::new().await;
    ensure(&db.pool, FleetProjection::NAME).await;
    let fleet = seed_fleet(&db.pool).await;
    let agent = enroll(&db.pool, &fleet, "web-01").await;
    for seq in 1..=30 {
        check_in(
            &db.pool,
            agent,
            seq,
            report("web-01", Utc::now(), 1),
            Utc::now(),
        )
        .await;
    }
    catch_up(&db.pool, &FleetProjection).await;
    let before = fleet::get_agent(&db.pool, agent.as_uuid(), THRESHOLDS)
        .await
        .expect("get")
        .expect("row");

    let mut calls = 0;
    let rebuilt = rebuild::rebuild(&db.pool, &FleetProjection, 7, |_| calls += 1)
        .await
        .expect("rebuild");
    assert!(rebuilt.applied >= 33, "applied {}", rebuilt.applied);
    assert!(calls >= 5, "progress is reported per batch");
    let after = fleet::get_agent(&db.pool, agent.as_uuid(), THRESHOLDS)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(after.checkins, 30);
    assert_eq!(after.latest_report, before.latest_report);
    // The new tables arrive with planner statistics (a table never analyzed has -1 here), so
    // the first queries after the swap are not planned for an empty table.
    let reltuples: f32 = sqlx::query_scalar(
        "SELECT reltuples FROM pg_class WHERE oid = 'public.agents_view'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .expect("statistics");
    assert_eq!(reltuples, 1.0, "the rebuilt agent list has been analyzed");

    // The live projection continues from the rebuild's checkpoint into the new tables.
    check_in(
        &db.pool,
        agent,
        31,
        report("web-01", Utc::now(), 1),
        Utc::now(),
    )
    .await;
    catch_up(&db.pool, &FleetProjection).await;
    let later = fleet::get_agent(&db.pool, agent.as_uuid(), THRESHOLDS)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(later.checkins, 31);
}

#[tokio::test]
async fn a_notification_of_checkins_only_wakes_only_the_readers_of_checkins() {
    let db = TestDb::new().await;
    let shutdown = CancellationToken::new();
    let (waker, _) = LogWaker::spawn(db.pool.clone(), shutdown.clone());
    let mut everything = waker.clone().for_reads(FleetProjection.reads());
    let mut skipping = waker.for_reads(TimelineProjection.reads());
    let notify = |payload: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(runner::EVENTS_CHANNEL)
                .bind(payload)
                .execute(&pool)
                .await
                .expect("notify");
        }
    };
    let long = Duration::from_secs(10);
    // The listener connects in the background: notify until the first notification arrives.
    let mut woken = false;
    for _ in 0..100 {
        notify("").await;
        if everything.wait(Duration::from_millis(100)).await {
            woken = true;
            break;
        }
    }
    assert!(woken, "the listener never received a notification");
    // Drain what the retries above left behind.
    while skipping.wait(Duration::from_millis(200)).await {}
    while everything.wait(Duration::from_millis(200)).await {}

    notify(runner::CHECKINS_ONLY).await;
    assert!(
        everything.wait(long).await,
        "the agent list reads check-ins"
    );
    assert!(
        !skipping.wait(Duration::from_millis(300)).await,
        "the timeline skips check-ins and sleeps through them"
    );
    notify("").await;
    assert!(skipping.wait(long).await, "any other commit wakes it");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_competing_runners_apply_every_event_exactly_once() {
    let db = TestDb::new().await;
    let fleet = seed_fleet(&db.pool).await;
    let agent = enroll(&db.pool, &fleet, "web-01").await;
    let shutdown = CancellationToken::new();
    let config = RunnerConfig {
        batch_size: 5,
        poll_interval: Duration::from_millis(20),
        retry_after: Duration::from_millis(50),
        linger: Duration::ZERO,
    };
    let mut runners = Vec::new();
    for _ in 0..2 {
        let (waker, _) = LogWaker::spawn(db.pool.clone(), shutdown.clone());
        runners.push(tokio::spawn(runner::run(
            db.pool.clone(),
            FleetProjection,
            waker,
            config.clone(),
            shutdown.clone(),
        )));
    }
    for seq in 1..=200 {
        check_in(
            &db.pool,
            agent,
            seq,
            report("web-01", Utc::now(), 1),
            Utc::now(),
        )
        .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let checkins = loop {
        let row = fleet::get_agent(&db.pool, agent.as_uuid(), THRESHOLDS)
            .await
            .expect("get");
        let n = row.map(|r| r.checkins).unwrap_or(0);
        if n >= 200 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let any double application show up before judging.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let row = fleet::get_agent(&db.pool, agent.as_uuid(), THRESHOLDS)
        .await
        .expect("get")
        .expect("row");
    shutdown.cancel();
    for r in runners {
        r.await.expect("runner stops on shutdown");
    }
    assert_eq!(checkins, 200);
    assert_eq!(row.checkins, 200, "an event was applied twice");
}

#[tokio::test]
async fn folding_checkins_leaves_the_planner_settings_of_the_transaction_as_they_were() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.expect("begin");
    let window = logbook_projections::log::LogWindow {
        after: logbook_projections::log::LogCursor::START,
        end: logbook_projections::log::LogCursor::START,
        len: Some(0),
    };
    sqlx::query("SET LOCAL enable_mergejoin = off")
        .execute(&mut *tx)
        .await
        .expect("set");
    FleetProjection
        .apply(&mut tx, &[], window)
        .await
        .expect("apply");
    let settings: (String, String) = sqlx::query_as(
        "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin')",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("settings");
    assert_eq!(settings, ("on".to_string(), "off".to_string()));
}
