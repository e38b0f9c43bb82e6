//! What the Nomad agent sends the driver (nomad-driver-plugin.md §6, §8, §11): the plugin config
//! and a task's `config {}` as go-cty msgpack (`PluginConfig::decode`, `TaskConfig::decode`), the
//! task handle's `driver_state` it hands back (`driver::state::TaskState::decode`), and the
//! strings inside them (`IdRanges::parse`, `glob_match`).
//!
//! Input: one mode byte, then the value. Mode 0: plugin config msgpack. Mode 1: task config
//! msgpack. Mode 2: `driver_state` msgpack. Mode 3: a uid/gid range list, a NUL, a glob and a
//! NUL and a name.
//!
//! Properties: never a panic; an accepted task config keeps its documented bounds and survives
//! the handle state's encode/decode; an accepted handle re-encodes to itself; a range list
//! contains exactly its ranges' ends; `glob_match` agrees with its documented meaning (`*` any
//! run, `?` one character, the rest literal), checked against a plain recursive matcher.
#![no_main]

use goplugin::nomad::driver::config::{glob_match, Helpers, IdRanges, PluginConfig, TaskConfig};
use goplugin::nomad::driver::state::{TaskState, STATE_VERSION};
use goplugin::nomad::driver::DRIVER_NAME;
use goplugin::reattach::ProcessIdentity;
use goplugin::ReattachConfig;
use libfuzzer_sys::fuzz_target;

fn handle_with(config: TaskConfig) -> TaskState {
    TaskState {
        driver: DRIVER_NAME.to_string(),
        version: STATE_VERSION,
        id: "2d9c0e8e/t/1".into(),
        name: "t".into(),
        alloc_id: "2d9c0e8e".into(),
        alloc_dir: "/var/nomad/alloc/2d9c0e8e".into(),
        user: String::new(),
        config,
        logs: None,
        helpers: Helpers::Combined,
        executor: ReattachConfig::new(2, "unix", "/tmp/plugin1", 42),
        logmon: None,
        task: ProcessIdentity {
            pid: 43,
            start_ticks: 7,
        },
        started_at_unix_nanos: 1,
    }
}

/// `*` any run, `?` one character, anything else itself.
fn reference_glob(p: &[char], n: &[char]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some(('*', rest)) => (0..=n.len()).any(|i| reference_glob(rest, &n[i..])),
        Some((c, rest)) => match n.split_first() {
            Some((d, tail)) if *c == '?' || c == d => reference_glob(rest, tail),
            _ => false,
        },
    }
}

fn strings(text: &str) {
    let mut parts = text.splitn(3, '\0');
    let (ranges, pattern, name) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if let Ok(r) = IdRanges::parse("denied_host_uids", ranges) {
        for &(lo, hi) in &r.0 {
            assert!(lo <= hi && r.contains(lo) && r.contains(hi));
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    if p.len() <= 16 && n.len() <= 16 {
        assert_eq!(
            glob_match(pattern, name),
            reference_glob(&p, &n),
            "glob {pattern:?} on {name:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let _ = PluginConfig::decode(rest);
        }
        1 => {
            let Ok(cfg) = TaskConfig::decode(rest) else {
                return;
            };
            assert!((0..=1000).contains(&cfg.oom_score_adj));
            assert!(cfg.max_files >= 1 && cfg.max_file_size_mb >= 1);
            assert!(cfg.work_dir.is_empty() || cfg.work_dir.starts_with('/'));
            let handle = handle_with(cfg);
            let again = TaskState::decode(&handle.encode()).expect("our own handle");
            assert_eq!(again, handle);
        }
        2 => {
            let Ok(handle) = TaskState::decode(rest) else {
                return;
            };
            let again = TaskState::decode(&handle.encode()).expect("re-encoded handle");
            assert_eq!(again, handle);
        }
        _ => strings(&String::from_utf8_lossy(rest)),
    }
});
