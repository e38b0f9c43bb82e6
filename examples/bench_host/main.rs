//! Benchmark driver for the host role: `goplugin::Client` drives a plugin and prints JSON lines
//! for `scripts/bench` to put next to the same figures measured with go-plugin's Go host
//! (`compat-tests/cmd/bench`).
//!
//! ```text
//! bench_host PLUGIN [--runs N] [--calls N] [--rounds N] [--mtls] [--multi-thread]
//!                   [--channel client,tonic,direct]
//! bench_host PLUGIN --stream [--size BYTES] [--msgs N] [--rounds N] [--multi-thread]
//! bench_host PROGRAM --socket-floor [--calls N] [--rounds N]
//! ```
//!
//! KV mode (go-plugin's `examples/grpc` contract, cookie `BASIC_PLUGIN=hello`): spawn to the first
//! `Put` (`--runs` times), then `--rounds` latency rounds of `--calls` sequential `Get` calls, one
//! plugin process per round. One JSON line per channel kind:
//! - `client`: [`goplugin::Client::channel`], tonic's `Channel` on the client's connection;
//! - `tonic`: a second connection to the plugin's socket, tonic's `Channel` built the same way;
//! - `direct`: a second connection, `direct_channel::DirectChannel` (no `Buffer`).
//!
//! `tonic` and `direct` dial the socket themselves, so they are plain (no `--mtls`); rounds
//! alternate between the kinds so a slow phase of the machine hits them alike.
//!
//! Stream mode (`grpc.testing.BenchmarkService`, cookie `GOPLUGIN_BENCH=stream`, e.g.
//! `examples/bench_plugin`): per round one plugin process, `StreamingFromServer` with messages of
//! `--size` bytes, `--msgs`/10 untimed, then `--msgs` timed; messages per second.
//!
//! Socket-floor mode (`socket_floor`): per round `PROGRAM --socket-echo PATH` (bench_host
//! itself, or a wrapper that pins it to a CPU and runs it) echoes 64-byte messages over a unix
//! socket with blocking I/O; the round-trip p50/p99 are the floor under the unary rows.
//!
//! The runtime is current-thread unless `--multi-thread` (tokio's default: a worker per CPU):
//! a sequential caller gains nothing from workers, and on them tonic's `Buffer` task is a
//! cross-thread hop per call.

use std::time::{Duration, Instant};

use goplugin::proto::benchmark::benchmark_service_client::BenchmarkServiceClient;
use goplugin::proto::benchmark::{SimpleRequest, SimpleResponse};
use goplugin::proto::kv::kv_client::KvClient;
use goplugin::proto::kv::{GetRequest, PutRequest};
use goplugin::{Client, HandshakeConfig};
use tonic::transport::Channel;

mod direct_channel;
mod socket_floor;
use direct_channel::DirectChannel;

const USAGE: &str = "usage: bench_host PLUGIN [--runs N] [--calls N] [--rounds N] [--mtls] \
    [--multi-thread] [--channel client,tonic,direct] | PLUGIN --stream [--size B] [--msgs N] \
    | PROGRAM --socket-floor [--calls N] [--rounds N]";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Client,
    Tonic,
    Direct,
}

impl Kind {
    fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "client" => Ok(Kind::Client),
            "tonic" => Ok(Kind::Tonic),
            "direct" => Ok(Kind::Direct),
            other => Err(format!("unknown channel kind {other}")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Tonic => "tonic",
            Kind::Direct => "direct",
        }
    }
}

