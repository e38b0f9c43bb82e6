//! The standalone agent behind `goplugin run`: runs one task the way a Nomad client does, over
//! the real protocol, through its own `logmon` and `executor` children (or other binaries that
//! speak it, such as a real `nomad`), and reattaches to a detached task for `status`, `logs`,
//! `stop` and `exec`.
//!
//! What it starts never outlives it unseen: an attached run has a watcher (`agent::watch`) that
//! stops the task and its helpers when `goplugin run` dies without doing so, and a detached
//! task's `state.json` records the task's pid, start time and cgroups (`agent::record`) so that
//! `stop` and `status` kill it even when its executor is gone.
//!
//! It prints nothing itself: the task's output goes to the [`Terminal`] the caller passes in,
//! and what it has to say comes back as values (`agent::terminal`) for the binary to print.

mod record;
mod terminal;
#[allow(unsafe_code)] // pre_exec for the watcher; SIG_IGN dispositions (nix marks signal() unsafe)
mod watch;

pub use record::{CgroupDir, TaskRecord};
pub use terminal::{RunNote, RunOutcome, TaskExit, TaskStatus, Terminal};
pub use watch::{main as watch_main, ENTRY as WATCH_ENTRY};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::drivers::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources,
    ExecTaskStreamingIoOperation, ExecTaskStreamingRequest, LinuxResources, Resources,
};
use crate::proto::executor::executor_client::ExecutorClient;
use crate::proto::executor::{LaunchRequest, ShutdownRequest, StatsRequest, WaitRequest};
use crate::proto::logmon::log_mon_client::LogMonClient;
use crate::proto::logmon::{StartRequest, StopRequest};
use crate::reattach::ReattachConfig;
use crate::Client;

/// Errors of the agent, each one line for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A task of that name runs already.
    #[error(
        "task {name:?} is already running (executor pid {pid}); stop it or pick another --name"
    )]
    NameInUse {
        /// The name.
        name: String,
        /// Its executor.
        pid: u32,
    },
    /// No state file for that name.
    #[error("no task {name:?} (no state file {path})")]
    NoTask {
        /// The name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The state file cannot be read.
    #[error("state file {path} is unusable: {reason}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The detached task's executor is gone: what was left of the task was killed from its
    /// state file, which was then removed.
    #[error("task {name:?} is not running any more: its executor (pid {pid}) {why}; {done}; state file removed")]
    Stale {
        /// The name.
        name: String,
        /// The executor's pid.
        pid: u32,
        /// "is gone", or why it did not answer.
        why: String,
        /// What was killed or stopped.
        done: String,
    },
    /// The detached task's executor runs but does not answer (its socket removed, say).
    #[error("task {name:?}: its executor (pid {pid}) runs but does not answer at {addr}: {reason}; `goplugin stop {name}` kills the task from its state file")]
    Unreachable {
        /// The name.
        name: String,
        /// The executor's pid.
        pid: u32,
        /// Its socket.
        addr: String,
        /// Why the reattach failed.
        reason: String,
    },
    /// The executor of an attached run died while the task ran.
    #[error("the executor (pid {pid}) of task {name:?} exited while the task ran: {done}")]
    ExecutorLost {
        /// The name.
        name: String,
        /// The executor's pid.
        pid: u32,
        /// What was killed or stopped.
        done: String,
    },
    /// The state file could not be written (the run was stopped: nothing could find it).
    #[error("writing state file {path}: {source}; the task and its helpers were stopped")]
    StateWrite {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The watcher of an attached run could not be started.
    #[error("starting the run's watcher (`goplugin {}`): {source}", watch::ENTRY)]
    Watcher {
        /// The OS error.
        source: std::io::Error,
    },
    /// A directory could not be prepared.
    #[error("preparing {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The task directory's parent is not ours alone: its `state.json` files decide which
    /// sockets `status`, `exec` and `stop` talk to, so nobody else may write there.
    #[error("{path} is not safe for task state: {reason}")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong (owner, mode, symlink).
        reason: String,
    },
    /// A helper plugin failed.
    #[error("{helper}: {source}")]
    Helper {
        /// `logmon` or `executor`.
        helper: &'static str,
        /// What failed.
        source: crate::ClientError,
    },
    /// An RPC failed.
    #[error("{call}: {status}")]
    Rpc {
        /// Which call.
        call: &'static str,
        /// The status message.
        status: String,
    },
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> AgentError {
    move |s| AgentError::Rpc {
        call,
        status: s.message().to_string(),
    }
}

/// What `goplugin run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Task name (directory and log file names).
    pub name: String,
    /// Parent of the task directories.
    pub base_dir: PathBuf,
    /// `KEY=value` entries added to the task's environment (which starts from PATH only).
    pub env: Vec<String>,
    /// User to run as.
    pub user: Option<String>,
    /// Working directory (default: the task directory).
    pub work_dir: Option<PathBuf>,
    /// Memory limit in MiB (0: none).
    pub memory_mb: i64,
    /// Hard memory limit in MiB (0: `memory_mb` is hard; -1: no hard limit).
    pub memory_max_mb: i64,
    /// CPU shares (0: none).
    pub cpu_shares: i64,
    /// Log files kept per stream.
    pub max_files: u32,
    /// Size of each log file in MiB.
    pub max_file_size_mb: u32,
    /// Signal name sent on stop.
    pub kill_signal: String,
    /// Time between the signal and SIGKILL.
    pub kill_timeout: Duration,
    /// Leave the task running in the background.
    pub detach: bool,
    /// Another binary speaking the executor protocol (`BIN executor <json>`).
    pub executor_bin: Option<PathBuf>,
    /// Another binary speaking the logmon protocol (`BIN logmon`).
    pub logmon_bin: Option<PathBuf>,
    /// The task's command and arguments.
    pub command: Vec<String>,
}

