//! The isolated executor (`goplugin executor '{"FSIsolation":true,…}'`, what Nomad's exec driver
//! starts) over the real protocol, as root on the host's cgroup v1 controllers: each test names
//! the upstream test it mirrors (`drivers/shared/executor/executor_linux_test.go`,
//! `plugins/drivers/testutils/exec_testing.go`). The task dir is a small chroot built from host
//! binaries, laid out as Nomad's `<alloc dir>/<alloc id>/<task>`.

mod common;

use common::exec_stream;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use goplugin::nomad;
use goplugin::proto::drivers::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources, Device,
    LinuxResources, Mount, Resources,
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
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
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
                cpu: Some(AllocatedCpuResources { cpu_shares: 512 }),
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

fn host_bounding() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

fn cap_lines(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("Cap"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// `TestExecutor_Capabilities`: nobody with the defaults has exactly Nomad's mask in all five
/// sets; root has the legacy set; nobody with `cap_drop = ["all"]`, `cap_add =
/// ["net_bind_service"]` has only that.
#[tokio::test]
async fn capabilities_match_nomads_masks() {
    if !usable() {
        return;
    }
    let cases: [(&str, Vec<String>, [&str; 5]); 3] = [
        (
            "nobody",
            goplugin::nomad::executor::isolation::capabilities::NOMAD_DEFAULTS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            ["00000000a80405fb"; 5],
        ),
        (
            "root",
            vec!["CAP_NET_RAW".into()],
            [
                "0000000000000000",
                "0000003fffffffff",
                "0000003fffffffff",
                "0000003fffffffff",
                "0000000000000000",
            ],
        ),
        (
            "nobody",
            vec!["CAP_NET_BIND_SERVICE".into()],
            ["0000000000000400"; 5],
        ),
    ];
    for (user, caps, want) in cases {
        let t = TaskDir::new("caps");
        let client = isolated_executor(t.dir.parent().unwrap(), false).await;
        let mut exec = ExecutorClient::new(client.channel());
        let mut req = exec_request(&t, "grep ^Cap /proc/self/status; id -u");
        req.user = user.into();
        req.capabilities = caps;
        let state = run(&mut exec, req).await;
        assert_eq!(state.exit_code, 0, "{}", t.out("stderr"));
        let out = t.out("stdout");
        let got = cap_lines(&out);
        // A host may withhold capabilities from root itself; nobody gets only what it holds.
        let held = host_bounding();
        let expected: Vec<String> = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
            .iter()
            .zip(want)
            .map(|(k, v)| format!("{k} {:016x}", u64::from_str_radix(v, 16).unwrap() & held))
            .collect();
        assert_eq!(got, expected, "{user}: {out}");
        client.kill().await;
    }
}

/// `TestExecutor_Isolation_PID_and_IPC_hostMode`, and private mode: a private PID namespace
/// shows only the task's processes, host mode the host's.
#[tokio::test]
async fn pid_namespace_private_or_host() {
    if !usable() {
        return;
    }
    for (mode, private) in [("private", true), ("host", false)] {
        let t = TaskDir::new("pids");
        let client = isolated_executor(t.dir.parent().unwrap(), false).await;
        let mut exec = ExecutorClient::new(client.channel());
        let mut req = exec_request(
            &t,
            "ls /proc | grep -c '^[0-9]'; readlink /proc/self/ns/ipc",
        );
        req.default_pid_mode = mode.into();
        req.default_ipc_mode = mode.into();
        let state = run(&mut exec, req).await;
        assert_eq!(state.exit_code, 0, "{}", t.out("stderr"));
        let out = t.out("stdout");
        let count: usize = out.lines().next().unwrap().trim().parse().unwrap();
        let host_ipc = std::fs::read_link("/proc/self/ns/ipc")
            .unwrap()
            .display()
            .to_string();
        if private {
            assert!(count <= 3, "only the task's processes: {out}");
            assert!(!out.contains(&host_ipc), "{out}");
        } else {
            assert!(count > 10, "the host's processes: {out}");
            assert!(out.contains(&host_ipc), "{out}");
        }
        client.kill().await;
    }
}

/// `TestExecutor_OOMKilled`: over a small limit the task is OOM-killed and Wait says so.
#[tokio::test]
async fn oom_kill_is_reported() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("oom");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = exec_request(&t, "tail /dev/zero");
    if let Some(m) = req
        .resources
        .as_mut()
        .and_then(|r| r.allocated_resources.as_mut())
        .and_then(|a| a.memory.as_mut())
    {
        m.memory_mb = 10;
    }
    let state = run(&mut exec, req).await;
    assert!(state.exit_code > 0, "{state:?}");
    assert!(state.oom_killed, "{state:?}");
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    assert!(nomad_dirs(&t).is_empty());
    client.kill().await;
}

/// `TestExecutor_WorkDir`, `TestExecutor_UserEnv`: Nomad 1.7+ runs in `work_dir` with USER,
/// LOGNAME and HOME appended.
#[tokio::test]
async fn work_dir_and_user_env() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("wd");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = exec_request(&t, "pwd; echo $USER $LOGNAME; id -u; id -g");
    req.work_dir = "/etc".into();
    let state = run(&mut exec, req).await;
    assert_eq!(state.exit_code, 0, "{}", t.out("stderr"));
    let out = t.out("stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "/etc");
    assert_eq!(lines[1], "nobody nobody");
    assert_eq!(lines[2], "65534");
    assert_ne!(lines[3], "0", "never the root group");
    client.kill().await;
}

/// Nomad 1.6 (`CpuTotalTicks`): the user comes from the chroot's own passwd file, the cgroup is
/// `/nomad/<uuid>`, cwd `/`; a user missing there is a Launch error.
#[tokio::test]
async fn nomad16_resolves_the_user_inside_the_chroot() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("legacy");
    std::fs::write(
        t.dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ninside:x:4321:4322::/home/inside:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        t.dir.join("etc/group"),
        "inside:x:4322:\nextra:x:4400:inside\n",
    )
    .unwrap();
    let client = isolated_executor(t.dir.parent().unwrap(), true).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = exec_request(
        &t,
        "id -u; id -g; id -G; pwd; echo $HOME; cat /proc/self/cgroup",
    );
    req.user = "inside".into();
    let state = run(&mut exec, req).await;
    assert_eq!(state.exit_code, 0, "{}", t.out("stderr"));
    let out = t.out("stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..5],
        ["4321", "4322", "4322 4400", "/", "/home/inside"],
        "{out}"
    );
    let freezer = lines.iter().find(|l| l.contains(":freezer:")).unwrap();
    let name = freezer.rsplit('/').next().unwrap();
    assert_eq!(name.len(), 36, "a uuid: {freezer}");
    assert!(!freezer.contains(&t.alloc_id));
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    assert!(!Path::new("/sys/fs/cgroup/freezer/nomad")
        .join(name)
        .exists());
    client.kill().await;

    let t = TaskDir::new("legacy");
    let client = isolated_executor(t.dir.parent().unwrap(), true).await;
    let mut exec = ExecutorClient::new(client.channel());
    std::fs::write(t.dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let e = exec.launch(exec_request(&t, "true")).await.unwrap_err();
    assert!(e.message().contains("unable to find user nobody"), "{e:?}");
    client.kill().await;
}

/// `no_pivot_root`: the same container through a chroot after moving the root.
#[tokio::test]
async fn no_pivot_root_chroots_instead() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("chroot");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = exec_request(&t, "ls /; echo pid=$$");
    req.no_pivot_root = true;
    let state = run(&mut exec, req).await;
    assert_eq!(state.exit_code, 0, "{}", t.out("stderr"));
    let out = t.out("stdout");
    assert!(out.contains("secrets\n") && out.contains("pid=1"), "{out}");
    assert!(!out.contains("home\n"), "{out}");
    client.kill().await;
}

