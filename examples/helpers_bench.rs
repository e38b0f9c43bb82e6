//! Benchmark driver for Nomad's per-task helpers: the same code starts each implementation of
//! `executor <json>` and `logmon` (ours, `goplugin`, and Nomad's Go ones inside a `nomad` binary)
//! over the real protocol (this crate's host, Nomad's handshake), sends them the same requests and
//! prints one JSON object with the raw samples. `scripts/bench` turns it into BENCHMARKS.md.
//!
//! ```text
//! helpers_bench --impl NAME=BIN [--impl NAME=BIN ...] [--generation 1.6|1.7]
//!     [--idle-secs 60] [--settle-secs 3] [--stats-secs 60] [--spawn-runs 30]
//!     [--launch-runs 30] [--mib 1024] [--rounds 5] [--paced-secs 10] [--paced-mb-s 100]
//!     [--phases idle,stats,spawn,launch,logmon] [--dir DIR] [--cleanup-file FILE] [--isolated 1]
//! ```
//!
//! `BIN` is a `goplugin` or a `nomad` binary: both answer `BIN executor <json>` and `BIN logmon`.
//! The argv JSON and the `LaunchRequest` follow the Nomad generation (`--generation`, else the
//! `version` of the first `BIN` that is not ours, else 1.7): 1.6 sends `CpuTotalTicks` and a raw_exec
//! request without `resources` and with `basic_process_cgroup`; 1.7+ sends `Compute` and a request
//! with `resources`, after creating the cgroups a 1.7+ agent creates for a task (v1:
//! `{freezer,cpu,memory}/nomad/<alloc>.<task>`, cpuset `nomad/share`). Every implementation gets
//! the same request. Time measurements alternate between the implementations (a, b, b, a, ...).
//!
//! `--isolated 1` asks every executor for `FSIsolation: true` (the exec driver's isolated
//! executor) and sends the exec driver's request instead: the task dir a small chroot of host
//! binaries, `resource_limits`, user `nobody`, private PID and IPC namespaces, Nomad's default
//! capabilities (used with the `idle` and `launch` phases).
//!
//! Phases:
//! - `idle`: per implementation a logmon (`Start`ed, its FIFOs held by the task) and an executor
//!   supervising `sleep` with its output into that logmon, all at once; after `--settle-secs`
//!   the context switches of every thread (`/proc/PID/task/*/status`) are counted over
//!   `--idle-secs` (scaled to a minute), then RSS, PSS, RssAnon, threads and fds are read.
//! - `stats`: CPU seconds an executor supervising `sleep` uses over `--stats-secs` of a `Stats`
//!   stream at 1 s interval.
//! - `spawn`: spawn → handshake → first RPC (`Version`) returned.
//! - `launch`: `Launch` sent → the task (`echo`) has written its line into the stdout FIFO the
//!   bench reads; also the `Launch` round trip.
//! - `logmon`: peak RSS of a fresh logmon fed at a paced `--paced-mb-s` for `--paced-secs`, then
//!   `--rounds` rounds of `--mib` MiB through its stdout FIFO into rotated 10 MiB files, the same
//!   stream through `cat fifo >> file` as the ceiling (time until the FIFO is drained; cat's file
//!   is emptied whenever it holds 100 MiB, what the logmon keeps in its 10 files).
//!
//! Everything the bench starts or creates (processes, FIFOs, directories, cgroups) is removed at
//! the end, on an error, on a panic and on SIGINT/SIGTERM; `--cleanup-file` also lists it for a
//! caller's trap in case the bench itself is SIGKILLed (lines `pid PID STARTTIME`, `pgrp PID
//! STARTTIME`, `cgroup PATH kill|keep`, `dir PATH`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../tests/common/chroot.rs"]
#[allow(dead_code)]
mod chroot;

use goplugin::proto::drivers::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources, LinuxResources,
    Resources,
};
use goplugin::proto::executor::executor_client::ExecutorClient;
use goplugin::proto::executor::{
    LaunchRequest, ShutdownRequest, StatsRequest, VersionRequest, WaitRequest,
};
use goplugin::proto::logmon::log_mon_client::LogMonClient;
use goplugin::proto::logmon::{StartRequest, StopRequest};
use goplugin::Client;
use nix::libc;
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tonic::transport::Channel;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// v1 hierarchies (and the hybrid v2 mount) where a helper may leave a `nomad` or `goplugin` dir.
const CGROUP_DIRS: [&str; 10] = [
    "freezer", "cpu", "cpuacct", "memory", "cpuset", "pids", "devices", "blkio", "systemd",
    "unified",
];
const CHUNK: usize = 64 * 1024;
const MIB: u64 = 1 << 20;
/// What the logmon keeps on disk (10 files of 10 MiB), and so what cat's file may hold.
const CAT_KEEP: u64 = 100 * MIB;

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Cleanup: every process, directory and cgroup the bench makes is registered here.

#[derive(Default)]
struct Registry {
    pids: Vec<(u32, u64)>,
    groups: Vec<(u32, u64)>,
    cgroups: Vec<(PathBuf, bool)>,
    dirs: Vec<PathBuf>,
    file: Option<File>,
}

static REG: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    groups: Vec::new(),
    cgroups: Vec::new(),
    dirs: Vec::new(),
    file: None,
});

fn reg() -> std::sync::MutexGuard<'static, Registry> {
    REG.lock().unwrap_or_else(|p| p.into_inner())
}

fn note(line: String) {
    if let Some(f) = reg().file.as_mut() {
        let _ = writeln!(f, "{line}");
        let _ = f.flush();
    }
}

