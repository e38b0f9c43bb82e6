//! Nomad's executor, `nomad executor <json>` (spec nomad-executor-logmon.md §3-§6), with Nomad's
//! argv, handshake and gRPC service: the universal executor that raw_exec uses, and with
//! `FSIsolation: true` the isolated one that exec uses ([`isolation`]: chroot, namespaces,
//! capabilities, cgroups in every hierarchy).

pub mod cgroups;
pub mod config;
pub mod containment;
#[allow(unsafe_code)] // pre_exec of exec'd commands, TIOCSWINSZ on the PTY
mod exec_streaming;
pub mod isolation;
pub mod lookup;
pub mod procstats;
pub mod service;
pub mod signals;
#[allow(unsafe_code)] // pre_exec: what the task's child does between fork and exec
pub mod spawn;
mod task;

use crate::proto::executor::executor_server::ExecutorServer;
use crate::Server;
use config::ExecutorConfig;

/// What `Version` answers (Nomad's `ExecutorVersionLatest`).
pub const EXECUTOR_VERSION: &str = "2.0.0";

/// Serves the executor until the client calls `Shutdown` on the plugin; the process exit code.
pub fn run(args: Vec<std::ffi::OsString>) -> i32 {
    let cfg = match ExecutorConfig::from_args(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            crate::stdio::write_stderr(&format!("executor: {e}\n"));
            return 1;
        }
    };
    if let Err(e) = init_logging(&cfg) {
        crate::stdio::write_stderr(&format!("executor: {e}\n"));
        return 1;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::stdio::write_stderr(&format!("executor: cannot start tokio: {e}\n"));
            return 1;
        }
    };
    let executor = service_for(&cfg, &runtime);
    let registered = executor.clone();
    let served = runtime.block_on(
        Server::new(super::handshake())
            .services(move |s| {
                s.add_service(ExecutorServer::new(registered));
            })
            .serve(),
    );
    executor.cleanup();
    match served {
        Ok(()) => 0,
        Err(e) if e.is_cookie_error() => e.exit(),
        Err(e) => {
            crate::stdio::write_stderr(&format!("executor: {e}\n"));
            1
        }
    }
}

/// The executor the argv asks for: universal, or isolated (`FSIsolation`) with Nomad 1.7+'s
/// signal handling started on `runtime`. Nomad 1.6 sends `CpuTotalTicks`, 1.7+ `Compute`: the
/// generation decides user resolution, cgroup names and the parent-death signal.
pub(crate) fn service_for(
    cfg: &ExecutorConfig,
    runtime: &tokio::runtime::Runtime,
) -> service::ExecutorService {
    if !cfg.fs_isolation {
        return service::ExecutorService::new(cfg.effective_compute());
    }
    let legacy = cfg.cpu_total_ticks.is_some();
    let executor = service::ExecutorService::isolated(cfg.effective_compute(), legacy);
    if !legacy {
        runtime.spawn(executor.clone().catch_signals());
    }
    executor
}

/// hclog lines go to `LogFile` (created or appended, mode 0666) at `LogLevel`, else to stderr.
pub(crate) fn init_logging(cfg: &ExecutorConfig) -> Result<(), String> {
    let filter = cfg.filter_directive().map_err(|e| e.to_string())?;
    let name = if cfg.fs_isolation {
        "isolated_executor"
    } else {
        "executor"
    };
    if cfg.log_file.is_empty() {
        return crate::hclog::init_plugin_logging_with(
            name,
            crate::stdio::original_stderr().map_err(|e| e.to_string())?,
            filter,
        )
        .map_err(|e| e.to_string());
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o666)
        .open(&cfg.log_file)
        .map_err(|e| format!("opening LogFile {}: {e}", cfg.log_file))?;
    crate::hclog::init_plugin_logging_with(name, file, filter).map_err(|e| e.to_string())
}