struct Args {
    plugin: String,
    runs: usize,
    calls: usize,
    rounds: usize,
    mtls: bool,
    multi_thread: bool,
    kinds: Vec<Kind>,
    stream: bool,
    socket_floor: bool,
    size: usize,
    msgs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let plugin = it.next().ok_or(USAGE)?;
    // Absolute: main changes into a work directory before starting it.
    let plugin = std::fs::canonicalize(&plugin)
        .map_err(|e| format!("{plugin}: {e}"))?
        .to_string_lossy()
        .into_owned();
    let mut args = Args {
        plugin,
        runs: 20,
        calls: 5000,
        rounds: 3,
        mtls: false,
        multi_thread: false,
        kinds: vec![Kind::Client],
        stream: false,
        socket_floor: false,
        size: 1024,
        msgs: 20000,
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: Result<String, String>| -> Result<usize, String> {
            v?.parse().map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--runs" => args.runs = num("--runs", value("--runs"))?,
            "--calls" => args.calls = num("--calls", value("--calls"))?,
            "--rounds" => args.rounds = num("--rounds", value("--rounds"))?,
            "--size" => args.size = num("--size", value("--size"))?,
            "--msgs" => args.msgs = num("--msgs", value("--msgs"))?,
            "--mtls" => args.mtls = true,
            "--multi-thread" => args.multi_thread = true,
            "--stream" => args.stream = true,
            "--socket-floor" => args.socket_floor = true,
            "--channel" => {
                args.kinds = value("--channel")?
                    .split(',')
                    .map(Kind::parse)
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if args.mtls && args.kinds.iter().any(|k| *k != Kind::Client) {
        return Err("--mtls works with --channel client only".into());
    }
    if args.calls == 0 || args.msgs == 0 || args.kinds.is_empty() {
        return Err("--calls, --msgs and --channel need at least one".into());
    }
    i32::try_from(args.size).map_err(|_| format!("--size {} is too large", args.size))?;
    Ok(args)
}

fn runtime_name(args: &Args) -> &'static str {
    if args.multi_thread {
        "multi_thread"
    } else {
        "current_thread"
    }
}

async fn start(args: &Args, handshake: HandshakeConfig) -> Client {
    Client::builder(std::process::Command::new(&args.plugin), handshake)
        .auto_mtls(args.mtls)
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", args.plugin))
}

/// The plugin's socket path, for the kinds that dial a connection of their own.
fn socket_path(client: &Client) -> String {
    let cfg = client.reattach_config();
    assert_eq!(
        cfg.network, "unix",
        "--channel tonic/direct need a unix socket"
    );
    cfg.addr
}

async fn second_tonic(path: String) -> Channel {
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("tonic channel on a second connection")
}

async fn second_direct(path: String) -> DirectChannel {
    let conn = tokio::net::UnixStream::connect(&path)
        .await
        .unwrap_or_else(|e| panic!("connecting {path}: {e}"));
    DirectChannel::handshake(conn)
        .await
        .expect("direct channel on a second connection")
}

/// One generated client per channel type: tonic's clients are generic over the channel.
enum Kv {
    Tonic(KvClient<Channel>),
    Direct(KvClient<DirectChannel>),
}

impl Kv {
    async fn open(kind: Kind, client: &Client) -> Kv {
        match kind {
            Kind::Client => Kv::Tonic(KvClient::new(client.channel())),
            Kind::Tonic => Kv::Tonic(KvClient::new(second_tonic(socket_path(client)).await)),
            Kind::Direct => Kv::Direct(KvClient::new(second_direct(socket_path(client)).await)),
        }
    }

    /// `Get("bench")`: the value's length (5, `value`, when the plugin read the file).
    async fn get(&mut self) -> Result<usize, tonic::Status> {
        let req = GetRequest {
            key: "bench".into(),
        };
        let resp = match self {
            Kv::Tonic(kv) => kv.get(req).await?,
            Kv::Direct(kv) => kv.get(req).await?,
        };
        Ok(resp.into_inner().value.len())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

/// 200 untimed calls, then `calls` timed ones: (p50, p99) in µs.
async fn latency_round(kv: &mut Kv, calls: usize) -> (f64, f64) {
    let len = kv.get().await.expect("first Get");
    assert_eq!(len, b"value".len(), "Get(bench) read the wrong file");
    for _ in 0..200 {
        kv.get().await.expect("warm-up Get");
    }
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t0 = Instant::now();
        kv.get().await.expect("Get");
        lat.push(t0.elapsed());
    }
    lat.sort();
    (percentile(&lat, 0.50), percentile(&lat, 0.99))
}

fn kv_handshake() -> HandshakeConfig {
    HandshakeConfig::new("BASIC_PLUGIN", "hello")
}

async fn kv_mode(args: &Args) {
    let mut spawn_us = Vec::new();
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let client = start(args, kv_handshake()).await;
        KvClient::new(client.channel())
            .put(PutRequest {
                key: "bench-put".into(),
                value: b"v".to_vec(),
            })
            .await
            .expect("first RPC");
        spawn_us.push(t0.elapsed().as_secs_f64() * 1e6);
        client.kill().await;
    }
    let n = args.kinds.len();
    let mut p50s = vec![Vec::new(); n];
    let mut p99s = vec![Vec::new(); n];
    for round in 0..args.rounds {
        let client = start(args, kv_handshake()).await;
        for j in 0..n {
            // Rotate which kind goes first, so drift within a round hits all alike.
            let k = (round + j) % n;
            let mut kv = Kv::open(args.kinds[k], &client).await;
            let (p50, p99) = latency_round(&mut kv, args.calls).await;
            p50s[k].push(p50);
            p99s[k].push(p99);
        }
        client.kill().await;
    }
    for (k, kind) in args.kinds.iter().enumerate() {
        println!(
            "{}",
            serde_json::json!({
                "spawn_to_first_rpc_us": if k == 0 { spawn_us.clone() } else { Vec::new() },
                "rpc_p50_us": p50s[k],
                "rpc_p99_us": p99s[k],
                "mtls": args.mtls,
                "runtime": runtime_name(args),
                "channel": kind.name(),
            })
        );
    }
}

async fn next_message(stream: &mut tonic::Streaming<SimpleResponse>, size: usize) {
    let msg = stream.message().await.expect("stream message");
    let got = msg.and_then(|m| m.payload).map(|p| p.body.len());
    assert_eq!(got, Some(size), "streamed message size");
}

async fn stream_round(args: &Args) -> f64 {
    let client = start(args, HandshakeConfig::new("GOPLUGIN_BENCH", "stream")).await;
    let mut bench = BenchmarkServiceClient::new(client.channel())
        .max_decoding_message_size(client.max_message_size());
    let req = SimpleRequest {
        response_size: args.size as i32,
        ..Default::default()
    };
    let mut stream = bench
        .streaming_from_server(req)
        .await
        .expect("StreamingFromServer")
        .into_inner();
    for _ in 0..args.msgs / 10 {
        next_message(&mut stream, args.size).await;
    }
    let t0 = Instant::now();
    for _ in 0..args.msgs {
        next_message(&mut stream, args.size).await;
    }
    let rate = args.msgs as f64 / t0.elapsed().as_secs_f64();
    drop(stream);
    client.kill().await;
    rate
}

async fn stream_mode(args: &Args) {
    let mut rates = Vec::new();
    for _ in 0..args.rounds {
        rates.push(stream_round(args).await);
    }
    println!(
        "{}",
        serde_json::json!({
            "size": args.size,
            "stream_msgs_per_s": rates,
            "runtime": runtime_name(args),
        })
    );
}

/// Socket-floor mode: one JSON line with the p50s and p99s of the rounds.
fn socket_floor_mode(args: &Args, work: &std::path::Path) {
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let lat = socket_floor::round(&args.plugin, work, args.calls)
            .unwrap_or_else(|e| panic!("socket floor with {}: {e}", args.plugin));
        p50s.push(percentile(&lat, 0.50));
        p99s.push(percentile(&lat, 0.99));
    }
    println!(
        "{}",
        serde_json::json!({
            "rpc_p50_us": p50s,
            "rpc_p99_us": p99s,
        })
    );
}

fn main() {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--socket-echo") {
        let path = argv.next().unwrap_or_default();
        if let Err(e) = socket_floor::echo(&path) {
            eprintln!("bench_host --socket-echo {path}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_host: {e}");
            std::process::exit(2);
        }
    };
    let work = std::env::temp_dir().join(format!("bench-host-{}", std::process::id()));
    // The file every `Get("bench")` reads, written before any plugin starts, as the Go driver does.
    let ready = std::fs::create_dir_all(&work)
        .and_then(|_| std::env::set_current_dir(&work))
        .and_then(|_| std::fs::write("kv_bench", b"value"));
    if let Err(e) = ready {
        eprintln!("bench_host: {}: {e}", work.display());
        std::process::exit(1);
    }
    if args.socket_floor {
        socket_floor_mode(&args, &work);
        let _ = std::fs::remove_dir_all(&work);
        return;
    }
    let mut builder = if args.multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder.enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        if args.stream {
            stream_mode(&args).await
        } else {
            kv_mode(&args).await
        }
    });
    let _ = std::fs::remove_dir_all(&work);
}
