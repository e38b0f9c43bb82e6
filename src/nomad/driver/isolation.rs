//! `isolation = "chroot"`: a `goplugin_exec` task run the way Nomad's `exec` driver runs it
//! (spec nomad-executor-logmon.md §5.1.3-§5.1.4, §6; nomad-driver-plugin.md §9): the plugin
//! declares chroot filesystem isolation so the agent builds each task dir from its `chroot_env`,
//! and the executor gets `FSIsolation: true` and the exec driver's Launch — `nobody` unless the
//! task names a user, `resource_limits`, the task's mounts and devices, PID and IPC modes, the
//! capabilities of `allow_caps`, `cap_add` and `cap_drop`.

use super::config::{ConfigError, Isolation, PluginConfig, TaskConfig};
use crate::nomad::executor::isolation::capabilities;
use crate::proto::drivers::TaskConfig as TaskConfigProto;
use crate::proto::executor::LaunchRequest;

/// Whether a task runs in the isolated executor: the task's `isolation`, else the plugin's.
/// A task asking for a chroot the plugin does not offer (the agent built none) is refused.
pub fn isolated(cfg: &TaskConfig, plugin: &PluginConfig) -> Result<bool, ConfigError> {
    match (cfg.isolation, plugin.isolation) {
        (Some(Isolation::Chroot), Isolation::None) => Err(ConfigError::Invalid {
            key: "isolation",
            value: "chroot".into(),
            reason: "needs the plugin config's isolation = \"chroot\" (only then does the agent build the task's chroot)",
        }),
        (Some(task), _) => Ok(task == Isolation::Chroot),
        (None, plugin) => Ok(plugin == Isolation::Chroot),
    }
}

/// Turns raw_exec's request into the exec driver's.
pub fn apply(
    req: &mut LaunchRequest,
    task: &TaskConfigProto,
    cfg: &TaskConfig,
    plugin: &PluginConfig,
) -> Result<(), ConfigError> {
    if !cfg.cgroup_v1_override.is_empty() || !cfg.cgroup_v2_override.is_empty() {
        return Err(ConfigError::Invalid {
            key: "cgroup_v1_override",
            value: String::new(),
            reason: "and cgroup_v2_override are raw_exec settings: an isolated task's cgroups are its own",
        });
    }
    let caps = capabilities::task_capabilities(&plugin.allow_caps, &cfg.cap_add, &cfg.cap_drop)
        .map_err(|e| ConfigError::Capabilities(e.to_string()))?;
    if req.user.is_empty() {
        req.user = "nobody".into();
    }
    #[allow(deprecated)]
    {
        req.basic_process_cgroup = false;
    }
    req.resources = task.resources.clone();
    req.resource_limits = true;
    req.mounts = task.mounts.clone();
    req.devices = task.devices.clone();
    req.no_pivot_root = plugin.no_pivot_root;
    req.default_pid_mode = cfg
        .pid_mode
        .clone()
        .unwrap_or_else(|| plugin.default_pid_mode.clone());
    req.default_ipc_mode = cfg
        .ipc_mode
        .clone()
        .unwrap_or_else(|| plugin.default_ipc_mode.clone());
    req.capabilities = caps;
    req.oom_score_adj = 0;
    Ok(())
}
