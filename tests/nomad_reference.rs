//! Differential tests against a real Nomad binary (`NOMAD_BIN`, else `nomad` on `PATH`; every test
//! passes with one `skipping:` line without one). Each test sends the same requests, through this
//! crate's host with Nomad's handshake, first to Nomad's Go helper (`nomad executor <json>`,
//! `nomad logmon`) and then to ours (`goplugin executor <json>`, `goplugin logmon`), and checks
//! both against the behaviour a Nomad user sees and against each other. Requests are built as the
//! raw_exec driver and task runner of the binary's generation build them (spec nomad-versions.md
//! §3); the 1.7+ agent-side cgroups come from the `Alloc` fixture. Each test names the upstream
//! test or behaviour it mirrors (spec nomad-executor-logmon.md §9).
//!
//! Deliberate differences asserted per side (README): the 1.6 Go executor joins its own freezer
//! cgroup, ours puts only the task there (hashicorp/nomad#4495); Go's universal executor never
//! reports `oom_killed`, ours does; Go gives a non-root task the stray supplementary group 0, ours
//! only the user's groups; Go's log rotator over-counts chunks that span lines near the end of a
//! file ("counting quirk", `src/nomad/logmon/rotator.rs`), ours counts each byte once.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::exec_stream;
use common::nomad::{
    alive, cgroup_procs, cgroup_v1_reason, cgroups_of, compute, eventually, is_uuid, parse_cgroups,
    reference, start_executor, start_logmon, within, Alloc, Generation, Impl, Reference, Tracked,
    CGROUP_ROOT, TASK,
};
use futures::StreamExt;
use goplugin::proto::drivers::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources,
    ExecTaskStreamingRequest, ExecTaskStreamingResponse, LinuxResources, Resources,
};
use goplugin::proto::executor::executor_client::ExecutorClient;
use goplugin::proto::executor::*;
use goplugin::proto::logmon::log_mon_client::LogMonClient;
use goplugin::proto::logmon::{StartRequest, StopRequest};
use goplugin::Client;
use tonic::transport::Channel;

/// Bound on any single RPC that should answer at once.
const RPC: Duration = Duration::from_secs(20);
/// Bound on a task that should end by itself or after a kill.
const TASK_END: Duration = Duration::from_secs(30);

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Task resources as the job asks for them (MHz shares, MiB).
#[derive(Clone, Copy)]
struct Ask {
    memory_mb: i64,
    memory_max_mb: i64,
    cpu_shares: i64,
}

/// Nomad's defaults for a task without a `resources` block.
const DEFAULT_ASK: Ask = Ask {
    memory_mb: 300,
    memory_max_mb: 0,
    cpu_shares: 100,
};

/// `drivers.Resources` as the 1.7+ task runner fills it (`buildTaskConfig`, `assignCgroup`).
fn resources(ask: Ask) -> Resources {
    let (total_mhz, _) = compute();
    Resources {
        allocated_resources: Some(AllocatedTaskResources {
            cpu: Some(AllocatedCpuResources {
                cpu_shares: ask.cpu_shares,
            }),
            memory: Some(AllocatedMemoryResources {
                memory_mb: ask.memory_mb,
                memory_max_mb: ask.memory_max_mb,
            }),
            networks: vec![],
        }),
        linux_resources: Some(LinuxResources {
            cpu_shares: ask.cpu_shares,
            memory_limit_bytes: ask.memory_mb.max(ask.memory_max_mb) << 20,
            cpuset_cgroup: format!("{CGROUP_ROOT}/cpuset/nomad/share"),
            percent_ticks: ask.cpu_shares as f64 / total_mhz as f64,
            ..Default::default()
        }),
        ports: vec![],
    }
}

/// The task's environment as the task runner builds it (`EnvList()`: sorted `KEY=value`).
fn task_env(fx: &Alloc) -> Vec<String> {
    let alloc_dir = fx.task_dir.parent().unwrap();
    let mut env = vec![
        "GREETING=hello world".to_string(),
        "WITH_EQUALS=a=b".to_string(),
        format!("NOMAD_ALLOC_DIR={}", alloc_dir.join("alloc").display()),
        format!("NOMAD_ALLOC_ID={}", fx.id),
        "NOMAD_PARENT_CGROUP=/nomad".to_string(),
        format!("NOMAD_TASK_DIR={}", fx.task_dir.join("local").display()),
        format!("NOMAD_TASK_NAME={TASK}"),
        PATH_ENV.to_string(),
    ];
    env.sort();
    env
}

/// `sh -c script` as each generation's raw_exec `StartTask` sends it (nomad-versions.md §3): 1.6
/// without `resources` and with `basic_process_cgroup` as root; 1.7+ with `resources`,
/// `oom_score_adj` and `work_dir` (both left at the task config's defaults here).
fn request(r: &Reference, fx: &Alloc, script: &str, ask: Ask) -> LaunchRequest {
    let mut req = LaunchRequest {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        stdout_path: fx.stdout.display().to_string(),
        stderr_path: fx.stderr.display().to_string(),
        env: task_env(fx),
        user: String::new(),
        task_dir: fx.task_dir.display().to_string(),
        ..Default::default()
    };
    match r.generation {
        Generation::V1_6 => req.basic_process_cgroup = nix::unistd::geteuid().is_root(),
        Generation::V1_7Plus => req.resources = Some(resources(ask)),
    }
    req
}

/// Prints why a test that needs root and cgroup v1 cannot run here; `true` means skip.
fn lacks_cgroups() -> bool {
    match cgroup_v1_reason() {
        Some(why) => {
            eprintln!("skipping: {why}");
            true
        }
        None => false,
    }
}

/// One executor of one implementation with its alloc.
struct Run {
    which: Impl,
    fx: Alloc,
    client: Client,
    exec: ExecutorClient<Channel>,
}

impl Run {
    async fn start(r: &Reference, which: Impl) -> Run {
        let fx = Alloc::new(r.generation);
        let client = start_executor(r, which, &fx.task_dir.join("executor.out")).await;
        fx.procs.track(client.pid());
        assert_eq!(client.negotiated_version(), 2, "{}", which.name());
        let exec = ExecutorClient::new(client.channel());
        Run {
            which,
            fx,
            client,
            exec,
        }
    }

