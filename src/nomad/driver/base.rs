//! `hashicorp.nomad.plugins.base.proto.BasePlugin` (spec nomad-driver-plugin.md §3, §4): who the
//! plugin is, its agent-config schema, and `SetConfig`, which the agent calls twice on a
//! throw-away validation instance (no `nomad_config`) and once on the live one. Side-effect free:
//! it only stores what it decoded (pitfall P4).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::config::PluginConfig;
use super::fingerprint::{compute_of_topology, host_compute};
use super::task::{AgentInfo, DEFAULT_PORTS};
use super::{Shared, API_VERSION, DRIVER_NAME};
use crate::proto::base::base_plugin_server::BasePlugin;
use crate::proto::base::{
    ConfigSchemaRequest, ConfigSchemaResponse, NomadConfig, PluginInfoRequest, PluginInfoResponse,
    PluginType, SetConfigRequest, SetConfigResponse,
};

/// The base plugin service.
#[derive(Clone)]
pub struct BaseService {
    shared: Arc<Shared>,
}

impl BaseService {
    /// Over the driver's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// What the live instance learns about the agent.
pub fn agent_info(cfg: &NomadConfig) -> AgentInfo {
    let Some(d) = &cfg.driver else {
        return AgentInfo::default();
    };
    let port = |p: u32, default: u16| u16::try_from(p).ok().filter(|p| *p > 0).unwrap_or(default);
    let ports = (
        port(d.client_min_port, DEFAULT_PORTS.0),
        port(d.client_max_port, DEFAULT_PORTS.1),
    );
    match &d.topology {
        Some(t) => {
            let mut compute = compute_of_topology(t);
            if compute.total_mhz == 0 || compute.cores == 0 {
                compute = host_compute();
            }
            AgentInfo {
                ports,
                compute,
                modern: true,
            }
        }
        None => AgentInfo {
            ports,
            compute: host_compute(),
            modern: false,
        },
    }
}

#[tonic::async_trait]
impl BasePlugin for BaseService {
    async fn plugin_info(
        &self,
        _: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        Ok(Response::new(PluginInfoResponse {
            r#type: PluginType::Driver as i32,
            plugin_api_versions: vec![API_VERSION.to_string()],
            plugin_version: env!("CARGO_PKG_VERSION").to_string(),
            name: DRIVER_NAME.to_string(),
        }))
    }

    async fn config_schema(
        &self,
        _: Request<ConfigSchemaRequest>,
    ) -> Result<Response<ConfigSchemaResponse>, Status> {
        Ok(Response::new(ConfigSchemaResponse {
            spec: Some(super::hclspec::plugin_config()),
        }))
    }

    async fn set_config(
        &self,
        req: Request<SetConfigRequest>,
    ) -> Result<Response<SetConfigResponse>, Status> {
        let req = req.into_inner();
        let plugin = PluginConfig::decode(&req.msgpack_config)
            .map_err(|e| Status::invalid_argument(format!("{DRIVER_NAME}: {e}")))?;
        let agent = req.nomad_config.as_ref().map(agent_info);
        tracing::debug!(?plugin, ?agent, api = %req.plugin_api_version, "SetConfig");
        self.shared.set_config(plugin, agent);
        Ok(Response::new(SetConfigResponse {}))
    }
}
