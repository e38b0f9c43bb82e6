//! Benchmark driver for the host role: `goplugin::Client` drives a KV plugin (go-plugin's
//! `examples/grpc` contract) and prints one JSON object with spawn-to-first-RPC and unary RPC
//! latency, for `scripts/bench` to put next to the same figures measured with go-plugin's Go host.
//!
//! ```text
//! bench_host PLUGIN_PATH [--runs N] [--calls N] [--rounds N] [--mtls]
//! ```
//!
//! It runs on a current-thread tokio runtime: a sequential caller gains nothing from worker
//! threads and pays a cross-thread wake-up per call without it.

use std::time::{Duration, Instant};

use goplugin::proto::kv::kv_client::KvClient;
use goplugin::proto::kv::{GetRequest, PutRequest};
use goplugin::{Client, HandshakeConfig};

struct Args {
    plugin: String,
    runs: usize,
    calls: usize,
    rounds: usize,
    mtls: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let plugin = it
        .next()
        .ok_or("usage: bench_host PLUGIN [--runs N] [--calls N] [--rounds N] [--mtls]")?;
    let mut args = Args {
        plugin,
        runs: 20,
        calls: 5000,
        rounds: 3,
        mtls: false,
    };
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--runs" => args.runs = num("--runs")?,
            "--calls" => args.calls = num("--calls")?,
            "--rounds" => args.rounds = num("--rounds")?,
            "--mtls" => args.mtls = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

async fn start(args: &Args) -> Result<Client, goplugin::ClientError> {
    Client::builder(
        std::process::Command::new(&args.plugin),
        HandshakeConfig::new("BASIC_PLUGIN", "hello"),
    )
    .auto_mtls(args.mtls)
    .start()
    .await
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_host: {e}");
            std::process::exit(2);
        }
    };
    let work = std::env::temp_dir().join(format!("bench-host-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&work).and_then(|_| std::env::set_current_dir(&work)) {
        eprintln!("bench_host: {}: {e}", work.display());
        std::process::exit(1);
    }
    let mut spawn = Vec::new();
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let client = start(&args).await.unwrap_or_else(|e| panic!("start: {e}"));
        KvClient::new(client.channel())
            .put(PutRequest {
                key: "bench".into(),
                value: b"v".to_vec(),
            })
            .await
            .expect("first RPC");
        spawn.push(t0.elapsed());
        client.kill().await;
    }
    spawn.sort();
    let client = start(&args).await.unwrap_or_else(|e| panic!("start: {e}"));
    let mut kv = KvClient::new(client.channel());
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..args.rounds {
        for _ in 0..200 {
            let _ = kv
                .get(GetRequest {
                    key: "bench".into(),
                })
                .await;
        }
        let mut lat = Vec::with_capacity(args.calls);
        for _ in 0..args.calls {
            let t0 = Instant::now();
            kv.get(GetRequest {
                key: "bench".into(),
            })
            .await
            .expect("Get");
            lat.push(t0.elapsed());
        }
        lat.sort();
        p50s.push(percentile(&lat, 0.50));
        p99s.push(percentile(&lat, 0.99));
    }
    client.kill().await;
    let _ = std::fs::remove_dir_all(&work);
    let spawn_us: Vec<f64> = spawn.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    println!(
        "{}",
        serde_json::json!({
            "spawn_to_first_rpc_us": spawn_us,
            "rpc_p50_us": p50s,
            "rpc_p99_us": p99s,
            "mtls": args.mtls,
        })
    );
}
