//! The host role (`goplugin::Client`) driving the real Rust example plugins, and refusing bad
//! plugins. The same host drives Go plugins in `tests/go_plugins.rs`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{example, Buf};
use goplugin::proto::grpctest::test_client::TestClient;
use goplugin::proto::grpctest::TestRequest;
use goplugin::tls::{Identity, TlsError};
use goplugin::{Client, ClientError, Exit, HandshakeConfig, ReattachConfig};

fn test_handshake() -> HandshakeConfig {
    HandshakeConfig::new("TEST_MAGIC_COOKIE", "test")
}

fn plugin_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(example("grpctest_plugin"));
    cmd.args(args);
    cmd
}

async fn double(client: &Client, x: i32) -> i32 {
    TestClient::new(client.channel())
        .double(TestRequest { input: x })
        .await
        .unwrap()
        .get_ref()
        .output
}

fn graceful(exit: Exit) {
    match exit {
        Exit::Status(s) => assert!(s.success(), "graceful exit, got {s:?}"),
        Exit::Gone => {}
    }
}

#[tokio::test]
async fn starts_pings_calls_and_kills_gracefully() {
    let client = Client::builder(plugin_cmd(&[]), test_handshake())
        .start()
        .await
        .unwrap();
    client.ping().await.unwrap();
    client.ping().await.unwrap();
    assert_eq!(double(&client, 21).await, 42);
    assert_eq!(client.negotiated_version(), 1);
    let t0 = Instant::now();
    graceful(client.kill().await);
    assert!(t0.elapsed() < Duration::from_secs(2), "no SIGKILL needed");
    assert!(client.exited());
    assert!(client.ping().await.is_err());
}

#[tokio::test]
async fn auto_mtls_and_multiplexed_broker_both_ways() {
    for (mtls, mux) in [(false, false), (true, false), (false, true), (true, true)] {
        let client = Client::builder(plugin_cmd(&[]), test_handshake())
            .auto_mtls(mtls)
            .multiplex(mux)
            .start()
            .await
            .unwrap_or_else(|e| panic!("mtls={mtls} mux={mux}: {e}"));
        assert_eq!(double(&client, 3).await, 6);
        common::broker_round_trip(&client.broker(), client.channel()).await;
        graceful(client.kill().await);
    }
}