/// What a detached task leaves in `<task dir>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskState {
    /// Task name.
    pub name: String,
    /// Task directory.
    pub task_dir: PathBuf,
    /// Log directory.
    pub log_dir: PathBuf,
    /// The task's pid.
    pub pid: i32,
    /// Signal and timeout for `stop`.
    pub kill_signal: String,
    /// Nanoseconds.
    pub kill_timeout_ns: u64,
    /// Reattach to the executor.
    pub executor: ReattachConfig,
    /// Reattach to logmon.
    pub logmon: ReattachConfig,
    /// The task's pid with its start time and its cgroups: what `stop` kills when the executor
    /// is gone (absent in state files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRecord>,
}

/// Where tasks live by default: `$XDG_RUNTIME_DIR/goplugin` or `/tmp/goplugin-<uid>`.
pub fn default_base_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("goplugin"),
        _ => std::env::temp_dir().join(format!("goplugin-{}", nix::unistd::getuid())),
    }
}

fn state_path(base: &Path, name: &str) -> PathBuf {
    base.join(name).join("state.json")
}

/// Makes `base` (mode 0700) when missing and refuses one another user could write to: a
/// symlink, a directory owned by someone other than us or root, or one writable by group or
/// others (the `/tmp/goplugin-<uid>` fallback could have been made by anyone).
pub fn check_base_dir(base: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let unsafe_dir = |reason: String| AgentError::UnsafeDir {
        path: base.to_path_buf(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(base) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(base)
                .map_err(|source| AgentError::Dir {
                    path: base.to_path_buf(),
                    source,
                })?;
            std::fs::symlink_metadata(base).map_err(|source| AgentError::Dir {
                path: base.to_path_buf(),
                source,
            })?
        }
        Err(source) => {
            return Err(AgentError::Dir {
                path: base.to_path_buf(),
                source,
            })
        }
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symlink".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "owned by uid {}, not by us ({me})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!("mode {mode:o} lets others write there")));
    }
    Ok(())
}

/// Reads a task's state file.
pub fn load_state(base: &Path, name: &str) -> Result<TaskState, AgentError> {
    check_base_dir(base)?;
    let path = state_path(base, name);
    let raw = std::fs::read_to_string(&path).map_err(|_| AgentError::NoTask {
        name: name.to_string(),
        path: path.clone(),
    })?;
    crate::gojson::from_str(&raw).map_err(|e| AgentError::BadState {
        path,
        reason: e.to_string(),
    })
}

