//! The in-container stages, this binary re-executed by the executor (`goplugin container-init`,
//! `goplugin container-exec`): single-threaded processes that read their spec, wait for the
//! executor's go-ahead (it has placed them in the task's cgroups by then), build or enter the
//! container and finally `execve` the task or command. A failure is written back over the sync
//! socket as one message and the stage exits 1; success is the socket's close on `execve`.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::spec::{ExecSpec, InitSpec, ProcessSpec, FAILED, GO, PTY, SPEC_FD, SYNC_FD};
use super::{rootfs, StageError};

/// Reads the spec, waits for the go-ahead; takes ownership of the two inherited descriptors.
fn handshake<T: serde::de::DeserializeOwned>() -> Result<(T, OwnedFd), (StageError, Option<OwnedFd>)>
{
    // SAFETY: the executor started this stage with its spec pipe on SPEC_FD and its sync socket
    // on SYNC_FD (see `launcher`); nothing else in this fresh process owns them.
    let (spec_fd, sync) = unsafe { (OwnedFd::from_raw_fd(SPEC_FD), OwnedFd::from_raw_fd(SYNC_FD)) };
    let mut json = Vec::new();
    if let Err(e) = std::fs::File::from(spec_fd).read_to_end(&mut json) {
        return Err((
            StageError::Io {
                what: "reading the spec".into(),
                source: e,
            },
            Some(sync),
        ));
    }
    let spec = match serde_json::from_slice(&json) {
        Ok(s) => s,
        Err(e) => return Err((StageError::Spec(e.to_string()), Some(sync))),
    };
    let mut byte = [0u8; 1];
    match nix::unistd::read(&sync, &mut byte) {
        Ok(1) if byte[0] == GO => Ok((spec, sync)),
        _ => Err((StageError::NoGoAhead, Some(sync))),
    }
}

fn report(sync: Option<OwnedFd>, e: &StageError) -> i32 {
    let mut msg = vec![FAILED];
    msg.extend_from_slice(e.to_string().as_bytes());
    match sync {
        Some(fd) => {
            let _ = nix::unistd::write(&fd, &msg);
        }
        None => crate::stdio::write_stderr(&format!("container stage: {e}\n")),
    }
    1
}

/// `goplugin container-init`: builds the container and becomes the task.
pub fn init_main(_args: Vec<std::ffi::OsString>) -> i32 {
    let (spec, sync) = match handshake::<InitSpec>() {
        Ok(v) => v,
        Err((e, sync)) => return report(sync, &e),
    };
    let e = match build_and_exec(&spec, &sync) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    report(Some(sync), &e)
}

fn build_and_exec(spec: &InitSpec, sync: &OwnedFd) -> Result<std::convert::Infallible, StageError> {
    if let Some(ns) = &spec.netns {
        join(ns, CloneFlags::CLONE_NEWNET)?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS;
    if spec.ipc_private {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    unshare(flags).map_err(|errno| StageError::Os {
        what: "creating the mount and IPC namespaces".into(),
        errno,
    })?;
    rootfs::build(spec)?;
    // The task never inherits the agent's OOM preference (Nomad forces 0).
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    become_process(&spec.process, sync)
}

/// `goplugin container-exec`: enters a running container and runs a command in it.
pub fn exec_main(_args: Vec<std::ffi::OsString>) -> i32 {
    let (spec, sync) = match handshake::<ExecSpec>() {
        Ok(v) => v,
        Err((e, sync)) => return report(sync, &e),
    };
    let e = match enter_and_exec(&spec, &sync) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    report(Some(sync), &e)
}

fn enter_and_exec(spec: &ExecSpec, sync: &OwnedFd) -> Result<std::convert::Infallible, StageError> {
    let proc_dir = PathBuf::from(format!("/proc/{}", spec.init_pid));
    let open = |p: PathBuf| {
        std::fs::File::open(&p).map_err(|e| StageError::Io {
            what: format!("opening {} (is the task still running?)", p.display()),
            source: e,
        })
    };
    // Everything is opened before the mount namespace changes under us.
    let ipc = open(proc_dir.join("ns/ipc"))?;
    let net = open(proc_dir.join("ns/net"))?;
    let mnt = open(proc_dir.join("ns/mnt"))?;
    let root = open(proc_dir.join("root"))?;
    for (fd, flag, name) in [
        (&ipc, CloneFlags::CLONE_NEWIPC, "IPC"),
        (&net, CloneFlags::CLONE_NEWNET, "network"),
        (&mnt, CloneFlags::CLONE_NEWNS, "mount"),
    ] {
        setns(fd, flag).map_err(|errno| StageError::Os {
            what: format!("joining the task's {name} namespace"),
            errno,
        })?;
    }
    nix::unistd::fchdir(&root).map_err(|errno| StageError::Os {
        what: "entering the task's root".into(),
        errno,
    })?;
    nix::unistd::chroot(".").map_err(|errno| StageError::Os {
        what: "chroot into the task's root".into(),
        errno,
    })?;
    become_process(&spec.process, sync)
}

fn join(path: &Path, flag: CloneFlags) -> Result<(), StageError> {
    let f = std::fs::File::open(path).map_err(|e| StageError::Io {
        what: format!("opening namespace {}", path.display()),
        source: e,
    })?;
    setns(&f, flag).map_err(|errno| StageError::Os {
        what: format!("joining namespace {}", path.display()),
        errno,
    })
}

/// The command's path inside the container: as given when it has a `/`, else the first hit in
/// the process's `PATH` (or the usual default).
fn resolve_inside(cmd: &str, env: &[String]) -> Result<PathBuf, StageError> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| rootfs::is_executable(p))
        .ok_or_else(|| StageError::NotFound(cmd.to_string()))
}

