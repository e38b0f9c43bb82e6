//! `goplugin_exec`, the Nomad task driver, driven over the real protocol by this crate's host
//! with Nomad's handshake, as a Nomad agent drives it: the binary started as `goplugin_exec`
//! (a symlink, as in plugin_dir), configs in go-cty's msgpack built byte by byte, every RPC, the
//! restarts (driver killed, executor killed, logmon killed) and the bad input, each leaving no
//! process, socket or FIFO behind.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use goplugin::proto::base::base_plugin_client::BasePluginClient;
use goplugin::proto::base::{
    ClientTopology, ClientTopologyCore, NomadConfig, NomadDriverConfig, PluginInfoRequest,
    PluginType, SetConfigRequest,
};
use goplugin::proto::drivers::driver_client::DriverClient;
use goplugin::proto::drivers::exec_task_streaming_request::{Setup, TerminalSize};
use goplugin::proto::drivers::fingerprint_response::HealthState;
use goplugin::proto::drivers::*;
use goplugin::proto::hclspec::spec::Block;
use goplugin::Client;
use rmpv::Value;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_goplugin");

/// A driver process and the directory it was given as TMPDIR (its and its helpers' sockets).
struct Driver {
    client: Client,
    tmp: tempfile::TempDir,
    _bin: tempfile::TempDir,
}

impl Driver {
    fn driver(&self) -> DriverClient<Channel> {
        DriverClient::new(self.client.channel())
    }
    fn base(&self) -> BasePluginClient<Channel> {
        BasePluginClient::new(self.client.channel())
    }
    /// Sockets in the driver's TMPDIR other than its own.
    fn helper_sockets(&self) -> Vec<PathBuf> {
        let own = self.client.reattach_config().addr;
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.display().to_string() != own)
            .collect()
    }
}

/// A test that fails half-way must not leave its driver, helpers or tasks running.
impl Drop for Driver {
    fn drop(&mut self) {
        let mut tree = vec![self.client.pid()];
        let mut i = 0;
        while i < tree.len() {
            tree.extend(children_of(tree[i]));
            i += 1;
        }
        for pid in tree {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Starts the binary as plugin_dir/goplugin_exec (a symlink) with Nomad's handshake.
async fn start_driver() -> Driver {
    let bin = tempfile::tempdir().unwrap();
    let link = bin.path().join("goplugin_exec");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    start_driver_with(Command::new(&link), tmp, bin).await
}

async fn start_driver_with(
    mut cmd: Command,
    tmp: tempfile::TempDir,
    bin: tempfile::TempDir,
) -> Driver {
    cmd.env("TMPDIR", tmp.path());
    let client = Client::builder(cmd, goplugin::nomad::handshake())
        .kill_on_drop(false) // a Nomad helper outlives its handle, as under Nomad
        .stdin(std::process::Stdio::null())
        .start()
        .await
        .expect("driver starts");
    Driver {
        client,
        tmp,
        _bin: bin,
    }
}

/// go-cty's msgpack of an object: every key present (nil when unset), keys in ascending order.
fn cty_object(pairs: &[(&str, Value)], keys: &[&str]) -> Vec<u8> {
    let mut keys: Vec<&str> = keys.to_vec();
    keys.sort();
    let map = keys
        .iter()
        .map(|k| {
            let v = pairs
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or(Value::Nil);
            (Value::from(*k), v)
        })
        .collect();
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(map)).unwrap();
    out
}

const TASK_KEYS: &[&str] = &[
    "args",
    "cap_add",
    "cap_drop",
    "cgroup_v1_override",
    "cgroup_v2_override",
    "command",
    "denied_envvars",
    "ipc_mode",
    "isolation",
    "max_file_size",
    "max_files",
    "oom_score_adj",
    "pid_mode",
    "work_dir",
];
const PLUGIN_KEYS: &[&str] = &[
    "allow_caps",
    "default_ipc_mode",
    "default_pid_mode",
    "denied_envvars",
    "denied_host_gids",
    "denied_host_uids",
    "enabled",
    "helpers",
    "isolation",
    "no_cgroups",
    "no_pivot_root",
];

/// The plugin config choosing the helper form: `helpers = "combined"` or `"separate"`.
fn helpers(form: &str) -> Vec<u8> {
    cty_object(&[("helpers", Value::from(form))], PLUGIN_KEYS)
}

/// Both forms, for the tests that hold for each.
const FORMS: [&str; 2] = ["combined", "separate"];

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

/// A task config as the agent encodes `config { command = ..., args = [...] }` with the schema's
/// defaults applied (max_files = 10, max_file_size = 10 as positive fixints).
fn task_config(command: &str, args: &[&str], extra: &[(&str, Value)]) -> Vec<u8> {
    let mut pairs = vec![
        ("command", Value::from(command)),
        ("args", strings(args)),
        ("max_files", Value::from(10u64)),
        ("max_file_size", Value::from(10u64)),
    ];
    pairs.extend(extra.iter().cloned());
    cty_object(&pairs, TASK_KEYS)
}

/// An alloc dir as the agent lays it out: `<alloc>/alloc/logs`, `<alloc>/<task>`.
struct Alloc {
    dir: tempfile::TempDir,
    id: String,
}

fn alloc() -> Alloc {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("alloc/logs")).unwrap();
    Alloc {
        id: format!("{:08x}-alloc", rand_u32()),
        dir,
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id()
}

impl Alloc {
    fn task(&self, name: &str, config: Vec<u8>) -> TaskConfig {
        std::fs::create_dir_all(self.dir.path().join(name)).unwrap();
        let logs = self.dir.path().join("alloc/logs");
        TaskConfig {
            id: format!("{}/{name}/{:08x}", self.id, rand_u32()),
            name: name.into(),
            msgpack_driver_config: config,
            env: HashMap::from([
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("NOMAD_TASK_NAME".into(), name.into()),
                ("SECRET_TOKEN".into(), "hidden".into()),
            ]),
            alloc_dir: self.dir.path().display().to_string(),
            stdout_path: logs
                .join(format!(".{name}.stdout.fifo"))
                .display()
                .to_string(),
            stderr_path: logs
                .join(format!(".{name}.stderr.fifo"))
                .display()
                .to_string(),
            alloc_id: self.id.clone(),
            ..Default::default()
        }
    }
    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("alloc/logs").join(file)).unwrap_or_default()
    }
    fn fifos(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("alloc/logs"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".fifo"))
            .collect()
    }
}

