//! `goplugin logmon` driven over the real protocol by this crate's host (Nomad's handshake:
//! cookie, protocol 2, gRPC): FIFOs into rotated files, idempotent Start, Stop, reattach, bad
//! input, and no fd or thread growth across Start/Stop cycles (hashicorp/nomad#28439).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use goplugin::nomad;
use goplugin::proto::logmon::log_mon_client::LogMonClient;
use goplugin::proto::logmon::{StartRequest, StopRequest};
use goplugin::Client;

const BIN: &str = env!("CARGO_BIN_EXE_goplugin");

async fn launch() -> Client {
    let mut cmd = Command::new(BIN);
    cmd.arg("logmon");
    Client::builder(cmd, nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .start()
        .await
        .expect("logmon starts")
}

fn request(dir: &Path, max_files: u32, size_mb: u32) -> StartRequest {
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

fn open_writer(fifo: &str) -> std::fs::File {
    std::fs::OpenOptions::new().write(true).open(fifo).unwrap()
}

fn wait_content(path: &Path, want: &[u8]) {
    let t0 = Instant::now();
    loop {
        let got = std::fs::read(path).unwrap_or_default();
        if got == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{}: {:?}",
            path.display(),
            String::from_utf8_lossy(&got)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn handshake_is_nomads() {
    let client = launch().await;
    assert_eq!(client.negotiated_version(), 2);
    client.ping().await.unwrap();
    client.kill().await;
}

#[tokio::test]
async fn copies_both_streams_into_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch().await;
    let mut lm = LogMonClient::new(client.channel());
    let req = request(dir.path(), 3, 1);
    lm.start(req.clone()).await.unwrap();
    let meta = std::fs::metadata(&req.stdout_fifo).unwrap();
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut out = open_writer(&req.stdout_fifo);
    let mut err = open_writer(&req.stderr_fifo);
    let t0 = Instant::now();
    out.write_all(b"hello stdout\n").unwrap();
    err.write_all(b"hello stderr\n").unwrap();
    wait_content(&dir.path().join("web.stdout.0"), b"hello stdout\n");
    wait_content(&dir.path().join("web.stderr.0"), b"hello stderr\n");
    // Written through while the writers stay open, not held for a periodic flush: the bound is
    // loose (a loaded CI machine), the copy's speed is the benchmark's to measure.
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "held for {:?}",
        t0.elapsed()
    );
    // Start again with the same parameters: a no-op, still copying.
    lm.start(req.clone()).await.unwrap();
    out.write_all(b"more\n").unwrap();
    wait_content(&dir.path().join("web.stdout.0"), b"hello stdout\nmore\n");
    lm.stop(StopRequest {}).await.unwrap();
    lm.stop(StopRequest {}).await.unwrap();
    client.kill().await;
}

#[tokio::test]
async fn a_restarted_writer_loses_nothing_and_rotation_keeps_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch().await;
    let mut lm = LogMonClient::new(client.channel());
    let req = request(dir.path(), 100, 1);
    lm.start(req.clone()).await.unwrap();
    let mut expected = Vec::new();
    for round in 0..4 {
        let mut w = open_writer(&req.stdout_fifo);
        for i in 0..3000 {
            let line = format!("round {round} line {i} {}\n", "x".repeat(i % 700));
            w.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        drop(w);
    }
    let t0 = Instant::now();
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("web.stdout."))
            })
            .collect();
        files.sort_by_key(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u64>().ok())
        });
        let all: Vec<u8> = files
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect();
        if all == expected {
            assert!(
                files.len() >= 4,
                "{} MiB rotated into {} files",
                expected.len() >> 20,
                files.len()
            );
            for f in &files[..files.len() - 1] {
                assert!(std::fs::metadata(f).unwrap().len() <= 1024 * 1024);
            }
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} of {} bytes",
            all.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lm.stop(StopRequest {}).await.unwrap();
    client.kill().await;
}

