//! `hashicorp.nomad.plugins.drivers.proto.Driver` (spec nomad-driver-plugin.md §7-§10, pitfalls
//! P6, P10, P11): every RPC of driver API v0.1.0 over the tasks in [`Shared`]. Fields the Go
//! agent dereferences unchecked are always set (`WaitTaskResponse.result`, a Nomad 1.6 agent
//! panics without it; `ExecTaskResponse.result`; `TaskStats.timestamp`/`agg_resource_usage`;
//! both `TaskStatus` timestamps). Errors never use `UNAVAILABLE`/`CANCELLED`, which the agent
//! reads as "the plugin is dying".

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::config::{Isolation, PluginConfig};
use super::task::{self, Task, TaskError};
use super::{Shared, DRIVER_NAME};
use crate::nomad::executor::signals::parse_shutdown_signal;
use crate::proto::drivers::driver_capabilities::{FsIsolation, MountConfigs};
use crate::proto::drivers::driver_server::Driver;
use crate::proto::drivers::network_isolation_spec::NetworkIsolationMode;
use crate::proto::drivers::*;
use crate::proto::executor::{ExecRequest, SignalRequest, StatsRequest};
use crate::proto::structs::RecoverableError;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `google.rpc.Status`, to carry the RecoverableError detail.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// A task error as the agent understands it: helper and I/O failures carry
/// `RecoverableError{recoverable: true}` (code FAILED_PRECONDITION, as Go drivers send it) so the
/// restart policy applies; a misconfigured task fails without restarts (INVALID_ARGUMENT).
pub fn task_status(e: &TaskError) -> Status {
    let message = e.to_string();
    if !e.recoverable() {
        return Status::invalid_argument(message);
    }
    let code = Code::FailedPrecondition;
    let detail = prost_types::Any {
        type_url: "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError"
            .into(),
        value: RecoverableError { recoverable: true }.encode_to_vec(),
    };
    let st = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: vec![detail],
    };
    Status::with_details(code, message, st.encode_to_vec().into())
}

fn not_found(id: &str) -> Status {
    // The agent compares the sentinel by identity, which never matches over gRPC; the text is
    // Nomad's.
    Status::not_found(format!("task not found for given id: {id:?}"))
}

fn helper_status(call: &str, s: Status) -> Status {
    let code = match s.code() {
        Code::Unavailable | Code::Cancelled => Code::Unknown,
        c => c,
    };
    Status::new(code, format!("executor {call}: {}", s.message()))
}

fn duration(d: Option<prost_types::Duration>) -> Duration {
    d.and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::ZERO)
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// Go's zero `time.Time`.
fn zero_time() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: -62_135_596_800,
        nanos: 0,
    }
}

/// What the driver declares (spec §9): chroot isolation (the agent then builds each task dir
/// from its `chroot_env`) and mounts when the plugin config's `isolation = "chroot"`.
pub fn capabilities(plugin: &PluginConfig) -> DriverCapabilities {
    let chroot = plugin.isolation == Isolation::Chroot;
    DriverCapabilities {
        send_signals: true,
        exec: true,
        fs_isolation: if chroot {
            FsIsolation::Chroot as i32
        } else {
            FsIsolation::None as i32
        },
        network_isolation_modes: vec![
            NetworkIsolationMode::Host as i32,
            NetworkIsolationMode::Group as i32,
        ],
        must_create_network: false,
        mount_configs: if chroot {
            // 0, `ANY_MOUNTS`: Nomad's `MountConfigSupportAll`.
            MountConfigs::UnknownMounts as i32
        } else {
            MountConfigs::NoMounts as i32
        },
        // The driver runs its own logmon: the agent starts none.
        disable_log_collection: true,
        dynamic_workload_users: false,
    }
}

/// The driver service.
#[derive(Clone)]
pub struct DriverService {
    shared: Arc<Shared>,
}

impl DriverService {
    /// Over the driver's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn task(&self, id: &str) -> Result<Arc<Task>, Status> {
        self.shared.task(id).ok_or_else(|| not_found(id))
    }
}

