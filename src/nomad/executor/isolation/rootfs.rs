//! The container's filesystem, built by `container-init` in its new mount namespace (spec
//! nomad-executor-logmon.md §5.1.3, the mounts of Nomad's libcontainer config): the task dir as
//! the root (pivot_root, or chroot after a move with `no_pivot_root`), `/dev` as a tmpfs with
//! the standard nodes, devpts, shm and mqueue, `/proc`, a read-only `/sys`, the request's binds
//! and devices, then the masked and read-only paths. Nothing here propagates back to the host:
//! the whole tree is made a slave first, and every mount goes when the namespace does.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::spec::{BindMount, DeviceNode, InitSpec, Propagation};
use super::StageError;

/// The device nodes every container gets (runc's defaults): path, major, minor.
pub const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Hidden from the task: bind-mounted over with `/dev/null` (files) or an empty read-only tmpfs
/// (directories).
pub const MASKED_PATHS: [&str; 2] = ["/proc/kcore", "/sys/firmware"];
/// Re-mounted read-only.
pub const READONLY_PATHS: [&str; 4] =
    ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"];

fn op(what: impl Into<String>) -> impl FnOnce(nix::Error) -> StageError {
    let what = what.into();
    move |e| StageError::Os { what, errno: e }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StageError {
    let what = what.into();
    move |e| StageError::Io { what, source: e }
}

/// `path` (absolute, inside the container) resolved under `root` with every symlink evaluated
/// as if `root` were `/`, so a link in the task dir cannot point a mount outside it.
pub fn in_root(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let host = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        match std::fs::read_link(&host) {
            Ok(target) if links < 255 => {
                links += 1;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(PathBuf::from(n)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved.strip_prefix("/").unwrap_or(&resolved))
}

fn mount_fs(
    root: &Path,
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StageError> {
    let dest = in_root(root, Path::new(target));
    std::fs::create_dir_all(&dest).map_err(io(format!("creating {target}")))?;
    mount(Some(fstype), &dest, Some(fstype), flags, data)
        .map_err(op(format!("mounting {fstype} on {target}")))
}

/// Builds the whole filesystem and enters it; the working directory is `/` afterwards.
pub fn build(spec: &InitSpec) -> Result<(), StageError> {
    let root = spec.rootfs.as_path();
    // Nothing mounted from here on may reach the host's mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(op("making / a slave mount"))?;
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(op(format!("bind-mounting the task dir {}", root.display())))?;
    standard_mounts(root)?;
    for m in &spec.mounts {
        bind(root, m)?;
    }
    // Nodes are made with exactly the modes asked for.
    nix::sys::stat::umask(Mode::empty());
    for (path, major, minor) in DEFAULT_DEVICES {
        make_node(
            root,
            &DeviceNode {
                path: path.into(),
                kind: 'c',
                major,
                minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            },
        )?;
    }
    for d in &spec.devices {
        make_node(root, d)?;
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    dev_symlinks(root)?;
    enter(root, spec.no_pivot_root)?;
    for path in MASKED_PATHS {
        mask(path)?;
    }
    for path in READONLY_PATHS {
        readonly(path)?;
    }
    Ok(())
}

fn standard_mounts(root: &Path) -> Result<(), StageError> {
    let nosuid = MsFlags::MS_NOSUID;
    let nne = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(
        root,
        "tmpfs",
        "/dev",
        nosuid | MsFlags::MS_STRICTATIME,
        Some("mode=755"),
    )?;
    mount_fs(root, "proc", "/proc", nne, None)?;
    mount_fs(
        root,
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs(
        root,
        "tmpfs",
        "/dev/shm",
        nne,
        Some("mode=1777,size=65536k"),
    )?;
    mount_fs(root, "mqueue", "/dev/mqueue", nne, None)?;
    match mount_fs(root, "sysfs", "/sys", nne | MsFlags::MS_RDONLY, None) {
        Ok(()) => Ok(()),
        // Not allowed to make a sysfs here (no network namespace of our own in some setups):
        // the host's, read-only, as runc falls back to.
        Err(StageError::Os {
            errno: nix::Error::EPERM,
            ..
        }) => {
            let dest = in_root(root, Path::new("/sys"));
            mount(
                Some("/sys"),
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(op("bind-mounting /sys"))?;
            remount_readonly(&dest, nne).map_err(op("making /sys read-only"))
        }
        Err(e) => Err(e),
    }
}

fn remount_readonly(dest: &Path, extra: MsFlags) -> nix::Result<()> {
    mount(
        None::<&str>,
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra,
        None::<&str>,
    )
}

fn bind(root: &Path, m: &BindMount) -> Result<(), StageError> {
    let target = m.target.display().to_string();
    let dest = in_root(root, &m.target);
    if m.dir {
        std::fs::create_dir_all(&dest).map_err(io(format!("creating mount point {target}")))?;
    } else {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating mount point {target}")))?;
        }
        if !dest.exists() {
            std::fs::File::create(&dest).map_err(io(format!("creating mount point {target}")))?;
        }
    }
    mount(
        Some(&m.source),
        &dest,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(op(format!(
        "bind-mounting {} on {target}",
        m.source.display()
    )))?;
    if m.readonly {
        remount_readonly(&dest, MsFlags::empty())
            .map_err(op(format!("making {target} read-only")))?;
    }
    let propagation = match m.propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::HostToTask => MsFlags::MS_SLAVE,
        Propagation::Bidirectional => MsFlags::MS_SHARED,
    };
    mount(
        None::<&str>,
        &dest,
        None::<&str>,
        propagation | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(op(format!("setting the propagation of {target}")))
}

fn make_node(root: &Path, d: &DeviceNode) -> Result<(), StageError> {
    let shown = d.path.display().to_string();
    let dest = in_root(root, &d.path);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io(format!("creating the directory of {shown}")))?;
    }
    let kind = if d.kind == 'b' {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    let _ = std::fs::remove_file(&dest);
    mknod(
        &dest,
        kind,
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    )
    .map_err(op(format!("creating device {shown}")))?;
    std::os::unix::fs::chown(&dest, Some(d.uid), Some(d.gid))
        .map_err(io(format!("chowning device {shown}")))
}

fn dev_symlinks(root: &Path) -> Result<(), StageError> {
    let links = [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/kcore", "/dev/core"),
    ];
    for (target, link) in links {
        let dest = root.join(link.trim_start_matches('/'));
        let _ = std::fs::remove_file(&dest);
        symlink(target, &dest).map_err(io(format!("creating symlink {link}")))?;
    }
    Ok(())
}

/// Makes `root` the process's `/`.
fn enter(root: &Path, no_pivot_root: bool) -> Result<(), StageError> {
    nix::unistd::chdir(root).map_err(op(format!("entering {}", root.display())))?;
    if no_pivot_root {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(op("moving the task dir to /"))?;
        nix::unistd::chroot(".").map_err(op("chroot into the task dir"))?;
    } else {
        // runc's pivot_root(".", "."): the old root ends up stacked under the new one, is made
        // a slave so its unmount cannot reach the host, and is detached.
        nix::unistd::pivot_root(".", ".").map_err(op("pivot_root into the task dir"))?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(op("making the old root a slave"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(op("detaching the old root"))?;
    }
    nix::unistd::chdir("/").map_err(op("entering /"))
}

fn mask(path: &str) -> Result<(), StageError> {
    let p = Path::new(path);
    let Ok(meta) = std::fs::metadata(p) else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(op(format!("masking {path}")))
}

fn readonly(path: &str) -> Result<(), StageError> {
    let p = Path::new(path);
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(op(format!("bind-mounting {path}")))?;
    remount_readonly(
        p,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
    .map_err(op(format!("making {path} read-only")))
}

/// The mode bits a regular file must have to be a task's command (for tests of the stage).
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/etc", r.join("abs")).unwrap();
        symlink("../../../../etc", r.join("up")).unwrap();
        symlink("/", r.join("slash")).unwrap();
        assert_eq!(in_root(r, Path::new("/abs/passwd")), r.join("etc/passwd"));
        assert_eq!(in_root(r, Path::new("/up/x")), r.join("etc/x"));
        assert_eq!(in_root(r, Path::new("/slash/../../dev")), r.join("dev"));
        assert_eq!(in_root(r, Path::new("/../../proc")), r.join("proc"));
        symlink("loop", r.join("loop")).unwrap();
        assert!(in_root(r, Path::new("/loop")).starts_with(r));
    }
}
