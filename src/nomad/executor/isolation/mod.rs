//! The isolated executor, what Nomad's `exec` driver starts with `FSIsolation: true` (spec
//! nomad-executor-logmon.md §5.1.3-§5.1.5, §5.6-§5.8; nomad-versions.md §3, §4.3, §5): the task
//! dir as the root, new mount, PID and IPC namespaces, the exec driver's capabilities, and
//! cgroups in every hierarchy with limits and a device allow-list.
//!
//! Built on nix directly rather than youki's `libcontainer` (docs/ARCHITECTURE.md says why):
//! the executor prepares and checks everything ([`prepare`], [`cgroup`]), then starts this
//! binary again as a single-threaded stage ([`launcher`], [`stage`]) that builds the root
//! ([`rootfs`]), takes on the task's credentials and `execve`s it as pid 1 of its namespace.
//! `Exec`/`ExecStreaming` start a second stage that enters the running container, with a PTY
//! made inside it when asked.

pub mod capabilities;
pub mod cgroup;
pub mod container;
#[allow(unsafe_code)] // pre_exec of the stages, descriptors received by SCM_RIGHTS or passed in
pub mod launcher;
pub mod prepare;
pub mod rootfs;
pub mod spec;
#[allow(unsafe_code)] // fds 3 and 4 as passed, prctl, TIOCSCTTY, dup2 onto 0-2 inside the container
pub mod stage;
pub mod users;

use std::path::PathBuf;

/// Errors of an isolated Launch, Exec or ExecStreaming (the gRPC error text).
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// Isolation needs root.
    #[error(
        "the isolated executor needs root for namespaces, mounts and cgroups (running as uid {0})"
    )]
    NotRoot(u32),
    /// The task dir (the chroot) is missing.
    #[error("task dir {0} does not exist or is not a directory")]
    TaskDir(PathBuf),
    /// The command is not in the chroot (Nomad's texts).
    #[error("file {cmd} not found under path{}", .under.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    CommandNotFound {
        /// The command.
        cmd: String,
        /// The task dir, when the command has a `/`.
        under: Option<PathBuf>,
    },
    /// The command could not be made executable.
    #[error(transparent)]
    Lookup(#[from] super::lookup::LookupError),
    /// A request mount whose source does not exist.
    #[error("mount source {0} does not exist")]
    MountSource(PathBuf),
    /// A request mount without a target.
    #[error("mount of {0} has no task_path")]
    MountTarget(PathBuf),
    /// A request device that is missing or no device.
    #[error("device {path}: {reason}")]
    Device {
        /// Host path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A capability problem.
    #[error(transparent)]
    Capability(#[from] capabilities::CapabilityError),
    /// `default_pid_mode` / `default_ipc_mode` not `private` or `host`.
    #[error("invalid {kind} mode {value:?}: must be \"private\" or \"host\"")]
    Mode {
        /// `pid` or `ipc`.
        kind: &'static str,
        /// What was sent.
        value: String,
    },
    /// The network namespace to join is missing.
    #[error("network namespace {0} does not exist")]
    NetNs(PathBuf),
    /// The user cannot be resolved.
    #[error(transparent)]
    User(#[from] users::UserError),
    /// Cgroups could not be set up.
    #[error("unable to configure cgroups: {0}")]
    Cgroup(#[from] super::cgroups::CgroupError),
    /// Invalid CPU shares (Nomad 1.6's runc check).
    #[error("resources.Cpu.CpuShares must be equal to or greater than 2: {0}")]
    CpuShares(i64),
    /// Namespaces, the spawner or the stage could not be set up.
    #[error("namespaces unavailable: {0}")]
    Namespaces(String),
    /// The stage reported an error building or entering the container.
    #[error("{0}")]
    Stage(String),
    /// The container is not running (Exec after the task ended).
    #[error("the task's container is not running")]
    NotRunning,
}

/// Errors inside a stage, reported back over its sync socket.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A system call failed.
    #[error("{what}: {errno}")]
    Os {
        /// What was being done.
        what: String,
        /// The errno.
        errno: nix::Error,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spec was unreadable.
    #[error("bad container spec: {0}")]
    Spec(String),
    /// The executor went away before saying go.
    #[error("the executor ended before the container was started")]
    NoGoAhead,
    /// The command is not on the container's `PATH`.
    #[error("executable file {0:?} not found in the container's $PATH")]
    NotFound(String),
    /// `execve` failed.
    #[error("failed to exec {path}: {errno}")]
    Exec {
        /// The path inside the container.
        path: String,
        /// The errno.
        errno: nix::Error,
    },
    /// A capability call failed.
    #[error("{0}")]
    Caps(String),
}
