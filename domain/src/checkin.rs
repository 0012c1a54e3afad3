//! Check-ins: what an agent sees on its machine, recorded as one event per report.
//!
//! Check-ins form their own stream per agent ([`CHECKIN_STREAM`], aggregate id = agent id) rather
//! than events of the [`crate::agent::Agent`] aggregate. They have no business invariant beyond
//! "the sender is an active agent" (checked by the credential lookup that authenticates the
//! request) and "a retried report is recorded once" (checked by its [`CheckinId`]), so recording
//! one never needs the agent's history: the gateway appends them in batches without loading any
//! aggregate, and an agent with 100,000 check-ins costs the same to check in as a new one.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::ids::CheckinId;

/// The aggregate type under which check-ins are stored.
pub const CHECKIN_STREAM: &str = "agent_checkins";

/// Most disks one report may list.
pub const MAX_DISKS: usize = 256;
/// Most logged-in users one report may list.
pub const MAX_USERS: usize = 1024;
/// Most IP addresses one report may list.
pub const MAX_IP_ADDRESSES: usize = 1024;
/// Longest free-text field (hostname, versions, mount points), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

/// What an agent reports about its machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckinReport {
    /// When the agent collected these facts (agent clock). A report that could not be sent at
    /// the time keeps its original time when it is sent later.
    pub collected_at: DateTime<Utc>,
    /// The machine's hostname.
    pub hostname: String,
    /// Operating system.
    pub os: OsInfo,
    /// The agent's version.
    pub agent_version: String,
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// CPU count and load.
    pub cpu: CpuInfo,
    /// Memory use.
    pub memory: MemoryInfo,
    /// Every mounted disk.
    pub disks: Vec<DiskUsage>,
    /// Users with a session on the machine.
    pub logged_in_users: Vec<String>,
    /// The machine's IP addresses.
    pub ip_addresses: Vec<String>,
}

/// Operating system facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsInfo {
    /// Family: `linux`, `windows`, `macos`.
    pub family: String,
    /// Distribution or product name, such as `Debian GNU/Linux`.
    pub name: String,
    /// Its version, such as `12`.
    pub version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
}

/// CPU facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Logical CPUs.
    pub logical_cores: u32,
    /// Load average over 1 minute.
    pub load_1m: f64,
    /// Load average over 5 minutes.
    pub load_5m: f64,
    /// Load average over 15 minutes.
    pub load_15m: f64,
}

/// Memory facts, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Physical memory.
    pub total_bytes: u64,
    /// Physical memory in use.
    pub used_bytes: u64,
    /// Swap space.
    pub swap_total_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
}

/// One disk's use, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Where it is mounted.
    pub mount_point: String,
    /// File system type.
    pub file_system: String,
    /// Capacity.
    pub total_bytes: u64,
    /// Space in use.
    pub used_bytes: u64,
}

