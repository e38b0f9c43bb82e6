//! `goplugin executor` driven as each Nomad generation drives it (spec nomad-versions.md §1.1,
//! §3, §4.3, §10.1): a 1.6 agent's argv (`CpuTotalTicks`) and raw_exec Launch
//! (`basic_process_cgroup`, no resources: a freezer cgroup of the executor's own, killed through
//! and removed), a 1.7+ agent's (`Compute`, resources with the agent's cgroups: joined, limits
//! written, never removed), and the bad input around them: an override that is no cgroup, two
//! racing Launches, cgroups left by an executor that was SIGKILLed.
//!
//! The cgroup tests read the host's v1 controllers (these machines run them as root).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use goplugin::nomad;
use goplugin::nomad::executor::cgroups::{detect_mode, CgroupMode};
use goplugin::proto::drivers::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources, LinuxResources,
    Resources,
};
use goplugin::proto::executor::executor_client::ExecutorClient;
use goplugin::proto::executor::*;
use goplugin::Client;

const BIN: &str = env!("CARGO_BIN_EXE_goplugin");
const CG: &str = "/sys/fs/cgroup";

fn v1_as_root() -> bool {
    let ok = detect_mode() == CgroupMode::V1 && nix::unistd::geteuid().is_root();
    if !ok {
        eprintln!(
            "skipping: needs root and cgroup v1 controllers (mode {:?})",
            detect_mode()
        );
    }
    ok
}