#[tokio::test]
async fn reattached_client_starts_again_as_a_no_op_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let first = launch().await;
    let req = request(dir.path(), 3, 1);
    LogMonClient::new(first.channel())
        .start(req.clone())
        .await
        .unwrap();
    let mut w = open_writer(&req.stdout_fifo);
    w.write_all(b"before the agent died\n").unwrap();
    let saved = serde_json::to_string(&first.reattach_config()).unwrap();
    drop(first); // the agent goes away without killing logmon
    w.write_all(b"while the agent was down\n").unwrap();
    let cfg = serde_json::from_str(&saved).unwrap();
    let again = Client::reattach(&cfg).await.unwrap();
    again.ping().await.unwrap();
    LogMonClient::new(again.channel())
        .start(req.clone())
        .await
        .unwrap();
    w.write_all(b"after reattach\n").unwrap();
    wait_content(
        &dir.path().join("web.stdout.0"),
        b"before the agent died\nwhile the agent was down\nafter reattach\n",
    );
    again.kill().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch().await;
    let mut lm = LogMonClient::new(client.channel());
    // Stop before any Start is fine.
    lm.stop(StopRequest {}).await.unwrap();
    let missing = request(Path::new("/nonexistent/alloc/logs"), 3, 1);
    let e = lm.start(missing).await.unwrap_err();
    assert!(
        e.message().contains("failed to create stdout logfile"),
        "{e}"
    );
    assert!(e.message().contains("/nonexistent/alloc/logs"), "{e}");
    // sysfs refuses new files even to root: an unwritable log directory.
    let e = lm
        .start(request(Path::new("/sys/kernel"), 3, 1))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("failed to create stdout logfile"),
        "{e}"
    );
    assert!(e.message().contains("/sys/kernel/web.stdout.0"), "{e}");
    for (files, size) in [(0, 1), (3, 0), (3, 5_000_000), (1_000_000, 1)] {
        let e = lm
            .start(request(dir.path(), files, size))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::InvalidArgument,
            "{files} {size}: {e}"
        );
    }
    let mut regular = request(dir.path(), 3, 1);
    std::fs::write(&regular.stdout_fifo, b"not a fifo").unwrap();
    let e = lm.start(regular.clone()).await.unwrap_err();
    assert!(e.message().contains("is not a fifo"), "{e}");
    std::fs::remove_file(&regular.stdout_fifo).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &regular.stdout_fifo).unwrap();
    let e = lm.start(regular.clone()).await.unwrap_err();
    assert!(e.message().contains("symlink"), "{e}");
    std::fs::remove_file(&regular.stdout_fifo).unwrap();
    // A good Start, then one with other parameters while running: refused, first one intact.
    lm.start(regular.clone()).await.unwrap();
    regular.max_files = 7;
    let e = lm.start(regular.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    lm.stop(StopRequest {}).await.unwrap();
    lm.start(regular).await.unwrap();
    client.kill().await;
}

fn fds_and_threads(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (fds, threads)
}

/// hashicorp/nomad#28439: +1 thread and +1 fd per in-place restart in Nomad's logmon.
#[tokio::test]
async fn five_hundred_start_stop_cycles_leave_fds_and_threads_flat() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch().await;
    let mut lm = LogMonClient::new(client.channel());
    let req = request(dir.path(), 3, 1);
    lm.start(req.clone()).await.unwrap();
    lm.stop(StopRequest {}).await.unwrap();
    let before = fds_and_threads(client.pid());
    for i in 0..500 {
        lm.start(req.clone()).await.unwrap();
        if i % 50 == 0 {
            let mut w = open_writer(&req.stdout_fifo);
            w.write_all(format!("cycle {i}\n").as_bytes()).unwrap();
        }
        lm.stop(StopRequest {}).await.unwrap();
    }
    // A copier thread signals Stop just before it ends: let the last one go (a leak would stay).
    let mut after = fds_and_threads(client.pid());
    for _ in 0..100 {
        if after == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = fds_and_threads(client.pid());
    }
    assert_eq!(before, after, "(fds, threads) before and after 500 cycles");
    client.kill().await;
}