/// Field 22 of /proc/PID/stat: the start time, to tell a pid from a later process reusing it.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Registers a process to SIGKILL at cleanup; one that is already gone (no start time) is not.
fn track_pid(pid: u32) {
    if let Some(st) = start_time(pid) {
        reg().pids.push((pid, st));
        note(format!("pid {pid} {st}"));
    }
}

/// Registers a task's process group (the task leads it) to SIGKILL at cleanup.
fn track_group(pid: u32) {
    if let Some(st) = start_time(pid) {
        reg().groups.push((pid, st));
        note(format!("pgrp {pid} {st}"));
    }
}

fn track_cgroup(path: &Path, kill_procs: bool) {
    reg().cgroups.push((path.to_path_buf(), kill_procs));
    let mode = if kill_procs { "kill" } else { "keep" };
    note(format!("cgroup {} {mode}", path.display()));
}

fn track_dir(path: &Path) {
    reg().dirs.push(path.to_path_buf());
    note(format!("dir {}", path.display()));
}

/// SIGKILL `pid` (or its process group) if it is still the process that was registered.
fn kill_tracked(pid: u32, st: u64, group: bool) {
    if start_time(pid) != Some(st) {
        return;
    }
    let p = Pid::from_raw(pid as i32);
    let _ = if group {
        killpg(p, Signal::SIGKILL)
    } else {
        kill(p, Signal::SIGKILL)
    };
}

fn release_pid(pid: u32, kill_it: bool) {
    let found = {
        let mut r = reg();
        let i = r.pids.iter().position(|(p, _)| *p == pid);
        i.map(|i| r.pids.remove(i))
    };
    if let (true, Some((p, st))) = (kill_it, found) {
        kill_tracked(p, st, false);
    }
}

fn release_group(pid: u32) {
    let found = {
        let mut r = reg();
        let i = r.groups.iter().position(|(p, _)| *p == pid);
        i.map(|i| r.groups.remove(i))
    };
    if let Some((p, st)) = found {
        kill_tracked(p, st, true);
    }
}

fn release_cgroup(path: &Path) {
    let found = {
        let mut r = reg();
        let i = r.cgroups.iter().position(|(p, _)| p == path);
        i.map(|i| r.cgroups.remove(i))
    };
    if let Some((p, kill_procs)) = found {
        remove_cgroup(&p, kill_procs);
    }
}

