//! From an exec-driver `LaunchRequest` to the container's spec, with every outside input
//! checked on the host before anything is created (spec nomad-executor-logmon.md §5.1.1-§5.1.4,
//! §6): the task dir, the command inside it (`lookupTaskBin`), pid and IPC modes, the network
//! namespace, mounts, devices, capabilities and the user.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::capabilities;
use super::spec::{BindMount, DeviceNode, InitSpec, ProcessSpec, Propagation};
use super::users;
use super::IsolationError;
use crate::proto::executor::LaunchRequest;

/// The device allow-list every container gets (runc's defaults), as v1 `devices.allow` lines.
pub const DEFAULT_DEVICE_RULES: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// Everything an isolated Launch decided.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// What `container-init` builds and runs.
    pub init: InitSpec,
    /// A new PID namespace (`private`, the default) or the host's.
    pub private_pid: bool,
    /// `devices.allow` lines: the defaults and the requested devices.
    pub device_rules: Vec<String>,
    /// The command's path on the host (for logs).
    pub host_bin: PathBuf,
}

fn mode(kind: &'static str, value: &str) -> Result<bool, IsolationError> {
    match value {
        "" | "private" => Ok(true),
        "host" => Ok(false),
        _ => Err(IsolationError::Mode {
            kind,
            value: value.to_string(),
        }),
    }
}

fn inside(task_path: &str) -> PathBuf {
    Path::new("/").join(task_path.trim_start_matches('/'))
}

/// Nomad's `lookupTaskBin`: regular files only, `local/`, the task dir, the mounts, then (for a
/// bare name) `usr/local/bin`, `usr/bin`, `bin` of the task dir. Returns (host path, path inside).
pub fn lookup_task_bin(
    cmd: &str,
    task_dir: &Path,
    mounts: &[BindMount],
) -> Result<(PathBuf, PathBuf), IsolationError> {
    let is_file = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file());
    let rel = cmd.trim_start_matches('/');
    for prefix in ["local", ""] {
        let inner = Path::new(prefix).join(rel);
        let host = task_dir.join(&inner);
        if is_file(&host) {
            return Ok((host, Path::new("/").join(inner)));
        }
    }
    for m in mounts {
        if let Ok(rest) = Path::new(&inside(cmd)).strip_prefix(&m.target) {
            let host = m.source.join(rest);
            if is_file(&host) {
                return Ok((host, inside(cmd)));
            }
        }
    }
    if !cmd.contains('/') {
        for dir in ["usr/local/bin", "usr/bin", "bin"] {
            let inner = Path::new(dir).join(cmd);
            let host = task_dir.join(&inner);
            if is_file(&host) {
                return Ok((host, Path::new("/").join(inner)));
            }
        }
    }
    Err(IsolationError::CommandNotFound {
        cmd: cmd.to_string(),
        under: cmd.contains('/').then(|| task_dir.to_path_buf()),
    })
}

fn mounts(req: &LaunchRequest) -> Result<Vec<BindMount>, IsolationError> {
    req.mounts
        .iter()
        .map(|m| {
            let source = PathBuf::from(&m.host_path);
            let meta = std::fs::metadata(&source)
                .map_err(|_| IsolationError::MountSource(source.clone()))?;
            if m.task_path.is_empty() {
                return Err(IsolationError::MountTarget(source));
            }
            let propagation = match m.propagation_mode.as_str() {
                "" | "private" => Propagation::Private,
                "host-to-task" => Propagation::HostToTask,
                "bidirectional" => Propagation::Bidirectional,
                other => {
                    return Err(IsolationError::Mode {
                        kind: "mount propagation",
                        value: other.to_string(),
                    })
                }
            };
            Ok(BindMount {
                source,
                target: inside(&m.task_path),
                readonly: m.readonly,
                propagation,
                dir: meta.is_dir(),
            })
        })
        .collect()
}

