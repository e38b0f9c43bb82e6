//! Self-re-exec: one binary holds several plugins and runs the one named by `argv[1]` before
//! anything else in `main` happens; the Rust form of Nomad's `init()` dispatch. A host that
//! launches `current_exe() NAME ...` therefore always gets the plugin it was compiled with.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// A plugin entry point: gets the arguments after the name, returns the process exit code.
pub type EntryFn = fn(Vec<OsString>) -> i32;

/// A named plugin entry point.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The `argv[1]` that selects it.
    pub name: &'static str,
    /// What runs.
    pub run: EntryFn,
}

impl Entry {
    /// Names `run` as `name`.
    pub const fn new(name: &'static str, run: EntryFn) -> Self {
        Self { name, run }
    }
}

/// If `argv[1]` names one of `entries`, runs it and exits the process with its code; otherwise
/// returns so `main` goes on. Call it first in `main`. Exiting is the point of this explicit
/// helper (a re-executed child has nothing else to do); no other library call exits, except the
/// opt-in panic hook ([`crate::hclog::install_panic_hook`]).
///
/// ```no_run
/// use std::ffi::OsString;
/// use goplugin::reexec::{self, Entry};
///
/// fn kv_plugin(_args: Vec<OsString>) -> i32 {
///     // serve the plugin here (goplugin::Server), return its exit code
///     0
/// }
///
/// fn main() {
///     // `my-binary kv ...` runs the plugin; anything else falls through to the host below.
///     reexec::dispatch(&[Entry::new("kv", kv_plugin)]);
///     let cmd = reexec::command("kv").expect("this binary's own path");
///     // ...hand `cmd` to goplugin::Client::builder(cmd, handshake)
/// #   let _ = cmd;
/// }
/// ```
pub fn dispatch(entries: &[Entry]) {
    let mut args = std::env::args_os().skip(1);
    let Some(first) = args.next() else { return };
    if let Some(entry) = find(entries, &first) {
        let code = (entry.run)(args.collect());
        std::process::exit(code);
    }
}

/// The entry `name` selects, if any.
pub fn find<'a>(entries: &'a [Entry], name: &std::ffi::OsStr) -> Option<&'a Entry> {
    entries
        .iter()
        .find(|e| std::ffi::OsStr::new(e.name) == name)
}

/// A command that re-executes this very binary as plugin `name` (`/proc/self/exe` on Linux, so
/// a binary replaced on disk since start-up is not picked up by mistake).
pub fn command(name: &str) -> std::io::Result<Command> {
    let mut cmd = Command::new(self_exe()?);
    cmd.arg(name);
    Ok(cmd)
}

fn self_exe() -> std::io::Result<PathBuf> {
    let proc_self = PathBuf::from("/proc/self/exe");
    if proc_self.exists() {
        return Ok(proc_self);
    }
    std::env::current_exe()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seven(_: Vec<OsString>) -> i32 {
        7
    }

    #[test]
    fn finds_entry_by_exact_name() {
        let entries = [Entry::new("executor", seven), Entry::new("logmon", seven)];
        assert_eq!(
            find(&entries, std::ffi::OsStr::new("logmon")).map(|e| e.name),
            Some("logmon")
        );
        assert!(find(&entries, std::ffi::OsStr::new("log")).is_none());
    }
}