/// The helper's command; it joins process group `group` (the watcher's).
fn helper_command(bin: Option<&Path>, name: &str, group: i32) -> Result<Command, AgentError> {
    let mut cmd = match bin {
        Some(b) => {
            let mut c = Command::new(b);
            c.arg(name);
            c
        }
        None => crate::reexec::command(name).map_err(|e| AgentError::Dir {
            path: PathBuf::from("/proc/self/exe"),
            source: e,
        })?,
    };
    // Helpers sit in the watcher's process group, not the terminal's: a Ctrl-C reaches the agent
    // only, which turns it into the task's shutdown; the watcher finds them there when the
    // agent dies before it could note them.
    use std::os::unix::process::CommandExt;
    cmd.process_group(group);
    Ok(cmd)
}

async fn start_helper(cmd: Command, helper: &'static str) -> Result<Client, AgentError> {
    Client::builder(cmd, super::handshake())
        .name(helper)
        // The helper outlives this handle (detached runs, driver restarts): never killed on drop.
        .kill_on_drop(false)
        .stdin(std::process::Stdio::null())
        .start()
        .await
        .map_err(|source| AgentError::Helper { helper, source })
}

fn mkdir(path: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(path).map_err(|source| AgentError::Dir {
        path: path.to_path_buf(),
        source,
    })
}

fn resources(o: &RunOptions) -> Resources {
    Resources {
        allocated_resources: Some(AllocatedTaskResources {
            cpu: Some(AllocatedCpuResources {
                cpu_shares: o.cpu_shares,
            }),
            memory: Some(AllocatedMemoryResources {
                memory_mb: o.memory_mb,
                memory_max_mb: o.memory_max_mb,
            }),
            networks: vec![],
        }),
        linux_resources: Some(LinuxResources {
            cpu_shares: o.cpu_shares,
            ..Default::default()
        }),
        ports: vec![],
    }
}

/// A running task: its helpers and where its logs go.
struct Running {
    executor: Client,
    logmon: Client,
    log_dir: PathBuf,
    task_dir: PathBuf,
    pid: i32,
    record: Option<TaskRecord>,
}

async fn start_task(o: &RunOptions, watcher: &mut watch::Watcher) -> Result<Running, AgentError> {
    check_base_dir(&o.base_dir)?;
    let task_dir = o.base_dir.join(&o.name);
    if let Ok(state) = load_state(&o.base_dir, &o.name) {
        let alive = state.executor.process.is_some_and(|p| p.is_alive());
        if alive || Client::reattach(&state.executor).await.is_ok() {
            return Err(AgentError::NameInUse {
                name: o.name.clone(),
                pid: state.executor.pid,
            });
        }
        // A task of that name whose executor died: what is left of it goes first.
        let done = kill_from_state(&state).await;
        tracing::info!(task = %o.name, "stale state file: {done}");
        let _ = std::fs::remove_file(state_path(&o.base_dir, &o.name));
    }
    let log_dir = task_dir.join("logs");
    mkdir(&log_dir)?;
    let (program, args) = o.command.split_first().ok_or(AgentError::Rpc {
        call: "run",
        status: "no command given".into(),
    })?;
    let group = watcher.group();
    let logmon = start_helper(
        helper_command(o.logmon_bin.as_deref(), "logmon", group)?,
        "logmon",
    )
    .await?;
    watcher.note(&watch::Note::Logmon(logmon.reattach_config()));
    // logmon sits outside our process group and outlives us unless told: every failure from
    // here on stops it.
    match start_under_logmon(o, &logmon, watcher, &task_dir, &log_dir, program, args).await {
        Ok((executor, pid, record)) => Ok(Running {
            executor,
            logmon,
            log_dir,
            task_dir,
            pid,
            record,
        }),
        Err(e) => {
            let _ = LogMonClient::new(logmon.channel())
                .stop(StopRequest {})
                .await;
            logmon.kill().await;
            Err(e)
        }
    }
}

