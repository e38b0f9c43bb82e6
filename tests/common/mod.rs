//! A minimal test host: starts an example plugin binary the way a go-plugin host does, reads its
//! handshake line and connects to it. The binaries are the fresh ones cargo built for this run.

#![allow(dead_code)]

pub mod chroot;
pub mod exec_stream;
pub mod faults;
pub mod go;
pub mod nomad;
pub mod wire;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goplugin::tls::MtlsConfig;
use goplugin::HandshakeLine;

/// `target/<profile>/examples/<name>`, next to this test binary's `deps/` directory.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} missing: cargo test builds examples first",
        path.display()
    );
    path
}

/// A running plugin process.
pub struct Plugin {
    pub child: Child,
    pub line: Option<HandshakeLine>,
    pub raw_line: String,
    pub stderr: Arc<Mutex<Vec<u8>>>,
    pub stdout_rest: Arc<Mutex<Vec<u8>>>,
}

/// Starts `grpctest_plugin` with `args` and `env` (cookie set unless `env` overrides it).
pub fn start(args: &[&str], env: &[(&str, &str)]) -> Plugin {
    start_bin("grpctest_plugin", args, env, true)
}

pub fn start_bin(name: &str, args: &[&str], env: &[(&str, &str)], cookie: bool) -> Plugin {
    let mut cmd = Command::new(example(name));
    cmd.args(args);
    start_cmd(cmd, env, cookie)
}

/// Starts `cmd` (any plugin binary: an example, a Go plugin) as [`start_bin`] does: none of the
/// host-set go-plugin variables inherited, `env` on top, its handshake line read, stderr kept,
/// killed on drop.
pub fn start_cmd(mut cmd: Command, env: &[(&str, &str)], cookie: bool) -> Plugin {
    cmd.env_remove("PLUGIN_CLIENT_CERT")
        .env_remove("PLUGIN_MULTIPLEX_GRPC")
        .env_remove("GOPLUGIN_NETWORK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if cookie {
        cmd.env("TEST_MAGIC_COOKIE", "test");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut err_pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout_rest = Arc::new(Mutex::new(Vec::new()));
    let rest = stdout_rest.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        rest.lock().unwrap().extend_from_slice(&buf);
    });
    let raw_line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let line = HandshakeLine::parse(&raw_line).ok();
    Plugin {
        child,
        line,
        raw_line,
        stderr,
        stdout_rest,
    }
}

impl Plugin {
    pub fn line(&self) -> &HandshakeLine {
        self.line.as_ref().unwrap_or_else(|| {
            panic!(
                "no handshake line; got {:?}, stderr: {}",
                self.raw_line,
                self.stderr_text()
            )
        })
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub async fn conn(&self) -> wire::Stream {
        let l = self.line();
        wire::dial(l.network, &l.address)
            .await
            .expect("dial plugin")
    }

    pub async fn channel(&self, tls: Option<&MtlsConfig>) -> tonic::transport::Channel {
        let conn = self.conn().await;
        let conn = match tls {
            Some(t) => wire::tls_connect(t, conn).await.expect("TLS handshake"),
            None => conn,
        };
        wire::grpc_channel(conn).await.expect("gRPC channel")
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an example to completion and returns (status, stdout, stderr).
pub fn run_to_end(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    cookie: bool,
) -> (ExitStatus, String, String) {
    let mut p = start_bin(name, args, env, cookie);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("plugin should exit");
    std::thread::sleep(Duration::from_millis(50));
    let out = format!(
        "{}{}",
        p.raw_line,
        String::from_utf8_lossy(&p.stdout_rest.lock().unwrap())
    );
    (status, out, p.stderr_text())
}

/// A `Write` (and tracing `MakeWriter`) the test can read afterwards.
#[derive(Clone, Default)]
pub struct Buf(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

/// go-plugin's test PingPong service, served by the host side through the broker.
#[derive(Clone, Copy)]
pub struct Pong;

#[tonic::async_trait]
impl goplugin::proto::grpctest::ping_pong_server::PingPong for Pong {
    async fn ping(
        &self,
        _: tonic::Request<goplugin::proto::grpctest::PingRequest>,
    ) -> Result<tonic::Response<goplugin::proto::grpctest::PongResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            goplugin::proto::grpctest::PongResponse { msg: "pong".into() },
        ))
    }
}

/// Spec §19 items 20-22 from the host side: serve PingPong on a new broker ID, have the plugin's
/// `Bidirectional` dial it and serve its own PingPong on another ID, then dial that one.
pub async fn broker_round_trip(broker: &goplugin::Broker, main: tonic::transport::Channel) {
    use goplugin::proto::grpctest::ping_pong_client::PingPongClient;
    use goplugin::proto::grpctest::ping_pong_server::PingPongServer;
    use goplugin::proto::grpctest::test_client::TestClient;
    use goplugin::proto::grpctest::{BidirectionalRequest, PingRequest};
    let id = broker.next_id();
    broker
        .accept_and_serve(id, tonic::service::Routes::new(PingPongServer::new(Pong)))
        .await
        .unwrap();
    let theirs = TestClient::new(main)
        .bidirectional(BidirectionalRequest { id })
        .await
        .unwrap()
        .into_inner()
        .id;
    let pong = PingPongClient::new(broker.dial(theirs).await.unwrap())
        .ping(PingRequest {})
        .await
        .unwrap();
    assert_eq!(pong.get_ref().msg, "pong");
}

/// Spec §19 item 5: `PrintStdio` output reaches the host's sync writers byte for byte.
pub async fn assert_stdio_mirrored(main: tonic::transport::Channel, out: &Buf, err: &Buf) {
    use goplugin::proto::grpctest::test_client::TestClient;
    use goplugin::proto::grpctest::PrintStdioRequest;
    TestClient::new(main)
        .print_stdio(PrintStdioRequest {
            stdout: b"hello\nworld!".to_vec(),
            stderr: b"and some error\n messages!".to_vec(),
        })
        .await
        .unwrap();
    let t0 = Instant::now();
    while (out.text().len() < 12 || err.text().len() < 25) && t0.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(out.text(), "hello\nworld!");
    assert_eq!(err.text(), "and some error\n messages!");
}