    fn name(&self) -> &'static str {
        self.which.name()
    }

    async fn launch(&mut self, req: LaunchRequest) -> ProcessState {
        self.fx.reset_output();
        let name = self.name();
        let state = within(&format!("{name} Launch"), RPC, self.exec.launch(req))
            .await
            .unwrap_or_else(|e| panic!("{name} Launch: {e}"))
            .into_inner()
            .process
            .unwrap_or_else(|| panic!("{name} Launch returned no process state"));
        self.fx.procs.track(state.pid as u32);
        // A 1.6 executor's freezer `/nomad/<uuid>` (Go's executor sits in it too, the task may
        // already be gone): removed at drop if still there.
        for pid in [self.client.pid(), state.pid as u32] {
            let freezer = cgroups_of(&pid.to_string()).remove("freezer");
            if let Some(uuid) = freezer.as_deref().and_then(|p| p.strip_prefix("/nomad/")) {
                if is_uuid(uuid) {
                    let dir = Path::new(CGROUP_ROOT).join("freezer/nomad").join(uuid);
                    self.fx.saw_cgroup(dir);
                }
            }
        }
        assert!(state.pid > 0, "{name}: {state:?}");
        assert_eq!(state.exit_code, -1, "{name}: Launch reports a running task");
        state
    }

    async fn wait(&mut self) -> ProcessState {
        let name = self.name();
        within(
            &format!("{name} Wait"),
            TASK_END,
            self.exec.wait(WaitRequest {}),
        )
        .await
        .unwrap_or_else(|e| panic!("{name} Wait: {e}"))
        .into_inner()
        .process
        .unwrap_or_else(|| panic!("{name} Wait returned no process state"))
    }

    async fn shutdown(&mut self, signal: &str, grace: Duration) {
        let name = self.name();
        let req = ShutdownRequest {
            signal: signal.into(),
            grace_period: grace.as_nanos() as i64,
        };
        within(
            &format!("{name} Shutdown"),
            TASK_END,
            self.exec.shutdown(req),
        )
        .await
        .unwrap_or_else(|e| panic!("{name} Shutdown({signal:?}, {grace:?}): {e}"));
    }

    /// Waits until the task printed `marker` on stdout (it is then past its setup).
    async fn await_stdout(&self, marker: &str) -> String {
        let what = format!("{} task prints {marker:?}", self.name());
        eventually(&what, TASK_END, || {
            let out = self.fx.stdout_text();
            out.contains(marker).then_some(out)
        })
        .await
    }

    /// What raw_exec's `DestroyTask` does: `Shutdown("", 0)` (its error only logged: the task may
    /// be gone, a 1.6 freezer cgroup already removed), then go-plugin's `Kill()`; then the
    /// fixture's cleanup.
    async fn end(mut self) {
        let req = ShutdownRequest {
            signal: String::new(),
            grace_period: 0,
        };
        let _ = within("DestroyTask's Shutdown", TASK_END, self.exec.shutdown(req)).await;
        within("plugin kill", RPC, self.client.kill()).await;
        drop(self.fx);
    }
}

fn exit_of(s: &ProcessState) -> (i32, i32) {
    (s.exit_code, s.signal)
}

/// `env | sort` without the variables `sh` adds itself.
fn env_lines(out: &str) -> Vec<String> {
    out.lines()
        .take_while(|l| !l.starts_with("cwd="))
        .filter(|l| !["PWD=", "SHLVL=", "_="].iter().any(|p| l.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// The line of `out` that starts with `key`, without it.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in {out:?}"))
}

/// Mirrors Nomad TestExecutor_Start_Wait and TestExecutor_Start_Wait_Failure_Code: the task's
/// bytes reach its stdout and stderr files unchanged and Wait reports its exit code; Version is
/// `2.0.0` on Nomad's protocol 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_and_output_bytes_match() {
    let Some(r) = reference() else { return };
    let script = "printf 'to stdout\\n'; printf 'to stderr\\n' >&2; printf 'no newline'; exit 3";
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let mut run = Run::start(r, which).await;
        let version = within("Version", RPC, run.exec.version(VersionRequest {}))
            .await
            .unwrap()
            .into_inner()
            .version;
        let req = request(r, &run.fx, script, DEFAULT_ASK);
        let launched = run.launch(req).await;
        let state = run.wait().await;
        assert_eq!(state.pid, launched.pid, "{}", which.name());
        seen.push((
            version,
            exit_of(&state),
            run.fx.stdout_text(),
            run.fx.stderr_text(),
        ));
        run.end().await;
    }
    let expected = (
        "2.0.0".to_string(),
        (3, 0),
        "to stdout\nno newline".to_string(),
        "to stderr\n".to_string(),
    );
    assert_eq!(seen[0], expected, "Nomad");
    assert_eq!(seen[1], seen[0], "goplugin differs from Nomad");
}

/// Mirrors Nomad TestExecutor_WaitExitSignal (the signal half) and raw_exec's exit mapping: a task
/// killed by SIGTERM is reported as exit code 143, signal 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_death_is_128_plus_the_signal() {
    let Some(r) = reference() else { return };
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let mut run = Run::start(r, which).await;
        let req = request(r, &run.fx, "kill -TERM $$", DEFAULT_ASK);
        run.launch(req).await;
        seen.push(exit_of(&run.wait().await));
        run.end().await;
    }
    assert_eq!(seen[0], (143, 15), "Nomad");
    assert_eq!(seen[1], seen[0], "goplugin differs from Nomad");
}

/// The `oom_score_adj` an executor inherits from this test process (the agent here).
fn own_oom_score_adj() -> String {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .to_string()
}

/// The groups an executor inherits from this test process, as `id -G` prints them.
fn own_groups() -> String {
    let out = std::process::Command::new("id").arg("-G").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Mirrors raw_exec's task environment and working directory (Nomad TestExecutor_Start_Wait,
/// TestExecutor_WorkDir for 1.7+ `work_dir`) and TestUniversalExecutor_setOomAdj (1.7+): the task
/// sees exactly the request's env, runs in `work_dir` (1.7+, else the task dir) with the agent's
/// uid and groups, and with the requested `oom_score_adj` (1.7+; 1.6 leaves the inherited one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_env_cwd_ids_and_oom_score_adj_match() {
    let Some(r) = reference() else { return };
    let script = "env | sort; echo \"cwd=$(pwd)\"; echo \"oom=$(cat /proc/self/oom_score_adj)\"; \
                  echo \"uid=$(id -u)\"; echo \"groups=$(id -G)\"";
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let mut run = Run::start(r, which).await;
        let mut req = request(r, &run.fx, script, DEFAULT_ASK);
        let (cwd, oom) = match r.generation {
            Generation::V1_6 => (run.fx.task_dir.clone(), own_oom_score_adj()),
            Generation::V1_7Plus => {
                req.work_dir = run.fx.task_dir.join("local").display().to_string();
                req.oom_score_adj = 200;
                (run.fx.task_dir.join("local"), "200".to_string())
            }
        };
        let env = req.env.clone();
        run.launch(req).await;
        let state = run.wait().await;
        let out = run.fx.stdout_text();
        assert_eq!(exit_of(&state), (0, 0), "{}: {out}", which.name());
        assert_eq!(
            env_lines(&out),
            env,
            "{}: exactly the task's env",
            which.name()
        );
        assert_eq!(Path::new(field(&out, "cwd=")), cwd, "{}", which.name());
        assert_eq!(field(&out, "oom="), oom, "{}: oom_score_adj", which.name());
        assert_eq!(field(&out, "uid="), "0", "{}", which.name());
        assert_eq!(field(&out, "groups="), own_groups(), "{}", which.name());
        // Paths differ per alloc; the rest must be identical.
        let alloc_root = run.fx.alloc_root().display().to_string();
        seen.push(
            out.replace(&run.fx.id, "<alloc>")
                .replace(&alloc_root, "<allocdir>"),
        );
        run.end().await;
    }
    assert_eq!(
        seen[1], seen[0],
        "goplugin's task output differs from Nomad's"
    );
}