/// logmon's Start, then the executor and its Launch; the executor is killed if Launch fails.
/// Returns the executor, the task's pid and its record (none when it ended at once).
async fn start_under_logmon(
    o: &RunOptions,
    logmon: &Client,
    watcher: &mut watch::Watcher,
    task_dir: &Path,
    log_dir: &Path,
    program: &str,
    args: &[String],
) -> Result<(Client, i32, Option<TaskRecord>), AgentError> {
    let stdout_fifo = log_dir.join(format!(".{}.stdout.fifo", o.name));
    let stderr_fifo = log_dir.join(format!(".{}.stderr.fifo", o.name));
    LogMonClient::new(logmon.channel())
        .start(StartRequest {
            log_dir: log_dir.display().to_string(),
            stdout_file_name: format!("{}.stdout", o.name),
            stderr_file_name: format!("{}.stderr", o.name),
            max_files: o.max_files,
            max_file_size_mb: o.max_file_size_mb,
            stdout_fifo: stdout_fifo.display().to_string(),
            stderr_fifo: stderr_fifo.display().to_string(),
        })
        .await
        .map_err(rpc("logmon Start"))?;
    let config = serde_json::json!({
        "LogFile": task_dir.join("executor.out"),
        "LogLevel": "debug",
        "FSIsolation": false,
        "Compute": {"tc": 0, "nc": std::thread::available_parallelism().map_or(1, |n| n.get())},
    });
    let mut cmd = helper_command(o.executor_bin.as_deref(), "executor", watcher.group())?;
    cmd.arg(config.to_string());
    let executor = start_helper(cmd, "executor").await?;
    watcher.note(&watch::Note::Executor(executor.reattach_config()));
    let mut env = vec![format!(
        "PATH={}",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    )];
    env.extend(o.env.iter().cloned());
    let launched = ExecutorClient::new(executor.channel())
        .launch(LaunchRequest {
            cmd: program.to_string(),
            args: args.to_vec(),
            resources: Some(resources(o)),
            stdout_path: stdout_fifo.display().to_string(),
            stderr_path: stderr_fifo.display().to_string(),
            env,
            user: o.user.clone().unwrap_or_default(),
            task_dir: task_dir.display().to_string(),
            work_dir: o
                .work_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            ..Default::default()
        })
        .await;
    match launched {
        Ok(r) => {
            let pid = r.into_inner().process.map_or(0, |p| p.pid);
            let record = TaskRecord::of(pid);
            if let Some(r) = &record {
                watcher.note(&watch::Note::Task(r.clone()));
            }
            Ok((executor, pid, record))
        }
        Err(status) => {
            executor.kill().await;
            Err(rpc("launch")(status))
        }
    }
}

/// Writes `contents` to `path` so that it is either whole or absent: a temporary file beside
/// it, synced, renamed over it, and the directory synced.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map_or("state".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn save_state(o: &RunOptions, t: &Running) -> Result<(), AgentError> {
    let state = TaskState {
        name: o.name.clone(),
        task_dir: t.task_dir.clone(),
        log_dir: t.log_dir.clone(),
        pid: t.pid,
        kill_signal: o.kill_signal.clone(),
        kill_timeout_ns: o.kill_timeout.as_nanos() as u64,
        executor: t.executor.reattach_config(),
        logmon: t.logmon.reattach_config(),
        task: t.record.clone(),
    };
    let path = state_path(&o.base_dir, &o.name);
    let json = serde_json::to_string_pretty(&state).map_err(|e| AgentError::BadState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomically(&path, json.as_bytes())
        .map_err(|source| AgentError::StateWrite { path, source })
}

/// How long the end of an attached run waits for the task's last output to be written out.
const LAST_OUTPUT: Duration = Duration::from_secs(5);

