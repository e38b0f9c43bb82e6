//! The isolated executor (`goplugin executor '{"FSIsolation":true,…}'`, what Nomad's exec driver
//! starts) over the real protocol, as root on the host's cgroup v1 controllers: each test names
//! the upstream test it mirrors (`drivers/shared/executor/executor_linux_test.go`,
//! `plugins/drivers/testutils/exec_testing.go`). The task dir is a small chroot built from host
//! binaries, laid out as Nomad's `<alloc dir>/<alloc id>/<task>`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use goplugin::nomad;
use goplugin::proto::drivers::exec_task_streaming_request::{Setup, TerminalSize};
use goplugin::proto::drivers::{
    AllocatedMemoryResources, AllocatedTaskResources, Device, ExecTaskStreamingIoOperation,
    ExecTaskStreamingRequest, LinuxResources, Mount, Resources,
};
use goplugin::proto::executor::executor_client::ExecutorClient;
use goplugin::proto::executor::*;
use goplugin::Client;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_goplugin");

/// Root with namespaces and v1 cgroups, or a printed reason to skip.
fn usable() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: the isolated executor needs root");
        return false;
    }
    if !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        eprintln!("skipping: no cgroup v1 memory controller on this host");
        return false;
    }
    true
}

/// A task dir `<tmp>/<alloc id>/<task>` with a chroot in it.
struct TaskDir {
    _tmp: tempfile::TempDir,
    alloc_id: String,
    task: String,
    dir: PathBuf,
}

impl TaskDir {
    fn new(task: &str) -> TaskDir {
        let tmp = tempfile::tempdir().unwrap();
        let alloc_id = format!("{:08x}-iso-test-{}", std::process::id(), rand_suffix());
        let dir = tmp.path().join(&alloc_id).join(task);
        std::fs::create_dir_all(&dir).unwrap();
        common::chroot::build(&dir);
        TaskDir {
            _tmp: tmp,
            alloc_id,
            task: task.into(),
            dir,
        }
    }

    fn cgroup(&self, controller: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("nomad")
            .join(format!("{}.{}", self.alloc_id, self.task))
    }

    fn out(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.parent().unwrap().join(name)).unwrap_or_default()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}", N.fetch_add(1, Ordering::SeqCst))
}

/// `legacy`: the argv a Nomad 1.6 agent sends (`CpuTotalTicks`), else 1.7+'s `Compute`.
async fn isolated_executor(dir: &Path, legacy: bool) -> Client {
    let mut cfg = serde_json::json!({
        "LogFile": dir.join("executor.out"),
        "LogLevel": "debug",
        "FSIsolation": true,
    });
    if legacy {
        cfg["CpuTotalTicks"] = 4000.into();
    } else {
        cfg["Compute"] = serde_json::json!({"tc": 4000, "nc": 2});
    }
    let mut cmd = Command::new(BIN);
    cmd.arg("executor").arg(cfg.to_string());
    Client::builder(cmd, nomad::handshake())
        .start()
        .await
        .expect("executor starts")
}

/// An exec-driver Launch: `resource_limits`, the driver's default capabilities, user `nobody`.
fn exec_request(t: &TaskDir, script: &str) -> LaunchRequest {
    let out = t.dir.parent().unwrap();
    std::fs::write(out.join("stdout"), b"").unwrap();
    std::fs::write(out.join("stderr"), b"").unwrap();
    LaunchRequest {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        stdout_path: out.join("stdout").display().to_string(),
        stderr_path: out.join("stderr").display().to_string(),
        env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
        user: "nobody".into(),
        task_dir: t.dir.display().to_string(),
        resource_limits: true,
        resources: Some(Resources {
            allocated_resources: Some(AllocatedTaskResources {
                memory: Some(AllocatedMemoryResources {
                    memory_mb: 64,
                    memory_max_mb: 0,
                }),
                ..Default::default()
            }),
            linux_resources: Some(LinuxResources {
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        }),
        default_pid_mode: "private".into(),
        default_ipc_mode: "private".into(),
        capabilities: goplugin::nomad::executor::isolation::capabilities::NOMAD_DEFAULTS
            .iter()
            .map(|c| c.to_string())
            .collect(),
        ..Default::default()
    }
}

async fn wait(exec: &mut ExecutorClient<Channel>) -> ProcessState {
    tokio::time::timeout(Duration::from_secs(30), exec.wait(WaitRequest {}))
        .await
        .expect("task ends")
        .unwrap()
        .into_inner()
        .process
        .unwrap()
}

async fn run(exec: &mut ExecutorClient<Channel>, req: LaunchRequest) -> ProcessState {
    let launched = exec
        .launch(req)
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert!(launched.pid > 0);
    wait(exec).await
}

fn nomad_dirs(t: &TaskDir) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            e.path()
                .join("nomad")
                .join(format!("{}.{}", t.alloc_id, t.task))
        })
        .filter(|p| p.exists())
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&*dir.to_string_lossy()))
        .map(str::to_string)
        .collect()
}

