//! `hashicorp.nomad.plugins.executor.proto.Executor` for the universal executor (spec
//! nomad-executor-logmon.md §4, §5): one task per executor process, launched once, waited on,
//! signalled, measured and shut down with Nomad's semantics.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::cgroups::{self, CgroupMode, TaskCgroup};
use super::config::Compute;
use super::containment::{self, Host};
use super::exec_streaming;
use super::isolation::cgroup::CgroupStats;
use super::isolation::container;
use super::isolation::prepare;
use super::procstats::StatsTracker;
use super::signals::{kill_group, kill_pid, parse_shutdown_signal};
use super::spawn::Identity;
use super::task::{resolve_exec, running_state, task_command, watch_exit, Ended, Task};
use super::{lookup, EXECUTOR_VERSION};
use crate::proto::drivers::{ExecTaskStreamingRequest, ExecTaskStreamingResponse};
use crate::proto::executor::executor_server::Executor;
use crate::proto::executor::*;

/// Bytes of combined output `Exec` returns (Nomad's `CheckBufSize`).
const EXEC_OUTPUT_LIMIT: usize = 4096;
/// How long `Shutdown` waits for the process after the final SIGKILL.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// The executor service.
#[derive(Clone, Default)]
pub struct ExecutorService {
    compute: Compute,
    /// `Some(legacy)` for the isolated executor (`FSIsolation: true`); `legacy` when a Nomad
    /// 1.6 agent sent the Launch.
    isolation: Option<bool>,
    task: Arc<Mutex<Option<Arc<Task>>>>,
    /// Held for the whole of a Launch, so two racing Launches cannot both spawn.
    launching: Arc<tokio::sync::Mutex<()>>,
}

impl ExecutorService {
    /// An executor for a node with this CPU capacity (argv `Compute`).
    pub fn new(compute: Compute) -> Self {
        Self {
            compute,
            isolation: None,
            task: Arc::default(),
            launching: Arc::default(),
        }
    }

    /// The isolated executor (`FSIsolation: true`); `legacy` when the argv came from Nomad 1.6
    /// (`CpuTotalTicks`).
    pub fn isolated(compute: Compute, legacy: bool) -> Self {
        Self {
            isolation: Some(legacy),
            ..Self::new(compute)
        }
    }

    /// Removes the task cgroups this executor created, if nothing runs in them any more: for
    /// when the executor ends (the host's `Kill`) without a `Shutdown` of the task. A task still
    /// running keeps its cgroups; a later executor removes them once it is gone.
    pub fn cleanup(&self) {
        if let Some(task) = self.current() {
            if let Some(cg) = task.cgroup.as_ref().filter(|cg| cg.is_owned()) {
                // A Nomad 1.7+ isolated task dies with its executor (parent-death signal).
                if task
                    .container
                    .as_ref()
                    .is_some_and(|c| c.process.parent_death_kill)
                {
                    cg.kill_all();
                }
                if cg.pids().is_empty() {
                    let _ = cg.remove();
                }
            }
        }
    }

    /// Nomad 1.7+'s isolated executor (`catchSignals`): SIGTERM or SIGINT to the executor is a
    /// `Shutdown("SIGINT", 0)` of the task (the executor keeps serving); SIGHUP and SIGQUIT are
    /// passed on to the task's init. Runs until the executor ends.
    pub async fn catch_signals(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::quit()),
        ) else {
            tracing::warn!("cannot catch the executor's signals; SIGTERM ends it without the task");
            return;
        };
        loop {
            let forward = tokio::select! {
                _ = term.recv() => None,
                _ = int.recv() => None,
                _ = hup.recv() => Some(Signal::SIGHUP),
                _ = quit.recv() => Some(Signal::SIGQUIT),
            };
            match forward {
                Some(sig) => {
                    if let Some(task) = self.current().filter(|t| t.exited().is_none()) {
                        let _ = kill_pid(task.pid, sig);
                    }
                }
                None => {
                    tracing::info!("signal to the executor: shutting the task down");
                    let req = Request::new(ShutdownRequest {
                        signal: "SIGINT".into(),
                        grace_period: 0,
                    });
                    if let Err(e) = Executor::shutdown(&self, req).await {
                        tracing::warn!(error = %e.message(), "shutdown on signal");
                    }
                }
            }
        }
    }

    fn current(&self) -> Option<Arc<Task>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ExecutorService {
    /// Launch of the isolated executor: the container is built and entered by its stage; the
    /// task is its pid 1 (or a host-PID-namespace process with `pid_mode = "host"`).
    async fn launch_isolated(
        &self,
        req: LaunchRequest,
        legacy: bool,
    ) -> Result<Response<LaunchResponse>, Status> {
        // Everything is checked before the outputs (logmon's FIFOs) are opened.
        let prepared = prepare::prepare(&req, legacy).map_err(unknown)?;
        let stdout = open_output(&req.stdout_path).await?;
        let stderr = open_output(&req.stderr_path).await?;
        let launched = container::launch(&req, prepared, legacy, self.compute, stdout, stderr)
            .await
            .map_err(unknown)?;
        let pid = launched.container.init_pid;
        let state = watch_exit(launched.child, pid, launched.cgroup.clone());
        let task = Task {
            pid,
            env: launched.container.process.env.clone(),
            cwd: PathBuf::from(&req.task_dir),
            identity: None,
            cgroup: launched.cgroup,
            container: Some(launched.container),
            state,
        };
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(task));
        Ok(Response::new(LaunchResponse {
            process: Some(running_state(pid)),
        }))
    }
}