/// The `Cap*` line of /proc/self/status text.
fn cap<'a>(status: &'a str, name: &str) -> &'a str {
    field(status, &format!("{name}:")).trim()
}

/// Mirrors raw_exec's `user` (Nomad TestRawExecDriver_User-style; the universal executor does no
/// capability handling, so TestExecutor_Capabilities' masks do not apply): a `nobody` task has
/// nobody's uid and primary gid, no effective or permitted capabilities, the agent's bounding set.
/// Deliberate difference: Go's `setCmdUser` pre-sizes the supplementary gid list and appends, so
/// the task also holds group 0 (spec §5.1.2 quirk); ours gives only the user's own groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nobody_task_gets_nobodys_ids_and_no_capabilities() {
    let Some(r) = reference() else { return };
    let script = "echo \"uid=$(id -u)\"; echo \"gid=$(id -g)\"; echo \"groups=$(id -G)\"; \
                  grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status";
    let own_status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let mut run = Run::start(r, which).await;
        let mut req = request(r, &run.fx, script, DEFAULT_ASK);
        req.user = "nobody".into();
        run.launch(req).await;
        let state = run.wait().await;
        let out = run.fx.stdout_text();
        assert_eq!(exit_of(&state), (0, 0), "{}: {out}", which.name());
        assert_eq!(field(&out, "uid="), "65534", "{}", which.name());
        assert_eq!(field(&out, "gid="), "65534", "{}", which.name());
        assert_eq!(cap(&out, "CapEff"), "0000000000000000", "{}", which.name());
        assert_eq!(cap(&out, "CapPrm"), "0000000000000000", "{}", which.name());
        assert_eq!(
            cap(&out, "CapBnd"),
            cap(&own_status, "CapBnd"),
            "{}: bounding set kept",
            which.name()
        );
        seen.push(out);
        run.end().await;
    }
    assert_eq!(
        field(&seen[0], "groups="),
        "65534 0",
        "Nomad's stray group 0"
    );
    assert_eq!(
        field(&seen[1], "groups="),
        "65534",
        "goplugin: nobody's own groups"
    );
    let without_groups = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("groups="))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_groups(&seen[1]),
        without_groups(&seen[0]),
        "goplugin differs from Nomad"
    );
}

/// What the cgroup test observed of one implementation.
#[derive(Debug)]
struct CgroupView {
    /// The task's `/proc/self/cgroup`, alloc ID and uuids replaced by placeholders.
    task: BTreeMap<String, String>,
    /// The executor's, while the task runs (same placeholders).
    executor: BTreeMap<String, String>,
    /// 1.7+: memory.limit_in_bytes, memory.soft_limit_in_bytes, memory.swappiness, cpu.shares.
    limits: Vec<(String, String)>,
    /// 1.6: whether the executor's freezer dir (recorded at Launch) is still there after Shutdown.
    freezer_left: bool,
    /// 1.7+: the agent's dirs after Shutdown: (exists, pids inside).
    agent_after: Vec<(bool, Vec<i32>)>,
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| format!("<{}: {e}>", p.display()))
        .trim()
        .to_string()
}

/// Replaces this run's alloc ID and a `/nomad/<uuid>` name with placeholders.
fn normalise(map: &BTreeMap<String, String>, alloc: &str) -> BTreeMap<String, String> {
    map.iter()
        .map(|(c, p)| {
            let p = p.replace(alloc, "<alloc>");
            let p = match p.strip_prefix("/nomad/") {
                Some(name) if is_uuid(name) => "/nomad/<uuid>".to_string(),
                _ => p,
            };
            (c.clone(), p)
        })
        .collect()
}

/// This process's cgroups with some controllers moved to `path`.
fn own_cgroups_with(moved: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut map = cgroups_of("self");
    for (c, p) in moved {
        map.insert(c.to_string(), p.to_string());
    }
    map
}

async fn observe_cgroups(r: &Reference, which: Impl) -> CgroupView {
    let mut run = Run::start(r, which).await;
    let ask = Ask {
        memory_mb: 200,
        memory_max_mb: 300,
        cpu_shares: 500,
    };
    let req = request(
        r,
        &run.fx,
        "cat /proc/self/cgroup; echo ready; exec sleep 600",
        ask,
    );
    let launched = run.launch(req).await;
    let out = run.await_stdout("ready\n").await;
    let task_raw = parse_cgroups(&out);
    assert_eq!(
        task_raw,
        cgroups_of(&launched.pid.to_string()),
        "{}: the task's main process stays where it started",
        which.name()
    );
    let executor_raw = cgroups_of(&run.client.pid().to_string());
    let limits = match r.generation {
        Generation::V1_6 => vec![],
        Generation::V1_7Plus => {
            let mem = run.fx.cgroup_path("memory");
            let cpu = run.fx.cgroup_path("cpu");
            [
                mem.join("memory.limit_in_bytes"),
                mem.join("memory.soft_limit_in_bytes"),
                mem.join("memory.swappiness"),
                cpu.join("cpu.shares"),
            ]
            .iter()
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    read_trim(p),
                )
            })
            .collect()
        }
    };
    run.shutdown("", Duration::ZERO).await;
    let state = run.wait().await;
    assert_eq!(exit_of(&state), (137, 9), "{}", which.name());
    let freezer_left = run
        .fx
        .seen_cgroups
        .lock()
        .unwrap()
        .iter()
        .any(|d| d.exists());
    let agent_after = run
        .fx
        .agent_cgroups
        .iter()
        .map(|d| (d.exists(), cgroup_procs(d)))
        .collect();
    let alloc = run.fx.id.clone();
    run.end().await;
    CgroupView {
        task: normalise(&task_raw, &alloc),
        executor: normalise(&executor_raw, &alloc),
        limits,
        freezer_left,
        agent_after,
    }
}

