//! `plugin.GRPCController` (spec go-plugin-wire.md §10): the host asks the plugin to stop.
//!
//! Go stops its server abruptly and may never answer; we answer first and then stop gracefully
//! (in-flight RPCs finish, long-lived streams end), bounded by the server's grace period.

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::proto::plugin::grpc_controller_server::GrpcController;
use crate::proto::plugin::Empty;

/// Fires the server's shutdown token on `Shutdown`.
#[derive(Clone, Debug)]
pub struct ControllerService {
    shutdown: CancellationToken,
}

impl ControllerService {
    /// A controller that cancels `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { shutdown }
    }
}

#[tonic::async_trait]
impl GrpcController for ControllerService {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::debug!("shutdown requested by host");
        self.shutdown.cancel();
        Ok(Response::new(Empty {}))
    }
}