#[tokio::test]
async fn negotiates_the_highest_offered_version() {
    let client = Client::builder(plugin_cmd(&["test-versioned"]), test_handshake())
        .versions([2, 3])
        .start()
        .await
        .unwrap();
    assert_eq!(client.negotiated_version(), 3);
    client.kill().await;
    let err = Client::builder(plugin_cmd(&["test-versioned"]), test_handshake())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::IncompatibleVersion { plugin: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn mirrors_stdio_and_copies_raw_stderr() {
    let (out, err, raw) = (Buf::default(), Buf::default(), Buf::default());
    let client = Client::builder(plugin_cmd(&[]), test_handshake())
        .sync_stdout(out.clone())
        .sync_stderr(err.clone())
        .stderr(raw.clone())
        .start()
        .await
        .unwrap();
    common::assert_stdio_mirrored(client.channel(), &out, &err).await;
    client.kill().await;
    assert!(raw.text().contains("and some error"), "{}", raw.text());
}

#[tokio::test]
async fn detects_a_crash() {
    let client = Client::builder(plugin_cmd(&[]), test_handshake())
        .start()
        .await
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(client.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(2), client.wait())
        .await
        .expect("crash noticed within 2 s");
    match exit {
        Exit::Status(s) => assert!(!s.success()),
        Exit::Gone => panic!("a child we started has a status"),
    }
}

/// The test plugin, its socket directory made under `parent`.
async fn start_in(parent: &std::path::Path) -> Client {
    Client::builder(plugin_cmd(&[]), test_handshake())
        .socket_dir(parent)
        .start()
        .await
        .unwrap()
}

/// Whether `pid` names a process at all (a zombie counts: it was not reaped).
fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn dropping_a_started_client_kills_and_reaps_its_plugin() {
    let parent = tempfile::tempdir().unwrap();
    let client = start_in(parent.path()).await;
    let pid = client.pid();
    let clone = client.clone();
    drop(client);
    assert!(process_exists(pid), "a clone still holds the plugin");
    drop(clone);
    // Synchronous: by the time drop returns the plugin is dead and reaped, its dir removed.
    assert!(
        !process_exists(pid),
        "plugin {pid} outlived its last client"
    );
    let left = std::fs::read_dir(parent.path()).unwrap().count();
    assert_eq!(left, 0, "socket directory left behind");
}

#[tokio::test]
async fn kill_on_drop_false_and_reattached_clients_leave_the_plugin_running() {
    let client = Client::builder(plugin_cmd(&[]), test_handshake())
        .kill_on_drop(false)
        .start()
        .await
        .unwrap();
    let pid = client.pid();
    let cfg = client.reattach_config();
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        process_exists(pid),
        "plugin killed although kill_on_drop(false)"
    );
    let again = Client::reattach(&cfg).await.unwrap();
    drop(again);
    let again = Client::reattach(&cfg).await.unwrap();
    assert_eq!(
        double(&again, 21).await,
        42,
        "a dropped reattached client killed it"
    );
    graceful(again.kill().await);
}

#[tokio::test]
async fn reattaches_from_a_serialised_config_and_refuses_stale_ones() {
    for mtls in [false, true] {
        let client = Client::builder(plugin_cmd(&[]), test_handshake())
            .auto_mtls(mtls)
            .start()
            .await
            .unwrap();
        let saved = serde_json::to_string(&client.reattach_config()).unwrap();
        let cfg: ReattachConfig = serde_json::from_str(&saved).unwrap();
        assert_eq!(cfg.tls.is_some(), mtls);
        let again = Client::reattach(&cfg).await.unwrap();
        // The certificate the host pinned, the same before and after reattaching.
        let cert = client.plugin_certificate();
        assert_eq!(cert.is_some(), mtls);
        assert_eq!(again.plugin_certificate(), cert);
        if let Some(der) = cert {
            let field6 = cfg.tls.as_ref().unwrap().plugin_cert.clone();
            assert_eq!(
                goplugin::tls::decode_server_cert(&field6).unwrap().as_ref(),
                &der[..]
            );
        }
        assert_eq!(double(&again, 21).await, 42);
        again.ping().await.unwrap();
        graceful(again.kill().await);
        let _ = tokio::time::timeout(Duration::from_secs(2), client.wait()).await;
        // The same record now points at a dead pid and a removed socket.
        let err = Client::reattach(&cfg).await.unwrap_err();
        assert!(matches!(err, ClientError::ProcessNotFound { .. }), "{err}");
    }
}

#[tokio::test]
async fn reattach_refuses_a_pid_that_now_belongs_to_another_process() {
    let client = Client::builder(plugin_cmd(&[]), test_handshake())
        .start()
        .await
        .unwrap();
    let mut cfg = client.reattach_config();
    // Pretend the plugin died and its pid went to this test process.
    cfg.pid = std::process::id();
    if let Some(p) = cfg.process.as_mut() {
        p.pid = std::process::id();
    }
    let err = Client::reattach(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("another process"), "{err}");
    client.kill().await;
}

#[tokio::test]
async fn socket_dir_is_private_and_removed_after_kill() {
    let parent = tempfile::tempdir().unwrap();
    let client = start_in(parent.path()).await;
    let addr = client.reattach_config().addr;
    let dir = std::path::Path::new(&addr).parent().unwrap().to_path_buf();
    assert_eq!(dir.parent().unwrap(), parent.path());
    assert!(dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("plugin-dir"));
    client.kill().await;
    assert!(!dir.exists(), "socket dir removed");
}

/// A "plugin" that is a shell script printing `line` (then sleeping, or exiting).
fn fake(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

async fn start_err(cmd: Command, timeout: Duration) -> ClientError {
    Client::builder(cmd, test_handshake())
        .start_timeout(timeout)
        .auto_mtls(false)
        .start()
        .await
        .unwrap_err()
}

#[tokio::test]
async fn malformed_handshake_lines_are_typed_errors() {
    let t = Duration::from_secs(10);
    let cases: &[(&str, &str)] = &[
        (
            "echo '1|1|tcp'; exec sleep 30",
            "Unrecognized remote plugin message",
        ),
        (
            "echo 'x|1|tcp|:1|grpc|'; exec sleep 30",
            "core protocol version",
        ),
        ("echo '1|y|tcp|:1|grpc|'; exec sleep 30", "protocol version"),
        (
            "echo '1|1|udp|:1|grpc|'; exec sleep 30",
            "unknown address type: udp",
        ),
        (
            "echo '1|1|tcp|:1|netrpc|'; exec sleep 30",
            "unsupported plugin protocol",
        ),
        (
            "echo '1|9|tcp|:1|grpc|'; exec sleep 30",
            "incompatible API version",
        ),
        ("exit 3", "plugin exited before we could connect"),
        ("exec 1>&-; exec sleep 30", "Failed to read any lines"),
    ];
    for (script, needle) in cases {
        let t0 = Instant::now();
        let err = start_err(fake(script), t).await.to_string();
        assert!(err.contains(needle), "{script}: {err}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{script} took too long"
        );
    }
}

#[tokio::test]
async fn a_plugin_that_never_prints_times_out_and_is_killed() {
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let script = format!("echo $$ > {}; exec sleep 30", pidfile.path().display());
    let err = start_err(fake(&script), Duration::from_millis(300)).await;
    assert!(matches!(err, ClientError::StartTimeout { .. }), "{err}");
    let pid: u32 = std::fs::read_to_string(pidfile.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    while process_exists(pid) {
        assert!(t0.elapsed() < Duration::from_secs(3), "child not reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_first_line_over_64_kib_is_refused() {
    let script = "head -c 70000 /dev/zero | tr '\\0' 'a'; echo; exec sleep 30";
    let err = start_err(fake(script), Duration::from_secs(10)).await;
    assert!(matches!(err, ClientError::LineTooLong { .. }), "{err}");
}

async fn start_with_field6(field6: &str) -> ClientError {
    let script = format!("echo '1|1|tcp|:1|grpc|{field6}'; exec sleep 30");
    Client::builder(fake(&script), test_handshake())
        .auto_mtls(true)
        .start()
        .await
        .unwrap_err()
}

#[tokio::test]
async fn auto_mtls_rejects_bad_or_foreign_plugin_certificates() {
    let long_garbage = "!".repeat(60);
    let not_der = base64_nopad(b"definitely not a certificate, but long enough to count");
    let bad_base64 = start_with_field6(&long_garbage).await;
    assert!(
        matches!(
            bad_base64,
            ClientError::Tls(TlsError::ServerCertBase64 { .. })
        ),
        "{bad_base64}"
    );
    let bad_der = start_with_field6(&not_der).await;
    assert!(
        matches!(bad_der, ClientError::Tls(TlsError::CertParse { .. })),
        "{bad_der}"
    );
    // A real plugin whose field 6 is swapped for another certificate: TLS must fail.
    let other = Identity::generate().unwrap().cert_base64();
    // `timeout` bounds the pipeline: killing `sh` alone would leave the plugin and `cat` behind.
    let script = format!(
        "timeout 5 {} | {{ IFS= read -r line; echo \"${{line%|*}}|{other}\"; timeout 5 cat; }}",
        example("grpctest_plugin").display()
    );
    let err = Client::builder(fake(&script), test_handshake())
        .auto_mtls(true)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TlsHandshake { .. }), "{err}");
    // No field 6 at all although we asked for AutoMTLS.
    let err = Client::builder(
        fake("echo '1|1|tcp|:1|grpc|'; exec sleep 30"),
        test_handshake(),
    )
    .auto_mtls(true)
    .start()
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::MissingServerCert), "{err}");
}

#[tokio::test]
async fn multiplexing_without_plugin_support_is_refused() {
    for line in ["1|1|tcp|:1234|grpc|", "1|1|tcp|:1234|grpc||false"] {
        let err = Client::builder(
            fake(&format!("echo '{line}'; exec sleep 30")),
            test_handshake(),
        )
        .multiplex(true)
        .start()
        .await
        .unwrap_err();
        assert!(matches!(err, ClientError::MuxNotSupported), "{line}: {err}");
    }
}

fn base64_nopad(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
}

#[tokio::test]
async fn failed_start_leaves_no_socket_dir_behind() {
    let parent = tempfile::tempdir().unwrap();
    for script in ["echo '1|1|udp|:1|grpc|'; exec sleep 30", "exit 4"] {
        let err = Client::builder(fake(script), test_handshake())
            .socket_dir(parent.path())
            .start()
            .await
            .unwrap_err();
        assert!(!err.to_string().is_empty());
    }
    // A real plugin that is then killed: its socket lived in the private dir, now gone too.
    let client = start_in(parent.path()).await;
    let pid = nix::unistd::Pid::from_raw(client.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    client.kill().await;
    let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The versions offered in `PLUGIN_PROTOCOL_VERSIONS`: the handshake's own without
/// `versions`, exactly the named ones with it (Terraform offers `5,6`; go-plugin adds the
/// legacy version only for an unversioned plugin set).
#[tokio::test]
async fn offers_exactly_the_named_versions() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("versions");
    let cases: [(&[u32], &str); 3] = [(&[], "1"), (&[5, 6], "5,6"), (&[6, 5, 6], "5,6")];
    for (versions, want) in cases {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo \"$PLUGIN_PROTOCOL_VERSIONS\" > {}",
            seen.display()
        ));
        let mut b = Client::builder(cmd, test_handshake().with_protocol_version(1));
        if !versions.is_empty() {
            b = b.versions(versions.iter().copied());
        }
        let err = b.start().await.unwrap_err();
        assert!(
            matches!(err, ClientError::ExitedBeforeConnect { .. }),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap().trim(),
            want,
            "{versions:?}"
        );
    }
}