async fn executor_with(argv: serde_json::Value) -> Client {
    let mut cmd = Command::new(BIN);
    cmd.arg("executor").arg(argv.to_string());
    Client::builder(cmd, nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .start()
        .await
        .expect("executor starts")
}

async fn executor_16(dir: &Path) -> Client {
    executor_with(serde_json::json!({
        "LogFile": dir.join("executor.out"), "LogLevel": "debug",
        "FSIsolation": false, "CpuTotalTicks": 4000,
    }))
    .await
}

async fn executor_17(dir: &Path) -> Client {
    executor_with(serde_json::json!({
        "LogFile": dir.join("executor.out"), "LogLevel": "debug",
        "FSIsolation": false, "Compute": {"tc": 4000, "nc": 2},
    }))
    .await
}

fn request(task_dir: &Path, script: &str) -> LaunchRequest {
    let out = task_dir.join("stdout");
    let err = task_dir.join("stderr");
    std::fs::write(&out, b"").unwrap();
    std::fs::write(&err, b"").unwrap();
    LaunchRequest {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        stdout_path: out.display().to_string(),
        stderr_path: err.display().to_string(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        task_dir: task_dir.display().to_string(),
        ..Default::default()
    }
}

async fn wait_for_file(path: &Path) -> String {
    for _ in 0..500 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with("END\n") {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never completed", path.display());
}

/// `/proc/PID/cgroup` as controller -> path.
fn cgroups_of(pid: u32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((ctrls.to_string(), path.to_string()))
        })
        .flat_map(|(ctrls, path)| {
            ctrls
                .split(',')
                .map(|c| (c.to_string(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn alive(pid: u32) -> bool {
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

/// Nomad 1.6 raw_exec as root (`basic_process_cgroup`, no resources): the task sits in a
/// freezer cgroup `/nomad/<uuid>` and nowhere else of ours; the executor stays out of it
/// (Go's 1.6 executor joins it itself: a deliberate difference, nomad#4495); Shutdown kills
/// through the freezer, so even a child that left the process group with `setsid` dies; the
/// directory is removed. Mirrors Nomad 1.6 `ConfigureBasicCgroups` + `group_killer.go`.
#[tokio::test]
#[allow(deprecated)]
async fn nomad_16_basic_cgroup_is_a_freezer_of_our_own_killed_through_and_removed() {
    if !v1_as_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let client = executor_16(dir.path()).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = request(
        dir.path(),
        "setsid sleep 600 & echo $! > escaped.pid; cat /proc/self/cgroup; echo END; exec sleep 600",
    );
    req.basic_process_cgroup = true;
    let pid = exec
        .launch(req)
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap()
        .pid as u32;
    wait_for_file(&dir.path().join("stdout")).await;
    let task = cgroups_of(pid);
    let freezer = task["freezer"].clone();
    let uuid = freezer
        .strip_prefix("/nomad/")
        .expect("freezer /nomad/<uuid>");
    assert_eq!(uuid.len(), 36, "{freezer}");
    for c in ["memory", "cpu", "pids", "cpuset"] {
        assert!(
            !task[c].contains("goplugin") && !task[c].contains("nomad"),
            "{c}: {task:?}"
        );
    }
    let own = cgroups_of(client.pid());
    assert!(
        !own["freezer"].contains("/nomad/"),
        "executor stays out: {own:?}"
    );
    let escaped: u32 = std::fs::read_to_string(dir.path().join("escaped.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(cgroups_of(escaped)["freezer"], freezer);

    exec.shutdown(ShutdownRequest {
        signal: "SIGTERM".into(),
        grace_period: Duration::from_millis(200).as_nanos() as i64,
    })
    .await
    .unwrap();
    assert!(!alive(pid) && !alive(escaped), "nothing left in the cgroup");
    assert!(
        !Path::new(&format!("{CG}/freezer{freezer}")).exists(),
        "the executor removes the cgroup it made"
    );
    client.kill().await;
}

/// The cgroups a Nomad 1.7+ agent makes for a task on cgroup v1 (`cgroupslib`'s wrangler):
/// freezer, cpu and memory `/nomad/<alloc>.<task>`, cpuset partition `/nomad/share`.
struct AgentCgroups {
    alloc: String,
    task: String,
    dirs: Vec<PathBuf>,
    cpuset: PathBuf,
}

impl AgentCgroups {
    fn make(alloc: &str, task: &str) -> AgentCgroups {
        let mut dirs = Vec::new();
        for c in ["freezer", "cpu", "memory"] {
            let d = PathBuf::from(format!("{CG}/{c}/nomad/{alloc}.{task}"));
            std::fs::create_dir_all(&d).unwrap();
            dirs.push(d);
        }
        let cpuset = PathBuf::from(format!("{CG}/cpuset/nomad/share"));
        for d in [cpuset.parent().unwrap(), cpuset.as_path()] {
            if !d.exists() {
                std::fs::create_dir(d).unwrap();
            }
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let parent = std::fs::read_to_string(d.parent().unwrap().join(f)).unwrap();
                std::fs::write(d.join(f), parent.trim()).unwrap();
            }
        }
        AgentCgroups {
            alloc: alloc.into(),
            task: task.into(),
            dirs,
            cpuset,
        }
    }

    fn resources(&self, memory_mb: i64) -> Resources {
        Resources {
            allocated_resources: Some(AllocatedTaskResources {
                cpu: Some(AllocatedCpuResources { cpu_shares: 300 }),
                memory: Some(AllocatedMemoryResources {
                    memory_mb,
                    memory_max_mb: 0,
                }),
                networks: vec![],
            }),
            linux_resources: Some(LinuxResources {
                cpu_shares: 300,
                cpuset_cgroup: self.cpuset.display().to_string(),
                ..Default::default()
            }),
            ports: vec![],
        }
    }
}

impl Drop for AgentCgroups {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Nomad 1.7+ raw_exec: the task joins the agent's freezer, cpu and memory cgroups and the
/// cpuset partition; memory and CPU limits are written into them; the executor is in none of
/// them (nomad#4495, #24340); Shutdown leaves every directory to the agent. Mirrors
/// `TestUniversalExecutor_cg1_no_executor_pid` and `TestUniversalExecutor_setOomAdj`.
#[tokio::test]
async fn nomad_17_task_joins_the_agents_cgroups_which_stay() {
    if !v1_as_root() {
        return;
    }
    let alloc = format!("a1b2c3d4-0000-4000-8000-{:012}", std::process::id());
    let root = tempfile::tempdir().unwrap();
    let task_dir = root.path().join(&alloc).join("web");
    std::fs::create_dir_all(&task_dir).unwrap();
    let agent = AgentCgroups::make(&alloc, "web");
    let client = executor_17(&task_dir).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = request(
        &task_dir,
        "cat /proc/self/oom_score_adj; echo END; exec sleep 600",
    );
    req.resources = Some(agent.resources(96));
    req.oom_score_adj = 250;
    let pid = exec
        .launch(req)
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap()
        .pid as u32;
    let out = wait_for_file(&task_dir.join("stdout")).await;
    assert_eq!(out, "250\nEND\n");
    let scope = format!("/nomad/{}.{}", agent.alloc, agent.task);
    let cg = cgroups_of(pid);
    for c in ["freezer", "cpu", "memory"] {
        assert_eq!(cg[c], scope, "{c}: {cg:?}");
    }
    assert_eq!(cg["cpuset"], "/nomad/share");
    let own = cgroups_of(client.pid());
    for c in ["freezer", "cpu", "memory", "cpuset"] {
        assert!(!own[c].starts_with("/nomad"), "executor in {c}: {own:?}");
    }
    let read = |c: &str, f: &str| {
        std::fs::read_to_string(format!("{CG}/{c}{scope}/{f}"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.shares"), "300");
    assert_eq!(read("freezer", "cgroup.procs"), pid.to_string());

    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    assert!(!alive(pid));
    for d in &agent.dirs {
        assert!(d.exists(), "{} is the agent's to remove", d.display());
    }
    client.kill().await;
}

/// A `cgroup_v1_override` that names no cgroup is Nomad's Launch error, and the task never runs
/// (`TestExecutor_InvalidCgroup`); no cgroup of ours is left either.
#[tokio::test]
async fn an_override_that_is_no_cgroup_fails_launch_and_leaves_nothing() {
    if !v1_as_root() {
        return;
    }
    let alloc = format!("e5f6a7b8-0000-4000-8000-{:012}", std::process::id());
    let root = tempfile::tempdir().unwrap();
    let task_dir = root.path().join(&alloc).join("web");
    std::fs::create_dir_all(&task_dir).unwrap();
    let agent = AgentCgroups::make(&alloc, "web");
    let client = executor_17(&task_dir).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = request(&task_dir, "echo ran > ran; echo END");
    req.resources = Some(agent.resources(64));
    req.cgroup_v1_override = HashMap::from([("pids".into(), "no/such/cgroup".into())]);
    let e = exec.launch(req).await.unwrap_err();
    assert!(
        e.message().starts_with("unable to configure cgroups:")
            && e.message().contains("/sys/fs/cgroup/pids/no/such/cgroup"),
        "{e}"
    );
    assert!(!task_dir.join("ran").exists());
    assert!(!Path::new(&format!("{CG}/pids/no")).exists());
    client.kill().await;
}

/// Two Launches racing on one executor: exactly one task runs (the check and the store were
/// once separated by awaits, and both spawned).
#[tokio::test]
async fn racing_launches_start_one_task() {
    let dir = tempfile::tempdir().unwrap();
    let client = executor_17(dir.path()).await;
    let channel = client.channel();
    // A FIFO with no reader holds the first Launch inside its output open, like logmon's FIFO
    // before logmon reads it, so the second one surely arrives while the first is in flight.
    let fifo = dir.path().join("out.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut req = request(dir.path(), "echo one >> launched; exec sleep 600");
    req.stdout_path = fifo.display().to_string();
    let (a, b) = (req.clone(), req);
    let first = tokio::spawn({
        let mut exec = ExecutorClient::new(channel.clone());
        async move { exec.launch(a).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        ExecutorClient::new(channel.clone()).launch(b),
    )
    .await
    .expect("the second Launch is refused at once, not queued behind the first");
    let e = second.unwrap_err();
    assert!(e.message().contains("in progress"), "{e}");
    let reader = std::fs::File::open(&fifo).unwrap();
    let launched = first.await.unwrap().unwrap().into_inner().process.unwrap();
    assert!(launched.pid > 1);
    let again = ExecutorClient::new(channel.clone())
        .launch(request(dir.path(), "true"))
        .await
        .unwrap_err();
    assert!(again.message().contains("already launched"), "{again}");
    for _ in 0..100 {
        if dir.path().join("launched").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("launched")).unwrap(),
        "one\n"
    );
    ExecutorClient::new(channel)
        .shutdown(ShutdownRequest::default())
        .await
        .unwrap();
    drop(reader);
    client.kill().await;
}

/// An executor killed with SIGKILL cannot remove its own cgroups (`/goplugin/<pid>`, used
/// outside Nomad); once its task is gone too, the next executor's Launch removes them.
#[tokio::test]
async fn cgroups_of_a_sigkilled_executor_are_swept_by_the_next_launch() {
    if !v1_as_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = executor_17(dir.path()).await;
    let mut req = request(dir.path(), "echo END; exec sleep 600");
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
    let task = ExecutorClient::new(first.channel())
        .launch(req.clone())
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap()
        .pid;
    let executor = first.pid();
    let left = PathBuf::from(format!("{CG}/memory/goplugin/{executor}"));
    assert!(left.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(executor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(task),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..200 {
        if !alive(executor) && !alive(task as u32) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first);
    assert!(left.exists(), "a SIGKILLed executor cannot clean up");

    let second = executor_17(dir.path()).await;
    let mut exec = ExecutorClient::new(second.channel());
    req.stdout_path = dir.path().join("stdout2").display().to_string();
    std::fs::write(&req.stdout_path, b"").unwrap();
    exec.launch(req).await.unwrap();
    assert!(!left.exists(), "swept by the next executor");
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    let own = format!("{CG}/memory/goplugin/{}", second.pid());
    assert!(!Path::new(&own).exists());
    second.kill().await;
}

/// Go's decoder matches argv keys case-insensitively: `{"fsisolation":true}` asks for the
/// isolated executor there, so it gets the isolated one here: a Launch that the universal
/// executor would simply run (no task dir) is refused by the isolation checks.
#[tokio::test]
async fn isolation_asked_in_any_casing_gets_the_isolated_executor() {
    for argv in [
        serde_json::json!({"fsisolation": true}),
        serde_json::json!({"FSISOLATION": true, "LogLevel": "debug"}),
    ] {
        let client = executor_with(argv.clone()).await;
        let mut exec = ExecutorClient::new(client.channel());
        let e = exec
            .launch(LaunchRequest {
                cmd: "/bin/true".into(),
                task_dir: "/nonexistent/alloc/task".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        let isolated = e
            .message()
            .contains("task dir /nonexistent/alloc/task does not exist")
            || e.message().contains("the isolated executor needs root");
        assert!(isolated, "{argv}: {}", e.message());
        client.kill().await;
    }
}