/// Mirrors Nomad TestExecutor_CgroupPaths, TestUniversalExecutor_cg1_no_executor_pid (1.7+) and
/// TestExecutor_IsolationAndConstraints (limits, cleanup) for the universal executor on cgroup v1:
/// 1.6: the task in a freezer `/nomad/<uuid>` the executor made and removes at Shutdown, nothing
/// else moved; 1.7+: the task in the agent's freezer/cpu/memory `/nomad/<alloc>.web` and cpuset
/// `/nomad/share`, limits written there, the executor not in them, nothing removed.
/// Deliberate difference (1.6): Go's executor joins its freezer cgroup itself, ours does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_cgroups_limits_and_leftovers_match() {
    let Some(r) = reference() else { return };
    if lacks_cgroups() {
        return;
    }
    let go = observe_cgroups(r, Impl::Go).await;
    let rust = observe_cgroups(r, Impl::Rust).await;
    let own = cgroups_of("self");
    match r.generation {
        Generation::V1_6 => {
            let task = own_cgroups_with(&[("freezer", "/nomad/<uuid>")]);
            assert_eq!(go.task, task, "Nomad: the task only in its freezer cgroup");
            assert_eq!(
                go.executor, task,
                "Nomad's executor joined its freezer cgroup"
            );
            assert!(!go.freezer_left, "Nomad removed its freezer cgroup");
            assert_eq!(
                rust.task, go.task,
                "goplugin's task cgroups differ from Nomad's"
            );
            assert_eq!(
                rust.executor, own,
                "goplugin's executor stays where it started"
            );
            assert!(!rust.freezer_left, "goplugin removed its freezer cgroup");
        }
        Generation::V1_7Plus => {
            let scope = "/nomad/<alloc>.web";
            let task = own_cgroups_with(&[
                ("freezer", scope),
                ("cpu", scope),
                ("memory", scope),
                ("cpuset", "/nomad/share"),
            ]);
            assert_eq!(go.task, task, "Nomad: the agent's task cgroups");
            let parent = own_cgroups_with(&[
                ("freezer", "/nomad"),
                ("cpu", "/nomad"),
                ("memory", "/nomad"),
                ("cpuset", "/nomad"),
            ]);
            assert_eq!(
                go.executor, parent,
                "Nomad's executor moved back to /nomad (#24340)"
            );
            let limits = |hard: u64, soft: u64| {
                vec![
                    ("memory.limit_in_bytes".to_string(), hard.to_string()),
                    ("memory.soft_limit_in_bytes".to_string(), soft.to_string()),
                    ("memory.swappiness".to_string(), "0".to_string()),
                    ("cpu.shares".to_string(), "500".to_string()),
                ]
            };
            assert_eq!(go.limits, limits(300 << 20, 200 << 20), "Nomad's limits");
            assert_eq!(
                go.agent_after,
                vec![(true, vec![]); 3],
                "Nomad: agent dirs kept, empty"
            );
            assert_eq!(
                rust.task, go.task,
                "goplugin's task cgroups differ from Nomad's"
            );
            for c in ["freezer", "cpu", "memory"] {
                assert_ne!(
                    rust.executor.get(c).map(String::as_str),
                    Some(scope),
                    "goplugin's executor is in the task's {c} cgroup: {:?}",
                    rust.executor
                );
            }
            assert_eq!(
                rust.limits, go.limits,
                "goplugin's limits differ from Nomad's"
            );
            assert_eq!(
                rust.agent_after, go.agent_after,
                "goplugin's leftovers differ"
            );
        }
    }
}

/// Mirrors Nomad TestExecutor_OOMKilled / exec TestExecDriver_OOMKilled for raw_exec on 1.7+ (whose
/// raw_exec tasks get hard memory limits, #19588): a task over its 64 MiB limit is killed by the
/// kernel and Wait reports SIGKILL. Deliberate difference: Go's universal executor never sets
/// `oom_killed` (spec §5.2); ours reports the kernel's OOM kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_under_a_64_mib_limit_is_reported() {
    let Some(r) = reference() else { return };
    if r.generation == Generation::V1_6 {
        eprintln!("skipping: Nomad 1.6 raw_exec sends no resources, so there is no memory limit");
        return;
    }
    if lacks_cgroups() {
        return;
    }
    let ask = Ask {
        memory_mb: 64,
        memory_max_mb: 0,
        cpu_shares: 100,
    };
    let script = "a=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived";
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let mut run = Run::start(r, which).await;
        let req = request(r, &run.fx, script, ask);
        run.launch(req).await;
        let state = run.wait().await;
        let mem = run.fx.cgroup_path("memory");
        let oom_control = read_trim(&mem.join("memory.oom_control"));
        let kills: u64 = field(&oom_control, "oom_kill ").trim().parse().unwrap();
        assert_eq!(
            read_trim(&mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string(),
            "{}",
            which.name()
        );
        assert!(
            kills > 0,
            "{}: the kernel OOM-killed: {oom_control}",
            which.name()
        );
        seen.push((exit_of(&state), state.oom_killed, run.fx.stdout_text()));
        run.end().await;
    }
    assert_eq!(seen[0], ((137, 9), false, String::new()), "Nomad");
    assert_eq!(seen[1], ((137, 9), true, String::new()), "goplugin");
}

const MEASURED_MEMORY: [i32; 2] = [0, 6]; // RSS, Swap
const MEASURED_CPU: [i32; 3] = [0, 1, 5]; // System Mode, User Mode, Percent

