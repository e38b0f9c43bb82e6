//! The fault matrix of issue #13 (item 2), one test per row: SIGKILL of the plugin, the host, the
//! executor, logmon and `goplugin run` at each lifecycle stage (during the handshake, mid-RPC,
//! mid-stream, during Shutdown); ENOSPC and EMFILE in the executor, logmon and the host; stalled
//! readers (a host not reading `GRPCStdio`, logmon stopped while the task writes); socket files
//! removed under live plugins. Each row checks that no byte of task output that reached a FIFO
//! is lost, that nothing the row started is left running (every process carries a tag in its
//! environment, found in `/proc` wherever it was reparented), that an error is clear where one
//! is due, and that descriptors and threads of the survivors are back where they were; each
//! prints one `FAULT ROW | row | observed` line (`cargo test --test faults -- --nocapture`).
//!
//! Rows that found a defect stay, asserting the correct behaviour, as `#[ignore = "defect: ..."]`.
//!
//! The rows whose host is this test process compare its own descriptors and threads, so they run
//! alone ([`exclusive`]); every other row holds [`shared`].

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faults::*;
use common::{example, Buf};
use futures::StreamExt;
use goplugin::nomad;
use goplugin::proto::drivers::exec_task_streaming_request::Setup;
use goplugin::proto::drivers::ExecTaskStreamingRequest;
use goplugin::proto::executor::executor_client::ExecutorClient;
use goplugin::proto::executor::{LaunchRequest, ShutdownRequest, VersionRequest, WaitRequest};
use goplugin::proto::grpctest::ping_pong_server::{PingPong, PingPongServer};
use goplugin::proto::grpctest::test_client::TestClient;
use goplugin::proto::grpctest::{
    BidirectionalRequest, PingRequest, PongResponse, PrintStdioRequest, TestRequest,
};
use goplugin::proto::logmon::log_mon_client::LogMonClient;
use goplugin::proto::logmon::{StartRequest, StopRequest};
use goplugin::proto::plugin::grpc_controller_client::GrpcControllerClient;
use goplugin::proto::plugin::grpc_stdio_client::GrpcStdioClient;
use goplugin::{Client, ClientError, Exit, HandshakeConfig, ReattachConfig};
use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tonic::service::Routes;

static HOST: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// For rows that measure this process (called outside any runtime): no other row runs meanwhile.
fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    HOST.blocking_write()
}

/// For every other row.
async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    HOST.read().await
}

/// Set in the process a host row re-runs itself in.
const ALONE: &str = "GOPLUGIN_FAULTS_ALONE";

