//! Events are stored forever: the JSON of every event variant is pinned here, so an accidental
//! change of a persisted shape fails this test instead of breaking replays of old logs.

use chrono::{TimeZone, Utc};
use cqrs_es::DomainEvent;
use expect_test::{Expect, expect};
use logbook_domain::agent::{AgentEvent, AgentIdentity};
use logbook_domain::api_token::ApiTokenEvent;
use logbook_domain::checkin::{
    CheckinEvent, CheckinReport, CpuInfo, DiskUsage, MemoryInfo, OsInfo,
};
use logbook_domain::client::ClientEvent;
use logbook_domain::enrollment::EnrollmentTokenEvent;
use logbook_domain::event_log::LogbookEvent;
use logbook_domain::ids::*;
use logbook_domain::secret::SecretHash;
use logbook_domain::site::SiteEvent;
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn check<E: DomainEvent>(aggregate_type: &str, event: E, expected: Expect) {
    let json = serde_json::to_value(&event).expect("serialize");
    expected.assert_eq(&format!(
        "{} v{} {}",
        event.event_type(),
        event.event_version(),
        json
    ));
    // Whatever is written must be readable through the log decoder.
    LogbookEvent::decode(aggregate_type, &event.event_version(), json).expect("decode");
}

#[test]
fn client_events() {
    check(
        "client",
        ClientEvent::ClientCreated {
            client_id: ClientId::from(id(1)),
            name: "Acme".into(),
        },
        expect![[
            r#"ClientCreated v1 {"ClientCreated":{"client_id":"00000000-0000-0000-0000-000000000001","name":"Acme"}}"#
        ]],
    );
    check(
        "client",
        ClientEvent::ClientRenamed {
            name: "Acme Ltd".into(),
        },
        expect![[r#"ClientRenamed v1 {"ClientRenamed":{"name":"Acme Ltd"}}"#]],
    );
}

#[test]
fn site_events() {
    check(
        "site",
        SiteEvent::SiteCreated {
            site_id: SiteId::from(id(2)),
            client_id: ClientId::from(id(1)),
            name: "HQ".into(),
        },
        expect![[
            r#"SiteCreated v1 {"SiteCreated":{"client_id":"00000000-0000-0000-0000-000000000001","name":"HQ","site_id":"00000000-0000-0000-0000-000000000002"}}"#
        ]],
    );
    check(
        "site",
        SiteEvent::SiteRenamed {
            name: "Branch".into(),
        },
        expect![[r#"SiteRenamed v1 {"SiteRenamed":{"name":"Branch"}}"#]],
    );
}

#[test]
fn enrollment_token_events() {
    check(
        "enrollment_token",
        EnrollmentTokenEvent::EnrollmentTokenIssued {
            token_id: EnrollmentTokenId::from(id(3)),
            client_id: ClientId::from(id(1)),
            site_id: SiteId::from(id(2)),
            secret_hash: SecretHash::from_bytes([0xab; 32]),
            expires_at: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("time"),
            max_uses: 10,
        },
        expect![[
            r#"EnrollmentTokenIssued v1 {"EnrollmentTokenIssued":{"client_id":"00000000-0000-0000-0000-000000000001","expires_at":"2026-01-01T00:00:00Z","max_uses":10,"secret_hash":"abababababababababababababababababababababababababababababababab","site_id":"00000000-0000-0000-0000-000000000002","token_id":"00000000-0000-0000-0000-000000000003"}}"#
        ]],
    );
    check(
        "enrollment_token",
        EnrollmentTokenEvent::EnrollmentTokenRedeemed {
            agent_id: AgentId::from(id(4)),
            use_number: 1,
        },
        expect![[
            r#"EnrollmentTokenRedeemed v1 {"EnrollmentTokenRedeemed":{"agent_id":"00000000-0000-0000-0000-000000000004","use_number":1}}"#
        ]],
    );
    check(
        "enrollment_token",
        EnrollmentTokenEvent::EnrollmentTokenRevoked,
        expect![[r#"EnrollmentTokenRevoked v1 "EnrollmentTokenRevoked""#]],
    );
}

#[test]
fn agent_events() {
    check(
        "agent",
        AgentEvent::AgentEnrolled {
            agent_id: AgentId::from(id(4)),
            client_id: ClientId::from(id(1)),
            site_id: SiteId::from(id(2)),
            enrollment_token_id: EnrollmentTokenId::from(id(3)),
            credential_hash: SecretHash::from_bytes([0xcd; 32]),
            identity: AgentIdentity {
                hostname: "web-01".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                agent_version: "0.1.0".into(),
            },
        },
        expect![[
            r#"AgentEnrolled v1 {"AgentEnrolled":{"agent_id":"00000000-0000-0000-0000-000000000004","client_id":"00000000-0000-0000-0000-000000000001","credential_hash":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","enrollment_token_id":"00000000-0000-0000-0000-000000000003","identity":{"agent_version":"0.1.0","arch":"x86_64","hostname":"web-01","os":"linux"},"site_id":"00000000-0000-0000-0000-000000000002"}}"#
        ]],
    );
    check(
        "agent",
        AgentEvent::AgentRenamed {
            display_name: "Reception".into(),
        },
        expect![[r#"AgentRenamed v1 {"AgentRenamed":{"display_name":"Reception"}}"#]],
    );
    check(
        "agent",
        AgentEvent::AgentMoved {
            from_client_id: ClientId::from(id(1)),
            from_site_id: SiteId::from(id(2)),
            to_client_id: ClientId::from(id(5)),
            to_site_id: SiteId::from(id(6)),
        },
        expect![[
            r#"AgentMoved v1 {"AgentMoved":{"from_client_id":"00000000-0000-0000-0000-000000000001","from_site_id":"00000000-0000-0000-0000-000000000002","to_client_id":"00000000-0000-0000-0000-000000000005","to_site_id":"00000000-0000-0000-0000-000000000006"}}"#
        ]],
    );
    check(
        "agent",
        AgentEvent::AgentDecommissioned {
            reason: "replaced".into(),
        },
        expect![[r#"AgentDecommissioned v1 {"AgentDecommissioned":{"reason":"replaced"}}"#]],
    );
}

#[test]
fn checkin_events() {
    check(
        "agent_checkins",
        CheckinEvent::AgentCheckedIn {
            checkin_id: CheckinId::from(id(7)),
            report: CheckinReport {
                collected_at: Utc
                    .with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
                    .single()
                    .expect("time"),
                hostname: "web-01".into(),
                os: OsInfo {
                    family: "linux".into(),
                    name: "Debian GNU/Linux".into(),
                    version: "12".into(),
                    kernel_version: "6.1.0".into(),
                    arch: "x86_64".into(),
                },
                agent_version: "0.1.0".into(),
                uptime_secs: 60,
                cpu: CpuInfo {
                    logical_cores: 2,
                    load_1m: 0.5,
                    load_5m: 0.25,
                    load_15m: 0.125,
                },
                memory: MemoryInfo {
                    total_bytes: 1000,
                    used_bytes: 500,
                    swap_total_bytes: 0,
                    swap_used_bytes: 0,
                },
                disks: vec![DiskUsage {
                    mount_point: "/".into(),
                    file_system: "ext4".into(),
                    total_bytes: 2000,
                    used_bytes: 1000,
                }],
                logged_in_users: vec!["alice".into()],
                ip_addresses: vec!["192.0.2.1".into()],
            },
        },
        expect![[
            r#"AgentCheckedIn v1 {"AgentCheckedIn":{"checkin_id":"00000000-0000-0000-0000-000000000007","report":{"agent_version":"0.1.0","collected_at":"2026-01-01T12:00:00Z","cpu":{"load_15m":0.125,"load_1m":0.5,"load_5m":0.25,"logical_cores":2},"disks":[{"file_system":"ext4","mount_point":"/","total_bytes":2000,"used_bytes":1000}],"hostname":"web-01","ip_addresses":["192.0.2.1"],"logged_in_users":["alice"],"memory":{"swap_total_bytes":0,"swap_used_bytes":0,"total_bytes":1000,"used_bytes":500},"os":{"arch":"x86_64","family":"linux","kernel_version":"6.1.0","name":"Debian GNU/Linux","version":"12"},"uptime_secs":60}}}"#
        ]],
    );
}

#[test]
fn api_token_events() {
    check(
        "api_token",
        ApiTokenEvent::ApiTokenIssued {
            token_id: ApiTokenId::from(id(8)),
            name: "bootstrap".into(),
            secret_hash: SecretHash::from_bytes([0x01; 32]),
        },
        expect![[
            r#"ApiTokenIssued v1 {"ApiTokenIssued":{"name":"bootstrap","secret_hash":"0101010101010101010101010101010101010101010101010101010101010101","token_id":"00000000-0000-0000-0000-000000000008"}}"#
        ]],
    );
    check(
        "api_token",
        ApiTokenEvent::ApiTokenRevoked,
        expect![[r#"ApiTokenRevoked v1 "ApiTokenRevoked""#]],
    );
}

#[test]
fn unknown_streams_and_versions_are_errors_not_panics() {
    assert!(LogbookEvent::decode("nope", "1", serde_json::json!({})).is_err());
    assert!(LogbookEvent::decode("client", "2", serde_json::json!({})).is_err());
    assert!(LogbookEvent::decode("client", "1", serde_json::json!({"Bogus": {}})).is_err());
}

fn job_result() -> logbook_domain::job::JobResult {
    logbook_domain::job::JobResult {
        exit_code: Some(0),
        stdout: "hi\n".into(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration_ms: 12,
        finished_at: Utc
            .with_ymd_and_hms(2026, 1, 1, 12, 0, 1)
            .single()
            .expect("time"),
        error: None,
    }
}

#[test]
fn job_events() {
    use logbook_domain::job::{Interpreter, JobEvent, JobSpec};
    let agent_id = AgentId::from(id(4));
    let deadline = Utc
        .with_ymd_and_hms(2026, 1, 2, 0, 0, 0)
        .single()
        .expect("time");
    check(
        "job",
        JobEvent::JobQueued {
            job_id: JobId::from(id(10)),
            agent_id,
            agent_seq: 3,
            spec: JobSpec::Script {
                interpreter: Interpreter::Bash,
                body: "echo $1".into(),
                args: vec!["hi".into()],
                env: [("A".to_string(), "1".to_string())].into_iter().collect(),
                timeout_secs: 60,
                working_dir: Some("/tmp".into()),
            },
            deadline,
            bulk_id: Some(BulkJobId::from(id(11))),
        },
        expect![[
            r#"JobQueued v1 {"JobQueued":{"agent_id":"00000000-0000-0000-0000-000000000004","agent_seq":3,"bulk_id":"00000000-0000-0000-0000-00000000000b","deadline":"2026-01-02T00:00:00Z","job_id":"00000000-0000-0000-0000-00000000000a","spec":{"script":{"args":["hi"],"body":"echo $1","env":{"A":"1"},"interpreter":"bash","timeout_secs":60,"working_dir":"/tmp"}}}}"#
        ]],
    );
    check(
        "job",
        JobEvent::JobQueued {
            job_id: JobId::from(id(10)),
            agent_id,
            agent_seq: 4,
            spec: JobSpec::Command {
                command_line: "uptime".into(),
                timeout_secs: 30,
                working_dir: None,
            },
            deadline,
            bulk_id: None,
        },
        expect![[
            r#"JobQueued v1 {"JobQueued":{"agent_id":"00000000-0000-0000-0000-000000000004","agent_seq":4,"bulk_id":null,"deadline":"2026-01-02T00:00:00Z","job_id":"00000000-0000-0000-0000-00000000000a","spec":{"command":{"command_line":"uptime","timeout_secs":30,"working_dir":null}}}}"#
        ]],
    );
    check(
        "job",
        JobEvent::JobDispatched {
            agent_id,
            stream_seq: 42,
        },
        expect![[
            r#"JobDispatched v1 {"JobDispatched":{"agent_id":"00000000-0000-0000-0000-000000000004","stream_seq":42}}"#
        ]],
    );
    check(
        "job",
        JobEvent::JobStarted { agent_id },
        expect![[
            r#"JobStarted v1 {"JobStarted":{"agent_id":"00000000-0000-0000-0000-000000000004"}}"#
        ]],
    );
    check(
        "job",
        JobEvent::JobSucceeded {
            agent_id,
            result: job_result(),
        },
        expect![[
            r#"JobSucceeded v1 {"JobSucceeded":{"agent_id":"00000000-0000-0000-0000-000000000004","result":{"duration_ms":12,"error":null,"exit_code":0,"finished_at":"2026-01-01T12:00:01Z","stderr":"","stderr_truncated":false,"stdout":"hi\n","stdout_truncated":false}}}"#
        ]],
    );
    check(
        "job",
        JobEvent::JobFailed {
            agent_id,
            result: job_result(),
        },
        expect![[
            r#"JobFailed v1 {"JobFailed":{"agent_id":"00000000-0000-0000-0000-000000000004","result":{"duration_ms":12,"error":null,"exit_code":0,"finished_at":"2026-01-01T12:00:01Z","stderr":"","stderr_truncated":false,"stdout":"hi\n","stdout_truncated":false}}}"#
        ]],
    );
    check(
        "job",
        JobEvent::JobTimedOut {
            agent_id,
            result: job_result(),
        },
        expect![[
            r#"JobTimedOut v1 {"JobTimedOut":{"agent_id":"00000000-0000-0000-0000-000000000004","result":{"duration_ms":12,"error":null,"exit_code":0,"finished_at":"2026-01-01T12:00:01Z","stderr":"","stderr_truncated":false,"stdout":"hi\n","stdout_truncated":false}}}"#
        ]],
    );
    check(
        "job",
        JobEvent::JobExpired { agent_id, deadline },
        expect![[
            r#"JobExpired v1 {"JobExpired":{"agent_id":"00000000-0000-0000-0000-000000000004","deadline":"2026-01-02T00:00:00Z"}}"#
        ]],
    );
    check(
        "job",
        JobEvent::JobCancelled { agent_id },
        expect![[
            r#"JobCancelled v1 {"JobCancelled":{"agent_id":"00000000-0000-0000-0000-000000000004"}}"#
        ]],
    );
}

#[test]
fn bulk_job_events() {
    use logbook_domain::bulk_job::{BulkJobEvent, BulkMember, BulkRetry, BulkTarget};
    use logbook_domain::job::JobSpec;
    let member = BulkMember {
        agent_id: AgentId::from(id(4)),
        job_id: JobId::from(id(10)),
    };
    check(
        "bulk_job",
        BulkJobEvent::BulkJobIssued {
            bulk_id: BulkJobId::from(id(11)),
            target: BulkTarget {
                client_id: Some(ClientId::from(id(1))),
                site_id: None,
                agent_ids: None,
                os: Some("linux".into()),
            },
            members: vec![member],
            spec: JobSpec::Command {
                command_line: "uptime".into(),
                timeout_secs: 30,
                working_dir: None,
            },
            deadline: Utc
                .with_ymd_and_hms(2026, 1, 2, 0, 0, 0)
                .single()
                .expect("time"),
        },
        expect![[
            r#"BulkJobIssued v1 {"BulkJobIssued":{"bulk_id":"00000000-0000-0000-0000-00000000000b","deadline":"2026-01-02T00:00:00Z","members":[{"agent_id":"00000000-0000-0000-0000-000000000004","job_id":"00000000-0000-0000-0000-00000000000a"}],"spec":{"command":{"command_line":"uptime","timeout_secs":30,"working_dir":null}},"target":{"agent_ids":null,"client_id":"00000000-0000-0000-0000-000000000001","os":"linux","site_id":null}}}"#
        ]],
    );
    check(
        "bulk_job",
        BulkJobEvent::BulkJobRemainingCancelled {
            cancelled: vec![JobId::from(id(10))],
        },
        expect![[
            r#"BulkJobRemainingCancelled v1 {"BulkJobRemainingCancelled":{"cancelled":["00000000-0000-0000-0000-00000000000a"]}}"#
        ]],
    );
    check(
        "bulk_job",
        BulkJobEvent::BulkJobFailedRetried {
            retries: vec![BulkRetry {
                agent_id: AgentId::from(id(4)),
                failed_job_id: JobId::from(id(10)),
                new_job_id: JobId::from(id(12)),
            }],
        },
        expect![[
            r#"BulkJobFailedRetried v1 {"BulkJobFailedRetried":{"retries":[{"agent_id":"00000000-0000-0000-0000-000000000004","failed_job_id":"00000000-0000-0000-0000-00000000000a","new_job_id":"00000000-0000-0000-0000-00000000000c"}]}}"#
        ]],
    );
}