/// What one implementation's Stats stream showed.
#[derive(Debug)]
struct StatsView {
    first_after: Duration,
    first_skew: Duration,
    memory_measured: Vec<i32>,
    cpu_measured: Vec<i32>,
    pids: Vec<u32>,
    rss: u64,
    busy_percent: f64,
    busy_after: Duration,
    task_pid: u32,
    executor_pid: u32,
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat; after the name, field 3 is index 0.
    let tick = |i: usize| {
        after
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tick(11) + tick(12)
}

async fn next_sample(
    stream: &mut tonic::Streaming<StatsResponse>,
    which: Impl,
) -> goplugin::proto::drivers::TaskStats {
    within("a Stats sample", Duration::from_secs(5), stream.message())
        .await
        .unwrap_or_else(|e| panic!("{} Stats: {e}", which.name()))
        .and_then(|s| s.stats)
        .unwrap_or_else(|| panic!("{} Stats ended", which.name()))
}

async fn observe_stats(r: &Reference, which: Impl) -> StatsView {
    let mut run = Run::start(r, which).await;
    let req = request(r, &run.fx, "while :; do :; done", DEFAULT_ASK);
    let launched = run.launch(req).await;
    // Go's CPU trackers take a zero CPU time for "no previous sample": start measuring once the
    // task has used a tick, or its first two computed samples both read 0%.
    let pid = launched.pid;
    eventually("the busy task uses CPU", TASK_END, || {
        (cpu_ticks(pid) > 0).then_some(())
    })
    .await;
    let t0 = Instant::now();
    let mut stream = within(
        "Stats",
        RPC,
        run.exec.stats(StatsRequest {
            interval: 1_000_000_000,
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{} Stats: {e}", which.name()))
    .into_inner();
    let first = next_sample(&mut stream, which).await;
    let first_after = t0.elapsed();
    let ts = SystemTime::try_from(first.timestamp.unwrap()).unwrap();
    let now = SystemTime::now();
    let first_skew = now.duration_since(ts).unwrap_or_else(|e| e.duration());
    let agg = first.agg_resource_usage.clone().unwrap();
    let mut pids: Vec<u32> = first
        .resource_usage_by_pid
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    pids.sort();
    // 1.7+'s Go executor recomputes per-pid usage only every 5 s (procstats cache): wait for the
    // first sample that shows the busy loop, at most 12 samples.
    let mut busy = (0.0, Duration::ZERO);
    for _ in 0..12 {
        let s = next_sample(&mut stream, which).await;
        let percent = s.agg_resource_usage.unwrap().cpu.unwrap().percent;
        busy = (percent, t0.elapsed());
        if percent > 1.0 {
            break;
        }
    }
    drop(stream);
    let view = StatsView {
        first_after,
        first_skew,
        memory_measured: agg.memory.as_ref().unwrap().measured_fields.clone(),
        cpu_measured: agg.cpu.as_ref().unwrap().measured_fields.clone(),
        pids,
        rss: agg.memory.unwrap().rss,
        busy_percent: busy.0,
        busy_after: busy.1,
        task_pid: launched.pid as u32,
        executor_pid: run.client.pid(),
    };
    run.shutdown("", Duration::ZERO).await;
    run.wait().await;
    run.end().await;
    view
}

/// Mirrors Nomad TestExecutor_WaitExitSignal (stats half) and exec TestExecDriver_Stats: the first
/// sample arrives within a second with a current timestamp, the universal Measured lists, the
/// task's pid and a plausible RSS; a busy task shows CPU use
/// within 12 samples (1.7+'s Go executor refreshes per-pid figures every 5 s). 1.6's Go executor
/// counts itself (it is in its freezer cgroup, spec nomad-versions.md §4.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_samples_match_in_shape() {
    let Some(r) = reference() else { return };
    let (_, cores) = compute();
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let v = observe_stats(r, which).await;
        let name = which.name();
        assert!(
            v.first_after < Duration::from_secs(1),
            "{name}: first after {:?}",
            v.first_after
        );
        assert!(
            v.first_skew < Duration::from_secs(1),
            "{name}: timestamp off by {:?}",
            v.first_skew
        );
        assert_eq!(v.memory_measured, MEASURED_MEMORY, "{name}: RSS, Swap");
        assert_eq!(
            v.cpu_measured, MEASURED_CPU,
            "{name}: System Mode, User Mode, Percent"
        );
        assert!(
            v.pids.contains(&v.task_pid),
            "{name}: task pid in {:?}",
            v.pids
        );
        assert!(v.rss > 0 && v.rss < 1 << 30, "{name}: RSS {}", v.rss);
        let max = 100.0 * cores as f64 * 1.2;
        assert!(
            v.busy_percent > 1.0 && v.busy_percent < max,
            "{name}: a busy task at {}% after {:?}",
            v.busy_percent,
            v.busy_after
        );
        seen.push(v);
    }
    if r.generation == Generation::V1_6 && !lacks_cgroups() {
        assert!(
            seen[0].pids.contains(&seen[0].executor_pid),
            "Nomad 1.6 counts its executor"
        );
    }
    for (v, name) in seen.iter().zip(["Nomad", "goplugin"]) {
        eprintln!(
            "stats {name}: pids {:?} (executor {}), first after {:?}, {:.0}% after {:?}",
            v.pids, v.executor_pid, v.first_after, v.busy_percent, v.busy_after
        );
    }
}

/// Mirrors Nomad TestRawExecDriver_Exec / script checks (`ExecScript`): the combined output and
/// the exit code of a command run next to the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_returns_the_same_output_and_exit_code() {
    let Some(r) = reference() else { return };
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let mut run = Run::start(r, which).await;
        let req = request(r, &run.fx, "exec sleep 600", DEFAULT_ASK);
        run.launch(req).await;
        let deadline = SystemTime::now() + Duration::from_secs(10);
        let call = run.exec.exec(ExecRequest {
            deadline: Some(deadline.into()),
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "echo out; echo err >&2; exit 7".into()],
        });
        let resp = within("Exec", RPC, call)
            .await
            .unwrap_or_else(|e| panic!("{} Exec: {e}", which.name()))
            .into_inner();
        seen.push((
            String::from_utf8_lossy(&resp.output).into_owned(),
            resp.exit_code,
        ));
        run.shutdown("", Duration::ZERO).await;
        run.wait().await;
        run.end().await;
    }
    assert_eq!(seen[0], ("out\nerr\n".to_string(), 7), "Nomad");
    assert_eq!(seen[1], seen[0], "goplugin differs from Nomad");
}

/// One ExecStreaming response, as the transcript records it.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Stdout(Vec<u8>),
    StdoutClose,
    Stderr(Vec<u8>),
    StderrClose,
    Exited(i32),
}

/// Concatenated stdout, stderr and the exit code, after checking spec §5.8's order: data before
/// its stream's close, each stream closed at most once, one exit message, last.
fn summarise(events: &[Event], name: &str) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    let (mut out_closed, mut err_closed) = (false, false);
    for e in events {
        assert!(
            code.is_none(),
            "{name}: {e:?} after the exit message: {events:?}"
        );
        match e {
            Event::Stdout(d) => {
                assert!(!out_closed, "{name}: stdout data after its close");
                out.extend(d);
            }
            Event::Stderr(d) => {
                assert!(!err_closed, "{name}: stderr data after its close");
                err.extend(d);
            }
            Event::StdoutClose => {
                assert!(!out_closed, "{name}: stdout closed twice");
                out_closed = true;
            }
            Event::StderrClose => {
                assert!(!err_closed, "{name}: stderr closed twice");
                err_closed = true;
            }
            Event::Exited(c) => code = Some(*c),
        }
    }
    (out, err, code)
}

/// Sends `msgs`, keeps the request stream open, and records every response until the stream ends.
async fn transcript(
    exec: &mut ExecutorClient<Channel>,
    msgs: Vec<ExecTaskStreamingRequest>,
    name: &str,
) -> Vec<Event> {
    let requests = futures::stream::iter(msgs).chain(futures::stream::pending());
    let mut stream = within("ExecStreaming", RPC, exec.exec_streaming(requests))
        .await
        .unwrap_or_else(|e| panic!("{name} ExecStreaming: {e}"))
        .into_inner();
    collect_events(&mut stream, None, name).await
}

/// The transcript events of one ExecStreaming response.
fn events_of(m: ExecTaskStreamingResponse) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(o) = m.stdout {
        if !o.data.is_empty() {
            events.push(Event::Stdout(o.data));
        }
        if o.close {
            events.push(Event::StdoutClose);
        }
    }
    if let Some(e) = m.stderr {
        if !e.data.is_empty() {
            events.push(Event::Stderr(e.data));
        }
        if e.close {
            events.push(Event::StderrClose);
        }
    }
    if m.exited {
        events.push(Event::Exited(m.result.map_or(-999, |r| r.exit_code)));
    }
    events
}

