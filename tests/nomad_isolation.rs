//! The isolated executor side by side with Nomad's own (`$NOMAD_BIN executor
//! '{"FSIsolation":true,…}'`, runc's libcontainer inside): the same exec-driver LaunchRequests to
//! both, on identical chroots, and what a user sees inside compared — `ls /`, the mounts that
//! matter, the processes of a private PID namespace, `id`, the five capability sets for root and
//! `nobody`, the hostname, `/proc/self/cgroup`, an OOM kill, cgroups removed at Shutdown, and
//! `Exec`/`ExecStreaming` with and without a PTY. Skips with one line without a Nomad binary
//! (`NOMAD_BIN`) or without root and cgroup v1.

mod common;

use common::exec_stream;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::nomad::{reference, Generation, Impl, Reference, RUST_BIN};
use goplugin::nomad;
use goplugin::proto::drivers::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources, LinuxResources,
    Resources,
};
use goplugin::proto::executor::executor_client::ExecutorClient;
use goplugin::proto::executor::*;
use goplugin::Client;
use tonic::transport::Channel;

fn usable() -> Option<&'static Reference> {
    let r = reference()?;
    if !nix::unistd::geteuid().is_root()
        || !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
    {
        eprintln!("skipping: needs root and cgroup v1");
        return None;
    }
    Some(r)
}

/// One implementation's executor with its own chroot task dir `<tmp>/<alloc>/web`.
struct Side {
    which: Impl,
    _tmp: tempfile::TempDir,
    alloc: String,
    dir: PathBuf,
    client: Client,
    exec: ExecutorClient<Channel>,
    pids: Vec<u32>,
    uuid_cgroup: Option<String>,
}

impl Side {
    async fn start(r: &Reference, which: Impl) -> Side {
        let tmp = tempfile::tempdir().unwrap();
        let alloc = common::nomad::unique_id();
        let dir = tmp.path().join(&alloc).join("web");
        std::fs::create_dir_all(&dir).unwrap();
        common::chroot::build(&dir);
        let (total, cores) = common::nomad::compute();
        let log = dir.parent().unwrap().join("executor.out");
        let mut argv =
            serde_json::json!({"LogFile": log, "LogLevel": "debug", "FSIsolation": true});
        match r.generation {
            Generation::V1_6 => argv["CpuTotalTicks"] = total.into(),
            Generation::V1_7Plus => argv["Compute"] = serde_json::json!({"tc": total, "nc": cores}),
        }
        let bin = match which {
            Impl::Go => r.bin.clone(),
            Impl::Rust => PathBuf::from(RUST_BIN),
        };
        let mut cmd = Command::new(bin);
        cmd.arg("executor").arg(argv.to_string());
        let client = Client::builder(cmd, nomad::handshake())
            .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
            .port_range(14000, 14512)
            .stdin(Stdio::null())
            .start()
            .await
            .unwrap_or_else(|e| panic!("{} executor starts: {e}", which.name()));
        let exec = ExecutorClient::new(client.channel());
        let pids = vec![client.pid()];
        Side {
            which,
            _tmp: tmp,
            alloc,
            dir,
            client,
            exec,
            pids,
            uuid_cgroup: None,
        }
    }

