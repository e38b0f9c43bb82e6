//! The plugin role against the real example binaries: handshake line, environment handling, bad
//! input, AutoMTLS refusals with a raw TLS client, health, shutdown. Go hosts drive the same
//! binaries in compat-tests; these tests pin what a Go host cannot observe directly.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run_to_end, start};
use goplugin::proto::grpctest::test_client::TestClient;
use goplugin::proto::grpctest::{print_kv_request, PrintKvRequest, TestRequest};
use goplugin::proto::plugin::grpc_controller_client::GrpcControllerClient;
use goplugin::proto::plugin::Empty;
use goplugin::tls::{self, Identity, MtlsConfig, PinnedPeers};
use goplugin::Network;
use goplugin::{COOKIE_MISCONFIGURED_TEXT, COOKIE_MISMATCH_TEXT};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[test]
fn cookie_mismatch_prints_go_text_and_exits_1() {
    for env in [vec![], vec![("TEST_MAGIC_COOKIE", "wrong")]] {
        let (status, stdout, stderr) = run_to_end("grpctest_plugin", &[], &env, false);
        assert_eq!(status.code(), Some(1));
        assert_eq!(stdout, "", "nothing on stdout");
        assert_eq!(stderr, COOKIE_MISMATCH_TEXT);
    }
}

#[test]
fn plugin_without_own_cookie_prints_go_text_and_exits_1() {
    let (status, stdout, stderr) = run_to_end("grpctest_plugin", &["misconfigured"], &[], true);
    assert_eq!(status.code(), Some(1));
    assert_eq!(stdout, "");
    assert_eq!(stderr, COOKIE_MISCONFIGURED_TEXT);
}

#[test]
fn handshake_line_is_what_a_go_plugin_prints() {
    let p = start(&[], &[]);
    let raw = p.raw_line.clone();
    assert!(raw.ends_with("|grpc|\n"), "{raw:?}");
    assert!(raw.starts_with("1|1|unix|/"), "{raw:?}");
    let addr = &p.line().address;
    let name = Path::new(addr).file_name().unwrap().to_str().unwrap();
    assert!(name
        .strip_prefix("plugin")
        .unwrap()
        .bytes()
        .all(|b| b.is_ascii_digit()));
}

#[test]
fn multiplex_env_adds_field_seven_whatever_its_value() {
    for value in ["true", "false"] {
        let p = start(&[], &[("PLUGIN_MULTIPLEX_GRPC", value)]);
        assert!(
            p.raw_line.ends_with("|grpc||true\n"),
            "{value}: {:?}",
            p.raw_line
        );
    }
}

#[test]
fn negotiates_highest_common_version_and_falls_back_to_lowest() {
    let cases = [("1,2,3", 3), ("2", 2), ("1", 2), ("", 2), ("x,3", 3)];
    for (host, want) in cases {
        let p = start(&["test-versioned"], &[("PLUGIN_PROTOCOL_VERSIONS", host)]);
        assert_eq!(p.line().app_version, want, "host offered {host:?}");
        if host.contains('x') {
            std::thread::sleep(Duration::from_millis(100));
            assert!(p
                .stderr_text()
                .contains("server sent invalid plugin version \"x\""));
        }
    }
}

#[test]
fn stdout_noise_before_serving_never_precedes_the_handshake() {
    let p = start(&["noisy"], &[]);
    assert!(p.raw_line.starts_with("1|1|unix|"), "{:?}", p.raw_line);
}

#[test]
fn tcp_listener_takes_a_port_in_range() {
    let p = start(
        &[],
        &[
            ("GOPLUGIN_NETWORK", "tcp"),
            ("PLUGIN_MIN_PORT", "23100"),
            ("PLUGIN_MAX_PORT", "23199"),
        ],
    );
    let l = p.line();
    assert_eq!(l.network, Network::Tcp);
    let addr: std::net::SocketAddr = l.address.parse().unwrap();
    assert!(addr.ip().is_loopback());
    assert!((23100..=23199).contains(&addr.port()), "{addr}");
}

