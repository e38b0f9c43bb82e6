//! go-plugin's own test contract (`grpctest.Test`, plugin `test`, cookie `TEST_MAGIC_COOKIE=test`)
//! served by a Rust plugin, with the modes compat-tests drives (spec §19 direction A):
//! `test-grpc` (default, v1), `test-mtls` (v2), `test-versioned` (v2 and v3), `stderr`,
//! `stdin`, `cleanup PATH`, `noisy` (prints to stdout before serving),
//! `misconfigured` (empty cookie in its own config), `test-grpc-tls` (pre-shared TLS from the PEMs
//! in `GRPCTEST_TLS_{CERT,KEY,CA}_PEM`, as go-plugin's `helperTLSProvider`).

use std::io::Write;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use goplugin::proto::grpctest::ping_pong_client::PingPongClient;
use goplugin::proto::grpctest::ping_pong_server::{PingPong, PingPongServer};
use goplugin::proto::grpctest::print_kv_request::Value;
use goplugin::proto::grpctest::test_server::{Test, TestServer};
use goplugin::proto::grpctest::{
    BidirectionalRequest, BidirectionalResponse, PanicRequest, PingRequest, PongResponse,
    PrintKvRequest, PrintKvResponse, PrintStdioRequest, TestRequest, TestResponse,
};
use goplugin::{Broker, HandshakeConfig, Server, Services};
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

struct TestPlugin {
    broker: Broker,
}

#[derive(Clone, Copy)]
struct Pong;

#[tonic::async_trait]
impl PingPong for Pong {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PongResponse>, Status> {
        Ok(Response::new(PongResponse { msg: "pong".into() }))
    }
}

type Echo = Pin<Box<dyn Stream<Item = Result<TestResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Test for TestPlugin {
    async fn double(&self, req: Request<TestRequest>) -> Result<Response<TestResponse>, Status> {
        let input = req.get_ref().input;
        Ok(Response::new(TestResponse {
            output: input.wrapping_mul(2),
        }))
    }

    async fn print_kv(
        &self,
        req: Request<PrintKvRequest>,
    ) -> Result<Response<PrintKvResponse>, Status> {
        let req = req.into_inner();
        let value = match req.value {
            Some(Value::ValueString(s)) => serde_json::Value::from(s),
            Some(Value::ValueInt(i)) => serde_json::Value::from(i),
            None => return Err(Status::invalid_argument("PrintKV needs a value")),
        };
        goplugin::hclog::log_kv(tracing::Level::INFO, "PrintKV called", &[(&req.key, value)]);
        Ok(Response::new(PrintKvResponse {}))
    }

    async fn bidirectional(
        &self,
        req: Request<BidirectionalRequest>,
    ) -> Result<Response<BidirectionalResponse>, Status> {
        let channel = self
            .broker
            .dial(req.get_ref().id)
            .await
            .map_err(|e| Status::unknown(format!("server dial error: {e}")))?;
        let pong = PingPongClient::new(channel)
            .ping(PingRequest {})
            .await
            .map_err(|e| Status::unknown(format!("server Ping() error: {e}")))?;
        if pong.get_ref().msg != "pong" {
            return Err(Status::unknown("server Bad PingPong"));
        }
        let next = self.broker.next_id();
        self.broker
            .accept_and_serve(next, Routes::new(PingPongServer::new(Pong)))
            .await
            .map_err(|e| Status::unknown(format!("server accept error: {e}")))?;
        Ok(Response::new(BidirectionalResponse { id: next }))
    }

    type StreamStream = Echo;

    async fn stream(
        &self,
        req: Request<Streaming<TestRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let echo = req
            .into_inner()
            .map(|r| r.map(|t| TestResponse { output: t.input }));
        Ok(Response::new(Box::pin(echo)))
    }

    async fn print_stdio(&self, req: Request<PrintStdioRequest>) -> Result<Response<()>, Status> {
        let req = req.into_inner();
        let io = |e: std::io::Error| Status::internal(e.to_string());
        // A write to fd 1 waits while the host does not read GRPCStdio: off the runtime, so
        // that the plugin's other RPCs (and the stdio stream itself) keep going meanwhile.
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut out = std::io::stdout().lock();
            out.write_all(&req.stdout)?;
            out.flush()?;
            std::io::stderr().write_all(&req.stderr)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        written.map_err(io)?;
        Ok(Response::new(()))
    }

    async fn panic(&self, req: Request<PanicRequest>) -> Result<Response<()>, Status> {
        panic!("{}", req.get_ref().message);
    }
}

