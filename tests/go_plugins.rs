//! Direction B of the interop matrix (spec go-plugin-wire.md §19): `goplugin::Client` drives real
//! Go plugins built from go-plugin v1.8.0: go-plugin's own reference helper (`go test -c` of the
//! module, `TestHelperProcess` modes), the compat-tests reference plugin (every mode really
//! serves), and upstream's example plugins. Each test names its upstream twin.

mod common;

use common::go::{compat, go_bins, go_plugin_test_pems, go_plugin_test_tls, reference};
use common::Buf;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use goplugin::proto::grpctest::test_client::TestClient;
use goplugin::proto::grpctest::TestRequest;
use goplugin::{Client, ClientError, Exit, HandshakeConfig, ReattachConfig};

fn handshake() -> HandshakeConfig {
    HandshakeConfig::new("TEST_MAGIC_COOKIE", "test")
}

async fn double(client: &Client, x: i32) -> i32 {
    TestClient::new(client.channel())
        .double(TestRequest { input: x })
        .await
        .unwrap()
        .get_ref()
        .output
}

fn assert_graceful(exit: Exit, started: Instant) {
    if let Exit::Status(s) = exit {
        assert!(s.success(), "graceful exit, got {s:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "needed SIGKILL");
}

/// Mirrors go-plugin TestClient_grpc and TestGRPC_Ping (B: mode `test-grpc`).
#[tokio::test]
async fn reference_test_grpc_round_trip_and_graceful_kill() {
    let client = Client::builder(reference("test-grpc"), handshake())
        .start()
        .await
        .unwrap();
    client.ping().await.unwrap();
    client.ping().await.unwrap();
    assert_eq!(double(&client, 21).await, 42);
    let t0 = Instant::now();
    assert_graceful(client.kill().await, t0);
    assert!(client.ping().await.is_err());
}

/// Mirrors go-plugin TestClient_mtlsClient and TestServer_testMode_AutoMTLS (B: `test-mtls`).
#[tokio::test]
async fn reference_test_mtls_with_bidirectional_broker() {
    let client = Client::builder(reference("test-mtls"), handshake().with_protocol_version(2))
        .auto_mtls(true)
        .start()
        .await
        .unwrap();
    client.ping().await.unwrap();
    assert_eq!(double(&client, 3).await, 6);
    common::broker_round_trip(&client.broker(), client.channel()).await;
    let t0 = Instant::now();
    assert_graceful(client.kill().await, t0);
}

/// Mirrors go-plugin TestClient_TLS_grpc (B: `test-grpc-tls`, pre-shared TLS from go-plugin's
/// test CA, ServerName 127.0.0.1) and a host without TLS failing against it.
#[tokio::test]
async fn reference_pre_shared_tls() {
    let client = Client::builder(reference("test-grpc-tls"), handshake())
        .tls(go_plugin_test_tls())
        .start()
        .await
        .unwrap();
    assert_eq!(double(&client, 21).await, 42);
    client.kill().await;
    let plain = Client::builder(reference("test-grpc-tls"), handshake())
        .start()
        .await;
    if let Ok(plain) = plain {
        assert!(TestClient::new(plain.channel())
            .double(TestRequest { input: 1 })
            .await
            .is_err());
        plain.kill().await;
    }
}

/// The plugin side of pre-shared TLS (`Server::tls`, go-plugin's `ServeConfig.TLSProvider`):
/// the Rust grpctest plugin in `test-grpc-tls` mode serves go-plugin's `helperTLSProvider`
/// material and answers the same host as the Go reference does: no certificate in the handshake
/// line, calls and a brokered round trip over TLS, `PLUGIN_CLIENT_CERT` ignored (pre-shared TLS
/// before AutoMTLS, as go-plugin orders them), and a host without TLS refused by both.
#[tokio::test]
async fn rust_plugin_pre_shared_tls_as_the_go_reference() {
    let (ca, cert, key) = go_plugin_test_pems();
    let rust = || {
        let mut cmd = Command::new(common::example("grpctest_plugin"));
        cmd.arg("test-grpc-tls")
            .env("GRPCTEST_TLS_CA_PEM", &ca)
            .env("GRPCTEST_TLS_CERT_PEM", &cert)
            .env("GRPCTEST_TLS_KEY_PEM", &key);
        cmd
    };
    // The second pass: pre-shared TLS wins over AutoMTLS, a PLUGIN_CLIENT_CERT in the plugin's
    // environment (one that is no certificate at all, which AutoMTLS would refuse) is not read.
    for client_cert in [None, Some("not a certificate")] {
        for (name, mut plugin) in [("go", reference("test-grpc-tls")), ("rust", rust())] {
            if let Some(pem) = client_cert {
                plugin.env("PLUGIN_CLIENT_CERT", pem);
            }
            let client = Client::builder(plugin, handshake())
                .tls(go_plugin_test_tls())
                .start()
                .await
                .unwrap_or_else(|e| panic!("{name}, PLUGIN_CLIENT_CERT {client_cert:?}: {e}"));
            assert_eq!(client.plugin_certificate(), None, "{name}");
            assert_eq!(double(&client, 21).await, 42, "{name}");
            common::broker_round_trip(&client.broker(), client.channel()).await;
            client.kill().await;
        }
    }
    for (name, plugin) in [("go", reference("test-grpc-tls")), ("rust", rust())] {
        if let Ok(plain) = Client::builder(plugin, handshake()).start().await {
            let r = TestClient::new(plain.channel())
                .double(TestRequest { input: 1 })
                .await;
            assert!(r.is_err(), "{name}: a plaintext host got an answer");
            plain.kill().await;
        }
    }
}

/// Mirrors go-plugin TestClient_versionedClient (B: `test-versioned-plugins`, versions {2} over
/// pre-shared TLS): the host offers 2 (its versioned set), the plugin picks 2.
#[tokio::test]
async fn reference_versioned_plugins() {
    let client = Client::builder(
        reference("test-versioned-plugins"),
        handshake().with_protocol_version(1),
    )
    .versions([2])
    .tls(go_plugin_test_tls())
    .start()
    .await
    .unwrap();
    assert_eq!(client.negotiated_version(), 2);
    assert_eq!(double(&client, 5).await, 10);
    client.kill().await;
}

/// Mirrors go-plugin TestGRPC_App/default and /mux and TestGRPCC_Stream (B: `test-grpc`, and with
/// `PLUGIN_MULTIPLEX_GRPC=true`).
#[tokio::test]
async fn reference_broker_and_stream_direct_and_multiplexed() {
    for mux in [false, true] {
        let client = Client::builder(reference("test-grpc"), handshake())
            .multiplex(mux)
            .start()
            .await
            .unwrap();
        common::broker_round_trip(&client.broker(), client.channel()).await;
        common::broker_round_trip(&client.broker(), client.channel()).await;
        let reqs = futures::stream::iter((21..27).map(|input| TestRequest { input }));
        let mut out = TestClient::new(client.channel())
            .stream(reqs)
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(r) = out.message().await.unwrap() {
            got.push(r.output);
        }
        assert_eq!(got, (21..27).collect::<Vec<_>>(), "mux={mux}");
        client.kill().await;
    }
}

/// Mirrors go-plugin TestClient_grpcSyncStdio (B: `test-grpc`).
#[tokio::test]
async fn reference_stdio_reaches_the_sync_writers() {
    let (out, err) = (Buf::default(), Buf::default());
    let client = Client::builder(reference("test-grpc"), handshake())
        .sync_stdout(out.clone())
        .sync_stderr(err.clone())
        .start()
        .await
        .unwrap();
    assert_ne!(client.reattach_config().pid, 0);
    common::assert_stdio_mirrored(client.channel(), &out, &err).await;
    client.kill().await;
}

/// Mirrors go-plugin TestClient_Stdin (B: stdin; the compat plugin really serves, then reads).
#[tokio::test]
async fn go_plugin_reads_the_stdin_we_pass() {
    let mut f = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut f, b"hello").unwrap();
    std::io::Seek::rewind(&mut f).unwrap();
    let started = Client::builder(compat(&["stdin"]), handshake())
        .stdin(Stdio::from(f))
        .start()
        .await;
    // The plugin reads its stdin right after the handshake line and exits at once: it may be gone
    // before we connect, which Start reports as Go does.
    let status = match started {
        Ok(client) => match tokio::time::timeout(Duration::from_secs(5), client.wait())
            .await
            .expect("plugin exits after reading stdin")
        {
            Exit::Status(s) => s,
            Exit::Gone => panic!("child status expected"),
        },
        Err(ClientError::ExitedBeforeConnect { status }) => status,
        Err(e) => panic!("{e}"),
    };
    assert!(status.success(), "read \"hello\": {status:?}");
}

/// Mirrors go-plugin TestClient_versionedClient and TestClient_legacyServer.
#[tokio::test]
async fn go_plugin_version_negotiation() {
    let client = Client::builder(compat(&["test-versioned"]), handshake())
        .versions([2, 3])
        .start()
        .await
        .unwrap();
    assert_eq!(client.negotiated_version(), 3);
    assert_eq!(double(&client, 2).await, 4);
    client.kill().await;
    let err = Client::builder(compat(&["test-versioned"]), handshake())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::IncompatibleVersion { plugin: 2, .. }),
        "{err}"
    );
}

