//! Command resolution of the universal executor (spec nomad-executor-logmon.md §5.1.1): the first
//! of `<task_dir>/local/<cmd>`, `<task_dir>/<cmd>`, `<cmd>` when absolute, then the executor's own
//! `$PATH`; the file found is made executable (`perm | 0555`) as Nomad does, so an artifact
//! downloaded without its x bits still runs.

use std::path::{Path, PathBuf};

/// Errors resolving a task's command, with Nomad's texts.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Nothing matched (Nomad: `binary "<cmd>" could not be found`).
    #[error("binary {cmd:?} could not be found")]
    NotFound {
        /// The command asked for.
        cmd: String,
    },
    /// The file vanished or could not be made executable.
    #[error("binary {path:?} does not exist or cannot be made executable: {source}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Resolves `cmd` for a task in `task_dir`, searching `path_var` (the executor's `$PATH`) last.
pub fn resolve(cmd: &str, task_dir: &Path, path_var: Option<&str>) -> Result<PathBuf, LookupError> {
    let candidates = [task_dir.join("local").join(cmd), task_dir.join(cmd)];
    let found = candidates
        .into_iter()
        .filter(|_| !task_dir.as_os_str().is_empty())
        .find(|p| p.is_file())
        .or_else(|| {
            let p = PathBuf::from(cmd);
            (p.is_absolute() && p.is_file()).then_some(p)
        })
        .or_else(|| search_path(cmd, path_var))
        .ok_or_else(|| LookupError::NotFound {
            cmd: cmd.to_string(),
        })?;
    make_executable(&found)?;
    Ok(found)
}

fn search_path(cmd: &str, path_var: Option<&str>) -> Option<PathBuf> {
    if cmd.contains('/') {
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    path_var?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

pub(crate) fn make_executable(path: &Path) -> Result<(), LookupError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| LookupError::Unusable {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
    if mode & 0o555 != 0o555 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o555))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn prefers_task_local_then_task_dir_then_absolute_then_path() {
        let task = tempfile::tempdir().unwrap();
        std::fs::create_dir(task.path().join("local")).unwrap();
        std::fs::write(task.path().join("tool"), "#!/bin/sh\n").unwrap();
        assert_eq!(
            resolve("tool", task.path(), Some("/usr/bin")).unwrap(),
            task.path().join("tool")
        );
        std::fs::write(task.path().join("local/tool"), "#!/bin/sh\n").unwrap();
        let local = resolve("tool", task.path(), Some("/usr/bin")).unwrap();
        assert_eq!(local, task.path().join("local/tool"));
        let mode = std::fs::metadata(&local).unwrap().permissions().mode();
        assert_eq!(mode & 0o555, 0o555, "made executable as Nomad does");
        assert_eq!(
            resolve("/bin/sh", task.path(), None).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve("sh", task.path(), Some("/nonexistent:/bin")).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn missing_command_has_nomads_text() {
        let task = tempfile::tempdir().unwrap();
        let e = resolve("no-such-tool", task.path(), Some("/bin")).unwrap_err();
        assert_eq!(e.to_string(), "binary \"no-such-tool\" could not be found");
    }
}