/// Runs the task: an attached run writes its output to `terminal` until it ends and returns its
/// exit code (128 + signal when killed by one); a detached one returns once it runs. The binary
/// must dispatch [`WATCH_ENTRY`] to [`watch_main`] (self-re-exec): the run's watcher is this
/// binary re-executed.
pub async fn run(o: RunOptions, terminal: Arc<dyn Terminal>) -> Result<RunOutcome, AgentError> {
    let log_start = log_ends(&o.base_dir.join(&o.name).join("logs"), &o.name);
    // Before anything starts: a Ctrl-C from now on becomes the task's shutdown.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| AgentError::Rpc {
            call: "signal handler",
            status: e.to_string(),
        })?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Rpc {
            call: "signal handler",
            status: e.to_string(),
        })?;
    let mut watcher = watch::Watcher::spawn(&o.name).await?;
    let t = match start_task(&o, &mut watcher).await {
        Ok(t) => t,
        Err(e) => {
            watcher.release(watch::Note::Done).await;
            return Err(e);
        }
    };
    terminal.note(RunNote::Running {
        name: o.name.clone(),
        pid: t.pid,
        log_dir: t.log_dir.clone(),
    });
    if o.detach {
        if let Err(e) = save_state(&o, &t) {
            // Nothing could find the task without its state: it does not stay.
            stop_running(&t).await;
            watcher.release(watch::Note::Done).await;
            return Err(e);
        }
        watcher.release(watch::Note::Detached).await;
        return Ok(RunOutcome::Detached);
    }
    let logs_done = tokio_util::sync::CancellationToken::new();
    let follow = tokio::spawn(follow_logs(
        t.log_dir.clone(),
        o.name.clone(),
        log_start,
        logs_done.clone(),
        terminal.clone(),
    ));
    let mut exec = ExecutorClient::new(t.executor.channel());
    let wait = exec.wait(WaitRequest {});
    tokio::pin!(wait);
    let shutdown = ShutdownRequest {
        signal: o.kill_signal.clone(),
        grace_period: o.kill_timeout.as_nanos() as i64,
    };
    let ended = loop {
        tokio::select! {
            r = &mut wait => break r,
            _ = t.executor.wait() => break Err(tonic::Status::unavailable("executor exited")),
            _ = sigint.recv() => {
                terminal.note(RunNote::Stopping {
                    name: o.name.clone(),
                    signal: o.kill_signal.clone(),
                    timeout: o.kill_timeout,
                });
                let _ = ExecutorClient::new(t.executor.channel()).shutdown(shutdown.clone()).await;
            }
            _ = sigterm.recv() => {
                let _ = ExecutorClient::new(t.executor.channel()).shutdown(shutdown.clone()).await;
            }
        }
    };
    let outcome = match ended {
        Ok(r) => Ok(r.into_inner().process),
        Err(status) => executor_failed(&o, &t, status).await,
    };
    let _ = ExecutorClient::new(t.executor.channel())
        .shutdown(ShutdownRequest {
            signal: "SIGKILL".into(),
            grace_period: 0,
        })
        .await;
    // Stop drains the FIFOs into the files; the follower then prints the rest and ends.
    let stopped = LogMonClient::new(t.logmon.channel())
        .stop(StopRequest {})
        .await;
    logs_done.cancel();
    if tokio::time::timeout(LAST_OUTPUT, follow).await.is_err() {
        terminal.note(RunNote::OutputLate {
            within: LAST_OUTPUT,
        });
    }
    if let Err(s) = stopped {
        // A full disk: logmon gave up output it could not write, and says how much.
        terminal.note(RunNote::LogmonLost {
            message: s.message().to_string(),
        });
    }
    t.executor.kill().await;
    t.logmon.kill().await;
    watcher.release(watch::Note::Done).await;
    let code = outcome?.map_or(1, |s| s.exit_code);
    Ok(RunOutcome::Exited(TaskExit {
        name: o.name.clone(),
        code,
        log_dir: t.log_dir.clone(),
    }))
}