/// `TestExecutor_IsolationAndConstraints`: the chroot is `/`, new mount/PID/IPC namespaces, the
/// memory limit in the task's cgroup in every hierarchy; after Shutdown no cgroup and no mount.
#[tokio::test]
async fn isolation_and_constraints() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("web");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let req = exec_request(
        &t,
        "ls /; echo pid=$$; readlink /proc/self/ns/mnt /proc/self/ns/pid /proc/self/ns/ipc /proc/self/ns/net; cat /proc/self/cgroup; echo greeting=$GREETING user=$USER; sleep 30",
    );
    let launched = exec
        .launch(req)
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    let pid = launched.pid;
    // The cgroups exist, with the limit, in every hierarchy.
    let limit = std::fs::read_to_string(t.cgroup("memory").join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let shares = std::fs::read_to_string(t.cgroup("cpu").join("cpu.shares")).unwrap();
    assert_eq!(shares.trim(), "512");
    for c in ["devices", "pids", "freezer", "cpuset", "blkio", "cpuacct"] {
        let procs = std::fs::read_to_string(t.cgroup(c).join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{c}: {procs}");
    }
    let executor_pid = client.pid();
    let mem_procs = std::fs::read_to_string(t.cgroup("memory").join("cgroup.procs")).unwrap();
    assert!(
        !mem_procs.lines().any(|l| l == executor_pid.to_string()),
        "the executor stays outside"
    );
    let devices = std::fs::read_to_string(t.cgroup("devices").join("devices.list")).unwrap();
    assert!(
        devices.contains("c 1:3 rwm") && !devices.contains("a *:* rwm"),
        "{devices}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = t.out("stdout");
    let lines: Vec<&str> = out.lines().collect();
    let listing: Vec<&str> = lines
        .iter()
        .take_while(|l| !l.starts_with("pid="))
        .copied()
        .collect();
    for entry in [
        "alloc", "bin", "dev", "etc", "local", "proc", "secrets", "sys", "tmp",
    ] {
        assert!(listing.contains(&entry), "{entry} in {listing:?}");
    }
    assert!(
        !listing.contains(&"root") && !listing.contains(&"home"),
        "not the host's /: {listing:?}"
    );
    assert!(out.contains("pid=1\n"), "pid 1 of its namespace: {out}");
    let own = |ns: &str| {
        std::fs::read_link(format!("/proc/self/ns/{ns}"))
            .unwrap()
            .display()
            .to_string()
    };
    for ns in ["mnt", "pid", "ipc"] {
        assert!(!out.contains(&own(ns)), "a new {ns} namespace: {out}");
    }
    assert!(
        out.contains(&own("net")),
        "the host network namespace: {out}"
    );
    let cgroup_lines: Vec<&str> = lines.iter().filter(|l| l.contains(":/")).copied().collect();
    assert!(
        cgroup_lines.iter().any(|l| l.contains(":devices:")),
        "{out}"
    );
    for l in &cgroup_lines {
        assert!(l.contains(":/nomad/"), "every hierarchy: {l}");
    }
    assert!(out.contains("greeting=hi user=nobody"), "{out}");
    // Nothing of the container is visible on the host.
    assert!(
        mounts_under(&t.dir).is_empty(),
        "{:?}",
        mounts_under(&t.dir)
    );
    exec.shutdown(ShutdownRequest {
        signal: "SIGINT".into(),
        grace_period: 100_000_000,
    })
    .await
    .unwrap();
    let state = wait(&mut exec).await;
    assert_eq!(state.signal, 9, "{state:?}");
    assert!(
        nomad_dirs(&t).is_empty(),
        "cgroups removed: {:?}",
        nomad_dirs(&t)
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    client.kill().await;
}