fn register(s: &mut Services) {
    let broker = s.broker();
    s.add_service(TestServer::new(TestPlugin { broker }));
}

/// go-plugin's `helperTLSProvider` from `GRPCTEST_TLS_{CERT,KEY,CA}_PEM`: serve the certificate,
/// verify a client certificate against the CA if one is given (Go's `VerifyClientCertIfGiven`),
/// and present the same certificate when dialing the host's brokered servers.
fn preshared_tls() -> Result<goplugin::tls::MtlsConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    let pem = |name: &str| std::env::var(name).map_err(|e| format!("{name}: {e}"));
    fn bad(name: &'static str) -> impl Fn(rustls_pki_types::pem::Error) -> String {
        move |e| format!("{name}: {e}")
    }
    let cert = CertificateDer::from_pem_slice(pem("GRPCTEST_TLS_CERT_PEM")?.as_bytes())
        .map_err(bad("GRPCTEST_TLS_CERT_PEM"))?;
    let key = PrivateKeyDer::from_pem_slice(pem("GRPCTEST_TLS_KEY_PEM")?.as_bytes())
        .map_err(bad("GRPCTEST_TLS_KEY_PEM"))?;
    let ca = CertificateDer::from_pem_slice(pem("GRPCTEST_TLS_CA_PEM")?.as_bytes())
        .map_err(bad("GRPCTEST_TLS_CA_PEM"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| e.to_string())?;
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| e.to_string())?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .map_err(|e| e.to_string())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    Ok(goplugin::tls::MtlsConfig::from_rustls(client, server, name))
}

fn fail(e: impl std::fmt::Display) -> ! {
    goplugin::stdio::write_stderr(&format!("grpctest plugin: {e}\n"));
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let _ = goplugin::hclog::init_plugin_logging("grpctest");
    goplugin::hclog::install_panic_hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("test-grpc");
    let handshake = HandshakeConfig::new("TEST_MAGIC_COOKIE", "test");
    let server = match mode {
        "test-grpc" | "stderr" | "stdin" | "cleanup" | "noisy" => {
            Server::new(handshake).services(register)
        }
        "test-mtls" => Server::new(handshake.with_protocol_version(2)).services(register),
        // A plugin author's mistake: no cookie in the plugin's own handshake config.
        "misconfigured" => Server::new(HandshakeConfig::new("", "")).services(register),
        "test-versioned" => Server::new(handshake)
            .version(2, register)
            .version(3, register),
        // go-plugin's `test-grpc-tls`: pre-shared TLS (`ServeConfig.TLSProvider`) from PEMs.
        "test-grpc-tls" => Server::new(handshake)
            .services(register)
            .tls(preshared_tls().unwrap_or_else(|e| fail(e))),
        other => fail(format!("unknown mode {other:?}")),
    };
    if mode == "noisy" {
        // Output before serve(), from Rust, from a child process and from raw fd 1: none of it
        // may reach the host before the handshake line once fd 1 is captured this early.
        goplugin::stdio::capture().unwrap_or_else(|e| fail(e));
        println!("noise from the plugin before serving");
        let _ = std::process::Command::new("sh")
            .args(["-c", "echo noise from a child process"])
            .status();
        #[cfg(unix)]
        let _ = nix::unistd::write(std::io::stdout(), b"noise from fd 1\n");
    }
    if mode == "stderr" {
        goplugin::stdio::capture().unwrap_or_else(|e| fail(e));
        let lines = "HELLO\nWORLD\n[\"HELLO\"]\n12345\n{\"a\":1}\n[WARN] test line 98765\n";
        let _ = std::io::stderr().write_all(lines.as_bytes());
    }
    let server = if mode == "stdin" {
        // Like go-plugin's helper: handshake first, then read the inherited stdin.
        server.on_serving(|_| {
            std::thread::spawn(|| {
                let mut buf = [0u8; 5];
                let ok = std::io::Read::read_exact(&mut std::io::stdin(), &mut buf).is_ok();
                std::process::exit(if ok && &buf == b"hello" { 0 } else { 1 });
            });
        })
    } else {
        server
    };
    match server.serve().await {
        Ok(()) => {}
        Err(e) if e.is_cookie_error() => e.exit(),
        Err(e) => fail(e),
    }
    if mode == "cleanup" {
        let path = args.get(1).unwrap_or_else(|| fail("cleanup needs a PATH"));
        std::fs::write(path, "foo").unwrap_or_else(|e| fail(e));
    }
}