/// Runs a row whose host is this process: alone, on a runtime whose idle blocking threads go
/// at once, after one plugin start, broker round trip and kill, so that process-wide state made
/// on first use (tokio's signal pipe, the TLS provider) exists before the baseline is taken.
///
/// "Alone" means in a process of its own: the test binary runs again with only this test, so no
/// other test's thread or runtime (libtest starts the next test whenever a slot frees) can show
/// up in the row's count of this process's descriptors and threads.
fn host_row(row: impl std::future::Future<Output = ()>) {
    let _x = exclusive();
    if std::env::var_os(ALONE).is_none() {
        drop(row);
        let name = std::thread::current()
            .name()
            .expect("libtest names the thread after the test")
            .to_string();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{text}");
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{name} alone in its own process: {}",
            out.status
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(Duration::from_millis(20))
        .build()
        .unwrap();
    rt.block_on(async {
        let tag = Tag::new("warm-up");
        let client = start_plugin(&tag).await;
        common::broker_round_trip(&client.broker(), client.channel()).await;
        client.kill().await;
        row.await
    });
}

/// Descriptors and threads of `pid` are back at `before`; otherwise say which are there.
fn assert_flat(what: &str, pid: u32, before: Census, after: Census) {
    assert_eq!(
        after,
        before,
        "{what}: threads {:?}; fds {:?}",
        thread_names(pid),
        fd_targets(pid)
    );
}

fn test_handshake() -> HandshakeConfig {
    HandshakeConfig::new("TEST_MAGIC_COOKIE", "test")
}

fn plugin_cmd(tag: &Tag) -> Command {
    let mut cmd = Command::new(example("grpctest_plugin"));
    tag.apply(&mut cmd);
    cmd
}

async fn start_plugin(tag: &Tag) -> Client {
    Client::builder(plugin_cmd(tag), test_handshake())
        .start_timeout(Duration::from_secs(20))
        .start()
        .await
        .expect("grpctest plugin starts")
}

async fn double(channel: tonic::transport::Channel, x: i32) -> Result<i32, tonic::Status> {
    TestClient::new(channel)
        .double(TestRequest { input: x })
        .await
        .map(|r| r.get_ref().output)
}

fn exit_text(e: Exit) -> String {
    use std::os::unix::process::ExitStatusExt;
    match e {
        Exit::Status(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (_, Some(sig)) => format!("signal {sig}"),
            _ => format!("{s:?}"),
        },
        Exit::Gone => "gone".into(),
    }
}

/// A PingPong served by the host whose `Ping` never answers: the plugin's `Bidirectional` that
/// dialled it is then provably in flight (it told us so by calling).
struct StallingPong(Mutex<Option<oneshot::Sender<()>>>);

impl StallingPong {
    fn new() -> (StallingPong, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (StallingPong(Mutex::new(Some(tx))), rx)
    }
}

#[tonic::async_trait]
impl PingPong for StallingPong {
    async fn ping(
        &self,
        _: tonic::Request<PingRequest>,
    ) -> Result<tonic::Response<PongResponse>, tonic::Status> {
        if let Some(tx) = self.0.lock().unwrap().take() {
            let _ = tx.send(());
        }
        std::future::pending().await
    }
}

/// Starts `Bidirectional` against a stalling PingPong; resolves once the plugin is inside it.
async fn rpc_in_flight(
    client: &Client,
) -> (
    tokio::task::JoinHandle<
        Result<tonic::Response<goplugin::proto::grpctest::BidirectionalResponse>, tonic::Status>,
    >,
    Instant,
) {
    let broker = client.broker();
    let id = broker.next_id();
    let (pong, entered) = StallingPong::new();
    broker
        .accept_and_serve(id, Routes::new(PingPongServer::new(pong)))
        .await
        .unwrap();
    let mut test = TestClient::new(client.channel());
    let call = tokio::spawn(async move { test.bidirectional(BidirectionalRequest { id }).await });
    within(
        "the plugin calls the host's PingPong",
        Duration::from_secs(10),
        entered,
    )
    .await
    .unwrap();
    (call, Instant::now())
}

// ---------------------------------------------------------------------------------------------
// SIGKILL of the plugin (host: this process, `goplugin::Client`)
// ---------------------------------------------------------------------------------------------

/// Waits for the tagged process that stopped itself before exec (see [`stopped_before_exec`]).
async fn stopped_one(tag: &Tag) -> i32 {
    until(
        "a tagged process stopped before its exec",
        Duration::from_secs(20),
        || {
            tag.live()
                .into_iter()
                .find(|p| p.state == 'T')
                .map(|p| p.pid)
        },
    )
    .await
}

/// SIGKILL during the handshake: the host's `start` must return the exit at once (not wait for
/// its start timeout), reap the child and leave its own descriptors and threads as they were.
async fn sigkill_during_handshake(row: &str, tag: &Tag, cmd: Command, handshake: HandshakeConfig) {
    let before = Census::own();
    let start = Client::builder(cmd, handshake)
        .start_timeout(Duration::from_secs(30))
        .start();
    let killer = async {
        let pid = stopped_one(tag).await;
        signal(pid as u32, Signal::SIGKILL);
        (pid, Instant::now())
    };
    let (started, (pid, killed_at)) = tokio::join!(start, killer);
    let took = killed_at.elapsed();
    let err = started.expect_err("a plugin killed before its handshake cannot be connected");
    let left = tag.left_after(Duration::from_secs(3)).await;
    let zombie = proc_info(pid).is_some();
    let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
    report(
        row,
        format!(
            "start() -> {err:?} \"{err}\" {took:?} after the kill; child reaped: {}; left: {}; host {before} -> {after}",
            !zombie,
            listing(&left)
        ),
    );
    assert!(
        matches!(err, ClientError::ExitedBeforeConnect { .. }),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(left.is_empty() && !zombie);
    assert_flat("host", std::process::id(), before, after);
}

#[test]
fn sigkill_plugin_during_handshake() {
    host_row(async {
        let tag = Tag::new("plugin-handshake");
        let mut cmd = stopped_before_exec(example("grpctest_plugin"), &[]);
        tag.apply(&mut cmd);
        sigkill_during_handshake(
            "SIGKILL plugin during handshake",
            &tag,
            cmd,
            test_handshake(),
        )
        .await;
    });
}

#[test]
fn sigkill_plugin_mid_rpc() {
    host_row(async {
        let tag = Tag::new("plugin-rpc");
        let before = Census::own();
        let client = start_plugin(&tag).await;
        let (call, _) = rpc_in_flight(&client).await;
        signal(client.pid(), Signal::SIGKILL);
        let t0 = Instant::now();
        let answer = within("the RPC in flight fails", Duration::from_secs(10), call)
            .await
            .unwrap();
        let took = t0.elapsed();
        let exit = within(
            "wait() sees the crash",
            Duration::from_secs(5),
            client.wait(),
        )
        .await;
        let status = answer.expect_err("the plugin died mid-call");
        let broker_ok = client.broker().dial(12345).await.is_err();
        // As a host does after a crash: kill() (at once for a dead plugin) releases the rest.
        client.kill().await;
        drop(client);
        let left = tag.left_after(Duration::from_secs(3)).await;
        let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
        report(
        "SIGKILL plugin mid-RPC",
        format!(
            "Bidirectional in flight -> {:?} \"{}\" {took:?} after the kill; wait() -> {}; later broker dial fails: {broker_ok}; left: {}; host {before} -> {after}",
            status.code(),
            status.message(),
            exit_text(exit),
            listing(&left)
        ),
    );
        assert!(took < Duration::from_secs(5));
        assert!(left.is_empty());
        assert_flat("host", std::process::id(), before, after);
    });
}

#[test]
fn sigkill_plugin_mid_stream() {
    host_row(async {
        let tag = Tag::new("plugin-stream");
        let before = Census::own();
        let out = Buf::default();
        let client = Client::builder(plugin_cmd(&tag), test_handshake())
            .sync_stdout(out.clone())
            .start()
            .await
            .unwrap();
        TestClient::new(client.channel())
            .print_stdio(PrintStdioRequest {
                stdout: b"mirrored before the kill\n".to_vec(),
                stderr: vec![],
            })
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut echoes = TestClient::new(client.channel())
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for i in 0..100 {
            tx.send(TestRequest { input: i }).await.unwrap();
            let echo = echoes.message().await.unwrap().unwrap();
            assert_eq!(echo.output, i);
        }
        until("stdio mirrored", Duration::from_secs(5), || {
            out.text().contains("before the kill").then_some(())
        })
        .await;
        signal(client.pid(), Signal::SIGKILL);
        let t0 = Instant::now();
        let end = within("the stream ends", Duration::from_secs(10), echoes.message()).await;
        let took = t0.elapsed();
        let exit = within(
            "wait() sees the crash",
            Duration::from_secs(5),
            client.wait(),
        )
        .await;
        let send_after = tx.send(TestRequest { input: 1 }).await.is_ok();
        client.kill().await;
        drop((tx, echoes, client));
        let left = tag.left_after(Duration::from_secs(3)).await;
        let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
        report(
        "SIGKILL plugin mid-stream",
        format!(
            "after 100 echoes the stream -> {:?} {took:?} after the kill; wait() -> {}; stdio mirrored {} bytes; sending more accepted locally: {send_after}; left: {}; host {before} -> {after}",
            end.as_ref().map_err(|s| s.code()),
            exit_text(exit),
            out.text().len(),
            listing(&left)
        ),
    );
        assert!(
            end.is_err(),
            "a killed peer ends the stream with an error, not EOF"
        );
        assert!(took < Duration::from_secs(5));
        assert!(left.is_empty());
        assert_flat("host", std::process::id(), before, after);
    });
}

#[test]
fn sigkill_plugin_during_shutdown() {
    host_row(async {
        let tag = Tag::new("plugin-shutdown");
        let before = Census::own();
        let client = start_plugin(&tag).await;
        // An RPC in flight keeps the plugin in its shutdown grace after it answered Shutdown.
        let (call, _) = rpc_in_flight(&client).await;
        GrpcControllerClient::new(client.channel())
            .shutdown(goplugin::proto::plugin::Empty {})
            .await
            .unwrap();
        let shutting_down = alive(client.pid() as i32);
        signal(client.pid(), Signal::SIGKILL);
        let t0 = Instant::now();
        let exit = within("kill() returns", Duration::from_secs(10), client.kill()).await;
        let took = t0.elapsed();
        let answer = within("the RPC in flight ends", Duration::from_secs(5), call)
            .await
            .unwrap();
        drop(client);
        let left = tag.left_after(Duration::from_secs(3)).await;
        let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
        report(
        "SIGKILL plugin during Shutdown",
        format!(
            "killed after answering Shutdown (still running: {shutting_down}) with an RPC in flight; kill() -> {} in {took:?}; the RPC -> {:?}; left: {}; host {before} -> {after}",
            exit_text(exit),
            answer.map(|_| ()).map_err(|s| s.code()),
            listing(&left)
        ),
    );
        assert!(matches!(exit, Exit::Status(s) if !s.success()));
        assert!(
            took < Duration::from_secs(2),
            "no kill grace wasted on a dead plugin"
        );
        assert!(left.is_empty());
        assert_flat("host", std::process::id(), before, after);
    });
}

// ---------------------------------------------------------------------------------------------
// SIGKILL of the host: a host process of its own (this test binary again, `host_child`)
// ---------------------------------------------------------------------------------------------

const HOST_SCENARIO: &str = "GOPLUGIN_FAULT_HOST";

/// A host process running one scenario of [`host_child`]; lines it prints as `FAULTHOST ...`
/// arrive here, and a line on its stdin lets it go on.
struct HostChild {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Buf,
}

impl HostChild {
    fn spawn(scenario: &str, tag: &Tag) -> HostChild {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["host_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(HOST_SCENARIO, scenario)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tag.apply(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // libtest's "test host_child ... " may share the first line.
                if let Some(i) = line.find("FAULTHOST ") {
                    let _ = tx.send(line[i + "FAULTHOST ".len()..].to_string());
                }
            }
        });
        let stderr = Buf::default();
        let mut sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || std::io::copy(&mut err, &mut sink));
        HostChild {
            child,
            lines,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line starting with `word`, minus the word.
    async fn expect(&mut self, word: &str) -> String {
        let t0 = Instant::now();
        loop {
            match self.lines.try_recv() {
                Ok(line) if line.starts_with(word) => return line[word.len()..].trim().to_string(),
                Ok(_) => continue,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    panic!("host child ended before {word:?}: {}", self.stderr.text())
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "host child never printed {word:?}: {}",
                self.stderr.text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn go_on(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn sigkill(&mut self) {
        signal(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for HostChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a row: the host process of the host rows, when this binary is started with
/// `GOPLUGIN_FAULT_HOST=<scenario>` (does nothing otherwise).
#[test]
fn host_child() {
    let Ok(scenario) = std::env::var(HOST_SCENARIO) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(host_scenario(&scenario));
}

fn say(line: impl std::fmt::Display) {
    println!("FAULTHOST {line}");
    let _ = std::io::stdout().flush();
}

async fn wait_for_go() {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await
    .unwrap();
}

async fn host_scenario(scenario: &str) {
    let plugin = || Command::new(example("grpctest_plugin"));
    if scenario == "handshake" {
        say("spawning");
        let r = Client::builder(
            stopped_before_exec(example("grpctest_plugin"), &[]),
            test_handshake(),
        )
        .start()
        .await;
        say(format!("start-returned {:?}", r.map(|c| c.pid())));
        return;
    }
    if scenario == "emfile" {
        return host_emfile().await;
    }
    let client = Client::builder(plugin(), test_handshake())
        .start()
        .await
        .unwrap();
    double(client.channel(), 1).await.unwrap();
    say(format!(
        "reattach {}",
        serde_json::to_string(&client.reattach_config()).unwrap()
    ));
    say("idle");
    wait_for_go().await;
    match scenario {
        "rpc" => {
            let (_call, _) = rpc_in_flight(&client).await;
            say("inflight");
        }
        "stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let mut echoes = TestClient::new(client.channel())
                .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            for i in 0..10 {
                tx.send(TestRequest { input: i }).await.unwrap();
                echoes.message().await.unwrap().unwrap();
            }
            say("streaming");
            std::mem::forget((tx, echoes));
        }
        "shutdown" => {
            let (_call, _) = rpc_in_flight(&client).await;
            GrpcControllerClient::new(client.channel())
                .shutdown(goplugin::proto::plugin::Empty {})
                .await
                .unwrap();
            say("shutdown-answered");
        }
        other => panic!("unknown scenario {other}"),
    }
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn sigkill_host_during_handshake() {
    let _s = shared().await;
    let tag = Tag::new("host-handshake");
    let mut host = HostChild::spawn("handshake", &tag);
    host.expect("spawning").await;
    let plugin = stopped_one(&tag).await;
    host.sigkill();
    signal(plugin as u32, Signal::SIGCONT);
    let t0 = Instant::now();
    let left = tag.left_after(Duration::from_secs(5)).await;
    report(
        "SIGKILL host during handshake",
        format!(
            "plugin pid {plugin} continued after its host died before reading the line: {} in {:?}",
            if left.is_empty() {
                "exited (its handshake line met a closed pipe)".to_string()
            } else {
                format!("left running: {}", listing(&left))
            },
            t0.elapsed()
        ),
    );
    assert!(left.is_empty());
}

/// The host dies at `scenario`'s stage; the plugin keeps serving (as go-plugin's do, so a new
/// host can reattach, as Nomad's does), a reattached host finds it healthy with the same
/// descriptors and threads as under the first host, and its kill leaves nothing.
async fn sigkill_host_then_reattach(row: &str, scenario: &str, stage: &str) {
    let _s = shared().await;
    let tag = Tag::new(scenario);
    let mut host = HostChild::spawn(scenario, &tag);
    let cfg: ReattachConfig = serde_json::from_str(&host.expect("reattach").await).unwrap();
    host.expect("idle").await;
    let idle = Census::of(cfg.pid).unwrap();
    host.go_on();
    host.expect(stage).await;
    let during = Census::of(cfg.pid).unwrap();
    host.sigkill();
    let again = within(
        "reattach to the orphaned plugin",
        Duration::from_secs(10),
        Client::reattach(&cfg),
    )
    .await
    .expect("the plugin outlives its host and can be reattached");
    let answer = double(again.channel(), 21).await;
    let after = Census::settle(cfg.pid, idle, Duration::from_secs(5)).await;
    let exit = within(
        "kill of the reattached plugin",
        Duration::from_secs(10),
        again.kill(),
    )
    .await;
    let left = tag.left_after(Duration::from_secs(5)).await;
    report(
        row,
        format!(
            "plugin pid {} survived its host; reattached, Double(21) -> {answer:?}; plugin {idle} idle under the first host, {during} at the kill, {after} reattached; kill() -> {}; left: {}",
            cfg.pid,
            exit_text(exit),
            listing(&left)
        ),
    );
    assert_eq!(answer.ok(), Some(42));
    assert_eq!(after, idle, "the dead host's connection is cleaned up");
    assert!(left.is_empty());
}

#[tokio::test]
async fn sigkill_host_mid_rpc() {
    sigkill_host_then_reattach("SIGKILL host mid-RPC", "rpc", "inflight").await;
}

#[tokio::test]
async fn sigkill_host_mid_stream() {
    sigkill_host_then_reattach("SIGKILL host mid-stream", "stream", "streaming").await;
}

#[tokio::test]
async fn sigkill_host_during_shutdown() {
    let _s = shared().await;
    let tag = Tag::new("host-shutdown");
    let mut host = HostChild::spawn("shutdown", &tag);
    let cfg: ReattachConfig = serde_json::from_str(&host.expect("reattach").await).unwrap();
    host.expect("idle").await;
    host.go_on();
    host.expect("shutdown-answered").await;
    host.sigkill();
    let t0 = Instant::now();
    let left = tag.left_after(Duration::from_secs(5)).await;
    report(
        "SIGKILL host during Shutdown",
        format!(
            "host killed right after the plugin answered Shutdown (an RPC in flight); plugin pid {}: {} {:?} after the kill",
            cfg.pid,
            if left.is_empty() { "exited".to_string() } else { format!("left running: {}", listing(&left)) },
            t0.elapsed()
        ),
    );
    assert!(left.is_empty());
}

/// The host side of the host EMFILE row: starts the plugin under ever larger RLIMIT_NOFILE
/// headroom (0, 1, 2, ... descriptors above the highest one open) and prints each outcome.
async fn host_emfile() {
    let tag = Tag::inherited().expect("host child is tagged");
    let soft = soft_nofile();
    // The plugin gets its usual limit back: this row is about the host's descriptors.
    let plugin = || {
        let mut cmd = Command::new(example("grpctest_plugin"));
        limit_nofile(&mut cmd, soft);
        Client::builder(cmd, test_handshake())
            .start_timeout(Duration::from_secs(10))
            .start()
    };
    let warm = plugin().await.unwrap();
    double(warm.channel(), 1).await.unwrap();
    warm.kill().await;
    drop(warm);
    let baseline = Census::quiet(std::process::id()).await;
    for headroom in 0..=24u64 {
        let limit = limit_for_headroom(headroom);
        set_own_nofile(limit);
        let attempt = tokio::time::timeout(Duration::from_secs(20), plugin()).await;
        let outcome = match attempt {
            Err(_) => "hang".to_string(),
            Ok(Err(e)) => format!("error {e}"),
            Ok(Ok(client)) => {
                let answer = double(client.channel(), 2).await;
                let exit = client.kill().await;
                format!(
                    "ok Double -> {:?}, kill -> {}",
                    answer.map_err(|s| s.code()),
                    exit_text(exit)
                )
            }
        };
        set_own_nofile(soft);
        let left = tag.left_after(Duration::from_secs(3)).await;
        say(format!(
            "attempt {headroom} limit {limit} | {outcome} | left {}",
            listing(&left)
        ));
        if outcome.starts_with("ok") {
            break;
        }
    }
    let after = Census::settle(std::process::id(), baseline, Duration::from_secs(5)).await;
    say(format!("census {baseline} -> {after}"));
    let again = plugin().await.unwrap();
    let answer = double(again.channel(), 21).await.unwrap();
    again.kill().await;
    say(format!("recovered Double(21) -> {answer}"));
    say("done");
}

#[tokio::test]
async fn emfile_in_the_host() {
    let _s = shared().await;
    let tag = Tag::new("host-emfile");
    let mut host = HostChild::spawn("emfile", &tag);
    let mut attempts = Vec::new();
    let census = loop {
        let t0 = Instant::now();
        let line = loop {
            if let Ok(l) = host.lines.try_recv() {
                break l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{}",
                host.stderr.text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if let Some(rest) = line.strip_prefix("census ") {
            break rest.to_string();
        }
        attempts.push(line);
    };
    let recovered = host.expect("recovered").await;
    host.expect("done").await;
    for a in &attempts {
        report("EMFILE in the host (Client::start)", a);
    }
    report(
        "EMFILE in the host (Client::start)",
        format!("host census {census}; afterwards with the limit back: {recovered}"),
    );
    let (before, after) = census.split_once(" -> ").unwrap();
    assert_eq!(before, after, "host descriptors and threads flat");
    for a in &attempts {
        assert!(!a.contains("| hang |"), "{a}");
        assert!(a.ends_with("| left none"), "{a}");
        assert!(
            !a.contains("error") || a.contains("Too many open files"),
            "a clear error: {a}"
        );
    }
    assert!(
        attempts.last().is_some_and(|a| a.contains("| ok ")),
        "{attempts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SIGKILL of the executor and of logmon (host: this process, Nomad's handshake)
// ---------------------------------------------------------------------------------------------

fn executor_json(dir: &Path) -> String {
    serde_json::json!({
        "LogFile": dir.join("executor.out"),
        "LogLevel": "debug",
        "FSIsolation": false,
        "Compute": {"tc": 4000, "nc": 2},
    })
    .to_string()
}

fn executor_cmd(tag: &Tag, dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("executor").arg(executor_json(dir));
    tag.apply(&mut cmd);
    cmd
}

async fn start_executor(tag: &Tag, dir: &Path) -> Client {
    Client::builder(executor_cmd(tag, dir), nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .stdin(Stdio::null())
        .start()
        .await
        .expect("executor starts")
}

/// A `sh -c script` task with its output in `dir/stdout`, `dir/stderr` (made here, as logmon's
/// FIFOs exist before a Launch) and the row's tag in its exact environment.
fn task(dir: &Path, tag: &Tag, script: &str) -> LaunchRequest {
    let req = LaunchRequest {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        stdout_path: dir.join("stdout").display().to_string(),
        stderr_path: dir.join("stderr").display().to_string(),
        env: vec!["PATH=/usr/bin:/bin".into(), tag.env()],
        task_dir: dir.display().to_string(),
        ..Default::default()
    };
    std::fs::write(&req.stdout_path, b"").unwrap();
    std::fs::write(&req.stderr_path, b"").unwrap();
    req
}

async fn launch(exec: &mut ExecutorClient<tonic::transport::Channel>, req: LaunchRequest) -> i32 {
    exec.launch(req)
        .await
        .expect("launch")
        .into_inner()
        .process
        .unwrap()
        .pid
}

fn file_text(path: impl AsRef<Path>) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[test]
fn sigkill_executor_during_handshake() {
    host_row(async {
        let tag = Tag::new("executor-handshake");
        let dir = tempfile::tempdir().unwrap();
        let json = executor_json(dir.path());
        let mut cmd = stopped_before_exec(BIN, &["executor", &json]);
        tag.apply(&mut cmd);
        sigkill_during_handshake(
            "SIGKILL executor during handshake",
            &tag,
            cmd,
            nomad::handshake(),
        )
        .await;
    });
}

/// Ends with: the task outlives its SIGKILLed executor (its own session; README: "left by a
/// SIGKILLed executor"), and the host that launched it still knows its pid.
#[test]
fn sigkill_executor_mid_rpc() {
    host_row(async {
        let tag = Tag::new("executor-rpc");
        let dir = tempfile::tempdir().unwrap();
        let before = Census::own();
        let client = start_executor(&tag, dir.path()).await;
        let mut exec = ExecutorClient::new(client.channel());
        let pid = launch(&mut exec, task(dir.path(), &tag, "exec sleep 1000")).await;
        let mut waiter = exec.clone();
        let wait = tokio::spawn(async move { waiter.wait(WaitRequest {}).await });
        tokio::task::yield_now().await;
        // Answered after the Wait went out on the same connection: the Wait is in flight.
        exec.version(VersionRequest {}).await.unwrap();
        signal(client.pid(), Signal::SIGKILL);
        let t0 = Instant::now();
        let answer = within("Wait fails", Duration::from_secs(10), wait)
            .await
            .unwrap();
        let took = t0.elapsed();
        let exit = within(
            "wait() sees the crash",
            Duration::from_secs(5),
            client.wait(),
        )
        .await;
        client.kill().await;
        drop((exec, client));
        let task_survived = alive(pid);
        signal(pid as u32, Signal::SIGKILL);
        let left = tag.left_after(Duration::from_secs(3)).await;
        let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
        let status = answer.expect_err("Wait cannot succeed on a dead executor");
        report(
            "SIGKILL executor mid-RPC (Wait)",
            format!(
                "Wait in flight -> {:?} \"{}\" {took:?} after the kill; wait() -> {}; task pid {pid} survived its executor: {task_survived} (killed by the test); left: {}; host {before} -> {after}",
                status.code(),
                status.message(),
                exit_text(exit),
                listing(&left)
            ),
        );
        assert!(took < Duration::from_secs(5));
        assert!(left.is_empty());
        assert_flat("host", std::process::id(), before, after);
    });
}

#[test]
fn sigkill_executor_mid_stream() {
    host_row(async {
        let tag = Tag::new("executor-stream");
        let dir = tempfile::tempdir().unwrap();
        let before = Census::own();
        let client = start_executor(&tag, dir.path()).await;
        let mut exec = ExecutorClient::new(client.channel());
        launch(&mut exec, task(dir.path(), &tag, "exec sleep 1000")).await;
        let setup = ExecTaskStreamingRequest {
            setup: Some(Setup {
                task_id: String::new(),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "while :; do echo tick; sleep 0.01; done".into(),
                ],
                tty: false,
            }),
            ..Default::default()
        };
        let mut out = exec
            .exec_streaming(futures::stream::iter(vec![setup]).chain(futures::stream::pending()))
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while got.len() < 50 {
            if let Some(o) = out.message().await.unwrap().unwrap().stdout {
                got.extend(o.data);
            }
        }
        let streamed = tag
            .live()
            .into_iter()
            .find(|p| p.cmd.contains("echo tick"))
            .expect("the exec'd command runs");
        signal(client.pid(), Signal::SIGKILL);
        let t0 = Instant::now();
        let end = loop {
            match within("the stream ends", Duration::from_secs(10), out.message()).await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        let took = t0.elapsed();
        client.kill().await;
        drop((out, exec, client));
        // It writes into a pipe nobody reads any more: SIGPIPE at its next echo.
        let t1 = Instant::now();
        while alive(streamed.pid) && t1.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let streamed_gone = !alive(streamed.pid);
        tag.kill_all();
        let left = tag.left_after(Duration::from_secs(3)).await;
        let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
        report(
            "SIGKILL executor mid-stream (ExecStreaming)",
            format!(
                "after {} bytes streamed the stream -> {:?} {took:?} after the kill; the exec'd command (pid {}) gone by itself within {:?}: {streamed_gone}; left after the test killed the task: {}; host {before} -> {after}",
                got.len(),
                end.map(|_| ()).map_err(|s| s.code()),
                streamed.pid,
                t1.elapsed(),
                listing(&left)
            ),
        );
        assert!(took < Duration::from_secs(5));
        assert!(
            streamed_gone,
            "the exec'd command does not outlive its stream"
        );
        assert!(left.is_empty());
        assert_flat("host", std::process::id(), before, after);
    });
}

#[test]
fn sigkill_executor_during_shutdown() {
    host_row(async {
        let tag = Tag::new("executor-shutdown");
        let dir = tempfile::tempdir().unwrap();
        let before = Census::own();
        let client = start_executor(&tag, dir.path()).await;
        let mut exec = ExecutorClient::new(client.channel());
        let script = "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.05; done";
        let pid = launch(&mut exec, task(dir.path(), &tag, script)).await;
        let stdout = dir.path().join("stdout");
        until("task ready", Duration::from_secs(10), || {
            file_text(&stdout).contains("ready").then_some(())
        })
        .await;
        let mut stopper = exec.clone();
        let shutdown = tokio::spawn(async move {
            stopper
                .shutdown(ShutdownRequest {
                    signal: "SIGTERM".into(),
                    grace_period: Duration::from_secs(30).as_nanos() as i64,
                })
                .await
        });
        // The executor signalled the task and now waits out the grace period.
        until("the task got SIGTERM", Duration::from_secs(10), || {
            file_text(&stdout).contains("got TERM").then_some(())
        })
        .await;
        signal(client.pid(), Signal::SIGKILL);
        let t0 = Instant::now();
        let answer = within("Shutdown fails", Duration::from_secs(10), shutdown)
            .await
            .unwrap();
        let took = t0.elapsed();
        client.kill().await;
        drop((exec, client));
        let task_survived = alive(pid);
        signal(pid as u32, Signal::SIGKILL);
        let left = tag.left_after(Duration::from_secs(3)).await;
        let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
        report(
            "SIGKILL executor during Shutdown",
            format!(
                "killed in the 30 s grace after SIGTERM; Shutdown -> {:?} {took:?} after the kill; task pid {pid} (traps TERM) survived: {task_survived} (killed by the test); left: {}; host {before} -> {after}",
                answer.map(|_| ()).map_err(|s| s.code()),
                listing(&left)
            ),
        );
        assert!(took < Duration::from_secs(5));
        assert!(left.is_empty());
        assert_flat("host", std::process::id(), before, after);
    });
}

fn logmon_cmd(tag: &Tag) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("logmon");
    tag.apply(&mut cmd);
    cmd
}

async fn start_logmon(tag: &Tag, stderr: &Buf) -> Client {
    Client::builder(logmon_cmd(tag), nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .stdin(Stdio::null())
        .stderr(stderr.clone())
        .start()
        .await
        .expect("logmon starts")
}

fn logmon_request(dir: &Path, max_files: u32, size_mb: u32) -> StartRequest {
    StartRequest {
        log_dir: dir.display().to_string(),
        stdout_file_name: "web.stdout".into(),
        stderr_file_name: "web.stderr".into(),
        max_files,
        max_file_size_mb: size_mb,
        stdout_fifo: dir.join(".web.stdout.fifo").display().to_string(),
        stderr_fifo: dir.join(".web.stderr.fifo").display().to_string(),
    }
}

#[test]
fn sigkill_logmon_during_handshake() {
    host_row(async {
        let tag = Tag::new("logmon-handshake");
        let mut cmd = stopped_before_exec(BIN, &["logmon"]);
        tag.apply(&mut cmd);
        sigkill_during_handshake(
            "SIGKILL logmon during handshake",
            &tag,
            cmd,
            nomad::handshake(),
        )
        .await;
    });
}

/// Stops the plugin, sends what `call` sends, waits until those bytes sit unread in its socket
/// (so the call is provably in flight) and SIGKILLs it; returns the call's outcome and how long
/// after the kill it came.
async fn sigkill_with_call_queued<T>(
    client: &Client,
    call: impl std::future::Future<Output = T>,
) -> (T, Duration) {
    // Answered: the server has accepted the connection (a connection still in the listen
    // backlog would hold the request where `ss` shows no owner).
    client.ping().await.unwrap();
    let pid = client.pid();
    signal(pid, Signal::SIGSTOP);
    until("stopped", Duration::from_secs(5), || {
        stopped(pid as i32).then_some(())
    })
    .await;
    let queued = queued_at(pid);
    let killer = async {
        until(
            "the request queued at the stopped server",
            Duration::from_secs(10),
            || {
                let q = queued_at(pid);
                (q > queued).then_some(())
            },
        )
        .await;
        signal(pid, Signal::SIGKILL);
        Instant::now()
    };
    let (out, killed_at) = tokio::join!(call, killer);
    (out, killed_at.elapsed())
}

#[test]
fn sigkill_logmon_mid_rpc() {
    host_row(async {
        let tag = Tag::new("logmon-rpc");
        let dir = tempfile::tempdir().unwrap();
        let before = Census::own();
        let client = start_logmon(&tag, &Buf::default()).await;
        let mut lm = LogMonClient::new(client.channel());
        let req = logmon_request(dir.path(), 2, 1);
        let (answer, took) = sigkill_with_call_queued(&client, lm.start(req.clone())).await;
        let exit = client.kill().await;
        drop((lm, client));
        let left = tag.left_after(Duration::from_secs(3)).await;
        let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
        let status = answer.expect_err("Start cannot succeed on a dead logmon");
        report(
            "SIGKILL logmon mid-RPC (Start)",
            format!(
                "Start queued at the stopped logmon -> {:?} \"{}\" {took:?} after the kill; kill() -> {}; fifo made: {}; left: {}; host {before} -> {after}",
                status.code(),
                status.message(),
                exit_text(exit),
                Path::new(&req.stdout_fifo).exists(),
                listing(&left)
            ),
        );
        assert!(took < Duration::from_secs(5));
        assert!(left.is_empty());
        assert_flat("host", std::process::id(), before, after);
    });
}

#[test]
fn sigkill_logmon_during_shutdown() {
    host_row(async {
        let tag = Tag::new("logmon-shutdown");
        let before = Census::own();
        let client = start_logmon(&tag, &Buf::default()).await;
        let (exit, took) = sigkill_with_call_queued(&client, client.kill()).await;
        drop(client);
        let left = tag.left_after(Duration::from_secs(3)).await;
        let after = Census::settle(std::process::id(), before, Duration::from_secs(3)).await;
        report(
            "SIGKILL logmon during Shutdown",
            format!(
                "Controller.Shutdown queued at the stopped logmon, then SIGKILL: kill() -> {} {took:?} after the kill; left: {}; host {before} -> {after}",
                exit_text(exit),
                listing(&left)
            ),
        );
        assert!(
            took < Duration::from_secs(2),
            "no kill grace wasted on a dead logmon"
        );
        assert!(left.is_empty());
        assert_flat("host", std::process::id(), before, after);
    });
}

// ---------------------------------------------------------------------------------------------
// Task output through logmon's FIFOs: a writer that knows which lines reached the pipe
// ---------------------------------------------------------------------------------------------

/// What a [`FifoWriter`] did: the lines the pipe took, the ones refused (EPIPE: no reader).
#[derive(Debug, Default)]
struct WriterLog {
    written: Vec<u64>,
    refused: Vec<u64>,
}

/// A task stand-in writing `line <i>\n` into a FIFO without blocking: a line is either taken
/// whole by the pipe (they are shorter than PIPE_BUF) or refused with EPIPE; a full pipe is
/// noted and waited out.
struct FifoWriter {
    stop: Arc<AtomicBool>,
    lines: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    full: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<WriterLog>>,
}

impl FifoWriter {
    /// Opens `fifo` (a reader must be there) and writes up to `max` lines, `pause` apart.
    fn start(fifo: &str, max: u64, pause: Duration) -> FifoWriter {
        use std::os::fd::AsFd;
        let file = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        let flags = nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let full = Arc::new(AtomicBool::new(false));
        let (s, l, r, f) = (stop.clone(), lines.clone(), refused.clone(), full.clone());
        let handle = std::thread::spawn(move || {
            let mut log = WriterLog::default();
            let mut file = file;
            let mut i = 0;
            while i < max && !s.load(Ordering::Relaxed) {
                let line = format!("line {i}\n");
                match file.write(line.as_bytes()) {
                    Ok(n) => {
                        assert_eq!(n, line.len(), "a short line is written whole");
                        log.written.push(i);
                        l.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        f.store(true, Ordering::Relaxed);
                        let mut fds = [nix::poll::PollFd::new(
                            file.as_fd(),
                            nix::poll::PollFlags::POLLOUT,
                        )];
                        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16));
                    }
                    Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {
                        log.refused.push(i);
                        r.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("writing the fifo: {e}"),
                }
            }
            log
        });
        FifoWriter {
            stop,
            lines,
            refused,
            full,
            handle: Some(handle),
        }
    }

    fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> WriterLog {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for FifoWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Compares the lines in the rotated files with what the writer got into the pipe.
struct Accounting {
    in_files: usize,
    lost: Vec<u64>,
    extra: usize,
    torn: usize,
    ordered: bool,
}

impl Accounting {
    fn of(dir: &Path, base: &str, log: &WriterLog) -> Accounting {
        let (text, _) = rotated(dir, base);
        let numbers = line_numbers(&text, "line ");
        let torn = numbers.iter().filter(|n| n.is_none()).count();
        let seen: Vec<u64> = numbers.into_iter().flatten().collect();
        let ordered = seen.windows(2).all(|w| w[0] < w[1]);
        let set: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
        let written: std::collections::BTreeSet<u64> = log.written.iter().copied().collect();
        Accounting {
            in_files: seen.len(),
            lost: written.difference(&set).copied().collect(),
            extra: set.difference(&written).count(),
            torn,
            ordered,
        }
    }

    fn ok(&self) -> bool {
        self.lost.is_empty() && self.extra == 0 && self.torn == 0 && self.ordered
    }
}

impl std::fmt::Display for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lost = match (self.lost.first(), self.lost.last()) {
            (Some(a), Some(b)) => format!("{} lost (lines {a}..={b})", self.lost.len()),
            _ => "0 lost".into(),
        };
        write!(
            f,
            "{} lines in the files, {lost}, {} unexpected, {} torn, in order: {}",
            self.in_files, self.extra, self.torn, self.ordered
        )
    }
}

/// Whether every `logmon-copier` thread of `pid` sits in poll(2) (x86_64 poll 7, ppoll 271):
/// nothing read from a FIFO is then waiting in its memory to be written.
fn copiers_idle(pid: u32) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let copiers: Vec<String> = rd
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "logmon-copier")
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("syscall")).ok())
        .collect();
    !copiers.is_empty()
        && copiers
            .iter()
            .all(|s| matches!(s.split_whitespace().next(), Some("7") | Some("271")))
}

/// logmon SIGKILLed while the task writes, between two copies (its copier threads in poll):
/// what the pipe holds survives in the kernel, the writer's lines meet EPIPE until a new logmon
/// (as Nomad's logmon hook starts one) opens the same FIFOs, and every line the pipe took is in
/// the files, in order.
#[tokio::test]
async fn sigkill_logmon_mid_stream() {
    let _s = shared().await;
    let tag = Tag::new("logmon-stream");
    let dir = tempfile::tempdir().unwrap();
    let req = logmon_request(dir.path(), 100, 1);
    let first = start_logmon(&tag, &Buf::default()).await;
    LogMonClient::new(first.channel())
        .start(req.clone())
        .await
        .unwrap();
    let writer = FifoWriter::start(&req.stdout_fifo, u64::MAX, Duration::from_micros(200));
    until("2000 lines written", Duration::from_secs(20), || {
        (writer.lines() >= 2000).then_some(())
    })
    .await;
    let pid = first.pid();
    let mut tries = 0;
    loop {
        tries += 1;
        signal(pid, Signal::SIGSTOP);
        until("stopped", Duration::from_secs(5), || {
            stopped(pid as i32).then_some(())
        })
        .await;
        if copiers_idle(pid) {
            break;
        }
        signal(pid, Signal::SIGCONT);
        assert!(tries < 1000, "logmon's copier never idle");
        tokio::task::yield_now().await;
    }
    signal(pid, Signal::SIGKILL);
    let at_kill = writer.lines();
    first.kill().await;
    until(
        "the writer meets EPIPE (no reader)",
        Duration::from_secs(10),
        || (writer.refused.load(Ordering::Relaxed) > 0).then_some(()),
    )
    .await;
    let second = start_logmon(&tag, &Buf::default()).await;
    LogMonClient::new(second.channel())
        .start(req.clone())
        .await
        .unwrap();
    let restarted = writer.lines();
    until("2000 more lines", Duration::from_secs(20), || {
        (writer.lines() >= restarted + 2000).then_some(())
    })
    .await;
    let log = writer.finish();
    LogMonClient::new(second.channel())
        .stop(StopRequest {})
        .await
        .unwrap();
    let acc = Accounting::of(dir.path(), "web.stdout", &log);
    second.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "SIGKILL logmon mid-stream (copier idle), new logmon on the same FIFOs",
        format!(
            "killed after {at_kill} lines (stopped {tries}x to catch the copiers in poll); {} lines refused with EPIPE while no logmon read; {} lines taken by the pipe in all; {acc}; left: {}",
            log.refused.len(),
            log.written.len(),
            listing(&left)
        ),
    );
    assert!(acc.ok(), "{acc}");
    assert!(left.is_empty());
}

/// logmon SIGKILLed while it holds bytes it already took from the FIFO (a full disk keeps them
/// in its memory, retrying every second): those bytes reached the FIFO and are lost with it.
#[tokio::test]
async fn sigkill_logmon_holding_output_on_a_full_disk() {
    let _s = shared().await;
    let tag = Tag::new("logmon-held");
    let fs = match Tmpfs::mount("size=64k") {
        Ok(fs) => fs,
        Err(e) => return eprintln!("skipping: no tmpfs: {e}"),
    };
    fs.fill();
    let dir = fs.path().join("logs");
    std::fs::create_dir(&dir).unwrap();
    let req = logmon_request(&dir, 100, 1);
    let err = Buf::default();
    let first = start_logmon(&tag, &err).await;
    LogMonClient::new(first.channel())
        .start(req.clone())
        .await
        .unwrap();
    let writer = FifoWriter::start(&req.stdout_fifo, 20_000, Duration::ZERO);
    until("the pipe is full", Duration::from_secs(10), || {
        writer.full.load(Ordering::Relaxed).then_some(())
    })
    .await;
    until(
        "logmon reports the full disk",
        Duration::from_secs(10),
        || err.text().contains("holding").then_some(()),
    )
    .await;
    let held = err
        .text()
        .split("holding ")
        .nth(1)
        .and_then(|t| t.split(' ').next().map(str::to_string))
        .unwrap_or_default();
    signal(first.pid(), Signal::SIGKILL);
    first.kill().await;
    fs.remount("remount,size=16m");
    let second = start_logmon(&tag, &Buf::default()).await;
    LogMonClient::new(second.channel())
        .start(req.clone())
        .await
        .unwrap();
    let log = writer.finish();
    LogMonClient::new(second.channel())
        .stop(StopRequest {})
        .await
        .unwrap();
    let acc = Accounting::of(&dir, "web.stdout", &log);
    second.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "SIGKILL logmon holding output (disk full)",
        format!(
            "logmon held {held} bytes it had read; SIGKILL, room again, a new logmon on the same FIFOs; {} lines taken by the pipe; {acc}; left: {}",
            log.written.len(),
            listing(&left)
        ),
    );
    assert!(acc.ok(), "{acc}");
    assert!(left.is_empty());
}

/// logmon SIGSTOPped while the task writes: the task's writes wait once the pipe is full (no
/// line lost, no error), and all of it lands once logmon runs again.
#[tokio::test]
async fn logmon_stopped_while_the_task_writes() {
    let _s = shared().await;
    let tag = Tag::new("logmon-stalled");
    let dir = tempfile::tempdir().unwrap();
    let req = logmon_request(dir.path(), 100, 1);
    let client = start_logmon(&tag, &Buf::default()).await;
    let mut lm = LogMonClient::new(client.channel());
    lm.start(req.clone()).await.unwrap();
    let before = Census::quiet(client.pid()).await;
    let writer = FifoWriter::start(&req.stdout_fifo, 300_000, Duration::ZERO);
    until("1000 lines", Duration::from_secs(10), || {
        (writer.lines() >= 1000).then_some(())
    })
    .await;
    signal(client.pid(), Signal::SIGSTOP);
    until("stopped", Duration::from_secs(5), || {
        stopped(client.pid() as i32).then_some(())
    })
    .await;
    writer.full.store(false, Ordering::Relaxed);
    until("the pipe is full", Duration::from_secs(10), || {
        writer.full.load(Ordering::Relaxed).then_some(())
    })
    .await;
    let at_stall = writer.lines();
    let t_stop = Instant::now();
    // Held while stopped: a full pipe, the writer waiting, not failing. There is no event for
    // "nothing happens"; half a second of it is the observation.
    until("still held after 500 ms", Duration::from_secs(5), || {
        (t_stop.elapsed() > Duration::from_millis(500)).then_some(())
    })
    .await;
    let while_stopped = writer.lines();
    signal(client.pid(), Signal::SIGCONT);
    let log = {
        let w = writer;
        until("all lines written", Duration::from_secs(60), || {
            (w.lines() >= 300_000).then_some(())
        })
        .await;
        w.finish()
    };
    let total = log.written.len() as u64;
    until("all lines in the files", Duration::from_secs(20), || {
        let (text, _) = rotated(dir.path(), "web.stdout");
        (text.iter().filter(|b| **b == b'\n').count() as u64 >= total).then_some(())
    })
    .await;
    let after = Census::settle(client.pid(), before, Duration::from_secs(3)).await;
    lm.stop(StopRequest {}).await.unwrap();
    let acc = Accounting::of(dir.path(), "web.stdout", &log);
    let (_, files) = rotated(dir.path(), "web.stdout");
    client.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "stalled reader: logmon SIGSTOPped while the task writes",
        format!(
            "pipe full after {at_stall} lines, writer held ({while_stopped} lines after 500 ms stopped, {} refused); after SIGCONT {} lines; {acc}; files {files:?}; logmon {before} -> {after}; left: {}",
            log.refused.len(),
            log.written.len(),
            listing(&left)
        ),
    );
    assert_eq!(
        while_stopped, at_stall,
        "nothing moves while logmon is stopped"
    );
    assert!(log.refused.is_empty());
    assert!(acc.ok(), "{acc}");
    assert_eq!(after, before, "logmon descriptors and threads");
    assert!(left.is_empty());
}

// ---------------------------------------------------------------------------------------------
// ENOSPC and EMFILE in logmon and the executor
// ---------------------------------------------------------------------------------------------

/// The first line of `text` containing `needle`, shortened, for a report.
fn line_with(text: &str, needle: &str) -> String {
    let mut line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or("")
        .to_string();
    line.truncate(240);
    line
}

/// A second host connecting while the plugin has no descriptor left: the connect lands in the
/// listen backlog and its first call waits until the plugin can accept. (A raw connection: a
/// dropped `Client` would keep its connection, see `a_dropped_reattached_client_...`.)
async fn new_connection_at_the_limit(client: &Client) -> String {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let cfg = client.reattach_config();
    let network = if cfg.network == "unix" {
        goplugin::handshake::Network::Unix
    } else {
        goplugin::handshake::Network::Tcp
    };
    let attempt = async {
        let conn = common::wire::dial(network, &cfg.addr)
            .await
            .map_err(|e| e.to_string())?;
        let channel = common::wire::grpc_channel(conn)
            .await
            .map_err(|e| e.to_string())?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "plugin".into(),
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Err(_) => "connected (listen backlog), its first call unanswered after 2 s".into(),
        Ok(Err(e)) => format!("error {e}"),
        Ok(Ok(())) => "answered".into(),
    }
}

#[tokio::test]
async fn enospc_in_logmon() {
    let _s = shared().await;
    let tag = Tag::new("logmon-enospc");
    let fs = match Tmpfs::mount("size=64k") {
        Ok(fs) => fs,
        Err(e) => return eprintln!("skipping: no tmpfs: {e}"),
    };
    let dir = fs.path().join("logs");
    std::fs::create_dir(&dir).unwrap();
    let req = logmon_request(&dir, 100, 1);
    let err = Buf::default();
    let client = start_logmon(&tag, &err).await;
    LogMonClient::new(client.channel())
        .start(req.clone())
        .await
        .unwrap();
    let before = Census::quiet(client.pid()).await;
    let filled = fs.fill();
    let writer = FifoWriter::start(&req.stdout_fifo, 40_000, Duration::ZERO);
    until(
        "logmon reports the full disk",
        Duration::from_secs(10),
        || err.text().contains("holding").then_some(()),
    )
    .await;
    until(
        "the task's writes wait on a full pipe",
        Duration::from_secs(10),
        || writer.full.load(Ordering::Relaxed).then_some(()),
    )
    .await;
    let held_at = writer.lines();
    fs.remount("remount,size=16m");
    let t0 = Instant::now();
    until("all lines written", Duration::from_secs(30), || {
        (writer.lines() >= 40_000).then_some(())
    })
    .await;
    let log = writer.finish();
    until("all lines in the files", Duration::from_secs(20), || {
        Accounting::of(&dir, "web.stdout", &log).ok().then_some(())
    })
    .await;
    let resumed = t0.elapsed();
    let after = Census::settle(client.pid(), before, Duration::from_secs(3)).await;
    LogMonClient::new(client.channel())
        .stop(StopRequest {})
        .await
        .unwrap();
    let acc = Accounting::of(&dir, "web.stdout", &log);
    client.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    let said = line_with(&err.text(), "holding");
    report(
        "ENOSPC in logmon",
        format!(
            "disk filled with {filled} bytes; logmon said {said:?}; the task's writes waited at line {held_at} ({} refused); room again: all in the files {resumed:?} later; {acc}; logmon {before} -> {after}; left: {}",
            log.refused.len(),
            listing(&left)
        ),
    );
    assert!(said.contains("No space left on device"), "{said}");
    assert!(log.refused.is_empty() && acc.ok(), "{acc}");
    assert_eq!(after, before, "logmon descriptors and threads");
    assert!(left.is_empty());
}

#[tokio::test]
async fn emfile_in_logmon() {
    let _s = shared().await;
    let tag = Tag::new("logmon-emfile");
    let dir = tempfile::tempdir().unwrap();
    let req = logmon_request(dir.path(), 100, 1);
    let err = Buf::default();
    let client = start_logmon(&tag, &err).await;
    let mut lm = LogMonClient::new(client.channel());
    lm.start(req.clone()).await.unwrap();
    let before = Census::quiet(client.pid()).await;
    // Every new descriptor fails from here: the next rotation cannot open its file.
    set_nofile(client.pid(), 3);
    let writer = FifoWriter::start(&req.stdout_fifo, 300_000, Duration::ZERO);
    until("logmon reports EMFILE", Duration::from_secs(20), || {
        err.text().contains("Too many open files").then_some(())
    })
    .await;
    until(
        "the task's writes wait on a full pipe",
        Duration::from_secs(10),
        || writer.full.load(Ordering::Relaxed).then_some(()),
    )
    .await;
    let held_at = writer.lines();
    // Held across two of the copier's one-second retries (its cadence, not an event).
    let t_hold = Instant::now();
    until("held 2.5 s", Duration::from_secs(10), || {
        (t_hold.elapsed() > Duration::from_millis(2500)).then_some(())
    })
    .await;
    let serving = client.ping().await.is_ok();
    let reattach_text = new_connection_at_the_limit(&client).await;
    set_nofile(client.pid(), hard_nofile());
    until("all lines written", Duration::from_secs(60), || {
        (writer.lines() >= 300_000).then_some(())
    })
    .await;
    let log = writer.finish();
    until("all lines in the files", Duration::from_secs(20), || {
        Accounting::of(dir.path(), "web.stdout", &log)
            .ok()
            .then_some(())
    })
    .await;
    let after = Census::settle(client.pid(), before, Duration::from_secs(12)).await;
    let acc = Accounting::of(dir.path(), "web.stdout", &log);
    let (_, indices) = rotated(dir.path(), "web.stdout");
    lm.stop(StopRequest {}).await.unwrap();
    client.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    let said = line_with(&err.text(), "Too many open files");
    let accept_warnings = err.text().matches("accepting on").count();
    report(
        "EMFILE in logmon (RLIMIT_NOFILE 3 at run time)",
        format!(
            "logmon said {said:?}; the task's writes waited at line {held_at}; ping on the open connection: {serving}; a new connection: {reattach_text} ({accept_warnings} accept warnings logged); limit back: {acc}; file indices {indices:?}; logmon {before} -> {after}; left: {}",
            listing(&left)
        ),
    );
    assert!(serving);
    // One line per 10 s of failing accepts, not one per retry (it was one every 50 ms).
    assert!(accept_warnings <= 2, "{accept_warnings} accept warnings");
    assert!(log.refused.is_empty() && acc.ok(), "{acc}");
    assert_flat("logmon", client.pid(), before, after);
    assert!(left.is_empty());
}

#[tokio::test]
async fn enospc_in_the_executor() {
    let _s = shared().await;
    let tag = Tag::new("executor-enospc");
    // No inode left for its LogFile: a clear error at start, nothing left running.
    let fs = match Tmpfs::mount("size=64k,nr_inodes=32") {
        Ok(fs) => fs,
        Err(e) => return eprintln!("skipping: no tmpfs: {e}"),
    };
    let inodes = fs.fill_inodes();
    let err = Buf::default();
    let refused = Client::builder(executor_cmd(&tag, fs.path()), nomad::handshake())
        .stdin(Stdio::null())
        .stderr(err.clone())
        .start()
        .await
        .expect_err("no room for the LogFile");
    let refused_left = tag.left_after(Duration::from_secs(3)).await;
    drop(fs);
    // Room for files but none for data: the executor serves on, the task meets ENOSPC itself.
    let fs = Tmpfs::mount("size=64k").unwrap();
    let dir = fs.path();
    let req = task(dir, &tag, "echo hello");
    let client = start_executor(&tag, dir).await;
    let filled = fs.fill();
    let mut exec = ExecutorClient::new(client.channel());
    // Answered: the connection is accepted and counted in the baseline.
    exec.version(VersionRequest {}).await.unwrap();
    let before = Census::quiet(client.pid()).await;
    launch(&mut exec, req).await;
    let state = exec
        .wait(WaitRequest {})
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    let version = exec
        .version(VersionRequest {})
        .await
        .map(|v| v.into_inner().version);
    // tokio keeps an idle blocking thread (the Launch's opens) for 10 s.
    let after = Census::settle(client.pid(), before, Duration::from_secs(12)).await;
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    let exit = client.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "ENOSPC in the executor",
        format!(
            "LogFile on a file system without inodes ({inodes} made to fill it): start() -> \"{refused}\", stderr {:?}, left: {}; LogFile and task output on a full disk ({filled} bytes filler): Launch ok, task exit {} (its echo met ENOSPC), Version -> {version:?}, executor {before} -> {after}, kill -> {}; left: {}",
            line_with(&err.text(), "LogFile"),
            listing(&refused_left),
            state.exit_code,
            exit_text(exit),
            listing(&left)
        ),
    );
    assert!(
        err.text().contains("No space left on device"),
        "{}",
        err.text()
    );
    assert!(matches!(refused, ClientError::ExitedBeforeConnect { .. }));
    assert!(refused_left.is_empty() && left.is_empty());
    assert_eq!(version.ok().as_deref(), Some("2.0.0"));
    assert_ne!(
        state.exit_code, 0,
        "the task's failed write is its exit status"
    );
    assert_flat("executor", client.pid(), before, after);
}

#[tokio::test]
async fn emfile_in_the_executor() {
    let _s = shared().await;
    let tag = Tag::new("executor-emfile");
    let dir = tempfile::tempdir().unwrap();
    let client = start_executor(&tag, dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    exec.version(VersionRequest {}).await.unwrap();
    let before = Census::quiet(client.pid()).await;
    set_nofile(client.pid(), 3);
    let refused = exec
        .launch(task(dir.path(), &tag, "echo launched"))
        .await
        .expect_err("no descriptor for the task's output");
    let version = exec
        .version(VersionRequest {})
        .await
        .map(|v| v.into_inner().version);
    let reattach_text = new_connection_at_the_limit(&client).await;
    let during = Census::of(client.pid()).unwrap();
    set_nofile(client.pid(), hard_nofile());
    // tokio keeps an idle blocking thread (the Launch's open) for 10 s.
    let after = Census::settle(client.pid(), before, Duration::from_secs(12)).await;
    let after_fds = fd_targets(client.pid());
    let req = task(dir.path(), &tag, "echo launched");
    let stdout = req.stdout_path.clone();
    launch(&mut exec, req).await;
    let state = exec
        .wait(WaitRequest {})
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    client.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    let log = file_text(dir.path().join("executor.out"));
    report(
        "EMFILE in the executor (RLIMIT_NOFILE 3 at run time)",
        format!(
            "Launch -> {:?} \"{}\"; Version on the open connection -> {version:?}; a new connection: {reattach_text} ({} accept warnings in executor.out); executor {before} before, {during} at the limit, {after} after; limit back: Launch ok, task exit {}, output {:?}; left: {}",
            refused.code(),
            refused.message(),
            log.matches("accepting on").count(),
            state.exit_code,
            file_text(&stdout),
            listing(&left)
        ),
    );
    assert!(
        refused.message().contains("Too many open files"),
        "{refused}"
    );
    assert_eq!(version.ok().as_deref(), Some("2.0.0"));
    assert_eq!(
        after, before,
        "executor descriptors and threads: {after_fds:?}"
    );
    assert_eq!(state.exit_code, 0);
    assert!(left.is_empty());
}

// ---------------------------------------------------------------------------------------------
// `goplugin run` (the agent: host of its logmon and executor)
// ---------------------------------------------------------------------------------------------

/// A `goplugin run` the test started, tagged (its task too, through `--env`), output captured.
struct Agent {
    child: std::process::Child,
    out: Buf,
    err: Buf,
}

fn pump(mut from: impl Read + Send + 'static, to: &Buf) {
    let mut sink = to.clone();
    std::thread::spawn(move || std::io::copy(&mut from, &mut sink));
}

impl Agent {
    fn start(tag: &Tag, base: &Path, name: &str, extra: &[&str], command: &[&str]) -> Agent {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--dir"])
            .arg(base)
            .args(["--name", name, "--env", &tag.env()])
            .args(extra)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tag.apply(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let (out, err) = (Buf::default(), Buf::default());
        pump(child.stdout.take().unwrap(), &out);
        pump(child.stderr.take().unwrap(), &err);
        Agent { child, out, err }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit code (128 + signal when killed), if it exits within `limit`.
    async fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
            }
            if t0.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn sigkill(&mut self) {
        signal(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `goplugin SUB --dir BASE ARGS...`, to its end (bounded).
fn agent_command(base: &Path, sub: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg(sub)
        .arg("--dir")
        .arg(base)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = (Buf::default(), Buf::default());
    pump(child.stdout.take().unwrap(), &out);
    pump(child.stderr.take().unwrap(), &err);
    let t0 = Instant::now();
    let code = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(20));
    (
        code,
        format!("{}{}", out.text(), err.text()).trim().to_string(),
    )
}

/// The agent's helpers and task as `/proc` shows them now.
fn agent_parts(tag: &Tag) -> (Option<Proc>, Option<Proc>, Vec<Proc>) {
    let live = tag.live();
    let logmon = live.iter().find(|p| p.cmd.ends_with(" logmon")).cloned();
    let executor = live.iter().find(|p| p.cmd.contains(" executor {")).cloned();
    let rest = live
        .into_iter()
        .filter(|p| {
            !p.cmd.ends_with(" logmon")
                && !p.cmd.contains(" executor {")
                && !p.cmd.contains(" run --dir")
        })
        .collect();
    (logmon, executor, rest)
}

async fn log_contains(path: &Path, needle: &str) {
    until(
        &format!("{} holds {needle:?}", path.display()),
        Duration::from_secs(20),
        || file_text(path).contains(needle).then_some(()),
    )
    .await;
}

/// The agent dies at some stage; nothing it started may outlive it unseen: without `--detach`
/// there is no state file, so nothing could ever find or stop what is left.
async fn sigkill_agent_at(
    row: &str,
    stage: &str,
    extra: &[&str],
    command: &[&str],
    at: impl AsyncFnOnce(&Tag, &Path) -> String,
) {
    let _s = shared().await;
    let tag = Tag::new("agent");
    let cgroups = ExecutorCgroups::default();
    let base = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&tag, base.path(), "t", extra, command);
    let observed = at(&tag, base.path()).await;
    let (logmon, executor, _) = agent_parts(&tag);
    if let Some(e) = &executor {
        cgroups.track(e.pid as u32);
    }
    agent.sigkill();
    let left = tag.left_after(Duration::from_secs(5)).await;
    for p in &left {
        cgroups.track(p.pid as u32);
    }
    let state = base.path().join("t/state.json").exists();
    // A task printing `line N`: what logmon wrote is whole, in order, without a gap.
    let (text, _) = rotated(&base.path().join("t/logs"), "t.stdout");
    let numbers = line_numbers(&text, "line ");
    let whole = numbers
        .iter()
        .enumerate()
        .all(|(i, n)| *n == Some(i as u64));
    report(
        row,
        format!(
            "{stage}: {observed}; logmon pid {:?}, executor pid {:?}; `goplugin run` SIGKILLed; state file: {state}; left after 5 s: {}; {} lines in the files, whole and contiguous: {whole}; last said: {:?}",
            logmon.map(|p| p.pid),
            executor.map(|p| p.pid),
            listing(&left),
            numbers.len(),
            agent.err.text().lines().last().unwrap_or("")
        ),
    );
    assert!(left.is_empty(), "orphaned: {}", listing(&left));
    assert!(
        !text.starts_with(b"line ") || whole,
        "what logmon wrote is whole"
    );
}

#[tokio::test]
async fn sigkill_agent_during_handshake() {
    let scripts = tempfile::tempdir().unwrap();
    let held = stop_first_script(scripts.path(), "executor-held");
    let held = held.to_str().unwrap().to_string();
    sigkill_agent_at(
        "SIGKILL goplugin run during handshake (of its executor)",
        "executor held before its handshake (logmon started)",
        &["--executor-bin", &held],
        &["sh", "-c", "echo never"],
        async |tag, _| {
            let pid = stopped_one(tag).await;
            format!("executor wrapper pid {pid} stopped before its exec")
        },
    )
    .await;
}

#[tokio::test]
async fn sigkill_agent_mid_rpc() {
    sigkill_agent_at(
        "SIGKILL goplugin run mid-RPC (Wait)",
        "task running, the agent in Wait",
        &[],
        &["sh", "-c", "echo ready; exec sleep 1000"],
        async |_, base| {
            log_contains(&base.join("t/logs/t.stdout.0"), "ready").await;
            "task printed ready".into()
        },
    )
    .await;
}

/// The agent dies while its task streams lines: once its watcher has stopped everything, what
/// logmon wrote is whole and without a gap (its Stop drained the FIFO before it ended).
#[tokio::test]
async fn sigkill_agent_mid_stream() {
    sigkill_agent_at(
        "SIGKILL goplugin run mid-stream",
        "task streaming output the agent prints",
        &["--max-file-size", "1"],
        &[
            "sh",
            "-c",
            "i=0; while :; do echo line $i; i=$((i+1)); done",
        ],
        async |_, base| {
            log_contains(&base.join("t/logs/t.stdout.1"), "line").await;
            "task output past its first 1 MiB file".into()
        },
    )
    .await;
}

#[tokio::test]
async fn sigkill_agent_during_shutdown() {
    let _s = shared().await;
    let tag = Tag::new("agent-shutdown");
    let cgroups = ExecutorCgroups::default();
    let base = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(
        &tag,
        base.path(),
        "t",
        &["--kill-timeout", "30s"],
        &[
            "sh",
            "-c",
            "trap 'echo got INT' INT; echo ready; while :; do sleep 0.05; done",
        ],
    );
    let log = base.path().join("t/logs/t.stdout.0");
    log_contains(&log, "ready").await;
    signal(agent.pid(), Signal::SIGINT);
    log_contains(&log, "got INT").await;
    let (logmon, executor, _) = agent_parts(&tag);
    if let Some(e) = &executor {
        cgroups.track(e.pid as u32);
    }
    agent.sigkill();
    let left = tag.left_after(Duration::from_secs(5)).await;
    report(
        "SIGKILL goplugin run during Shutdown",
        format!(
            "Ctrl-C given, the executor's Shutdown in its 30 s grace (the task traps INT); logmon pid {:?}, executor pid {:?}; `goplugin run` SIGKILLed; left after 5 s: {}",
            logmon.map(|p| p.pid),
            executor.map(|p| p.pid),
            listing(&left)
        ),
    );
    assert!(left.is_empty(), "orphaned: {}", listing(&left));
}

#[tokio::test]
async fn sigkill_executor_under_the_agent() {
    let _s = shared().await;
    let tag = Tag::new("agent-executor");
    let cgroups = ExecutorCgroups::default();
    let base = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(
        &tag,
        base.path(),
        "t",
        &[],
        &["sh", "-c", "echo ready; exec sleep 1000"],
    );
    log_contains(&base.path().join("t/logs/t.stdout.0"), "ready").await;
    let (_, executor, _) = agent_parts(&tag);
    let executor = executor.expect("the executor runs");
    cgroups.track(executor.pid as u32);
    signal(executor.pid as u32, Signal::SIGKILL);
    let code = agent.exit_within(Duration::from_secs(20)).await;
    let left = tag.left_after(Duration::from_secs(5)).await;
    let said = agent.err.text();
    report(
        "SIGKILL executor under goplugin run",
        format!(
            "executor pid {} SIGKILLed while the agent waits; the agent exits {code:?} saying {:?}; left after 5 s: {}",
            executor.pid,
            said.lines().last().unwrap_or(""),
            listing(&left)
        ),
    );
    assert!(code.is_some_and(|c| c != 0), "a non-zero exit");
    assert!(left.is_empty(), "orphaned: {}", listing(&left));
}

#[tokio::test]
async fn sigkill_executor_of_a_detached_task_then_stop() {
    let _s = shared().await;
    let tag = Tag::new("agent-detached-executor");
    let cgroups = ExecutorCgroups::default();
    let base = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&tag, base.path(), "t", &["--detach"], &["sleep", "1000"]);
    let code = agent.exit_within(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{}", agent.err.text());
    let state: serde_json::Value =
        serde_json::from_str(&file_text(base.path().join("t/state.json"))).unwrap();
    let executor = state["executor"]["Pid"].as_u64().unwrap() as u32;
    let task_pid = state["pid"].as_i64().unwrap() as i32;
    cgroups.track(executor);
    signal(executor, Signal::SIGKILL);
    until("executor gone", Duration::from_secs(5), || {
        (!alive(executor as i32)).then_some(())
    })
    .await;
    let (stop_code, said) = agent_command(base.path(), "stop", &["t"]);
    let left = tag.left_after(Duration::from_secs(5)).await;
    report(
        "SIGKILL executor of a detached task, then goplugin stop",
        format!(
            "stop exits {stop_code:?} saying {said:?}; task pid {task_pid} alive: {}; state file left: {}; left after 5 s: {}",
            alive(task_pid),
            base.path().join("t/state.json").exists(),
            listing(&left)
        ),
    );
    assert!(left.is_empty(), "orphaned: {}", listing(&left));
}

/// logmon dies under an attached run while the task writes: the task's next write has no reader
/// (EPIPE, SIGPIPE for a shell), which Nomad's tasks meet as well; the agent must still end
/// cleanly, with the task's exit reported and nothing left.
#[tokio::test]
async fn sigkill_logmon_under_the_agent() {
    let _s = shared().await;
    let tag = Tag::new("agent-logmon");
    let cgroups = ExecutorCgroups::default();
    let base = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(
        &tag,
        base.path(),
        "t",
        &[],
        &[
            "sh",
            "-c",
            "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.01; done",
        ],
    );
    log_contains(&base.path().join("t/logs/t.stdout.0"), "line 10\n").await;
    let (logmon, executor, _) = agent_parts(&tag);
    let logmon = logmon.expect("logmon runs");
    if let Some(e) = &executor {
        cgroups.track(e.pid as u32);
    }
    signal(logmon.pid as u32, Signal::SIGKILL);
    let code = agent.exit_within(Duration::from_secs(20)).await;
    let left = tag.left_after(Duration::from_secs(5)).await;
    let said = agent.err.text();
    let (text, _) = rotated(&base.path().join("t/logs"), "t.stdout");
    let numbers = line_numbers(&text, "line ");
    let contiguous = numbers
        .iter()
        .enumerate()
        .all(|(i, n)| *n == Some(i as u64));
    report(
        "SIGKILL logmon under goplugin run (mid-stream)",
        format!(
            "logmon pid {} SIGKILLed; the agent exits {code:?}, last line {:?}; {} lines in the files, contiguous from 0: {contiguous}; printed {} bytes; left after 5 s: {}",
            logmon.pid,
            said.lines().last().unwrap_or(""),
            numbers.len(),
            agent.out.text().len(),
            listing(&left)
        ),
    );
    assert!(code.is_some(), "the agent ends");
    assert!(contiguous, "what logmon wrote is whole");
    assert!(left.is_empty(), "orphaned: {}", listing(&left));
}

#[tokio::test]
async fn enospc_in_the_agent_detached() {
    let _s = shared().await;
    let tag = Tag::new("agent-enospc");
    let cgroups = ExecutorCgroups::default();
    let fs = match Tmpfs::mount("size=64k,mode=700") {
        Ok(fs) => fs,
        Err(e) => return eprintln!("skipping: no tmpfs: {e}"),
    };
    fs.fill();
    let mut agent = Agent::start(&tag, fs.path(), "t", &["--detach"], &["sleep", "1000"]);
    let code = agent.exit_within(Duration::from_secs(20)).await;
    let (_, executor, _) = agent_parts(&tag);
    if let Some(e) = &executor {
        cgroups.track(e.pid as u32);
    }
    let left = tag.left_after(Duration::from_secs(5)).await;
    let state = std::fs::metadata(fs.path().join("t/state.json")).map(|m| m.len());
    let (status_code, status) = agent_command(fs.path(), "status", &["t"]);
    report(
        "ENOSPC in the host (goplugin run --detach on a full disk)",
        format!(
            "run exits {code:?} saying {:?}; state.json {state:?}; `goplugin status` exits {status_code:?}: {status:?}; left after 5 s: {}",
            agent.err.text().lines().last().unwrap_or(""),
            listing(&left)
        ),
    );
    assert!(code.is_some_and(|c| c != 0));
    assert!(agent.err.text().contains("No space left on device"));
    assert!(left.is_empty(), "orphaned: {}", listing(&left));
    assert!(state.is_err(), "no half-written state file");
    tag.kill_all();
    drop(cgroups);
}

/// An attached run on a full disk: logmon cannot write the task's output, holds it, and its Stop
/// gives the held bytes up; the user must hear that the output was not kept.
#[tokio::test]
async fn enospc_in_the_agent_attached() {
    let _s = shared().await;
    let tag = Tag::new("agent-enospc-attached");
    let cgroups = ExecutorCgroups::default();
    let fs = match Tmpfs::mount("size=64k,mode=700") {
        Ok(fs) => fs,
        Err(e) => return eprintln!("skipping: no tmpfs: {e}"),
    };
    fs.fill();
    let mut agent = Agent::start(
        &tag,
        fs.path(),
        "t",
        &[],
        &["sh", "-c", "echo the task output; exit 3"],
    );
    let code = agent.exit_within(Duration::from_secs(30)).await;
    let left = tag.left_after(Duration::from_secs(5)).await;
    for p in &left {
        cgroups.track(p.pid as u32);
    }
    let said = agent.err.text();
    report(
        "ENOSPC in the host (goplugin run attached, full disk)",
        format!(
            "run exits {code:?}; printed {:?}; said {:?}; left: {}",
            agent.out.text(),
            said,
            listing(&left)
        ),
    );
    assert_eq!(code, Some(3));
    assert!(left.is_empty());
    assert!(
        agent.out.text().contains("the task output") || said.contains("No space left"),
        "either the output or a clear error"
    );
}

// ---------------------------------------------------------------------------------------------
// A host that does not read GRPCStdio
// ---------------------------------------------------------------------------------------------

/// The grpctest plugin under a raw host (this test: no stdio stream opened for it), tagged.
fn raw_plugin(tag: &Tag) -> common::Plugin {
    let sockets = tag.socket_dir().unwrap().display().to_string();
    common::start(
        &[],
        &[(TAG_KEY, tag.value()), ("PLUGIN_UNIX_SOCKET_DIR", &sockets)],
    )
}

/// `PrintStdio` calls of 64 KiB of numbered lines each, one after the other; counts the ones done.
fn print_stdio_calls(
    channel: tonic::transport::Channel,
    calls: u64,
) -> (Arc<AtomicU64>, Vec<u8>, tokio::task::JoinHandle<()>) {
    let chunk_lines = 64 * 1024 / 12;
    let chunks: Vec<Vec<u8>> = (0..calls)
        .map(|c| numbered("out", c * chunk_lines..(c + 1) * chunk_lines))
        .collect();
    let all = chunks.concat();
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let task = tokio::spawn(async move {
        let mut test = TestClient::new(channel);
        for chunk in chunks {
            let printed = test
                .print_stdio(PrintStdioRequest {
                    stdout: chunk,
                    stderr: vec![],
                })
                .await;
            if printed.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (done, all, task)
}

/// The host opened `StreamStdio` and stopped reading: the plugin's stdout fills up and its
/// writers wait (backpressure, nothing dropped), its other RPCs are still answered, and once the
/// host reads again every byte arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stdio_reader_then_resumed() {
    let _s = shared().await;
    let tag = Tag::new("stdio-stall");
    let p = raw_plugin(&tag);
    let pid = p.child.id();
    let channel = p.channel(None).await;
    let mut stdio = GrpcStdioClient::new(channel.clone())
        .stream_stdio(())
        .await
        .unwrap()
        .into_inner();
    double(channel.clone(), 1).await.unwrap();
    let before = Census::quiet(pid).await;
    let (done, expected, calls) = print_stdio_calls(channel.clone(), 64);
    until(
        "the plugin's stdout writer blocks on a full pipe",
        Duration::from_secs(20),
        || blocked_in_pipe_write(pid).then_some(()),
    )
    .await;
    let stalled_at = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), double(channel.clone(), 21)).await;
    let answered_in = t0.elapsed();
    let mut got = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while got.len() < expected.len() {
            match stdio.message().await {
                Ok(Some(m)) => got.extend(m.data),
                other => return format!("stream ended: {other:?}"),
            }
        }
        "all read".to_string()
    })
    .await
    .unwrap_or_else(|_| "timed out".into());
    let finished = tokio::time::timeout(Duration::from_secs(10), calls)
        .await
        .is_ok();
    let after = Census::settle(pid, before, Duration::from_secs(12)).await;
    report(
        "stalled reader: host not reading GRPCStdio, then reading again",
        format!(
            "the plugin's writer blocked after {stalled_at} of 64 PrintStdio calls (64 KiB each); Double meanwhile -> {:?} in {answered_in:?}; reading again: {drained}, {} of {} bytes, a clean prefix: {}, identical: {}, PrintStdio calls done {} (all finished: {finished}); plugin threads {:?}; plugin {before} -> {after}",
            answer.as_ref().map(|r| r.as_ref().map_err(|s| s.code())),
            got.len(),
            expected.len(),
            expected.starts_with(&got),
            got == expected,
            done.load(Ordering::Relaxed),
            thread_names(pid)
        ),
    );
    assert_eq!(
        answer.ok().and_then(Result::ok),
        Some(42),
        "other RPCs answered meanwhile"
    );
    assert!(got == expected, "every byte, in order");
    assert_flat("plugin", pid, before, after);
}

/// Shutdown while the host has stopped reading GRPCStdio: the plugin must still exit (Go's
/// does: its main returns whatever goroutines are blocked), not wait for a reader forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stdio_reader_then_shutdown() {
    let _s = shared().await;
    let tag = Tag::new("stdio-stall-shutdown");
    let mut p = raw_plugin(&tag);
    let pid = p.child.id();
    let channel = p.channel(None).await;
    let _stdio = GrpcStdioClient::new(channel.clone())
        .stream_stdio(())
        .await
        .unwrap()
        .into_inner();
    let (_, _, _calls) = print_stdio_calls(channel.clone(), 64);
    until(
        "the plugin's stdout writer blocks on a full pipe",
        Duration::from_secs(20),
        || blocked_in_pipe_write(pid).then_some(()),
    )
    .await;
    let answered = tokio::time::timeout(
        Duration::from_secs(3),
        GrpcControllerClient::new(channel.clone()).shutdown(goplugin::proto::plugin::Empty {}),
    )
    .await;
    let t0 = Instant::now();
    let exit = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    report(
        "stalled reader: host not reading GRPCStdio, then Shutdown",
        format!(
            "Shutdown -> {:?}; plugin exit within 10 s: {exit:?} ({:?}); threads then {:?}",
            answered.map(|r| r.map(|_| ()).map_err(|s| s.code())),
            t0.elapsed(),
            thread_names(pid)
        ),
    );
    assert!(exit.is_some(), "the plugin exits after Shutdown");
}

// ---------------------------------------------------------------------------------------------
// Socket files removed under live plugins
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn socket_file_removed_under_a_live_plugin() {
    let _s = shared().await;
    let tag = Tag::new("socket-removed");
    let sockets = tempfile::tempdir().unwrap();
    let client = Client::builder(plugin_cmd(&tag), test_handshake())
        .socket_dir(sockets.path())
        .start()
        .await
        .unwrap();
    let cfg = client.reattach_config();
    double(client.channel(), 1).await.unwrap();
    let before = Census::quiet(client.pid()).await;
    std::fs::remove_file(&cfg.addr).unwrap();
    let answer = double(client.channel(), 21).await;
    let after = Census::settle(client.pid(), before, Duration::from_secs(3)).await;
    let reattach = Client::reattach(&cfg)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let broker = tokio::time::timeout(
        Duration::from_secs(10),
        common::broker_round_trip(&client.broker(), client.channel()),
    )
    .await
    .is_ok();
    // The private socket directory itself gone: new broker listeners cannot be made.
    let dir = std::path::Path::new(&cfg.addr)
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    let id = client.broker().next_id();
    let accept = client
        .broker()
        .accept_and_serve(id, Routes::new(PingPongServer::new(common::Pong)))
        .await
        .map_err(|e| e.to_string());
    let still = double(client.channel(), 2).await;
    let exit = client.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "socket file removed under a live plugin",
        format!(
            "Double on the open connection -> {answer:?}; plugin {before} -> {after}; reattach -> {reattach:?}; broker round trip afterwards ok: {broker}; socket dir removed too: host broker accept -> {accept:?}, Double -> {still:?}; kill() -> {}; left: {}",
            exit_text(exit),
            listing(&left)
        ),
    );
    assert_eq!(answer.ok(), Some(42));
    assert!(reattach.is_err_and(|e| e.contains("No such file")));
    assert!(broker);
    assert!(
        accept.is_err_and(|e| e.contains(&dir.display().to_string()) || e.contains("No such file"))
    );
    assert!(
        matches!(exit, Exit::Status(s) if s.success()),
        "graceful exit"
    );
    assert_eq!(after, before);
    assert!(left.is_empty());
}

#[tokio::test]
async fn socket_files_removed_under_live_helpers() {
    let _s = shared().await;
    let tag = Tag::new("helper-sockets-removed");
    let dir = tempfile::tempdir().unwrap();
    let executor = start_executor(&tag, dir.path()).await;
    let logmon = start_logmon(&tag, &Buf::default()).await;
    let mut exec = ExecutorClient::new(executor.channel());
    let mut lm = LogMonClient::new(logmon.channel());
    exec.version(VersionRequest {}).await.unwrap();
    logmon.ping().await.unwrap();
    let before = (
        Census::quiet(executor.pid()).await,
        Census::quiet(logmon.pid()).await,
    );
    std::fs::remove_file(executor.reattach_config().addr).unwrap();
    std::fs::remove_file(logmon.reattach_config().addr).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let req = logmon_request(&logs, 2, 1);
    lm.start(req.clone()).await.unwrap();
    let mut launch_req = task(dir.path(), &tag, "echo through the fifo");
    launch_req.stdout_path = req.stdout_fifo.clone();
    launch_req.stderr_path = req.stderr_fifo.clone();
    launch(&mut exec, launch_req).await;
    let state = exec
        .wait(WaitRequest {})
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    lm.stop(StopRequest {}).await.unwrap();
    let out = file_text(logs.join("web.stdout.0"));
    let executor_exit = executor.kill().await;
    let logmon_exit = logmon.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "socket files removed under live executor and logmon",
        format!(
            "on the open connections: logmon Start ok, Launch ok, task exit {}, output {out:?}; executor/logmon {:?} before; kill() -> {} / {}; left: {}",
            state.exit_code,
            before,
            exit_text(executor_exit),
            exit_text(logmon_exit),
            listing(&left)
        ),
    );
    assert_eq!(out, "through the fifo\n");
    assert!(left.is_empty());
}

#[tokio::test]
async fn socket_files_removed_under_a_detached_task() {
    let _s = shared().await;
    let tag = Tag::new("agent-sockets-removed");
    let cgroups = ExecutorCgroups::default();
    let base = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&tag, base.path(), "t", &["--detach"], &["sleep", "1000"]);
    assert_eq!(agent.exit_within(Duration::from_secs(20)).await, Some(0));
    let state: serde_json::Value =
        serde_json::from_str(&file_text(base.path().join("t/state.json"))).unwrap();
    cgroups.track(state["executor"]["Pid"].as_u64().unwrap() as u32);
    for helper in ["executor", "logmon"] {
        std::fs::remove_file(state[helper]["Addr"].as_str().unwrap()).unwrap();
    }
    let (code, said) = agent_command(base.path(), "status", &["t"]);
    let kept = base.path().join("t/state.json").exists();
    let (stop_code, stop_said) = agent_command(base.path(), "stop", &["t"]);
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "socket files removed under a detached task (goplugin status, stop)",
        format!(
            "status exits {code:?}: {said:?}; state file kept: {kept}; stop exits {stop_code:?}: {stop_said:?}; left: {}",
            listing(&left)
        ),
    );
    assert!(
        kept,
        "status keeps the state of a task whose executor still runs"
    );
    assert_ne!(stop_code, Some(0), "stop says the executor did not answer");
    assert!(left.is_empty(), "stop kills the task from its state file");
}