/// One thing wrong with a report, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldProblem {
    /// The field, as a path such as `disks[2].used_bytes`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl CheckinReport {
    /// Checks the report and returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: String, text: &str| {
            problems.push(FieldProblem {
                field,
                problem: text.to_string(),
            });
        };
        let hostname = self.hostname.trim();
        if hostname.is_empty() || hostname.len() > 253 {
            problem("hostname".into(), "must be 1 to 253 characters");
        }
        for (field, value) in [
            ("agent_version", &self.agent_version),
            ("os.family", &self.os.family),
            ("os.name", &self.os.name),
            ("os.version", &self.os.version),
            ("os.kernel_version", &self.os.kernel_version),
            ("os.arch", &self.os.arch),
        ] {
            if value.len() > MAX_TEXT_LEN {
                problem(field.into(), "is too long");
            }
        }
        if self.os.family.trim().is_empty() {
            problem("os.family".into(), "must not be empty");
        }
        for (field, value) in [
            ("cpu.load_1m", self.cpu.load_1m),
            ("cpu.load_5m", self.cpu.load_5m),
            ("cpu.load_15m", self.cpu.load_15m),
        ] {
            if !value.is_finite() || value < 0.0 {
                problem(field.into(), "must be a non-negative number");
            }
        }
        if self.memory.used_bytes > self.memory.total_bytes {
            problem("memory.used_bytes".into(), "exceeds memory.total_bytes");
        }
        if self.memory.swap_used_bytes > self.memory.swap_total_bytes {
            problem(
                "memory.swap_used_bytes".into(),
                "exceeds memory.swap_total_bytes",
            );
        }
        if self.disks.len() > MAX_DISKS {
            problem("disks".into(), &format!("at most {MAX_DISKS} disks"));
        }
        for (i, disk) in self.disks.iter().enumerate().take(MAX_DISKS) {
            if disk.mount_point.is_empty() || disk.mount_point.len() > MAX_TEXT_LEN {
                problem(format!("disks[{i}].mount_point"), "must be 1 to 1024 bytes");
            }
            if disk.file_system.len() > MAX_TEXT_LEN {
                problem(format!("disks[{i}].file_system"), "is too long");
            }
            if disk.used_bytes > disk.total_bytes {
                problem(format!("disks[{i}].used_bytes"), "exceeds total_bytes");
            }
        }
        if self.logged_in_users.len() > MAX_USERS {
            problem(
                "logged_in_users".into(),
                &format!("at most {MAX_USERS} users"),
            );
        }
        for (i, user) in self.logged_in_users.iter().enumerate().take(MAX_USERS) {
            if user.is_empty() || user.len() > MAX_TEXT_LEN {
                problem(format!("logged_in_users[{i}]"), "must be 1 to 1024 bytes");
            }
        }
        if self.ip_addresses.len() > MAX_IP_ADDRESSES {
            problem(
                "ip_addresses".into(),
                &format!("at most {MAX_IP_ADDRESSES} addresses"),
            );
        }
        for (i, ip) in self.ip_addresses.iter().enumerate().take(MAX_IP_ADDRESSES) {
            if ip.parse::<IpAddr>().is_err() {
                problem(format!("ip_addresses[{i}]"), "is not an IP address");
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Events of the check-in stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CheckinEvent {
    /// An agent reported what it sees.
    AgentCheckedIn {
        /// The id the agent gave this report; a retry with the same id is recorded once.
        checkin_id: CheckinId,
        /// The report.
        report: CheckinReport,
    },
}

impl DomainEvent for CheckinEvent {
    fn event_type(&self) -> String {
        match self {
            CheckinEvent::AgentCheckedIn { .. } => "AgentCheckedIn",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    pub(crate) fn report() -> CheckinReport {
        CheckinReport {
            collected_at: Utc
                .with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
                .single()
                .expect("valid time"),
            hostname: "web-01".into(),
            os: OsInfo {
                family: "linux".into(),
                name: "Debian GNU/Linux".into(),
                version: "12".into(),
                kernel_version: "6.1.0".into(),
                arch: "x86_64".into(),
            },
            agent_version: "0.1.0".into(),
            uptime_secs: 3600,
            cpu: CpuInfo {
                logical_cores: 2,
                load_1m: 0.5,
                load_5m: 0.25,
                load_15m: 0.125,
            },
            memory: MemoryInfo {
                total_bytes: 8 << 30,
                used_bytes: 2 << 30,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
            },
            disks: vec![DiskUsage {
                mount_point: "/".into(),
                file_system: "ext4".into(),
                total_bytes: 100 << 30,
                used_bytes: 40 << 30,
            }],
            logged_in_users: vec!["alice".into()],
            ip_addresses: vec!["192.0.2.10".into(), "fe80::1".into()],
        }
    }

    #[test]
    fn a_sane_report_is_valid() {
        assert_eq!(report().validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_named_by_field() {
        let mut bad = report();
        bad.hostname = " ".into();
        bad.cpu.load_1m = f64::NAN;
        bad.memory.used_bytes = bad.memory.total_bytes + 1;
        bad.disks[0].used_bytes = bad.disks[0].total_bytes + 1;
        bad.ip_addresses.push("not-an-ip".into());
        let fields: Vec<String> = bad
            .validate()
            .expect_err("invalid")
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "hostname",
                "cpu.load_1m",
                "memory.used_bytes",
                "disks[0].used_bytes",
                "ip_addresses[2]"
            ]
        );
    }

    #[test]
    fn too_many_disks_is_one_problem() {
        let mut bad = report();
        bad.disks = vec![bad.disks[0].clone(); MAX_DISKS + 1];
        let problems = bad.validate().expect_err("invalid");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "disks");
    }
}