/// The executor's Wait failed: a call that failed while the executor lives is retried once it
/// answers again (bounded); a dead executor's task is killed from its record.
async fn executor_failed(
    o: &RunOptions,
    t: &Running,
    status: tonic::Status,
) -> Result<Option<crate::proto::executor::ProcessState>, AgentError> {
    if tokio::time::timeout(Duration::from_secs(3), t.executor.wait())
        .await
        .is_err()
    {
        return Err(rpc("wait")(status));
    }
    let done = match t.record.clone() {
        Some(record) => match tokio::task::spawn_blocking(move || record.kill()).await {
            Ok(killed) => killed.to_string(),
            Err(e) => format!("killing the task failed: {e}"),
        },
        None => "the task had ended before it could be recorded".into(),
    };
    Err(AgentError::ExecutorLost {
        name: o.name.clone(),
        pid: t.executor.pid(),
        done,
    })
}

/// Stops a running task at once and both helpers (logmon after it wrote what the FIFOs hold).
async fn stop_running(t: &Running) {
    let mut exec = ExecutorClient::new(t.executor.channel());
    let _ = exec
        .shutdown(ShutdownRequest {
            signal: "SIGKILL".into(),
            grace_period: 0,
        })
        .await;
    let _ = exec.wait(WaitRequest {}).await;
    t.executor.kill().await;
    let _ = LogMonClient::new(t.logmon.channel())
        .stop(StopRequest {})
        .await;
    t.logmon.kill().await;
}

/// Writes one stream (`stdout` or `stderr`) of a task's logs to the same stream of `terminal`;
/// with `follow`, until interrupted.
pub async fn print_logs(
    log_dir: PathBuf,
    name: String,
    stream: &str,
    follow: bool,
    terminal: Arc<dyn Terminal>,
) {
    follow_stream(
        log_dir,
        format!("{name}.{stream}"),
        if follow { Follow::Forever } else { Follow::No },
        stream == "stdout",
        None,
        terminal,
    )
    .await;
}

/// Where each stream's files end now, so a new run of a task name prints only its own output.
pub fn log_ends(log_dir: &Path, name: &str) -> [Option<(u64, u64)>; 2] {
    ["stdout", "stderr"].map(|stream| {
        let base = format!("{name}.{stream}");
        let last = *indices(log_dir, &base).last()?;
        let len = std::fs::metadata(log_dir.join(format!("{base}.{last}")))
            .map(|m| m.len())
            .unwrap_or(0);
        Some((last, len))
    })
}

/// How far [`follow_stream`] reads.
#[derive(Clone)]
enum Follow {
    /// To the end of the files there now.
    No,
    /// Forever, checking every 50 ms.
    Forever,
    /// Until the token is cancelled, then to the end of the files there then: for the end of a
    /// task, once logmon's Stop has written everything.
    Until(tokio_util::sync::CancellationToken),
}

impl Follow {
    fn keeps_going(&self) -> bool {
        match self {
            Follow::No => false,
            Follow::Forever => true,
            Follow::Until(done) => !done.is_cancelled(),
        }
    }
}

/// Follows a task's log files (`<name>.stdout.N`, `<name>.stderr.N`) from `from` (see
/// [`log_ends`]), writing what is appended (checking every 50 ms) to `terminal` until `done` is
/// cancelled, then what is left in them.
async fn follow_logs(
    log_dir: PathBuf,
    name: String,
    from: [Option<(u64, u64)>; 2],
    done: tokio_util::sync::CancellationToken,
    terminal: Arc<dyn Terminal>,
) {
    let out = tokio::spawn(follow_stream(
        log_dir.clone(),
        format!("{name}.stdout"),
        Follow::Until(done.clone()),
        true,
        from[0],
        terminal.clone(),
    ));
    let err = tokio::spawn(follow_stream(
        log_dir,
        format!("{name}.stderr"),
        Follow::Until(done),
        false,
        from[1],
        terminal,
    ));
    let _ = out.await;
    let _ = err.await;
}

/// The indices of `<base>.<N>` log files in `dir`, ascending: logmon's own scan, so the agent
/// reads exactly the files the rotator writes (no directories, no `t.01` aliases).
pub(crate) fn indices(dir: &Path, base: &str) -> Vec<u64> {
    let mut v = crate::nomad::logmon::rotator::existing_indices(dir, base).unwrap_or_default();
    v.sort_unstable();
    v
}

