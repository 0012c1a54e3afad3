//! Collecting the facts a check-in reports. The operating-system-specific parts sit behind
//! [`Collector`]; Linux is implemented, Windows and macOS implement the same trait.

#[cfg(target_os = "linux")]
mod linux;

use logbook_proto::agent::v1::CheckinReport;

/// Something that can describe the machine it runs on.
pub trait Collector: Send {
    /// What the machine looks like now.
    fn collect(&mut self) -> CheckinReport;
}

/// The collector for the platform this agent was built for.
pub fn for_this_platform() -> Box<dyn Collector> {
    #[cfg(target_os = "linux")]
    {
        Box::new(linux::LinuxCollector::new())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Box::new(Portable::new())
    }
}

/// The agent's own version, reported with every check-in.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The machine's hostname as the agent reports it.
pub fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "unknown".to_string())
}

/// The operating system family name used by the server (`linux`, `windows`, `macos`).
pub fn os_family() -> &'static str {
    std::env::consts::OS
}

/// Facts sysinfo can provide on every platform; the base of each platform's collector.
pub(crate) fn portable_report(system: &mut sysinfo::System) -> CheckinReport {
    use logbook_proto::agent::v1::{CpuInfo, DiskUsage, MemoryInfo, OsInfo};
    use sysinfo::{Disks, Networks, System};

    system.refresh_memory();
    let load = System::load_average();
    let disks = Disks::new_with_refreshed_list()
        .list()
        .iter()
        .map(|d| DiskUsage {
            mount_point: d.mount_point().to_string_lossy().into_owned(),
            file_system: d.file_system().to_string_lossy().into_owned(),
            total_bytes: d.total_space(),
            used_bytes: d.total_space().saturating_sub(d.available_space()),
        })
        .collect();
    let mut ip_addresses: Vec<String> = Networks::new_with_refreshed_list()
        .list()
        .values()
        .flat_map(|n| n.ip_networks().iter().map(|ip| ip.addr))
        .filter(|addr| !addr.is_loopback())
        .map(|addr| addr.to_string())
        .collect();
    ip_addresses.sort();
    ip_addresses.dedup();
    CheckinReport {
        collected_at_unix_ms: now_unix_ms(),
        hostname: hostname(),
        os: Some(OsInfo {
            family: os_family().to_string(),
            name: System::name().unwrap_or_default(),
            version: System::os_version().unwrap_or_default(),
            kernel_version: System::kernel_version().unwrap_or_default(),
            arch: System::cpu_arch(),
        }),
        agent_version: AGENT_VERSION.to_string(),
        uptime_secs: System::uptime(),
        cpu: Some(CpuInfo {
            logical_cores: system.cpus().len() as u32,
            load_1m: load.one,
            load_5m: load.five,
            load_15m: load.fifteen,
        }),
        memory: Some(MemoryInfo {
            total_bytes: system.total_memory(),
            used_bytes: system.used_memory().min(system.total_memory()),
            swap_total_bytes: system.total_swap(),
            swap_used_bytes: system.used_swap().min(system.total_swap()),
        }),
        disks,
        logged_in_users: Vec::new(),
        ip_addresses,
    }
}

/// Milliseconds since the Unix epoch, by the agent's clock.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn system_with_cpu_list() -> sysinfo::System {
    let mut system = sysinfo::System::new();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    system
}

/// A collector with no platform-specific extras (used where no dedicated one exists yet).
#[cfg(not(target_os = "linux"))]
struct Portable {
    system: sysinfo::System,
}

#[cfg(not(target_os = "linux"))]
impl Portable {
    fn new() -> Self {
        Self {
            system: system_with_cpu_list(),
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Collector for Portable {
    fn collect(&mut self) -> CheckinReport {
        portable_report(&mut self.system)
    }
}
