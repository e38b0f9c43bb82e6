//! Nomad's log file rotator (spec nomad-executor-logmon.md §7.4): `<dir>/<base>.<N>` files of at
//! most `limit` bytes, newline-aware near the end of a file, the oldest purged beyond `max_files`.
//!
//! Same file sets as Nomad's rotator on the spec's worked examples, with one documented
//! difference: Nomad's size counter adds the cumulative bytes of a call on every loop iteration
//! (its **quirk**), so a chunk that spans files makes it rotate early; we count each slice once,
//! so our files are filled to the limit. Writes go straight to the file (no user-space buffer), so
//! what the task printed is on disk as soon as it was read: nothing to flush on a timer.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Near the end of a file, a line up to this long is kept whole by starting a new file.
const LINE_WINDOW: u64 = 32 * 1024;

/// Errors of the rotator; each names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum RotatorError {
    /// The log directory cannot be read (missing, not a directory, no permission).
    #[error("log directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Opening or creating a log file failed.
    #[error("opening log file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing a log file failed (e.g. ENOSPC); the bytes not written are still the caller's.
    #[error("writing log file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Writes one stream's log into rotated files.
#[derive(Debug)]
pub struct Rotator {
    dir: PathBuf,
    base: String,
    limit: u64,
    max_files: u32,
    index: u64,
    size: u64,
    file: File,
    force_rotate: bool,
}

impl Rotator {
    /// Opens the highest existing `<base>.<N>` in `dir` for appending (or creates `<base>.0`).
    pub fn open(
        dir: &Path,
        base: &str,
        max_files: u32,
        limit_bytes: u64,
    ) -> Result<Rotator, RotatorError> {
        let index = existing_indices(dir, base)?.into_iter().max().unwrap_or(0);
        let path = file_path(dir, base, index);
        let file = open_append(&path)?;
        let size = file
            .metadata()
            .map_err(|source| RotatorError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        Ok(Rotator {
            dir: dir.to_path_buf(),
            base: base.to_string(),
            limit: limit_bytes.max(1),
            max_files: max_files.max(1),
            index,
            size,
            file,
            force_rotate: false,
        })
    }

    /// The file being written now.
    pub fn current_path(&self) -> PathBuf {
        file_path(&self.dir, &self.base, self.index)
    }

    /// Writes all of `data`, rotating as needed. On error, `Err((written, e))` tells how much of
    /// `data` is already on disk so the caller can retry the rest.
    pub fn write(&mut self, data: &[u8]) -> Result<(), (usize, RotatorError)> {
        let mut done = 0;
        while done < data.len() {
            if self.force_rotate || self.size >= self.limit {
                self.rotate().map_err(|e| (done, e))?;
            }
            let rest = &data[done..];
            let n = self.next_slice(rest);
            if n == 0 {
                self.force_rotate = true;
                continue;
            }
            self.file.write_all(&rest[..n]).map_err(|source| {
                (
                    done,
                    RotatorError::Write {
                        path: self.current_path(),
                        source,
                    },
                )
            })?;
            self.size += n as u64;
            done += n;
        }
        Ok(())
    }

    /// How many bytes of `rest` go into the current file (0: start a new file first).
    fn next_slice(&self, rest: &[u8]) -> usize {
        let remaining = self.limit.saturating_sub(self.size);
        let len = rest.len() as u64;
        if remaining.saturating_sub(LINE_WINDOW) >= len {
            return rest.len();
        }
        // Every whole line that still fits, in one write (one write per line once made near
        // every file's end 4x the write calls of Nomad's buffered rotator).
        let window = &rest[..remaining.min(len) as usize];
        if let Some(i) = window.iter().rposition(|&b| b == b'\n') {
            return i + 1;
        }
        match rest.iter().position(|&b| b == b'\n') {
            // A line that does not fit: start it in a new file, unless the file is fresh.
            Some(_) if self.size > 0 => 0,
            Some(_) => remaining.min(len) as usize,
            // A partial line near the end goes whole into the next file, unless it could never
            // fit one or this file is fresh (Nomad would rotate forever there).
            None if len > self.limit || self.limit < LINE_WINDOW || self.size == 0 => {
                remaining.min(len) as usize
            }
            None => 0,
        }
    }

    fn rotate(&mut self) -> Result<(), RotatorError> {
        self.force_rotate = false;
        loop {
            self.index += 1;
            let path = self.current_path();
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() || (m.is_file() && m.len() >= self.limit) => continue,
                _ => {}
            }
            self.file = open_append(&path)?;
            self.size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            break;
        }
        self.purge();
        Ok(())
    }

    /// Deletes the lowest indices so that `max_files` files remain (the current one included).
    fn purge(&self) {
        let Ok(mut indices) = existing_indices(&self.dir, &self.base) else {
            return;
        };
        if indices.len() <= self.max_files as usize {
            return;
        }
        indices.sort_unstable();
        let excess = indices.len() - self.max_files as usize;
        for index in &indices[..excess] {
            let path = file_path(&self.dir, &self.base, *index);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot purge old log file: {e}");
            }
        }
    }
}

