//! Self-re-exec through the real `goplugin` binary (`CARGO_BIN_EXE_goplugin`, always the one
//! cargo just built): `argv[1]` naming an entry runs that plugin before the CLI exists.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_goplugin");

#[test]
fn entry_named_by_argv1_runs_before_the_cli() {
    // Without its cookie the KV plugin answers with go-plugin's text: the plugin ran, not clap.
    let out = Command::new(BIN)
        .arg("kv-plugin")
        .env_remove("BASIC_PLUGIN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        goplugin::COOKIE_MISMATCH_TEXT
    );
}

#[test]
fn entry_serves_the_go_plugin_handshake() {
    let mut child = Command::new(BIN)
        .arg("kv-plugin")
        .env("BASIC_PLUGIN", "hello")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let parsed = goplugin::HandshakeLine::parse(&line).unwrap();
    assert_eq!(parsed.app_version, 1);
    assert_eq!(parsed.protocol, goplugin::Protocol::Grpc);
}

#[test]
fn unknown_argv1_falls_through_to_the_cli() {
    let out = Command::new(BIN).arg("no-such-plugin").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-plugin"));
}

#[test]
fn reexec_command_points_at_this_very_binary() {
    let cmd = goplugin::reexec::command("kv-plugin").unwrap();
    assert_eq!(cmd.get_program(), "/proc/self/exe");
    assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["kv-plugin"]);
}
