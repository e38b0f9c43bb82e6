//! Task resource usage for `Stats` from `/proc` (spec nomad-executor-logmon.md §5.6, universal
//! executor): the task's processes (its cgroup's, or the task pid and its descendants), per pid RSS,
//! swap and CPU times (read by `crate::procfs`), CPU percent from the change since the previous
//! sample, and the sums.

use std::collections::HashMap;
use std::time::Instant;

use crate::proto::drivers::{
    cpu_usage, memory_usage, CpuUsage, MemoryUsage, TaskResourceUsage, TaskStats,
};

/// One process's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    user_s: f64,
    system_s: f64,
    rss: u64,
    swap: u64,
    at: Instant,
}

/// Keeps the previous sample of every pid so CPU percent is a rate, as gopsutil's trackers do.
#[derive(Debug, Default)]
pub struct StatsTracker {
    previous: HashMap<u32, Sample>,
}

/// Clock ticks per second (`CLK_TCK`), the unit of `/proc` and cpuacct CPU times.
pub(crate) fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

fn read_sample(pid: u32) -> Option<Sample> {
    let st = crate::procfs::stat(pid).ok()?;
    let hz = ticks_per_second();
    // A kernel without swap accounting prints no VmSwap line: no swap.
    let swap = crate::procfs::status_bytes(pid, "VmSwap")
        .ok()
        .flatten()
        .unwrap_or(0);
    Some(Sample {
        user_s: st.utime as f64 / hz,
        system_s: st.stime as f64 / hz,
        rss: st.rss_pages * page_size(),
        swap,
        at: Instant::now(),
    })
}

/// `root` and every descendant of it, from the parent pids in `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in crate::procfs::pids() {
        if let Ok(st) = crate::procfs::stat(pid) {
            children.entry(st.ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            for &kid in kids {
                if !out.contains(&kid) {
                    out.push(kid);
                }
            }
        }
        i += 1;
    }
    out.retain(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
    out
}

impl StatsTracker {
    /// One `TaskStats` for `pids`; `total_mhz` and `cores` turn percent into Nomad's TotalTicks.
    pub fn sample(&mut self, pids: &[u32], total_mhz: u64, cores: i64) -> TaskStats {
        let mut by_pid = HashMap::new();
        let mut agg = Usage::default();
        let mut seen = HashMap::new();
        for &pid in pids {
            let Some(now) = read_sample(pid) else {
                continue;
            };
            let percent = match self.previous.get(&pid) {
                Some(prev) => {
                    let wall = now.at.duration_since(prev.at).as_secs_f64();
                    let cpu = (now.user_s + now.system_s) - (prev.user_s + prev.system_s);
                    if wall > 0.0 {
                        (cpu / wall * 100.0).max(0.0)
                    } else {
                        0.0
                    }
                }
                None => 0.0,
            };
            let ticks = if cores > 0 {
                percent / 100.0 * total_mhz as f64 / cores as f64
            } else {
                0.0
            };
            let usage = Usage {
                user_s: now.user_s,
                system_s: now.system_s,
                percent,
                ticks,
                rss: now.rss,
                swap: now.swap,
            };
            agg.add(&usage);
            by_pid.insert(pid.to_string(), usage.to_proto());
            seen.insert(pid, now);
        }
        self.previous = seen;
        TaskStats {
            id: String::new(),
            timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            agg_resource_usage: Some(agg.to_proto()),
            resource_usage_by_pid: by_pid,
        }
    }
}

/// One process's (or the task's summed) figures for one sample.
#[derive(Default, Clone, Copy)]
struct Usage {
    user_s: f64,
    system_s: f64,
    percent: f64,
    ticks: f64,
    rss: u64,
    swap: u64,
}

impl Usage {
    fn add(&mut self, u: &Usage) {
        self.user_s += u.user_s;
        self.system_s += u.system_s;
        self.percent += u.percent;
        self.ticks += u.ticks;
        self.rss += u.rss;
        self.swap += u.swap;
    }

    /// Nomad's universal Measured lists: memory `RSS`, `Swap`; CPU `System Mode`, `User Mode`,
    /// `Percent`.
    fn to_proto(self) -> TaskResourceUsage {
        TaskResourceUsage {
            cpu: Some(CpuUsage {
                system_mode: self.system_s * 1e9,
                user_mode: self.user_s * 1e9,
                total_ticks: self.ticks,
                percent: self.percent,
                measured_fields: vec![
                    cpu_usage::Fields::SystemMode as i32,
                    cpu_usage::Fields::UserMode as i32,
                    cpu_usage::Fields::Percent as i32,
                ],
                ..Default::default()
            }),
            memory: Some(MemoryUsage {
                rss: self.rss,
                swap: self.swap,
                measured_fields: vec![
                    memory_usage::Fields::Rss as i32,
                    memory_usage::Fields::Swap as i32,
                ],
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_include_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pids = descendants(child.id());
        assert!(pids.len() >= 2, "{pids:?}");
        assert_eq!(pids[0], child.id());
        for p in &pids[1..] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn samples_rss_and_a_cpu_rate_for_a_busy_process() {
        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let mut tracker = StatsTracker::default();
        let first = tracker.sample(&[busy.id()], 4000, 2);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let second = tracker.sample(&[busy.id()], 4000, 2);
        busy.kill().unwrap();
        busy.wait().unwrap();
        let agg = |s: &TaskStats| s.agg_resource_usage.clone().unwrap();
        assert_eq!(
            agg(&first).cpu.unwrap().percent,
            0.0,
            "first sample has no rate"
        );
        let cpu = agg(&second).cpu.unwrap();
        assert!(cpu.percent > 1.0, "busy loop at {}%", cpu.percent);
        assert!(cpu.total_ticks > 0.0);
        assert!(agg(&second).memory.unwrap().rss > 0);
        assert!(second.timestamp.is_some());
        assert!(second
            .resource_usage_by_pid
            .contains_key(&busy.id().to_string()));
    }
}