fn file_path(dir: &Path, base: &str, index: u64) -> PathBuf {
    dir.join(format!("{base}.{index}"))
}

/// Opens a log file for appending without following a symlink: the logs dir is writable by the
/// task, and logmon runs as root, so a task's `web.stdout.0 -> /etc/shadow` must not make it
/// append there (Nomad 1.7+ opens through `os.Root` for the same reason). A symlink with a log
/// file's name is logmon's to replace.
fn open_append(path: &Path) -> Result<File, RotatorError> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO planted under a log file's name must not block the open (logmon
    // would hang on it); it is refused below like any other non-file.
    let open = || {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)?;
        if f.metadata()?.is_file() {
            Ok(f)
        } else {
            Err(io::Error::from_raw_os_error(nix::libc::ELOOP))
        }
    };
    let err = |source| RotatorError::Open {
        path: path.to_path_buf(),
        source,
    };
    match open() {
        // A symlink (ELOOP from O_NOFOLLOW), or a FIFO or device (ENXIO without a reader, or
        // refused above once open): logmon's name, logmon's to replace with a file.
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ELOOP | nix::libc::ENXIO)) => {
            tracing::warn!(path = %path.display(), "log file was not a regular file; replacing it with one");
            std::fs::remove_file(path).map_err(err)?;
            open().map_err(err)
        }
        other => other.map_err(err),
    }
}