/// `TestExecutor_cmdDevices`, `TestExecutor_cmdMounts`, `TestCgroupDeviceRules`: a requested
/// device gets a node and an allow rule; a read-only bind cannot be written, a read-write one
/// can; the mounts are gone from the host afterwards.
#[tokio::test]
async fn devices_and_mounts() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("devmnt");
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("data"), "from the host\n").unwrap();
    let rw = tempfile::tempdir().unwrap();
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = exec_request(
        &t,
        "cat /srv/ro/data; touch /srv/ro/x 2>/dev/null && echo ro-writable; touch /srv/rw/made && echo rw-ok; ls -l /dev/fuse; cat /srv/ro/data > /dev/fuse 2>/dev/null; sleep 5",
    );
    req.user = "root".into();
    req.mounts = vec![
        Mount {
            task_path: "/srv/ro".into(),
            host_path: ro.path().display().to_string(),
            readonly: true,
            ..Default::default()
        },
        Mount {
            task_path: "srv/rw".into(),
            host_path: rw.path().display().to_string(),
            readonly: false,
            propagation_mode: "private".into(),
            ..Default::default()
        },
    ];
    let fuse = Path::new("/dev/fuse").exists();
    if fuse {
        req.devices = vec![Device {
            task_path: "/dev/fuse".into(),
            host_path: "/dev/fuse".into(),
            cgroup_permissions: "rwm".into(),
        }];
    }
    exec.launch(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let out = t.out("stdout");
    assert!(out.contains("from the host"), "{out}");
    assert!(!out.contains("ro-writable"), "{out}");
    assert!(out.contains("rw-ok"), "{out}");
    assert!(rw.path().join("made").exists());
    if fuse {
        assert!(out.contains("10, 229"), "the node: {out}");
        let rules = std::fs::read_to_string(t.cgroup("devices").join("devices.list")).unwrap();
        assert!(rules.contains("c 10:229 rwm"), "{rules}");
    }
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    assert!(mounts_under(&t.dir).is_empty());
    client.kill().await;
}

