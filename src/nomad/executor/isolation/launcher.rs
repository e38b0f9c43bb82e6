//! Starting the in-container stages from the executor (spec nomad-executor-logmon.md §5.1.3):
//! a thread of its own that has unshared the PID namespace for its children (so the first
//! stage it starts is pid 1 of the task's namespace and every later `container-exec` lands in the
//! same namespace), the spec pipe and sync socket handed over on fds 3 and 4, the stage placed in
//! the task cgroups before it is told to go on, and its outcome read back: `execve` done, an
//! error, or a PTY master.
//!
//! The thread lives as long as the executor: a task's parent-death signal fires when the thread
//! that forked it ends.

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::sync::mpsc;

use nix::sys::socket::{
    recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

use super::spec::{FAILED, GO, PTY, SPEC_FD, SYNC_FD};
use super::IsolationError;
use crate::nomad::executor::cgroups::TaskCgroup;

type Job = Box<dyn FnOnce() + Send>;

/// How long a stage may take from its start to the `execve` of the task or command.
const STAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The thread every stage of one container is started from.
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// A spawner whose children start in a new PID namespace when `private_pid`.
    pub fn new(private_pid: bool) -> Result<Spawner, IsolationError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("container-spawner".into())
            .spawn(move || {
                let setup = if private_pid {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                } else {
                    Ok(())
                };
                let ok = setup.is_ok();
                let _ = ready_tx.send(setup);
                if !ok {
                    return;
                }
                for job in rx {
                    job();
                }
            })
            .map_err(|e| IsolationError::Namespaces(format!("starting the spawner thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Spawner { jobs }),
            Ok(Err(errno)) => Err(IsolationError::Namespaces(format!(
                "creating the PID namespace: {errno}"
            ))),
            Err(_) => Err(IsolationError::Namespaces(
                "the spawner thread ended".into(),
            )),
        }
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, IsolationError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| IsolationError::Namespaces("the spawner thread ended".into()))?;
        rx.recv()
            .map_err(|_| IsolationError::Namespaces("the spawner thread ended".into()))
    }
}

/// A stage that got as far as its `execve`.
pub struct Started {
    /// The process (the task or the command).
    pub child: tokio::process::Child,
    /// Its pid on the host.
    pub pid: u32,
    /// The PTY master, when the stage made one.
    pub pty: Option<OwnedFd>,
}

/// Where a stage is placed before it is told to go on.
pub struct Placement<'a> {
    /// The task's cgroups.
    pub cgroup: Option<&'a TaskCgroup>,
    /// The agent's cpuset cgroup the init is moved into afterwards (Nomad's CreateRuntime hook).
    pub cpuset: Option<&'a std::path::Path>,
}

fn high(fd: OwnedFd) -> Result<OwnedFd, IsolationError> {
    // Above the stage's fixed numbers, so the dup2s in the child cannot clobber each other.
    let raw = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(|e| IsolationError::Namespaces(format!("duplicating a descriptor: {e}")))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Starts `goplugin <stage>` with `spec` (JSON) and the given stdio, places it, lets it go on
/// and waits for its `execve`.
pub async fn start(
    spawner: &Spawner,
    stage: &'static str,
    spec: Vec<u8>,
    stdio: [std::process::Stdio; 3],
    placement: Placement<'_>,
) -> Result<Started, IsolationError> {
    let ns = |what: &str| {
        let what = what.to_string();
        move |e: nix::Error| IsolationError::Namespaces(format!("{what}: {e}"))
    };
    let (spec_r, spec_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ns("spec pipe"))?;
    let (sync_parent, sync_child) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(ns("sync socket"))?;
    let spec_r = high(spec_r)?;
    let sync_child = high(sync_child)?;
    let mut cmd = crate::reexec::command(stage)
        .map_err(|e| IsolationError::Namespaces(format!("finding this executable: {e}")))?;
    let [stdin, stdout, stderr] = stdio;
    cmd.stdin(stdin).stdout(stdout).stderr(stderr);
    let (a, b): (RawFd, RawFd) = (spec_r.as_raw_fd(), sync_child.as_raw_fd());
    // SAFETY: only async-signal-safe system calls on plain integers between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            crate::inherit::cloexec_from_3();
            if nix::libc::dup2(a, SPEC_FD) < 0 || nix::libc::dup2(b, SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let handle = tokio::runtime::Handle::current();
    let spawned = spawner.run(move || {
        let _entered = handle.enter();
        tokio::process::Command::from(cmd).spawn()
    })?;
    drop(spec_r);
    drop(sync_child);
    let mut child = spawned
        .map_err(|e| IsolationError::Namespaces(format!("starting the container stage: {e}")))?;
    let Some(pid) = child.id() else {
        return Err(IsolationError::Namespaces(
            "the container stage vanished".into(),
        ));
    };
    let outcome = async {
        let mut w = std::fs::File::from(spec_w);
        tokio::task::spawn_blocking(move || w.write_all(&spec))
            .await
            .map_err(|e| IsolationError::Namespaces(e.to_string()))?
            .map_err(|e| IsolationError::Namespaces(format!("writing the spec: {e}")))?;
        if let Some(cg) = placement.cgroup {
            cg.add_pid(pid).map_err(IsolationError::Cgroup)?;
        }
        if let Some(dir) = placement.cpuset {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
                IsolationError::Namespaces(format!(
                    "joining the cpuset cgroup {}: {e}",
                    dir.display()
                ))
            })?;
        }
        nix::unistd::write(&sync_parent, &[GO]).map_err(ns("starting the container stage"))?;
        let sync = sync_parent;
        let reading = tokio::task::spawn_blocking(move || read_outcome(&sync));
        // A stage that never gets to its execve (a mount hanging on a dead NFS server, say) is
        // killed, which ends the read.
        let pty = match tokio::time::timeout(STAGE_TIMEOUT, reading).await {
            Ok(joined) => joined.map_err(|e| IsolationError::Namespaces(e.to_string()))??,
            Err(_) => {
                return Err(IsolationError::Stage(format!(
                    "the container stage did not start the process within {} s",
                    STAGE_TIMEOUT.as_secs()
                )))
            }
        };
        Ok::<_, IsolationError>(pty)
    }
    .await;
    match outcome {
        Ok(pty) => Ok(Started { child, pid, pty }),
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(e)
        }
    }
}

/// Reads the stage's messages until EOF: `Ok(pty)` when it executed, the stage's own error
/// otherwise.
fn read_outcome(sync: &OwnedFd) -> Result<Option<OwnedFd>, IsolationError> {
    let mut pty = None;
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                sync.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    return Err(IsolationError::Namespaces(format!(
                        "reading the container stage: {e}"
                    )))
                }
            };
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        fds.extend(r);
                    }
                }
            }
            (msg.bytes, fds)
        };
        // SAFETY: SCM_RIGHTS gave this process new descriptors that nothing else owns.
        let mut owned: Vec<OwnedFd> = fds
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if n == 0 {
            return Ok(pty);
        }
        match buf[0] {
            PTY => pty = owned.pop(),
            FAILED => {
                return Err(IsolationError::Stage(
                    String::from_utf8_lossy(&buf[1..n]).into_owned(),
                ))
            }
            other => {
                return Err(IsolationError::Stage(format!(
                    "unexpected message {other:#x} from the container stage"
                )))
            }
        }
    }
}