/// Mirrors Nomad's ExecTaskStreamingConformanceTests (plugins/drivers/testutils/exec_testing.go,
/// run by TestRawExec_ExecTaskStreaming): the pipes vector (`exit 43`), the PTY vector with resize
/// (`stty size` after 50x40 then 100x100), and stdin through `cat` ended by a stdin close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streaming_transcripts_match() {
    let Some(r) = reference() else { return };
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let name = which.name();
        let mut run = Run::start(r, which).await;
        let req = request(r, &run.fx, "exec sleep 600", DEFAULT_ASK);
        run.launch(req).await;
        let pipes = transcript(
            &mut run.exec,
            vec![
                exec_stream::setup(
                    &[
                        "/bin/sh",
                        "-c",
                        "echo hello stdout; echo hello stderr >&2; exit 43",
                    ],
                    false,
                ),
                exec_stream::stdin(b"", false),
                // Nomad's harness (and `nomad alloc exec`) closes stdin; Go's universal executor
                // reports no exit before that (exec.Cmd.Wait waits for its stdin copier).
                exec_stream::stdin(b"", true),
            ],
            name,
        )
        .await;
        let closes = pipes
            .iter()
            .filter(|e| matches!(e, Event::StdoutClose | Event::StderrClose))
            .count();
        assert_eq!(
            closes, 2,
            "{name}: both streams closed before the exit: {pipes:?}"
        );
        let pty = transcript(
            &mut run.exec,
            vec![
                exec_stream::setup(&["/bin/sh", "-c", "sleep 1; stty size"], true),
                exec_stream::resize(40, 50),
                exec_stream::resize(100, 100),
            ],
            name,
        )
        .await;
        let stdin = transcript(
            &mut run.exec,
            vec![
                exec_stream::setup(&["cat"], false),
                exec_stream::stdin(b"echoed\n", true),
            ],
            name,
        )
        .await;
        seen.push((
            summarise(&pipes, name),
            summarise(&pty, name),
            summarise(&stdin, name),
        ));
        run.shutdown("", Duration::ZERO).await;
        run.wait().await;
        run.end().await;
    }
    let expected = (
        (
            b"hello stdout\n".to_vec(),
            b"hello stderr\n".to_vec(),
            Some(43),
        ),
        (b"100 100\r\n".to_vec(), vec![], Some(0)),
        (b"echoed\n".to_vec(), vec![], Some(0)),
    );
    assert_eq!(seen[0], expected, "Nomad");
    assert_eq!(seen[1], seen[0], "goplugin differs from Nomad");
}

/// The events of `stream`'s messages that arrive within `window`, or of all of them until the
/// stream ends when `window` is `None`.
async fn collect_events(
    stream: &mut tonic::Streaming<ExecTaskStreamingResponse>,
    window: Option<Duration>,
    name: &str,
) -> Vec<Event> {
    let mut events = Vec::new();
    let t0 = Instant::now();
    loop {
        let limit = window.map_or(TASK_END, |w| w.saturating_sub(t0.elapsed()));
        let next = match tokio::time::timeout(limit, stream.message()).await {
            Err(_) if window.is_some() => return events,
            Err(_) => panic!("{name}: ExecStreaming did not end within {TASK_END:?}"),
            Ok(m) => m.unwrap_or_else(|e| panic!("{name} ExecStreaming: {e}")),
        };
        match next {
            Some(m) => events.extend(events_of(m)),
            None => return events,
        }
    }
}

/// Go's universal ExecStreaming on pipes (`exec_utils.go` `runNoTTY`; `exec.Cmd.Wait` also waits
/// for the goroutine copying the request's stdin into the command): a command that exits while
/// the client keeps stdin open has its output sent at once, but its stream closes and exit
/// message only once the client closes stdin (Nomad's harness and `nomad alloc exec` always do).
/// Ours reports them as soon as the command is gone, stdin open or not: a deliberate difference
/// (README), since a client that never closes stdin would otherwise wait forever for an exit
/// that already happened. Both sides are held to their own behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streaming_exit_while_stdin_is_open() {
    let Some(r) = reference() else { return };
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let name = which.name();
        let mut run = Run::start(r, which).await;
        let req = request(r, &run.fx, "exec sleep 600", DEFAULT_ASK);
        run.launch(req).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(exec_stream::setup(
            &["/bin/sh", "-c", "echo $$; exit 5"],
            false,
        ))
        .await
        .unwrap();
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut stream = within("ExecStreaming", RPC, run.exec.exec_streaming(requests))
            .await
            .unwrap_or_else(|e| panic!("{name} ExecStreaming: {e}"))
            .into_inner();
        // The command's pid comes first; then wait until the command is gone.
        let mut before = Vec::new();
        let pid: i32 = loop {
            let m = within("the command's output", TASK_END, stream.message())
                .await
                .unwrap_or_else(|e| panic!("{name} ExecStreaming: {e}"))
                .unwrap_or_else(|| panic!("{name}: stream ended before any output"));
            let events = events_of(m);
            let pid = events.iter().find_map(|e| match e {
                Event::Stdout(d) => String::from_utf8_lossy(d).trim().parse().ok(),
                _ => None,
            });
            before.extend(events);
            if let Some(pid) = pid {
                break pid;
            }
        };
        eventually("the command exits", TASK_END, || {
            (!alive(pid)).then_some(())
        })
        .await;
        // Nothing to await here: the point is that nothing more comes while stdin is open.
        let mut rest = collect_events(&mut stream, Some(Duration::from_millis(500)), name).await;
        before.append(&mut rest);
        // (The send fails if the server already ended the call.)
        let _ = tx.send(exec_stream::stdin(b"", true)).await;
        let mut after = collect_events(&mut stream, None, name).await;
        // The two closes come from two goroutines (tasks) on each side: their order is not fixed.
        after.sort_by_key(|e| format!("{e:?}"));
        before.retain(|e| !matches!(e, Event::Stdout(_)));
        before.sort_by_key(|e| format!("{e:?}"));
        seen.push((before, after));
        drop(tx);
        run.end().await;
    }
    let ending = vec![Event::Exited(5), Event::StderrClose, Event::StdoutClose];
    assert_eq!(
        seen[0],
        (vec![], ending.clone()),
        "Nomad waits for the stdin close"
    );
    assert_eq!(
        seen[1],
        (ending, vec![]),
        "goplugin reports the exit at once"
    );
}

const TRAP_LOOP: &str = "echo ready; while :; do sleep 0.1; done";

/// Mirrors Nomad TestRawExecDriver_Signal / the executor's `Signal` RPC: SIGUSR1 reaches a trap in
/// the task's main process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_reaches_a_trap_in_the_task() {
    let Some(r) = reference() else { return };
    let script = format!("trap 'echo got USR1; exit 0' USR1; {TRAP_LOOP}");
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let mut run = Run::start(r, which).await;
        let req = request(r, &run.fx, &script, DEFAULT_ASK);
        run.launch(req).await;
        run.await_stdout("ready\n").await;
        within("Signal", RPC, run.exec.signal(SignalRequest { signal: 10 }))
            .await
            .unwrap_or_else(|e| panic!("{} Signal: {e}", which.name()));
        let state = run.wait().await;
        seen.push((exit_of(&state), run.fx.stdout_text()));
        run.end().await;
    }
    assert_eq!(seen[0], ((0, 0), "ready\ngot USR1\n".to_string()), "Nomad");
    assert_eq!(seen[1], seen[0], "goplugin differs from Nomad");
}

/// Mirrors Nomad TestExecutor_Start_Kill and raw_exec StopTask with a `kill_signal`: Shutdown with
/// SIGTERM and a grace period lets a task that traps TERM exit 0 before the grace runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_grace_lets_a_trapping_task_exit_0() {
    let Some(r) = reference() else { return };
    let script = format!("trap 'echo got TERM; exit 0' TERM; {TRAP_LOOP}");
    let grace = Duration::from_secs(10);
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let mut run = Run::start(r, which).await;
        let req = request(r, &run.fx, &script, DEFAULT_ASK);
        run.launch(req).await;
        run.await_stdout("ready\n").await;
        let t0 = Instant::now();
        run.shutdown("SIGTERM", grace).await;
        let state = run.wait().await;
        let took = t0.elapsed();
        assert!(took < grace / 2, "{}: took {took:?}", which.name());
        seen.push((exit_of(&state), run.fx.stdout_text()));
        run.end().await;
    }
    assert_eq!(seen[0], ((0, 0), "ready\ngot TERM\n".to_string()), "Nomad");
    assert_eq!(seen[1], seen[0], "goplugin differs from Nomad");
}