fn spawn_stream<T: Send + 'static>(
    f: impl FnOnce(mpsc::Sender<Result<T, Status>>) -> futures::future::BoxFuture<'static, ()>,
) -> RpcStream<T> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Driver for DriverService {
    async fn task_config_schema(
        &self,
        _: Request<TaskConfigSchemaRequest>,
    ) -> Result<Response<TaskConfigSchemaResponse>, Status> {
        Ok(Response::new(TaskConfigSchemaResponse {
            spec: Some(super::hclspec::task_config()),
        }))
    }

    async fn capabilities(
        &self,
        _: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesResponse>, Status> {
        Ok(Response::new(CapabilitiesResponse {
            capabilities: Some(capabilities(&self.shared.plugin_config())),
        }))
    }

    type FingerprintStream = RpcStream<FingerprintResponse>;

    async fn fingerprint(
        &self,
        _: Request<FingerprintRequest>,
    ) -> Result<Response<Self::FingerprintStream>, Status> {
        let shared = self.shared.clone();
        Ok(Response::new(spawn_stream(move |tx| {
            Box::pin(async move {
                let mut changed = shared.config_changes();
                loop {
                    let fp = super::fingerprint::fingerprint(&shared.plugin_config());
                    if tx.send(Ok(fp)).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(super::fingerprint::INTERVAL) => {}
                        _ = changed.changed() => {}
                        _ = tx.closed() => return,
                    }
                }
            })
        })))
    }

    async fn recover_task(
        &self,
        req: Request<RecoverTaskRequest>,
    ) -> Result<Response<RecoverTaskResponse>, Status> {
        let req = req.into_inner();
        let handle = req
            .handle
            .ok_or_else(|| Status::invalid_argument("RecoverTask without a handle"))?;
        let id = handle
            .config
            .as_ref()
            .map(|c| c.id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or(req.task_id);
        if self.shared.task(&id).is_some() {
            return Ok(Response::new(RecoverTaskResponse {}));
        }
        let recovered = task::recover(handle.version, &handle.driver_state, self.shared.events())
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if recovered.state.id != id {
            recovered.detach();
            return Err(Status::invalid_argument(format!(
                "task handle for {id:?} holds the state of task {:?}",
                recovered.state.id
            )));
        }
        tracing::info!(task = %id, pid = recovered.state.task.pid, "task recovered");
        self.shared.insert(recovered);
        Ok(Response::new(RecoverTaskResponse {}))
    }

    async fn start_task(
        &self,
        req: Request<StartTaskRequest>,
    ) -> Result<Response<StartTaskResponse>, Status> {
        let cfg = req
            .into_inner()
            .task
            .ok_or_else(|| Status::invalid_argument("StartTask without a task config"))?;
        if cfg.id.is_empty() || cfg.name.is_empty() || cfg.alloc_dir.is_empty() {
            return Err(Status::invalid_argument(
                "StartTask: the task config needs an id, a name and an alloc_dir",
            ));
        }
        let _reservation = self.shared.reserve(&cfg.id).ok_or_else(|| {
            Status::already_exists(format!("task with ID {:?} already started", cfg.id))
        })?;
        let (plugin, agent) = self.shared.settings();
        let begun = std::time::Instant::now();
        let started = task::start(&cfg, &plugin, &agent, self.shared.events())
            .await
            .map_err(|e| {
                tracing::warn!(task = %cfg.id, error = %e, "StartTask failed");
                task_status(&e)
            })?;
        // elapsed_ms: StartTask's own time (helpers started, Launch), read by bench-nomad-tasks.
        tracing::info!(
            task = %cfg.id,
            pid = started.state.task.pid,
            helpers = started.state.helpers.as_str(),
            elapsed_ms = begun.elapsed().as_secs_f64() * 1000.0,
            "task started"
        );
        let handle = TaskHandle {
            version: super::state::HANDLE_VERSION,
            config: Some(cfg),
            state: TaskState::Running as i32,
            driver_state: started.state.encode(),
        };
        self.shared.insert(started);
        Ok(Response::new(StartTaskResponse {
            result: start_task_response::Result::Success as i32,
            driver_error_msg: String::new(),
            handle: Some(handle),
            network_override: None,
        }))
    }

    async fn wait_task(
        &self,
        req: Request<WaitTaskRequest>,
    ) -> Result<Response<WaitTaskResponse>, Status> {
        let task = self.task(&req.into_inner().task_id)?;
        let exited = task.wait().await;
        Ok(Response::new(WaitTaskResponse {
            result: Some(exited.result),
            err: exited.err,
        }))
    }

    async fn stop_task(
        &self,
        req: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        let req = req.into_inner();
        let task = self.task(&req.task_id)?;
        task.stop(&req.signal, duration(req.timeout))
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        Ok(Response::new(StopTaskResponse {}))
    }

    async fn destroy_task(
        &self,
        req: Request<DestroyTaskRequest>,
    ) -> Result<Response<DestroyTaskResponse>, Status> {
        let req = req.into_inner();
        let task = self.task(&req.task_id)?;
        if task.exited().is_none() && !req.force {
            return Err(Status::failed_precondition("cannot destroy running task"));
        }
        task.destroy().await;
        self.shared.remove(&req.task_id);
        tracing::info!(task = %req.task_id, "task destroyed");
        Ok(Response::new(DestroyTaskResponse {}))
    }

    async fn inspect_task(
        &self,
        req: Request<InspectTaskRequest>,
    ) -> Result<Response<InspectTaskResponse>, Status> {
        let task = self.task(&req.into_inner().task_id)?;
        let started = SystemTime::UNIX_EPOCH
            + Duration::from_nanos(task.state.started_at_unix_nanos.max(0) as u64);
        let exited = task.exited();
        let status = TaskStatus {
            id: task.state.id.clone(),
            name: task.state.name.clone(),
            state: if exited.is_some() {
                TaskState::Exited
            } else {
                TaskState::Running
            } as i32,
            started_at: Some(timestamp(started)),
            completed_at: Some(exited.as_ref().map_or_else(zero_time, |e| timestamp(e.at))),
            result: Some(exited.map(|e| e.result).unwrap_or_default()),
        };
        let mut attributes = std::collections::HashMap::new();
        attributes.insert("pid".to_string(), task.state.task.pid.to_string());
        attributes.insert("executor_pid".to_string(), task.executor_pid().to_string());
        attributes.insert(
            "helpers".to_string(),
            task.state.helpers.as_str().to_string(),
        );
        if let Some(p) = task.logmon_pid() {
            attributes.insert("logmon_pid".to_string(), p.to_string());
        }
        Ok(Response::new(InspectTaskResponse {
            task: Some(status),
            driver: Some(TaskDriverStatus { attributes }),
            network_override: None,
        }))
    }

    type TaskStatsStream = RpcStream<TaskStatsResponse>;

    async fn task_stats(
        &self,
        req: Request<TaskStatsRequest>,
    ) -> Result<Response<Self::TaskStatsStream>, Status> {
        let req = req.into_inner();
        let task = self.task(&req.task_id)?;
        let mut interval = duration(req.collection_interval);
        if interval.is_zero() {
            interval = Duration::from_secs(1);
        }
        tracing::debug!(task = %req.task_id, ?interval, "TaskStats");
        let mut samples = task
            .executor()
            .stats(StatsRequest {
                interval: interval.as_nanos().min(i64::MAX as u128) as i64,
            })
            .await
            .map_err(|s| helper_status("Stats", s))?
            .into_inner();
        Ok(Response::new(spawn_stream(move |tx| {
            Box::pin(async move {
                loop {
                    let next = tokio::select! {
                        m = samples.message() => m,
                        _ = tx.closed() => return,
                    };
                    let sample = match next {
                        Ok(Some(s)) => s.stats.unwrap_or_default(),
                        // The task ended: the stream ends and the agent stops asking.
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!(error = %e.message(), "executor Stats stream ended");
                            return;
                        }
                    };
                    let stats = TaskStats {
                        timestamp: sample
                            .timestamp
                            .or_else(|| Some(timestamp(SystemTime::now()))),
                        agg_resource_usage: Some(sample.agg_resource_usage.unwrap_or_default()),
                        ..sample
                    };
                    let msg = TaskStatsResponse { stats: Some(stats) };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
            })
        })))
    }

    type TaskEventsStream = RpcStream<DriverTaskEvent>;

    async fn task_events(
        &self,
        _: Request<TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        let mut events = self.shared.events().subscribe();
        Ok(Response::new(spawn_stream(move |tx| {
            Box::pin(async move {
                loop {
                    let ev = tokio::select! {
                        e = events.recv() => e,
                        _ = tx.closed() => return,
                    };
                    match ev {
                        Ok(e) => {
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        })))
    }

    async fn signal_task(
        &self,
        req: Request<SignalTaskRequest>,
    ) -> Result<Response<SignalTaskResponse>, Status> {
        let req = req.into_inner();
        let task = self.task(&req.task_id)?;
        if req.signal.is_empty() {
            return Err(Status::invalid_argument("SignalTask: no signal given"));
        }
        let signal = parse_shutdown_signal(&req.signal)
            .map_err(|_| Status::invalid_argument(format!("unknown signal {:?}", req.signal)))?
            .map_or(0, |s| s as i32);
        task.executor()
            .signal(SignalRequest { signal })
            .await
            .map_err(|s| helper_status("Signal", s))?;
        Ok(Response::new(SignalTaskResponse {}))
    }

    async fn exec_task(
        &self,
        req: Request<ExecTaskRequest>,
    ) -> Result<Response<ExecTaskResponse>, Status> {
        let req = req.into_inner();
        let task = self.task(&req.task_id)?;
        let Some((cmd, args)) = req.command.split_first() else {
            return Err(Status::invalid_argument(
                "error cmd must have at least one value",
            ));
        };
        let deadline = SystemTime::now() + duration(req.timeout);
        let out = task
            .executor()
            .exec(ExecRequest {
                deadline: Some(timestamp(deadline)),
                cmd: cmd.clone(),
                args: args.to_vec(),
            })
            .await
            .map_err(|s| helper_status("Exec", s))?
            .into_inner();
        Ok(Response::new(ExecTaskResponse {
            stdout: out.output,
            stderr: vec![],
            result: Some(ExitResult {
                exit_code: out.exit_code,
                signal: 0,
                oom_killed: false,
            }),
        }))
    }

    type ExecTaskStreamingStream = Streaming<ExecTaskStreamingResponse>;

    async fn exec_task_streaming(
        &self,
        req: Request<Streaming<ExecTaskStreamingRequest>>,
    ) -> Result<Response<Self::ExecTaskStreamingStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("first message should always be setup"))?;
        let setup = first
            .setup
            .clone()
            .ok_or_else(|| Status::invalid_argument("first message should always be setup"))?;
        if setup.command.is_empty() {
            return Err(Status::invalid_argument("command is required"));
        }
        let task = self.task(&setup.task_id)?;
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.send(first).await;
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        let out = task
            .executor()
            .exec_streaming(ReceiverStream::new(rx))
            .await
            .map_err(|s| helper_status("ExecStreaming", s))?
            .into_inner();
        Ok(Response::new(out))
    }

    async fn create_network(
        &self,
        _: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        Err(Status::unimplemented(format!(
            "{DRIVER_NAME} does not create networks (its capabilities say must_create_network = false; the agent makes group networks)"
        )))
    }

    async fn destroy_network(
        &self,
        _: Request<DestroyNetworkRequest>,
    ) -> Result<Response<DestroyNetworkResponse>, Status> {
        Err(Status::unimplemented(format!(
            "{DRIVER_NAME} does not create networks, so it destroys none (must_create_network = false)"
        )))
    }

    async fn init(&self, _: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        tracing::debug!("Init");
        Ok(Response::new(InitResponse {}))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        // Tasks, executors and logmons live on; the next driver recovers them.
        tracing::debug!("Shutdown: tasks keep running");
        Ok(Response::new(ShutdownResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recoverable_errors_carry_nomads_detail() {
        let e = TaskError::Helper {
            helper: "logmon",
            source: crate::ClientError::NoHandshake,
        };
        let st = task_status(&e);
        assert_eq!(st.code(), Code::FailedPrecondition);
        let decoded = RpcStatus::decode(st.details()).unwrap();
        assert_eq!(decoded.code, Code::FailedPrecondition as i32);
        assert_eq!(decoded.message, st.message());
        assert_eq!(
            decoded.details[0].type_url,
            "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError"
        );
        let inner = RecoverableError::decode(decoded.details[0].value.as_slice()).unwrap();
        assert!(inner.recoverable);
        let config = TaskError::Disabled;
        let st = task_status(&config);
        assert_eq!(st.code(), Code::InvalidArgument);
        assert!(st.details().is_empty());
    }
}
