//! Task cgroups for the universal executor (spec nomad-executor-logmon.md §5.1.5): which cgroup
//! hierarchy the host runs (v1 controllers or the v2 unified tree), Nomad's memory and CPU limit
//! arithmetic, and a task cgroup that takes limits and pids, reports OOM kills and is emptied.
//!
//! The executor itself never joins the task's cgroups (hashicorp/nomad#4495): the child is placed
//! in them between fork and exec.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Root of the cgroup filesystems.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers a cgroup of our own uses (outside Nomad: `goplugin run`).
pub const V1_CONTROLLERS: [&str; 6] = ["freezer", "memory", "cpu", "cpuacct", "cpuset", "pids"];

/// Errors of cgroup handling; each names the file and the value.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Creating a cgroup directory failed.
    #[error("creating cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing a control file failed.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        source: io::Error,
    },
    /// Removing a cgroup failed (it still holds processes).
    #[error("removing cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Which cgroup hierarchy this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// The unified hierarchy at [`CGROUP_ROOT`] with its controllers.
    V2,
    /// Per-controller v1 hierarchies under [`CGROUP_ROOT`].
    V1,
    /// No usable cgroups.
    Off,
}

/// Reads `/proc/self/mountinfo`: v2 when [`CGROUP_ROOT`] itself is cgroup2, v1 when the memory
/// controller has its own v1 mount (a hybrid host's empty v2 mount beside v1 counts as v1).
pub fn detect_mode() -> CgroupMode {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mode_from_mountinfo(&info)
}

fn mode_from_mountinfo(info: &str) -> CgroupMode {
    let mut v1_memory = false;
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = pre.split_whitespace().nth(4).unwrap_or("");
        let mut post = post.split_whitespace();
        let fstype = post.next().unwrap_or("");
        let options = post.nth(1).unwrap_or("");
        if fstype == "cgroup2" && mount_point == CGROUP_ROOT {
            return CgroupMode::V2;
        }
        if fstype == "cgroup" && options.split(',').any(|o| o == "memory") {
            v1_memory = true;
        }
    }
    if v1_memory {
        CgroupMode::V1
    } else {
        CgroupMode::Off
    }
}

/// Nomad's memory limits in bytes (`memoryLimits`): `(hard, soft)`.
/// `memory_max_mb` -1: no hard limit, soft = memory_mb; > 0: hard = max, soft = memory_mb;
/// otherwise hard = memory_mb and no soft limit.
pub fn memory_limits(memory_mb: i64, memory_max_mb: i64) -> (Option<u64>, Option<u64>) {
    let bytes = |mb: i64| u64::try_from(mb).ok().filter(|m| *m > 0).map(|m| m << 20);
    match memory_max_mb {
        -1 => (None, bytes(memory_mb)),
        max if max > 0 => (bytes(max), bytes(memory_mb)),
        _ => (bytes(memory_mb), None),
    }
}

/// CPU shares clamped as Nomad's isolated executor does: at least 2, scaled down on hosts whose
/// total MHz exceeds the kernel's share maximum (262144).
pub fn clamp_shares(shares: i64, total_mhz: u64) -> u64 {
    let shares = shares.max(2) as u64;
    if total_mhz >= 262_144 {
        (shares * 262_144 / total_mhz).max(2)
    } else {
        shares
    }
}

/// v1 `cpu.shares` to v2 `cpu.weight` (opencontainers/cgroups' conversion: 1024 maps to 100).
pub fn cpu_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        s if s >= 262_144 => 10_000,
        s => {
            let l = (s as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            // The epsilon keeps exact powers (1024 shares: 10^2) from rounding up on float noise.
            (10f64.powf(exponent) - 1e-9).ceil() as u64
        }
    }
}

/// The limits a task cgroup enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Hard memory limit in bytes.
    pub memory_hard: Option<u64>,
    /// Soft memory limit (v1 soft limit, v2 `memory.low`) in bytes.
    pub memory_soft: Option<u64>,
    /// v1 CPU shares (converted to a weight on v2).
    pub cpu_shares: Option<u64>,
    /// Cores, e.g. `0-1,3`.
    pub cpuset_cpus: Option<String>,
}