/// Pids of processes in process group `pgid` (from /proc), zombies excluded.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let after: Vec<&str> = s
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                after.first() != Some(&"Z") && after.get(2) == Some(&pgid.to_string().as_str())
            })
        })
        .collect()
}

/// Mirrors Nomad TestExecutor_Shutdown_Exit, TestExecutor_Start_Kill_Immediately_NoGrace and
/// raw_exec TestRawExecDriver_DestroyKillsAll: Shutdown("", 0) SIGKILLs `sleep 600` at once and
/// leaves no process of the task behind, a background child included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_grace_kills_the_task_and_its_children() {
    let Some(r) = reference() else { return };
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let name = which.name();
        let mut run = Run::start(r, which).await;
        let req = request(
            r,
            &run.fx,
            "sleep 600 & echo \"child=$!\"; exec sleep 600",
            DEFAULT_ASK,
        );
        let task = run.launch(req).await.pid;
        let out = run.await_stdout("child=").await;
        let child: i32 = field(&out, "child=").trim().parse().unwrap();
        run.fx.procs.track(child as u32);
        assert!(alive(child), "{name}: background child runs");
        let t0 = Instant::now();
        run.shutdown("", Duration::ZERO).await;
        let state = run.wait().await;
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t0.elapsed()
        );
        let what = format!("{name}: no process of the task left");
        eventually(&what, Duration::from_secs(5), || {
            (!alive(child) && group_members(task).is_empty()).then_some(())
        })
        .await;
        seen.push(exit_of(&state));
        run.end().await;
    }
    assert_eq!(seen[0], (137, 9), "Nomad");
    assert_eq!(seen[1], seen[0], "goplugin differs from Nomad");
}

/// Mirrors raw_exec TestRawExecDriver_StartWaitRecoverWaitStop (`ReattachToExecutor`): a new host
/// reattaches to a running executor from the persisted `{Protocol,Network,Addr,Pid}`, gets Version
/// `2.0.0` (1.7+'s reattach probe, #24538), and Shutdown then Wait report the task's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattached_executor_answers_version_and_wait() {
    let Some(r) = reference() else { return };
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let name = which.name();
        let mut run = Run::start(r, which).await;
        let req = request(r, &run.fx, "exec sleep 600", DEFAULT_ASK);
        let pid = run.launch(req).await.pid;
        let saved = serde_json::to_string(&run.client.reattach_config()).unwrap();
        let Run { fx, client, .. } = run;
        drop(client); // the agent goes away; executor and task go on
        let cfg = serde_json::from_str(&saved).unwrap();
        let again = within("reattach", RPC, Client::reattach(&cfg))
            .await
            .unwrap_or_else(|e| panic!("{name} reattach: {e}"));
        let mut exec = ExecutorClient::new(again.channel());
        let version = within("Version", RPC, exec.version(VersionRequest {}))
            .await
            .unwrap_or_else(|e| panic!("{name} Version after reattach: {e}"))
            .into_inner()
            .version;
        let mut run = Run {
            which,
            fx,
            client: again,
            exec,
        };
        run.shutdown("SIGTERM", Duration::from_secs(5)).await;
        let state = run.wait().await;
        assert_eq!(state.pid, pid, "{name}");
        seen.push((version, exit_of(&state)));
        run.end().await;
    }
    assert_eq!(seen[0], ("2.0.0".to_string(), (143, 15)), "Nomad");
    assert_eq!(seen[1], seen[0], "goplugin differs from Nomad");
}

// ---------------------------------------------------------------------------------------------
// logmon

/// Nomad's `lineScanLimit`: near the end of a file, lines up to this long are kept whole.
const LINE_SCAN: i64 = 32 * 1024;

/// Nomad's `FileRotator.Write` as a pure function of the chunks it is handed, with or without its
/// counting quirk (`currentWr += n` adds the call's cumulative bytes on every loop iteration).
/// Without the quirk it is our rotator on line-aligned chunks of short lines. Returns the files
/// left after purging to `max_files`: index -> contents.
fn rotate_model(
    chunks: &[Vec<u8>],
    limit: i64,
    max_files: usize,
    quirk: bool,
) -> BTreeMap<u64, Vec<u8>> {
    let mut files: BTreeMap<u64, Vec<u8>> = BTreeMap::from([(0, Vec::new())]);
    let (mut index, mut current) = (0u64, 0i64);
    for p in chunks {
        let (mut n, mut force) = (0usize, false);
        while n < p.len() {
            if force || current >= limit {
                force = false;
                index += 1;
                files.insert(index, Vec::new());
                current = 0;
            }
            let remaining = limit - current;
            let to_write = (p.len() - n) as i64;
            let mut nw = 0usize;
            if remaining - LINE_SCAN < to_write {
                match p[n..].iter().position(|&b| b == b'\n') {
                    // Go: `remainingSpace-int64(idx)-1 >= 0`, the line fits.
                    Some(i) if remaining > i as i64 => nw = i + 1,
                    Some(_) => force = true,
                    None => panic!("model: chunks must end with a newline"),
                }
            } else {
                nw = p.len() - n;
            }
            files
                .get_mut(&index)
                .unwrap()
                .extend_from_slice(&p[n..n + nw]);
            n += nw;
            current += if quirk { n as i64 } else { nw as i64 };
        }
    }
    let keep: Vec<u64> = files.keys().rev().take(max_files).copied().collect();
    files.retain(|k, _| keep.contains(k));
    files
}

/// ~3 MiB of numbered lines of varying length, in line-aligned chunks of at most 32 KiB (Go's
/// `io.Copy` buffer), so that each chunk is exactly one read on both sides.
fn log_chunks() -> Vec<Vec<u8>> {
    let mut chunks = vec![Vec::new()];
    let mut total = 0;
    for i in 0u64.. {
        let line = format!(
            "{i:06} {}\n",
            "abcdefghij".repeat(1 + (i * 7919 % 31) as usize)
        );
        if chunks.last().unwrap().len() + line.len() > 32 * 1024 {
            chunks.push(Vec::new());
        }
        total += line.len();
        chunks
            .last_mut()
            .unwrap()
            .extend_from_slice(line.as_bytes());
        if total > 3 << 20 {
            break;
        }
    }
    chunks
}

fn logmon_request(dir: &Path, max_files: u32, size_mb: u32) -> StartRequest {
    StartRequest {
        log_dir: dir.display().to_string(),
        stdout_file_name: format!("{TASK}.stdout"),
        stderr_file_name: format!("{TASK}.stderr"),
        max_files,
        max_file_size_mb: size_mb,
        stdout_fifo: dir
            .join(format!(".{TASK}.stdout.fifo"))
            .display()
            .to_string(),
        stderr_fifo: dir
            .join(format!(".{TASK}.stderr.fifo"))
            .display()
            .to_string(),
    }
}

