//! The executor's running task (spec nomad-executor-logmon.md §5.1, §5.2, §5.7, §5.8): what a
//! Launch keeps for the other RPCs, how a command in the task's context is built (for the task
//! itself, `Exec` and `ExecStreaming`), and the one mapping from how a process ended to the exit
//! codes Nomad's executor reports. `service` and `exec_streaming` both use it; neither uses the
//! other's internals.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::sync::watch;

use super::cgroups::TaskCgroup;
use super::isolation::container::Container;
use super::lookup::{self, LookupError};
use super::procstats::descendants;
use super::spawn::{ChildSetup, Identity};
use crate::proto::executor::ProcessState;

/// What a launched task keeps for the other RPCs.
pub(crate) struct Task {
    pub(crate) pid: u32,
    pub(crate) env: Vec<String>,
    pub(crate) cwd: PathBuf,
    pub(crate) identity: Option<Identity>,
    pub(crate) cgroup: Option<TaskCgroup>,
    /// The container of an isolated task.
    pub(crate) container: Option<Container>,
    pub(crate) state: watch::Receiver<Option<ProcessState>>,
}

impl Task {
    /// The final state, once the task's main process has ended.
    pub(crate) fn exited(&self) -> Option<ProcessState> {
        *self.state.borrow()
    }

    /// Waits for the final state (any number of callers get the same one, §5.2).
    pub(crate) async fn wait(&self) -> ProcessState {
        let mut rx = self.state.clone();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                return process_state(self.pid, Ended::Unknown, false);
            }
        }
    }

    /// The task's processes: its cgroup's, else the main pid and its descendants.
    pub(crate) fn pids(&self) -> Vec<u32> {
        match &self.cgroup {
            Some(cg) => cg.pids(),
            None if self.exited().is_none() => descendants(self.pid),
            None => Vec::new(),
        }
    }
}

/// How a process ended, from its wait status: the one reading of an exit status in the
/// executor. Each RPC then reports it as Nomad's executor does ([`Ended::wait_fields`],
/// [`Ended::exec_code`], [`Ended::streaming_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signalled(i32),
    /// No status: the wait failed, or the status is neither an exit nor a kill (a stopped or
    /// continued process, which a wait without `WUNTRACED` never reports).
    Unknown,
}

impl Ended {
    /// Reads a wait result.
    pub(crate) fn of(status: std::io::Result<std::process::ExitStatus>) -> Ended {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => Ended::Exited(code),
                (None, Some(sig)) => Ended::Signalled(sig),
                (None, None) => Ended::Unknown,
            },
            Err(_) => Ended::Unknown,
        }
    }

    /// `ProcessState`'s `(exit_code, signal)` for `Wait` (§5.2): a signal is encoded as bash
    /// does (128 + signal, and the signal), and an unexpected wait error is exit code 1.
    pub(crate) fn wait_fields(self) -> (i32, i32) {
        match self {
            Ended::Exited(code) => (code, 0),
            Ended::Signalled(sig) => (128 + sig, sig),
            Ended::Unknown => (1, 0),
        }
    }

    /// `Exec`'s exit code (§5.7): Go's `WaitStatus.ExitStatus()`, -1 for anything but an exit.
    pub(crate) fn exec_code(self) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Signalled(_) | Ended::Unknown => -1,
        }
    }

    /// `ExecStreaming`'s exit code (§5.8): 128 + signal when signalled, -2 without a process
    /// state.
    pub(crate) fn streaming_code(self) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Signalled(sig) => 128 + sig,
            Ended::Unknown => -2,
        }
    }
}

/// The `ProcessState` of a task that ended as `ended`, timed now.
pub(crate) fn process_state(pid: u32, ended: Ended, oom_killed: bool) -> ProcessState {
    let (exit_code, signal) = ended.wait_fields();
    ProcessState {
        pid: pid as i32,
        exit_code,
        signal,
        time: Some(now()),
        oom_killed,
    }
}

