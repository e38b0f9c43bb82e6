//! Nomad's executor, `nomad executor <json>` (spec nomad-executor-logmon.md §3-§6): the
//! universal (non-isolated) executor that raw_exec uses, with Nomad's argv, handshake and gRPC
//! service. `FSIsolation: true` is refused: isolation is not built, and a task asking for it must
//! never run unisolated.

pub mod cgroups;
pub mod config;
pub mod containment;
mod exec_streaming;
pub mod lookup;
pub mod procstats;
pub mod service;
pub mod signals;
pub mod spawn;

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
    if cfg.fs_isolation {
        crate::stdio::write_stderr(
            "executor: FSIsolation (the isolated executor) is not available in goplugin; \
             refusing to run the task without the isolation it asked for\n",
        );
        return 1;
    }
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
    let executor = service::ExecutorService::new(cfg.effective_compute());
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
        Err(e) => {
            crate::stdio::write_stderr(&format!("executor: {e}\n"));
            1
        }
    }
}

/// hclog lines go to `LogFile` (created or appended, mode 0666) at `LogLevel`, else to stderr.
pub(crate) fn init_logging(cfg: &ExecutorConfig) -> Result<(), String> {
    let filter = cfg.filter_directive().map_err(|e| e.to_string())?;
    if cfg.log_file.is_empty() {
        return crate::hclog::init_plugin_logging_with(
            "executor",
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
    crate::hclog::init_plugin_logging_with("executor", file, filter).map_err(|e| e.to_string())
}
