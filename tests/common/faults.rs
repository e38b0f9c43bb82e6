//! Fault injection for `tests/faults.rs` and `tests/load.rs` (issue #13): finding every process a
//! test started (a tag in the environment, which every descendant inherits and which survives
//! reparenting to init, where a parent-pid walk loses orphans), counting a process's descriptors
//! and threads, a small tmpfs for ENOSPC, RLIMIT_NOFILE for EMFILE, processes that stop
//! themselves before they exec (to hold a helper "during its handshake"), and the one report
//! line per fault row.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Our binary, as cargo built it for this run.
pub const BIN: &str = env!("CARGO_BIN_EXE_goplugin");
/// The environment variable that marks a test's processes.
pub const TAG_KEY: &str = "GOPLUGIN_FAULT_TAG";

/// Prints one fault row and what it observed, in a form the release note can quote.
pub fn report(row: &str, observed: impl fmt::Display) {
    println!("FAULT ROW | {row} | {observed}");
}

/// Prints one load figure.
pub fn figure(what: &str, value: impl fmt::Display) {
    println!("LOAD | {what} | {value}");
}

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Parent pid.
    pub ppid: i32,
    /// State letter (`R`, `S`, `T`, `Z`, ...).
    pub state: char,
    /// Command line, NULs as spaces (shortened).
    pub cmd: String,
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (ppid {}, {}) {}",
            self.pid, self.ppid, self.state, self.cmd
        )
    }
}