async fn follow_stream(
    dir: PathBuf,
    base: String,
    mode: Follow,
    stdout: bool,
    from: Option<(u64, u64)>,
    terminal: Arc<dyn Terminal>,
) {
    use std::io::{Read, Seek};
    let mut current: Option<(u64, u64)> = from; // (index, offset)
    loop {
        // Decided before reading: what the files hold once `done` fired is read in full.
        let follow = mode.keeps_going();
        let all = indices(&dir, &base);
        let (index, offset) = match current {
            Some(c) => c,
            None => match all.first() {
                Some(first) => (*first, 0),
                None if follow => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => return,
            },
        };
        let path = dir.join(format!("{base}.{index}"));
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&path) {
            let _ = f.seek(std::io::SeekFrom::Start(offset));
            let _ = f.read_to_end(&mut buf);
        }
        if !buf.is_empty() {
            if stdout {
                terminal.stdout(&buf);
            } else {
                terminal.stderr(&buf);
            }
        }
        let offset = offset + buf.len() as u64;
        match all.iter().find(|i| **i > index) {
            Some(next) => current = Some((*next, 0)),
            None if follow => {
                current = Some((index, offset));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => return,
        }
    }
}

/// Whether a caller that finds the executor alive but not answering kills the task anyway.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unanswered {
    /// `status`, `exec`: report it and keep the state (the task may be fine).
    Keep,
    /// `stop`: kill it from the state file.
    Kill,
}

/// Reattaches to a detached task's executor. When the executor is gone (or does not answer
/// and `unanswered` says so), what the state file records is killed (the task's process group
/// and cgroups, the executor, logmon after its `Stop`) and only then is the state removed.
async fn reattach_or_stale(
    base: &Path,
    name: &str,
    unanswered: Unanswered,
) -> Result<(TaskState, Client), AgentError> {
    let state = load_state(base, name)?;
    let reason = match Client::reattach(&state.executor).await {
        Ok(c) => return Ok((state, c)),
        Err(e) => e.to_string(),
    };
    let alive = state.executor.process.is_some_and(|p| p.is_alive());
    if alive && unanswered == Unanswered::Keep {
        return Err(AgentError::Unreachable {
            name: name.to_string(),
            pid: state.executor.pid,
            addr: state.executor.addr.clone(),
            reason,
        });
    }
    let done = kill_from_state(&state).await;
    let _ = std::fs::remove_file(state_path(base, name));
    Err(AgentError::Stale {
        name: name.to_string(),
        pid: state.executor.pid,
        why: if alive {
            format!("does not answer ({reason})")
        } else {
            "is gone".into()
        },
        done,
    })
}

/// Kills a task whose executor cannot be asked to: the executor (if the recorded process still
/// runs), the task's process group and cgroups, then logmon once it wrote what the FIFOs hold.
async fn kill_from_state(state: &TaskState) -> String {
    let mut done = Vec::new();
    if record::kill_helper(&state.executor) {
        done.push(format!("executor pid {} killed", state.executor.pid));
    }
    match state.task.clone() {
        Some(task) => match tokio::task::spawn_blocking(move || task.kill()).await {
            Ok(killed) => done.push(killed.to_string()),
            Err(e) => done.push(format!("killing the task failed: {e}")),
        },
        None => done.push(format!(
            "task pid {} left alone (the state file records no start time to check it by)",
            state.pid
        )),
    }
    done.push(watch::stop_logmon(&state.logmon).await);
    done.join(", ")
}

/// A detached task's pids, memory and log directory.
pub async fn status(base: &Path, name: &str) -> Result<TaskStatus, AgentError> {
    let (state, executor) = reattach_or_stale(base, name, Unanswered::Keep).await?;
    let mut exec = ExecutorClient::new(executor.channel());
    let mut stats = exec
        .stats(StatsRequest { interval: 0 })
        .await
        .map_err(rpc("stats"))?
        .into_inner();
    let sample = stats.message().await.map_err(rpc("stats"))?;
    let usage = sample
        .and_then(|s| s.stats)
        .and_then(|s| s.agg_resource_usage);
    let rss = usage
        .as_ref()
        .and_then(|u| u.memory.as_ref())
        .map_or(0, |m| m.rss);
    Ok(TaskStatus {
        name: state.name,
        pid: state.pid,
        executor_pid: state.executor.pid,
        logmon_pid: state.logmon.pid,
        rss,
        log_dir: state.log_dir,
    })
}