    fn out_path(&self, name: &str) -> PathBuf {
        self.dir.parent().unwrap().join(name)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.out_path("stdout")).unwrap_or_default()
    }

    /// The exec driver's Launch for this generation (spec §6, nomad-versions.md §3).
    fn request(&self, r: &Reference, script: &str, user: &str, memory_mb: i64) -> LaunchRequest {
        for f in ["stdout", "stderr"] {
            std::fs::write(self.out_path(f), b"").unwrap();
        }
        LaunchRequest {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            stdout_path: self.out_path("stdout").display().to_string(),
            stderr_path: self.out_path("stderr").display().to_string(),
            env: vec!["PATH=/bin".into(), "NOMAD_TASK_NAME=web".into()],
            user: user.into(),
            task_dir: self.dir.display().to_string(),
            resource_limits: true,
            default_pid_mode: "private".into(),
            default_ipc_mode: "private".into(),
            capabilities: goplugin::nomad::executor::isolation::capabilities::NOMAD_DEFAULTS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            resources: Some(Resources {
                allocated_resources: Some(AllocatedTaskResources {
                    memory: Some(AllocatedMemoryResources {
                        memory_mb,
                        memory_max_mb: 0,
                    }),
                    cpu: Some(AllocatedCpuResources { cpu_shares: 500 }),
                    ..Default::default()
                }),
                linux_resources: Some(LinuxResources {
                    cpu_shares: 500,
                    // The 1.7+ task runner always names the cpuset partition (`assignCgroup`).
                    cpuset_cgroup: match r.generation {
                        Generation::V1_6 => String::new(),
                        Generation::V1_7Plus => agent_share(),
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
            work_dir: match r.generation {
                Generation::V1_6 => String::new(),
                Generation::V1_7Plus => "/".into(),
            },
            ..Default::default()
        }
    }

    async fn launch(&mut self, req: LaunchRequest) -> u32 {
        let name = self.which.name();
        let state = tokio::time::timeout(Duration::from_secs(30), self.exec.launch(req))
            .await
            .unwrap_or_else(|_| panic!("{name} Launch timed out"))
            .unwrap_or_else(|e| panic!("{name} Launch: {}", e.message()))
            .into_inner()
            .process
            .unwrap();
        let pid = state.pid as u32;
        self.pids.push(pid);
        if let Some(f) = common::nomad::cgroups_of(&pid.to_string()).remove("freezer") {
            self.uuid_cgroup = f.strip_prefix("/nomad/").map(str::to_string);
        }
        pid
    }

    async fn wait(&mut self) -> ProcessState {
        let name = self.which.name();
        tokio::time::timeout(Duration::from_secs(30), self.exec.wait(WaitRequest {}))
            .await
            .unwrap_or_else(|_| panic!("{name} Wait timed out"))
            .unwrap_or_else(|e| panic!("{name} Wait: {e}"))
            .into_inner()
            .process
            .unwrap()
    }

    async fn run(&mut self, req: LaunchRequest) -> (ProcessState, String) {
        self.launch(req).await;
        let state = self.wait().await;
        (state, self.stdout())
    }

    /// The task's cgroup directories that exist now, in every hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let names: Vec<String> = [
            Some(format!("{}.web", self.alloc)),
            self.uuid_cgroup.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .filter_map(Result::ok)
        {
            for n in &names {
                let p = e.path().join("nomad").join(n);
                if p.exists() {
                    out.push(p);
                }
            }
        }
        out
    }

    async fn end(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(20),
            self.exec.shutdown(ShutdownRequest::default()),
        )
        .await;
        self.client.kill().await;
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        for d in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// The 1.7+ agent's cpuset partition `/nomad/share` (`cgroupslib.Init`), made here as the agent
/// makes it (cpus and mems of the root) when absent; kept afterwards as the agent keeps it.
fn agent_share() -> String {
    let root = Path::new("/sys/fs/cgroup/cpuset");
    let share = root.join("nomad/share");
    for dir in [root.join("nomad"), share.clone()] {
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read_to_string(root.join(f)).unwrap();
                std::fs::write(dir.join(f), v.trim()).unwrap();
            }
        }
    }
    share.display().to_string()
}

async fn both(r: &Reference) -> [Side; 2] {
    [
        Side::start(r, Impl::Go).await,
        Side::start(r, Impl::Rust).await,
    ]
}

/// Mount points and their read-only flag, as a user inside sees them in `/proc/self/mountinfo`.
fn mount_view(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split_whitespace().collect();
            let point = *f.get(4)?;
            let ro = f.get(5)?.split(',').any(|o| o == "ro");
            let fstype = post.split_whitespace().next()?;
            let interesting = [
                "/",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/proc",
                "/sys",
                "/proc/kcore",
                "/sys/firmware",
                "/proc/sys",
                "/proc/sysrq-trigger",
                "/proc/irq",
                "/proc/bus",
            ];
            interesting
                .contains(&point)
                .then(|| format!("{point} {fstype} {}", if ro { "ro" } else { "rw" }))
        })
        .collect()
}

