//! An isolated task's cgroups (spec nomad-versions.md §4.3, rows "isolated"): runc's layout, a
//! directory in **every** mounted hierarchy (v1 controllers, `name=systemd`, the hybrid
//! `unified` tree), named `/nomad/<uuid>` for Nomad 1.6 and `/nomad/<alloc>.<task>` for 1.7+;
//! memory hard and soft limits, swappiness, CPU shares (unclamped and checked on 1.6, clamped on
//! 1.7+), the device allow-list; and Stats from the cgroup's own counters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::IsolationError;
use crate::nomad::executor::cgroups::{self, CgroupMode, Limits, TaskCgroup};
use crate::nomad::executor::config::Compute;
use crate::nomad::executor::containment::{self, Host, NOMAD_PARENT};
use crate::proto::drivers::{
    cpu_usage, memory_usage, CpuUsage, MemoryUsage, TaskResourceUsage, TaskStats,
};
use crate::proto::executor::LaunchRequest;

/// The hierarchies mounted under `root`: every directory that is a cgroup root (symlinked
/// aliases such as `cpu,cpuacct` skipped), sorted.
pub fn hierarchies(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.path().join("cgroup.procs").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

/// The directory name under each hierarchy.
pub fn relative_path(req: &LaunchRequest, legacy: bool) -> String {
    match containment::alloc_and_task(&req.task_dir).filter(|_| !legacy) {
        Some((alloc, task)) => format!("{NOMAD_PARENT}/{alloc}.{task}"),
        None => format!("{NOMAD_PARENT}/{}", containment::random_uuid()),
    }
}

/// The isolated task's limits: Nomad's memory arithmetic; shares checked (1.6) or clamped (1.7+).
pub fn limits(
    req: &LaunchRequest,
    legacy: bool,
    compute: Compute,
) -> Result<Limits, IsolationError> {
    let mut l = containment::limits_of(req.resources.as_ref());
    let resources = req.resources.as_ref();
    let asked = resources
        .and_then(|r| r.linux_resources.as_ref())
        .map(|l| l.cpu_shares)
        .unwrap_or(0);
    l.cpu_shares = if legacy {
        // Nomad 1.6 takes the allocated shares and lets runc refuse anything under 2.
        let allocated = resources
            .and_then(|r| r.allocated_resources.as_ref())
            .and_then(|a| a.cpu.as_ref())
            .map(|c| c.cpu_shares)
            .unwrap_or(0);
        match allocated {
            s if s < 2 => return Err(IsolationError::CpuShares(s)),
            s => Some(s as u64),
        }
    } else {
        Some(cgroups::clamp_shares(asked, compute.total_mhz))
    };
    // runc writes cpuset.cpus of its own dir only from the spec; Nomad passes the agent's path.
    l.cpuset_cpus = None;
    Ok(l)
}

/// Creates the task's cgroups (removed again on any failure) with limits and device rules.
/// `None` when the host has no v1 cgroups to use.
pub fn create(
    req: &LaunchRequest,
    host: &Host,
    legacy: bool,
    compute: Compute,
    device_rules: &[String],
) -> Result<Option<TaskCgroup>, IsolationError> {
    let limits = if req.resource_limits {
        limits(req, legacy, compute)?
    } else {
        Limits::default()
    };
    let relative = relative_path(req, legacy);
    let cg = match host.mode {
        CgroupMode::Off => return Ok(None),
        CgroupMode::V2 => {
            let relative = match containment::alloc_and_task(&req.task_dir) {
                Some((alloc, task)) => format!("nomad.slice/share.slice/{alloc}.{task}.scope"),
                None => format!("nomad.slice/{}.scope", containment::random_uuid()),
            };
            TaskCgroup::create(CgroupMode::V2, &host.root, &relative, &[], &limits)?
        }
        CgroupMode::V1 => {
            let all = hierarchies(&host.root);
            let names: Vec<&str> = if req.resource_limits {
                all.iter().map(String::as_str).collect()
            } else {
                vec!["freezer"]
            };
            TaskCgroup::create(CgroupMode::V1, &host.root, &relative, &names, &limits)?
        }
    };
    let finish = || -> Result<(), IsolationError> {
        if let Some(mem) = cg
            .dir("memory")
            .filter(|d| d.join("memory.swappiness").exists())
        {
            // Best effort, as runc's probe.
            let _ = std::fs::write(mem.join("memory.swappiness"), "0");
        }
        if let Some(dev) = cg.dir("devices").filter(|_| req.resource_limits) {
            write(&dev.join("devices.deny"), "a")?;
            for rule in device_rules {
                write(&dev.join("devices.allow"), rule)?;
            }
        }
        // Nomad 1.7+ writes the reserved cores into the agent's cpuset cgroup itself.
        if !legacy {
            if let Some(linux) = req
                .resources
                .as_ref()
                .and_then(|r| r.linux_resources.as_ref())
            {
                if !linux.cpuset_cpus.is_empty() && !linux.cpuset_cgroup.is_empty() {
                    let _ = std::fs::write(
                        Path::new(&linux.cpuset_cgroup).join("cpuset.cpus"),
                        &linux.cpuset_cpus,
                    );
                }
            }
        }
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = cg.remove();
        return Err(e);
    }
    Ok(Some(cg))
}

fn write(path: &Path, value: &str) -> Result<(), IsolationError> {
    std::fs::write(path, value).map_err(|source| {
        IsolationError::Cgroup(cgroups::CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
    })
}

/// The agent's cpuset cgroup the init moves into (Nomad's CreateRuntime hook), when it exists.
pub fn agent_cpuset(req: &LaunchRequest) -> Option<PathBuf> {
    let path = &req
        .resources
        .as_ref()?
        .linux_resources
        .as_ref()?
        .cpuset_cgroup;
    let dir = PathBuf::from(path);
    (!path.is_empty() && dir.join("cgroup.procs").exists()).then_some(dir)
}

fn read_u64(path: PathBuf) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn keyed(path: PathBuf) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Previous CPU counters, for rates.
#[derive(Debug, Default)]
pub struct CgroupStats {
    previous: Option<(Instant, u64, u64, u64)>,
    pids: crate::nomad::executor::procstats::StatsTracker,
}

impl CgroupStats {
    /// One sample: memory and CPU from the cgroup (Nomad's isolated Measured lists), the per-pid
    /// map from `/proc` for the cgroup's processes.
    pub fn sample(&mut self, cg: &TaskCgroup, compute: Compute) -> TaskStats {
        let pids = cg.pids();
        let mut stats = self.pids.sample(&pids, compute.total_mhz, compute.cores);
        let memory = match (cg.mode(), cg.dir("memory")) {
            (Some(CgroupMode::V1), Some(mem)) => {
                let stat = keyed(mem.join("memory.stat"));
                let get = |k: &str| stat.get(k).copied().unwrap_or(0);
                Some(MemoryUsage {
                    rss: get("rss"),
                    cache: get("cache"),
                    swap: get("swap"),
                    usage: read_u64(mem.join("memory.usage_in_bytes")),
                    max_usage: read_u64(mem.join("memory.max_usage_in_bytes")),
                    kernel_usage: read_u64(mem.join("memory.kmem.usage_in_bytes")),
                    kernel_max_usage: read_u64(mem.join("memory.kmem.max_usage_in_bytes")),
                    measured_fields: [
                        memory_usage::Fields::Rss,
                        memory_usage::Fields::Cache,
                        memory_usage::Fields::Swap,
                        memory_usage::Fields::Usage,
                        memory_usage::Fields::MaxUsage,
                        memory_usage::Fields::KernelUsage,
                        memory_usage::Fields::KernelMaxUsage,
                    ]
                    .map(|f| f as i32)
                    .to_vec(),
                })
            }
            (Some(CgroupMode::V2), Some(dir)) => {
                let stat = keyed(dir.join("memory.stat"));
                let get = |k: &str| stat.get(k).copied().unwrap_or(0);
                Some(MemoryUsage {
                    rss: get("anon"),
                    cache: get("file"),
                    swap: read_u64(dir.join("memory.swap.current")),
                    usage: read_u64(dir.join("memory.current")),
                    measured_fields: [
                        memory_usage::Fields::Rss,
                        memory_usage::Fields::Cache,
                        memory_usage::Fields::Swap,
                        memory_usage::Fields::Usage,
                    ]
                    .map(|f| f as i32)
                    .to_vec(),
                    ..Default::default()
                })
            }
            _ => None,
        };
        let now = Instant::now();
        let (total, user, system, throttle) = match cg.mode() {
            Some(CgroupMode::V2) => {
                let stat = cg
                    .dir("cpu")
                    .map(|d| keyed(d.join("cpu.stat")))
                    .unwrap_or_default();
                let us = |k: &str| stat.get(k).copied().unwrap_or(0) * 1000;
                (
                    us("usage_usec"),
                    us("user_usec"),
                    us("system_usec"),
                    (
                        stat.get("nr_throttled").copied().unwrap_or(0),
                        us("throttled_usec"),
                    ),
                )
            }
            _ => {
                let acct = cg.dir("cpuacct");
                let total = acct.map(|d| read_u64(d.join("cpuacct.usage"))).unwrap_or(0);
                let stat = acct
                    .map(|d| keyed(d.join("cpuacct.stat")))
                    .unwrap_or_default();
                let ns_per_tick = 1e9 / crate::nomad::executor::procstats::ticks_per_second();
                let ticks =
                    |k: &str| (stat.get(k).copied().unwrap_or(0) as f64 * ns_per_tick) as u64;
                let cpu = cg
                    .dir("cpu")
                    .map(|d| keyed(d.join("cpu.stat")))
                    .unwrap_or_default();
                (
                    total,
                    ticks("user"),
                    ticks("system"),
                    (
                        cpu.get("nr_throttled").copied().unwrap_or(0),
                        cpu.get("throttled_time").copied().unwrap_or(0),
                    ),
                )
            }
        };
        let rate = |prev: u64, cur: u64, wall: f64| {
            if wall > 0.0 {
                (cur.saturating_sub(prev) as f64 / wall * 100.0).max(0.0)
            } else {
                0.0
            }
        };
        let (percent, user_pct, system_pct) = match self.previous {
            Some((at, t, u, s)) => {
                let wall = now.duration_since(at).as_nanos() as f64;
                (
                    rate(t, total, wall),
                    rate(u, user, wall),
                    rate(s, system, wall),
                )
            }
            None => (0.0, 0.0, 0.0),
        };
        self.previous = Some((now, total, user, system));
        let total_ticks = if compute.cores > 0 {
            percent / 100.0 * compute.total_mhz as f64 / compute.cores as f64
        } else {
            0.0
        };
        let cpu = CpuUsage {
            system_mode: system_pct,
            user_mode: user_pct,
            total_ticks,
            throttled_periods: throttle.0,
            throttled_time: throttle.1,
            percent,
            measured_fields: [
                cpu_usage::Fields::SystemMode,
                cpu_usage::Fields::UserMode,
                cpu_usage::Fields::ThrottledPeriods,
                cpu_usage::Fields::ThrottledTime,
                cpu_usage::Fields::Percent,
            ]
            .map(|f| f as i32)
            .to_vec(),
        };
        stats.agg_resource_usage = Some(TaskResourceUsage {
            cpu: Some(cpu),
            memory: Some(memory.unwrap_or_default()),
        });
        stats
    }
}
