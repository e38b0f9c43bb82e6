//! `goplugin executor <json>` driven over the real protocol by this crate's host with Nomad's
//! handshake: launch, wait, exit codes and signals, user and groups, shutdown of the whole process
//! group, stats, exec, exec streaming on pipes and on a PTY, cgroup limits and OOM, reattach.

mod common;

use common::exec_stream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use goplugin::nomad;
use goplugin::proto::drivers::exec_task_streaming_request::TerminalSize;
use goplugin::proto::drivers::{
    AllocatedMemoryResources, AllocatedTaskResources, ExecTaskStreamingIoOperation,
    ExecTaskStreamingRequest, Resources,
};
use goplugin::proto::executor::executor_client::ExecutorClient;
use goplugin::proto::executor::*;
use goplugin::Client;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_goplugin");

async fn launch_executor(dir: &Path) -> Client {
    let cfg = serde_json::json!({
        "LogFile": dir.join("executor.out"),
        "LogLevel": "debug",
        "FSIsolation": false,
        "Compute": {"tc": 4000, "nc": 2},
    });
    let mut cmd = Command::new(BIN);
    cmd.arg("executor").arg(cfg.to_string());
    Client::builder(cmd, nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .start()
        .await
        .expect("executor starts")
}

fn task(dir: &Path, script: &str) -> LaunchRequest {
    LaunchRequest {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        stdout_path: dir.join("stdout").display().to_string(),
        stderr_path: dir.join("stderr").display().to_string(),
        env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hi".into()],
        task_dir: dir.display().to_string(),
        ..Default::default()
    }
}

/// The output files exist before Launch, as logmon's FIFOs do.
fn prepare(req: &LaunchRequest) {
    std::fs::write(&req.stdout_path, b"").unwrap();
    std::fs::write(&req.stderr_path, b"").unwrap();
}

async fn run_task(exec: &mut ExecutorClient<Channel>, req: LaunchRequest) -> ProcessState {
    prepare(&req);
    let launched = exec
        .launch(req)
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert!(launched.pid > 0);
    assert_eq!(launched.exit_code, -1);
    exec.wait(WaitRequest {})
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap()
}

#[tokio::test]
async fn runs_a_task_with_its_env_cwd_and_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    assert_eq!(client.negotiated_version(), 2);
    let mut exec = ExecutorClient::new(client.channel());
    let v = exec.version(VersionRequest {}).await.unwrap().into_inner();
    assert_eq!(v.version, "2.0.0");
    let state = run_task(
        &mut exec,
        task(
            dir.path(),
            "echo $GREETING; pwd; env | wc -l; echo oops >&2; exit 3",
        ),
    )
    .await;
    assert_eq!((state.exit_code, state.signal), (3, 0));
    let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_eq!(Path::new(lines[1]), dir.path());
    // Exactly the task's environment (sh adds PWD, SHLVL and _ of its own).
    assert!(lines[2].trim().parse::<u32>().unwrap() <= 5, "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stderr")).unwrap(),
        "oops\n"
    );
    assert!(dir.path().join("executor.out").exists(), "hclog to LogFile");
    client.kill().await;
}

#[tokio::test]
async fn reports_a_signal_death_as_128_plus_signal() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    let state = run_task(&mut exec, task(dir.path(), "kill -TERM $$")).await;
    assert_eq!((state.exit_code, state.signal), (143, 15));
    client.kill().await;
}

#[tokio::test]
async fn a_nobody_task_gets_its_own_uid_groups_and_no_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = task(dir.path(), "id -u; id -G; grep CapEff /proc/self/status");
    req.user = "nobody".into();
    let state = run_task(&mut exec, req).await;
    assert_eq!(state.exit_code, 0);
    let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534", "{out}");
    assert!(
        !lines[1].split_whitespace().any(|g| g == "0"),
        "no root group: {out}"
    );
    assert!(lines[2].ends_with("0000000000000000"), "{out}");
    client.kill().await;
}

#[tokio::test]
async fn unknown_user_and_missing_command_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = task(dir.path(), "true");
    req.user = "no-such-user-x".into();
    let e = exec.launch(req).await.unwrap_err();
    assert!(e.message().contains("no-such-user-x"), "{e}");
    let mut req = task(dir.path(), "true");
    req.cmd = "no-such-command-x".into();
    let e = exec.launch(req).await.unwrap_err();
    assert_eq!(
        e.message(),
        "binary \"no-such-command-x\" could not be found"
    );
    client.kill().await;
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn shutdown_signals_then_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    let req = task(
        dir.path(),
        "trap 'echo got TERM' TERM; sleep 1000 & echo $! > child.pid; while :; do sleep 0.1; done",
    );
    prepare(&req);
    let launched = exec
        .launch(req)
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    let pidfile = dir.path().join("child.pid");
    for _ in 0..500 {
        if std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.trim().is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(child));
    exec.shutdown(ShutdownRequest {
        signal: "SIGTERM".into(),
        grace_period: Duration::from_millis(500).as_nanos() as i64,
    })
    .await
    .unwrap();
    let state = exec
        .wait(WaitRequest {})
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert_eq!(state.pid, launched.pid);
    assert_eq!(
        state.signal, 9,
        "the trap kept it alive: killed after the grace period"
    );
    assert!(std::fs::read_to_string(dir.path().join("stdout"))
        .unwrap()
        .contains("got TERM"));
    for _ in 0..100 {
        if !alive(child) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(child), "no orphan left");
    let e = exec
        .shutdown(ShutdownRequest {
            signal: "SIGBOGUS".into(),
            grace_period: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "error unknown signal given for shutdown: SIGBOGUS"
    );
    client.kill().await;
}