/// Live child processes of `pid` (the driver's executors and logmons).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            f.first() != Some(&"Z") && f.get(1) == Some(&pid.to_string().as_str())
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No helper process, helper socket or FIFO is left.
async fn assert_clean(d: &Driver, a: &Alloc) {
    let pid = d.client.pid();
    eventually("helpers to exit", Duration::from_secs(10), || {
        children_of(pid).is_empty()
    })
    .await;
    assert!(
        d.helper_sockets().is_empty(),
        "sockets left: {:?}",
        d.helper_sockets()
    );
    assert!(a.fifos().is_empty(), "FIFOs left: {:?}", a.fifos());
}

async fn start(d: &Driver, task: TaskConfig) -> TaskHandle {
    d.driver()
        .start_task(StartTaskRequest { task: Some(task) })
        .await
        .expect("StartTask")
        .into_inner()
        .handle
        .expect("handle")
}

async fn start_err(d: &Driver, task: TaskConfig) -> tonic::Status {
    d.driver()
        .start_task(StartTaskRequest { task: Some(task) })
        .await
        .expect_err("StartTask must fail")
}

async fn wait(d: &Driver, id: &str) -> WaitTaskResponse {
    tokio::time::timeout(
        Duration::from_secs(30),
        d.driver().wait_task(WaitTaskRequest { task_id: id.into() }),
    )
    .await
    .expect("WaitTask returns")
    .expect("WaitTask")
    .into_inner()
}

async fn destroy(d: &Driver, id: &str) {
    d.driver()
        .destroy_task(DestroyTaskRequest {
            task_id: id.into(),
            force: true,
        })
        .await
        .expect("DestroyTask");
}

async fn inspect(d: &Driver, id: &str) -> InspectTaskResponse {
    d.driver()
        .inspect_task(InspectTaskRequest { task_id: id.into() })
        .await
        .expect("InspectTask")
        .into_inner()
}

fn task_pid(i: &InspectTaskResponse) -> u32 {
    i.driver.as_ref().unwrap().attributes["pid"]
        .parse()
        .unwrap()
}

fn attr_pid(i: &InspectTaskResponse, key: &str) -> u32 {
    i.driver.as_ref().unwrap().attributes[key].parse().unwrap()
}

