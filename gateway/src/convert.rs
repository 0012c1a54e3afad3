//! Conversions between the wire messages (`logbook_proto`) and domain types: the one place on
//! the gateway side that knows both.

use chrono::{DateTime, Utc};
use logbook_domain::agent::AgentIdentity;
use logbook_domain::checkin::{
    CheckinReport, CpuInfo, DiskUsage, FieldProblem, MemoryInfo, OsInfo,
};
use logbook_domain::ids::CheckinId;
use logbook_domain::job::{Interpreter, JobResult, Outcome};
use logbook_proto::agent::v1 as pb;

fn problem(field: &str, text: &str) -> FieldProblem {
    FieldProblem {
        field: field.to_string(),
        problem: text.to_string(),
    }
}

/// Reads a check-in request into its id and a validated report.
pub fn checkin(
    request: pb::CheckinRequest,
) -> Result<(CheckinId, CheckinReport), Vec<FieldProblem>> {
    let mut problems = Vec::new();
    let checkin_id = match request.checkin_id.parse::<uuid::Uuid>() {
        Ok(id) => Some(CheckinId::from(id)),
        Err(_) => {
            problems.push(problem("checkin_id", "must be a UUID"));
            None
        }
    };
    let Some(report) = request.report else {
        problems.push(problem("report", "is required"));
        return Err(problems);
    };
    let collected_at = DateTime::<Utc>::from_timestamp_millis(report.collected_at_unix_ms);
    if report.collected_at_unix_ms <= 0 || collected_at.is_none() {
        problems.push(problem(
            "report.collected_at_unix_ms",
            "must be a time after 1970",
        ));
    }
    let os = report.os.unwrap_or_default();
    let cpu = report.cpu.unwrap_or_default();
    let memory = report.memory.unwrap_or_default();
    let report = CheckinReport {
        collected_at: collected_at.unwrap_or_default(),
        hostname: report.hostname,
        os: OsInfo {
            family: os.family,
            name: os.name,
            version: os.version,
            kernel_version: os.kernel_version,
            arch: os.arch,
        },
        agent_version: report.agent_version,
        uptime_secs: report.uptime_secs,
        cpu: CpuInfo {
            logical_cores: cpu.logical_cores,
            load_1m: cpu.load_1m,
            load_5m: cpu.load_5m,
            load_15m: cpu.load_15m,
        },
        memory: MemoryInfo {
            total_bytes: memory.total_bytes,
            used_bytes: memory.used_bytes,
            swap_total_bytes: memory.swap_total_bytes,
            swap_used_bytes: memory.swap_used_bytes,
        },
        disks: report
            .disks
            .into_iter()
            .map(|d| DiskUsage {
                mount_point: d.mount_point,
                file_system: d.file_system,
                total_bytes: d.total_bytes,
                used_bytes: d.used_bytes,
            })
            .collect(),
        logged_in_users: report.logged_in_users,
        ip_addresses: report.ip_addresses,
    };
    if let Err(more) = report.validate() {
        problems.extend(more.into_iter().map(|p| FieldProblem {
            field: format!("report.{}", p.field),
            ..p
        }));
    }
    match checkin_id {
        Some(id) if problems.is_empty() => Ok((id, report)),
        _ => Err(problems),
    }
}

/// Reads an enrollment request into the token and what the agent says about itself.
pub fn enrollment(
    request: pb::EnrollRequest,
) -> Result<(String, AgentIdentity), Vec<FieldProblem>> {
    let mut problems = Vec::new();
    if request.token.trim().is_empty() {
        problems.push(problem("token", "is required"));
    }
    let hostname = request.hostname.trim();
    if hostname.is_empty() || hostname.len() > 253 {
        problems.push(problem("hostname", "must be 1 to 253 characters"));
    }
    for (field, value) in [
        ("os", &request.os),
        ("arch", &request.arch),
        ("agent_version", &request.agent_version),
    ] {
        if value.len() > 128 {
            problems.push(problem(field, "must be at most 128 characters"));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok((
        request.token,
        AgentIdentity {
            hostname: hostname.to_string(),
            os: request.os,
            arch: request.arch,
            agent_version: request.agent_version,
        },
    ))
}

/// The wire form of an interpreter.
pub fn interpreter(interpreter: Interpreter) -> pb::Interpreter {
    match interpreter {
        Interpreter::Sh => pb::Interpreter::Sh,
        Interpreter::Bash => pb::Interpreter::Bash,
        Interpreter::Python3 => pb::Interpreter::Python3,
        Interpreter::Pwsh => pb::Interpreter::Pwsh,
    }
}

/// Reads a result an agent reported.
pub fn job_result(report: &pb::JobResultReport) -> (Outcome, JobResult) {
    let outcome = match pb::JobOutcome::try_from(report.outcome) {
        Ok(pb::JobOutcome::Succeeded) => Outcome::Succeeded,
        Ok(pb::JobOutcome::TimedOut) => Outcome::TimedOut,
        _ => Outcome::Failed,
    };
    let result = JobResult {
        exit_code: report.has_exit_code.then_some(report.exit_code),
        stdout: report.stdout.clone(),
        stderr: report.stderr.clone(),
        stdout_truncated: report.stdout_truncated,
        stderr_truncated: report.stderr_truncated,
        duration_ms: report.duration_ms,
        finished_at: DateTime::<Utc>::from_timestamp_millis(report.finished_at_unix_ms)
            .unwrap_or_else(Utc::now),
        error: (!report.error.is_empty()).then(|| report.error.clone()),
    };
    (outcome, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::CheckinRequest {
        pb::CheckinRequest {
            checkin_id: uuid::Uuid::new_v4().to_string(),
            report: Some(pb::CheckinReport {
                collected_at_unix_ms: 1_700_000_000_000,
                hostname: "web-01".into(),
                os: Some(pb::OsInfo {
                    family: "linux".into(),
                    ..Default::default()
                }),
                memory: Some(pb::MemoryInfo {
                    total_bytes: 10,
                    used_bytes: 5,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_valid_request_converts() {
        let (_, report) = checkin(request()).expect("valid");
        assert_eq!(report.hostname, "web-01");
        assert_eq!(report.collected_at.timestamp_millis(), 1_700_000_000_000);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut bad = request();
        bad.checkin_id = "nope".into();
        let report = bad.report.as_mut().expect("report");
        report.collected_at_unix_ms = 0;
        report.hostname = String::new();
        let fields: Vec<String> = checkin(bad)
            .expect_err("invalid")
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "checkin_id",
                "report.collected_at_unix_ms",
                "report.hostname"
            ]
        );
    }
}
