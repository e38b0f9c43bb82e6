//! Python's grpcio (gRPC core) as the host (issue 13): a Python program dials the plugin as a
//! Python go-plugin host does and calls a unary and a bidirectional-streaming RPC, against the
//! Rust plugin and against go-plugin v1.8.0's Go plugin with the same contract, over a unix
//! socket (gRPC core sends the percent-encoded socket path as `:authority`, which h2 alone
//! refuses and grpc-go accepts) and over TCP, and over TLS: go-plugin's pre-shared TLS works from
//! Python, AutoMTLS cannot (below). The host is compat-tests/python/grpcio_host.py, with
//! grpcio from compat-tests/python/requirements.txt in target/python-venv (scripts/test makes
//! it); without it the tests print one line and skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::go::{go_bins, go_plugin_test_pems};
use common::Plugin;

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

/// Starts `cmd` as a plugin on `network` (killed when the returned value is dropped); with
/// `client_cert` (PEM) in `PLUGIN_CLIENT_CERT`, i.e. AutoMTLS.
fn serve(cmd: Command, network: &str, client_cert: Option<&str>) -> Plugin {
    let mut env = vec![("GOPLUGIN_NETWORK", network)];
    env.extend(client_cert.map(|pem| ("PLUGIN_CLIENT_CERT", pem)));
    let plugin = common::start_cmd(cmd, &env, true);
    assert_eq!(plugin.line().network.as_str(), network);
    plugin
}

/// Runs the Python host against `plugin` with `flags` and gRPC core's TLS trace on, and returns
/// what it printed and its log.
fn call(py: &Path, plugin: &Plugin, flags: &[&str]) -> (serde_json::Value, String) {
    let line = plugin.line();
    let script = Path::new(MANIFEST).join("compat-tests/python/grpcio_host.py");
    let out = Command::new(py)
        .arg(script)
        .arg(line.network.as_str())
        .arg(&line.address)
        .args(flags)
        .env("GRPC_VERBOSITY", "debug")
        .env("GRPC_TRACE", "tsi")
        .output()
        .expect("run python");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "grpcio host failed against {}: {log}\nplugin stderr: {}",
        line.address,
        plugin.stderr_text()
    );
    (
        serde_json::from_slice(&out.stdout).expect("one JSON object"),
        log,
    )
}

fn expected() -> serde_json::Value {
    serde_json::json!({"health_status": 1, "double": 42, "stream": [1, 2, 3]})
}

fn rust_plugin() -> Command {
    Command::new(common::example("grpctest_plugin"))
}

/// go-plugin's Go grpctest plugin (compat-tests/cmd/grpctest-plugin-go); its mode is the first
/// argument.
fn go_plugin() -> Command {
    Command::new(go_bins().join("grpctest-plugin-go"))
}

/// What the Python host got from `cmd` served on `network`, over plaintext.
fn answers(py: &Path, cmd: Command, network: &str) -> serde_json::Value {
    call(py, &serve(cmd, network, None), &[]).0
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
    let mut go = go_plugin();
    go.arg("test-grpc");
    assert_eq!(answers(&py, go, "unix"), expected());
}

/// go-plugin's pre-shared TLS (`ServeConfig.TLSProvider`, here go-plugin's own test material: an
/// RSA server certificate for `cert.myvault.com` and its CA) works from Python: the Rust plugin
/// (`Server::tls`) and go-plugin's Go plugin give a grpcio host that trusts the CA the same
/// answers over TLS on the unix socket.
#[test]
fn grpcio_host_over_pre_shared_tls_gets_the_same_answers_from_both_plugins() {
    let Some(py) = python() else { return };
    let (ca, cert, key) = go_plugin_test_pems();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    for (name, mut plugin) in [("rust", rust_plugin()), ("go", go_plugin())] {
        plugin
            .arg("test-grpc-tls")
            .env("GRPCTEST_TLS_CA_PEM", &ca)
            .env("GRPCTEST_TLS_CERT_PEM", &cert)
            .env("GRPCTEST_TLS_KEY_PEM", &key);
        let plugin = serve(plugin, "unix", None);
        let ca = ca_file.to_str().unwrap();
        let flags = ["--tls-ca", ca, "--tls-name", "cert.myvault.com"];
        let (got, log) = call(&py, &plugin, &flags);
        assert_eq!(got, expected(), "{name}: {log}");
    }
}

/// go-plugin's AutoMTLS cannot be used from Python, with either plugin, and both refuse alike:
/// the plugin's certificate is P-521 (go-plugin's template, kept by ours), a TLS 1.3 server signs
/// its handshake with ecdsa_secp521r1_sha512, and gRPC core's BoringSSL does not offer that
/// scheme, so the plugin answers the ClientHello with a `handshake_failure` alert and the channel
/// never becomes ready. Everything else is as a host would set it up: the plugin's certificate
/// from field 6 pinned, the host's own in `PLUGIN_CLIENT_CERT` and presented. (A Python host
/// needs pre-shared TLS, above, or a TLS library that offers P-521.)
#[test]
fn grpcio_host_cannot_use_auto_mtls_with_either_plugin_alike() {
    let Some(py) = python() else { return };
    let host = goplugin::tls::Identity::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("host.pem"), dir.path().join("host.key"));
    std::fs::write(&cert_file, host.cert_pem()).unwrap();
    std::fs::write(&key_file, host.key_pem()).unwrap();
    let mut go = go_plugin();
    go.arg("test-grpc");
    for (name, plugin) in [("rust", rust_plugin()), ("go", go)] {
        let plugin = serve(plugin, "unix", Some(&host.cert_pem()));
        let field6 = plugin
            .line()
            .server_cert
            .clone()
            .expect("AutoMTLS: a certificate in field 6");
        let flags = [
            "--plugin-cert",
            &field6,
            "--tls-name",
            "localhost",
            "--client-cert",
            cert_file.to_str().unwrap(),
            "--client-key",
            key_file.to_str().unwrap(),
            "--ready-timeout",
            "3",
        ];
        let (got, log) = call(&py, &plugin, &flags);
        assert_eq!(got, serde_json::json!({"ready": false}), "{name}");
        assert!(
            log.contains("SSLV3_ALERT_HANDSHAKE_FAILURE"),
            "{name}: not refused with handshake_failure:\n{log}"
        );
    }
}