/// Indices `N` of the files `<base>.<N>` in `dir` (directories of that name are not log files).
pub(crate) fn existing_indices(dir: &Path, base: &str) -> Result<Vec<u64>, RotatorError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RotatorError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let prefix = format!("{base}.");
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name();
            let suffix = name.to_str()?.strip_prefix(&prefix)?.to_string();
            let index = suffix.parse::<u64>().ok()?;
            // Only names the rotator writes: `t.01` or `t.+1` would alias `t.1` and skew the
            // purge count (found by fuzz/logmon_file_names), and an index past Go's int, which
            // Nomad's scan skips, would overflow at the next rotation.
            (suffix == index.to_string() && i64::try_from(index).is_ok()).then_some(index)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(dir: &Path, base: &str) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = existing_indices(dir, base)
            .unwrap()
            .into_iter()
            .map(|i| (i, std::fs::metadata(file_path(dir, base, i)).unwrap().len()))
            .collect();
        v.sort();
        v
    }

    /// Mirrors Nomad TestFileRotator_IncorrectPath.
    #[test]
    fn missing_directory_is_an_error_naming_it() {
        let e = Rotator::open(Path::new("/nonexistent/logs"), "web.stdout", 10, 5).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/logs"), "{e}");
        assert!(e.to_string().contains("No such file or directory"), "{e}");
    }

    /// Mirrors Nomad TestFileRotator_CreateNewFile and TestFileRotator_OpenLastFile.
    #[test]
    fn creates_file_zero_and_reopens_the_highest_index() {
        let d = tempfile::tempdir().unwrap();
        let r = Rotator::open(d.path(), "t", 10, 5).unwrap();
        assert_eq!(r.current_path(), d.path().join("t.0"));
        std::fs::write(d.path().join("t.2"), b"").unwrap();
        let r = Rotator::open(d.path(), "t", 10, 5).unwrap();
        assert_eq!(r.current_path(), d.path().join("t.2"));
    }

    /// Mirrors Nomad TestFileRotator_WriteToCurrentFile and TestFileRotator_RotateFiles.
    #[test]
    fn fills_to_the_limit_then_rotates() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Rotator::open(d.path(), "t", 10, 5).unwrap();
        r.write(b"abcdefgh").unwrap();
        assert_eq!(sizes(d.path(), "t"), vec![(0, 5), (1, 3)]);
    }

    /// Mirrors Nomad TestFileRotator_RotateFiles_Boundary: newline-aware splitting.
    #[test]
    fn keeps_lines_whole_near_the_end_of_a_file() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Rotator::open(d.path(), "t", 10, 5).unwrap();
        r.write(b"ab\ncdef\n").unwrap();
        r.write(b"1234567890").unwrap();
        r.write(b"\n").unwrap();
        assert_eq!(
            sizes(d.path(), "t"),
            vec![(0, 3), (1, 5), (2, 5), (3, 5), (4, 1)]
        );
        let all: Vec<u8> = (0..5)
            .flat_map(|i| std::fs::read(file_path(d.path(), "t", i)).unwrap())
            .collect();
        assert_eq!(all, b"ab\ncdef\n1234567890\n");
    }

    /// Mirrors Nomad TestFileRotator_WriteRemaining.
    #[test]
    fn appends_to_an_existing_partial_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t.0"), b"abcd").unwrap();
        let mut r = Rotator::open(d.path(), "t", 10, 5).unwrap();
        r.write(b"efghijkl").unwrap();
        assert_eq!(sizes(d.path(), "t"), vec![(0, 5), (1, 5), (2, 2)]);
    }

    /// Mirrors Nomad TestFileRotator_PurgeOldFiles.
    #[test]
    fn purges_beyond_max_files() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Rotator::open(d.path(), "t", 2, 2).unwrap();
        r.write(b"0123456789abc").unwrap();
        let left = sizes(d.path(), "t");
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(left, vec![(5, 2), (6, 1)]);
    }

    /// Nomad's 1 MiB example: 1 MiB of data without newlines in 32 KiB reads gives .0 and .1,
    /// no .2: the last read, a partial line near the end of .0, starts .1.
    #[test]
    fn one_mib_of_data_in_one_mib_files() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Rotator::open(d.path(), "t", 10, 1024 * 1024).unwrap();
        let data: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        for chunk in data.chunks(32 * 1024) {
            r.write(chunk).unwrap();
        }
        r.write(b"x").unwrap();
        let s = sizes(d.path(), "t");
        assert_eq!(s, vec![(0, 1024 * 1024 - 32 * 1024), (1, 32 * 1024 + 1)]);
    }

    #[test]
    fn other_files_and_directories_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("t.1")).unwrap();
        std::fs::write(d.path().join("t.backup"), b"keep").unwrap();
        let mut r = Rotator::open(d.path(), "t", 10, 5).unwrap();
        assert_eq!(r.current_path(), d.path().join("t.0"));
        // t.1 is a directory: rotation skips past it.
        r.write(b"0123456789").unwrap();
        assert_eq!(sizes(d.path(), "t"), vec![(0, 5), (2, 5)]);
        assert!(d.path().join("t.backup").exists() && d.path().join("t.1").is_dir());
    }

    /// Found by fuzz/logmon_file_names: `t.00` and `t.01` counted as indices 0 and 1 next to the
    /// real `t.0` and `t.1`, so a purge kept fewer real files than `max_files`, and aliases of a
    /// later index planted while running could get the file being written purged.
    #[test]
    fn aliases_of_an_index_are_not_log_files() {
        let d = tempfile::tempdir().unwrap();
        for alias in ["t.00", "t.01", "t.001", "t.+1", "t.-0"] {
            std::fs::write(d.path().join(alias), b"x").unwrap();
        }
        assert_eq!(existing_indices(d.path(), "t").unwrap(), Vec::<u64>::new());
        let mut r = Rotator::open(d.path(), "t", 2, 5).unwrap();
        assert_eq!(r.current_path(), d.path().join("t.0"));
        r.write(b"abcdefghij").unwrap();
        assert_eq!(sizes(d.path(), "t"), vec![(0, 5), (1, 5)]);
        r.write(b"kl").unwrap();
        assert_eq!(sizes(d.path(), "t"), vec![(1, 5), (2, 2)]);
        assert!(
            d.path().join("t.01").exists(),
            "names not ours are left alone"
        );
    }

    /// A planted `t.18446744073709551615` made the next rotation overflow the index (a panic
    /// in debug builds, a wrap to `t.0` in release); names past Go's int are not log files.
    #[test]
    fn an_index_past_gos_int_is_not_a_log_file() {
        let d = tempfile::tempdir().unwrap();
        for name in ["t.18446744073709551615", "t.9223372036854775808"] {
            std::fs::write(d.path().join(name), b"").unwrap();
        }
        std::fs::write(d.path().join("t.9223372036854775807"), b"").unwrap();
        let mut r = Rotator::open(d.path(), "t", 10, 5).unwrap();
        assert_eq!(r.current_path(), d.path().join("t.9223372036854775807"));
        r.write(b"abcdefghij").unwrap();
        assert_eq!(r.current_path(), d.path().join("t.9223372036854775808"));
    }

    /// A task that plants `t.0 -> victim` (or a later index) in the shared logs dir gets a
    /// regular log file there; the victim is never written.
    #[test]
    fn symlinks_with_log_file_names_are_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"secret\n").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("t.0")).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("t.1")).unwrap();
        let mut r = Rotator::open(d.path(), "t", 10, 5).unwrap();
        r.write(b"12345678").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret\n");
        // Writing starts at the highest index (t.1, the link), then rotates to t.2.
        for (name, want) in [("t.1", &b"12345"[..]), ("t.2", &b"678"[..])] {
            let p = d.path().join(name);
            assert!(std::fs::symlink_metadata(&p).unwrap().is_file(), "{name}");
            assert_eq!(std::fs::read(&p).unwrap(), want, "{name}");
        }
    }

    /// A FIFO (or other non-file) planted under a log file's name would block the open or take
    /// the output: it is replaced by a regular file.
    #[test]
    fn a_fifo_with_a_log_file_name_is_replaced_not_opened() {
        use std::os::unix::fs::FileTypeExt;
        let d = tempfile::tempdir().unwrap();
        let planted = d.path().join("t.0");
        nix::unistd::mkfifo(&planted, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_fifo());
        let mut r = Rotator::open(d.path(), "t", 10, 1024).unwrap();
        r.write(b"line\n").unwrap();
        assert!(std::fs::symlink_metadata(&planted).unwrap().is_file());
        assert_eq!(std::fs::read(&planted).unwrap(), b"line\n");
    }
}