/// A plugin gets fds 0, 1 and 2 only, as go-plugin's os/exec gives it: a descriptor the host
/// holds without close-on-exec (a shell's, a library's) does not leak into it. The leak is
/// recognised by what the descriptor points at, not by its number: the plugin's shell keeps a
/// descriptor of its own (dash saves stdout at fd 10 for the redirection), which may well carry
/// the number the host's had.
#[tokio::test]
async fn the_plugin_inherits_no_descriptor_of_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("held-by-the-host");
    let leaky = std::fs::File::create(&marker).unwrap();
    // dup(2) makes a descriptor without O_CLOEXEC.
    let inherited = nix::unistd::dup(&leaky).unwrap();
    let seen = dir.path().join("fds");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ls -l /proc/$$/fd > {}", seen.display()));
    let err = Client::builder(cmd, test_handshake())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::ExitedBeforeConnect { .. }),
        "{err}"
    );
    let listing = std::fs::read_to_string(&seen).unwrap();
    use std::os::fd::AsRawFd;
    assert!(
        !listing.contains(marker.to_str().unwrap()),
        "fd {} (and so {}) leaked into the plugin:\n{listing}",
        inherited.as_raw_fd(),
        marker.display()
    );
    assert!(
        listing.contains(" 0 -> ") && listing.contains(" 2 -> "),
        "{listing}"
    );
}

