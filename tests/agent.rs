//! `goplugin run` and the commands on a detached task, through the real binary: output, exit
//! codes, Ctrl-C as the task's shutdown, detach/status/logs/exec/stop, and bad input (one line,
//! non-zero exit, nothing left running).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_goplugin");

/// `goplugin SUBCOMMAND --dir DIR REST...` (the option must come before a `--` command).
fn goplugin(dir: &Path, args: &[&str]) -> Output {
    let (sub, rest) = args.split_first().unwrap();
    Command::new(BIN)
        .arg(sub)
        .arg("--dir")
        .arg(dir)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| text(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[test]
fn runs_a_task_shows_its_output_and_exits_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = goplugin(
        dir.path(),
        &[
            "run",
            "--name",
            "hello",
            "--",
            "sh",
            "-c",
            "echo out-line; echo err-line >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out-line\n");
    let err = text(&out.stderr);
    assert!(err.contains("err-line"), "{err}");
    assert!(err.contains("task hello exited with code 3"), "{err}");
    let logs = dir.path().join("hello/logs");
    assert_eq!(
        std::fs::read_to_string(logs.join("hello.stdout.0")).unwrap(),
        "out-line\n"
    );
    assert_eq!(
        std::fs::read_to_string(logs.join("hello.stderr.0")).unwrap(),
        "err-line\n"
    );
    assert!(
        processes_with(&dir.path().display().to_string()).is_empty(),
        "helpers gone"
    );
}

#[test]
fn ctrl_c_becomes_the_task_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args(["run", "--name", "trap", "--kill-timeout", "5s", "--dir"])
        .arg(dir.path())
        .args([
            "--",
            "sh",
            "-c",
            "trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = dir.path().join("trap/logs/trap.stdout.0");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(t0.elapsed() < Duration::from_secs(20), "task did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("got INT"));
}

#[test]
fn detached_task_status_logs_exec_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let out = goplugin(
        dir.path(),
        &[
            "run",
            "--name",
            "bg",
            "--detach",
            "--",
            "sh",
            "-c",
            "while :; do echo tick; sleep 0.1; done",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = dir.path().join("bg/logs/bg.stdout.0");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("tick")
    {
        assert!(t0.elapsed() < Duration::from_secs(20), "task did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = goplugin(dir.path(), &["status", "bg"]);
    assert!(
        text(&status.stdout).starts_with("task bg running"),
        "{}",
        text(&status.stderr)
    );
    let logs = goplugin(dir.path(), &["logs", "bg"]);
    assert!(text(&logs.stdout).starts_with("tick\n"));
    let again = goplugin(dir.path(), &["run", "--name", "bg", "--", "true"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already running"));
    let exec = goplugin(
        dir.path(),
        &["exec", "bg", "--", "sh", "-c", "echo inside; exit 4"],
    );
    assert_eq!(exec.status.code(), Some(4));
    assert_eq!(text(&exec.stdout), "inside\n");
    let stop = goplugin(dir.path(), &["stop", "bg"]);
    assert!(stop.status.code().is_some(), "{}", text(&stop.stderr));
    let gone = goplugin(dir.path(), &["status", "bg"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(text(&gone.stderr).contains("no task \"bg\""));
    let t0 = Instant::now();
    while !processes_with(&dir.path().display().to_string()).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "helpers left running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["frobnicate"], 2, "frobnicate"),
        (&["run", "--memory=-5", "--", "true"], 2, "--memory"),
        (
            &["run", "--kill-signal", "SIGBOGUS", "--", "true"],
            2,
            "SIGBOGUS",
        ),
        (&["run", "--env", "NOEQUALS", "--", "true"], 2, "NOEQUALS"),
        (
            &["run", "--user", "no-such-user-x", "--", "true"],
            1,
            "no-such-user-x",
        ),
        (
            &["run", "--name", "x", "--", "no-such-command-x"],
            1,
            "could not be found",
        ),
        (&["stop", "nothing-here"], 1, "no task"),
    ];
    for (args, code, needle) in cases {
        let out = goplugin(dir.path(), args);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A corrupt state file, and one whose processes are gone.
    std::fs::create_dir_all(dir.path().join("broken")).unwrap();
    std::fs::write(dir.path().join("broken/state.json"), "{not json").unwrap();
    let out = goplugin(dir.path(), &["status", "broken"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("state file"),
        "{}",
        text(&out.stderr)
    );
    let out = goplugin(
        dir.path(),
        &["run", "--name", "dead", "--detach", "--", "sleep", "1000"],
    );
    assert!(out.status.success());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("dead/state.json")).unwrap())
            .unwrap();
    for key in ["executor", "logmon"] {
        let pid = state[key]["Pid"].as_i64().unwrap() as i32;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let task_pid = state["pid"].as_i64().unwrap() as i32;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(task_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = goplugin(dir.path(), &["status", "dead"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not running any more"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !dir.path().join("dead/state.json").exists(),
        "stale state removed"
    );
}

/// A start that fails after logmon is up (here: the executor cannot be started) stops logmon
/// too: it sits in its own process group and would otherwise outlive the agent.
#[test]
fn a_failed_start_leaves_no_logmon_behind() {
    let dir = tempfile::tempdir().unwrap();
    // A uniquely named logmon (the binary under another path) to find it among other tests'.
    let logmon = dir.path().join("unique-logmon-bin");
    std::os::unix::fs::symlink(BIN, &logmon).unwrap();
    let out = goplugin(
        dir.path(),
        &[
            "run",
            "--name",
            "broken",
            "--logmon-bin",
            logmon.to_str().unwrap(),
            "--executor-bin",
            "/nonexistent/executor",
            "--",
            "true",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("executor"),
        "{}",
        text(&out.stderr)
    );
    let left = processes_with(logmon.to_str().unwrap());
    assert!(left.is_empty(), "logmon left running: {left:?}");
}

/// The task's last output reaches the terminal in full, however much it wrote just before it
/// exited and however slowly the terminal reads: the agent waits for its log follower to print
/// what logmon's Stop flushed, instead of the fixed 150 ms it once gave it.
#[test]
fn the_tail_of_a_large_output_is_printed_in_full() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--dir"])
        .arg(dir.path())
        .args(["--name", "flood", "--max-file-size", "100", "--"])
        .args([
            "sh",
            "-c",
            "head -c 4000000 /dev/zero | tr '\\0' x; echo; echo END",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A slow terminal: nothing is read until the task has long exited.
    std::thread::sleep(Duration::from_millis(1500));
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(out.len(), 4_000_000 + 1 + 4);
    assert!(out.ends_with(b"x\nEND\n"));
}

/// The directory holding task state decides which sockets `status`, `exec` and `stop` use: a
/// world-writable one, a symlink, or one owned by another user is refused before anything runs.
#[test]
fn an_unsafe_state_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let mut cases = vec![(open, "lets others write"), (link, "symlink")];
    if nix::unistd::geteuid().is_root() {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        cases.push((theirs, "owned by uid 65534"));
    }
    for (base, why) in cases {
        for args in [
            &["run", "--name", "t", "--", "true"][..],
            &["status", "t"][..],
        ] {
            let out = goplugin(&base, args);
            let err = text(&out.stderr);
            assert!(!out.status.success(), "{args:?} in {}", base.display());
            assert!(
                err.contains("not safe for task state") && err.contains(why),
                "{err}"
            );
        }
        assert!(!base.join("t").exists());
    }
}