/// What Launch answers for a task that runs: its pid and exit code -1 (§5.1).
pub(crate) fn running_state(pid: u32) -> ProcessState {
    ProcessState {
        pid: pid as i32,
        exit_code: -1,
        signal: 0,
        time: Some(now()),
        oom_killed: false,
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// Waits for the task in the background; the receiver gets its final state once.
pub(crate) fn watch_exit(
    mut child: tokio::process::Child,
    pid: u32,
    cgroup: Option<TaskCgroup>,
) -> watch::Receiver<Option<ProcessState>> {
    let (state_tx, state) = watch::channel(None);
    tokio::spawn(async move {
        let waited = child.wait().await;
        let oom = waited.is_ok() && cgroup.as_ref().is_some_and(TaskCgroup::oom_killed);
        let state = process_state(pid, Ended::of(waited), oom);
        tracing::debug!(pid, exit_code = state.exit_code, "task exited");
        let _ = state_tx.send(Some(state));
    });
    state
}

/// Builds a command for the task's context: env (the task's, plus USER/LOGNAME/HOME when
/// `with_user_env`), cwd, user, a new session, and optionally the task cgroup.
pub(crate) fn task_command(
    bin: &Path,
    args: &[String],
    task: Option<&Task>,
    join_cgroup: bool,
    with_user_env: bool,
) -> (std::process::Command, ChildSetup) {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args);
    let mut setup = ChildSetup {
        new_session: true,
        ..Default::default()
    };
    if let Some(task) = task {
        if !task.env.is_empty() {
            cmd.env_clear();
            cmd.envs(task.env.iter().filter_map(|kv| kv.split_once('=')));
        }
        if with_user_env {
            if let Some(id) = &task.identity {
                cmd.env("USER", &id.name)
                    .env("LOGNAME", &id.name)
                    .env("HOME", &id.home);
            }
        }
        cmd.current_dir(&task.cwd);
        setup.identity = task.identity.clone();
        if join_cgroup {
            setup.cgroup_procs = task
                .cgroup
                .iter()
                .flat_map(|cg| cg.procs_files())
                .filter_map(|p| {
                    std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok()
                })
                .collect();
        }
    }
    (cmd, setup)
}

/// Resolves a command for `Exec`/`ExecStreaming`: absolute paths as they are, else the task dir
/// and the executor's `$PATH`.
pub(crate) fn resolve_exec(cmd: &str, task: Option<&Task>) -> Result<PathBuf, LookupError> {
    let dir = task.map(|t| t.cwd.clone()).unwrap_or_default();
    lookup::resolve(cmd, &dir, std::env::var("PATH").ok().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    /// Raw wait statuses as the kernel encodes them (wait(2)).
    fn exited(code: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(code << 8))
    }
    fn signalled(sig: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(sig))
    }
    /// Stopped by SIGSTOP (19): neither an exit nor a kill.
    fn stopped() -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw((19 << 8) | 0x7f))
    }

    #[test]
    fn reads_exits_kills_and_statuses_without_either() {
        assert_eq!(Ended::of(exited(0)), Ended::Exited(0));
        assert_eq!(Ended::of(exited(43)), Ended::Exited(43));
        assert_eq!(Ended::of(signalled(9)), Ended::Signalled(9));
        assert_eq!(Ended::of(stopped()), Ended::Unknown);
        assert_eq!(
            Ended::of(Err(std::io::Error::from_raw_os_error(nix::libc::ECHILD))),
            Ended::Unknown
        );
    }

    /// §5.2's table: exit N is (N, 0), signal S is (128+S, S), a failed wait is (1, 0).
    #[test]
    fn wait_reports_what_nomads_universal_executor_reports() {
        assert_eq!(Ended::of(exited(3)).wait_fields(), (3, 0));
        assert_eq!(Ended::of(signalled(15)).wait_fields(), (143, 15));
        assert_eq!(Ended::of(stopped()).wait_fields(), (1, 0));
        let state = process_state(42, Ended::Signalled(9), true);
        assert_eq!(
            (state.pid, state.exit_code, state.signal, state.oom_killed),
            (42, 137, 9, true)
        );
        let launched = running_state(42);
        assert_eq!((launched.pid, launched.exit_code), (42, -1));
    }

    /// §5.7: a non-zero exit is its code, a kill (by the deadline or a signal) is -1.
    #[test]
    fn exec_reports_minus_one_for_anything_but_an_exit() {
        assert_eq!(Ended::of(exited(2)).exec_code(), 2);
        assert_eq!(Ended::of(signalled(9)).exec_code(), -1);
        assert_eq!(Ended::of(stopped()).exec_code(), -1);
    }

    /// §5.8: status, 128 + signal when signalled, -2 without a process state.
    #[test]
    fn exec_streaming_reports_signals_as_bash_and_no_state_as_minus_two() {
        assert_eq!(Ended::of(exited(43)).streaming_code(), 43);
        assert_eq!(Ended::of(signalled(9)).streaming_code(), 137);
        assert_eq!(Ended::of(stopped()).streaming_code(), -2);
        assert_eq!(
            Ended::of(Err(std::io::Error::other("gone"))).streaming_code(),
            -2
        );
    }

    /// The mapping against real processes: an exit code and a SIGKILL, through std's wait.
    #[test]
    fn real_processes_map_to_their_exit_and_their_signal() {
        let code = std::process::Command::new("sh")
            .args(["-c", "exit 5"])
            .status();
        assert_eq!(Ended::of(code).wait_fields(), (5, 0));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        child.kill().unwrap();
        let killed = Ended::of(child.wait());
        assert_eq!(killed, Ended::Signalled(9));
        assert_eq!(
            (
                killed.wait_fields(),
                killed.exec_code(),
                killed.streaming_code()
            ),
            ((137, 9), -1, 137)
        );
    }
}