fn assert_startup_error(env: &[(&str, &str)], needle: &str) {
    let (status, stdout, stderr) = run_to_end("grpctest_plugin", &[], env, true);
    assert!(!status.success(), "must fail: {env:?}");
    assert_eq!(stdout, "", "no handshake line on failure");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

#[test]
fn bad_environment_is_a_clear_startup_error() {
    assert_startup_error(
        &[
            ("GOPLUGIN_NETWORK", "tcp"),
            ("PLUGIN_MIN_PORT", "30000"),
            ("PLUGIN_MAX_PORT", "20000"),
        ],
        "PLUGIN_MIN_PORT value of 30000 is greater than PLUGIN_MAX_PORT value of 20000",
    );
    assert_startup_error(
        &[("GOPLUGIN_NETWORK", "tcp"), ("PLUGIN_MIN_PORT", "ten")],
        "invalid PLUGIN_MIN_PORT value \"ten\"",
    );
    assert_startup_error(
        &[("PLUGIN_UNIX_SOCKET_DIR", "/nonexistent/sockets")],
        "/nonexistent/sockets",
    );
    // sysfs refuses new files even to root: an unwritable socket directory.
    assert_startup_error(
        &[("PLUGIN_UNIX_SOCKET_DIR", "/sys/kernel")],
        "couldn't bind plugin unix socket /sys/kernel/plugin",
    );
    assert_startup_error(
        &[("PLUGIN_UNIX_SOCKET_GROUP", "no-such-group-x")],
        "no-such-group-x",
    );
    assert_startup_error(
        &[("PLUGIN_CLIENT_CERT", "not a certificate")],
        "PLUGIN_CLIENT_CERT",
    );
    let key_only = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
    assert_startup_error(&[("PLUGIN_CLIENT_CERT", key_only)], "PLUGIN_CLIENT_CERT");
}

#[test]
fn port_range_is_ignored_on_unix_as_go_does() {
    let p = start(
        &[],
        &[("PLUGIN_MIN_PORT", "30000"), ("PLUGIN_MAX_PORT", "20000")],
    );
    assert_eq!(p.line().network, Network::Unix);
}

#[test]
fn socket_group_sets_mode_0660() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let p = start(
        &[],
        &[
            ("PLUGIN_UNIX_SOCKET_DIR", dir.path().to_str().unwrap()),
            ("PLUGIN_UNIX_SOCKET_GROUP", "daemon"),
        ],
    );
    let addr = &p.line().address;
    assert_eq!(Path::new(addr).parent().unwrap(), dir.path());
    let meta = std::fs::metadata(addr).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 1);
}

#[tokio::test]
async fn health_reports_plugin_serving() {
    let p = start(&[], &[]);
    let mut health = HealthClient::new(p.channel(None).await);
    let resp = health
        .check(HealthCheckRequest {
            service: "plugin".into(),
        })
        .await
        .unwrap();
    assert_eq!(resp.get_ref().status, 1, "SERVING");
}

#[tokio::test]
async fn shutdown_exits_promptly_and_removes_the_socket() {
    let mut p = start(&["cleanup", "/dev/null"], &[]);
    let addr = p.line().address.clone();
    assert!(Path::new(&addr).exists());
    let mut ctl = GrpcControllerClient::new(p.channel(None).await);
    let t0 = Instant::now();
    ctl.shutdown(Empty {}).await.expect("Shutdown is answered");
    let status = p
        .wait_exit(Duration::from_secs(2))
        .expect("exit within 2 s");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(!Path::new(&addr).exists(), "socket file removed");
}

#[tokio::test]
async fn oversized_message_is_refused_and_plugin_keeps_serving() {
    let p = start(&[], &[]);
    let mut client = TestClient::new(p.channel(None).await).max_encoding_message_size(usize::MAX);
    let big = PrintKvRequest {
        key: "k".repeat(5 * 1024 * 1024),
        value: Some(print_kv_request::Value::ValueInt(1)),
    };
    let err = client.print_kv(big).await.unwrap_err();
    // tonic's code for an over-limit message; grpc-go says RESOURCE_EXHAUSTED (README table).
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(err.message().contains("4194304"), "{err}");
    let ok = client.double(TestRequest { input: 21 }).await.unwrap();
    assert_eq!(ok.get_ref().output, 42);
}

fn host_identity() -> (Identity, String) {
    let id = Identity::generate().unwrap();
    let pem = id.cert_pem();
    (id, pem)
}

