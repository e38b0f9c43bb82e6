//! One helper process per task: `goplugin task-helper <json>` serves Nomad's `Executor`
//! (spec nomad-executor-logmon.md §3-§6) and `LogMon` (§7) services side by side on one go-plugin
//! server, so a task costs one process, one socket and one reattach instead of two (issue 11,
//! item 5). The argv JSON is the executor's; both services are the ones `goplugin executor` and
//! `goplugin logmon` serve, unchanged, so the logmon part reads the same FIFOs and writes the
//! same rotated files. Nomad's own client always starts the two separately; this form is for
//! goplugin's driver, which chooses it with the plugin config `helpers = "combined"`. With
//! `FSIsolation: true` the executor part is the isolated one.

use crate::nomad::executor::config::ExecutorConfig;
use crate::nomad::logmon::service::LogMonService;
use crate::proto::executor::executor_server::ExecutorServer;
use crate::proto::logmon::log_mon_server::LogMonServer;
use crate::Server;

/// The re-exec name: `goplugin task-helper <executor json>`.
pub const ENTRY_NAME: &str = "task-helper";

/// Serves the executor and logmon until the host calls `Shutdown`; the process exit code.
pub fn run(args: Vec<std::ffi::OsString>) -> i32 {
    let cfg = match ExecutorConfig::from_args(&args) {
        Ok(cfg) => cfg,
        Err(e) => return fail(&e.to_string()),
    };
    // Both services log to the executor's LogFile: a task's helper has one log.
    if let Err(e) = crate::nomad::executor::init_logging(&cfg) {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start tokio: {e}")),
    };
    let executor = crate::nomad::executor::service_for(&cfg, &runtime);
    let registered = executor.clone();
    let served = runtime.block_on(
        Server::new(super::handshake())
            .services(move |s| {
                s.add_service(ExecutorServer::new(registered));
                s.add_service(LogMonServer::new(LogMonService::default()));
            })
            .serve(),
    );
    executor.cleanup();
    match served {
        Ok(()) => 0,
        Err(e) if e.is_cookie_error() => e.exit(),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> i32 {
    crate::stdio::write_stderr(&format!("{ENTRY_NAME}: {message}\n"));
    1
}
