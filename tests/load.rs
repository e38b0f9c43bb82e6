//! Load (issue #13 item 3), bounded and without timed assertions: 1,000 concurrent unary calls
//! and 200 concurrent broker streams against one plugin, task start/stop cycles through
//! `goplugin run --detach` + `goplugin stop`, and logmon at full speed with its RSS, descriptors
//! and threads sampled. Each prints `LOAD | what | figure` lines (`-- --nocapture`).
//!
//! `cargo test` runs the short versions (25 cycles, 5 s of logmon); `GOPLUGIN_LOAD=1` runs the
//! full ones (500 cycles, 60 s); `GOPLUGIN_LOAD_CYCLES` and `GOPLUGIN_LOAD_LOGMON_SECS` set the
//! two sizes directly.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::example;
use common::faults::*;
use futures::future::join_all;
use goplugin::proto::counter::add_helper_server::{AddHelper, AddHelperServer};
use goplugin::proto::counter::counter_client::CounterClient;
use goplugin::proto::grpctest::ping_pong_client::PingPongClient;
use goplugin::proto::grpctest::ping_pong_server::PingPongServer;
use goplugin::proto::grpctest::test_client::TestClient;
use goplugin::proto::grpctest::{BidirectionalRequest, PingRequest, TestRequest};
use goplugin::proto::kv::kv_client::KvClient;
use goplugin::proto::logmon::log_mon_client::LogMonClient;
use goplugin::proto::logmon::{StartRequest, StopRequest};
use goplugin::{nomad, Client, HandshakeConfig};
use tonic::service::Routes;

fn full() -> bool {
    std::env::var("GOPLUGIN_LOAD").is_ok_and(|v| v == "1")
}

fn size(var: &str, short: u64, long: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full() { long } else { short })
}

/// p50, p99 and max of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    )
}

async fn timed<T, E: std::fmt::Debug>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Duration {
    let t0 = Instant::now();
    f.await.expect("call under load");
    t0.elapsed()
}

