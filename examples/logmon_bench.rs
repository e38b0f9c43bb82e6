//! Benchmark driver for `goplugin logmon` and `goplugin executor`: starts them over the real
//! protocol (Nomad's handshake), streams data through logmon's stdout FIFO into rotated files and
//! prints one JSON object: logmon's idle RSS, throughput and CPU seconds per GiB, peak RSS under a
//! flood, voluntary context switches while idle, the same stream through `cat fifo > file` as the
//! practical ceiling; and the executor's RSS, PSS and threads while it supervises an idle task.
//!
//! ```text
//! logmon_bench GOPLUGIN_BIN [--mib N] [--idle-secs N]
//! ```

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use goplugin::proto::logmon::log_mon_client::LogMonClient;
use goplugin::proto::logmon::{StartRequest, StopRequest};
use goplugin::Client;

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("logmon_bench: {msg}");
    std::process::exit(1)
}

/// (utime + stime in seconds, VmHWM KiB, VmRSS KiB, voluntary context switches) of a process.
fn proc_stats(pid: u32) -> (f64, u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // After the name: utime is field 14 (index 11), stime field 15 (index 12).
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kv = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        cpu,
        kv("VmHWM:"),
        kv("VmRSS:"),
        kv("voluntary_ctxt_switches:"),
    )
}

fn stream(fifo: &Path, mib: usize) -> Duration {
    let chunk: Vec<u8> = (0..64 * 1024)
        .map(|i| {
            if i % 120 == 119 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let t0 = Instant::now();
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .unwrap_or_else(|e| fail(format!("{}: {e}", fifo.display())));
    for _ in 0..mib * 16 {
        w.write_all(&chunk).unwrap_or_else(|e| fail(e));
    }
    t0.elapsed()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .unwrap_or_else(|| fail("usage: logmon_bench GOPLUGIN_BIN [--mib N] [--idle-secs N]"));
    let (mut mib, mut idle_secs) = (1024usize, 10u64);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| fail(format!("{flag} needs a value")));
        match flag.as_str() {
            "--mib" => mib = value.parse().unwrap_or_else(|e| fail(e)),
            "--idle-secs" => idle_secs = value.parse().unwrap_or_else(|e| fail(e)),
            _ => fail(format!("unknown flag {flag}")),
        }
    }
    let dir = tempfile_dir();
    let mut cmd = Command::new(&bin);
    cmd.arg("logmon");
    let client = Client::builder(cmd, goplugin::nomad::handshake())
        .start()
        .await
        .unwrap_or_else(|e| fail(e));
    let pid = client.pid();
    let fifo = dir.join(".bench.stdout.fifo");
    let req = StartRequest {
        log_dir: dir.display().to_string(),
        stdout_file_name: "bench.stdout".into(),
        stderr_file_name: "bench.stderr".into(),
        max_files: 3,
        max_file_size_mb: 10,
        stdout_fifo: fifo.display().to_string(),
        stderr_fifo: dir.join(".bench.stderr.fifo").display().to_string(),
    };
    let mut lm = LogMonClient::new(client.channel());
    lm.start(req).await.unwrap_or_else(|e| fail(e));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, idle_rss, ctx0) = proc_stats(pid);
    let idle_pss = pss_kb(pid);
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (cpu0, _, _, ctx1) = proc_stats(pid);
    let idle_ctx_per_min = (ctx1 - ctx0) as f64 * 60.0 / idle_secs as f64;

    let total = (mib * 1024 * 1024) as u64;
    let t0 = Instant::now();
    let fifo2 = fifo.clone();
    let writer = std::thread::spawn(move || stream(&fifo2, mib));
    let _ = writer.join();
    // The writer is done once all but the last pipe buffer (64 KiB) was taken by logmon; rotation
    // keeps only 3 files, so time, not file sizes, tells the throughput.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let elapsed = t0.elapsed();
    let (cpu1, hwm, _, _) = proc_stats(pid);
    let _ = lm.stop(StopRequest {}).await;
    client.kill().await;

    // The ceiling: the same stream through `cat fifo > file`.
    let cat_fifo = dir.join("cat.fifo");
    let _ = nix::unistd::mkfifo(&cat_fifo, nix::sys::stat::Mode::from_bits_truncate(0o600));
    let out = std::fs::File::create(dir.join("cat.out")).unwrap_or_else(|e| fail(e));
    let mut cat = Command::new("cat")
        .arg(&cat_fifo)
        .stdout(out)
        .spawn()
        .unwrap_or_else(|e| fail(e));
    let t1 = Instant::now();
    stream(&cat_fifo, mib);
    let _ = cat.wait();
    let cat_elapsed = t1.elapsed();
    let (exec_rss, exec_pss, exec_threads) = executor_idle(&bin, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);

    let gib = total as f64 / (1u64 << 30) as f64;
    println!(
        "{}",
        serde_json::json!({
            "mib": mib,
            "idle_rss_kb": idle_rss,
            "idle_pss_kb": idle_pss,
            "idle_voluntary_ctx_switches_per_min": idle_ctx_per_min,
            "throughput_mib_s": mib as f64 / elapsed.as_secs_f64(),
            "cpu_s_per_gib": (cpu1 - cpu0) / gib,
            "peak_rss_kb": hwm,
            "cat_throughput_mib_s": mib as f64 / cat_elapsed.as_secs_f64(),
            "executor_idle_rss_kb": exec_rss,
            "executor_idle_pss_kb": exec_pss,
            "executor_threads": exec_threads,
        })
    );
}

/// Proportional set size: shared pages (the binary, libc) divided among the processes mapping
/// them, which is what each of many logmons really adds.
fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts `goplugin executor`, launches `sleep 60` through it and reads the executor's RSS, PSS
/// and thread count once it is idle.
async fn executor_idle(bin: &str, dir: &Path) -> (u64, u64, u64) {
    use goplugin::proto::executor::executor_client::ExecutorClient;
    use goplugin::proto::executor::{LaunchRequest, ShutdownRequest};
    let cfg = serde_json::json!({"LogFile": dir.join("executor.out"), "LogLevel": "info"});
    let mut cmd = Command::new(bin);
    cmd.arg("executor").arg(cfg.to_string());
    let client = Client::builder(cmd, goplugin::nomad::handshake())
        .start()
        .await
        .unwrap_or_else(|e| fail(e));
    let mut exec = ExecutorClient::new(client.channel());
    exec.launch(LaunchRequest {
        cmd: "sleep".into(),
        args: vec!["60".into()],
        task_dir: dir.display().to_string(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| fail(e));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = client.pid();
    let (_, _, rss, _) = proc_stats(pid);
    let pss = pss_kb(pid);
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let _ = exec
        .shutdown(ShutdownRequest {
            signal: "SIGKILL".into(),
            grace_period: 0,
        })
        .await;
    client.kill().await;
    (rss, pss, threads)
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("logmon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
    dir
}
