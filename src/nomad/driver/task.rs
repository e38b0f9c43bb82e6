//! One task's life under the driver (spec nomad-driver-plugin.md §10-§12): its logmon and its
//! executor, this binary re-executed from /proc/self/exe in sessions of their own so they outlive
//! the driver and the agent, either as one process serving both (`goplugin task-helper <json>`,
//! plugin config `helpers = "combined"`) or as two (`goplugin logmon`, `goplugin executor
//! <json>`, `helpers = "separate"`, as Nomad's own client runs them);
//! the Launch a raw_exec driver of the agent's generation sends (nomad-versions.md §3); one waiter
//! that turns the executor's Wait (or its death) into the task's exit; a watchdog that replaces a
//! logmon that died (two-process form only: in the combined form logmon dies with the executor,
//! which ends the task); recovery from the handle state alone; and clean-up that leaves no process,
//! FIFO or cgroup behind, also when a start fails half-way.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::config::{env_list, ConfigError, Helpers, PluginConfig, TaskConfig};
use super::state::{LogConfig, StateError, TaskState, HANDLE_VERSION, STATE_VERSION};
use super::DRIVER_NAME;
use crate::nomad::executor::config::Compute;
use crate::nomad::executor::signals;
use crate::nomad::executor::spawn::Identity;
use crate::proto::drivers::{
    DriverTaskEvent, ExitResult, LinuxResources, Resources, TaskConfig as TaskConfigProto,
};
use crate::proto::executor::executor_client::ExecutorClient;
use crate::proto::executor::{LaunchRequest, ShutdownRequest, VersionRequest, WaitRequest};
use crate::proto::logmon::log_mon_client::LogMonClient;
use crate::proto::logmon::{StartRequest, StopRequest};
use crate::reattach::{ProcessIdentity, ReattachConfig};
use crate::{Client, ClientError};

/// Nomad's executor port range when the agent sent none (`ExecutorDefaultMin/MaxPort`).
pub const DEFAULT_PORTS: (u16, u16) = (14000, 14512);

/// What the agent told the driver in `SetConfig` (live instance only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentInfo {
    /// `client_min_port` / `client_max_port`, for the executor's `PLUGIN_MIN/MAX_PORT`.
    pub ports: (u16, u16),
    /// Node CPU capacity: the agent's topology, or worked out here for a 1.6 agent.
    pub compute: Compute,
    /// The agent sent a topology: Nomad 1.7 or later, whose raw_exec sends 1.7-style Launches.
    pub modern: bool,
}

impl Default for AgentInfo {
    fn default() -> Self {
        AgentInfo {
            ports: DEFAULT_PORTS,
            compute: super::fingerprint::host_compute(),
            modern: false,
        }
    }
}

/// Errors of a task's start, recovery or stop; the text becomes the task event.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The task config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `enabled = false`.
    #[error("{DRIVER_NAME} is disabled on this node (plugin config enabled = false)")]
    Disabled,
    /// The task's user does not exist.
    #[error("task user {user:?} cannot be used: {reason}")]
    User {
        /// The name.
        user: String,
        /// Why.
        reason: String,
    },
    /// The task's user is denied by the plugin config.
    #[error("task user {user:?} has {kind} {id}, which this node's {key} denies")]
    Denied {
        /// The name (`""`: the driver's own user).
        user: String,
        /// `uid` or `gid`.
        kind: &'static str,
        /// The id.
        id: u32,
        /// `denied_host_uids` or `denied_host_gids`.
        key: &'static str,
    },
    /// A helper could not be started.
    #[error("starting {helper}: {source}")]
    Helper {
        /// `executor`, `logmon` or `task-helper` (both in one process).
        helper: &'static str,
        /// What failed.
        source: ClientError,
    },
    /// A helper's RPC failed.
    #[error("{helper} {call}: {message}")]
    Rpc {
        /// `executor` or `logmon`.
        helper: &'static str,
        /// The RPC.
        call: &'static str,
        /// The status message.
        message: String,
    },
    /// A file-system step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The handle cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The handle is not one this driver wrote.
    #[error("task handle version {0} is not one this driver writes ({HANDLE_VERSION})")]
    HandleVersion(i32),
    /// The task's executor is gone, so the task cannot be recovered.
    #[error("cannot recover task {id}: its executor is gone ({reason}); the task's processes were killed")]
    ExecutorGone {
        /// Task id.
        id: String,
        /// Why reattaching failed.
        reason: String,
    },
}

impl TaskError {
    /// Whether the restart policy may try again (helpers and I/O), or the task is misconfigured.
    pub fn recoverable(&self) -> bool {
        matches!(
            self,
            TaskError::Helper { .. }
                | TaskError::Io { .. }
                | TaskError::Rpc {
                    helper: "logmon",
                    ..
                }
        )
    }
}