/// Mirrors TestExecutor_IsolationAndConstraints, TestExecutor_CgroupPaths, TestExecutor_Capabilities
/// (nobody), TestExecutor_configureNamespaces: the same user-visible container from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_task_sees_inside_matches() {
    let Some(r) = usable() else { return };
    // The processes are counted by the shell's own glob: `ls /proc | grep -c` raced the fork
    // of `grep` against `ls` reading /proc, and a count one off failed the comparison once.
    let script = "echo '== ls'; ls /; echo '== procs'; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n; \
                  echo '== id'; id -u; \
                  echo '== caps'; grep ^Cap /proc/self/status; echo '== hostname'; hostname; \
                  echo '== cgroup'; cat /proc/self/cgroup; echo '== mounts'; cat /proc/self/mountinfo; echo '== end'";
    let mut seen = Vec::new();
    for mut side in both(r).await {
        let req = side.request(r, script, "nobody", 64);
        let (state, out) = side.run(req).await;
        assert_eq!(
            state.exit_code,
            0,
            "{}: {out} {}",
            side.which.name(),
            std::fs::read_to_string(side.out_path("stderr")).unwrap_or_default()
        );
        let section = |name: &str| -> String {
            out.split(&format!("== {name}\n"))
                .nth(1)
                .unwrap_or("")
                .split("== ")
                .next()
                .unwrap_or("")
                .to_string()
        };
        let cgroup_lines: Vec<String> = section("cgroup")
            .lines()
            .map(|l| {
                // `<id>:<controllers>:/nomad/<name>` with the name normalised.
                let mut f = l.splitn(3, ':');
                let (_, c, p) = (
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                );
                let p = p.replace(&format!("{}.web", side.alloc), "<alloc>.web");
                let p = match side.uuid_cgroup.as_deref() {
                    Some(u) => p.replace(u, "<uuid>"),
                    None => p,
                };
                format!("{c}:{p}")
            })
            .collect();
        let view = (
            section("ls"),
            section("procs"),
            section("id"),
            section("caps"),
            section("hostname"),
            cgroup_lines,
            mount_view(&section("mounts")),
        );
        seen.push((side.which.name(), view));
        side.end().await;
    }
    let (go, rust) = (&seen[0].1, &seen[1].1);
    assert_eq!(go.0, rust.0, "ls /");
    assert_eq!(go.1, rust.1, "processes in the PID namespace");
    assert_eq!(go.2, rust.2, "uid");
    assert_eq!(go.3, rust.3, "capabilities of nobody");
    assert_eq!(go.4, rust.4, "hostname");
    assert_eq!(go.5, rust.5, "/proc/self/cgroup");
    assert_eq!(go.6, rust.6, "mounts that matter");
}

/// TestExecutor_Capabilities for root, and for nobody with `cap_drop = ["all"]`, `cap_add =
/// ["net_bind_service"]`: the same five sets from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_of_root_and_a_reduced_nobody_match() {
    let Some(r) = usable() else { return };
    // runc gives root the legacy 38 capabilities and fails outright when the host withholds one
    // of them from root itself (some sandboxes drop CAP_SYS_RESOURCE); goplugin gives what it
    // holds. The root row is compared only where both can run it.
    let bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("CapBnd:")
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .unwrap();
    let mut cases = vec![("nobody", vec!["CAP_NET_BIND_SERVICE".to_string()])];
    if bounding & 0x3f_ffff_ffff == 0x3f_ffff_ffff {
        cases.insert(0, ("root", vec!["CAP_CHOWN".to_string()]));
    } else {
        eprintln!("root row skipped: this host's bounding set {bounding:016x} lacks legacy capabilities runc insists on");
    }
    for (user, caps) in cases {
        let mut got = Vec::new();
        for mut side in both(r).await {
            let mut req = side.request(r, "grep ^Cap /proc/self/status", user, 64);
            req.capabilities = caps.clone();
            let (state, out) = side.run(req).await;
            assert_eq!(state.exit_code, 0, "{} {user}: {out}", side.which.name());
            got.push(out);
            side.end().await;
        }
        assert_eq!(got[0], got[1], "{user}: Nomad vs goplugin");
    }
}

