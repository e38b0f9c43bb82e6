//! The one reader of Linux's `/proc/PID/stat` and `/proc/PID/status` (proc(5)), for the wire
//! core's process identity (a pid's start time, spec go-plugin-wire.md §15 and
//! nomad-executor-logmon.md §2.6: a reused pid is not the plugin) and for the Nomad helpers'
//! stats, descendants and process groups.
//!
//! The kernel's rules: field 2, the command name in parentheses, may hold any byte but NUL
//! (spaces, `)`, newlines, invalid UTF-8), so the fields after it start after the *last* `)`.
//! Nothing read here panics on odd content; every error names the file, so the pid, and the
//! field.

use std::path::PathBuf;

/// Errors reading a process's `/proc` files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    /// The file could not be read (most often: no such process any more).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No `)` closes the command name.
    #[error("{path} is malformed: no ')' ends the command name")]
    NoCommand {
        /// The file.
        path: PathBuf,
    },
    /// A field the caller needs is missing or not a number.
    #[error("{path} has no valid field {field} ({name}): {value:?}")]
    Field {
        /// The file.
        path: PathBuf,
        /// Its number in proc(5) (1-based: pid is 1, comm 2, state 3).
        field: usize,
        /// Its proc(5) name.
        name: &'static str,
        /// What was there (empty when missing).
        value: String,
    },
    /// A `/proc/PID/status` line is not `Key: N kB`.
    #[cfg_attr(not(feature = "nomad"), allow(dead_code))] // for the Nomad helpers only
    #[error("{path} has no valid {key} line: {value:?}")]
    StatusLine {
        /// The file.
        path: PathBuf,
        /// The line's key.
        key: &'static str,
        /// What followed it.
        value: String,
    },
}

/// The fields of `/proc/PID/stat` the crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 2, without its parentheses (lossy UTF-8).
    pub(crate) comm: String,
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `T`, ...
    pub(crate) state: char,
    /// Field 4.
    pub(crate) ppid: u32,
    /// Field 5: the process group.
    pub(crate) pgrp: i32,
    /// Field 14: user CPU time in clock ticks.
    pub(crate) utime: u64,
    /// Field 15: system CPU time in clock ticks.
    pub(crate) stime: u64,
    /// Field 22: start time in clock ticks after boot.
    pub(crate) start_ticks: u64,
    /// Field 24: resident set size in pages.
    pub(crate) rss_pages: u64,
}

impl Stat {
    /// Whether the process has ended and waits to be reaped.
    pub(crate) fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    /// Parses the content of a stat file read from `path` (named in errors).
    pub(crate) fn parse(path: impl Into<PathBuf>, raw: &[u8]) -> Result<Stat, ProcError> {
        let path = path.into();
        let open = raw.iter().position(|b| *b == b'(');
        let close = raw.iter().rposition(|b| *b == b')');
        let (open, close) = match (open, close) {
            (Some(open), Some(close)) if open < close => (open, close),
            _ => return Err(ProcError::NoCommand { path }),
        };
        let comm = String::from_utf8_lossy(&raw[open + 1..close]).into_owned();
        // After the name everything is ASCII; anything else fails the field that holds it.
        let rest = String::from_utf8_lossy(&raw[close + 1..]);
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        let field = |n: usize, name: &'static str| Fields {
            path: &path,
            fields: &fields,
            n,
            name,
        };
        let state = field(3, "state").text()?;
        let mut chars = state.chars();
        let (Some(state), None) = (chars.next(), chars.next()) else {
            return Err(field(3, "state").invalid(state));
        };
        Ok(Stat {
            comm,
            state,
            ppid: field(4, "ppid").number()?,
            pgrp: field(5, "pgrp").number()?,
            utime: field(14, "utime").number()?,
            stime: field(15, "stime").number()?,
            start_ticks: field(22, "starttime").number()?,
            rss_pages: field(24, "rss").number()?,
        })
    }
}

/// One field of a stat file, by its proc(5) number.
struct Fields<'a> {
    path: &'a PathBuf,
    /// The fields after the command name: field 3 is index 0.
    fields: &'a [&'a str],
    n: usize,
    name: &'static str,
}

