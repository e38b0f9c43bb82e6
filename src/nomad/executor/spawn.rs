//! How the universal executor starts a process (spec nomad-executor-logmon.md §5.1.2): the task's
//! user with the user's own groups (not Nomad's stray group 0), a new session, the task cgroups
//! joined by the child itself before exec (so the executor never is in them, nomad#4495), and the
//! task's `oom_score_adj` set on the child only. Everything the child does between fork and exec
//! is prepared before the fork: no allocation happens there.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

/// Errors preparing a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The user does not exist (Nomad: `failed to identify user`).
    #[error("failed to identify user {user:?}: {reason}")]
    User {
        /// The name asked for.
        user: String,
        /// Why.
        reason: String,
    },
}

/// Who a task runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Name (for USER/LOGNAME).
    pub name: String,
    /// Home directory (for HOME).
    pub home: PathBuf,
    /// uid.
    pub uid: Uid,
    /// Primary gid.
    pub gid: Gid,
    /// The user's groups from the group database (primary included).
    pub groups: Vec<Gid>,
}

impl Identity {
    /// Looks `name` up in the user and group databases.
    pub fn lookup(name: &str) -> Result<Identity, SpawnError> {
        let err = |reason: String| SpawnError::User {
            user: name.to_string(),
            reason,
        };
        let user = User::from_name(name)
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("no such user".into()))?;
        let cname = CString::new(name).map_err(|e| err(e.to_string()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid).unwrap_or_else(|_| vec![user.gid]);
        Ok(Identity {
            name: user.name,
            home: user.dir,
            uid: user.uid,
            gid: user.gid,
            groups,
        })
    }
}

/// What the child does between fork and exec.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// Start a new session (and process group) led by the child.
    pub new_session: bool,
    /// Make fd 0 the controlling terminal (after `new_session`).
    pub controlling_tty: bool,
    /// `cgroup.procs` files the child writes `0` (itself) into.
    pub cgroup_procs: Vec<CString>,
    /// Value for `/proc/self/oom_score_adj`.
    pub oom_score_adj: Option<i32>,
    /// Credentials to switch to.
    pub identity: Option<Identity>,
}

impl ChildSetup {
    /// Installs the setup on `cmd`.
    pub fn apply(&self, cmd: &mut std::process::Command) {
        let new_session = self.new_session;
        let controlling_tty = self.controlling_tty;
        let procs = self.cgroup_procs.clone();
        let oom = self
            .oom_score_adj
            .map(|v| v.to_string().into_bytes())
            .unwrap_or_default();
        let creds = self
            .identity
            .as_ref()
            .map(|id| (id.uid, id.gid, id.groups.clone()));
        // SAFETY: the closure only makes system calls on data prepared above (no allocation, no
        // locks), as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                crate::inherit::cloexec_from_3();
                if new_session {
                    nix::unistd::setsid()?;
                }
                if controlling_tty && nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for path in &procs {
                    write_file(path, b"0")?;
                }
                if !oom.is_empty() {
                    write_file(c"/proc/self/oom_score_adj", &oom)?;
                }
                if let Some((uid, gid, groups)) = &creds {
                    nix::unistd::setgroups(groups)?;
                    nix::unistd::setgid(*gid)?;
                    nix::unistd::setuid(*uid)?;
                }
                Ok(())
            });
        }
    }
}

fn write_file(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::write(&fd, data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_users_with_their_own_groups() {
        let nobody = Identity::lookup("nobody").unwrap();
        assert_eq!(nobody.name, "nobody");
        assert!(nobody.groups.contains(&nobody.gid));
        assert!(
            !nobody.groups.contains(&Gid::from_raw(0)),
            "no stray root group"
        );
        let e = Identity::lookup("no-such-user-x").unwrap_err().to_string();
        assert!(e.contains("no-such-user-x"), "{e}");
    }

    #[test]
    fn child_runs_as_the_user_in_a_new_session() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: switching users needs root");
            return;
        }
        let setup = ChildSetup {
            new_session: true,
            identity: Some(Identity::lookup("nobody").unwrap()),
            oom_score_adj: Some(500),
            ..Default::default()
        };
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "id -u; cut -d' ' -f6 /proc/$$/stat; echo $$; cat /proc/self/oom_score_adj; grep CapEff /proc/self/status",
        ]);
        setup.apply(&mut cmd);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], Uid::from_raw(65534).to_string(), "{text}");
        assert_eq!(lines[1], lines[2], "session leader: {text}");
        assert_eq!(lines[3], "500");
        assert!(
            lines[4].ends_with("0000000000000000"),
            "no effective caps: {text}"
        );
    }

    /// A task gets the descriptors it was given on 0, 1 and 2 only, none the executor holds
    /// without close-on-exec (as Nomad's os/exec gives it). The leak is recognised by the file
    /// the descriptor points at: `ls` opens a descriptor of its own, which may carry the number.
    #[test]
    fn the_child_inherits_only_its_stdio() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("held-by-the-executor");
        let leaky = std::fs::File::create(&marker).unwrap();
        let _inherited = nix::unistd::dup(&leaky).unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "ls -l /proc/$$/fd"]);
        ChildSetup::default().apply(&mut cmd);
        let out = cmd.output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains(" 0 -> "), "{listing}");
        assert!(
            !listing.contains(marker.to_str().unwrap()),
            "leaked: {listing}"
        );
    }
}
