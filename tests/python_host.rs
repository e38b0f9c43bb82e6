//! Python's grpcio (gRPC core) as the host (issue 13): a Python program dials the plugin as a
//! Python go-plugin host does and calls a unary and a bidirectional-streaming RPC, against the
//! Rust plugin and against go-plugin v1.8.0's Go plugin with the same contract, over a unix
//! socket (gRPC core sends the percent-encoded socket path as `:authority`, which h2 alone
//! refuses and grpc-go accepts) and over TCP. The host is compat-tests/python/grpcio_host.py, with
//! grpcio from compat-tests/python/requirements.txt in target/python-venv (scripts/test makes
//! it); without it the tests print one line and skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::go::go_bins;
use goplugin::HandshakeLine;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// The Python with grpcio, if there is one.
fn python() -> Option<PathBuf> {
    let venv = Path::new(MANIFEST).join("target/python-venv/bin/python");
    let candidates = [venv, PathBuf::from("python3")];
    let found = candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import grpc"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        println!(
            "skipped: no Python with grpcio (scripts/test makes target/python-venv from \
             compat-tests/python/requirements.txt)"
        );
    }
    found
}

/// Starts `cmd` as a plugin on `network` and returns it with its handshake line.
fn serve(mut cmd: Command, network: &str) -> (std::process::Child, HandshakeLine) {
    cmd.env("TEST_MAGIC_COOKIE", "test")
        .env_remove("PLUGIN_CLIENT_CERT")
        .env_remove("PLUGIN_MULTIPLEX_GRPC")
        .env("GOPLUGIN_NETWORK", network)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn plugin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
    let parsed = HandshakeLine::parse(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (child, parsed)
}

/// Runs the Python host against `line`'s address and returns what it printed.
fn call(py: &Path, line: &HandshakeLine) -> serde_json::Value {
    let script = Path::new(MANIFEST).join("compat-tests/python/grpcio_host.py");
    let out = Command::new(py)
        .arg(script)
        .arg(line.network.as_str())
        .arg(&line.address)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "grpcio host failed against {}: {}",
        line.address,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn expected() -> serde_json::Value {
    serde_json::json!({"health_status": 1, "double": 42, "stream": [1, 2, 3]})
}

fn rust_plugin() -> Command {
    Command::new(common::example("grpctest_plugin"))
}

/// What the Python host got from `cmd` served on `network`; the plugin is killed afterwards.
fn answers(py: &Path, cmd: Command, network: &str) -> serde_json::Value {
    let (mut child, line) = serve(cmd, network);
    assert_eq!(line.network.as_str(), network);
    let got = call(py, &line);
    child.kill().ok();
    child.wait().ok();
    got
}

#[test]
fn grpcio_host_calls_the_rust_plugin_over_a_unix_socket() {
    let Some(py) = python() else { return };
    assert_eq!(answers(&py, rust_plugin(), "unix"), expected());
}

#[test]
fn grpcio_host_calls_the_rust_plugin_over_tcp() {
    let Some(py) = python() else { return };
    assert_eq!(answers(&py, rust_plugin(), "tcp"), expected());
}

#[test]
fn grpcio_host_gets_the_same_answers_from_the_go_plugin() {
    let Some(py) = python() else { return };
    let mut go = Command::new(go_bins().join("grpctest-plugin-go"));
    go.arg("test-grpc");
    assert_eq!(answers(&py, go, "unix"), expected());
}
