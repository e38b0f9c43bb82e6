//! Who an isolated task runs as, resolved as the requesting Nomad generation resolves it (spec
//! nomad-versions.md §5): Nomad 1.6 hands runc the user name, which looks it up in the
//! **chroot's** `/etc/passwd` and `/etc/group` (uid, primary gid, supplementary groups, `HOME`
//! only when the task has none); Nomad 1.7+ looks the user up on the host and appends `USER`,
//! `LOGNAME` and `HOME`. Nomad 1.7+ then sets only the uid and leaves gid 0 (a root group the
//! task never asked for); goplugin gives the user's own gid and groups instead.

use std::path::{Path, PathBuf};

use super::spec::Credentials;

/// Errors resolving a user.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Not in the chroot's passwd file (runc's text).
    #[error("unable to find user {user}: no matching entries in passwd file {file}")]
    NotInChroot {
        /// The user asked for.
        user: String,
        /// The file searched.
        file: PathBuf,
    },
    /// Not known on the host.
    #[error("failed to identify user {user:?}: {reason}")]
    NotOnHost {
        /// The user asked for.
        user: String,
        /// Why.
        reason: String,
    },
}

/// A resolved user and the environment entries that come with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// uid, gid, groups.
    pub creds: Credentials,
    /// Entries to append to the task's environment.
    pub env: Vec<String>,
}

fn has_key(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == key))
}

/// Resolves `user` (a name or a numeric uid; empty is root) for a task with environment `env`.
pub fn resolve(
    user: &str,
    rootfs: &Path,
    legacy: bool,
    env: &[String],
) -> Result<Resolved, UserError> {
    if user.is_empty() {
        return Ok(Resolved {
            creds: Credentials::default(),
            env: Vec::new(),
        });
    }
    if legacy {
        return in_chroot(user, rootfs, env);
    }
    let id = crate::nomad::executor::spawn::Identity::lookup(user).map_err(|e| {
        UserError::NotOnHost {
            user: user.to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(Resolved {
        creds: Credentials {
            uid: id.uid.as_raw(),
            gid: id.gid.as_raw(),
            groups: id.groups.iter().map(|g| g.as_raw()).collect(),
        },
        env: vec![
            format!("USER={}", id.name),
            format!("LOGNAME={}", id.name),
            format!("HOME={}", id.home.display()),
        ],
    })
}

/// runc's lookup in the container's own files.
fn in_chroot(user: &str, rootfs: &Path, env: &[String]) -> Result<Resolved, UserError> {
    let passwd_file = rootfs.join("etc/passwd");
    let not_found = || UserError::NotInChroot {
        user: user.to_string(),
        file: passwd_file.clone(),
    };
    let passwd = std::fs::read_to_string(&passwd_file).map_err(|_| not_found())?;
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .find(|f| f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user))
        .ok_or_else(not_found)?;
    let (Ok(uid), Ok(gid)) = (entry[2].parse::<u32>(), entry[3].parse::<u32>()) else {
        return Err(not_found());
    };
    let name = entry[0];
    let groups_text = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let mut groups: Vec<u32> = vec![gid];
    for f in groups_text
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
    {
        if f.len() >= 4 && f[3].split(',').any(|m| m.trim() == name) {
            if let Ok(g) = f[2].parse::<u32>() {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
    }
    let env_add = if has_key(env, "HOME") {
        Vec::new()
    } else {
        vec![format!("HOME={}", entry[5])]
    };
    Ok(Resolved {
        creds: Credentials { uid, gid, groups },
        env: env_add,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nomad16_reads_the_chroots_own_files() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2000::/srv/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "app:x:2000:\nextra:x:3000:root,app\n",
        )
        .unwrap();
        let r = resolve("app", root.path(), true, &[]).unwrap();
        assert_eq!(
            r.creds,
            Credentials {
                uid: 1234,
                gid: 2000,
                groups: vec![2000, 3000]
            }
        );
        assert_eq!(r.env, vec!["HOME=/srv/app".to_string()]);
        let r = resolve("app", root.path(), true, &["HOME=/x".into()]).unwrap();
        assert!(r.env.is_empty(), "HOME only when the task has none");
        let e = resolve("nobody", root.path(), true, &[]).unwrap_err();
        assert!(e.to_string().contains("unable to find user nobody"), "{e}");
    }

    #[test]
    fn nomad17_uses_the_host_and_appends_user_env() {
        let root = tempfile::tempdir().unwrap();
        let r = resolve("nobody", root.path(), false, &[]).unwrap();
        assert_eq!(r.creds.uid, 65534);
        assert_ne!(r.creds.gid, 0, "never the root group");
        assert!(r.env.contains(&"USER=nobody".to_string()));
        assert!(r.env.contains(&"LOGNAME=nobody".to_string()));
        assert!(resolve("no-such-user-x", root.path(), false, &[]).is_err());
    }
}
