//! A real Nomad binary as the reference peer of differential tests (spec nomad-executor-logmon.md
//! §8: every Nomad binary answers `nomad executor <json>` and `nomad logmon`; nomad-versions.md for
//! what differs between the 1.6 and 1.7+ generations). Finds the binary, tells its generation,
//! starts either implementation's executor or logmon the way Nomad's launchers do, and builds the
//! alloc a Nomad client would have made: task dir, output files and, for 1.7+, the agent-side task
//! cgroups (cgroup v1), all removed again when the fixture is dropped.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use goplugin::reattach::ProcessIdentity;
use goplugin::{nomad, Client};

/// Our binary, as cargo built it for this run.
pub const RUST_BIN: &str = env!("CARGO_BIN_EXE_goplugin");
/// Root of the cgroup v1 controller mounts.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The task name every fixture uses.
pub const TASK: &str = "web";

/// Which Nomad the agent side imitates: what its drivers put in the executor's argv and
/// `LaunchRequest`, and who creates the task cgroups (nomad-versions.md §1.1, §3, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// v1.6.x and older: argv `CpuTotalTicks`; raw_exec sends no `resources` and sets
    /// `basic_process_cgroup` as root; the executor makes its own freezer `/nomad/<uuid>`.
    V1_6,
    /// v1.7 and later: argv `Compute`; raw_exec sends `resources`, `oom_score_adj`, `work_dir`; the
    /// agent made `/nomad/<alloc>.<task>` (freezer, cpu, memory) and cpuset `/nomad/share`.
    V1_7Plus,
}

impl Generation {
    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Generation::V1_6 => "1.6",
            Generation::V1_7Plus => "1.7+",
        }
    }
}

/// The Nomad binary under test.
#[derive(Debug)]
pub struct Reference {
    /// Path of the binary.
    pub bin: PathBuf,
    /// First line of `nomad version`, e.g. `Nomad v1.6.5`.
    pub version: String,
    /// Which agent generation the tests imitate.
    pub generation: Generation,
}

/// The Nomad binary (`NOMAD_BIN`, else `nomad` on `PATH`), or `None` after printing the one skip
/// line. The version is printed once per test binary.
pub fn reference() -> Option<&'static Reference> {
    static FOUND: OnceLock<Option<Reference>> = OnceLock::new();
    static ANNOUNCE: Once = Once::new();
    match FOUND.get_or_init(find_reference) {
        Some(r) => {
            ANNOUNCE.call_once(|| {
                eprintln!(
                    "nomad reference: {} ({}), agent generation {}",
                    r.version,
                    r.bin.display(),
                    r.generation.label()
                )
            });
            Some(r)
        }
        None => {
            eprintln!("skipping: no Nomad binary (set NOMAD_BIN=/path/to/nomad)");
            None
        }
    }
}

fn find_reference() -> Option<Reference> {
    let bin = match std::env::var_os("NOMAD_BIN") {
        Some(b) if !b.is_empty() => {
            let bin = PathBuf::from(b);
            assert!(
                is_executable(&bin),
                "NOMAD_BIN={} is not an executable file",
                bin.display()
            );
            bin
        }
        _ => std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("nomad"))
            .find(|p| is_executable(p))?,
    };
    let out = Command::new(&bin)
        .arg("version")
        .output()
        .unwrap_or_else(|e| panic!("{} version: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().unwrap_or("").trim().to_string();
    assert!(
        out.status.success() && version.starts_with("Nomad v"),
        "{} version printed {text:?}",
        bin.display()
    );
    let generation = generation_of(&version);
    Some(Reference {
        bin,
        version,
        generation,
    })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `Nomad v1.6.5` (and older) is the 1.6 generation; everything later is 1.7+.
fn generation_of(version: &str) -> Generation {
    let numbers: Vec<u32> = version
        .trim_start_matches("Nomad v")
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    match numbers[..] {
        [1, minor] if minor <= 6 => Generation::V1_6,
        [0, _] => Generation::V1_6,
        _ => Generation::V1_7Plus,
    }
}

/// Nomad's Go helper or ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// `$NOMAD_BIN executor|logmon`.
    Go,
    /// `goplugin executor|logmon`.
    Rust,
}

impl Impl {
    /// Go first, then Rust.
    pub const BOTH: [Impl; 2] = [Impl::Go, Impl::Rust];

    /// `Nomad` or `goplugin`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Go => "Nomad",
            Impl::Rust => "goplugin",
        }
    }

    fn bin(self, r: &Reference) -> &Path {
        match self {
            Impl::Go => &r.bin,
            Impl::Rust => Path::new(RUST_BIN),
        }
    }
}

