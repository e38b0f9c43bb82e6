//! Go plugins for direction-B tests, built once per test process from compat-tests (go-plugin
//! v1.8.0 pinned there); Go's build cache makes repeated builds cheap.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Builds the Go plugins once per test run (Go's build cache makes repeats cheap).
pub fn go_bins() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(MANIFEST).join("target/go-plugins");
        std::fs::create_dir_all(&out).unwrap();
        let compat = PathBuf::from(MANIFEST).join("compat-tests");
        let build = |args: &[&str]| {
            let status = Command::new("go")
                .args(args)
                .current_dir(&compat)
                .status()
                .expect("the Go toolchain is required for these tests");
            assert!(status.success(), "go {args:?} failed");
        };
        let o = |name: &str| out.join(name).to_string_lossy().into_owned();
        build(&[
            "test",
            "-c",
            "-o",
            &o("go-plugin-ref.test"),
            "github.com/hashicorp/go-plugin",
        ]);
        build(&[
            "build",
            "-o",
            &o("grpctest-plugin-go"),
            "./cmd/grpctest-plugin-go",
        ]);
        build(&[
            "build",
            "-o",
            &o("kv-plugin-go"),
            "github.com/hashicorp/go-plugin/examples/grpc/plugin-go-grpc",
        ]);
        build(&[
            "build",
            "-o",
            &o("counter-plugin-go"),
            "github.com/hashicorp/go-plugin/examples/bidirectional/plugin-go-grpc",
        ]);
        out
    })
}

/// go-plugin's reference helper in `mode` (`helperProcess` of plugin_test.go).
pub fn reference(mode: &str) -> Command {
    let mut cmd = Command::new(go_bins().join("go-plugin-ref.test"));
    cmd.args(["-test.run=TestHelperProcess", "--", mode])
        .env("GO_WANT_HELPER_PROCESS", "1");
    cmd
}

/// The compat-tests Go reference plugin in `mode`.
pub fn compat(args: &[&str]) -> Command {
    let mut cmd = Command::new(go_bins().join("grpctest-plugin-go"));
    cmd.args(args);
    cmd
}

/// go-plugin's own test TLS material from plugin_test.go of the module cache, PEM:
/// (`TestClusterCACert`, `TestClusterServerCert`, `TestClusterServerKey`).
pub fn go_plugin_test_pems() -> (String, String, String) {
    let compat = PathBuf::from(MANIFEST).join("compat-tests");
    let out = Command::new("go")
        .args([
            "list",
            "-m",
            "-f",
            "{{.Dir}}",
            "github.com/hashicorp/go-plugin",
        ])
        .current_dir(&compat)
        .output()
        .expect("go list");
    let dir = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let src = std::fs::read_to_string(PathBuf::from(dir).join("plugin_test.go")).unwrap();
    let constant = |name: &str| -> String {
        let start = src.find(&format!("{name} = `")).unwrap() + name.len() + 4;
        let end = start + src[start..].find('`').unwrap();
        src[start..end].to_string()
    };
    (
        constant("TestClusterCACert"),
        constant("TestClusterServerCert"),
        constant("TestClusterServerKey"),
    )
}

/// The pre-shared TLS settings go-plugin's `TestClient_TLS_grpc` host uses with that material:
/// trust the CA, dial `127.0.0.1`, serve brokered connections with the server cert.
pub fn go_plugin_test_tls() -> goplugin::tls::MtlsConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let (ca, cert, key) = go_plugin_test_pems();
    let ca = CertificateDer::from_pem_slice(ca.as_bytes()).unwrap();
    let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    goplugin::tls::MtlsConfig::from_rustls(client, server, name)
}