fn devices(req: &LaunchRequest) -> Result<(Vec<DeviceNode>, Vec<String>), IsolationError> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in &req.devices {
        let path = PathBuf::from(&d.host_path);
        let err = |reason: &str| IsolationError::Device {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let meta = std::fs::metadata(&path).map_err(|e| err(&format!("does not exist ({e})")))?;
        let kind = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(err("is not a character or block device"));
        };
        let perms = if d.cgroup_permissions.is_empty() {
            "rwm"
        } else {
            d.cgroup_permissions.as_str()
        };
        if !perms.chars().all(|c| "rwm".contains(c)) {
            return Err(err(&format!(
                "invalid cgroup permissions {perms:?} (want r, w and/or m)"
            )));
        }
        let (major, minor) = (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        );
        let target = if d.task_path.is_empty() {
            &d.host_path
        } else {
            &d.task_path
        };
        nodes.push(DeviceNode {
            path: inside(target),
            kind,
            major,
            minor,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
        rules.push(format!("{kind} {major}:{minor} {perms}"));
    }
    Ok((nodes, rules))
}

/// Checks `req` and builds the container's spec. `legacy`: the Launch came from Nomad 1.6
/// (user resolved in the chroot, cwd `/`, no parent-death signal).
pub fn prepare(req: &LaunchRequest, legacy: bool) -> Result<Prepared, IsolationError> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(IsolationError::NotRoot(euid.as_raw()));
    }
    let task_dir = PathBuf::from(&req.task_dir);
    if req.task_dir.is_empty() || !task_dir.is_dir() {
        return Err(IsolationError::TaskDir(task_dir));
    }
    let private_pid = mode("pid", &req.default_pid_mode)?;
    let ipc_private = mode("ipc", &req.default_ipc_mode)?;
    let netns = req
        .network_isolation
        .as_ref()
        .map(|n| n.path.clone())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(ns) = &netns {
        if !ns.exists() {
            return Err(IsolationError::NetNs(ns.clone()));
        }
    }
    let mounts = mounts(req)?;
    let (device_nodes, requested_rules) = devices(req)?;
    let (host_bin, inner_bin) = lookup_task_bin(&req.cmd, &task_dir, &mounts)?;
    super::super::lookup::make_executable(&host_bin)?;
    let user = users::resolve(&req.user, &task_dir, legacy, &req.env)?;
    let caps = capabilities::sets_for(user.creds.uid == 0, &req.capabilities)?;
    let mut env = req.env.clone();
    env.extend(user.env);
    let mut argv = vec![inner_bin.display().to_string()];
    argv.extend(req.args.iter().cloned());
    let cwd = if legacy {
        String::new()
    } else {
        req.work_dir.clone()
    };
    let mut device_rules: Vec<String> =
        DEFAULT_DEVICE_RULES.iter().map(|r| r.to_string()).collect();
    device_rules.extend(requested_rules);
    Ok(Prepared {
        init: InitSpec {
            rootfs: task_dir,
            no_pivot_root: req.no_pivot_root,
            ipc_private,
            netns,
            mounts,
            devices: device_nodes,
            process: ProcessSpec {
                argv,
                env,
                cwd,
                user: user.creds,
                caps,
                tty: false,
                parent_death_kill: !legacy,
            },
        },
        private_pid,
        device_rules,
        host_bin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_task_bin_follows_nomads_order_and_texts() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for dir in ["local", "bin", "usr/bin", "usr/local/bin", "mnt"] {
            std::fs::create_dir_all(d.join(dir)).unwrap();
        }
        std::fs::write(d.join("bin/tool"), "").unwrap();
        assert_eq!(
            lookup_task_bin("tool", d, &[]).unwrap(),
            (d.join("bin/tool"), "/bin/tool".into())
        );
        std::fs::write(d.join("usr/bin/tool"), "").unwrap();
        assert_eq!(
            lookup_task_bin("tool", d, &[]).unwrap().1,
            PathBuf::from("/usr/bin/tool")
        );
        std::fs::write(d.join("tool"), "").unwrap();
        assert_eq!(
            lookup_task_bin("tool", d, &[]).unwrap().1,
            PathBuf::from("/tool")
        );
        std::fs::write(d.join("local/tool"), "").unwrap();
        assert_eq!(
            lookup_task_bin("tool", d, &[]).unwrap().1,
            PathBuf::from("/local/tool")
        );
        // A directory is not a command.
        std::fs::create_dir(d.join("local/dir")).unwrap();
        let e = lookup_task_bin("local/dir", d, &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("file local/dir not found under path {}", d.display())
        );
        // Host paths are never used: /bin/sh exists on the host, not in the task dir.
        let e = lookup_task_bin("sh", d, &[]).unwrap_err().to_string();
        assert_eq!(e, "file sh not found under path");
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("x"), "").unwrap();
        let m = BindMount {
            source: src.path().into(),
            target: "/opt/m".into(),
            readonly: true,
            propagation: Propagation::Private,
            dir: true,
        };
        assert_eq!(
            lookup_task_bin("/opt/m/x", d, &[m]).unwrap(),
            (src.path().join("x"), "/opt/m/x".into())
        );
    }

    #[test]
    fn modes_are_private_host_or_an_error() {
        assert!(mode("pid", "").unwrap());
        assert!(mode("pid", "private").unwrap());
        assert!(!mode("ipc", "host").unwrap());
        let e = mode("pid", "shared").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid pid mode \"shared\": must be \"private\" or \"host\""
        );
    }
}