/// One task's cgroups: the directories its process joins, the one that lists its processes,
/// the memory and freezer directories (OOM, freeze-and-kill) and which of them this executor
/// created (and so removes). Built by [`TaskCgroup::create`] for cgroups of our own, or by
/// [`TaskCgroup::existing`] for directories a Nomad agent made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskCgroup {
    mode: Option<CgroupMode>,
    /// (controller, directory) pairs whose `cgroup.procs` the task's process writes itself
    /// into; the controller is "" on v2.
    join: Vec<(String, PathBuf)>,
    /// The directory whose `cgroup.procs` lists the task's processes.
    stats: Option<PathBuf>,
    /// The memory (v1) or unified (v2) directory: limits and OOM events.
    memory: Option<PathBuf>,
    /// The freezer (v1) directory, for freezing before the kill.
    freezer: Option<PathBuf>,
    /// Directories this executor created, deepest last.
    owned: Vec<PathBuf>,
}

fn write(path: PathBuf, value: impl Into<String>) -> Result<(), CgroupError> {
    let value = value.into();
    fs::write(&path, &value).map_err(|source| CgroupError::Write {
        path,
        value,
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Which directories of an agent-made task cgroup play which part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingDirs {
    /// (controller, directory) pairs joined by the task ("" on v2).
    pub join: Vec<(String, PathBuf)>,
    /// Lists the task's processes.
    pub stats: Option<PathBuf>,
    /// v1 memory or v2 unified directory.
    pub memory: Option<PathBuf>,
    /// v1 freezer directory.
    pub freezer: Option<PathBuf>,
}

impl TaskCgroup {
    /// Creates `<root>/<controller>/<relative>` for each v1 controller of `controllers` that
    /// the host mounts, or `<root>/<relative>` on v2, and applies `limits`. Everything created
    /// is owned: removed by [`TaskCgroup::remove`]. `root` is [`CGROUP_ROOT`] outside tests.
    pub fn create(
        mode: CgroupMode,
        root: &Path,
        relative: &str,
        controllers: &[&str],
        limits: &Limits,
    ) -> Result<TaskCgroup, CgroupError> {
        let relative = relative.trim_start_matches('/');
        let dirs: Vec<(&str, PathBuf)> = match mode {
            CgroupMode::V1 => controllers
                .iter()
                .filter(|c| root.join(c).is_dir())
                .map(|c| (*c, root.join(c).join(relative)))
                .collect(),
            CgroupMode::V2 => vec![("", root.join(relative))],
            CgroupMode::Off => Vec::new(),
        };
        let by = |name: &str| {
            dirs.iter()
                .find(|(c, _)| *c == name || c.is_empty())
                .map(|(_, d)| d.clone())
        };
        let cg = TaskCgroup {
            mode: Some(mode),
            join: dirs
                .iter()
                .map(|(c, d)| (c.to_string(), d.clone()))
                .collect(),
            stats: by("freezer")
                .or_else(|| by("pids"))
                .or_else(|| by("memory"))
                .or_else(|| dirs.first().map(|(_, d)| d.clone())),
            memory: by("memory"),
            freezer: by("freezer").filter(|_| mode == CgroupMode::V1),
            owned: Vec::new(),
        };
        let mut cg = cg;
        for (controller, dir) in &dirs {
            // Record before creating, so a failure part-way still removes what was made.
            if !dir.exists() {
                cg.owned.push(dir.clone());
            }
            if let Err(e) = create_dir(dir) {
                let _ = cg.remove();
                return Err(e);
            }
            if *controller == "cpuset" {
                if let Err(e) = inherit_cpuset(dir) {
                    let _ = cg.remove();
                    return Err(e);
                }
            }
        }
        if let Err(e) = cg.apply(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Directories someone else made (a Nomad 1.7+ agent's `/nomad/<alloc>.<task>`): joined,
    /// measured and killed through, never removed.
    pub fn existing(mode: CgroupMode, dirs: ExistingDirs) -> TaskCgroup {
        TaskCgroup {
            mode: Some(mode),
            join: dirs.join,
            stats: dirs.stats,
            memory: dirs.memory,
            freezer: dirs.freezer,
            owned: Vec::new(),
        }
    }

    /// The same cgroup with nothing owned: kept when the task ends.
    pub fn disowned(mut self) -> TaskCgroup {
        self.owned.clear();
        self
    }

    /// Writes limits as Nomad's universal executor writes them into the agent's cgroups: every
    /// file tried, failures logged and ignored (v1: the hard limit always, `-1` for none; the
    /// soft limit when set; swappiness 0 where the kernel has it).
    pub fn apply_best_effort(&self, l: &Limits) {
        let try_write = |dir: &Path, file: &str, value: String| {
            if let Err(e) = write(dir.join(file), value) {
                tracing::warn!(error = %e, "cgroup limit not written");
            }
        };
        match self.mode {
            Some(CgroupMode::V1) => {
                if let Some(mem) = &self.memory {
                    let hard = l.memory_hard.map_or("-1".to_string(), |b| b.to_string());
                    try_write(mem, "memory.limit_in_bytes", hard);
                    if let Some(soft) = l.memory_soft {
                        try_write(mem, "memory.soft_limit_in_bytes", soft.to_string());
                    }
                    if mem.join("memory.swappiness").exists() {
                        try_write(mem, "memory.swappiness", "0".into());
                    }
                }
                if let (Some(cpu), Some(shares)) = (self.joined("cpu"), l.cpu_shares) {
                    try_write(cpu, "cpu.shares", shares.to_string());
                }
                if let (Some(cpuset), Some(cpus)) = (self.joined("cpuset"), &l.cpuset_cpus) {
                    try_write(cpuset, "cpuset.cpus", cpus.clone());
                }
            }
            Some(CgroupMode::V2) => {
                if let Err(e) = self.apply_v2(l) {
                    tracing::warn!(error = %e, "cgroup limit not written");
                }
            }
            _ => {}
        }
    }

    /// Cgroups a dead executor made and can no longer clean up, taken over by whoever finds
    /// them (the driver): owned, so [`TaskCgroup::kill_all`] freezes and kills through them and
    /// [`TaskCgroup::remove`] removes them. `dirs` are (controller, directory), "" on v2.
    pub fn adopted(mode: CgroupMode, dirs: Vec<(String, PathBuf)>) -> TaskCgroup {
        let by = |name: &str| {
            dirs.iter()
                .find(|(c, _)| c == name || c.is_empty())
                .map(|(_, d)| d.clone())
        };
        TaskCgroup {
            mode: Some(mode),
            stats: by("freezer")
                .or_else(|| by("pids"))
                .or_else(|| by("memory"))
                .or_else(|| dirs.first().map(|(_, d)| d.clone())),
            memory: by("memory"),
            freezer: by("freezer").filter(|_| mode == CgroupMode::V1),
            owned: dirs.iter().map(|(_, d)| d.clone()).collect(),
            join: dirs,
        }
    }

    /// The directory of `controller` (a v1 hierarchy whose name lists it, or the v2 tree).
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        self.join
            .iter()
            .find(|(c, _)| c.is_empty() || c == controller || c.split(',').any(|n| n == controller))
            .map(|(_, d)| d.as_path())
    }

    /// The hierarchy this cgroup lives in.
    pub fn mode(&self) -> Option<CgroupMode> {
        self.mode
    }

    /// Whether this executor created (and will remove) any of the directories.
    pub fn is_owned(&self) -> bool {
        !self.owned.is_empty()
    }

    /// Writes the limits into the control files of this cgroup's hierarchy.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        match self.mode {
            Some(CgroupMode::V1) => self.apply_v1(limits),
            Some(CgroupMode::V2) => self.apply_v2(limits),
            _ => Ok(()),
        }
    }

    fn joined(&self, controller: &str) -> Option<&Path> {
        self.join
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, d)| d.as_path())
    }

    fn apply_v1(&self, l: &Limits) -> Result<(), CgroupError> {
        if let Some(mem) = &self.memory {
            if let Some(hard) = l.memory_hard {
                write(mem.join("memory.limit_in_bytes"), hard.to_string())?;
            }
            if let Some(soft) = l.memory_soft {
                write(mem.join("memory.soft_limit_in_bytes"), soft.to_string())?;
            }
        }
        if let (Some(cpu), Some(shares)) = (self.joined("cpu"), l.cpu_shares) {
            write(cpu.join("cpu.shares"), shares.to_string())?;
        }
        if let (Some(cpuset), Some(cpus)) = (self.joined("cpuset"), &l.cpuset_cpus) {
            write(cpuset.join("cpuset.cpus"), cpus.clone())?;
        }
        Ok(())
    }

    fn apply_v2(&self, l: &Limits) -> Result<(), CgroupError> {
        let Some(dir) = &self.memory else {
            return Ok(());
        };
        let has = |file: &str| dir.join(file).exists();
        if has("memory.max") {
            let max = l.memory_hard.map_or("max".to_string(), |b| b.to_string());
            write(dir.join("memory.max"), max)?;
            if let Some(soft) = l.memory_soft {
                write(dir.join("memory.low"), soft.to_string())?;
            }
        }
        if let (true, Some(shares)) = (has("cpu.weight"), l.cpu_shares) {
            write(dir.join("cpu.weight"), cpu_weight(shares).to_string())?;
        }
        if let (true, Some(cpus)) = (has("cpuset.cpus"), &l.cpuset_cpus) {
            // Nomad ignores errors here: reserved cores may be gone.
            let _ = write(dir.join("cpuset.cpus"), cpus.clone());
        }
        Ok(())
    }

    /// Moves `pid` into every directory the task joins (after the fork; the child itself
    /// writes [`TaskCgroup::procs_files`] before exec).
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        for (_, dir) in &self.join {
            write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// The control files a forked child writes its own pid to (`0` means "myself").
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.join
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Every pid in the task's cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let Some(dir) = &self.stats else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether the kernel OOM-killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        let counter = |text: &str, key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let Some(mem) = &self.memory else {
            return false;
        };
        match self.mode {
            Some(CgroupMode::V1) => counter(&read(mem.join("memory.oom_control")), "oom_kill ") > 0,
            Some(CgroupMode::V2) => counter(&read(mem.join("memory.events")), "oom_kill ") > 0,
            _ => false,
        }
    }

    /// SIGKILLs every process in the cgroup until it is empty (bounded): frozen first where a
    /// freezer exists, so nothing forks away between reading the list and the kill, as Nomad's
    /// group killer does; `cgroup.kill` on v2 when the kernel has it.
    pub fn kill_all(&self) {
        let kill_file = self.stats.as_ref().map(|d| d.join("cgroup.kill"));
        if let Some(kill) = kill_file.filter(|k| k.exists()) {
            let _ = fs::write(kill, "1");
        }
        let frozen = self.freeze();
        for round in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = super::signals::kill_pid(pid, nix::sys::signal::Signal::SIGKILL);
            }
            if frozen && round == 0 {
                // SIGKILL is delivered once the cgroup thaws.
                self.thaw();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if frozen {
            self.thaw();
        }
    }

    fn freeze(&self) -> bool {
        let Some(state) = self.freezer.as_ref().map(|d| d.join("freezer.state")) else {
            return false;
        };
        if fs::write(&state, "FROZEN").is_err() {
            return false;
        }
        for _ in 0..100 {
            match fs::read_to_string(&state) {
                Ok(s) if s.trim() == "FROZEN" => return true,
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(_) => return false,
            }
        }
        // Still FREEZING after 100 ms: kill anyway, thawing after the first round.
        true
    }

    fn thaw(&self) {
        if let Some(dir) = &self.freezer {
            let _ = fs::write(dir.join("freezer.state"), "THAWED");
        }
    }

    /// Removes the directories this executor created (they must be empty of processes);
    /// directories made by someone else stay.
    pub fn remove(&self) -> Result<(), CgroupError> {
        // Every directory is tried; the first failure is reported.
        let mut first = None;
        for dir in self.owned.iter().rev() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) => {}
                Err(source) => {
                    first.get_or_insert(CgroupError::Remove {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The (controller, directory) pairs among the lines of a `/proc/PID/cgroup` text (`raw`) whose
/// path `keep` accepts, as directories under `root`: the first real controller of a v1 line
/// (named hierarchies such as `name=systemd` skipped), "" for the v2 line; each directory once.
pub fn dirs_in_proc_cgroup(
    raw: &str,
    root: &Path,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for line in raw.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !keep(path) {
            continue;
        }
        let rel = path.trim_start_matches('/');
        let (controller, dir) = if controllers.is_empty() {
            (String::new(), root.join(rel))
        } else if let Some(first) = controllers.split(',').next().filter(|c| !c.contains('=')) {
            (first.to_string(), root.join(first).join(rel))
        } else {
            continue;
        };
        if !out.iter().any(|(_, d)| *d == dir) {
            out.push((controller, dir));
        }
    }
    out
}

/// A v1 cpuset cgroup starts with empty `cpuset.cpus`/`cpuset.mems`, and no task can join it
/// until they are set: copy them from the parent, walking up while a parent is empty too.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let mut chain = vec![dir.to_path_buf()];
    while let Some(parent) = chain.last().and_then(|d| d.parent()).map(Path::to_path_buf) {
        let cpus = fs::read_to_string(parent.join("cpuset.cpus")).unwrap_or_default();
        chain.push(parent);
        if !cpus.trim().is_empty() || chain.len() > 16 {
            break;
        }
    }
    // Fill from the top-most non-empty ancestor down to `dir`.
    for pair in chain.windows(2).rev() {
        let (child, parent) = (&pair[0], &pair[1]);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = fs::read_to_string(child.join(file)).unwrap_or_default();
            if current.trim().is_empty() {
                let value = fs::read_to_string(parent.join(file)).unwrap_or_default();
                write(child.join(file), value.trim().to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_modes_from_mountinfo() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                      35 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw\n";
        assert_eq!(mode_from_mountinfo(hybrid), CgroupMode::V1);
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(mode_from_mountinfo(unified), CgroupMode::V2);
        assert_eq!(mode_from_mountinfo("garbage\n"), CgroupMode::Off);
    }

    #[test]
    fn memory_limits_follow_nomad() {
        assert_eq!(memory_limits(100, 0), (Some(100 << 20), None));
        assert_eq!(memory_limits(100, 200), (Some(200 << 20), Some(100 << 20)));
        assert_eq!(memory_limits(100, -1), (None, Some(100 << 20)));
        assert_eq!(memory_limits(0, 0), (None, None));
    }

    #[test]
    fn cpu_weight_and_clamp_match_the_reference_conversion() {
        assert_eq!(cpu_weight(0), 0);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 100);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert!(cpu_weight(512) < 100 && cpu_weight(2048) > 100);
        assert_eq!(clamp_shares(0, 4600), 2);
        assert_eq!(clamp_shares(500, 4600), 500);
        assert_eq!(clamp_shares(524_288, 524_288), 262_144);
    }

    /// A real v1 memory/cpu/pids cgroup on a host with v1 controllers (the build machines).
    #[test]
    fn v1_task_cgroup_takes_limits_and_pids_and_is_emptied() {
        if detect_mode() != CgroupMode::V1 || !nix::unistd::geteuid().is_root() {
            eprintln!(
                "skipping: needs root and cgroup v1 controllers (mode {:?})",
                detect_mode()
            );
            return;
        }
        let rel = format!("goplugin-test/{}", std::process::id());
        let limits = Limits {
            memory_hard: Some(64 << 20),
            memory_soft: Some(32 << 20),
            cpu_shares: Some(512),
            cpuset_cpus: None,
        };
        let cg = TaskCgroup::create(
            CgroupMode::V1,
            Path::new(CGROUP_ROOT),
            &rel,
            &V1_CONTROLLERS,
            &limits,
        )
        .unwrap();
        let mem = Path::new(CGROUP_ROOT).join("memory").join(&rel);
        let read = |f: &str| fs::read_to_string(mem.join(f)).unwrap().trim().to_string();
        assert_eq!(read("memory.limit_in_bytes"), (64u64 << 20).to_string());
        assert_eq!(
            read("memory.soft_limit_in_bytes"),
            (32u64 << 20).to_string()
        );
        let shares = fs::read_to_string(
            Path::new(CGROUP_ROOT)
                .join("cpu")
                .join(&rel)
                .join("cpu.shares"),
        )
        .unwrap();
        assert_eq!(shares.trim(), "512");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        cg.add_pid(child.id()).unwrap();
        assert_eq!(cg.pids(), vec![child.id()]);
        assert!(!cg.oom_killed());
        cg.kill_all();
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(cg.pids().is_empty());
        cg.remove().unwrap();
        assert!(!mem.exists());
        let _ = fs::remove_dir(Path::new(CGROUP_ROOT).join("memory/goplugin-test"));
        for c in V1_CONTROLLERS {
            let _ = fs::remove_dir(Path::new(CGROUP_ROOT).join(c).join("goplugin-test"));
        }
    }
}