/// The SetConfig a Nomad 2.x live instance sends: config plus ports and a topology.
async fn set_config(d: &Driver, msgpack: Vec<u8>, modern: bool) -> Result<(), tonic::Status> {
    let topology = modern.then(|| ClientTopology {
        cores: vec![
            ClientTopologyCore {
                core_id: 0,
                base_speed: 2600,
                ..Default::default()
            },
            ClientTopologyCore {
                core_id: 1,
                base_speed: 2600,
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    d.base()
        .set_config(SetConfigRequest {
            msgpack_config: msgpack,
            nomad_config: Some(NomadConfig {
                driver: Some(NomadDriverConfig {
                    client_max_port: 14512,
                    client_min_port: 14000,
                    topology,
                }),
            }),
            plugin_api_version: "v0.1.0".into(),
        })
        .await
        .map(|_| ())
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

#[tokio::test]
async fn identifies_itself_and_describes_its_schemas_and_capabilities() {
    let d = start_driver().await;
    let info = d
        .base()
        .plugin_info(PluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type, PluginType::Driver as i32);
    assert_eq!(info.name, "goplugin_exec");
    assert_eq!(info.plugin_api_versions, vec!["v0.1.0"]);
    assert_eq!(info.plugin_version, env!("CARGO_PKG_VERSION"));
    let schema = d
        .base()
        .config_schema(goplugin::proto::base::ConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    let Some(Block::Object(o)) = schema.block else {
        panic!("plugin schema is not an object")
    };
    let mut keys: Vec<_> = o.attributes.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, PLUGIN_KEYS);
    let task_schema = d
        .driver()
        .task_config_schema(TaskConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    let Some(Block::Object(o)) = task_schema.block else {
        panic!("task schema is not an object")
    };
    let Some(Block::Attr(cmd)) = o.attributes["command"].block.clone() else {
        panic!("command is not an attr")
    };
    assert!(cmd.required && cmd.r#type == "string");
    let caps = d
        .driver()
        .capabilities(CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .unwrap();
    assert!(caps.send_signals && caps.exec && caps.disable_log_collection);
    assert_eq!(
        caps.fs_isolation,
        driver_capabilities::FsIsolation::None as i32
    );
    assert!(!caps.must_create_network);
    d.driver().init(InitRequest {}).await.expect("Init");
    d.driver().init(InitRequest {}).await.expect("Init again");
    let net = d
        .driver()
        .create_network(CreateNetworkRequest::default())
        .await
        .unwrap_err();
    assert_eq!(net.code(), tonic::Code::Unimplemented);
    assert!(
        net.message().contains("must_create_network"),
        "{}",
        net.message()
    );
    d.driver()
        .shutdown(ShutdownRequest {})
        .await
        .expect("Shutdown");
}

/// go-cty's bytes for `config { enabled = false  denied_host_uids = "0-99" }`: a fixmap of the
/// eleven keys in ascending order, the schema's defaults applied (`helpers`, `isolation`, the
/// pid/ipc modes, `no_cgroups`, `no_pivot_root`), nil for the unset ones (spec §6).
const PLUGIN_CONFIG_VECTOR: &[u8] = b"\x8b\xaaallow_caps\xc0\xb0default_ipc_mode\xa7private\xb0default_pid_mode\xa7private\xaedenied_envvars\xc0\xb0denied_host_gids\xc0\xb0denied_host_uids\xa40-99\xa7enabled\xc2\xa7helpers\xa8combined\xa9isolation\xa4none\xaano_cgroups\xc2\xadno_pivot_root\xc2";

#[tokio::test]
async fn set_config_decodes_nomads_msgpack_and_refuses_bad_config() {
    let d = start_driver().await;
    assert_eq!(
        cty_object(
            &[
                ("enabled", Value::from(false)),
                ("no_cgroups", Value::from(false)),
                ("helpers", Value::from("combined")),
                ("isolation", Value::from("none")),
                ("default_pid_mode", Value::from("private")),
                ("default_ipc_mode", Value::from("private")),
                ("no_pivot_root", Value::from(false)),
                ("denied_host_uids", Value::from("0-99")),
            ],
            PLUGIN_KEYS
        ),
        PLUGIN_CONFIG_VECTOR,
        "our encoder writes what go-cty writes"
    );
    // The validation launch: no nomad_config, twice; an empty config is the defaults.
    for _ in 0..2 {
        d.base()
            .set_config(SetConfigRequest {
                msgpack_config: vec![],
                nomad_config: None,
                plugin_api_version: "v0.1.0".into(),
            })
            .await
            .expect("empty config");
    }
    let mut fp = d
        .driver()
        .fingerprint(FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = fp.message().await.unwrap().unwrap();
    assert_eq!(first.health, HealthState::Healthy as i32);
    assert!(matches!(
        first.attributes["driver.goplugin_exec"].value,
        Some(goplugin::proto::structs::attribute::Value::BoolVal(true))
    ));
    set_config(&d, PLUGIN_CONFIG_VECTOR.to_vec(), true)
        .await
        .expect("vector");
    let next = tokio::time::timeout(Duration::from_secs(5), fp.message())
        .await
        .expect("a new fingerprint after SetConfig")
        .unwrap()
        .unwrap();
    assert_eq!(next.health, HealthState::Undetected as i32);
    assert_eq!(next.health_description, "disabled");

    let bad = [
        (
            cty_object(&[("enabled", Value::from("yes"))], PLUGIN_KEYS),
            "plugin config: \"enabled\" must be a bool, not string \"yes\"",
        ),
        (
            cty_object(&[("denied_host_uids", Value::from(5u64))], PLUGIN_KEYS),
            "\"denied_host_uids\" must be a string, not number 5",
        ),
        (
            cty_object(&[("denied_host_uids", Value::from("10-1"))], PLUGIN_KEYS),
            "ends before it starts",
        ),
        (
            cty_object(&[("surprise", Value::from(true))], &["surprise"]),
            "unknown key \"surprise\"",
        ),
        (
            helpers("both"),
            "plugin config: helpers \"both\" must be \"combined\" (executor and logmon in one process per task) or \"separate\"",
        ),
        (
            cty_object(&[("helpers", Value::from(1u64))], PLUGIN_KEYS),
            "plugin config: \"helpers\" must be a string, not number 1",
        ),
        (b"\x93\x01\x02\x03".to_vec(), "must be a map"),
        (b"\x85\xae".to_vec(), "not valid msgpack"),
    ];
    for (bytes, want) in bad {
        let e = set_config(&d, bytes, true).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(want), "{} lacks {want:?}", e.message());
    }
    // A disabled driver starts no task.
    let a = alloc();
    let e = start_err(&d, a.task("t", task_config("/bin/true", &[], &[]))).await;
    assert!(e.message().contains("disabled"), "{}", e.message());
    assert_clean(&d, &a).await;
}

#[tokio::test]
async fn runs_a_batch_task_into_nomads_log_files_and_reports_its_exit() {
    runs_a_batch_task_into_nomads_log_files_and_reports_its_exit_with("combined").await;
}

#[tokio::test]
async fn runs_a_batch_task_through_two_helpers_into_nomads_log_files() {
    runs_a_batch_task_into_nomads_log_files_and_reports_its_exit_with("separate").await;
}

async fn runs_a_batch_task_into_nomads_log_files_and_reports_its_exit_with(form: &str) {
    let d = start_driver().await;
    set_config(&d, helpers(form), false).await.unwrap();
    let a = alloc();
    let script = "echo out-line; echo err-line >&2; echo token=$SECRET_TOKEN; pwd; exit 3";
    let mut events = d
        .driver()
        .task_events(TaskEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let t = a.task(
        "batch",
        task_config(
            "/bin/sh",
            &["-c", script],
            &[("denied_envvars", strings(&["SECRET_*"]))],
        ),
    );
    let id = t.id.clone();
    let handle = start(&d, t.clone()).await;
    assert_eq!(handle.version, 1);
    assert_eq!(handle.config.as_ref().unwrap().id, id);
    assert!(!handle.driver_state.is_empty());
    let i = inspect(&d, &id).await;
    assert_eq!(i.driver.as_ref().unwrap().attributes["helpers"], form);
    let (exec_pid, logmon_pid) = (attr_pid(&i, "executor_pid"), attr_pid(&i, "logmon_pid"));
    if form == "combined" {
        assert_eq!(exec_pid, logmon_pid, "one process serves both");
        assert!(
            cmdline(exec_pid).contains(" task-helper {"),
            "{}",
            cmdline(exec_pid)
        );
        assert_eq!(children_of(d.client.pid()), vec![exec_pid]);
    } else {
        assert_ne!(exec_pid, logmon_pid);
        assert!(
            cmdline(exec_pid).contains(" executor {"),
            "{}",
            cmdline(exec_pid)
        );
        assert!(
            cmdline(logmon_pid).trim_end().ends_with(" logmon"),
            "{}",
            cmdline(logmon_pid)
        );
    }
    let again = start_err(&d, t).await;
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    assert!(
        again.message().contains("already started"),
        "{}",
        again.message()
    );
    let w = wait(&d, &id).await;
    assert_eq!(w.result.unwrap().exit_code, 3);
    assert!(w.err.is_empty());
    // A second waiter after the exit gets the same result at once.
    assert_eq!(wait(&d, &id).await.result.unwrap().exit_code, 3);
    let i = inspect(&d, &id).await;
    let status = i.task.unwrap();
    assert_eq!(status.state, TaskState::Exited as i32);
    assert!(status.started_at.is_some() && status.completed_at.is_some());
    assert_eq!(status.result.unwrap().exit_code, 3);
    eventually("logs", Duration::from_secs(5), || {
        a.log("batch.stdout.0").contains("token=")
    })
    .await;
    let out = a.log("batch.stdout.0");
    assert!(
        out.starts_with("out-line\ntoken=\n"),
        "denied variable filtered: {out}"
    );
    assert!(
        out.contains(&format!("{}/batch", a.dir.path().display())),
        "{out}"
    );
    assert_eq!(a.log("batch.stderr.0"), "err-line\n");
    destroy(&d, &id).await;
    assert_clean(&d, &a).await;
    let gone = d
        .driver()
        .inspect_task(InspectTaskRequest { task_id: id })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    // No driver event for a plain run.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), events.message())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn each_agent_generation_gets_its_own_launch() {
    let d = start_driver().await;
    let a = alloc();
    let generations = [
        (false, "CpuTotalTicks"),
        (true, "\"Compute\":{\"nc\":2,\"tc\":5200}"),
    ];
    for ((modern, key), form) in generations.into_iter().flat_map(|g| FORMS.map(|f| (g, f))) {
        set_config(&d, helpers(form), modern).await.unwrap();
        let t = a.task("gen", task_config("/bin/sleep", &["30"], &[]));
        let id = t.id.clone();
        start(&d, t).await;
        let exec_pid = attr_pid(&inspect(&d, &id).await, "executor_pid");
        let line = cmdline(exec_pid);
        assert!(line.contains(key), "{line}");
        destroy(&d, &id).await;
    }
    assert_clean(&d, &a).await;
}

#[tokio::test]
async fn stops_signals_execs_and_streams_stats_of_a_service_task() {
    stops_signals_execs_and_streams_stats_of_a_service_task_with("combined").await;
}

#[tokio::test]
async fn stops_signals_execs_and_streams_stats_through_two_helpers() {
    stops_signals_execs_and_streams_stats_of_a_service_task_with("separate").await;
}

async fn stops_signals_execs_and_streams_stats_of_a_service_task_with(form: &str) {
    let d = start_driver().await;
    set_config(&d, helpers(form), true).await.unwrap();
    let a = alloc();
    let script =
        "trap 'echo got-usr1' USR1; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done";
    let t = a.task("svc", task_config("/bin/sh", &["-c", script], &[]));
    let id = t.id.clone();
    start(&d, t).await;

    let mut stats = d
        .driver()
        .task_stats(TaskStatsRequest {
            task_id: id.clone(),
            collection_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
        })
        .await
        .expect("TaskStats")
        .into_inner();
    for _ in 0..2 {
        let s = tokio::time::timeout(Duration::from_secs(5), stats.message())
            .await
            .expect("a sample")
            .unwrap()
            .unwrap()
            .stats
            .unwrap();
        assert!(s.timestamp.is_some());
        let agg = s.agg_resource_usage.unwrap();
        assert!(agg.memory.unwrap().rss > 0);
    }
    drop(stats);

    d.driver()
        .signal_task(SignalTaskRequest {
            task_id: id.clone(),
            signal: "SIGUSR1".into(),
        })
        .await
        .expect("SignalTask");
    eventually("trap output", Duration::from_secs(5), || {
        a.log("svc.stdout.0").contains("got-usr1")
    })
    .await;
    let bad = d
        .driver()
        .signal_task(SignalTaskRequest {
            task_id: id.clone(),
            signal: "SIGNOPE".into(),
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("SIGNOPE"), "{}", bad.message());

    let ex = d
        .driver()
        .exec_task(ExecTaskRequest {
            task_id: id.clone(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo from-exec; exit 4".into(),
            ],
            timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
        })
        .await
        .expect("ExecTask")
        .into_inner();
    assert_eq!(ex.result.unwrap().exit_code, 4);
    assert_eq!(String::from_utf8_lossy(&ex.stdout), "from-exec\n");
    let empty = d
        .driver()
        .exec_task(ExecTaskRequest {
            task_id: id.clone(),
            command: vec![],
            timeout: None,
        })
        .await
        .unwrap_err();
    assert!(
        empty.message().contains("at least one value"),
        "{}",
        empty.message()
    );

    exec_streaming(&d, &id).await;

    let refused = d
        .driver()
        .destroy_task(DestroyTaskRequest {
            task_id: id.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert!(refused.message().contains("cannot destroy running task"));
    d.driver()
        .stop_task(StopTaskRequest {
            task_id: id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            signal: "SIGTERM".into(),
        })
        .await
        .expect("StopTask");
    let w = wait(&d, &id).await;
    assert_eq!(w.result.unwrap().exit_code, 0, "the TERM trap exits 0");
    eventually("bye", Duration::from_secs(5), || {
        a.log("svc.stdout.0").contains("bye")
    })
    .await;
    destroy(&d, &id).await;
    assert_clean(&d, &a).await;
}

fn setup(id: &str, command: &[&str], tty: bool) -> ExecTaskStreamingRequest {
    ExecTaskStreamingRequest {
        setup: Some(Setup {
            task_id: id.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
        }),
        ..Default::default()
    }
}

async fn stream(
    d: &Driver,
    msgs: Vec<ExecTaskStreamingRequest>,
) -> (String, String, Option<i32>, usize) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    let mut out = d
        .driver()
        .exec_task_streaming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ExecTaskStreaming")
        .into_inner();
    let (mut stdout, mut stderr, mut code, mut exits) = (String::new(), String::new(), None, 0);
    while let Some(m) = tokio::time::timeout(Duration::from_secs(20), out.next())
        .await
        .expect("exec stream progresses")
    {
        let m = m.expect("stream message");
        if let Some(o) = m.stdout {
            stdout.push_str(&String::from_utf8_lossy(&o.data));
        }
        if let Some(e) = m.stderr {
            stderr.push_str(&String::from_utf8_lossy(&e.data));
        }
        if m.exited {
            exits += 1;
            code = m.result.map(|r| r.exit_code);
        }
    }
    drop(tx);
    (stdout, stderr, code, exits)
}

async fn exec_streaming(d: &Driver, id: &str) {
    let (o, e, code, exits) = stream(
        d,
        vec![setup(
            id,
            &[
                "/bin/sh",
                "-c",
                "echo hello stdout; echo hello stderr >&2; exit 43",
            ],
            false,
        )],
    )
    .await;
    assert_eq!(
        (o.as_str(), e.as_str(), code, exits),
        ("hello stdout\n", "hello stderr\n", Some(43), 1)
    );
    let stdin = |data: &[u8], close: bool| ExecTaskStreamingRequest {
        stdin: Some(ExecTaskStreamingIoOperation {
            data: data.to_vec(),
            close,
        }),
        ..Default::default()
    };
    let (o, _, code, _) = stream(
        d,
        vec![
            setup(
                id,
                &["/bin/sh", "-c", "echo hello from command; head -n1"],
                false,
            ),
            stdin(b"hello from stdin\n", false),
            stdin(b"", true),
        ],
    )
    .await;
    assert_eq!(
        (o.as_str(), code),
        ("hello from command\nhello from stdin\n", Some(0))
    );
    let resize = |h, w| ExecTaskStreamingRequest {
        tty_size: Some(TerminalSize {
            height: h,
            width: w,
        }),
        ..Default::default()
    };
    let (o, _, code, exits) = stream(
        d,
        vec![
            setup(id, &["/bin/sh", "-c", "sleep 1; stty size"], true),
            resize(50, 40),
            resize(100, 100),
        ],
    )
    .await;
    assert_eq!((o.as_str(), code, exits), ("100 100\r\n", Some(0), 1));
    // The first message must be the setup.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(stdin(b"x", false)).await.unwrap();
    let r = d
        .driver()
        .exec_task_streaming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let err = match r {
        Err(e) => e,
        Ok(resp) => resp.into_inner().message().await.unwrap_err(),
    };
    assert!(
        err.message()
            .contains("first message should always be setup"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_killed_driver_is_replaced_and_recovers_its_tasks_uninterrupted() {
    a_killed_driver_is_replaced_and_recovers_its_tasks_uninterrupted_with("combined").await;
}

#[tokio::test]
async fn a_killed_driver_recovers_two_helper_tasks_uninterrupted() {
    a_killed_driver_is_replaced_and_recovers_its_tasks_uninterrupted_with("separate").await;
}

async fn a_killed_driver_is_replaced_and_recovers_its_tasks_uninterrupted_with(form: &str) {
    let d = start_driver().await;
    set_config(&d, helpers(form), true).await.unwrap();
    let a = alloc();
    let script = "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.1; done";
    let t = a.task("svc", task_config("/bin/sh", &["-c", script], &[]));
    let id = t.id.clone();
    let mut handle = start(&d, t).await;
    let before = inspect(&d, &id).await;
    let pid = task_pid(&before);
    // The driver dies (SIGKILL): the task, its executor and its logmon live on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.client.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.client.wait().await;
    assert!(alive(pid));
    let mut d = d;
    let tmp = std::mem::replace(&mut d.tmp, tempfile::tempdir().unwrap());
    let bin = std::mem::replace(&mut d._bin, tempfile::tempdir().unwrap());
    drop(d);
    let link = bin.path().join("goplugin_exec");
    let d = start_driver_with(Command::new(&link), tmp, bin).await;
    set_config(&d, helpers(form), true).await.unwrap();
    // After an agent restart the raw task config is not sent again.
    handle
        .config
        .as_mut()
        .unwrap()
        .msgpack_driver_config
        .clear();
    handle.state = TaskState::Unknown as i32;
    let recover = RecoverTaskRequest {
        task_id: String::new(),
        handle: Some(handle.clone()),
    };
    d.driver()
        .recover_task(recover.clone())
        .await
        .expect("RecoverTask");
    d.driver()
        .recover_task(recover)
        .await
        .expect("RecoverTask of a known task is OK");
    let after = inspect(&d, &id).await;
    assert_eq!(task_pid(&after), pid, "the same process");
    for key in ["executor_pid", "logmon_pid"] {
        assert_eq!(
            attr_pid(&after, key),
            attr_pid(&before, key),
            "{key} reattached"
        );
    }
    assert_eq!(after.driver.as_ref().unwrap().attributes["helpers"], form);
    assert_eq!(after.task.unwrap().state, TaskState::Running as i32);
    let lines = |a: &Alloc| a.log("svc.stdout.0").lines().count();
    let n = lines(&a);
    eventually("output after recovery", Duration::from_secs(5), || {
        lines(&a) > n + 3
    })
    .await;
    let text = a.log("svc.stdout.0");
    for (k, l) in text.lines().enumerate() {
        assert_eq!(l, format!("line {}", k + 1), "no line lost or repeated");
    }
    d.driver()
        .stop_task(StopTaskRequest {
            task_id: id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            signal: "SIGKILL".into(),
        })
        .await
        .expect("StopTask");
    assert_eq!(wait(&d, &id).await.result.unwrap().signal, 9);
    destroy(&d, &id).await;
    // The helpers were children of the killed driver: check them by pid.
    for key in ["executor_pid", "logmon_pid"] {
        let p = attr_pid(&before, key);
        eventually(key, Duration::from_secs(10), || !alive(p)).await;
    }
    assert!(a.fifos().is_empty());
}

#[tokio::test]
async fn a_killed_task_helper_fails_the_task_with_a_nonzero_code_and_leaves_nothing() {
    a_killed_executor_fails_the_task_with_a_nonzero_code_and_kills_it_with("combined").await;
}

#[tokio::test]
async fn a_killed_executor_fails_the_task_with_a_nonzero_code_and_kills_it() {
    a_killed_executor_fails_the_task_with_a_nonzero_code_and_kills_it_with("separate").await;
}

async fn a_killed_executor_fails_the_task_with_a_nonzero_code_and_kills_it_with(form: &str) {
    let d = start_driver().await;
    set_config(&d, helpers(form), false).await.unwrap();
    let a = alloc();
    let t = a.task(
        "victim",
        task_config("/bin/sh", &["-c", "sleep 1000 & sleep 1000"], &[]),
    );
    let id = t.id.clone();
    start(&d, t).await;
    let i = inspect(&d, &id).await;
    let (pid, exec_pid) = (task_pid(&i), attr_pid(&i, "executor_pid"));
    // As root on cgroup v1 a 1.6-style Launch puts the task in the executor's own freezer
    // cgroup /nomad/<uuid>, which the dead executor cannot remove: the driver must.
    let freezer = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_string()))
        .filter(|p| p.starts_with("/nomad/"))
        .map(|p| PathBuf::from(format!("/sys/fs/cgroup/freezer{p}")));
    if nix::unistd::geteuid().is_root() && std::path::Path::new("/sys/fs/cgroup/freezer").is_dir() {
        assert!(
            freezer.is_some(),
            "a 1.6 Launch as root puts the task in /nomad/<uuid>"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(exec_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let w = wait(&d, &id).await;
    assert_eq!(w.result.unwrap().exit_code, -1, "not 0 (nomad#25453)");
    assert!(w.err.contains("executor"), "{}", w.err);
    eventually("task killed", Duration::from_secs(5), || !alive(pid)).await;
    if let Some(dir) = freezer {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    destroy(&d, &id).await;
    assert_clean(&d, &a).await;
}

#[tokio::test]
async fn a_killed_logmon_is_replaced_on_the_same_fifos() {
    let d = start_driver().await;
    set_config(&d, helpers("separate"), true).await.unwrap();
    let a = alloc();
    let mut events = d
        .driver()
        .task_events(TaskEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let script = "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.05; done";
    let t = a.task("chatty", task_config("/bin/sh", &["-c", script], &[]));
    let id = t.id.clone();
    let handle = start(&d, t).await;
    let i = inspect(&d, &id).await;
    let (pid, logmon) = (task_pid(&i), attr_pid(&i, "logmon_pid"));
    eventually("first lines", Duration::from_secs(5), || {
        a.log("chatty.stdout.0").lines().count() > 3
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(logmon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("a driver event")
        .unwrap()
        .unwrap();
    assert_eq!(ev.task_id, id);
    assert!(ev.message.contains("logmon exited"), "{}", ev.message);
    let i = inspect(&d, &id).await;
    assert_ne!(attr_pid(&i, "logmon_pid"), logmon);
    assert!(alive(pid), "the task was not interrupted");
    let n = a.log("chatty.stdout.0").lines().count();
    eventually(
        "lines through the new logmon",
        Duration::from_secs(5),
        || a.log("chatty.stdout.0").lines().count() > n + 5,
    )
    .await;
    // A driver restarted now finds the replacement, not the logmon the handle names.
    let replacement = attr_pid(&i, "logmon_pid");
    let executor = attr_pid(&i, "executor_pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.client.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.client.wait().await;
    let mut d = d;
    let tmp = std::mem::replace(&mut d.tmp, tempfile::tempdir().unwrap());
    let bin = std::mem::replace(&mut d._bin, tempfile::tempdir().unwrap());
    drop(d);
    let d = start_driver_with(Command::new(bin.path().join("goplugin_exec")), tmp, bin).await;
    d.driver()
        .recover_task(RecoverTaskRequest {
            task_id: String::new(),
            handle: Some(handle),
        })
        .await
        .expect("RecoverTask");
    let i = inspect(&d, &id).await;
    assert_eq!(
        attr_pid(&i, "logmon_pid"),
        replacement,
        "reattached, no second logmon"
    );
    assert_eq!(task_pid(&i), pid);
    let n = a.log("chatty.stdout.0").lines().count();
    eventually("lines after recovery", Duration::from_secs(5), || {
        a.log("chatty.stdout.0").lines().count() > n + 5
    })
    .await;
    destroy(&d, &id).await;
    for p in [replacement, executor, pid] {
        eventually("helpers and task gone", Duration::from_secs(10), || {
            !alive(p)
        })
        .await;
    }
    assert!(a.fifos().is_empty());
    assert!(!a
        .dir
        .path()
        .join("chatty/.goplugin_exec.logmon.json")
        .exists());
}

#[tokio::test]
async fn bad_task_input_is_a_clear_error_and_leaves_nothing_behind() {
    let d = start_driver().await;
    let a = alloc();
    let no_command = cty_object(&[("args", strings(&["x"]))], TASK_KEYS);
    let cases: Vec<(TaskConfig, &str)> = vec![
        (
            a.task("t", no_command),
            "task config: \"command\" is required",
        ),
        (
            a.task(
                "t",
                task_config("/bin/true", &[], &[("args", Value::from("notalist"))]),
            ),
            "\"args\" must be a list of strings, not string \"notalist\"",
        ),
        (
            a.task(
                "t",
                task_config("/bin/true", &[], &[("oom_score_adj", Value::from("high"))]),
            ),
            "\"oom_score_adj\" must be a number",
        ),
        (
            a.task(
                "t",
                task_config("/bin/true", &[], &[("work_dir", Value::from("relative"))]),
            ),
            "work_dir \"relative\" must be an absolute path",
        ),
        (
            a.task(
                "t",
                cty_object(
                    &[("command", Value::from("x")), ("extra", Value::from(1))],
                    &["command", "extra"],
                ),
            ),
            "unknown key \"extra\"",
        ),
        (
            a.task("t", task_config("no-such-command-xyz", &[], &[])),
            "binary \"no-such-command-xyz\" could not be found",
        ),
        // Refused by logmon's Start, after the helper started: a failure half-way.
        (
            a.task(
                "t",
                task_config("/bin/true", &[], &[("max_files", Value::from(200_000u64))]),
            ),
            "logmon Start: max_files 200000 is not in 1..=100000",
        ),
        (
            TaskConfig {
                user: "no-such-user-xyz".into(),
                ..a.task("t", task_config("/bin/true", &[], &[]))
            },
            "task user \"no-such-user-xyz\" cannot be used: no such user",
        ),
        (
            TaskConfig {
                user: "nobody".into(),
                ..a.task("t", task_config("/bin/true", &[], &[]))
            },
            "uid 65534, which this node's denied_host_uids denies",
        ),
    ];
    for form in FORMS {
        set_config(
            &d,
            cty_object(
                &[
                    ("denied_host_uids", Value::from("65534")),
                    ("helpers", Value::from(form)),
                ],
                PLUGIN_KEYS,
            ),
            false,
        )
        .await
        .unwrap();
        for (task, want) in &cases {
            let e = start_err(&d, task.clone()).await;
            assert!(
                e.message().contains(want),
                "{form}: {:?} lacks {want:?}",
                e.message()
            );
            assert_ne!(e.code(), tonic::Code::Unavailable);
            assert_clean(&d, &a).await;
        }
    }
    // A missing binary is the job's fault: no RecoverableError, no restarts (as raw_exec).
    let e = start_err(
        &d,
        a.task("t", task_config("no-such-command-xyz", &[], &[])),
    )
    .await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.details().is_empty());
    for unknown in ["nope", ""] {
        let w = d
            .driver()
            .wait_task(WaitTaskRequest {
                task_id: unknown.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(w.code(), tonic::Code::NotFound);
        assert!(w.message().contains("task not found"), "{}", w.message());
        let s = d
            .driver()
            .stop_task(StopTaskRequest {
                task_id: unknown.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::NotFound);
        let x = d
            .driver()
            .destroy_task(DestroyTaskRequest {
                task_id: unknown.into(),
                force: true,
            })
            .await
            .unwrap_err();
        assert_eq!(x.code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn corrupt_or_foreign_handles_are_refused_and_start_nothing() {
    let d = start_driver().await;
    let a = alloc();
    let config = a.task("t", vec![]);
    let raw_exec_state = {
        let v = Value::Map(vec![
            (Value::from("Pid"), Value::from(1u64)),
            (Value::from("StartedAt"), Value::Binary(vec![1; 15])),
        ]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        b
    };
    let foreign = {
        let v = Value::Map(vec![
            (Value::from("driver"), Value::from("raw_exec")),
            (Value::from("version"), Value::from(1u64)),
        ]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        b
    };
    let cases: Vec<(i32, Vec<u8>, &str)> = vec![
        (
            1,
            b"garbage".to_vec(),
            "corrupt or written by another driver",
        ),
        (1, vec![], "corrupt or written by another driver"),
        (1, raw_exec_state, "corrupt or written by another driver"),
        (1, foreign, "written by driver \"raw_exec\""),
        (7, vec![], "task handle version 7"),
    ];
    for (version, state, want) in cases {
        let e = d
            .driver()
            .recover_task(RecoverTaskRequest {
                task_id: String::new(),
                handle: Some(TaskHandle {
                    version,
                    config: Some(config.clone()),
                    state: 0,
                    driver_state: state,
                }),
            })
            .await
            .unwrap_err();
        assert!(
            e.message().contains(want),
            "{:?} lacks {want:?}",
            e.message()
        );
        assert_clean(&d, &a).await;
    }
    let none = d
        .driver()
        .recover_task(RecoverTaskRequest::default())
        .await
        .unwrap_err();
    assert!(none.message().contains("without a handle"));
}

#[tokio::test]
async fn started_with_no_arguments_and_nomads_cookie_it_is_the_driver() {
    let bin = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = start_driver_with(Command::new(BIN), tmp, bin).await;
    let info = d
        .base()
        .plugin_info(PluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "goplugin_exec");
    // By hand, without the cookie, the binary keeps its CLI.
    let out = Command::new(BIN)
        .args(["handshake", "1|2|unix|/tmp/p|grpc|"])
        .env_remove("NOMAD_PLUGIN_MAGIC_COOKIE")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("app version:   2"));
    // As goplugin_exec without the cookie: go-plugin's refusal text, exit 1.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("goplugin_exec");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = Command::new(&link)
        .env_remove("NOMAD_PLUGIN_MAGIC_COOKIE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("This binary is a plugin"));
}

/// Soft and hard `Max open files` of a process, from /proc/PID/limits.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let v: Vec<&str> = line.split_whitespace().collect();
    (v[3].to_string(), v[4].to_string())
}

/// A driver started with the common soft limit of 1024 open files (an agent run from a shell)
/// raises its own to the hard limit, as Go programs do: it holds about ten descriptors per task.
/// Its helpers and the task get the original soft limit back, as Go's os/exec gives it back.
#[tokio::test]
async fn the_driver_raises_its_open_file_limit_and_its_tasks_get_the_original() {
    use std::os::unix::process::CommandExt;
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if hard <= 1024 {
        eprintln!("skipping: the hard open-file limit is {hard}, nothing to raise to");
        return;
    }
    let bin = tempfile::tempdir().unwrap();
    let link = bin.path().join("goplugin_exec");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut cmd = Command::new(&link);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, hard)?;
            Ok(())
        });
    }
    let d = start_driver_with(cmd, tempfile::tempdir().unwrap(), bin).await;
    set_config(&d, vec![], false).await.unwrap();
    assert_eq!(nofile(d.client.pid()), (hard.to_string(), hard.to_string()));
    let a = alloc();
    let t = a.task(
        "limits",
        task_config("/bin/sh", &["-c", "ulimit -n; exec sleep 600"], &[]),
    );
    let id = t.id.clone();
    start(&d, t).await;
    eventually("the task's output", Duration::from_secs(5), || {
        a.log("limits.stdout.0").contains('\n')
    })
    .await;
    assert_eq!(a.log("limits.stdout.0").trim(), "1024");
    let i = inspect(&d, &id).await;
    assert_eq!(nofile(task_pid(&i)).0, "1024");
    destroy(&d, &id).await;
    assert_clean(&d, &a).await;
}

/// Kills the driver with SIGKILL (its helpers and tasks live on) and starts another on the same
/// TMPDIR, as the agent does after a driver crash.
async fn kill_and_restart_driver(d: Driver) -> Driver {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.client.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.client.wait().await;
    // A SIGKILLed driver cannot remove its own socket; its helpers' sockets are what is checked.
    let _ = std::fs::remove_file(d.client.reattach_config().addr);
    let mut d = d;
    let tmp = std::mem::replace(&mut d.tmp, tempfile::tempdir().unwrap());
    let bin = std::mem::replace(&mut d._bin, tempfile::tempdir().unwrap());
    drop(d);
    start_driver_with(Command::new(bin.path().join("goplugin_exec")), tmp, bin).await
}

/// `driver_state` as the driver wrote it before the helper form existed: state version 1, the
/// same fields but `helpers`.
fn as_version_1(state: &[u8]) -> Vec<u8> {
    let Value::Map(fields) = rmpv::decode::read_value(&mut &state[..]).unwrap() else {
        panic!("driver_state is not a map")
    };
    assert!(fields.iter().any(|(k, _)| k.as_str() == Some("helpers")));
    let v1 = fields
        .into_iter()
        .filter(|(k, _)| k.as_str() != Some("helpers"))
        .map(|(k, v)| match k.as_str() {
            Some("version") => (k, Value::from(1u64)),
            _ => (k, v),
        })
        .collect();
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(v1)).unwrap();
    out
}

/// A task started by a driver version that only knew two helpers (handle state version 1) is
/// recovered by a driver whose helpers are combined: it reattaches to both of its helpers, the
/// output goes on without a gap, and stopping it leaves nothing.
#[tokio::test]
async fn a_version_1_two_helper_handle_recovers_under_a_combined_driver() {
    let d = start_driver().await;
    set_config(&d, helpers("separate"), true).await.unwrap();
    let a = alloc();
    let script = "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.1; done";
    let t = a.task("old", task_config("/bin/sh", &["-c", script], &[]));
    let id = t.id.clone();
    let mut handle = start(&d, t).await;
    handle.driver_state = as_version_1(&handle.driver_state);
    handle
        .config
        .as_mut()
        .unwrap()
        .msgpack_driver_config
        .clear();
    let before = inspect(&d, &id).await;
    let d = kill_and_restart_driver(d).await;
    set_config(&d, vec![], true).await.unwrap();
    d.driver()
        .recover_task(RecoverTaskRequest {
            task_id: String::new(),
            handle: Some(handle),
        })
        .await
        .expect("RecoverTask of a version 1 handle");
    let after = inspect(&d, &id).await;
    assert_eq!(
        after.driver.as_ref().unwrap().attributes["helpers"],
        "separate"
    );
    for key in ["pid", "executor_pid", "logmon_pid"] {
        assert_eq!(attr_pid(&after, key), attr_pid(&before, key), "{key}");
    }
    let lines = |a: &Alloc| a.log("old.stdout.0").lines().count();
    let n = lines(&a);
    eventually("output after recovery", Duration::from_secs(5), || {
        lines(&a) > n + 3
    })
    .await;
    for (k, l) in a.log("old.stdout.0").lines().enumerate() {
        assert_eq!(l, format!("line {}", k + 1), "no line lost or repeated");
    }
    // New tasks on this driver get the default, one helper.
    let t = a.task("new", task_config("/bin/sh", &["-c", "echo new-task"], &[]));
    let new_id = t.id.clone();
    start(&d, t).await;
    assert_eq!(wait(&d, &new_id).await.result.unwrap().exit_code, 0);
    let i = inspect(&d, &new_id).await;
    assert_eq!(i.driver.as_ref().unwrap().attributes["helpers"], "combined");
    destroy(&d, &new_id).await;
    assert_eq!(a.log("new.stdout.0"), "new-task\n");
    d.driver()
        .stop_task(StopTaskRequest {
            task_id: id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            signal: "SIGKILL".into(),
        })
        .await
        .expect("StopTask");
    assert_eq!(wait(&d, &id).await.result.unwrap().signal, 9);
    destroy(&d, &id).await;
    for key in ["pid", "executor_pid", "logmon_pid"] {
        let p = attr_pid(&before, key);
        eventually(key, Duration::from_secs(10), || !alive(p)).await;
    }
    assert_clean(&d, &a).await;
}

/// `goplugin task-helper` takes the executor's argv JSON and refuses what the executor refuses,
/// in one line and exit 1: JSON that is not the config, a log level hclog does not have.
#[test]
fn the_task_helper_refuses_bad_argv_in_one_line() {
    for (arg, want) in [
        ("not json", "task-helper: "),
        (r#"{"LogFile":"","LogLevel":"loud"}"#, "LogLevel \"loud\""),
    ] {
        let out = Command::new(BIN)
            .args(["task-helper", arg])
            .env(
                "NOMAD_PLUGIN_MAGIC_COOKIE",
                goplugin::nomad::MAGIC_COOKIE_VALUE,
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{arg}: {err}");
        assert!(
            err.starts_with("task-helper: ") && err.contains(want),
            "{arg}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(out.stdout.is_empty());
    }
}

/// `plugin config { isolation = "chroot" }`: the driver declares chroot isolation (the agent
/// then builds each task dir from `chroot_env`; here the test does) and runs tasks as Nomad's
/// exec driver does — the isolated executor, `nobody`, the exec defaults' capabilities, a private
/// PID namespace, `cap_add` checked against `allow_caps` — in both helper forms; a task asking for
/// a chroot the plugin does not offer, a bad pid_mode or a cap_add outside allow_caps is refused
/// with a clear error and leaves nothing.
#[tokio::test]
async fn isolation_chroot_runs_tasks_the_way_the_exec_driver_does() {
    if !nix::unistd::geteuid().is_root()
        || !std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
    {
        eprintln!("skipping: the isolated executor needs root and cgroup v1");
        return;
    }
    let task_cfg = |args: &[&str], extra: &[(&str, Value)]| {
        let mut pairs = vec![
            ("command", Value::from("/bin/sh")),
            ("args", strings(args)),
            ("max_files", Value::from(10u64)),
            ("max_file_size", Value::from(10u64)),
        ];
        pairs.extend(extra.iter().cloned());
        cty_object(&pairs, TASK_KEYS)
    };
    for form in FORMS {
        let d = start_driver().await;
        let cfg = cty_object(
            &[
                ("helpers", Value::from(form)),
                ("isolation", Value::from("chroot")),
            ],
            PLUGIN_KEYS,
        );
        set_config(&d, cfg, true).await.unwrap();
        let caps = d
            .driver()
            .capabilities(CapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .unwrap();
        assert_eq!(
            caps.fs_isolation,
            driver_capabilities::FsIsolation::Chroot as i32
        );
        let a = alloc();
        let t = a.task(
            "iso",
            task_cfg(
                &[
                    "-c",
                    "echo pid=$$; id -u; grep CapEff /proc/self/status; ls /",
                ],
                &[("cap_add", strings(&["net_bind_service"]))],
            ),
        );
        common::chroot::build(&a.dir.path().join("iso"));
        let id = t.id.clone();
        start(&d, t).await;
        let exit = wait(&d, &id).await;
        assert_eq!(
            exit.result.as_ref().unwrap().exit_code,
            0,
            "{form}: {exit:?} {}",
            a.log("iso.stderr.0")
        );
        let out = a.log("iso.stdout.0");
        assert!(
            out.contains("pid=1\n"),
            "{form}: a private PID namespace: {out}"
        );
        assert!(out.contains("65534\n"), "{form}: nobody by default: {out}");
        assert!(
            out.contains("00000000a80405fb"),
            "{form}: exec's default capabilities: {out}"
        );
        assert!(
            out.contains("secrets\n") && !out.contains("home\n"),
            "{form}: the chroot is /: {out}"
        );
        destroy(&d, &id).await;
        assert_clean(&d, &a).await;

        // Bad input: each refused at StartTask, nothing left.
        for (extra, want) in [
            (
                vec![("pid_mode", Value::from("shared"))],
                "pid_mode \"shared\" must be \"private\" or \"host\"",
            ),
            (
                vec![("cap_add", strings(&["sys_admin"]))],
                "driver does not allow the following capabilities: sys_admin",
            ),
            (
                vec![("cap_drop", strings(&["flying"]))],
                "unknown capability \"flying\"",
            ),
        ] {
            let t = a.task("bad", task_cfg(&["-c", "echo ran"], &extra));
            common::chroot::build(&a.dir.path().join("bad"));
            let e = start_err(&d, t).await;
            assert!(e.message().contains(want), "{form}: {}", e.message());
            assert!(a.log("bad.stdout.0").is_empty());
            assert_clean(&d, &a).await;
        }
    }
    // A task asking for the chroot from a plugin without it.
    let d = start_driver().await;
    set_config(&d, helpers("combined"), true).await.unwrap();
    let a = alloc();
    let t = a.task(
        "nochroot",
        task_cfg(&["-c", "echo ran"], &[("isolation", Value::from("chroot"))]),
    );
    let e = start_err(&d, t).await;
    assert!(
        e.message()
            .contains("needs the plugin config's isolation = \"chroot\""),
        "{}",
        e.message()
    );
    assert_clean(&d, &a).await;
}