fn census_and_rss(pid: u32) -> String {
    format!(
        "{}, rss {} KiB",
        Census::of(pid).map(|c| c.to_string()).unwrap_or_default(),
        rss_kib(pid).unwrap_or(0)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_unary_calls() {
    let tag = Tag::new("load-unary");
    let mut cmd = Command::new(example("grpctest_plugin"));
    tag.apply(&mut cmd);
    let client = Client::builder(cmd, HandshakeConfig::new("TEST_MAGIC_COOKIE", "test"))
        .start()
        .await
        .unwrap();
    let pid = client.pid();
    let before = census_and_rss(pid);
    let t0 = Instant::now();
    let lat = join_all((0..1000).map(|i| {
        let mut test = TestClient::new(client.channel());
        timed(async move {
            let r = test.double(TestRequest { input: i }).await?;
            assert_eq!(r.get_ref().output, 2 * i);
            Ok::<_, tonic::Status>(())
        })
    }))
    .await;
    let wall = t0.elapsed();
    let peak = census_and_rss(pid);
    figure(
        "1000 concurrent Double calls (grpctest_plugin)",
        format!(
            "all ok in {wall:?}; per call {}; plugin before {before}, after {peak}",
            percentiles(lat)
        ),
    );
    client.kill().await;

    // It keeps each key in a file `kv_<key>` in its working directory.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("kv-plugin").current_dir(dir.path());
    tag.apply(&mut cmd);
    let kv = Client::builder(cmd, HandshakeConfig::new("BASIC_PLUGIN", "hello"))
        .start()
        .await
        .unwrap();
    let before = census_and_rss(kv.pid());
    let t0 = Instant::now();
    let puts = join_all((0..1000).map(|i| {
        let mut c = KvClient::new(kv.channel());
        timed(async move {
            c.put(goplugin::proto::kv::PutRequest {
                key: format!("k{i}"),
                value: format!("v{i}").into_bytes(),
            })
            .await
        })
    }))
    .await;
    let gets = join_all((0..1000).map(|i| {
        let mut c = KvClient::new(kv.channel());
        timed(async move {
            let r = c
                .get(goplugin::proto::kv::GetRequest {
                    key: format!("k{i}"),
                })
                .await?;
            // The example appends its signature to what it stores.
            assert!(r.get_ref().value.starts_with(format!("v{i}\n").as_bytes()));
            Ok::<_, tonic::Status>(())
        })
    }))
    .await;
    let wall = t0.elapsed();
    figure(
        "1000 concurrent Put, then 1000 concurrent Get (goplugin kv-plugin)",
        format!(
            "all ok in {wall:?}; Put {}; Get {}; plugin before {before}, after {}",
            percentiles(puts),
            percentiles(gets),
            census_and_rss(kv.pid())
        ),
    );
    kv.kill().await;
    assert!(tag.left_after(Duration::from_secs(3)).await.is_empty());
}

struct Adder;

#[tonic::async_trait]
impl AddHelper for Adder {
    async fn sum(
        &self,
        req: tonic::Request<goplugin::proto::counter::SumRequest>,
    ) -> Result<tonic::Response<goplugin::proto::counter::SumResponse>, tonic::Status> {
        let r = req.get_ref();
        Ok(tonic::Response::new(
            goplugin::proto::counter::SumResponse { r: r.a + r.b },
        ))
    }
}

/// `pid`'s unix sockets by state (`ss -xpn` / `-xlpn`): (listening, connected).
fn sockets_of(pid: u32) -> (usize, usize) {
    let count = |args: &[&str]| {
        let out = Command::new("ss").args(args).output().unwrap();
        let needle = format!("pid={pid},");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    };
    (count(&["-xlpn"]), count(&["-xpn"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_broker_streams() {
    let tag = Tag::new("load-broker");
    let sockets = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(example("grpctest_plugin"));
    tag.apply(&mut cmd);
    let client = Client::builder(cmd, HandshakeConfig::new("TEST_MAGIC_COOKIE", "test"))
        .socket_dir(sockets.path())
        .start()
        .await
        .unwrap();
    let pid = client.pid();
    let base = Census::quiet(pid).await;
    let before = census_and_rss(pid);
    let broker = client.broker();
    let t0 = Instant::now();
    // Each: the host serves PingPong on a new ID, the plugin dials it, pings, serves its own
    // PingPong on another ID; the host dials that one. All 200 at once, all kept open.
    let dialled = join_all((0..200).map(|_| {
        let broker = broker.clone();
        let main = client.channel();
        async move {
            let id = broker.next_id();
            broker
                .accept_and_serve(id, Routes::new(PingPongServer::new(common::Pong)))
                .await
                .unwrap();
            let theirs = TestClient::new(main)
                .bidirectional(BidirectionalRequest { id })
                .await
                .unwrap()
                .into_inner()
                .id;
            broker.dial(theirs).await.unwrap()
        }
    }))
    .await;
    let setup = t0.elapsed();
    let peak = census_and_rss(pid);
    let t1 = Instant::now();
    let pings = join_all(dialled.iter().map(|ch| {
        let mut pp = PingPongClient::new(ch.clone());
        timed(async move {
            let r = pp.ping(PingRequest {}).await?;
            assert_eq!(r.get_ref().msg, "pong");
            Ok::<_, tonic::Status>(())
        })
    }))
    .await;
    let pinged = t1.elapsed();
    drop(dialled);
    // What should stay: one listener per brokered server.
    let expected = Census {
        fds: base.fds + 200,
        threads: base.threads,
    };
    // Each Bidirectional starts a brokered server in the plugin, which go-plugin keeps until the
    // broker closes: count its listening sockets.
    let plugin_sockets = std::fs::read_dir(
        std::path::Path::new(&client.reattach_config().addr)
            .parent()
            .unwrap(),
    )
    .map(|r| r.count())
    .unwrap_or(0);
    let settled = Census::settle(pid, expected, Duration::from_secs(5)).await;
    let (listening, connected) = sockets_of(pid);
    let mut kinds = std::collections::BTreeMap::new();
    for t in fd_targets(pid) {
        let target = t.split_once(':').map(|x| x.1).unwrap_or("");
        let kind = target.split('[').next().unwrap_or("").to_string();
        *kinds.entry(kind).or_insert(0) += 1;
    }
    figure(
        "200 concurrent broker round trips (grpctest_plugin Bidirectional), 200 brokered channels open",
        format!(
            "set up in {setup:?}; 200 concurrent Pings over them in {pinged:?}, {}; plugin before {before}, with all open {peak}, after the host dropped them {settled} ({listening} listening and {connected} connected unix sockets, {plugin_sockets} socket files: the brokered servers go-plugin keeps until the broker closes; descriptors by kind {kinds:?})",
            percentiles(pings)
        ),
    );
    client.kill().await;

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(example("counter_plugin"));
    cmd.current_dir(dir.path());
    tag.apply(&mut cmd);
    let counter = Client::builder(cmd, HandshakeConfig::new("BASIC_PLUGIN", "hello"))
        .start()
        .await
        .unwrap();
    let before = census_and_rss(counter.pid());
    let broker = counter.broker();
    let t0 = Instant::now();
    let puts = join_all((0..200).map(|i| {
        let broker = broker.clone();
        let mut c = CounterClient::new(counter.channel());
        timed(async move {
            let id = broker.next_id();
            broker
                .accept_and_serve(id, Routes::new(AddHelperServer::new(Adder)))
                .await
                .unwrap();
            c.put(goplugin::proto::counter::PutRequest {
                add_server: id,
                key: format!("c{i}"),
                value: i,
            })
            .await
        })
    }))
    .await;
    let wall = t0.elapsed();
    let mut c = CounterClient::new(counter.channel());
    for i in 0..200 {
        let v = c
            .get(goplugin::proto::counter::GetRequest {
                key: format!("c{i}"),
            })
            .await
            .unwrap()
            .into_inner()
            .value;
        assert_eq!(v, i);
    }
    figure(
        "200 concurrent counter Puts, each calling back AddHelper through the broker (counter_plugin)",
        format!(
            "all ok in {wall:?}; per Put {}; plugin before {before}, after {}",
            percentiles(puts),
            census_and_rss(counter.pid())
        ),
    );
    counter.kill().await;
    assert!(tag.left_after(Duration::from_secs(3)).await.is_empty());
    assert_eq!(
        settled, expected,
        "the brokered connections close with the host's channels"
    );
}

/// `goplugin SUB --dir BASE ARGS...` with the tag in its environment (and the task's).
fn agent(tag: &Tag, base: &std::path::Path, sub: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg(sub).arg("--dir").arg(base).args(args);
    tag.apply(&mut cmd);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn goplugin_cgroups() -> usize {
    std::fs::read_dir("/sys/fs/cgroup/pids/goplugin")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn task_start_stop_cycles() {
    let cycles = size("GOPLUGIN_LOAD_CYCLES", 25, 500);
    let tag = Tag::new("load-cycles");
    let base = tempfile::tempdir().unwrap();
    let cgroups_before = goplugin_cgroups();
    let t0 = Instant::now();
    let mut worst_left = 0;
    let mut worst_cgroups = 0isize;
    for i in 0..cycles {
        let (code, err) = agent(
            &tag,
            base.path(),
            "run",
            &[
                "--name",
                "t",
                "--detach",
                "--env",
                &tag.env(),
                "--",
                "sleep",
                "1000",
            ],
        );
        assert_eq!(code, Some(0), "cycle {i} run: {err}");
        let (code, err) = agent(&tag, base.path(), "stop", &["t"]);
        assert!(code.is_some(), "cycle {i} stop: {err}");
        let left = tag.left_after(Duration::from_secs(5)).await;
        worst_left = worst_left.max(left.len());
        assert!(left.is_empty(), "cycle {i} left {}", listing(&left));
        worst_cgroups = worst_cgroups.max(goplugin_cgroups() as isize - cgroups_before as isize);
        if (i + 1) % 25 == 0 || i + 1 == cycles {
            let logs = std::fs::read_dir(base.path().join("t/logs"))
                .map(|r| r.count())
                .unwrap_or(0);
            figure(
                "goplugin run --detach + goplugin stop",
                format!(
                    "{} cycles in {:?} ({:?} each); processes left {}; goplugin cgroups {} (before {cgroups_before}); entries in the logs dir {logs}",
                    i + 1,
                    t0.elapsed(),
                    t0.elapsed() / (i as u32 + 1),
                    left.len(),
                    goplugin_cgroups()
                ),
            );
        }
    }
    figure(
        "goplugin run --detach + goplugin stop, bounds",
        format!(
            "{cycles} cycles: most processes left after a cycle {worst_left}, most extra goplugin cgroups {worst_cgroups}"
        ),
    );
    assert_eq!(worst_left, 0);
    assert!(worst_cgroups <= 0, "task cgroups removed by each stop");
}

/// Writes 64 KiB blocks of whole lines into `fifo` as fast as the pipe takes them until
/// stopped; returns the bytes written.
fn flood(
    fifo: String,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut block = Vec::with_capacity(64 * 1024);
        let mut i = 0u64;
        while block.len() < 64 * 1024 - 32 {
            block.extend_from_slice(format!("flood line {i:08}\n").as_bytes());
            i += 1;
        }
        let mut w = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        while !stop.load(Ordering::Relaxed) {
            w.write_all(&block).unwrap();
            written.fetch_add(block.len() as u64, Ordering::Relaxed);
        }
    })
}

#[tokio::test]
async fn logmon_at_full_speed() {
    let secs = size("GOPLUGIN_LOAD_LOGMON_SECS", 5, 60);
    let tag = Tag::new("load-logmon");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("logmon");
    tag.apply(&mut cmd);
    let client = Client::builder(cmd, nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .stdin(Stdio::null())
        .start()
        .await
        .unwrap();
    let pid = client.pid();
    let req = StartRequest {
        log_dir: dir.path().display().to_string(),
        stdout_file_name: "web.stdout".into(),
        stderr_file_name: "web.stderr".into(),
        max_files: 3,
        max_file_size_mb: 10,
        stdout_fifo: dir.path().join(".web.stdout.fifo").display().to_string(),
        stderr_fifo: dir.path().join(".web.stderr.fifo").display().to_string(),
    };
    let mut lm = LogMonClient::new(client.channel());
    lm.start(req.clone()).await.unwrap();
    let idle = (Census::of(pid).unwrap(), rss_kib(pid).unwrap_or(0));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = flood(req.stdout_fifo.clone(), stop.clone(), written.clone());
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push((
            t0.elapsed(),
            written.load(Ordering::Relaxed),
            Census::of(pid).unwrap(),
            rss_kib(pid).unwrap_or(0),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let total = written.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    lm.stop(StopRequest {}).await.unwrap();
    let after_stop = (Census::of(pid).unwrap(), rss_kib(pid).unwrap_or(0));
    let (_, indices) = rotated(dir.path(), "web.stdout");
    client.kill().await;
    let every = (samples.len() / 8).max(1);
    for (t, bytes, c, rss) in samples.iter().step_by(every) {
        figure(
            "logmon at full speed, sample",
            format!(
                "t {t:.1?}: {} MiB written, logmon {c}, rss {rss} KiB",
                bytes >> 20
            ),
        );
    }
    let fds: Vec<usize> = samples.iter().map(|s| s.2.fds).collect();
    let threads: Vec<usize> = samples.iter().map(|s| s.2.threads).collect();
    let rss: Vec<u64> = samples.iter().map(|s| s.3).collect();
    let range = |v: &[usize]| (*v.iter().min().unwrap(), *v.iter().max().unwrap());
    figure(
        "logmon at full speed",
        format!(
            "{secs} s: {} MiB in {elapsed:.1?} = {:.0} MiB/s through one FIFO into 10 MiB files (kept 3, now {indices:?}); logmon idle {} / rss {} KiB; under load fds {:?}, threads {:?}, rss {}..{} KiB; after Stop {} / rss {} KiB",
            total >> 20,
            (total as f64 / (1 << 20) as f64) / elapsed.as_secs_f64(),
            idle.0,
            idle.1,
            range(&fds),
            range(&threads),
            rss.iter().min().unwrap(),
            rss.iter().max().unwrap(),
            after_stop.0,
            after_stop.1
        ),
    );
    assert!(tag.left_after(Duration::from_secs(3)).await.is_empty());
    // Bounded, not timed: descriptors (one more while a rotation opens the next file before
    // closing the last) and threads stay as they were at Start; RSS does not grow with the bytes
    // copied.
    let (low, high) = range(&fds);
    assert!(
        low >= idle.0.fds && high <= idle.0.fds + 1,
        "fds {low}..{high}"
    );
    assert_eq!(range(&threads), (idle.0.threads, idle.0.threads));
    assert!(
        *rss.iter().max().unwrap() < idle.1 + 16 * 1024,
        "rss {rss:?} against {} KiB idle",
        idle.1
    );
}