/// Mirrors Nomad TestLogmon_Start_rotate: max_files 2, 1 MiB files; 1 MiB of random bytes gives
/// `stdout.0` and `stdout.1` and no `stdout.2`; Stop twice is fine.
#[tokio::test]
async fn one_mib_of_random_bytes_rotates_into_two_files() {
    use rand::RngCore;
    let dir = tempfile::tempdir().unwrap();
    let client = launch().await;
    let mut lm = LogMonClient::new(client.channel());
    let req = request(dir.path(), 2, 1);
    lm.start(req.clone()).await.unwrap();
    let mut data = vec![0u8; 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let mut w = open_writer(&req.stdout_fifo);
    w.write_all(&data).unwrap();
    drop(w);
    let (f0, f1) = (
        dir.path().join("web.stdout.0"),
        dir.path().join("web.stdout.1"),
    );
    let t0 = Instant::now();
    loop {
        let total = [&f0, &f1]
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum::<u64>();
        if total == data.len() as u64 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{total} bytes so far"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(f1.exists());
    assert!(!dir.path().join("web.stdout.2").exists());
    let mut joined = std::fs::read(&f0).unwrap();
    joined.extend(std::fs::read(&f1).unwrap());
    assert_eq!(joined, data);
    lm.stop(StopRequest {}).await.unwrap();
    lm.stop(StopRequest {}).await.unwrap();
    client.kill().await;
}

/// Mirrors Nomad TestLogmon_NewError: a FIFO in a directory that does not exist.
#[tokio::test]
async fn fifo_in_a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch().await;
    let mut lm = LogMonClient::new(client.channel());
    let mut req = request(dir.path(), 2, 1);
    req.stdout_fifo = "/nonexistent/dir/.web.stdout.fifo".into();
    let e = lm.start(req).await.unwrap_err();
    assert!(
        e.message()
            .contains("failed to create fifo for extracting logs"),
        "{e}"
    );
    client.kill().await;
}

/// Unmounts the test's tmpfs when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk (ENOSPC): logmon keeps the bytes it could not write, stops reading (the task's
/// writes wait in the pipe instead of being lost) and resumes when there is room again.
#[tokio::test]
async fn full_disk_holds_the_output_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "goplugin-test"])
        .arg(dir.path())
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "skipping: cannot mount a small tmpfs here: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    let _mount = Mount(dir.path().to_path_buf());
    let client = launch().await;
    let mut lm = LogMonClient::new(client.channel());
    let req = request(dir.path(), 2, 1);
    lm.start(req.clone()).await.unwrap();
    let data: Vec<u8> = (0..200 * 1024u32)
        .map(|i| {
            if i % 100 == 99 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let fifo = req.stdout_fifo.clone();
    let payload = data.clone();
    let writer = std::thread::spawn(move || open_writer(&fifo).write_all(&payload));
    let file = dir.path().join("web.stdout.0");
    // The disk fills up: the file stops growing well short of the data.
    let t0 = Instant::now();
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        if now == last && now > 0 {
            break;
        }
        last = now;
        assert!(t0.elapsed() < Duration::from_secs(10), "file keeps growing");
    }
    assert!(last < data.len() as u64, "{last} bytes on a 64 KiB disk");
    assert!(
        !writer.is_finished(),
        "the task's writes wait instead of failing"
    );
    let grown = Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(grown.success());
    writer.join().unwrap().unwrap();
    wait_content(&file, &data);
    lm.stop(StopRequest {}).await.unwrap();
    client.kill().await;
}

/// Data the task wrote that the old logmon never read (it was stopped, then killed) reaches the
/// files through the next logmon, which reuses the FIFOs.
#[tokio::test]
async fn data_left_in_the_pipe_by_a_killed_logmon_is_kept() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let req = request(dir.path(), 3, 1);
    let first = launch().await;
    LogMonClient::new(first.channel())
        .start(req.clone())
        .await
        .unwrap();
    let mut w = open_writer(&req.stdout_fifo);
    w.write_all(b"read by the first\n").unwrap();
    wait_content(&dir.path().join("web.stdout.0"), b"read by the first\n");
    let pid = Pid::from_raw(first.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    w.write_all(b"left in the pipe\n").unwrap();
    // A second logmon takes over the same FIFOs before the first one dies, as Nomad's hook
    // launches a fresh logmon when reattaching fails.
    let second = launch().await;
    LogMonClient::new(second.channel())
        .start(req.clone())
        .await
        .unwrap();
    kill(pid, Signal::SIGKILL).unwrap();
    w.write_all(b"written later\n").unwrap();
    wait_content(
        &dir.path().join("web.stdout.0"),
        b"read by the first\nleft in the pipe\nwritten later\n",
    );
    second.kill().await;
}

/// logmon's log lines, the stderr tee and the panic hook share one descriptor on the real
/// stderr (it once held that file open three times: 25 descriptors against Go's 15 under an
/// agent).
#[test]
fn the_real_stderr_is_held_open_once() {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("logmon.err");
    let mut child = Command::new(BIN)
        .arg("logmon")
        .env(nomad::MAGIC_COOKIE_KEY, nomad::MAGIC_COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "2")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("1|2|unix|"), "{line}");
    let on_err_file = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == err_path)
        .count();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(on_err_file, 1, "descriptors on the real stderr");
}