fn cstrings(items: &[String], what: &str) -> Result<Vec<CString>, StageError> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| StageError::Spec(format!("{what} {s:?} holds a NUL byte")))
        })
        .collect()
}

/// Terminal, working directory, credentials, capabilities, then `execve`.
fn become_process(p: &ProcessSpec, sync: &OwnedFd) -> Result<std::convert::Infallible, StageError> {
    let os = |what: &str| {
        let what = what.to_string();
        move |errno| StageError::Os { what, errno }
    };
    let Some(cmd) = p.argv.first() else {
        return Err(StageError::Spec("empty argv".into()));
    };
    let path = resolve_inside(cmd, &p.env)?;
    let argv = cstrings(&p.argv, "argument")?;
    let env = cstrings(&p.env, "environment entry")?;
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| StageError::Spec("command path holds a NUL byte".into()))?;
    nix::unistd::setsid().map_err(os("starting a session"))?;
    if p.tty {
        terminal(p, sync)?;
    }
    let cwd = if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    };
    nix::unistd::chdir(cwd).map_err(|errno| StageError::Os {
        what: format!("changing to the working directory {cwd}"),
        errno,
    })?;
    credentials(p)?;
    if p.parent_death_kill {
        // SAFETY: prctl with integer arguments only.
        unsafe {
            nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL);
        }
    }
    // The sync socket closes on execve: that is how the executor learns it succeeded.
    nix::fcntl::fcntl(
        sync,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(os("marking the sync socket close-on-exec"))?;
    let errno = match nix::unistd::execve(&cpath, &argv, &env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(StageError::Exec {
        path: path.display().to_string(),
        errno,
    })
}

/// A PTY of the container's own devpts: the master goes to the executor, the slave becomes the
/// controlling terminal and fds 0-2.
fn terminal(p: &ProcessSpec, sync: &OwnedFd) -> Result<(), StageError> {
    use nix::fcntl::OFlag;
    let os = |what: &'static str| {
        move |errno| StageError::Os {
            what: what.into(),
            errno,
        }
    };
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).map_err(os("opening /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(os("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(os("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(os("ptsname"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(os("opening the terminal's slave"))?;
    nix::unistd::fchown(&slave, Some(p.user.uid.into()), None)
        .map_err(os("chowning the terminal"))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        sync.as_raw_fd(),
        &[std::io::IoSlice::new(&[PTY])],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(os("sending the terminal to the executor"))?;
    drop(master);
    // SAFETY: TIOCSCTTY takes an integer argument.
    if unsafe { nix::libc::ioctl(slave.as_raw_fd(), nix::libc::TIOCSCTTY, 0) } != 0 {
        return Err(StageError::Os {
            what: "making the terminal the controlling terminal".into(),
            errno: nix::Error::last(),
        });
    }
    for target in 0..3 as RawFd {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { nix::libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(StageError::Os {
                what: "putting the terminal on fds 0-2".into(),
                errno: nix::Error::last(),
            });
        }
    }
    Ok(())
}

/// Capabilities and user, in the order that keeps exactly the asked-for sets: bounding set
/// trimmed, capabilities kept over the uid change, then permitted, effective, inheritable and
/// ambient set.
fn credentials(p: &ProcessSpec) -> Result<(), StageError> {
    use caps::{CapSet, CapsHashSet};
    let capset = |set: &[u8]| -> CapsHashSet {
        caps::all()
            .into_iter()
            .filter(|c| set.contains(&c.index()))
            .collect()
    };
    let cap_err = |what: &'static str| {
        move |e: caps::errors::CapsError| StageError::Caps(format!("{what}: {e}"))
    };
    let supported = super::capabilities::supported();
    // What this process holds bounds what it can give (a host may withhold some capabilities
    // from root itself).
    let held = caps::read(None, CapSet::Permitted).map_err(cap_err("reading the permitted set"))?;
    let capset = |set: &[u8]| -> CapsHashSet {
        capset(set)
            .into_iter()
            .filter(|c| held.contains(c))
            .collect()
    };
    for c in &supported {
        if !p.caps.bounding.contains(&c.index()) {
            caps::drop(None, CapSet::Bounding, *c).map_err(cap_err("trimming the bounding set"))?;
        }
    }
    let os = |what: &'static str| {
        move |errno| StageError::Os {
            what: what.into(),
            errno,
        }
    };
    // SAFETY: prctl with integer arguments only.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_KEEPCAPS, 1);
    }
    let groups: Vec<nix::unistd::Gid> = p
        .user
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(os("setting the supplementary groups"))?;
    let gid = nix::unistd::Gid::from_raw(p.user.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(os("setting the gid"))?;
    let uid = nix::unistd::Uid::from_raw(p.user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(os("setting the uid"))?;
    // SAFETY: as above.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_KEEPCAPS, 0);
    }
    // Effective first: it must stay within permitted at every step.
    caps::set(None, CapSet::Effective, &capset(&p.caps.effective))
        .map_err(cap_err("setting the effective set"))?;
    caps::set(None, CapSet::Permitted, &capset(&p.caps.permitted))
        .map_err(cap_err("setting the permitted set"))?;
    caps::set(None, CapSet::Inheritable, &capset(&p.caps.inheritable))
        .map_err(cap_err("setting the inheritable set"))?;
    caps::clear(None, CapSet::Ambient).map_err(cap_err("clearing the ambient set"))?;
    for c in supported
        .iter()
        .filter(|c| p.caps.ambient.contains(&c.index()))
    {
        caps::raise(None, CapSet::Ambient, *c).map_err(cap_err("raising an ambient capability"))?;
    }
    Ok(())
}