/// go-plugin's Go peers send and accept messages up to `math.MaxInt32` bytes (spec
/// go-plugin-wire.md §7.3, P19); tonic's default decoding limit is 4 MiB. A 6 MiB value goes to
/// the KV plugin (its server's limit) and comes back (the host's), over AutoMTLS; a client left
/// at tonic's default refuses the same answer, which is why the limit is handed out.
#[tokio::test]
async fn messages_over_4_mib_cross_both_ways() {
    use goplugin::proto::kv::kv_client::KvClient;
    use goplugin::proto::kv::{GetRequest, PutRequest};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(example("kv_plugin"));
    cmd.current_dir(dir.path());
    let client = Client::builder(cmd, HandshakeConfig::new("BASIC_PLUGIN", "hello"))
        .auto_mtls(true)
        .start()
        .await
        .unwrap();
    assert_eq!(client.max_message_size(), goplugin::MAX_MESSAGE_SIZE);
    let limit = client.max_message_size();
    let mut kv = KvClient::new(client.channel())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let value: Vec<u8> = (0..6 << 20).map(|i| (i % 251) as u8).collect();
    kv.put(PutRequest {
        key: "big".into(),
        value: value.clone(),
    })
    .await
    .expect("a 6 MiB request within the plugin's limit");
    let got = kv
        .get(GetRequest { key: "big".into() })
        .await
        .expect("a 6 MiB answer within the host's limit")
        .into_inner()
        .value;
    assert!(got.len() > value.len() && got.starts_with(&value));
    let status = KvClient::new(client.channel())
        .get(GetRequest { key: "big".into() })
        .await
        .expect_err("tonic's default limit is 4 MiB");
    // tonic says OUT_OF_RANGE where grpc-go says RESOURCE_EXHAUSTED.
    assert!(status.message().contains("4194304"), "{status}");
    graceful(client.kill().await);
}

#[tokio::test]
async fn the_message_size_knob_reaches_the_client() {
    let client = Client::builder(plugin_cmd(&[]), test_handshake())
        .max_message_size(1 << 20)
        .start()
        .await
        .unwrap();
    assert_eq!(client.max_message_size(), 1 << 20);
    client.ping().await.unwrap();
    graceful(client.kill().await);
}