/// Nomad 1.7+'s `ParentDeathSignal`: an executor killed outright takes its task with it.
#[tokio::test]
async fn task_dies_with_a_killed_executor() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("orphan");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let pid = exec
        .launch(exec_request(&t, "sleep 60"))
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap()
        .pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "task {pid} outlived its executor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The dead executor's cgroups stay for whoever cleans up (the driver adopts them).
    for d in nomad_dirs(&t) {
        let _ = std::fs::remove_dir(d);
    }
}

/// `Exec` (script checks) and `ExecStreamingConformanceTests` inside the container: the
/// command sees the chroot, the task's PID namespace, user and capabilities; pipes carry
/// stdout, stderr and the exit code; a PTY made inside honours resizes.
#[tokio::test]
async fn exec_and_exec_streaming_enter_the_container() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("exec");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    exec.launch(exec_request(&t, "sleep 60")).await.unwrap();
    let deadline = SystemTime::now() + Duration::from_secs(10);
    let out = exec
        .exec(ExecRequest {
            deadline: Some(deadline.into()),
            cmd: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "ls /; cat /proc/1/cmdline; echo; id -u; grep CapEff /proc/self/status; exit 3"
                    .into(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let text = String::from_utf8_lossy(&out.output);
    assert_eq!(out.exit_code, 3, "{text}");
    assert!(
        text.contains("secrets\n") && !text.contains("home\n"),
        "{text}"
    );
    assert!(
        text.contains("/bin/sh\0-c\0sleep 60"),
        "the task is pid 1 here: {text}"
    );
    assert!(text.contains("65534\n"), "{text}");
    assert!(text.contains("00000000a80405fb"), "{text}");
    // Deadline: the isolated executor's Exec ends with the context's error.
    let e = exec
        .exec(ExecRequest {
            deadline: Some((SystemTime::now() + Duration::from_millis(300)).into()),
            cmd: "sleep".into(),
            args: vec!["10".into()],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("deadline exceeded"), "{e:?}");

    // Pipes.
    let out = exec_stream::run(
        &mut exec,
        vec![
            exec_stream::setup(
                &[
                    "/bin/sh",
                    "-c",
                    "echo hello stdout; echo hello stderr >&2; cat; exit 43",
                ],
                false,
            ),
            exec_stream::stdin(b"piped in\n", true),
        ],
    )
    .await;
    assert_eq!(out.stdout, "hello stdout\npiped in\n");
    assert_eq!(out.stderr, "hello stderr\n");
    assert_eq!(out.code, Some(43));

    // A PTY from the container's own devpts.
    let out = exec_stream::run(
        &mut exec,
        vec![
            exec_stream::setup(&["/bin/sh", "-c", "tty; sleep 1; stty size"], true),
            exec_stream::resize(50, 40),
            exec_stream::resize(100, 100),
        ],
    )
    .await;
    assert!(
        out.stdout.starts_with("/dev/pts/0\r\n"),
        "the container's first pty: {out:?}"
    );
    assert!(out.stdout.contains("100 100\r\n"), "{out:?}");
    assert_eq!(out.code, Some(0));
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    assert!(nomad_dirs(&t).is_empty());
    client.kill().await;
}

/// Bad input: each a named Launch error, and nothing left behind (no cgroups, no mounts, no
/// processes of the executor besides itself).
#[tokio::test]
async fn bad_requests_are_named_errors_and_leave_nothing() {
    if !usable() {
        return;
    }
    type Edit = fn(&mut LaunchRequest);
    let cases: [(&str, Edit, &str); 9] = [
        (
            "missing task dir",
            |r| r.task_dir = "/nonexistent/alloc/task".into(),
            "task dir /nonexistent/alloc/task does not exist",
        ),
        (
            "command outside the chroot",
            |r| r.cmd = "kill".into(),
            "file kill not found under path",
        ),
        (
            "missing mount source",
            |r| {
                r.mounts = vec![Mount {
                    task_path: "/m".into(),
                    host_path: "/nonexistent/src".into(),
                    ..Default::default()
                }]
            },
            "mount source /nonexistent/src does not exist",
        ),
        (
            "unknown capability",
            |r| r.capabilities = vec!["CAP_FLYING".into()],
            "unknown capability \"CAP_FLYING\"",
        ),
        (
            "invalid pid mode",
            |r| r.default_pid_mode = "shared".into(),
            "invalid pid mode \"shared\"",
        ),
        (
            "invalid ipc mode",
            |r| r.default_ipc_mode = "nope".into(),
            "invalid ipc mode \"nope\"",
        ),
        (
            "missing device",
            |r| {
                r.devices = vec![Device {
                    task_path: "/dev/x".into(),
                    host_path: "/dev/nonexistent-device".into(),
                    cgroup_permissions: "rwm".into(),
                }]
            },
            "device /dev/nonexistent-device: does not exist",
        ),
        (
            "a file as a device",
            |r| {
                r.devices = vec![Device {
                    task_path: "/dev/x".into(),
                    host_path: "/etc/hostname".into(),
                    cgroup_permissions: "rwm".into(),
                }]
            },
            "is not a character or block device",
        ),
        (
            "unknown user",
            |r| r.user = "no-such-user-x".into(),
            "no-such-user-x",
        ),
    ];
    for (name, edit, want) in cases {
        let t = TaskDir::new("bad");
        let client = isolated_executor(t.dir.parent().unwrap(), false).await;
        let mut exec = ExecutorClient::new(client.channel());
        let mut req = exec_request(&t, "echo ran");
        edit(&mut req);
        let e = exec.launch(req).await.unwrap_err();
        assert!(e.message().contains(want), "{name}: {}", e.message());
        assert!(nomad_dirs(&t).is_empty(), "{name}: {:?}", nomad_dirs(&t));
        assert!(mounts_under(&t.dir).is_empty(), "{name}");
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", client.pid()))
                .unwrap_or_default();
        assert!(children.trim().is_empty(), "{name}: children {children}");
        assert!(t.out("stdout").is_empty(), "{name}: the task never ran");
        client.kill().await;
    }
    // A stage failure inside the container (an executable path that is not one) is reported
    // the same way, with the stage's own words.
    let t = TaskDir::new("bad");
    std::fs::write(t.dir.join("local/notexec"), "\x7fELF garbage").unwrap();
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = exec_request(&t, "");
    req.cmd = "notexec".into();
    req.args = vec![];
    let e = exec.launch(req).await.unwrap_err();
    assert!(
        e.message().contains("failed to exec /local/notexec"),
        "{}",
        e.message()
    );
    assert!(nomad_dirs(&t).is_empty());
    client.kill().await;
}

/// Not root: namespaces are unavailable, and the Launch says so instead of running unisolated.
#[tokio::test]
async fn non_root_launch_is_refused_by_name() {
    if !nix::unistd::geteuid().is_root() || Command::new("setpriv").arg("--help").output().is_err()
    {
        eprintln!("skipping: needs root and setpriv to start the executor as nobody");
        return;
    }
    let t = TaskDir::new("nonroot");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "executor",
    ])
    .arg(r#"{"LogFile":"","LogLevel":"debug","FSIsolation":true,"Compute":{"tc":4000,"nc":2}}"#);
    let client = Client::builder(cmd, nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .start()
        .await
        .expect("executor starts as nobody");
    let mut exec = ExecutorClient::new(client.channel());
    let e = exec.launch(exec_request(&t, "echo ran")).await.unwrap_err();
    assert!(
        e.message().contains("the isolated executor needs root")
            && e.message().contains("uid 65534"),
        "{}",
        e.message()
    );
    assert!(t.out("stdout").is_empty());
    client.kill().await;
}

/// `TestExecutor_SignalCatching`: SIGTERM to a 1.7+ isolated executor stops the container at
/// once (and the executor keeps answering).
#[tokio::test]
async fn sigterm_to_the_executor_stops_the_container() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("sigterm");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    exec.launch(exec_request(&t, "sleep 60")).await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let state = tokio::time::timeout(Duration::from_secs(2), exec.wait(WaitRequest {}))
        .await
        .expect("the task stops within 2 s of the executor's SIGTERM")
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert_eq!(state.signal, 9, "{state:?}");
    let v = exec.version(VersionRequest {}).await.unwrap().into_inner();
    assert_eq!(v.version, "2.0.0");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !nomad_dirs(&t).is_empty() {
        assert!(std::time::Instant::now() < deadline, "{:?}", nomad_dirs(&t));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.kill().await;
}

/// `TestExecutor_WaitExitSignal` (the Stats half) for the isolated executor: samples come from
/// the task's cgroups with Nomad's isolated Measured lists and non-zero memory.
#[tokio::test]
async fn stats_come_from_the_cgroups() {
    if !usable() {
        return;
    }
    let t = TaskDir::new("stats");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let pid = exec
        .launch(exec_request(&t, "while :; do :; done"))
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap()
        .pid;
    let mut stream = exec
        .stats(StatsRequest {
            interval: 200_000_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    for _ in 0..4 {
        last = stream.next().await.map(|m| m.unwrap());
    }
    let stats = last.unwrap().stats.unwrap();
    let agg = stats.agg_resource_usage.unwrap();
    let mem = agg.memory.unwrap();
    let cpu = agg.cpu.unwrap();
    assert_eq!(mem.measured_fields.len(), 7, "{mem:?}");
    assert!(mem.usage > 0 && mem.max_usage >= mem.usage, "{mem:?}");
    assert_eq!(cpu.measured_fields.len(), 5, "{cpu:?}");
    assert!(cpu.percent > 20.0, "a busy loop: {cpu:?}");
    assert!(cpu.total_ticks > 0.0);
    assert!(
        stats.resource_usage_by_pid.contains_key(&pid.to_string()),
        "{:?}",
        stats.resource_usage_by_pid.keys()
    );
    exec.shutdown(ShutdownRequest::default()).await.unwrap();
    client.kill().await;
}

/// `network_isolation`: the task joins the named network namespace (one made with `ip netns`).
#[tokio::test]
async fn joins_the_requested_network_namespace() {
    if !usable() {
        return;
    }
    let name = format!("goplugin-iso-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &name]).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipping: `ip netns add` is not available here");
        return;
    }
    let path = format!("/run/netns/{name}");
    let want = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let t = TaskDir::new("net");
    let client = isolated_executor(t.dir.parent().unwrap(), false).await;
    let mut exec = ExecutorClient::new(client.channel());
    let mut req = exec_request(&t, "readlink /proc/self/ns/net");
    req.network_isolation = Some(goplugin::proto::drivers::NetworkIsolationSpec {
        mode: 1,
        path: path.clone(),
        ..Default::default()
    });
    let state = run(&mut exec, req).await;
    let _ = Command::new("ip").args(["netns", "delete", &name]).status();
    assert_eq!(state.exit_code, 0, "{}", t.out("stderr"));
    assert_eq!(t.out("stdout").trim(), format!("net:[{want}]"));
    client.kill().await;
}