#[tokio::test]
async fn stats_stream_samples_with_measured_fields() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    let req = task(dir.path(), "while :; do :; done");
    prepare(&req);
    exec.launch(req).await.unwrap();
    let mut stream = exec
        .stats(StatsRequest {
            interval: Duration::from_millis(200).as_nanos() as i64,
        })
        .await
        .unwrap()
        .into_inner();
    let _first = stream.message().await.unwrap().unwrap();
    let second = stream.message().await.unwrap().unwrap().stats.unwrap();
    assert!(second.timestamp.is_some());
    let agg = second.agg_resource_usage.unwrap();
    let mem = agg.memory.unwrap();
    assert!(mem.rss > 0);
    assert_eq!(mem.measured_fields, vec![0, 6], "RSS, Swap");
    let cpu = agg.cpu.unwrap();
    assert_eq!(
        cpu.measured_fields,
        vec![0, 1, 5],
        "System Mode, User Mode, Percent"
    );
    assert!(cpu.percent > 0.0);
    assert!(!second.resource_usage_by_pid.is_empty());
    exec.shutdown(ShutdownRequest {
        signal: "SIGKILL".into(),
        grace_period: 0,
    })
    .await
    .unwrap();
    client.kill().await;
}

#[tokio::test]
async fn exec_returns_combined_output_and_exit_code_and_honours_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    let deadline = |secs| {
        Some(prost_types::Timestamp::from(
            SystemTime::now() + Duration::from_secs(secs),
        ))
    };
    let r = exec
        .exec(ExecRequest {
            deadline: deadline(10),
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "echo out; echo err >&2; exit 7".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.exit_code, 7);
    assert_eq!(String::from_utf8_lossy(&r.output), "out\nerr\n");
    let r = exec
        .exec(ExecRequest {
            deadline: deadline(1),
            cmd: "sleep".into(),
            args: vec!["30".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.exit_code, -1, "killed at the deadline");
    let e = exec
        .exec(ExecRequest {
            deadline: None,
            cmd: "true".into(),
            args: vec![],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("deadline"), "{e}");
    client.kill().await;
}

/// Nomad's reference vectors (plugins/drivers/testutils/exec_testing.go).
#[tokio::test]
async fn exec_streaming_on_pipes_and_on_a_pty() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());

    let msgs = vec![exec_stream::setup(
        &[
            "/bin/sh",
            "-c",
            "echo hello stdout; echo hello stderr >&2; exit 43",
        ],
        false,
    )];
    let mut out = exec
        .exec_streaming(futures::stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let (mut stdout, mut stderr, mut closes, mut code) = (Vec::new(), Vec::new(), 0, None);
    while let Some(m) = out.message().await.unwrap() {
        assert!(code.is_none(), "nothing after the exit message");
        if let Some(o) = m.stdout {
            stdout.extend(o.data);
            closes += o.close as u32;
        }
        if let Some(e) = m.stderr {
            stderr.extend(e.data);
            closes += e.close as u32;
        }
        if m.exited {
            assert_eq!(closes, 2, "both streams closed before the exit message");
            code = m.result.map(|r| r.exit_code);
        }
    }
    assert_eq!(stdout, b"hello stdout\n");
    assert_eq!(stderr, b"hello stderr\n");
    assert_eq!(code, Some(43));

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(exec_stream::setup(
        &["/bin/sh", "-c", "sleep 1; stty size"],
        true,
    ))
    .await
    .unwrap();
    for (h, w) in [(50, 40), (100, 100)] {
        tx.send(ExecTaskStreamingRequest {
            tty_size: Some(TerminalSize {
                height: h,
                width: w,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut out = exec
        .exec_streaming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut text, mut code) = (Vec::new(), None);
    while let Some(m) = out.message().await.unwrap() {
        if let Some(o) = m.stdout {
            text.extend(o.data);
        }
        if m.exited {
            code = m.result.map(|r| r.exit_code);
        }
    }
    drop(tx);
    assert_eq!(String::from_utf8_lossy(&text), "100 100\r\n");
    assert_eq!(code, Some(0));

    // stdin reaches the command; close ends its input.
    let msgs = vec![
        exec_stream::setup(&["cat"], false),
        ExecTaskStreamingRequest {
            stdin: Some(ExecTaskStreamingIoOperation {
                data: b"echoed\n".to_vec(),
                close: true,
            }),
            ..Default::default()
        },
    ];
    let mut out = exec
        .exec_streaming(futures::stream::iter(msgs).chain(futures::stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = out.message().await.unwrap() {
        if let Some(o) = m.stdout {
            got.extend(o.data);
        }
    }
    assert_eq!(got, b"echoed\n");

    let e = exec
        .exec_streaming(futures::stream::iter(vec![
            ExecTaskStreamingRequest::default(),
        ]))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("first message should always be setup"),
        "{e}"
    );
    client.kill().await;
}

#[tokio::test]
async fn memory_limit_lands_in_the_task_cgroup_and_an_oom_kill_is_reported() {
    if goplugin::nomad::executor::cgroups::detect_mode()
        != goplugin::nomad::executor::cgroups::CgroupMode::V1
    {
        eprintln!("skipping: this test reads cgroup v1 files; the host has none");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = task(
        dir.path(),
        "cat /proc/self/cgroup; a=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived",
    );
    req.resources = Some(Resources {
        allocated_resources: Some(AllocatedTaskResources {
            memory: Some(AllocatedMemoryResources {
                memory_mb: 64,
                memory_max_mb: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let state = run_task(&mut exec, req).await;
    let cg = format!("/sys/fs/cgroup/memory/goplugin/{}", client.pid());
    let limit = std::fs::read_to_string(format!("{cg}/memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert!(
        out.contains(&format!("memory:/goplugin/{}", client.pid())),
        "{out}"
    );
    assert!(!out.contains("survived"), "{out}");
    assert_eq!(state.signal, 9, "{state:?}");
    assert!(state.oom_killed, "the kernel reported the OOM kill");
    // The executor itself stays out of the task's memory cgroup (hashicorp/nomad#4495).
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", client.pid())).unwrap();
    assert!(!own.contains("/goplugin/"), "{own}");
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    assert!(
        !Path::new(&cg).exists(),
        "task cgroup removed after shutdown"
    );
    client.kill().await;
}

#[tokio::test]
async fn a_reattached_client_waits_measures_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let first = launch_executor(dir.path()).await;
    let req = task(dir.path(), "sleep 1000");
    prepare(&req);
    let pid = ExecutorClient::new(first.channel())
        .launch(req)
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap()
        .pid;
    let cfg = serde_json::to_string(&first.reattach_config()).unwrap();
    drop(first); // the agent dies; executor and task go on
    let again = Client::reattach(&serde_json::from_str(&cfg).unwrap())
        .await
        .unwrap();
    let mut exec = ExecutorClient::new(again.channel());
    assert_eq!(
        exec.version(VersionRequest {})
            .await
            .unwrap()
            .into_inner()
            .version,
        "2.0.0"
    );
    let mut stats = exec
        .stats(StatsRequest { interval: 0 })
        .await
        .unwrap()
        .into_inner();
    let s = stats.message().await.unwrap().unwrap().stats.unwrap();
    assert!(s.resource_usage_by_pid.contains_key(&pid.to_string()));
    exec.shutdown(ShutdownRequest {
        signal: "SIGTERM".into(),
        grace_period: Duration::from_secs(1).as_nanos() as i64,
    })
    .await
    .unwrap();
    let state = exec
        .wait(WaitRequest {})
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert_eq!((state.pid, state.signal), (pid, 15));
    again.kill().await;
}

#[test]
fn missing_json_argument_is_nomads_error() {
    let out = Command::new(BIN).arg("executor").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("json configuration not provided"));
}

/// Nomad never rotates `executor.out` and drivers always ask for `debug`: the transport's
/// per-frame events (h2, hyper, tower) must not land there, or the 1 s Stats stream alone writes
/// tens of MB a day per task. Only the executor's own lines do.
#[tokio::test]
async fn executor_out_at_debug_holds_no_transport_internals() {
    let dir = tempfile::tempdir().unwrap();
    let client = launch_executor(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    for _ in 0..50 {
        exec.version(VersionRequest {}).await.unwrap();
    }
    let mut stats = exec
        .stats(StatsRequest {
            interval: Duration::from_millis(10).as_nanos() as i64,
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..20 {
        stats.message().await.unwrap().unwrap();
    }
    drop(stats);
    client.kill().await;
    let log = std::fs::read_to_string(dir.path().join("executor.out")).unwrap();
    // h2's frame events carry a `frame` field and sit in its `Connection` span.
    let internal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"frame\":") || l.contains("executor.Connection"))
        .collect();
    assert!(
        internal.is_empty(),
        "{} transport lines, e.g. {:?}",
        internal.len(),
        internal.first()
    );
    assert!(log.len() < 16 * 1024, "{} bytes for 70 calls", log.len());
}