/// Stops a detached task with its kill signal and timeout, then its helpers; returns its exit code.
pub async fn stop(base: &Path, name: &str) -> Result<i32, AgentError> {
    let (state, executor) = reattach_or_stale(base, name, Unanswered::Kill).await?;
    let mut exec = ExecutorClient::new(executor.channel());
    exec.shutdown(ShutdownRequest {
        signal: state.kill_signal.clone(),
        grace_period: state.kill_timeout_ns as i64,
    })
    .await
    .map_err(rpc("shutdown"))?;
    let code = exec
        .wait(WaitRequest {})
        .await
        .map_err(rpc("wait"))?
        .into_inner()
        .process
        .map_or(1, |p| p.exit_code);
    if let Ok(logmon) = Client::reattach(&state.logmon).await {
        let _ = LogMonClient::new(logmon.channel())
            .stop(StopRequest {})
            .await;
        logmon.kill().await;
    }
    executor.kill().await;
    let _ = std::fs::remove_file(state_path(base, name));
    Ok(code)
}

/// Runs `command` in a detached task's context with `input` as its stdin and its output written
/// to `terminal`; returns its exit code.
pub async fn exec(
    base: &Path,
    name: &str,
    command: Vec<String>,
    mut input: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    terminal: Arc<dyn Terminal>,
) -> Result<i32, AgentError> {
    use tokio::io::AsyncReadExt;
    let (_, executor) = reattach_or_stale(base, name, Unanswered::Keep).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let _ = tx
        .send(ExecTaskStreamingRequest {
            setup: Some(crate::proto::drivers::exec_task_streaming_request::Setup {
                task_id: name.to_string(),
                command,
                tty: false,
            }),
            ..Default::default()
        })
        .await;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = input.read(&mut buf).await.unwrap_or(0);
            let op = ExecTaskStreamingIoOperation {
                data: buf[..n].to_vec(),
                close: n == 0,
            };
            let msg = ExecTaskStreamingRequest {
                stdin: Some(op),
                ..Default::default()
            };
            if tx.send(msg).await.is_err() || n == 0 {
                break;
            }
        }
        // Keep the request stream open until the response ends.
        tx.closed().await;
    });
    let mut out = ExecutorClient::new(executor.channel())
        .exec_streaming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(rpc("exec"))?
        .into_inner();
    let mut code = 1;
    while let Some(m) = out.message().await.map_err(rpc("exec"))? {
        if let Some(o) = m.stdout {
            terminal.stdout(&o.data);
        }
        if let Some(e) = m.stderr {
            terminal.stderr(&e.data);
        }
        if m.exited {
            code = m.result.map_or(1, |r| r.exit_code);
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        // A directory where the file goes: the rename fails, the old state stays, no temp file.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), "x").unwrap();
        assert!(write_atomically(&blocked, b"new").is_err());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains(".tmp.")),
            "temp file left: {names:?}"
        );
    }

    #[test]
    fn state_files_of_older_versions_have_no_task_record() {
        let old = r#"{"name":"t","task_dir":"/d","log_dir":"/d/logs","pid":42,
            "kill_signal":"SIGINT","kill_timeout_ns":5,
            "executor":{"Protocol":"grpc","Network":"unix","Addr":"/s1","Pid":7},
            "logmon":{"Protocol":"grpc","Network":"unix","Addr":"/s2","Pid":8}}"#;
        let state: TaskState = crate::gojson::from_str(old).unwrap();
        assert!(state.task.is_none());
        assert!(!serde_json::to_string(&state).unwrap().contains("\"task\""));
    }
}
