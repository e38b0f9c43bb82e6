//! Nomad's per-task log collector, `nomad logmon` (spec nomad-executor-logmon.md §7): the same
//! argv, handshake and gRPC service, so Nomad's client drives `goplugin logmon` as its own.

#[allow(unsafe_code)] // tee(2) and the FIONREAD ioctl on the FIFO
pub mod copier;
pub mod rotator;
pub mod service;

use crate::proto::logmon::log_mon_server::LogMonServer;
use crate::Server;

/// Serves logmon until the client calls `Shutdown`; the process exit code.
pub fn run() -> i32 {
    let _ = crate::hclog::init_plugin_logging("logmon");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::stdio::write_stderr(&format!("logmon: cannot start tokio: {e}\n"));
            return 1;
        }
    };
    let served = runtime.block_on(
        Server::new(super::handshake())
            .services(|s| {
                s.add_service(LogMonServer::new(service::LogMonService::default()));
            })
            .serve(),
    );
    match served {
        Ok(()) => 0,
        Err(e) if e.is_cookie_error() => e.exit(),
        Err(e) => {
            crate::stdio::write_stderr(&format!("logmon: {e}\n"));
            1
        }
    }
}
