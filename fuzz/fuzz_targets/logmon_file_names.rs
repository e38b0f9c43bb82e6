//! The log directory as logmon and `goplugin logs` find it (nomad-executor-logmon.md §7.4): the
//! scan of `<base>.<N>` names, and the rotator that opens the highest one and writes on. The
//! logs dir is the task's to write, so any names can be there.
//!
//! Input: a byte of `max_files` (1..=4), a byte of the file size limit (1..=64), then lines:
//! names to create until an empty line (`d:NAME` a directory, `l:NAME` a symlink to a file
//! outside, else a file holding the rest of the line after a `=` if any), then the bytes the
//! task writes, split into writes at each `|`. Files live in a fresh directory in /dev/shm.
//!
//! Properties: never a panic; logmon's scan finds exactly the non-directory names `t.<N>` (N
//! canonical decimal within Go's int), the agent's at least those; the
//! rotator opens `t.<highest>`; after every write the file it writes to exists as a regular
//! file; with no purge, the files opened from there on hold exactly the bytes written, none
//! over the limit unless it already was.
#![no_main]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use goplugin::fuzzing::{agent_log_indices, logmon_indices};
use goplugin::nomad::logmon::rotator::Rotator;
use libfuzzer_sys::fuzz_target;

const BASE: &str = "t";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Dir {
    let root = Path::new("/dev/shm")
        .exists()
        .then(|| PathBuf::from("/dev/shm"))
        .unwrap_or_else(std::env::temp_dir);
    let dir = root.join(format!("goplugin-fuzz-logmon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("outside"), b"").unwrap();
    Dir(dir)
}

/// A usable file name from fuzz bytes, or none.
fn name_of(raw: &str) -> Option<&str> {
    let ok = !raw.is_empty()
        && raw.len() <= 200
        && raw != "."
        && raw != ".."
        && !raw.contains(['/', '\0']);
    ok.then_some(raw)
}

/// The index of a name the rotator writes: canonical decimal within Go's int.
fn index_of(name: &str) -> Option<u64> {
    let index: u64 = name.strip_prefix("t.")?.parse().ok()?;
    (name == format!("t.{index}") && i64::try_from(index).is_ok()).then_some(index)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_files = u32::from(data[0] % 4) + 1;
    let limit = u64::from(data[1] % 64) + 1;
    let text = String::from_utf8_lossy(&data[2..]);
    let (names, writes) = text.split_once("\n\n").unwrap_or((&text, ""));

    let scratch = scratch();
    let logs = scratch.0.join("logs");
    let mut expected = BTreeSet::new();
    let mut initial_sizes = std::collections::HashMap::new();
    for line in names.split('\n') {
        let (kind, rest) = match line.split_at_checked(2) {
            Some(("d:", rest)) => ('d', rest),
            Some(("l:", rest)) => ('l', rest),
            _ => ('f', line),
        };
        let (raw, content) = match kind {
            'f' => rest.split_once('=').unwrap_or((rest, "")),
            _ => (rest, ""),
        };
        let Some(name) = name_of(raw) else { continue };
        let path = logs.join(name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        let made = match kind {
            'd' => std::fs::create_dir(&path),
            'l' => std::os::unix::fs::symlink(scratch.0.join("outside"), &path),
            _ => std::fs::write(&path, content),
        };
        if made.is_ok() && kind != 'd' {
            if let Some(index) = index_of(name) {
                expected.insert(index);
                initial_sizes.insert(index, content.len() as u64);
            }
        }
    }

    let mut found = logmon_indices(&logs, BASE).expect("scan");
    found.sort_unstable();
    found.dedup();
    assert_eq!(found, expected.iter().copied().collect::<Vec<_>>());
    // The agent's scan (`goplugin logs`) is logmon's: the same files, ascending.
    let agent = agent_log_indices(&logs, BASE);
    assert_eq!(agent, expected.iter().copied().collect::<Vec<_>>());

    let first = expected.last().copied().unwrap_or(0);
    let mut rotator = match Rotator::open(&logs, BASE, max_files, limit) {
        Ok(rotator) => rotator,
        // With no log file yet, a directory `t.0` is refused as Nomad's rotator refuses it.
        Err(e) => {
            assert!(logs.join(format!("t.{first}")).is_dir(), "{e}");
            return;
        }
    };
    assert_eq!(rotator.current_path(), logs.join(format!("t.{first}")));

    let mut written = Vec::new();
    for chunk in writes.split('|').filter(|c| !c.is_empty()) {
        rotator.write(chunk.as_bytes()).expect("write");
        written.extend_from_slice(chunk.as_bytes());
        let meta = rotator
            .current_path()
            .symlink_metadata()
            .expect("the current file exists");
        assert!(meta.is_file());
    }
    let mut last: Vec<u64> = logmon_indices(&logs, BASE).unwrap();
    // A purge leaves exactly `max_files` names (as the purge counts them, duplicates included).
    if last.len() == max_files as usize || written.is_empty() {
        return;
    }
    last.sort_unstable();
    last.dedup();
    // No purge can have happened: every file from `first` on is ours, in order.
    let mut read = Vec::new();
    for index in last.iter().copied().filter(|i| *i >= first) {
        let path = logs.join(format!("t.{index}"));
        if path.symlink_metadata().map(|m| m.is_dir()).unwrap_or(true) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let before = initial_sizes.get(&index).copied().unwrap_or(0) as usize;
        assert!(
            bytes.len() as u64 <= limit.max(before as u64),
            "t.{index} over the limit"
        );
        read.extend_from_slice(&bytes[before..]);
    }
    assert_eq!(read, written);
});