impl<'a> Fields<'a> {
    fn text(&self) -> Result<&'a str, ProcError> {
        self.fields
            .get(self.n - 3)
            .copied()
            .ok_or_else(|| self.invalid(""))
    }

    fn number<T: std::str::FromStr>(&self) -> Result<T, ProcError> {
        let text = self.text()?;
        text.parse().map_err(|_| self.invalid(text))
    }

    fn invalid(&self, value: &str) -> ProcError {
        ProcError::Field {
            path: self.path.clone(),
            field: self.n,
            name: self.name,
            value: value.to_string(),
        }
    }
}

fn read(path: PathBuf) -> Result<(PathBuf, Vec<u8>), ProcError> {
    match std::fs::read(&path) {
        Ok(raw) => Ok((path, raw)),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// `/proc/PID/stat` of process `pid`.
pub(crate) fn stat(pid: u32) -> Result<Stat, ProcError> {
    let (path, raw) = read(PathBuf::from(format!("/proc/{pid}/stat")))?;
    Stat::parse(path, &raw)
}

/// `/proc/self/task/TID/stat`: one thread of this process.
#[cfg(test)]
pub(crate) fn thread_stat(tid: i32) -> Result<Stat, ProcError> {
    let (path, raw) = read(PathBuf::from(format!("/proc/self/task/{tid}/stat")))?;
    Stat::parse(path, &raw)
}

/// A `kB` line of `/proc/PID/status` (`VmSwap`, `VmRSS`, ...) in bytes; `None` when the kernel
/// does not print it (a kernel thread, a zombie, a kernel without swap accounting).
#[cfg_attr(not(feature = "nomad"), allow(dead_code))] // for the Nomad helpers only
pub(crate) fn status_bytes(pid: u32, key: &'static str) -> Result<Option<u64>, ProcError> {
    let (path, raw) = read(PathBuf::from(format!("/proc/{pid}/status")))?;
    status_bytes_in(path, &raw, key)
}

#[cfg_attr(not(feature = "nomad"), allow(dead_code))] // for the Nomad helpers only
fn status_bytes_in(path: PathBuf, raw: &[u8], key: &'static str) -> Result<Option<u64>, ProcError> {
    let text = String::from_utf8_lossy(raw);
    let Some(value) = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
    else {
        return Ok(None);
    };
    let invalid = || ProcError::StatusLine {
        path: path.clone(),
        key,
        value: value.trim().to_string(),
    };
    let mut words = value.split_ascii_whitespace();
    let kib: u64 = words
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(invalid)?;
    if words.next() != Some("kB") {
        return Err(invalid());
    }
    kib.checked_mul(1024).map(Some).ok_or_else(invalid)
}

/// The pids `/proc` lists now (threads are not listed there, only thread-group leaders).
#[cfg_attr(not(feature = "nomad"), allow(dead_code))] // for the Nomad helpers only
pub(crate) fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line as the kernel prints it, with `comm` as field 2 and the real field layout
    /// (52 fields) around it: state S, ppid 1, pgrp 77, utime 11, stime 12, starttime 4242,
    /// rss 300; tpgid (field 8) is -1 as for a process without a terminal.
    fn line(comm: &[u8]) -> Vec<u8> {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        for (n, v) in [
            (3, "S"),
            (4, "1"),
            (5, "77"),
            (8, "-1"),
            (14, "11"),
            (15, "12"),
            (22, "4242"),
            (24, "300"),
        ] {
            fields[n - 3] = v.to_string();
        }
        let mut raw = b"123 (".to_vec();
        raw.extend_from_slice(comm);
        raw.extend_from_slice(b") ");
        raw.extend_from_slice(fields.join(" ").as_bytes());
        raw.push(b'\n');
        raw
    }

    #[test]
    fn reads_the_fields_after_the_last_parenthesis_whatever_the_name() {
        for comm in [
            &b"sleep"[..],
            b"a b",
            b"x) S 9 9 9",
            b")",
            b"((",
            b") (",
            b"",
            b"new\nline",
            b"\xff\xfe)",
        ] {
            let st = Stat::parse("/proc/123/stat", &line(comm)).unwrap();
            assert_eq!(
                (st.state, st.ppid, st.pgrp, st.utime, st.stime),
                ('S', 1, 77, 11, 12),
                "{comm:?}"
            );
            assert_eq!((st.start_ticks, st.rss_pages), (4242, 300), "{comm:?}");
            assert_eq!(st.comm, String::from_utf8_lossy(comm), "{comm:?}");
            assert!(!st.is_zombie());
        }
    }

    #[test]
    fn odd_content_is_an_error_naming_the_file_and_the_field() {
        let path = "/proc/123/stat";
        let no_name = Stat::parse(path, b"123 sleep S 1").unwrap_err().to_string();
        assert!(
            no_name.contains("/proc/123/stat") && no_name.contains("')'"),
            "{no_name}"
        );
        let reversed = Stat::parse(path, b"123 )sleep( S 1").unwrap_err();
        assert!(
            matches!(reversed, ProcError::NoCommand { .. }),
            "{reversed}"
        );
        let short = Stat::parse(path, b"123 (sleep) S 1 77")
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("/proc/123/stat") && short.contains("field 14 (utime)"),
            "{short}"
        );
        let mut garbled = line(b"t");
        let at = garbled.windows(4).position(|w| w == b"4242").unwrap();
        garbled[at] = b'x';
        let e = Stat::parse(path, &garbled).unwrap_err().to_string();
        assert!(
            e.contains("field 22 (starttime)") && e.contains("x242"),
            "{e}"
        );
        let two = Stat::parse(path, b"1 (t) SZ 1").unwrap_err().to_string();
        assert!(two.contains("field 3 (state)"), "{two}");
        assert!(Stat::parse(path, b"").is_err());
        assert!(Stat::parse(path, b"\xff(\xff)\xff\xff").is_err());
    }

    #[test]
    fn status_lines_are_read_in_bytes_and_a_missing_one_is_none() {
        let raw = b"Name:\tsh\nVmRSS:\t    1024 kB\nVmSwap:\t       3 kB\n";
        let get = |key| status_bytes_in("/proc/1/status".into(), raw, key);
        assert_eq!(get("VmSwap").unwrap(), Some(3 * 1024));
        assert_eq!(get("VmRSS").unwrap(), Some(1 << 20));
        assert_eq!(get("VmPTE").unwrap(), None);
        assert_eq!(get("Vm").unwrap(), None, "a prefix is not a key");
        let bad = status_bytes_in("/proc/1/status".into(), b"VmSwap:\tlots kB\n", "VmSwap");
        let e = bad.unwrap_err().to_string();
        assert!(e.contains("/proc/1/status") && e.contains("VmSwap"), "{e}");
    }

    /// The real `/proc` of a child started through a symlink whose name (the kernel's comm)
    /// holds spaces and parentheses: its parent is us, its start time follows ours.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_a_real_child_with_an_odd_name() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("x) (y z");
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("sleep");
        std::os::unix::fs::symlink(sleep, &odd).unwrap();
        let mut child = std::process::Command::new(&odd).arg("30").spawn().unwrap();
        let me = stat(std::process::id()).unwrap();
        // Until its exec the child is a copy of us, with our name: wait for the link's.
        let t0 = std::time::Instant::now();
        let st = loop {
            let st = stat(child.id()).unwrap();
            if st.comm != me.comm || t0.elapsed() > std::time::Duration::from_secs(5) {
                break st;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(st.comm, "x) (y z");
        assert_eq!(st.ppid, std::process::id());
        assert!(matches!(st.state, 'S' | 'R'), "{st:?}");
        assert!(st.start_ticks >= me.start_ticks, "{st:?} vs {me:?}");
        let e = stat(child.id()).unwrap_err().to_string();
        assert!(e.contains(&format!("/proc/{}/stat", child.id())), "{e}");
        assert!(pids().contains(&std::process::id()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_resident_memory_and_a_main_thread() {
        let me = stat(std::process::id()).unwrap();
        assert!(me.rss_pages > 0 && !me.is_zombie(), "{me:?}");
        assert!(status_bytes(std::process::id(), "VmRSS").unwrap().unwrap() > 0);
        // The main thread's tid is the pid.
        let main = thread_stat(std::process::id() as i32).unwrap();
        assert_eq!(main.start_ticks, me.start_ticks);
    }
}
