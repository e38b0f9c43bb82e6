//! What the executor hands its in-container stages (`goplugin container-init`,
//! `goplugin container-exec`) over their spec pipe: everything decided and checked on the host
//! side, so the stages only carry it out. JSON, written by this binary and read by the same one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// File descriptor on which a stage reads its spec (JSON, then EOF).
pub const SPEC_FD: i32 = 3;
/// File descriptor of the stage's sync socket: the go-ahead comes in, errors and a PTY master
/// go out, and EOF (close-on-exec) tells the executor the task's `execve` succeeded.
pub const SYNC_FD: i32 = 4;
/// The go-ahead byte: the executor has placed the stage in the task's cgroups.
pub const GO: u8 = b'g';
/// Prefix of an error report from a stage (the rest is the message).
pub const FAILED: u8 = b'E';
/// Prefix of the message carrying a PTY master (SCM_RIGHTS).
pub const PTY: u8 = b'P';

/// Who the process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub groups: Vec<u32>,
}

/// The capability sets a process gets, as kernel capability numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySets {
    /// Bounding set (everything else is dropped from it).
    pub bounding: Vec<u8>,
    /// Permitted set.
    pub permitted: Vec<u8>,
    /// Effective set.
    pub effective: Vec<u8>,
    /// Inheritable set.
    pub inheritable: Vec<u8>,
    /// Ambient set (effective after `execve` for a non-root user).
    pub ambient: Vec<u8>,
}

/// The process a stage finally executes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Path inside the container, then the arguments.
    pub argv: Vec<String>,
    /// `KEY=value` entries, exactly.
    pub env: Vec<String>,
    /// Working directory inside the container (`/` when empty).
    pub cwd: String,
    /// Credentials.
    pub user: Credentials,
    /// Capabilities.
    pub caps: CapabilitySets,
    /// Make a PTY inside the container, send its master to the executor and run on its slave.
    pub tty: bool,
    /// SIGKILL the process when the executor dies (Nomad 1.7+'s `ParentDeathSignal`).
    pub parent_death_kill: bool,
}

/// Mount propagation of a request mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `""`/`private`: rprivate.
    Private,
    /// `host-to-task`: rslave.
    HostToTask,
    /// `bidirectional`: rshared.
    Bidirectional,
}

/// One bind mount the request asked for, checked on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Source on the host.
    pub source: PathBuf,
    /// Target inside the container (absolute).
    pub target: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
    /// Propagation.
    pub propagation: Propagation,
    /// The source is a directory (else an empty file is the mount point).
    pub dir: bool,
}

/// A device node to make inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: PathBuf,
    /// `'c'` or `'b'`.
    pub kind: char,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits of the node.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// What `container-init` builds: the root, the namespaces, then the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    /// The task dir on the host: the new root.
    pub rootfs: PathBuf,
    /// chroot (after moving the root) instead of pivot_root.
    pub no_pivot_root: bool,
    /// A new IPC namespace.
    pub ipc_private: bool,
    /// A network namespace to join (`network_isolation.path`).
    pub netns: Option<PathBuf>,
    /// Request mounts, in order.
    pub mounts: Vec<BindMount>,
    /// Request devices.
    pub devices: Vec<DeviceNode>,
    /// The task.
    pub process: ProcessSpec,
}

/// What `container-exec` does: enter a running container, then run a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Host pid of the container's init, whose namespaces and root are entered.
    pub init_pid: u32,
    /// The command.
    pub process: ProcessSpec,
}