/// Node CPU capacity as an agent fingerprints it: (total MHz, cores).
pub fn compute() -> (u64, i64) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz = info
        .lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .fold(0f64, f64::max);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let mhz = if mhz > 0.0 { mhz as u64 } else { 1000 };
    (mhz * cores as u64, cores)
}

/// The executor's argv JSON as each generation's drivers marshal `ExecutorConfig` (Go field order).
pub fn executor_argv(g: Generation, log_file: &Path) -> String {
    let log = serde_json::to_string(&log_file.display().to_string()).unwrap();
    let (total, cores) = compute();
    match g {
        Generation::V1_6 => format!(
            r#"{{"LogFile":{log},"LogLevel":"debug","FSIsolation":false,"CpuTotalTicks":{total}}}"#
        ),
        Generation::V1_7Plus => format!(
            r#"{{"LogFile":{log},"LogLevel":"debug","FSIsolation":false,"Compute":{{"tc":{total},"nc":{cores}}}}}"#
        ),
    }
}

/// Starts `which` executor as Nomad's `CreateExecutor` does: `[bin, "executor", json]` in its own
/// session, Nomad's handshake, executor port range, gRPC only.
pub async fn start_executor(r: &Reference, which: Impl, log_file: &Path) -> Client {
    let mut cmd = Command::new(which.bin(r));
    cmd.arg("executor")
        .arg(executor_argv(r.generation, log_file));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    Client::builder(cmd, nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .port_range(14000, 14512)
        .stdin(Stdio::null())
        .start()
        .await
        .unwrap_or_else(|e| panic!("{} executor starts: {e}", which.name()))
}

/// Starts `which` logmon as Nomad's `LaunchLogMon` does: `[bin, "logmon"]`, no new session.
pub async fn start_logmon(r: &Reference, which: Impl) -> Client {
    let mut cmd = Command::new(which.bin(r));
    cmd.arg("logmon");
    Client::builder(cmd, nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .stdin(Stdio::null())
        .start()
        .await
        .unwrap_or_else(|e| panic!("{} logmon starts: {e}", which.name()))
}

/// A uuid-shaped id unique to this process and call (Nomad's alloc IDs are UUIDs).
pub fn unique_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        n & 0xffff,
        (t.subsec_nanos() >> 12) & 0xfff,
        t.subsec_nanos() & 0xfff,
        t.as_secs() & 0xffff_ffff_ffff
    )
}

/// Whether `s` looks like a UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `/proc/<pid>/cgroup` (or `self`) as controller list -> path, e.g. `"memory" -> "/nomad/x.web"`.
pub fn cgroups_of(pid: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    parse_cgroups(&text)
}