/// Nomad's plain-error status: `Unknown` with the text.
fn unknown(e: impl std::fmt::Display) -> Status {
    Status::unknown(e.to_string())
}

/// `empty` or `/dev/null` discards; anything else (logmon's FIFO, a file) is opened for writing
/// without creating it or following a symlink. A FIFO open waits for its reader (logmon).
async fn open_output(path: &str) -> Result<std::process::Stdio, Status> {
    if path.is_empty() || path == "/dev/null" {
        return Ok(std::process::Stdio::null());
    }
    let p = path.to_string();
    let file = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&p)
    })
    .await
    .map_err(unknown)?
    .map_err(|e| unknown(format!("failed to open {path}: {e}")))?;
    Ok(file.into())
}

/// Removes the cgroups a Launch made unless the Launch got as far as a running task.
struct CreatedCgroup(Option<TaskCgroup>);

impl CreatedCgroup {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for CreatedCgroup {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take().filter(TaskCgroup::is_owned) {
            if let Err(e) = cg.remove() {
                tracing::warn!("{e}");
            }
        }
    }
}

type StatsStream = Pin<Box<dyn Stream<Item = Result<StatsResponse, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecTaskStreamingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Executor for ExecutorService {
    async fn launch(
        &self,
        request: Request<LaunchRequest>,
    ) -> Result<Response<LaunchResponse>, Status> {
        let req = request.into_inner();
        let Ok(_launching) = self.launching.try_lock() else {
            return Err(unknown("another Launch of this executor is in progress"));
        };
        if self.current().is_some() {
            return Err(unknown("this executor has already launched a task"));
        }
        if let Some(legacy) = self.isolation {
            return self.launch_isolated(req, legacy).await;
        }
        let task_dir = PathBuf::from(&req.task_dir);
        let bin = lookup::resolve(&req.cmd, &task_dir, std::env::var("PATH").ok().as_deref())
            .map_err(unknown)?;
        let identity = match req.user.as_str() {
            "" => None,
            user => Some(Identity::lookup(user).map_err(unknown)?),
        };
        let cwd = [&req.work_dir, &req.task_dir]
            .into_iter()
            .find(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| "/".into()));
        let cgroup = containment::task_cgroup(&req, &Host::detect()).map_err(unknown)?;
        // Whatever fails from here on removes the cgroups this Launch made.
        let made = CreatedCgroup(cgroup.clone());
        let stdout = open_output(&req.stdout_path).await?;
        let stderr = open_output(&req.stderr_path).await?;
        let partial = Task {
            pid: 0,
            env: req.env.clone(),
            cwd,
            identity,
            cgroup,
            container: None,
            state: watch::channel(None).1,
        };
        let (mut cmd, mut setup) = task_command(&bin, &req.args, Some(&partial), true, false);
        setup.oom_score_adj = (req.oom_score_adj != 0).then_some(req.oom_score_adj);
        cmd.stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        setup.apply(&mut cmd);
        let child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| unknown(format!("failed to launch command {}: {e}", bin.display())))?;
        let Some(pid) = child.id() else {
            return Err(unknown("the task exited before its pid could be read"));
        };
        made.keep();
        let state = watch_exit(child, pid, partial.cgroup.clone());
        let task = Task {
            pid,
            state,
            ..partial
        };
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(task));
        tracing::info!(pid, cmd = %bin.display(), "task launched");
        Ok(Response::new(LaunchResponse {
            process: Some(running_state(pid)),
        }))
    }

    async fn wait(&self, _: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let task = self.current().ok_or_else(|| unknown("Task not yet run"))?;
        Ok(Response::new(WaitResponse {
            process: Some(task.wait().await),
        }))
    }

    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let req = request.into_inner();
        let signal = parse_shutdown_signal(&req.signal).map_err(unknown)?;
        let Some(task) = self.current() else {
            return Ok(Response::new(ShutdownResponse {}));
        };
        let grace = Duration::from_nanos(req.grace_period.max(0) as u64);
        if task.exited().is_none() && !grace.is_zero() {
            if let Some(sig) = signal {
                let _ = kill_pid(task.pid, sig);
            }
            let _ = tokio::time::timeout(grace, task.wait()).await;
        }
        if task.exited().is_none() {
            let _ = kill_pid(task.pid, Signal::SIGKILL);
        }
        // The whole process group, then whatever is left in a cgroup this executor made (Nomad
        // 1.6's group killer; a 1.7+ agent freezes and kills its own cgroups itself).
        let _ = kill_group(task.pid, Signal::SIGKILL);
        // An isolated task's container goes entirely, whoever made its cgroups.
        let isolated = task.container.is_some();
        if let Some(cg) = task.cgroup.clone().filter(|cg| isolated || cg.is_owned()) {
            tokio::task::spawn_blocking(move || cg.kill_all())
                .await
                .map_err(unknown)?;
        }
        if tokio::time::timeout(SHUTDOWN_WAIT, task.wait())
            .await
            .is_err()
        {
            return Err(unknown(if isolated {
                "process failed to exit after 15 seconds"
            } else {
                "process did not exit after 15 seconds"
            }));
        }
        if let Some(cg) = &task.cgroup {
            if let Err(e) = cg.remove() {
                tracing::warn!("{e}");
            }
        }
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn update_resources(
        &self,
        _: Request<UpdateResourcesRequest>,
    ) -> Result<Response<UpdateResourcesResponse>, Status> {
        // Nomad's executors accept and ignore resource updates.
        Ok(Response::new(UpdateResourcesResponse {}))
    }

    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: EXECUTOR_VERSION.into(),
        }))
    }

    type StatsStream = StatsStream;

    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsStream>, Status> {
        let interval = match request.into_inner().interval {
            n if n > 0 => Duration::from_nanos(n as u64),
            _ => Duration::from_secs(1),
        };
        let service = self.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut tracker = StatsTracker::default();
            let mut from_cgroup = CgroupStats::default();
            loop {
                let task = service.current();
                let isolated_cg = task
                    .as_ref()
                    .filter(|t| t.container.is_some())
                    .and_then(|t| t.cgroup.clone());
                let stats = match isolated_cg {
                    Some(cg) => from_cgroup.sample(&cg, service.compute),
                    None => {
                        let pids = task.map(|t| t.pids()).unwrap_or_default();
                        tracker.sample(&pids, service.compute.total_mhz, service.compute.cores)
                    }
                };
                let msg = StatsResponse { stats: Some(stats) };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn signal(
        &self,
        request: Request<SignalRequest>,
    ) -> Result<Response<SignalResponse>, Status> {
        let n = request.into_inner().signal;
        let task = self.current().ok_or_else(|| unknown("Task not yet run"))?;
        let sig = Signal::try_from(n).map_err(|_| unknown(format!("invalid signal {n}")))?;
        kill_pid(task.pid, sig).map_err(unknown)?;
        Ok(Response::new(SignalResponse {}))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let req = request.into_inner();
        let deadline = req
            .deadline
            .ok_or_else(|| unknown("Exec needs a deadline"))?;
        let deadline = SystemTime::try_from(deadline).map_err(unknown)?;
        let budget = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let task = self.current();
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(unknown)?;
        let write2 = write.try_clone().map_err(unknown)?;
        let container = task.as_ref().and_then(|t| Some((t, t.container.as_ref()?)));
        let isolated = container.is_some();
        let mut child = match container {
            Some((t, c)) => {
                let mut argv = vec![req.cmd.clone()];
                argv.extend(req.args.iter().cloned());
                let stdio = [
                    std::process::Stdio::null(),
                    std::process::Stdio::from(write),
                    std::process::Stdio::from(write2),
                ];
                c.exec(argv, false, stdio, t.cgroup.as_ref())
                    .await
                    .map_err(unknown)?
                    .child
            }
            None => {
                let bin = resolve_exec(&req.cmd, task.as_deref()).map_err(unknown)?;
                let v2 = cgroups::detect_mode() == CgroupMode::V2;
                let (mut cmd, setup) = task_command(&bin, &req.args, task.as_deref(), v2, false);
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::from(write))
                    .stderr(std::process::Stdio::from(write2));
                setup.apply(&mut cmd);
                tokio::process::Command::from(cmd)
                    .spawn()
                    .map_err(|e| unknown(format!("failed to start {}: {e}", bin.display())))?
            }
        };
        let pid = child.id();
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut out = Vec::new();
            if let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read) {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > 2 * EXEC_OUTPUT_LIMIT {
                        out.drain(..out.len() - EXEC_OUTPUT_LIMIT);
                    }
                }
            }
            out
        });
        let exit_code = match tokio::time::timeout(budget, child.wait()).await {
            Ok(Ok(status)) => Ended::of(Ok(status)).exec_code(),
            Ok(Err(e)) => return Err(unknown(e)),
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = kill_group(pid, Signal::SIGKILL);
                }
                let _ = child.wait().await;
                if isolated {
                    // The isolated executor's Exec ends with the context's error.
                    return Err(Status::deadline_exceeded("context deadline exceeded"));
                }
                -1
            }
        };
        let mut output = tokio::time::timeout(Duration::from_secs(1), reader)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        if output.len() > EXEC_OUTPUT_LIMIT {
            output.drain(..output.len() - EXEC_OUTPUT_LIMIT);
        }
        Ok(Response::new(ExecResponse { output, exit_code }))
    }

    type ExecStreamingStream = ExecStream;

    async fn exec_streaming(
        &self,
        request: Request<Streaming<ExecTaskStreamingRequest>>,
    ) -> Result<Response<ExecStream>, Status> {
        let inbound = request.into_inner();
        let stream = exec_streaming::run(inbound, self.current()).await?;
        Ok(Response::new(stream))
    }
}