// ---------------------------------------------------------------------------------------------
// A host that reattaches and drops the client (as `status`-like callers do: no kill)
// ---------------------------------------------------------------------------------------------

#[test]
fn dropped_reattached_clients_leave_nothing_behind() {
    host_row(async {
        let tag = Tag::new("reattach-drop");
        let client = start_plugin(&tag).await;
        let cfg = client.reattach_config();
        let reattach_once = || async {
            let again = Client::reattach(&cfg).await.unwrap();
            assert_eq!(double(again.channel(), 21).await.unwrap(), 42);
        };
        reattach_once().await;
        let host = Census::quiet(std::process::id()).await;
        let plugin = Census::quiet(client.pid()).await;
        for _ in 0..20 {
            reattach_once().await;
        }
        let host_after = Census::settle(std::process::id(), host, Duration::from_secs(3)).await;
        let plugin_after = Census::settle(client.pid(), plugin, Duration::from_secs(3)).await;
        client.kill().await;
        report(
            "host reattaches 20 times and drops the clients",
            format!("host {host} -> {host_after}; plugin {plugin} -> {plugin_after}"),
        );
        assert_eq!((host_after, plugin_after), (host, plugin));
    });
}

// ---------------------------------------------------------------------------------------------
// The task owns the logs directory: a FIFO where logmon's log file goes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_fifo_in_place_of_the_log_file() {
    let _s = shared().await;
    let tag = Tag::new("logmon-fifo-logfile");
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(
        &dir.path().join("web.stdout.0"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let client = start_logmon(&tag, &Buf::default()).await;
    let mut lm = LogMonClient::new(client.channel());
    let start = tokio::time::timeout(
        Duration::from_secs(3),
        lm.start(logmon_request(dir.path(), 2, 1)),
    )
    .await;
    let ping = tokio::time::timeout(Duration::from_secs(2), client.ping())
        .await
        .is_ok();
    let t0 = Instant::now();
    let exit = client.kill().await;
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "a FIFO in place of logmon's log file (the task writes the logs dir)",
        format!(
            "Start -> {}; ping afterwards answered: {ping}; kill() -> {} in {:?}; left: {}",
            match &start {
                Err(_) => "no answer in 3 s".to_string(),
                Ok(r) => format!(
                    "{:?}",
                    r.as_ref().map(|_| ()).map_err(|s| s.message().to_string())
                ),
            },
            exit_text(exit),
            t0.elapsed(),
            listing(&left)
        ),
    );
    assert!(
        start.is_ok_and(|r| r.is_ok()),
        "answered at once, the FIFO replaced by a log file (as a planted symlink is)"
    );
    assert!(std::fs::symlink_metadata(dir.path().join("web.stdout.0"))
        .unwrap()
        .is_file());
    assert!(ping);
}

/// The host's own ENOSPC: its private socket directory cannot be made on a file system without
/// a free inode. A clear error naming the directory, and no plugin started.
#[tokio::test]
async fn enospc_in_the_host_socket_dir() {
    let _s = shared().await;
    let tag = Tag::new("host-enospc");
    let fs = match Tmpfs::mount("size=64k,nr_inodes=16") {
        Ok(fs) => fs,
        Err(e) => return eprintln!("skipping: no tmpfs: {e}"),
    };
    let inodes = fs.fill_inodes();
    let err = Client::builder(plugin_cmd(&tag), test_handshake())
        .socket_dir(fs.path())
        .start()
        .await
        .expect_err("no inode for the socket directory");
    let left = tag.left_after(Duration::from_secs(3)).await;
    report(
        "ENOSPC in the host (Client socket_dir on a file system without inodes)",
        format!(
            "{inodes} files made to fill it; start() -> {err:?} \"{err}\"; left: {}",
            listing(&left)
        ),
    );
    assert!(matches!(err, ClientError::SocketDir { .. }), "{err}");
    assert!(err.to_string().contains("No space left on device"));
    assert!(left.is_empty());
}