fn plugin_cert(p: &common::Plugin) -> rustls_pki_types::CertificateDer<'static> {
    let field6 = p.line().server_cert.clone().expect("field 6 with AutoMTLS");
    tls::decode_server_cert(&field6).unwrap()
}

#[tokio::test]
async fn auto_mtls_serves_the_pinned_host() {
    let (host, pem) = host_identity();
    let p = start(&[], &[("PLUGIN_CLIENT_CERT", &pem)]);
    assert!(!p.raw_line.contains('='), "field 6 is unpadded");
    let cfg = MtlsConfig::new(&host, PinnedPeers::from_certs([plugin_cert(&p)]).unwrap()).unwrap();
    let mut client = TestClient::new(p.channel(Some(&cfg)).await);
    let resp = client.double(TestRequest { input: 21 }).await.unwrap();
    assert_eq!(resp.get_ref().output, 42);
}

/// A raw rustls client (no gRPC) trusting the plugin's cert, presenting `client` or nothing.
async fn raw_tls_roundtrip(p: &common::Plugin, client: Option<&Identity>) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pinned = PinnedPeers::from_certs([plugin_cert(p)]).unwrap();
    let conn = p.conn().await;
    let result = match client {
        Some(id) => common::wire::tls_connect(&MtlsConfig::new(id, pinned).unwrap(), conn).await,
        None => {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(tls::PinnedServerVerifier::new(pinned)))
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
            connector
                .connect(tls::server_name(), conn)
                .await
                .map(|s| Box::pin(s) as common::wire::Stream)
        }
    };
    let mut conn = result?;
    // TLS 1.3: a refused client only learns it on its first read.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    match conn.read(&mut buf).await? {
        0 => Err(std::io::Error::other("closed by plugin")),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn auto_mtls_refuses_client_without_certificate() {
    let (_host, pem) = host_identity();
    let p = start(&[], &[("PLUGIN_CLIENT_CERT", &pem)]);
    assert!(raw_tls_roundtrip(&p, None).await.is_err());
}

#[tokio::test]
async fn auto_mtls_refuses_client_with_another_certificate() {
    let (host, pem) = host_identity();
    let p = start(&[], &[("PLUGIN_CLIENT_CERT", &pem)]);
    let stranger = Identity::generate().unwrap();
    assert!(raw_tls_roundtrip(&p, Some(&stranger)).await.is_err());
    // The pinned host itself gets through on the same plugin.
    raw_tls_roundtrip(&p, Some(&host)).await.unwrap();
}

#[tokio::test]
async fn plaintext_client_is_refused_by_an_auto_mtls_plugin() {
    let (_host, pem) = host_identity();
    let p = start(&[], &[("PLUGIN_CLIENT_CERT", &pem)]);
    let conn = p.conn().await;
    if let Ok(channel) = common::wire::grpc_channel(conn).await {
        let err = TestClient::new(channel)
            .double(TestRequest { input: 1 })
            .await
            .unwrap_err();
        assert_ne!(err.code(), tonic::Code::Ok, "{err}");
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Connections that never start the TLS handshake are bounded: at most 32 wait at a time (more
/// are closed at once), each at most 5 s, so a flood of silent peers cannot exhaust the plugin's
/// descriptors; afterwards the pinned host gets through.
#[tokio::test]
async fn silent_connections_to_an_auto_mtls_plugin_are_bounded_and_time_out() {
    use tokio::io::AsyncReadExt;
    let (host, pem) = host_identity();
    let p = start(&[], &[("PLUGIN_CLIENT_CERT", &pem)]);
    raw_tls_roundtrip(&p, Some(&host)).await.unwrap();
    let pid = p.child.id();
    let base = open_fds(pid);
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(p.conn().await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = open_fds(pid) - base;
    assert!(
        held <= 32 + 4,
        "the plugin holds {held} descriptors for 200 silent peers"
    );
    // Every silent connection is closed by the plugin: at once beyond the limit, after the
    // handshake timeout within it.
    let t0 = std::time::Instant::now();
    for mut c in silent {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b))
            .await
            .expect("closed by the plugin within the handshake timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    raw_tls_roundtrip(&p, Some(&host)).await.unwrap();
    assert!(
        open_fds(pid) <= base + 2,
        "{} fds after, {base} before",
        open_fds(pid)
    );
}