/// Opens a FIFO for writing as the executor does, without blocking forever when no reader comes.
fn open_fifo_writer(path: &str) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let t0 = Instant::now();
    loop {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path);
        match opened {
            Ok(f) => {
                nix::fcntl::fcntl(
                    &f,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
                )
                .unwrap();
                return f;
            }
            // ENXIO: no reader yet (logmon opens it in the background after Start).
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no reader on {path}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("opening {path}: {e}"),
        }
    }
}

/// Bytes waiting in the pipe behind `f` (FIONREAD works on either end of a pipe).
fn unread(f: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which outlives the call.
    let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    n
}

/// Writes each chunk with one write and waits until the reader took it all before the next.
fn paced_write(f: &mut std::fs::File, chunks: &[Vec<u8>]) {
    for c in chunks {
        f.write_all(c).unwrap();
        let t0 = Instant::now();
        while unread(f) > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "logmon stopped reading"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// `<base>.<N>` files in `dir`: name -> contents.
fn rotated_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (!name.starts_with('.')).then(|| (name, std::fs::read(e.path()).unwrap()))
        })
        .collect()
}

/// Names and sizes, for failure messages (the contents are MiBs).
fn sizes(files: &BTreeMap<String, Vec<u8>>) -> Vec<(String, usize)> {
    files.iter().map(|(n, c)| (n.clone(), c.len())).collect()
}

fn named(base: &str, model: BTreeMap<u64, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    model
        .into_iter()
        .map(|(i, c)| (format!("{base}.{i}"), c))
        .collect()
}

/// Waits until `dir` holds exactly `want` (flushes every 100 ms and an asynchronous purge in Go).
async fn await_files(dir: &Path, want: &BTreeMap<String, Vec<u8>>, name: &str) {
    let t0 = Instant::now();
    loop {
        let got = rotated_files(dir);
        if &got == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{name}: files {:?}, expected {:?}",
            sizes(&got),
            sizes(want)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mirrors Nomad TestLogmon_Start_rotate and TestFileRotator_RotateFiles/_PurgeOldFiles at MiB
/// scale: the same StartRequest (max_files 2, 1 MiB files) and the same ~3 MiB of lines, one read
/// per chunk, give each logmon the files its rotator's model predicts, byte for byte. Nomad's are
/// those of the model with its counting quirk, ours those without; on this data the quirk makes
/// Nomad rotate early, which is the one documented difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logmon_rotates_the_same_lines_into_the_same_files_but_for_the_counting_quirk() {
    let Some(r) = reference() else { return };
    let chunks = log_chunks();
    let base = format!("{TASK}.stdout");
    let with_quirk = named(&base, rotate_model(&chunks, 1 << 20, 2, true));
    let without = named(&base, rotate_model(&chunks, 1 << 20, 2, false));
    assert_ne!(with_quirk, without, "the data exercises the counting quirk");
    let all: Vec<u8> = chunks.concat();
    for files in [&with_quirk, &without] {
        let kept: Vec<u8> = files.values().flatten().copied().collect();
        assert!(all.ends_with(&kept), "the models keep a tail of the data");
    }
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let name = which.name();
        let dir = tempfile::tempdir().unwrap();
        let procs = Tracked::default();
        let client = start_logmon(r, which).await;
        procs.track(client.pid());
        let mut lm = LogMonClient::new(client.channel());
        let req = logmon_request(dir.path(), 2, 1);
        within("Start", RPC, lm.start(req.clone()))
            .await
            .unwrap_or_else(|e| panic!("{name} Start: {e}"));
        let (out_fifo, err_fifo) = (req.stdout_fifo.clone(), req.stderr_fifo.clone());
        let payload = chunks.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = open_fifo_writer(&out_fifo);
            let mut err = open_fifo_writer(&err_fifo);
            err.write_all(b"one line on stderr\n").unwrap();
            paced_write(&mut out, &payload);
        });
        within("writing the log", Duration::from_secs(60), writer)
            .await
            .unwrap();
        let mut want = if which == Impl::Go {
            with_quirk.clone()
        } else {
            without.clone()
        };
        want.insert(format!("{TASK}.stderr.0"), b"one line on stderr\n".to_vec());
        await_files(dir.path(), &want, name).await;
        within("Stop", RPC, lm.stop(StopRequest {}))
            .await
            .unwrap_or_else(|e| panic!("{name} Stop: {e}"));
        let files = rotated_files(dir.path());
        assert_eq!(sizes(&files), sizes(&want), "{name} after Stop");
        assert!(files == want, "{name}: contents after Stop");
        seen.push(files);
        within("logmon kill", RPC, client.kill()).await;
    }
    eprintln!(
        "rotated: Nomad {:?}, goplugin {:?}",
        sizes(&seen[0]),
        sizes(&seen[1])
    );
}

/// Mirrors Nomad TestLogmon_Start_restart and TestLogmon_Start_restart_flusheslogs: after the
/// task's writers close (EOF on both FIFOs) and Start comes again, as on an in-place task restart,
/// the reopened writers' output is appended to the same files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logmon_start_after_a_writer_restart_appends() {
    let Some(r) = reference() else { return };
    let mut seen = Vec::new();
    for which in Impl::BOTH {
        let name = which.name();
        let dir = tempfile::tempdir().unwrap();
        let procs = Tracked::default();
        let client = start_logmon(r, which).await;
        procs.track(client.pid());
        let mut lm = LogMonClient::new(client.channel());
        let req = logmon_request(dir.path(), 3, 1);
        let files = |out: &[u8], err: &[u8]| {
            BTreeMap::from([
                (format!("{TASK}.stderr.0"), err.to_vec()),
                (format!("{TASK}.stdout.0"), out.to_vec()),
            ])
        };
        for (round, (out, err)) in [
            (&b"first\n"[..], &b"err 1\n"[..]),
            (b"second\n", b"err 2\n"),
        ]
        .into_iter()
        .enumerate()
        {
            within("Start", RPC, lm.start(req.clone()))
                .await
                .unwrap_or_else(|e| panic!("{name} Start #{round}: {e}"));
            let (o, e) = (req.stdout_fifo.clone(), req.stderr_fifo.clone());
            let write = tokio::task::spawn_blocking(move || {
                open_fifo_writer(&o).write_all(out).unwrap();
                open_fifo_writer(&e).write_all(err).unwrap();
            });
            within("a task's writers", RPC, write).await.unwrap();
            let want = if round == 0 {
                files(b"first\n", b"err 1\n")
            } else {
                files(b"first\nsecond\n", b"err 1\nerr 2\n")
            };
            await_files(dir.path(), &want, name).await;
        }
        within("Stop", RPC, lm.stop(StopRequest {}))
            .await
            .unwrap_or_else(|e| panic!("{name} Stop: {e}"));
        seen.push(rotated_files(dir.path()));
        within("logmon kill", RPC, client.kill()).await;
    }
    assert_eq!(seen[1], seen[0], "goplugin's files differ from Nomad's");
}