fn release_dir(path: &Path) {
    let found = {
        let mut r = reg();
        let i = r.dirs.iter().position(|p| p == path);
        i.map(|i| r.dirs.remove(i))
    };
    if let Some(p) = found {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// Removes a cgroup directory; with `kill_procs` it first thaws it and SIGKILLs what is inside
/// (only for task cgroups the bench made or its helpers made for its tasks).
fn remove_cgroup(path: &Path, kill_procs: bool) {
    for attempt in 0..100 {
        if !path.exists() {
            return;
        }
        if kill_procs {
            let _ = std::fs::write(path.join("freezer.state"), "THAWED");
            let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if !kill_procs || attempt == 99 => {
                if kill_procs {
                    eprintln!("helpers_bench: could not remove {}: {e}", path.display());
                }
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Kills and removes everything still registered (deepest cgroups first).
fn cleanup_all() {
    let (pids, groups, mut cgroups, dirs) = {
        let mut r = reg();
        (
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.groups),
            std::mem::take(&mut r.cgroups),
            std::mem::take(&mut r.dirs),
        )
    };
    for (pid, st) in groups {
        kill_tracked(pid, st, true);
    }
    for (pid, st) in pids {
        kill_tracked(pid, st, false);
    }
    cgroups.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, kill_procs) in cgroups {
        remove_cgroup(&p, kill_procs);
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("helpers_bench: {msg}");
    cleanup_all();
    std::process::exit(1)
}

/// Registers the `nomad`/`goplugin` parent cgroups that do not exist yet: helpers (or the bench
/// for a 1.7+ request) create them with `mkdir -p`; they are removed at the end if empty.
fn note_parent_cgroups() {
    for dir in CGROUP_DIRS {
        let base = Path::new(CGROUP_ROOT).join(dir);
        if !base.is_dir() {
            continue;
        }
        for name in ["nomad", "goplugin", "goplugin.slice", "nomad.slice"] {
            let p = base.join(name);
            if !p.exists() {
                track_cgroup(&p, false);
            }
        }
    }
    let share = Path::new(CGROUP_ROOT).join("cpuset/nomad/share");
    if share.parent().is_some_and(Path::is_dir) && !share.exists() {
        track_cgroup(&share, false);
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readers.

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Proportional set size: shared pages (binary, libc) divided among the processes mapping them.
fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// utime + stime of the whole process (exited threads included), in seconds (tick resolution).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / clk_tck()
}

/// (read, write) syscalls of the whole process so far (`/proc/PID/io` syscr, syscw).
fn syscalls(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let get = |key: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("syscr:"), get("syscw:"))
}

/// Per live thread: a figure read from /proc/PID/task/TID/`file` by `parse`.
fn per_thread(pid: u32, file: &str, parse: impl Fn(&str) -> u64) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let tid = entry.file_name().to_string_lossy().into_owned();
        if let Ok(text) = std::fs::read_to_string(entry.path().join(file)) {
            out.insert(tid, parse(&text));
        }
    }
    out
}

/// Voluntary + involuntary context switches per thread.
fn ctx_switches(pid: u32) -> BTreeMap<String, u64> {
    per_thread(pid, "status", |text| {
        text.lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    })
}

/// CPU time per thread in ns (schedstat's sum_exec_runtime).
fn sched_ns(pid: u32) -> BTreeMap<String, u64> {
    per_thread(pid, "schedstat", |text| {
        text.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// Growth from `a` to `b` summed over the threads alive at `b` (a new thread counts whole), and
/// how many threads of `a` are gone (their last share is lost).
fn growth(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> (u64, usize) {
    let sum = b
        .iter()
        .map(|(tid, v)| v.saturating_sub(a.get(tid).copied().unwrap_or(0)))
        .sum();
    let gone = a.keys().filter(|t| !b.contains_key(*t)).count();
    (sum, gone)
}

/// How many processes run the same executable file as `pid` (they share its page-cache pages,
/// which PSS divides among them: a Nomad agent and its helpers all run the `nomad` binary).
fn exe_sharers(pid: u32) -> usize {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return 0;
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == exe))
        .count()
}

fn memory(pid: u32) -> Value {
    json!({
        "exe_sharers": exe_sharers(pid),
        "rss_kb": status_kb(pid, "VmRSS:"),
        "pss_kb": pss_kb(pid),
        "anon_kb": status_kb(pid, "RssAnon:"),
        "hwm_kb": status_kb(pid, "VmHWM:"),
        "threads": status_kb(pid, "Threads:"),
        "fds": fd_count(pid),
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers, task directories and requests.

#[derive(Clone, Debug)]
struct Impl {
    name: String,
    bin: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gen {
    /// Nomad up to 1.6: `CpuTotalTicks`, no `resources`, `basic_process_cgroup`.
    V16,
    /// Nomad 1.7 and later: `Compute`, `resources`, agent-made task cgroups.
    V17,
}

/// A started helper process; SIGKILLed on drop unless `stop` ran go-plugin's kill sequence.
struct Helper {
    client: Option<Client>,
    pid: u32,
}

impl Helper {
    async fn start(bin: &Path, args: &[String]) -> Res<Helper> {
        let mut cmd = Command::new(bin);
        cmd.args(args).process_group(0);
        let client = Client::builder(cmd, goplugin::nomad::handshake())
            .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
            .start()
            .await
            .map_err(|e| format!("{} {}: {e}", bin.display(), args[0]))?;
        let pid = client.pid();
        track_pid(pid);
        Ok(Helper {
            client: Some(client),
            pid,
        })
    }

    fn channel(&self) -> Channel {
        self.client.as_ref().expect("helper running").channel()
    }

    async fn stop(mut self) {
        if let Some(c) = self.client.take() {
            c.kill().await;
            release_pid(self.pid, false);
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.client.take().is_some() {
            release_pid(self.pid, true);
        }
    }
}

/// A task's directories (`<base>/<alloc>/<task>`, `<base>/<alloc>/alloc/logs`) and, for a 1.7+
/// request, the cgroups a 1.7+ agent creates for it; all removed on drop.
struct TaskEnv {
    /// The exec driver's isolated executor and request (`--isolated`).
    isolated: bool,
    alloc_root: PathBuf,
    task_dir: PathBuf,
    log_dir: PathBuf,
    task: String,
    cgroups: Vec<PathBuf>,
    cpuset: String,
}

fn uuid() -> String {
    let h = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Creates a v1 cpuset cgroup with cpus and mems copied from its parent.
fn ensure_cpuset(path: &Path) -> Res<()> {
    if path.is_dir() {
        return Ok(());
    }
    let parent = path.parent().ok_or("cpuset without parent")?;
    ensure_cpuset(parent)?;
    std::fs::create_dir(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let v = std::fs::read_to_string(parent.join(f)).map_err(|e| format!("{f}: {e}"))?;
        std::fs::write(path.join(f), v.trim())
            .map_err(|e| format!("{}: {e}", path.join(f).display()))?;
    }
    Ok(())
}

impl TaskEnv {
    fn new(base: &Path, gen: Gen, task: &str, isolated: bool) -> Res<TaskEnv> {
        let alloc = uuid();
        let alloc_root = base.join(&alloc);
        let task_dir = alloc_root.join(task);
        let log_dir = alloc_root.join("alloc/logs");
        track_dir(&alloc_root);
        let mut env = TaskEnv {
            isolated,
            alloc_root,
            task_dir,
            log_dir,
            task: task.to_string(),
            cgroups: Vec::new(),
            cpuset: String::new(),
        };
        for d in [&env.task_dir, &env.log_dir] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        if isolated {
            chroot::build(&env.task_dir);
        }
        let v1 = Path::new(CGROUP_ROOT).join("freezer").is_dir();
        if gen == Gen::V17 && is_root() && v1 {
            for ctrl in ["freezer", "cpu", "memory"] {
                let p = Path::new(CGROUP_ROOT)
                    .join(ctrl)
                    .join("nomad")
                    .join(format!("{alloc}.{task}"));
                track_cgroup(&p, true);
                env.cgroups.push(p.clone());
                std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            let share = Path::new(CGROUP_ROOT).join("cpuset/nomad/share");
            ensure_cpuset(&share)?;
            env.cpuset = share.display().to_string();
        }
        Ok(env)
    }

    /// Registers the task-level cgroups `pid` sits in (under `nomad/` or `goplugin/`, below the
    /// parent), so that they are emptied and removed with this task.
    fn adopt(&mut self, pid: u32) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
            let (Some(ctrls), Some(path)) = (ctrls, path) else {
                continue;
            };
            let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
            let ours = matches!(comps.first(), Some(&("nomad" | "goplugin")));
            if !ours || comps.len() < 2 || comps[1] == "share" {
                continue;
            }
            let dir = if ctrls.is_empty() {
                "unified"
            } else {
                ctrls.strip_prefix("name=").unwrap_or(ctrls)
            };
            let p = PathBuf::from(format!("{CGROUP_ROOT}/{dir}{path}"));
            if p.is_dir() && !self.cgroups.contains(&p) {
                track_cgroup(&p, true);
                self.cgroups.push(p);
            }
        }
    }
}

impl Drop for TaskEnv {
    fn drop(&mut self) {
        for cg in self.cgroups.iter().rev() {
            release_cgroup(cg);
        }
        release_dir(&self.alloc_root);
    }
}

/// Node CPU capacity as Nomad computes it: (total MHz, cores).
fn compute() -> (u64, i64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let mhz = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(2000.0);
    ((mhz.round() as u64) * cores as u64, cores)
}

fn executor_args(gen: Gen, log_file: &Path, isolated: bool) -> Vec<String> {
    let (tc, nc) = compute();
    let cfg = match gen {
        Gen::V16 => json!({
            "LogFile": log_file, "LogLevel": "debug", "FSIsolation": isolated, "CpuTotalTicks": tc,
        }),
        Gen::V17 => json!({
            "LogFile": log_file, "LogLevel": "debug", "FSIsolation": isolated,
            "Compute": {"tc": tc, "nc": nc},
        }),
    };
    vec!["executor".into(), cfg.to_string()]
}

/// A raw_exec `LaunchRequest` as the driver of that generation builds it.
fn launch_request(gen: Gen, env: &TaskEnv, argv: &[&str], out: &str, err: &str) -> LaunchRequest {
    let mut req = LaunchRequest {
        cmd: argv[0].into(),
        args: argv[1..].iter().map(|a| a.to_string()).collect(),
        stdout_path: out.into(),
        stderr_path: err.into(),
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            format!("NOMAD_TASK_NAME={}", env.task),
            format!("NOMAD_TASK_DIR={}/local", env.task_dir.display()),
        ],
        task_dir: env.task_dir.display().to_string(),
        ..Default::default()
    };
    if env.isolated {
        // The exec driver's request: the command inside the chroot, Nomad's defaults.
        let name = Path::new(argv[0])
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        req.cmd = format!("/bin/{}", name.unwrap_or_default());
        req.env[0] = "PATH=/bin".into();
        req.user = "nobody".into();
        req.resource_limits = true;
        req.default_pid_mode = "private".into();
        req.default_ipc_mode = "private".into();
        req.capabilities = goplugin::nomad::executor::isolation::capabilities::NOMAD_DEFAULTS
            .map(String::from)
            .to_vec();
    }
    match gen {
        Gen::V16 if !env.isolated => req.basic_process_cgroup = true,
        _ => {
            req.resources = Some(Resources {
                allocated_resources: Some(AllocatedTaskResources {
                    cpu: Some(AllocatedCpuResources { cpu_shares: 100 }),
                    memory: Some(AllocatedMemoryResources {
                        memory_mb: 256,
                        memory_max_mb: 0,
                    }),
                    networks: Vec::new(),
                }),
                linux_resources: Some(LinuxResources {
                    cpu_shares: 100,
                    memory_limit_bytes: 256 << 20,
                    cpuset_cgroup: env.cpuset.clone(),
                    ..Default::default()
                }),
                ports: Vec::new(),
            })
        }
    }
    req
}

/// An executor with one launched task; `finish` shuts the task down and removes everything.
struct Running {
    helper: Helper,
    exec: ExecutorClient<Channel>,
    env: TaskEnv,
    task_pid: Option<u32>,
}

async fn start_executor(
    imp: &Impl,
    gen: Gen,
    env: &TaskEnv,
) -> Res<(Helper, ExecutorClient<Channel>)> {
    let args = executor_args(gen, &env.task_dir.join("executor.out"), env.isolated);
    let helper = Helper::start(&imp.bin, &args).await?;
    let exec = ExecutorClient::new(helper.channel());
    Ok((helper, exec))
}

async fn launch(
    imp: &Impl,
    gen: Gen,
    mut env: TaskEnv,
    argv: &[&str],
    out: &str,
    err: &str,
) -> Res<Running> {
    let (helper, mut exec) = start_executor(imp, gen, &env).await?;
    let resp = exec
        .launch(launch_request(gen, &env, argv, out, err))
        .await
        .map_err(|e| format!("{}: Launch: {e}", imp.name))?;
    let pid = resp.into_inner().process.map_or(0, |p| p.pid as u32);
    if pid != 0 {
        track_group(pid);
        env.adopt(pid);
    }
    env.adopt(helper.pid);
    Ok(Running {
        helper,
        exec,
        env,
        task_pid: (pid != 0).then_some(pid),
    })
}

impl Running {
    async fn finish(mut self) {
        let req = ShutdownRequest {
            signal: "SIGKILL".into(),
            grace_period: 0,
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), self.exec.shutdown(req)).await;
        self.helper.stop().await;
        if let Some(pid) = self.task_pid {
            release_group(pid);
        }
        drop(self.env);
    }
}

fn order<T: Clone>(items: &[T], i: usize) -> Vec<T> {
    if i.is_multiple_of(2) {
        items.to_vec()
    } else {
        items.iter().rev().cloned().collect()
    }
}

fn which(names: &[&str]) -> String {
    names
        .iter()
        .find(|p| Path::new(p).exists())
        .map_or_else(|| names[0].to_string(), |p| p.to_string())
}

// ---------------------------------------------------------------------------------------------
// Phases.

struct Opts {
    impls: Vec<Impl>,
    gen: Gen,
    idle_secs: f64,
    settle_secs: f64,
    stats_secs: f64,
    spawn_runs: usize,
    launch_runs: usize,
    mib: usize,
    rounds: usize,
    paced_secs: f64,
    paced_mb_s: f64,
    phases: Vec<String>,
    dir: PathBuf,
    isolated: bool,
}

/// Idle: every implementation's logmon and executor (supervising `sleep`, output into that
/// logmon) at once; wake-ups over the window, memory at its end.
async fn idle_phase(o: &Opts, out: &mut BTreeMap<String, Value>) -> Res<()> {
    let sleep = which(&["/usr/bin/sleep", "/bin/sleep"]);
    let mut pairs = Vec::new();
    for imp in &o.impls {
        let env = TaskEnv::new(&o.dir, o.gen, "idle", o.isolated)?;
        let logmon = Helper::start(&imp.bin, &["logmon".into()]).await?;
        let fifo = |s: &str| {
            env.log_dir
                .join(format!(".idle.{s}.fifo"))
                .display()
                .to_string()
        };
        let (so, se) = (fifo("stdout"), fifo("stderr"));
        LogMonClient::new(logmon.channel())
            .start(StartRequest {
                log_dir: env.log_dir.display().to_string(),
                stdout_file_name: "idle.stdout".into(),
                stderr_file_name: "idle.stderr".into(),
                max_files: 10,
                max_file_size_mb: 10,
                stdout_fifo: so.clone(),
                stderr_fifo: se.clone(),
            })
            .await
            .map_err(|e| format!("{}: logmon Start: {e}", imp.name))?;
        let run = launch(imp, o.gen, env, &[&sleep, "3600"], &so, &se).await?;
        pairs.push((imp.name.clone(), logmon, run));
    }
    eprintln!(
        "   idle: {} logmon(s) and executor(s) settle {:.0} s, then {:.0} s counted",
        pairs.len(),
        o.settle_secs,
        o.idle_secs
    );
    tokio::time::sleep(Duration::from_secs_f64(o.settle_secs)).await;
    let pids = |(_, l, r): &(String, Helper, Running)| [l.pid, r.helper.pid];
    let before: Vec<_> = pairs.iter().map(|p| pids(p).map(ctx_switches)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(o.idle_secs)).await;
    let window = t0.elapsed().as_secs_f64();
    for (pair, before) in pairs.iter().zip(before) {
        let [lm_pid, ex_pid] = pids(pair);
        for (helper, pid, b) in [
            ("logmon", lm_pid, &before[0]),
            ("executor", ex_pid, &before[1]),
        ] {
            let (n, gone) = growth(b, &ctx_switches(pid));
            let mut m = memory(pid);
            m["wakeups"] = json!(n);
            m["wakeups_per_min"] = json!(n as f64 * 60.0 / window);
            m["threads_gone"] = json!(gone);
            m["window_s"] = json!(window);
            out.entry(pair.0.clone()).or_insert_with(|| json!({}))[helper]["idle"] = m;
        }
    }
    for (_, logmon, run) in pairs {
        run.finish().await;
        let _ = LogMonClient::new(logmon.channel())
            .stop(StopRequest {})
            .await;
        logmon.stop().await;
    }
    Ok(())
}

/// CPU seconds the executor uses over a Stats stream at 1 s interval.
async fn stats_phase(o: &Opts, out: &mut BTreeMap<String, Value>) -> Res<()> {
    let sleep = which(&["/usr/bin/sleep", "/bin/sleep"]);
    for imp in &o.impls {
        eprintln!("   stats: {} for {:.0} s", imp.name, o.stats_secs);
        let env = TaskEnv::new(&o.dir, o.gen, "stats", o.isolated)?;
        let mut run = launch(imp, o.gen, env, &[&sleep, "3600"], "/dev/null", "/dev/null").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = run.helper.pid;
        let (c0, s0) = (cpu_secs(pid), sched_ns(pid));
        let t0 = Instant::now();
        let mut stream = run
            .exec
            .stats(StatsRequest {
                interval: 1_000_000_000,
            })
            .await
            .map_err(|e| format!("{}: Stats: {e}", imp.name))?
            .into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(o.stats_secs);
        let mut samples = 0u64;
        while let Ok(Ok(Some(_))) = tokio::time::timeout_at(deadline, stream.message()).await {
            samples += 1;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let (c1, s1) = (cpu_secs(pid), sched_ns(pid));
        drop(stream);
        let (ns, gone) = growth(&s0, &s1);
        let ticks = c1 - c0;
        // schedstat is exact but loses the share of threads that ended; then take the larger.
        let cpu = if gone == 0 {
            ns as f64 / 1e9
        } else {
            (ns as f64 / 1e9).max(ticks)
        };
        let entry = out.entry(imp.name.clone()).or_insert_with(|| json!({}));
        entry["executor"]["stats"] = json!({
            "cpu_s": cpu, "cpu_s_ticks": ticks, "cpu_s_schedstat": ns as f64 / 1e9,
            "threads_gone": gone, "samples": samples, "secs": elapsed,
            "cpu_s_per_min": cpu * 60.0 / elapsed,
        });
        run.finish().await;
    }
    Ok(())
}

/// Spawn → first RPC (`Version`) returned, alternating, after one untimed start each.
async fn spawn_phase(o: &Opts, out: &mut BTreeMap<String, Value>) -> Res<()> {
    eprintln!("   spawn: {} runs each", o.spawn_runs);
    let env = TaskEnv::new(&o.dir, Gen::V16, "spawn", false)?;
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..=o.spawn_runs {
        for imp in order(&o.impls, i) {
            let t0 = Instant::now();
            let (helper, mut exec) = start_executor(&imp, o.gen, &env).await?;
            exec.version(VersionRequest {})
                .await
                .map_err(|e| format!("{}: Version: {e}", imp.name))?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            helper.stop().await;
            if i > 0 {
                samples.entry(imp.name.clone()).or_default().push(ms);
            }
        }
    }
    for (name, s) in samples {
        out.entry(name).or_insert_with(|| json!({}))["executor"]["spawn_ms"] = json!(s);
    }
    Ok(())
}

/// Launch sent → the task's first line read from its stdout FIFO; one executor per sample.
async fn launch_phase(o: &Opts, out: &mut BTreeMap<String, Value>) -> Res<()> {
    eprintln!("   launch: {} samples each", o.launch_runs);
    let echo = which(&["/usr/bin/echo", "/bin/echo"]);
    let mut marker: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut rpc: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..=o.launch_runs {
        for imp in order(&o.impls, i) {
            let mut env = TaskEnv::new(&o.dir, o.gen, "launch", o.isolated)?;
            let fifo = env.task_dir.join("marker.fifo");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| format!("mkfifo {}: {e}", fifo.display()))?;
            // Read and write end in one: the executor's open for writing does not wait, and the
            // read blocks until the task writes.
            let reader = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .map_err(|e| format!("{}: {e}", fifo.display()))?;
            let (helper, mut exec) = start_executor(&imp, o.gen, &env).await?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let mut fds = [nix::poll::PollFd::new(
                    reader.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let r = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16));
                let _ = tx.send((matches!(r, Ok(n) if n > 0), Instant::now()));
            });
            let req = launch_request(
                o.gen,
                &env,
                &[&echo, "ready"],
                &fifo.display().to_string(),
                "/dev/null",
            );
            let t0 = Instant::now();
            let resp = exec.launch(req).await;
            let rpc_ms = t0.elapsed().as_secs_f64() * 1e3;
            let resp = resp.map_err(|e| format!("{}: Launch: {e}", imp.name))?;
            let pid = resp.into_inner().process.map_or(0, |p| p.pid as u32);
            if pid != 0 {
                track_group(pid);
                env.adopt(pid);
            }
            env.adopt(helper.pid);
            let (ok, at) = rx.await.map_err(|_| "marker thread died")?;
            if !ok {
                return Err(format!("{}: the task wrote nothing within 10 s", imp.name));
            }
            let ms = at.duration_since(t0).as_secs_f64() * 1e3;
            let _ = tokio::time::timeout(Duration::from_secs(10), exec.wait(WaitRequest {})).await;
            let run = Running {
                helper,
                exec,
                env,
                task_pid: (pid != 0).then_some(pid),
            };
            run.finish().await;
            if i > 0 {
                marker.entry(imp.name.clone()).or_default().push(ms);
                rpc.entry(imp.name.clone()).or_default().push(rpc_ms);
            }
        }
    }
    for (name, s) in marker {
        let e = out.entry(name.clone()).or_insert_with(|| json!({}));
        e["executor"]["launch_ms"] = json!(s);
        e["executor"]["launch_rpc_ms"] = json!(rpc.remove(&name).unwrap_or_default());
    }
    Ok(())
}

fn chunk() -> Vec<u8> {
    (0..CHUNK)
        .map(|i| {
            if i % 120 == 119 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect()
}

/// Opens a FIFO for writing once its reader is there (O_NONBLOCK open fails with ENXIO until
/// then), then makes the fd blocking again.
fn open_writer(path: &Path) -> Res<File> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => {
                // SAFETY: F_SETFL on an fd we own.
                unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}

/// Bytes still in the pipe (FIONREAD works on either end).
fn pipe_pending(f: &File) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}

/// Writes `bytes` (whole chunks) and waits until the reader has taken all of it.
fn feed(f: &File, bytes: u64, pace: Option<f64>) -> Res<Duration> {
    let data = chunk();
    let chunks = bytes.div_ceil(CHUNK as u64);
    let t0 = Instant::now();
    let mut w = f;
    for k in 0..chunks {
        if let Some(rate) = pace {
            let due = t0 + Duration::from_secs_f64(k as f64 * CHUNK as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        w.write_all(&data).map_err(|e| format!("write: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while pipe_pending(f) > 0 {
        if Instant::now() > deadline {
            return Err("the reader stopped taking data".into());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(t0.elapsed())
}

async fn feed_async(f: &Arc<File>, bytes: u64, pace: Option<f64>) -> Res<Duration> {
    let f = f.clone();
    tokio::task::spawn_blocking(move || feed(&f, bytes, pace))
        .await
        .map_err(|e| e.to_string())?
}

/// One round of the ceiling, `cat fifo >> file`: (MiB/s, CPU s per GiB of cat).
async fn cat_round(dir: &Path, mib: usize) -> Res<(f64, f64)> {
    let fifo = dir.join("cat.fifo");
    if !fifo.exists() {
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("mkfifo: {e}"))?;
    }
    // `cat fifo >> file`, the file emptied whenever it holds CAT_KEEP bytes: the same page-cache
    // footprint as the logmon's rotated files (10 of 10 MiB kept). A file growing to the whole
    // stream would make cat alone pay the reclaim of that much page cache on a machine whose
    // memory is full of cache.
    let path = dir.join("cat.out");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    out.set_len(0).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let cutter = {
        let stop = stop.clone();
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if f.metadata().map_or(0, |m| m.len()) >= CAT_KEEP {
                    let _ = f.set_len(0);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let child = Command::new("cat")
        .arg(&fifo)
        .stdout(out)
        .spawn()
        .map_err(|e| format!("cat: {e}"))?;
    let pid = child.id();
    track_pid(pid);
    let w = Arc::new(open_writer(&fifo)?);
    let elapsed = feed_async(&w, mib as u64 * MIB, None).await;
    stop.store(true, Ordering::Relaxed);
    let _ = cutter.join();
    let elapsed = elapsed?;
    drop(w);
    let (cpu, _) = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data, filled by wait4.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child.
        unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (tv(ru.ru_utime) + tv(ru.ru_stime), status)
    })
    .await
    .map_err(|e| e.to_string())?;
    drop(child);
    release_pid(pid, false);
    let _ = std::fs::remove_file(&path);
    let gib = mib as f64 / 1024.0;
    Ok((mib as f64 / elapsed.as_secs_f64(), cpu / gib))
}

/// logmon: paced feed into a fresh process (peak RSS), then alternating flood rounds with cat.
async fn logmon_phase(o: &Opts, out: &mut BTreeMap<String, Value>) -> Res<()> {
    struct Lm {
        name: String,
        helper: Helper,
        stdout: Arc<File>,
        _stderr: File,
        _env: TaskEnv,
        flood_mib_s: Vec<f64>,
        flood_cpu: Vec<f64>,
        flood_syscr: Vec<f64>,
        flood_syscw: Vec<f64>,
    }
    let mut lms = Vec::new();
    for imp in &o.impls {
        let env = TaskEnv::new(&o.dir, Gen::V16, "flood", false)?;
        let helper = Helper::start(&imp.bin, &["logmon".into()]).await?;
        let fifo = |s: &str| env.log_dir.join(format!(".flood.{s}.fifo"));
        LogMonClient::new(helper.channel())
            .start(StartRequest {
                log_dir: env.log_dir.display().to_string(),
                stdout_file_name: "flood.stdout".into(),
                stderr_file_name: "flood.stderr".into(),
                max_files: 10,
                max_file_size_mb: 10,
                stdout_fifo: fifo("stdout").display().to_string(),
                stderr_fifo: fifo("stderr").display().to_string(),
            })
            .await
            .map_err(|e| format!("{}: logmon Start: {e}", imp.name))?;
        let stdout = Arc::new(open_writer(&fifo("stdout"))?);
        let stderr = open_writer(&fifo("stderr"))?;
        lms.push(Lm {
            name: imp.name.clone(),
            helper,
            stdout,
            _stderr: stderr,
            _env: env,
            flood_mib_s: Vec::new(),
            flood_cpu: Vec::new(),
            flood_syscr: Vec::new(),
            flood_syscw: Vec::new(),
        });
    }
    let rate = o.paced_mb_s * 1e6;
    for lm in &lms {
        eprintln!(
            "   logmon: {} paced {:.0} MB/s for {:.0} s",
            lm.name, o.paced_mb_s, o.paced_secs
        );
        let pid = lm.helper.pid;
        let c0 = cpu_secs(pid);
        let bytes = (rate * o.paced_secs) as u64;
        let el = feed_async(&lm.stdout, bytes, Some(rate)).await?;
        let cpu = cpu_secs(pid) - c0;
        let e = out.entry(lm.name.clone()).or_insert_with(|| json!({}));
        e["logmon"]["paced"] = json!({
            "hwm_kb": status_kb(pid, "VmHWM:"), "rss_kb": status_kb(pid, "VmRSS:"),
            "cpu_pct": 100.0 * cpu / el.as_secs_f64(),
            "mb_s": bytes as f64 / 1e6 / el.as_secs_f64(),
        });
    }
    let cat_dir = o.dir.join("cat");
    std::fs::create_dir_all(&cat_dir).map_err(|e| e.to_string())?;
    let (mut cat_mib_s, mut cat_cpu) = (Vec::new(), Vec::new());
    let who: Vec<Option<usize>> = (0..lms.len()).map(Some).chain([None]).collect();
    for r in 0..o.rounds {
        eprintln!(
            "   logmon: flood round {}/{} ({} MiB each)",
            r + 1,
            o.rounds,
            o.mib
        );
        for w in order(&who, r) {
            match w {
                None => {
                    let (t, c) = cat_round(&cat_dir, o.mib).await?;
                    cat_mib_s.push(t);
                    cat_cpu.push(c);
                }
                Some(i) => {
                    let lm = &mut lms[i];
                    let (c0, io0) = (cpu_secs(lm.helper.pid), syscalls(lm.helper.pid));
                    let el = feed_async(&lm.stdout, o.mib as u64 * MIB, None).await?;
                    let cpu = cpu_secs(lm.helper.pid) - c0;
                    let io1 = syscalls(lm.helper.pid);
                    let gib = o.mib as f64 / 1024.0;
                    lm.flood_mib_s.push(o.mib as f64 / el.as_secs_f64());
                    lm.flood_cpu.push(cpu / gib);
                    lm.flood_syscr.push((io1.0 - io0.0) as f64 / gib);
                    lm.flood_syscw.push((io1.1 - io0.1) as f64 / gib);
                }
            }
        }
    }
    for lm in lms {
        let pid = lm.helper.pid;
        let e = out.entry(lm.name.clone()).or_insert_with(|| json!({}));
        e["logmon"]["flood"] = json!({
            "mib_s": lm.flood_mib_s, "cpu_s_per_gib": lm.flood_cpu,
            "read_syscalls_per_gib": lm.flood_syscr, "write_syscalls_per_gib": lm.flood_syscw,
            "hwm_kb": status_kb(pid, "VmHWM:"), "threads": status_kb(pid, "Threads:"),
            "fds": fd_count(pid),
        });
        let _ = LogMonClient::new(lm.helper.channel())
            .stop(StopRequest {})
            .await;
        lm.helper.stop().await;
    }
    let _ = std::fs::remove_dir_all(&cat_dir);
    out.entry("cat".into()).or_insert_with(|| json!({}))["logmon"]["flood"] =
        json!({"mib_s": cat_mib_s, "cpu_s_per_gib": cat_cpu});
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// `BIN version` of a nomad binary: (first line, generation).
fn nomad_version(bin: &Path) -> Option<(String, Gen)> {
    let out = Command::new(bin).arg("version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim().to_string();
    let v = line.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut nums = v.split(['.', '-']).map(|n| n.parse::<u64>().unwrap_or(0));
    let (major, minor) = (nums.next()?, nums.next().unwrap_or(0));
    let gen = if major == 0 || (major == 1 && minor <= 6) {
        Gen::V16
    } else {
        Gen::V17
    };
    Some((line, gen))
}

fn usage() -> ! {
    fail(
        "usage: helpers_bench --impl NAME=BIN [--impl NAME=BIN ...] [--generation 1.6|1.7] \
         [--idle-secs N] [--settle-secs N] [--stats-secs N] [--spawn-runs N] [--launch-runs N] \
         [--mib N] [--rounds N] [--paced-secs N] [--paced-mb-s N] [--phases LIST] [--dir DIR] \
         [--cleanup-file FILE]",
    )
}

fn main() {
    // SIGINT/SIGTERM go to one thread that cleans up and exits (children get a clear mask).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    if signals.thread_block().is_ok() {
        std::thread::spawn(move || {
            if let Ok(sig) = signals.wait() {
                eprintln!("helpers_bench: {sig:?}, cleaning up");
                cleanup_all();
                std::process::exit(128 + sig as i32);
            }
        });
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cleanup_all();
        hook(info)
    }));

    let mut args = std::env::args().skip(1);
    let mut impls = Vec::new();
    let mut gen_flag = None;
    let mut o = Opts {
        impls: Vec::new(),
        gen: Gen::V17,
        idle_secs: 60.0,
        settle_secs: 3.0,
        stats_secs: 60.0,
        spawn_runs: 30,
        launch_runs: 30,
        mib: 1024,
        rounds: 5,
        paced_secs: 10.0,
        paced_mb_s: 100.0,
        phases: ["idle", "stats", "spawn", "launch", "logmon"]
            .map(String::from)
            .to_vec(),
        dir: std::env::temp_dir().join(format!("helpers-bench-{}", std::process::id())),
        isolated: false,
    };
    let mut cleanup_file = None;
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        let num = |v: &str| {
            v.parse::<f64>()
                .unwrap_or_else(|e| fail(format!("{flag}: {e}")))
        };
        match flag.as_str() {
            "--impl" => {
                let (name, bin) = value.split_once('=').unwrap_or_else(|| usage());
                impls.push(Impl {
                    name: name.into(),
                    bin: bin.into(),
                });
            }
            "--generation" => gen_flag = Some(value),
            "--idle-secs" => o.idle_secs = num(&value),
            "--settle-secs" => o.settle_secs = num(&value),
            "--stats-secs" => o.stats_secs = num(&value),
            "--spawn-runs" => o.spawn_runs = num(&value) as usize,
            "--launch-runs" => o.launch_runs = num(&value) as usize,
            "--mib" => o.mib = num(&value) as usize,
            "--rounds" => o.rounds = num(&value) as usize,
            "--paced-secs" => o.paced_secs = num(&value),
            "--paced-mb-s" => o.paced_mb_s = num(&value),
            "--phases" => o.phases = value.split(',').map(String::from).collect(),
            "--dir" => o.dir = value.into(),
            "--cleanup-file" => cleanup_file = Some(value),
            "--isolated" => o.isolated = value == "1" || value == "true",
            _ => usage(),
        }
    }
    if impls.is_empty() {
        usage();
    }
    if let Some(path) = cleanup_file {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| fail(format!("{path}: {e}")));
        reg().file = Some(f);
    }
    // The Nomad generation: given, or from the first binary that answers `version` as Nomad.
    let mut versions = BTreeMap::new();
    for imp in &impls {
        if let Some((line, gen)) = nomad_version(&imp.bin).filter(|(l, _)| l.starts_with("Nomad")) {
            versions.insert(imp.name.clone(), (line, gen));
        }
    }
    o.gen = match gen_flag.as_deref() {
        Some("1.6") => Gen::V16,
        Some("1.7") => Gen::V17,
        Some(g) => fail(format!("--generation {g}: 1.6 or 1.7")),
        None => versions.values().next().map_or(Gen::V17, |(_, g)| *g),
    };
    o.impls = impls;
    note_parent_cgroups();
    std::fs::create_dir_all(&o.dir).unwrap_or_else(|e| fail(format!("{}: {e}", o.dir.display())));
    track_dir(&o.dir);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    let result = rt.block_on(async {
        let mut out = BTreeMap::new();
        for phase in o.phases.clone() {
            eprintln!("== helpers: {phase}");
            match phase.as_str() {
                "idle" => idle_phase(&o, &mut out).await?,
                "stats" => stats_phase(&o, &mut out).await?,
                "spawn" => spawn_phase(&o, &mut out).await?,
                "launch" => launch_phase(&o, &mut out).await?,
                "logmon" => logmon_phase(&o, &mut out).await?,
                p => return Err(format!("unknown phase {p}")),
            }
        }
        Ok::<_, String>(out)
    });
    let out = result.unwrap_or_else(|e| fail(e));
    drop(rt);
    cleanup_all();
    let gen = match o.gen {
        Gen::V16 => "1.6",
        Gen::V17 => "1.7",
    };
    let (tc, nc) = compute();
    println!(
        "{}",
        json!({
            "generation": gen,
            "versions": versions.iter().map(|(k, (l, _))| (k.clone(), l.clone())).collect::<BTreeMap<_, _>>(),
            "impls": o.impls.iter().map(|i| (i.name.clone(), i.bin.display().to_string())).collect::<BTreeMap<_, _>>(),
            "compute": {"tc": tc, "nc": nc},
            "settings": {
                "idle_secs": o.idle_secs, "settle_secs": o.settle_secs, "stats_secs": o.stats_secs,
                "spawn_runs": o.spawn_runs, "launch_runs": o.launch_runs, "mib": o.mib,
                "rounds": o.rounds, "paced_secs": o.paced_secs, "paced_mb_s": o.paced_mb_s,
                "phases": o.phases, "isolated": o.isolated,
            },
            "results": out,
        })
    );
}
