//! Plugin side: the opt-in panic hook that reports a Rust panic as a Go one (`panic: ` then the
//! frames, which a Go host logs at Error, §13 step 5) and exits with Go's status 2.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::panic::{Location, PanicHookInfo};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use super::*;

/// Replaces the panic hook with one that writes a Go-style report to the log descriptor:
/// `panic: <payload> at <file>:<line>:<col>`, a blank line, `thread '<name>' [running]:`, then
/// one backtrace frame per line. A Go host logs a line starting `panic: ` and every following
/// non-JSON line at Error (§13 step 5).
///
/// The descriptor is the one of [`init_plugin_logging`] (whenever it was called), otherwise a dup
/// of fd 2 taken now, otherwise stderr at panic time. The previous hook is not called: the
/// default one would print to fd 2, which a serving plugin has redirected into the stdio stream.
/// After the report the process exits with status 2 ([`PANIC_EXIT_CODE`]), as Go's does: an
/// explicit opt-in for a plugin's `main`, the one place besides [`crate::reexec::dispatch`]
/// where the library ends the process.
pub fn install_panic_hook() {
    let fallback: Option<SharedSink> = match GLOBAL_SINK.get() {
        Some(_) => None,
        None => dup_stderr()
            .ok()
            .map(|file| Arc::new(Mutex::new(Box::new(file) as Box<dyn Write + Send>))),
    };
    std::panic::set_hook(Box::new(move |info| {
        let report = panic_report_for(info);
        match GLOBAL_SINK.get().or(fallback.as_ref()) {
            Some(sink) => write_panic_report(sink, &report),
            None => {
                let _ = io::stderr().write_all(report.as_bytes());
            }
        }
        // A Go plugin dies on an unrecovered panic (exit status 2) and its host sees the crash;
        // tokio would otherwise swallow a panicking handler and leave a half-working plugin.
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// Exit status after a panic, as a Go program's.
pub const PANIC_EXIT_CODE: i32 = 2;

fn panic_report_for(info: &PanicHookInfo<'_>) -> String {
    // `PanicHookInfo::payload_as_str` is newer than the crate's MSRV.
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let thread = std::thread::current();
    let backtrace = std::backtrace::Backtrace::force_capture().to_string();
    panic_report(
        payload,
        info.location(),
        thread.name().unwrap_or("<unnamed>"),
        &backtrace,
    )
}

fn panic_report(
    payload: &str,
    location: Option<&Location<'_>>,
    thread: &str,
    backtrace: &str,
) -> String {
    let mut report = format!("panic: {payload}");
    if let Some(location) = location {
        let _ = write!(report, " at {location}");
    }
    let _ = write!(report, "\n\nthread '{thread}' [running]:\n");
    for frame in backtrace_frames(backtrace) {
        report.push_str(&frame);
        report.push('\n');
    }
    report
}

/// std prints a frame as `  N: symbol` and then `      at file:line:col` lines; fold each
/// frame into one line, as Go's trace gives one line per call, and drop the frames of the hook
/// and of std's panic machinery (up to `__rust_end_short_backtrace`, as std's short format does).
fn backtrace_frames(backtrace: &str) -> Vec<String> {
    let mut frames = fold_frames(backtrace);
    if let Some(marker) = frames
        .iter()
        .position(|frame| frame.contains("__rust_end_short_backtrace"))
    {
        frames.drain(..=marker);
    }
    frames
}

fn fold_frames(backtrace: &str) -> Vec<String> {
    let mut frames: Vec<String> = Vec::new();
    for line in backtrace.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match frames.last_mut() {
            Some(frame) if trimmed.starts_with("at ") => {
                frame.push(' ');
                frame.push_str(trimmed);
            }
            _ => frames.push(line.trim_end().to_string()),
        }
    }
    frames
}

fn write_panic_report(sink: &SharedSink, report: &str) {
    // The panicking thread may itself hold the lock (a writer that panicked); don't deadlock.
    let deadline = Instant::now() + PANIC_LOCK_WAIT;
    let mut guard = loop {
        match sink.try_lock() {
            Ok(guard) => break Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => break Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TryLockError::WouldBlock) => break None,
        }
    };
    match guard.as_mut() {
        Some(writer) => {
            let _ = writer.write_all(report.as_bytes());
            let _ = writer.flush();
        }
        None => {
            let _ = io::stderr().write_all(report.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    use tracing::Level;

    use crate::hclog::test_support::*;
    use std::process::Command;

    #[test]
    fn panic_report_folds_frames_onto_one_line_each() {
        let backtrace = "   0: app::inner\n             at ./src/main.rs:3:5\n   1: app::main\n             at ./src/main.rs:9:5\n   2: <unknown>\n";
        let report = panic_report("boom", None, "main", backtrace);
        assert_eq!(
            report,
            "panic: boom\n\nthread 'main' [running]:\n   0: app::inner at ./src/main.rs:3:5\n   1: app::main at ./src/main.rs:9:5\n   2: <unknown>\n"
        );
    }

    const CHILD_ENV: &str = "GOPLUGIN_HCLOG_TEST_CHILD";

    /// The body of the child process of `plugin_logging_and_panic_hook_reach_a_go_host_as_expected`.
    #[test]
    fn child_process_plugin_main() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        init_plugin_logging("hclog-child").expect("install logging");
        install_panic_hook();
        tracing::info!(answer = 42u64, "child up");
        tracing::trace!("filtered out by GOPLUGIN_LOG=debug");
        tracing::debug!("child debug");
        let payload = String::from("kaboom");
        nested_panic(&payload);
    }

    #[inline(never)]
    fn nested_panic(payload: &str) {
        panic!("{payload} in child");
    }

    #[test]
    fn plugin_logging_and_panic_hook_reach_a_go_host_as_expected() {
        let exe = std::env::current_exe().expect("test binary path");
        let output = Command::new(exe)
            .args([
                "--exact",
                "hclog::panic::tests::child_process_plugin_main",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env(LOG_FILTER_ENV, "debug")
            .output()
            .expect("run child");
        assert!(!output.status.success(), "child should panic");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();

        let mut parser = StderrLogParser::new();
        let parsed: Vec<LogLine> = lines.iter().map(|l| parser.parse(l)).collect();
        assert!(parsed.len() >= 3, "{stderr}");
        assert_eq!(parsed[0].level(), Level::INFO, "{stderr}");
        assert_eq!(parsed[0].text(), "child up");
        assert_eq!(fields_of(&parsed[0])["@module"], Value::from("hclog-child"));
        assert_eq!(fields_of(&parsed[0])["answer"], Value::from(42u64));
        assert_eq!(parsed[1].level(), Level::DEBUG);
        assert_eq!(parsed[1].text(), "child debug");

        let panic_at = lines
            .iter()
            .position(|l| l.starts_with("panic: "))
            .unwrap_or_else(|| panic!("no panic line in {stderr}"));
        assert_eq!(panic_at, 2, "{stderr}");
        let first = lines[panic_at];
        assert!(first.contains("kaboom in child"), "{first}");
        assert!(first.contains("panic.rs:"), "location missing: {first}");
        assert_eq!(lines[panic_at + 1], "");
        assert!(lines[panic_at + 2].ends_with("[running]:"), "{stderr}");
        let after = &lines[panic_at + 1..];
        assert!(
            after.len() >= 10,
            "only {} lines after panic: {stderr}",
            after.len()
        );
        assert!(stderr.contains("nested_panic"), "{stderr}");
        assert!(parsed[panic_at..].iter().all(|l| l.level() == Level::ERROR));
    }
}