/// Parses the text of a `/proc/<pid>/cgroup` file.
pub fn parse_cgroups(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Polls `check` every 10 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(t0.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut` for at most `limit`, panicking with `what` on timeout.
pub async fn within<T>(
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// The `/nomad` parent cgroups the 1.7+ agent keeps (`cgroupslib.Init`): made on first use if
/// absent, removed by the last fixture of this process if they were absent before and are empty.
const PARENTS: [&str; 5] = [
    "freezer/nomad",
    "cpu/nomad",
    "memory/nomad",
    "cpuset/nomad",
    "cpuset/nomad/share",
];

struct Parents {
    users: usize,
    absent_before: Vec<PathBuf>,
}

static PARENT_STATE: Mutex<Parents> = Mutex::new(Parents {
    users: 0,
    absent_before: Vec::new(),
});

fn lock_parents() -> std::sync::MutexGuard<'static, Parents> {
    PARENT_STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a fixture; for 1.7+ makes sure the agent's parents exist (cpuset ones filled).
fn acquire_parents(make: bool) {
    let mut p = lock_parents();
    if p.users == 0 {
        p.absent_before = PARENTS
            .iter()
            .map(|d| Path::new(CGROUP_ROOT).join(d))
            .filter(|d| !d.exists())
            .collect();
    }
    if make {
        for d in PARENTS {
            let dir = Path::new(CGROUP_ROOT).join(d);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            if d.starts_with("cpuset") {
                inherit_cpuset(&dir);
            }
        }
    }
    p.users += 1;
}

/// The last fixture removes the parents that were not there before (deepest first), if empty.
fn release_parents() {
    let mut p = lock_parents();
    p.users -= 1;
    if p.users == 0 {
        for dir in p.absent_before.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A new v1 cpuset cgroup takes no task until `cpuset.cpus`/`cpuset.mems` are set: copy the parent's.
fn inherit_cpuset(dir: &Path) {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let current = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if current.trim().is_empty() {
            let parent = std::fs::read_to_string(dir.parent().unwrap().join(file)).unwrap();
            std::fs::write(dir.join(file), parent.trim())
                .unwrap_or_else(|e| panic!("writing {}/{file}: {e}", dir.display()));
        }
    }
}

/// Whether this host has the cgroup v1 controllers the fixtures use, and we are root.
pub fn cgroup_v1_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    let missing: Vec<&str> = ["freezer", "cpu", "memory", "cpuset"]
        .into_iter()
        .filter(|c| !Path::new(CGROUP_ROOT).join(c).join("cgroup.procs").exists())
        .collect();
    (!missing.is_empty()).then(|| format!("no cgroup v1 controllers {missing:?}"))
}

/// One allocation with one task, `web`, laid out as a Nomad client does
/// (`<allocdir>/<allocID>/{alloc/logs,web/{local,tmp}}`, world-searchable as Nomad's alloc dirs are),
/// the task's output files where logmon's FIFOs would be (regular files here), and for 1.7+ the
/// agent's task cgroups. Dropping it kills what it tracked and removes what it made.
pub struct Alloc {
    root: tempfile::TempDir,
    /// The alloc ID, a fresh UUID-like string.
    pub id: String,
    /// `<allocdir>/<allocID>/web`.
    pub task_dir: PathBuf,
    /// `<allocdir>/<allocID>/alloc/logs`.
    pub log_dir: PathBuf,
    /// Where the task's stdout goes.
    pub stdout: PathBuf,
    /// Where the task's stderr goes.
    pub stderr: PathBuf,
    /// 1.7+: the agent's `/sys/fs/cgroup/{freezer,cpu,memory}/nomad/<alloc>.web`.
    pub agent_cgroups: Vec<PathBuf>,
    /// Cgroup dirs an executor made that the test saw (1.6 freezer `/nomad/<uuid>`), removed too.
    pub seen_cgroups: Mutex<Vec<PathBuf>>,
    /// Executors and tasks of this alloc, killed at drop if still running.
    pub procs: Tracked,
}

impl Alloc {
    /// A fresh alloc for generation `g` (1.7+: with the agent's task cgroups, where possible).
    pub fn new(g: Generation) -> Alloc {
        let root = tempfile::tempdir().unwrap();
        let id = unique_id();
        let alloc_dir = root.path().join(&id);
        let task_dir = alloc_dir.join(TASK);
        let log_dir = alloc_dir.join("alloc/logs");
        for d in [&log_dir, &task_dir.join("local"), &task_dir.join("tmp")] {
            std::fs::create_dir_all(d).unwrap();
        }
        for d in [
            root.path(),
            &alloc_dir,
            &alloc_dir.join("alloc"),
            &log_dir,
            &task_dir,
            &task_dir.join("local"),
        ] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(
            task_dir.join("tmp"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        let stdout = log_dir.join(format!(".{TASK}.stdout.fifo"));
        let stderr = log_dir.join(format!(".{TASK}.stderr.fifo"));
        // Without root and cgroup v1 a 1.7+ agent runs with cgroups off and makes none.
        let agent = g == Generation::V1_7Plus && cgroup_v1_reason().is_none();
        acquire_parents(agent);
        let mut alloc = Alloc {
            root,
            id,
            task_dir,
            log_dir,
            stdout,
            stderr,
            agent_cgroups: Vec::new(),
            seen_cgroups: Mutex::new(Vec::new()),
            procs: Tracked::default(),
        };
        if agent {
            for c in ["freezer", "cpu", "memory"] {
                let dir = alloc.cgroup_path(c);
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
                alloc.agent_cgroups.push(dir);
            }
        }
        alloc
    }

    /// The task cgroup's name under `/nomad` as the 1.7+ agent names it: `<allocID>.<task>`.
    pub fn scope(&self) -> String {
        format!("{}.{TASK}", self.id)
    }

    /// `/sys/fs/cgroup/<controller>/nomad/<allocID>.web`.
    pub fn cgroup_path(&self, controller: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join(controller)
            .join("nomad")
            .join(self.scope())
    }

    /// Empties the output files (they exist before Launch, as logmon's FIFOs do).
    pub fn reset_output(&self) {
        std::fs::write(&self.stdout, b"").unwrap();
        std::fs::write(&self.stderr, b"").unwrap();
    }

    /// What the task wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout).unwrap_or_default()).into_owned()
    }

    /// What the task wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }

    /// The alloc dir root (`<allocdir>`), for paths in messages.
    pub fn alloc_root(&self) -> &Path {
        self.root.path()
    }

    /// Remember an executor-made cgroup dir, removed at drop if still there.
    pub fn saw_cgroup(&self, dir: PathBuf) {
        self.seen_cgroups.lock().unwrap().push(dir);
    }
}

/// Pids in a cgroup dir (none if it is gone).
pub fn cgroup_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs what is in `dir` until it is empty, then removes it (bounded: 5 s).
fn empty_and_remove(dir: &Path) {
    use nix::sys::signal::{kill, Signal};
    let t0 = Instant::now();
    while dir.exists() && t0.elapsed() < Duration::from_secs(5) {
        for pid in cgroup_procs(dir) {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes a test started (executors, logmons, tasks): SIGKILLed with their process group when
/// dropped, if still the same processes, so a failing test leaves nothing running.
#[derive(Default)]
pub struct Tracked(Mutex<Vec<ProcessIdentity>>);

impl Tracked {
    /// Kill `pid` (and the process group it leads) at drop.
    pub fn track(&self, pid: u32) {
        if let Ok(id) = ProcessIdentity::of(pid) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        }
    }

    /// SIGKILLs every tracked process still running and waits (at most 5 s) until they are gone.
    pub fn kill_all(&self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let ids = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for id in ids.iter().filter(|id| id.is_alive()) {
            let pid = Pid::from_raw(id.pid as i32);
            // Executors and tasks lead their own process groups (setsid / Setpgid).
            if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
                let _ = killpg(pid, Signal::SIGKILL);
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        let t0 = Instant::now();
        while ids.iter().any(|id| id.is_alive()) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.kill_all();
    }
}

impl Drop for Alloc {
    fn drop(&mut self) {
        self.procs.kill_all();
        let seen =
            std::mem::take(&mut *self.seen_cgroups.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in self.agent_cgroups.iter().chain(seen.iter()) {
            empty_and_remove(dir);
        }
        release_parents();
    }
}