/// Mirrors go-plugin TestClient_grpc_servercrash.
#[tokio::test]
async fn go_plugin_crash_is_noticed() {
    let client = Client::builder(compat(&[]), handshake())
        .start()
        .await
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(client.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(2), client.wait())
        .await
        .expect("within 2 s");
    assert!(matches!(exit, Exit::Status(s) if !s.success()));
}

/// Mirrors go-plugin TestClient_testCleanup: Kill lets the Go plugin return from Serve.
#[tokio::test]
async fn go_plugin_returns_from_serve_on_kill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cleaned");
    let client = Client::builder(compat(&["cleanup", path.to_str().unwrap()]), handshake())
        .start()
        .await
        .unwrap();
    let t0 = Instant::now();
    assert_graceful(client.kill().await, t0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "foo");
}

/// Mirrors go-plugin TestClient_reattachGRPC and TestClient_reattachNotFound, with the host
/// process really killed: `kv_host start` is SIGKILLed and a new `kv_host --reattach` takes over.
#[test]
fn host_killed_mid_session_reattaches_to_go_plugin() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("reattach.json");
    let kv_host = common::example("kv_host");
    let plugin = go_bins().join("kv-plugin-go");
    let mut host = Command::new(&kv_host)
        .args(["start", state.to_str().unwrap()])
        .env("KV_PLUGIN", &plugin)
        .current_dir(work.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !state.exists() || std::fs::read_to_string(&state).unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no reattach config");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    host.kill().unwrap();
    host.wait().unwrap();
    let cfg: ReattachConfig =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let run = |args: &[&str]| {
        Command::new(&kv_host)
            .args(["--reattach", state.to_str().unwrap()])
            .args(args)
            .current_dir(work.path())
            .output()
            .unwrap()
    };
    let put = run(&["put", "hello", "world"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let stored = std::fs::read_to_string(work.path().join("kv_hello")).unwrap();
    assert!(stored.starts_with("world"), "{stored}");
    // `put` ended with Kill: the plugin is gone (reaped, or a zombie of a reaper that does not
    // reap), and the record is stale now.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{}/stat", cfg.pid))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    let t0 = Instant::now();
    while !gone() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "plugin still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = run(&["get", "hello"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("reattachment process not found"));
}

/// Spec §19 item 28 and 21 in direction B: the Rust example hosts drive upstream's Go example
/// plugins (and the Rust ones), the counter calling back into the host through the broker.
#[test]
fn rust_example_hosts_drive_upstream_go_example_plugins() {
    for (plugin, marker) in [
        (
            go_bins().join("kv-plugin-go"),
            "Written from plugin-go-grpc",
        ),
        (common::example("kv_plugin"), "Written from plugin-rust"),
    ] {
        let work = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(common::example("kv_host"))
                .args(args)
                .env("KV_PLUGIN", &plugin)
                .current_dir(work.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run(&["put", "hello", "world"]);
        let got = run(&["get", "hello"]);
        assert!(got.starts_with("world") && got.contains(marker), "{got}");
    }
    for (plugin, mux) in [
        (go_bins().join("counter-plugin-go"), false),
        (go_bins().join("counter-plugin-go"), true),
        (common::example("counter_plugin"), true),
    ] {
        let work = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let mut cmd = Command::new(common::example("counter_host"));
            cmd.args(args)
                .env("COUNTER_PLUGIN", &plugin)
                .current_dir(work.path());
            if mux {
                cmd.env("COUNTER_MUX", "1");
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        run(&["put", "hello", "1"]);
        run(&["put", "hello", "1"]);
        assert_eq!(
            run(&["get", "hello"]),
            "2",
            "{} mux={mux}",
            plugin.display()
        );
    }
}

/// go-plugin's Go plugins send answers up to `math.MaxInt32` bytes (grpc-go's server default)
/// and receive at most 4 MiB; our host takes the big answer with the limit it hands out
/// (goplugin::MAX_MESSAGE_SIZE), and a 6 MiB request is refused by the Go plugin as it is for
/// go-plugin's Go host (compat-tests TestMessagesOver4MiB shows the Go host's side).
#[tokio::test]
async fn rust_host_takes_answers_over_4_mib_from_a_go_plugin() {
    use goplugin::proto::kv::kv_client::KvClient;
    use goplugin::proto::kv::{GetRequest, PutRequest};
    let dir = tempfile::tempdir().unwrap();
    let value: Vec<u8> = (0..6 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("kv_big"), &value).unwrap();
    let mut cmd = Command::new(go_bins().join("kv-plugin-go"));
    cmd.current_dir(dir.path());
    let client = Client::builder(cmd, HandshakeConfig::new("BASIC_PLUGIN", "hello"))
        .start()
        .await
        .unwrap();
    let limit = client.max_message_size();
    let mut kv = KvClient::new(client.channel())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let got = kv
        .get(GetRequest { key: "big".into() })
        .await
        .expect("a 6 MiB answer from the Go plugin")
        .into_inner()
        .value;
    assert!(
        got == value,
        "{} bytes back, {} written",
        got.len(),
        value.len()
    );
    let refused = kv
        .put(PutRequest {
            key: "big2".into(),
            value,
        })
        .await
        .expect_err("grpc-go's server receives at most 4 MiB");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    client.kill().await;
}
