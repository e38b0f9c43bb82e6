//! One running container as the executor service keeps it: how it was started (so `Exec` and
//! `ExecStreaming` can enter it with the task's environment, user and capabilities) and the
//! spawner thread whose PID namespace it lives in.

use std::sync::Arc;

use super::launcher::{self, Placement, Spawner, Started};
use super::prepare::Prepared;
use super::spec::{ExecSpec, ProcessSpec};
use super::{cgroup, IsolationError};
use crate::nomad::executor::cgroups::TaskCgroup;
use crate::nomad::executor::config::Compute;
use crate::nomad::executor::containment::Host;
use crate::proto::executor::LaunchRequest;

/// A started container.
pub struct Container {
    spawner: Arc<Spawner>,
    /// Host pid of the container's init (the task).
    pub init_pid: u32,
    /// The task's process as launched: env, cwd, user, capabilities.
    pub process: ProcessSpec,
}

/// What an isolated Launch produced.
pub struct Launched {
    /// The task.
    pub child: tokio::process::Child,
    /// Its container.
    pub container: Container,
    /// Its cgroups.
    pub cgroup: Option<TaskCgroup>,
}

/// Removes the cgroups of a Launch that did not get as far as a running task.
struct Made(Option<TaskCgroup>);

impl Drop for Made {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            cg.kill_all();
            if let Err(e) = cg.remove() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Creates the cgroups for a checked request, starts `container-init` and waits for its
/// `execve`.
pub async fn launch(
    req: &LaunchRequest,
    prepared: Prepared,
    legacy: bool,
    compute: Compute,
    stdout: std::process::Stdio,
    stderr: std::process::Stdio,
) -> Result<Launched, IsolationError> {
    let Prepared {
        init,
        private_pid,
        device_rules,
        host_bin,
    } = prepared;
    let spawner = Arc::new(Spawner::new(private_pid)?);
    let mut made = Made(cgroup::create(
        req,
        &Host::detect(),
        legacy,
        compute,
        &device_rules,
    )?);
    let cpuset = cgroup::agent_cpuset(req);
    let spec = serde_json::to_vec(&init).map_err(|e| IsolationError::Stage(e.to_string()))?;
    let Started { child, pid, .. } = launcher::start(
        &spawner,
        "container-init",
        spec,
        [std::process::Stdio::null(), stdout, stderr],
        Placement {
            cgroup: made.0.as_ref(),
            cpuset: cpuset.as_deref(),
        },
    )
    .await?;
    tracing::info!(pid, cmd = %host_bin.display(), "isolated task launched");
    Ok(Launched {
        child,
        cgroup: made.0.take(),
        container: Container {
            spawner,
            init_pid: pid,
            process: init.process,
        },
    })
}

impl Container {
    /// Starts `argv` inside the container with the task's env, cwd, user and capabilities, on
    /// `stdio`, or on a PTY made inside when `tty` (its master is returned).
    pub async fn exec(
        &self,
        argv: Vec<String>,
        tty: bool,
        stdio: [std::process::Stdio; 3],
        cgroup: Option<&TaskCgroup>,
    ) -> Result<Started, IsolationError> {
        if !std::path::Path::new(&format!("/proc/{}/ns/mnt", self.init_pid)).exists() {
            return Err(IsolationError::NotRunning);
        }
        let spec = ExecSpec {
            init_pid: self.init_pid,
            process: ProcessSpec {
                argv,
                tty,
                ..self.process.clone()
            },
        };
        let spec = serde_json::to_vec(&spec).map_err(|e| IsolationError::Stage(e.to_string()))?;
        launcher::start(
            &self.spawner,
            "container-exec",
            spec,
            stdio,
            Placement {
                cgroup,
                cpuset: None,
            },
        )
        .await
    }
}