/// The `/proc/PID/stat` fields after the command name (index 0 is the state, 1 the ppid).
fn stat_after_name(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &raw[raw.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// What `/proc` knows about `pid`, if it exists (zombies included).
pub fn proc_info(pid: i32) -> Option<Proc> {
    let f = stat_after_name(pid)?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
    cmd.truncate(120);
    Some(Proc {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        state: f.first()?.chars().next()?,
        cmd: cmd.trim_end().to_string(),
    })
}

/// Alive: exists and is not a zombie (init here does not reap, so zombies of orphans linger).
pub fn alive(pid: i32) -> bool {
    proc_info(pid).is_some_and(|p| p.state != 'Z')
}

/// Stopped by a signal (`T`).
pub fn stopped(pid: i32) -> bool {
    proc_info(pid).is_some_and(|p| p.state == 'T')
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Marks every process a test starts: `TAG_KEY=<unique value>` in the environment of what the
/// test spawns (and in a task's own environment, which the executor sets exactly). Dropping the
/// tag that made it SIGKILLs whatever still carries it, so a failing test leaves nothing running.
pub struct Tag {
    value: String,
    owner: bool,
    /// `PLUGIN_UNIX_SOCKET_DIR` of what the test spawns: the socket files a SIGKILLed plugin
    /// cannot remove go with it, not into `/tmp`.
    sockets: Option<tempfile::TempDir>,
}

impl Tag {
    /// A tag unique to this test process and call.
    pub fn new(row: &str) -> Tag {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Tag {
            value: format!("{row}.{}.{n}", std::process::id()),
            owner: true,
            sockets: tempfile::tempdir().ok(),
        }
    }

    /// The tag this process was started with (a host child of a row): it never lists this
    /// process and kills nothing when dropped.
    pub fn inherited() -> Option<Tag> {
        let value = std::env::var(TAG_KEY).ok()?;
        Some(Tag {
            value,
            owner: false,
            sockets: None,
        })
    }

    /// The value, for `(TAG_KEY, value)` environment pairs.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// `KEY=value`, for a task's environment (`LaunchRequest.env`, `goplugin run --env`).
    pub fn env(&self) -> String {
        format!("{TAG_KEY}={}", self.value)
    }

    /// Puts the tag (and the row's socket directory) into `cmd`'s environment.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if let Some(dir) = &self.sockets {
            cmd.env("PLUGIN_UNIX_SOCKET_DIR", dir.path());
        }
        cmd.env(TAG_KEY, &self.value)
    }

    /// The row's socket directory, for plugins started without [`Tag::apply`].
    pub fn socket_dir(&self) -> Option<&Path> {
        self.sockets.as_ref().map(|d| d.path())
    }

    fn carries(&self, pid: i32) -> bool {
        let want = self.env().into_bytes();
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_slice()))
    }

    /// Live (non-zombie) processes carrying the tag, wherever they were reparented; never this
    /// process itself.
    pub fn live(&self) -> Vec<Proc> {
        let me = std::process::id() as i32;
        pids()
            .into_iter()
            .filter(|p| *p != me && self.carries(*p))
            .filter_map(proc_info)
            .filter(|p| p.state != 'Z')
            .collect()
    }

    /// Waits up to `limit` until nothing carrying the tag runs; returns what is left.
    pub async fn left_after(&self, limit: Duration) -> Vec<Proc> {
        let t0 = Instant::now();
        loop {
            let left = self.live();
            if left.is_empty() || t0.elapsed() >= limit {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs (and SIGCONTs, for stopped ones) everything carrying the tag and waits (at most
    /// 5 s) until it is gone.
    pub fn kill_all(&self) {
        let t0 = Instant::now();
        loop {
            let left = self.live();
            if left.is_empty() || t0.elapsed() > Duration::from_secs(5) {
                return;
            }
            for p in left {
                signal(p.pid as u32, Signal::SIGKILL);
                signal(p.pid as u32, Signal::SIGCONT);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        if self.owner {
            self.kill_all();
        }
    }
}

/// Formats a process list for a report line.
pub fn listing(procs: &[Proc]) -> String {
    if procs.is_empty() {
        return "none".into();
    }
    procs
        .iter()
        .map(Proc::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Open descriptors and threads of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Entries of `/proc/PID/fd`.
    pub fds: usize,
    /// Entries of `/proc/PID/task`.
    pub threads: usize,
}

impl Census {
    /// The census of `pid`, if it exists.
    pub fn of(pid: u32) -> Option<Census> {
        let count = |d: &str| std::fs::read_dir(format!("/proc/{pid}/{d}")).map(|r| r.count());
        Some(Census {
            fds: count("fd").ok()?,
            threads: count("task").ok()?,
        })
    }

    /// The census of this test process.
    pub fn own() -> Census {
        Census::of(std::process::id()).expect("/proc/self")
    }

    /// `pid`'s census once it has not changed for 200 ms (at most 3 s): a baseline without the
    /// descriptors a moment ago's work is still closing.
    pub async fn quiet(pid: u32) -> Census {
        let t0 = Instant::now();
        let mut last = Census::of(pid);
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = Census::of(pid);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= Duration::from_millis(200)
                || t0.elapsed() >= Duration::from_secs(3)
            {
                return last.unwrap_or(Census { fds: 0, threads: 0 });
            }
        }
    }

    /// Waits up to `limit` for `pid`'s census to come back to `baseline`; returns the last one.
    pub async fn settle(pid: u32, baseline: Census, limit: Duration) -> Census {
        let t0 = Instant::now();
        loop {
            let now = Census::of(pid).unwrap_or(Census { fds: 0, threads: 0 });
            if now == baseline || t0.elapsed() >= limit {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} fds/{} threads", self.fds, self.threads)
    }
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Polls `check` every 10 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
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

/// `sh -c 'kill -STOP $$; exec "$0" "$@"' program args...`: the process stops itself as soon as
/// it is spawned and, once continued, becomes `program` under the same pid. A host waiting for
/// its handshake line is then waiting "during the handshake" for as long as the test likes.
pub fn stopped_before_exec(program: impl AsRef<Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("kill -STOP $$; exec \"$0\" \"$@\"")
        .arg(program.as_ref())
        .args(args);
    cmd
}

/// A script in `dir` that stops itself and then execs our binary with its arguments: for
/// `goplugin run --executor-bin/--logmon-bin`, to hold one helper before its handshake.
pub fn stop_first_script(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\nkill -STOP $$\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn nofile(cur: u64) -> nix::libc::rlimit {
    nix::libc::rlimit {
        rlim_cur: cur,
        rlim_max: hard_nofile(),
    }
}

fn own_limits() -> nix::libc::rlimit {
    let mut r = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut r) };
    r
}

/// This process's hard RLIMIT_NOFILE, which children keep so the soft limit can go back up.
pub fn hard_nofile() -> u64 {
    own_limits().rlim_max
}

/// This process's soft RLIMIT_NOFILE.
pub fn soft_nofile() -> u64 {
    own_limits().rlim_cur
}

/// The soft RLIMIT_NOFILE under which this process can open exactly `headroom` more
/// descriptors (EMFILE comes when the lowest free number reaches the limit, so holes count).
pub fn limit_for_headroom(headroom: u64) -> u64 {
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut free = 0;
    (0..)
        .find(|n| {
            if open.contains(n) {
                return false;
            }
            free += 1;
            free > headroom
        })
        .unwrap_or(0)
}

/// Names of `pid`'s threads (`comm`), for messages.
pub fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// What `pid`'s descriptors point at, for messages.
pub fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let target = std::fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    format!("{}:{target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sets the soft RLIMIT_NOFILE of a live process (prlimit(2)); its open descriptors stay, every
/// new one numbered `cur` or higher fails with EMFILE.
pub fn set_nofile(pid: u32, cur: u64) {
    let new = nofile(cur);
    // SAFETY: prlimit reads `new` and writes nothing (null old-limit pointer).
    let rc = unsafe {
        nix::libc::prlimit(
            pid as nix::libc::pid_t,
            nix::libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(
        rc,
        0,
        "prlimit({pid}, NOFILE, {cur}): {}",
        std::io::Error::last_os_error()
    );
}

/// Lowers this process's own soft RLIMIT_NOFILE (the host child's EMFILE row).
pub fn set_own_nofile(cur: u64) {
    set_nofile(std::process::id(), cur);
}

/// The child starts with soft RLIMIT_NOFILE `cur`.
pub fn limit_nofile(cmd: &mut Command, cur: u64) {
    let new = nofile(cur);
    // SAFETY: setrlimit is async-signal-safe; `new` is a plain copy made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &new) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A small tmpfs on a fresh directory, unmounted (and the directory removed) when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `tmpfs -o OPTIONS` (e.g. `size=64k,mode=700`); `Err` with the reason when this
    /// machine does not allow it (not root, no mount namespace rights).
    pub fn mount(options: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "goplugin-faults"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until ENOSPC; returns the bytes written.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = [b'f'; 4096];
        let mut total = 0;
        loop {
            match f.write(&block) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    }

    /// Fills the inode table with empty files until ENOSPC; returns how many were made.
    pub fn fill_inodes(&self) -> usize {
        let dir = self.path().join("inodes");
        if std::fs::create_dir(&dir).is_err() {
            return 0;
        }
        (0..)
            .take_while(|i| std::fs::File::create(dir.join(format!("i{i}"))).is_ok())
            .count()
    }

    /// Remounts with other options (e.g. `remount,size=8m` gives the room back).
    pub fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", options])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {options} of {}", self.path().display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let plain = Command::new("umount").arg(self.path()).status();
        if !plain.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// The cgroups `/sys/fs/cgroup/<controller>/goplugin/<executor pid>` that a SIGKILLed executor
/// leaves (README: "left by a SIGKILLed executor"): emptied and removed when dropped.
#[derive(Default)]
pub struct ExecutorCgroups(std::sync::Mutex<Vec<u32>>);

impl ExecutorCgroups {
    /// Remember an executor whose cgroups are removed at drop.
    pub fn track(&self, executor_pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(executor_pid);
    }

    /// The `goplugin/<pid>` directories of `executor_pid` that exist now.
    pub fn dirs_of(executor_pid: u32) -> Vec<PathBuf> {
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path().join("goplugin").join(executor_pid.to_string()))
                    .filter(|d| d.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ExecutorCgroups {
    fn drop(&mut self) {
        let pids = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in pids.into_iter().flat_map(ExecutorCgroups::dirs_of) {
            let t0 = Instant::now();
            while dir.exists() && t0.elapsed() < Duration::from_secs(5) {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                {
                    signal(pid, Signal::SIGKILL);
                }
                if std::fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Numbered lines `"<prefix> <i>\n"`, the task output whose loss or reordering a row checks.
pub fn numbered(prefix: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    range
        .flat_map(|i| format!("{prefix} {i}\n").into_bytes())
        .collect()
}

/// The numbers of the lines `"<prefix> <i>"` in `text`, in order; lines that do not parse (a
/// torn line) are reported as `None`.
pub fn line_numbers(text: &[u8], prefix: &str) -> Vec<Option<u64>> {
    String::from_utf8_lossy(text)
        .lines()
        .map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

/// All of `<dir>/<base>.<N>` in index order, concatenated, with the indices found.
pub fn rotated(dir: &Path, base: &str) -> (Vec<u8>, Vec<u64>) {
    let prefix = format!("{base}.");
    let mut indices: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    indices.sort_unstable();
    let all = indices
        .iter()
        .flat_map(|i| std::fs::read(dir.join(format!("{base}.{i}"))).unwrap_or_default())
        .collect();
    (all, indices)
}

/// Whether a thread of `pid` sleeps in a pipe write (the kernel's `wchan`): a writer held up by
/// a full pipe or FIFO.
pub fn blocked_in_pipe_write(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.filter_map(Result::ok).any(|t| {
                std::fs::read_to_string(t.path().join("wchan"))
                    .is_ok_and(|w| w.contains("pipe_write"))
            })
        })
        .unwrap_or(false)
}

/// Bytes waiting unread in the receive queues of `pid`'s connected unix sockets (`ss -xpn`):
/// a request that reached a stopped server sits there.
pub fn queued_at(pid: u32) -> u64 {
    let out = Command::new("ss").args(["-xpn"]).output();
    let Ok(out) = out else { return 0 };
    let needle = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_net, state, recv_q) = (f.next()?, f.next()?, f.next()?);
            (state == "ESTAB").then(|| recv_q.parse::<u64>().ok())?
        })
        .sum()
}