fn rpc(helper: &'static str, call: &'static str) -> impl FnOnce(tonic::Status) -> TaskError {
    move |s| TaskError::Rpc {
        helper,
        call,
        message: s.message().to_string(),
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exited {
    /// Exit code, signal, OOM.
    pub result: ExitResult,
    /// Why waiting failed ("" when it did not).
    pub err: String,
    /// When.
    pub at: SystemTime,
}

/// A running (or finished, not yet destroyed) task.
pub struct Task {
    /// What is persisted in the handle.
    pub state: TaskState,
    executor: Client,
    logmon: Mutex<Option<Client>>,
    fifo_readers: Mutex<Vec<OwnedFd>>,
    exit: watch::Receiver<Option<Exited>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.state.id)
            .field("pid", &self.state.task.pid)
            .finish()
    }
}

/// This binary re-executed as `args[0] args[1..]`, in a session of its own: it survives the
/// driver, and signals to the agent's or the driver's process group do not reach it.
fn helper_command(args: &[&str]) -> Result<Command, TaskError> {
    let mut cmd = crate::reexec::command(args[0]).map_err(|source| TaskError::Io {
        what: "finding this binary at",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    cmd.args(&args[1..]);
    let nofile = super::original_nofile();
    // SAFETY: setsid and setrlimit are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            crate::inherit::cloexec_from_3();
            nix::unistd::setsid()?;
            if let Some(soft) = nofile {
                use nix::sys::resource::{getrlimit, setrlimit, Resource};
                let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

fn logmon_start_request(logs: &LogConfig, name: &str) -> StartRequest {
    StartRequest {
        log_dir: logs.log_dir.clone(),
        stdout_file_name: format!("{name}.stdout"),
        stderr_file_name: format!("{name}.stderr"),
        max_files: logs.max_files,
        max_file_size_mb: logs.max_file_size_mb,
        stdout_fifo: logs.stdout_fifo.clone(),
        stderr_fifo: logs.stderr_fifo.clone(),
    }
}

async fn start_logmon(logs: &LogConfig, name: &str) -> Result<Client, TaskError> {
    let client = Client::builder(helper_command(&["logmon"])?, crate::nomad::handshake())
        .name("logmon")
        .stdin(Stdio::null())
        // The helper outlives this handle (detached runs, driver restarts): never killed on drop.
        .kill_on_drop(false)
        .start()
        .await
        .map_err(|source| TaskError::Helper {
            helper: "logmon",
            source,
        })?;
    let started = LogMonClient::new(client.channel())
        .start(logmon_start_request(logs, name))
        .await;
    if let Err(s) = started {
        client.kill().await;
        return Err(rpc("logmon", "Start")(s));
    }
    Ok(client)
}

/// Read ends the driver holds on the FIFOs (never read from): while logmon is replaced the task's
/// writes wait in the pipe instead of failing with EPIPE.
fn hold_fifos(logs: &LogConfig) -> Vec<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    [&logs.stdout_fifo, &logs.stderr_fifo]
        .into_iter()
        .filter_map(|p| {
            open(
                Path::new(p),
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| tracing::warn!(fifo = %p, error = %e, "cannot hold the FIFO open"))
            .ok()
        })
        .collect()
}

/// Removes the socket file of a helper that is gone (a SIGKILLed process leaves it behind).
fn remove_dead_socket(cfg: &ReattachConfig) {
    let alive = cfg.process.is_some_and(|p| p.is_alive());
    if !alive && cfg.network.starts_with("unix") && cfg.addr.starts_with('/') {
        let _ = std::fs::remove_file(&cfg.addr);
    }
}

/// Where a replacement logmon's reattach config is kept: the handle the agent persisted names
/// only the first logmon, and a driver that restarts must find the one that runs now.
fn logmon_record(state: &TaskState) -> PathBuf {
    Path::new(&state.alloc_dir)
        .join(&state.name)
        .join(".goplugin_exec.logmon.json")
}

fn save_logmon_record(state: &TaskState, cfg: &ReattachConfig) {
    let path = logmon_record(state);
    match serde_json::to_vec(cfg) {
        Ok(json) => {
            if let Err(e) = std::fs::write(&path, json) {
                tracing::warn!(path = %path.display(), error = %e, "cannot record the new logmon");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode the new logmon's reattach config"),
    }
}

/// The logmon to reattach to: a recorded replacement, else the handle's.
fn logmon_candidates(state: &TaskState) -> Vec<ReattachConfig> {
    let recorded = std::fs::read_to_string(logmon_record(state))
        .ok()
        .and_then(|j| ReattachConfig::from_json(&j).ok());
    recorded.into_iter().chain(state.logmon.clone()).collect()
}

fn remove_fifos(logs: Option<&LogConfig>) {
    if let Some(l) = logs {
        let _ = std::fs::remove_file(&l.stdout_fifo);
        let _ = std::fs::remove_file(&l.stderr_fifo);
    }
}

fn log_config(task: &TaskConfigProto, cfg: &TaskConfig) -> Option<LogConfig> {
    if task.stdout_path == "/dev/null" {
        return None;
    }
    let log_dir = Path::new(&task.alloc_dir).join("alloc").join("logs");
    let fifo = |given: &str, stream: &str| {
        if given.is_empty() {
            log_dir
                .join(format!(".{}.{stream}.fifo", task.name))
                .display()
                .to_string()
        } else {
            given.to_string()
        }
    };
    Some(LogConfig {
        log_dir: log_dir.display().to_string(),
        stdout_fifo: fifo(&task.stdout_path, "stdout"),
        stderr_fifo: fifo(&task.stderr_path, "stderr"),
        max_files: cfg.max_files,
        max_file_size_mb: cfg.max_file_size_mb,
    })
}

/// Refuses a task whose user does not exist or has an id the plugin config denies (the driver's
/// own user when the task names none, as raw_exec).
fn check_user(user: &str, plugin: &PluginConfig) -> Result<(), TaskError> {
    let (uid, gids) = if user.is_empty() {
        (nix::unistd::geteuid(), vec![nix::unistd::getegid()])
    } else {
        let id = Identity::lookup(user).map_err(|e| TaskError::User {
            user: user.to_string(),
            reason: match e {
                crate::nomad::executor::spawn::SpawnError::User { reason, .. } => reason,
            },
        })?;
        (id.uid, id.groups)
    };
    if plugin.denied_host_uids.contains(uid.as_raw()) {
        return Err(TaskError::Denied {
            user: user.to_string(),
            kind: "uid",
            id: uid.as_raw(),
            key: "denied_host_uids",
        });
    }
    if let Some(g) = gids
        .iter()
        .find(|g| plugin.denied_host_gids.contains(g.as_raw()))
    {
        return Err(TaskError::Denied {
            user: user.to_string(),
            kind: "gid",
            id: g.as_raw(),
            key: "denied_host_gids",
        });
    }
    Ok(())
}

fn executor_json(task_dir: &Path, agent: &AgentInfo, isolated: bool) -> String {
    let log_file = task_dir.join("executor.out");
    let v = if agent.modern {
        serde_json::json!({
            "LogFile": log_file, "LogLevel": "debug", "FSIsolation": isolated,
            "Compute": {"tc": agent.compute.total_mhz, "nc": agent.compute.cores},
        })
    } else {
        serde_json::json!({
            "LogFile": log_file, "LogLevel": "debug", "FSIsolation": isolated,
            "CpuTotalTicks": agent.compute.total_mhz,
        })
    };
    v.to_string()
}

/// The Launch a raw_exec of the agent's generation sends (nomad-versions.md §3): 1.6 sends no
/// resources and asks for the executor's basic freezer cgroup when it runs as root; 1.7+ sends the
/// resources, whose `cpuset_cgroup` makes the executor join the cgroups the agent prepared.
pub fn launch_request(
    task: &TaskConfigProto,
    cfg: &TaskConfig,
    plugin: &PluginConfig,
    agent: &AgentInfo,
    logs: Option<&LogConfig>,
) -> LaunchRequest {
    let mut denied = plugin.denied_envvars.clone();
    denied.extend(cfg.denied_envvars.iter().cloned());
    let overrides = !cfg.cgroup_v1_override.is_empty() || !cfg.cgroup_v2_override.is_empty();
    let root = nix::unistd::geteuid().is_root();
    let resources = if plugin.no_cgroups {
        None
    } else if agent.modern {
        task.resources.clone()
    } else if overrides {
        Some(Resources {
            linux_resources: Some(LinuxResources::default()),
            ..Default::default()
        })
    } else {
        None
    };
    let (stdout_path, stderr_path) = match logs {
        Some(l) => (l.stdout_fifo.clone(), l.stderr_fifo.clone()),
        None => ("/dev/null".into(), "/dev/null".into()),
    };
    #[allow(deprecated)]
    LaunchRequest {
        cmd: cfg.command.clone(),
        args: cfg.args.clone(),
        resources,
        stdout_path,
        stderr_path,
        env: env_list(&task.env, &denied),
        user: task.user.clone(),
        task_dir: Path::new(&task.alloc_dir)
            .join(&task.name)
            .display()
            .to_string(),
        basic_process_cgroup: !agent.modern && !plugin.no_cgroups && root && !overrides,
        network_isolation: task.network_isolation_spec.clone(),
        cgroup_v2_override: cfg.cgroup_v2_override.clone(),
        cgroup_v1_override: cfg.cgroup_v1_override.iter().cloned().collect(),
        oom_score_adj: cfg.oom_score_adj,
        work_dir: cfg.work_dir.clone(),
        ..Default::default()
    }
}

/// What a failed start must undo.
struct Partial {
    logs: Option<LogConfig>,
    logmon: Option<Client>,
    executor: Option<Client>,
}

impl Partial {
    async fn undo(self) {
        if let Some(e) = self.executor {
            e.kill().await;
        }
        if let Some(l) = self.logmon {
            let _ = LogMonClient::new(l.channel()).stop(StopRequest {}).await;
            l.kill().await;
        }
        remove_fifos(self.logs.as_ref());
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Starts a task: checks, logmon, executor, Launch. On any failure nothing it started is left.
pub async fn start(
    task: &TaskConfigProto,
    plugin: &PluginConfig,
    agent: &AgentInfo,
    events: broadcast::Sender<DriverTaskEvent>,
) -> Result<Arc<Task>, TaskError> {
    if !plugin.enabled {
        return Err(TaskError::Disabled);
    }
    let cfg = TaskConfig::decode(&task.msgpack_driver_config)?;
    check_user(&task.user, plugin)?;
    let task_dir = Path::new(&task.alloc_dir).join(&task.name);
    let logs = log_config(task, &cfg);
    let mut partial = Partial {
        logs: logs.clone(),
        logmon: None,
        executor: None,
    };
    if let Some(logs) = &partial.logs {
        std::fs::create_dir_all(&logs.log_dir).map_err(|source| TaskError::Io {
            what: "creating the log directory",
            path: PathBuf::from(&logs.log_dir),
            source,
        })?;
    }
    let started = match plugin.helpers {
        Helpers::Combined => {
            start_combined(task, &cfg, plugin, agent, &task_dir, &mut partial).await
        }
        Helpers::Separate => {
            start_helpers(task, &cfg, plugin, agent, &task_dir, &mut partial).await
        }
    };
    match started {
        Ok((executor, pid, readers)) => {
            let logmon = partial.logmon.take();
            let state = TaskState {
                driver: DRIVER_NAME.into(),
                version: STATE_VERSION,
                id: task.id.clone(),
                name: task.name.clone(),
                alloc_id: task.alloc_id.clone(),
                alloc_dir: task.alloc_dir.clone(),
                user: task.user.clone(),
                config: cfg,
                logs,
                helpers: plugin.helpers,
                executor: executor.reattach_config(),
                logmon: logmon.as_ref().map(Client::reattach_config),
                task: ProcessIdentity::of(pid).unwrap_or(ProcessIdentity {
                    pid,
                    start_ticks: 0,
                }),
                started_at_unix_nanos: now_nanos(),
            };
            Ok(Task::assemble(state, executor, logmon, readers, events))
        }
        Err(e) => {
            partial.undo().await;
            Err(e)
        }
    }
}

async fn start_helpers(
    task: &TaskConfigProto,
    cfg: &TaskConfig,
    plugin: &PluginConfig,
    agent: &AgentInfo,
    task_dir: &Path,
    partial: &mut Partial,
) -> Result<(Client, u32, Vec<OwnedFd>), TaskError> {
    let mut readers = Vec::new();
    if let Some(logs) = &partial.logs {
        partial.logmon = Some(start_logmon(logs, &task.name).await?);
        readers = hold_fifos(logs);
    }
    let json = executor_json(task_dir, agent, super::isolation::isolated(cfg, plugin)?);
    let executor = Client::builder(
        helper_command(&["executor", &json])?,
        crate::nomad::handshake(),
    )
    .name("executor")
    .stdin(Stdio::null())
    // The helper outlives this handle (driver restarts recover it): never killed on drop.
    .kill_on_drop(false)
    .port_range(agent.ports.0, agent.ports.1)
    .start()
    .await
    .map_err(|source| TaskError::Helper {
        helper: "executor",
        source,
    })?;
    // Until Launch succeeds a failure must stop it too.
    partial.executor = Some(executor.clone());
    let pid = launch(&executor, task, cfg, plugin, agent, partial).await?;
    Ok((executor, pid, readers))
}

/// Launch on `executor`; the task's pid. Clears `partial.executor` once the task runs.
async fn launch(
    executor: &Client,
    task: &TaskConfigProto,
    cfg: &TaskConfig,
    plugin: &PluginConfig,
    agent: &AgentInfo,
    partial: &mut Partial,
) -> Result<u32, TaskError> {
    let mut req = launch_request(task, cfg, plugin, agent, partial.logs.as_ref());
    if super::isolation::isolated(cfg, plugin)? {
        super::isolation::apply(&mut req, task, cfg, plugin)?;
    }
    let launched = ExecutorClient::new(executor.channel())
        .launch(req)
        .await
        .map_err(rpc("executor", "Launch"))?;
    partial.executor = None;
    Ok(launched
        .into_inner()
        .process
        .map_or(0, |p| p.pid.max(0) as u32))
}

/// The combined form: one `goplugin task-helper <json>` process, its LogMon started on the FIFOs,
/// then Launch on its Executor. No FIFO read ends are held: no other logmon ever replaces this
/// one, since its death is the executor's and ends the task.
async fn start_combined(
    task: &TaskConfigProto,
    cfg: &TaskConfig,
    plugin: &PluginConfig,
    agent: &AgentInfo,
    task_dir: &Path,
    partial: &mut Partial,
) -> Result<(Client, u32, Vec<OwnedFd>), TaskError> {
    let json = executor_json(task_dir, agent, super::isolation::isolated(cfg, plugin)?);
    let entry = crate::nomad::combined::ENTRY_NAME;
    let helper = Client::builder(helper_command(&[entry, &json])?, crate::nomad::handshake())
        .name(entry)
        .stdin(Stdio::null())
        // The helper outlives this handle (detached runs, driver restarts): never killed on drop.
        .kill_on_drop(false)
        .port_range(agent.ports.0, agent.ports.1)
        .start()
        .await
        .map_err(|source| TaskError::Helper {
            helper: entry,
            source,
        })?;
    partial.executor = Some(helper.clone());
    if let Some(logs) = &partial.logs {
        LogMonClient::new(helper.channel())
            .start(logmon_start_request(logs, &task.name))
            .await
            .map_err(rpc("logmon", "Start"))?;
    }
    let pid = launch(&helper, task, cfg, plugin, agent, partial).await?;
    Ok((helper, pid, Vec::new()))
}

/// Finds a task again from its handle state: reattaches to its executor (which must answer
/// `Version`) and to its logmon, or starts another logmon on the same FIFOs. When the executor is
/// gone the task's leftovers are killed and removed and the recovery fails.
pub async fn recover(
    version: i32,
    driver_state: &[u8],
    events: broadcast::Sender<DriverTaskEvent>,
) -> Result<Arc<Task>, TaskError> {
    if version != HANDLE_VERSION {
        return Err(TaskError::HandleVersion(version));
    }
    let state = TaskState::decode(driver_state)?;
    let executor = match reattach_executor(&state.executor).await {
        Ok(c) => c,
        Err(reason) => {
            let task = state.task;
            let _ = tokio::task::spawn_blocking(move || reap_orphans(&task)).await;
            remove_dead_socket(&state.executor);
            for l in logmon_candidates(&state) {
                if let Ok(c) = Client::reattach(&l).await {
                    c.kill().await;
                }
                remove_dead_socket(&l);
            }
            let _ = std::fs::remove_file(logmon_record(&state));
            remove_fifos(state.logs.as_ref());
            return Err(TaskError::ExecutorGone {
                id: state.id.clone(),
                reason,
            });
        }
    };
    let mut logmon = None;
    let separate = state.helpers == Helpers::Separate;
    if let (Some(logs), true) = (&state.logs, separate) {
        let mut found = None;
        for candidate in logmon_candidates(&state) {
            found = reattach_logmon(&candidate).await;
            if found.is_some() {
                break;
            }
            remove_dead_socket(&candidate);
        }
        logmon = match found {
            Some(c) => Some(c),
            None => match start_logmon(logs, &state.name).await {
                Ok(c) => {
                    save_logmon_record(&state, &c.reattach_config());
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(task = %state.id, error = %e, "no logmon for the recovered task; the watchdog retries");
                    None
                }
            },
        };
    }
    let readers = match &state.logs {
        Some(logs) if separate => hold_fifos(logs),
        _ => Vec::new(),
    };
    Ok(Task::assemble(state, executor, logmon, readers, events))
}

async fn reattach_executor(cfg: &ReattachConfig) -> Result<Client, String> {
    let client = Client::reattach(cfg).await.map_err(|e| e.to_string())?;
    match ExecutorClient::new(client.channel())
        .version(VersionRequest {})
        .await
    {
        Ok(_) => Ok(client),
        Err(s) => Err(format!("it does not answer Version: {}", s.message())),
    }
}

async fn reattach_logmon(cfg: &ReattachConfig) -> Option<Client> {
    let client = Client::reattach(cfg).await.ok()?;
    client.ping().await.ok()?;
    Some(client)
}

impl Task {
    fn assemble(
        state: TaskState,
        executor: Client,
        logmon: Option<Client>,
        readers: Vec<OwnedFd>,
        events: broadcast::Sender<DriverTaskEvent>,
    ) -> Arc<Task> {
        let (tx, rx) = watch::channel(None);
        let task = Arc::new(Task {
            state,
            executor,
            logmon: Mutex::new(logmon),
            fifo_readers: Mutex::new(readers),
            exit: rx,
            stop: CancellationToken::new(),
        });
        tokio::spawn(wait_for_exit(
            task.executor.clone(),
            task.state.helpers,
            task.state.task,
            task.state.id.clone(),
            tx,
        ));
        if task.state.logs.is_some() && task.state.helpers == Helpers::Separate {
            tokio::spawn(watch_logmon(Arc::downgrade(&task), events));
        }
        task
    }

    /// The executor's gRPC client.
    pub fn executor(&self) -> ExecutorClient<tonic::transport::Channel> {
        ExecutorClient::new(self.executor.channel())
    }

    /// The executor's pid.
    pub fn executor_pid(&self) -> u32 {
        self.executor.pid()
    }

    /// logmon's pid, if one runs (the executor's in the combined form).
    pub fn logmon_pid(&self) -> Option<u32> {
        match self.state.helpers {
            Helpers::Combined => self.state.logs.as_ref().map(|_| self.executor.pid()),
            Helpers::Separate => self.lock_logmon().as_ref().map(Client::pid),
        }
    }

    fn lock_logmon(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        self.logmon.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the task ended, if it did.
    pub fn exited(&self) -> Option<Exited> {
        self.exit.borrow().clone()
    }

    /// Waits for the end of the task.
    pub async fn wait(&self) -> Exited {
        let mut rx = self.exit.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return executor_lost("the waiter stopped".into());
            }
        }
    }

    /// `StopTask`: the executor's Shutdown (signal, then SIGKILL after `timeout`), then the end.
    pub async fn stop(&self, signal: &str, timeout: Duration) -> Result<(), TaskError> {
        if self.exited().is_none() && !self.executor.exited() {
            let sent = self
                .executor()
                .shutdown(ShutdownRequest {
                    signal: signal.to_string(),
                    grace_period: timeout.as_nanos().min(i64::MAX as u128) as i64,
                })
                .await;
            if let Err(s) = sent {
                if !self.executor.exited() {
                    return Err(rpc("executor", "Shutdown")(s));
                }
            }
        }
        let _ = tokio::time::timeout(timeout + Duration::from_secs(20), self.wait()).await;
        Ok(())
    }

    /// `DestroyTask`: kills what is left of the task, its executor and logmon, and removes the
    /// FIFOs.
    pub async fn destroy(&self) {
        self.stop.cancel();
        if self.exited().is_none() && !self.executor.exited() {
            let _ = self
                .executor()
                .shutdown(ShutdownRequest {
                    signal: "SIGKILL".into(),
                    grace_period: 0,
                })
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), self.wait()).await;
        }
        if self.state.helpers == Helpers::Combined
            && self.state.logs.is_some()
            && !self.executor.exited()
        {
            // Drains what the task wrote last into the files before the process goes.
            let mut logmon = LogMonClient::new(self.executor.channel());
            let _ = tokio::time::timeout(Duration::from_secs(5), logmon.stop(StopRequest {})).await;
        }
        self.executor.kill().await;
        let logmon = self.lock_logmon().take();
        if let Some(l) = logmon {
            let _ = LogMonClient::new(l.channel()).stop(StopRequest {}).await;
            l.kill().await;
        }
        self.fifo_readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let _ = std::fs::remove_file(logmon_record(&self.state));
        remove_fifos(self.state.logs.as_ref());
    }

    /// Lets go of the helpers without stopping them (the driver is shutting down).
    pub fn detach(&self) {
        self.stop.cancel();
    }
}

fn executor_lost(reason: String) -> Exited {
    Exited {
        result: ExitResult {
            exit_code: -1,
            signal: 0,
            oom_killed: false,
        },
        err: reason,
        at: SystemTime::now(),
    }
}

/// The task's end: the executor's Wait, or, when the executor dies first, an exit with code -1
/// (not 0: hashicorp/nomad#25453) after killing what the executor left running.
async fn wait_for_exit(
    executor: Client,
    helpers: Helpers,
    task: ProcessIdentity,
    id: String,
    tx: watch::Sender<Option<Exited>>,
) {
    let mut exec = ExecutorClient::new(executor.channel());
    let exited = loop {
        let outcome = tokio::select! {
            r = exec.wait(WaitRequest {}) => r,
            _ = executor.wait() => Err(tonic::Status::unavailable("executor exited")),
        };
        match outcome {
            Ok(r) => {
                let p = r.into_inner().process.unwrap_or_default();
                break Exited {
                    result: ExitResult {
                        exit_code: p.exit_code,
                        signal: p.signal,
                        oom_killed: p.oom_killed,
                    },
                    err: String::new(),
                    at: SystemTime::now(),
                };
            }
            Err(status) => {
                // A failed call with the executor still alive is retried; a dead one ends the task.
                if tokio::time::timeout(Duration::from_secs(3), executor.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(task = %id, error = %status.message(), "executor Wait failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let _ = tokio::task::spawn_blocking(move || reap_orphans(&task)).await;
                remove_dead_socket(&executor.reattach_config());
                let what = match helpers {
                    Helpers::Combined => "task helper (executor and logmon)",
                    Helpers::Separate => "executor",
                };
                tracing::error!(task = %id, executor = executor.pid(), "{what} exited while the task ran; task processes killed");
                break executor_lost(format!(
                    "{what} (pid {}) exited unexpectedly; the task's processes were killed",
                    executor.pid()
                ));
            }
        }
    };
    let _ = tx.send(Some(exited));
}

/// Replaces a logmon that exited while the task runs, on the same FIFOs (the driver's own read
/// ends keep the task's writes waiting meanwhile), and tells the agent through a task event.
async fn watch_logmon(task: std::sync::Weak<Task>, events: broadcast::Sender<DriverTaskEvent>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(t) = task.upgrade() else { return };
        let current = t.lock_logmon().clone();
        let stop = t.stop.clone();
        let exit = t.exit.clone();
        let (logs, name) = (t.state.logs.clone(), t.state.name.clone());
        drop(t);
        let Some(logs) = logs else { return };
        if let Some(c) = current {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = c.wait() => {}
            }
            remove_dead_socket(&c.reattach_config());
        }
        if stop.is_cancelled() || exit.borrow().is_some() {
            return;
        }
        match start_logmon(&logs, &name).await {
            Ok(new) => {
                let Some(t) = task.upgrade() else {
                    new.kill().await;
                    return;
                };
                if stop.is_cancelled() {
                    new.kill().await;
                    return;
                }
                let message = format!(
                    "logmon exited; started another (pid {}) on the same FIFOs",
                    new.pid()
                );
                tracing::warn!(task = %t.state.id, "{message}");
                save_logmon_record(&t.state, &new.reattach_config());
                *t.lock_logmon() = Some(new);
                let _ = events.send(event(&t.state, &message));
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                tracing::warn!(error = %e, "restarting logmon failed; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A driver task event about `state`'s task.
pub fn event(state: &TaskState, message: &str) -> DriverTaskEvent {
    DriverTaskEvent {
        task_id: state.id.clone(),
        alloc_id: state.alloc_id.clone(),
        task_name: state.name.clone(),
        timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
        message: message.to_string(),
        annotations: Default::default(),
    }
}

/// Kills a task whose executor died: its process group, and every process in the cgroups the
/// executor made for it (Nomad 1.6's `/nomad/<uuid>` freezer, goplugin's own `/goplugin/<pid>`),
/// which are then removed. The agent's own task cgroups (1.7+) are the agent's to clean.
pub fn reap_orphans(task: &ProcessIdentity) {
    if task.start_ticks == 0 || task.check(task.pid).is_err() {
        return;
    }
    let cgroups = executor_made_cgroups(task.pid);
    let _ = signals::kill_group(task.pid, nix::sys::signal::Signal::SIGKILL);
    let _ = signals::kill_pid(task.pid, nix::sys::signal::Signal::SIGKILL);
    if !cgroups.is_empty() {
        let mode = crate::nomad::executor::cgroups::detect_mode();
        let cg = crate::nomad::executor::cgroups::TaskCgroup::adopted(mode, cgroups);
        cg.kill_all();
        if let Err(e) = cg.remove() {
            tracing::warn!("{e}");
        }
    }
}

/// The (controller, directory) pairs of `pid`'s cgroups that an executor made.
fn executor_made_cgroups(pid: u32) -> Vec<(String, PathBuf)> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let root = Path::new(crate::nomad::executor::cgroups::CGROUP_ROOT);
    let mut dirs =
        crate::nomad::executor::cgroups::dirs_in_proc_cgroup(&raw, root, is_executor_made);
    dirs.retain(|(_, d)| d.join("cgroup.procs").exists());
    dirs
}

/// `/nomad/<uuid>` (1.6 basic cgroup), `/goplugin/<pid>`, `/goplugin.slice/<pid>.scope`.
fn is_executor_made(path: &str) -> bool {
    use crate::nomad::executor::containment::{NOMAD_PARENT, OWN_PARENT};
    let under = |parent: &str| {
        path.strip_prefix('/')?
            .strip_prefix(parent)?
            .strip_prefix('/')
    };
    if let Some(rest) = under(NOMAD_PARENT) {
        return rest.len() == 36 && rest.chars().filter(|c| *c == '-').count() == 4;
    }
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if let Some(rest) = under(OWN_PARENT) {
        return digits(rest);
    }
    under(&format!("{OWN_PARENT}.slice"))
        .and_then(|r| r.strip_suffix(".scope"))
        .is_some_and(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::drivers::AllocatedTaskResources;

    #[test]
    fn executor_made_cgroups_are_recognised() {
        assert!(is_executor_made(
            "/nomad/0b7a51f4-3c2e-4d8e-9a51-3c2e4d8e9a51"
        ));
        assert!(is_executor_made("/goplugin/123"));
        assert!(is_executor_made("/goplugin.slice/123.scope"));
        assert!(!is_executor_made("/nomad/alloc.task"));
        assert!(!is_executor_made("/nomad/share"));
        assert!(!is_executor_made("/"));
    }

    fn task_proto() -> TaskConfigProto {
        TaskConfigProto {
            id: "a/t/1".into(),
            name: "t".into(),
            alloc_dir: "/allocs/a".into(),
            env: [
                ("B".to_string(), "2".to_string()),
                ("TOKEN".into(), "x".into()),
            ]
            .into_iter()
            .collect(),
            resources: Some(Resources {
                allocated_resources: Some(AllocatedTaskResources::default()),
                linux_resources: Some(LinuxResources {
                    cpuset_cgroup: "/sys/fs/cgroup/cpuset/nomad/share".into(),
                    ..Default::default()
                }),
                ports: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    #[allow(deprecated)]
    fn launch_follows_the_agents_generation() {
        let cfg = TaskConfig {
            command: "sleep".into(),
            denied_envvars: vec!["TOK*".into()],
            ..Default::default()
        };
        let plugin = PluginConfig::default();
        let old = AgentInfo {
            modern: false,
            ..AgentInfo::default()
        };
        let new = AgentInfo {
            modern: true,
            ..AgentInfo::default()
        };
        let t = task_proto();
        let r16 = launch_request(&t, &cfg, &plugin, &old, None);
        assert!(r16.resources.is_none(), "1.6 raw_exec sends no resources");
        assert_eq!(r16.basic_process_cgroup, nix::unistd::geteuid().is_root());
        assert_eq!(r16.env, vec!["B=2"]);
        assert_eq!(r16.task_dir, "/allocs/a/t");
        assert_eq!(r16.stdout_path, "/dev/null");
        let r17 = launch_request(&t, &cfg, &plugin, &new, None);
        assert!(!r17.basic_process_cgroup);
        assert_eq!(
            r17.resources
                .unwrap()
                .linux_resources
                .unwrap()
                .cpuset_cgroup,
            "/sys/fs/cgroup/cpuset/nomad/share"
        );
        let off = PluginConfig {
            no_cgroups: true,
            ..Default::default()
        };
        let r = launch_request(&t, &cfg, &off, &new, None);
        assert!(r.resources.is_none() && !r.basic_process_cgroup);
    }

    #[test]
    fn executor_json_per_generation() {
        let mut a = AgentInfo {
            ports: DEFAULT_PORTS,
            compute: Compute {
                total_mhz: 5200,
                cores: 2,
            },
            modern: false,
        };
        let j: serde_json::Value =
            serde_json::from_str(&executor_json(Path::new("/a/t"), &a, false)).unwrap();
        assert_eq!(j["CpuTotalTicks"], 5200);
        assert_eq!(j["LogFile"], "/a/t/executor.out");
        a.modern = true;
        let j: serde_json::Value =
            serde_json::from_str(&executor_json(Path::new("/a/t"), &a, false)).unwrap();
        assert_eq!(j["Compute"]["tc"], 5200);
        assert_eq!(j["Compute"]["nc"], 2);
        assert!(j.get("CpuTotalTicks").is_none());
    }

    #[test]
    fn denied_users_are_refused() {
        let plugin = PluginConfig {
            denied_host_uids: super::super::config::IdRanges(vec![(0, 0)]),
            ..Default::default()
        };
        if nix::unistd::geteuid().is_root() {
            let e = check_user("", &plugin).unwrap_err().to_string();
            assert!(e.contains("uid 0") && e.contains("denied_host_uids"), "{e}");
        }
        assert!(check_user("nobody", &plugin).is_ok());
        let e = check_user("no-such-user-x", &plugin)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-user-x") && e.contains("no such user"),
            "{e}"
        );
    }
}