/// TestExecutor_OOMKilled and the cgroup half of TestExecutor_IsolationAndConstraints: the limit
/// lands in the task's memory cgroup, an over-limit task is reported OOM-killed by both, and after
/// Shutdown neither leaves a cgroup directory behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_oom_and_cgroup_cleanup_match() {
    let Some(r) = usable() else { return };
    let mut results = Vec::new();
    for mut side in both(r).await {
        let name = side.which.name();
        let req = side.request(r, "sleep 30", "nobody", 48);
        side.launch(req).await;
        let dirs = side.cgroup_dirs();
        let mem = dirs
            .iter()
            .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
            .unwrap_or_else(|| panic!("{name}: no memory cgroup in {dirs:?}"));
        let limit = std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap();
        let mut hierarchies: Vec<String> = dirs
            .iter()
            .map(|d| {
                d.strip_prefix("/sys/fs/cgroup")
                    .unwrap()
                    .iter()
                    .next()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        hierarchies.sort();
        side.exec
            .shutdown(ShutdownRequest {
                signal: "SIGINT".into(),
                grace_period: 100_000_000,
            })
            .await
            .unwrap_or_else(|e| panic!("{name} Shutdown: {e}"));
        side.wait().await;
        std::thread::sleep(Duration::from_millis(200));
        let left = side.cgroup_dirs();
        results.push((limit.trim().to_string(), hierarchies, left.is_empty()));
        side.end().await;
    }
    assert_eq!(results[0].0, results[1].0, "memory.limit_in_bytes");
    assert_eq!(results[0].0, (48u64 << 20).to_string());
    assert_eq!(results[0].1, results[1].1, "hierarchies with a task cgroup");
    assert!(
        results[0].2 && results[1].2,
        "no cgroup left after Shutdown: {results:?}"
    );

    let mut oom = Vec::new();
    for mut side in both(r).await {
        // 32 MiB: runc sets the limit with its own init (this big binary) already inside.
        let req = side.request(r, "tail /dev/zero", "nobody", 32);
        let (state, _) = side.run(req).await;
        oom.push((state.exit_code > 0, state.oom_killed));
        side.end().await;
    }
    assert_eq!(oom[0].0, oom[1].0, "non-zero exit");
    assert!(oom[1].1, "goplugin reports the OOM kill");
    if r.generation == Generation::V1_7Plus {
        assert_eq!(oom[0], oom[1], "1.7+ reports oom_killed");
    }
}

/// `ExecTaskStreamingConformanceTests` and script checks (`Exec`) inside the chroot: the same
/// answers from both, with and without a PTY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_exec_streaming_inside_match() {
    let Some(r) = usable() else { return };
    let mut got = Vec::new();
    for mut side in both(r).await {
        let req = side.request(r, "sleep 60", "nobody", 64);
        side.launch(req).await;
        let exec = side
            .exec
            .exec(ExecRequest {
                deadline: Some((SystemTime::now() + Duration::from_secs(10)).into()),
                cmd: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    "ls /; ls /proc | grep -c '^[0-9]'; exit 3".into(),
                ],
            })
            .await
            .unwrap_or_else(|e| panic!("{} Exec: {e}", side.which.name()))
            .into_inner();
        let pipes = exec_stream::run(
            &mut side.exec,
            vec![
                exec_stream::setup(
                    &[
                        "/bin/sh",
                        "-c",
                        "echo hello stdout; echo hello stderr >&2; cat; ls /; exit 43",
                    ],
                    false,
                ),
                exec_stream::stdin(b"typed\n", true),
            ],
        )
        .await;
        let tty = exec_stream::run(
            &mut side.exec,
            vec![
                exec_stream::setup(&["/bin/sh", "-c", "tty; sleep 1; stty size; id -u"], true),
                exec_stream::resize(40, 50),
                exec_stream::resize(100, 100),
            ],
        )
        .await;
        got.push((
            side.which.name(),
            String::from_utf8_lossy(&exec.output).into_owned(),
            exec.exit_code,
            pipes,
            tty,
        ));
        side.end().await;
    }
    let (go, rust) = (&got[0], &got[1]);
    assert_eq!(go.2, rust.2, "Exec exit code");
    assert_eq!(go.1, rust.1, "Exec output");
    assert_eq!(go.3, rust.3, "ExecStreaming on pipes");
    assert_eq!(
        go.4.stdout.lines().next(),
        rust.4.stdout.lines().next(),
        "the PTY inside"
    );
    assert!(rust.4.stdout.contains("100 100\r\n"), "{:?}", rust.4);
    assert_eq!(go.4.code, rust.4.code, "PTY exit code");
    assert_eq!(
        go.4.stdout.lines().last(),
        rust.4.stdout.lines().last(),
        "ExecStreaming's uid (the task's user in both)"
    );
}
