//! Linux facts: everything sysinfo gives, plus the logged-in users from utmp.

use std::collections::BTreeSet;

use logbook_proto::agent::v1::CheckinReport;

use super::Collector;

pub(super) struct LinuxCollector {
    system: sysinfo::System,
}

impl LinuxCollector {
    pub(super) fn new() -> Self {
        Self {
            system: super::system_with_cpu_list(),
        }
    }
}

impl Collector for LinuxCollector {
    fn collect(&mut self) -> CheckinReport {
        let mut report = super::portable_report(&mut self.system);
        report.logged_in_users =
            logged_in_users(&std::fs::read("/var/run/utmp").unwrap_or_default());
        report
    }
}

/// glibc's `struct utmp` on Linux: 384 bytes; `ut_type` at 0 (USER_PROCESS = 7), `ut_user` at
/// 44 (32 bytes, NUL-padded).
const UTMP_RECORD: usize = 384;
const USER_PROCESS: i16 = 7;
const UT_USER: std::ops::Range<usize> = 44..76;

/// The distinct users with a session, from the contents of utmp.
fn logged_in_users(utmp: &[u8]) -> Vec<String> {
    let users: BTreeSet<String> = utmp
        .chunks_exact(UTMP_RECORD)
        .filter(|record| i16::from_ne_bytes([record[0], record[1]]) == USER_PROCESS)
        .filter_map(|record| {
            let field = &record[UT_USER];
            let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
            let name = String::from_utf8_lossy(&field[..end]).trim().to_string();
            (!name.is_empty()).then_some(name)
        })
        .collect();
    users.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: i16, user: &str) -> Vec<u8> {
        let mut r = vec![0u8; UTMP_RECORD];
        r[..2].copy_from_slice(&kind.to_ne_bytes());
        r[UT_USER.start..UT_USER.start + user.len()].copy_from_slice(user.as_bytes());
        r
    }

    #[test]
    fn only_user_sessions_count_once_each() {
        let utmp = [
            record(USER_PROCESS, "alice"),
            record(2, "reboot"),
            record(USER_PROCESS, "bob"),
            record(USER_PROCESS, "alice"),
        ]
        .concat();
        assert_eq!(logged_in_users(&utmp), ["alice", "bob"]);
    }

    #[test]
    fn the_report_describes_this_machine() {
        let report = LinuxCollector::new().collect();
        assert!(!report.hostname.is_empty());
        assert_eq!(report.os.as_ref().map(|o| o.family.as_str()), Some("linux"));
        assert!(report.memory.as_ref().is_some_and(|m| m.total_bytes > 0));
        assert!(report.cpu.as_ref().is_some_and(|c| c.logical_cores > 0));
        assert!(!report.disks.is_empty(), "no disks found");
        assert!(report.collected_at_unix_ms > 1_700_000_000_000);
    }
}
