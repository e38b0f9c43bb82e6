//! `goplugin_exec`, a Nomad task driver (spec nomad-driver-plugin.md; nomad-versions.md §7,
//! §10.4): a stock Nomad agent loads this binary from `plugin_dir` and runs each task through
//! goplugin's own executor and logmon, both this binary re-executed from /proc/self/exe. Run as
//! `goplugin_exec` (argv\[0\]'s file name), as `goplugin driver`, or with no arguments and
//! Nomad's plugin cookie in the environment (how a Nomad 1.6 agent starts every executable in
//! `plugin_dir`); `goplugin` run by hand keeps its CLI.
//!
//! Layout: [`config`] and [`msgpack`] decode Nomad's msgpack, [`hclspec`] the schemas,
//! [`fingerprint`] health and CPU capacity, [`state`] the handle state, [`task`] a task's
//! helpers and life, [`base`] and [`service`] the two gRPC services.

pub mod base;
pub mod config;
pub mod fingerprint;
pub mod hclspec;
pub mod isolation;
pub mod msgpack;
pub mod service;
pub mod state;
#[allow(unsafe_code)] // pre_exec of the helpers (fds 0-2 only)
pub mod task;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{broadcast, watch};

use crate::proto::base::base_plugin_server::BasePluginServer;
use crate::proto::drivers::driver_server::DriverServer;
use crate::proto::drivers::DriverTaskEvent;
use crate::Server;
use config::PluginConfig;
use task::{AgentInfo, Task};

/// The driver's name: in jobs (`driver = "goplugin_exec"`), in the agent's `plugin` block, and
/// the file name in `plugin_dir`.
pub const DRIVER_NAME: &str = "goplugin_exec";
/// The only driver API version there is.
pub const API_VERSION: &str = "v0.1.0";

/// Whether this process was started as the driver: argv\[0\] is `goplugin_exec`, or there are no
/// arguments and Nomad's plugin cookie is set.
pub fn invoked_as_driver() -> bool {
    let mut args = std::env::args_os();
    let named = args
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .is_some_and(|n| n == DRIVER_NAME);
    named
        || (args.next().is_none()
            && std::env::var(super::MAGIC_COOKIE_KEY).as_deref() == Ok(super::MAGIC_COOKIE_VALUE))
}

/// State both services share: the settings from `SetConfig`, the tasks, the task events.
pub struct Shared {
    settings: RwLock<(PluginConfig, AgentInfo)>,
    changed: watch::Sender<u64>,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    starting: Mutex<HashSet<String>>,
    events: broadcast::Sender<DriverTaskEvent>,
}

/// A task id being started; released when dropped.
pub struct Reservation<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.shared.starting).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            settings: RwLock::new((PluginConfig::default(), AgentInfo::default())),
            changed: watch::channel(0).0,
            tasks: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashSet::new()),
            events: broadcast::channel(64).0,
        }
    }
}

impl Shared {
    /// Stores a decoded plugin config and, from the live instance, what the agent said.
    pub fn set_config(&self, plugin: PluginConfig, agent: Option<AgentInfo>) {
        {
            let mut s = self.settings.write().unwrap_or_else(|p| p.into_inner());
            s.0 = plugin;
            if let Some(a) = agent {
                s.1 = a;
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// The plugin config and agent info in force.
    pub fn settings(&self) -> (PluginConfig, AgentInfo) {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The plugin config in force.
    pub fn plugin_config(&self) -> PluginConfig {
        self.settings().0
    }

    /// Notified on every `SetConfig`.
    pub fn config_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The task events channel.
    pub fn events(&self) -> broadcast::Sender<DriverTaskEvent> {
        self.events.clone()
    }

    /// A known task.
    pub fn task(&self, id: &str) -> Option<Arc<Task>> {
        lock(&self.tasks).get(id).cloned()
    }

    /// Claims `id` for a start; `None` when a task of that id runs or is being started.
    pub fn reserve(&self, id: &str) -> Option<Reservation<'_>> {
        let tasks = lock(&self.tasks);
        let mut starting = lock(&self.starting);
        if tasks.contains_key(id) || !starting.insert(id.to_string()) {
            return None;
        }
        Some(Reservation {
            shared: self,
            id: id.to_string(),
        })
    }

    /// Adds a started or recovered task.
    pub fn insert(&self, task: Arc<Task>) {
        lock(&self.tasks).insert(task.state.id.clone(), task);
    }

    /// Forgets a destroyed task.
    pub fn remove(&self, id: &str) {
        lock(&self.tasks).remove(id);
    }

    fn detach_all(&self) {
        for t in lock(&self.tasks).values() {
            t.detach();
        }
    }
}

/// The soft `RLIMIT_NOFILE` the driver was started with, once it raised its own.
static ORIGINAL_NOFILE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Raises the driver's soft open-file limit to the hard one, as Go programs (Nomad's own
/// drivers among them) do at start: the driver holds about ten descriptors per task, and an
/// agent started from a shell hands down a soft limit of 1024. Its children get the original
/// soft limit back ([`original_nofile`]), as Go's os/exec restores it.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        let _ = ORIGINAL_NOFILE.set(soft);
        tracing::debug!(from = soft, to = hard, "raised the open-file limit");
    }
}

/// The soft open-file limit to give children: the one the driver started with, if it raised it.
pub(crate) fn original_nofile() -> Option<u64> {
    ORIGINAL_NOFILE.get().copied()
}

/// Serves the driver until the agent stops it; the process exit code. Tasks and their helpers
/// keep running after it returns.
pub fn run(_args: Vec<std::ffi::OsString>) -> i32 {
    let filter = std::env::var(crate::hclog::LOG_FILTER_ENV)
        .ok()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "info,goplugin::nomad::driver=debug".into());
    if let Ok(stderr) = crate::stdio::original_stderr() {
        let _ = crate::hclog::init_plugin_logging_with(DRIVER_NAME, stderr, &filter);
    }
    raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::stdio::write_stderr(&format!("{DRIVER_NAME}: cannot start tokio: {e}\n"));
            return 1;
        }
    };
    let shared = Arc::new(Shared::default());
    let services = shared.clone();
    let served = runtime.block_on(
        Server::new(super::handshake())
            .services(move |s| {
                s.add_service(BasePluginServer::new(base::BaseService::new(
                    services.clone(),
                )));
                s.add_service(
                    DriverServer::new(service::DriverService::new(services))
                        .max_decoding_message_size(usize::MAX >> 1)
                        .max_encoding_message_size(usize::MAX >> 1),
                );
            })
            .serve(),
    );
    shared.detach_all();
    // The helpers' clients must not linger: leave without running destructors that kill them.
    runtime.shutdown_background();
    match served {
        Ok(()) => 0,
        Err(e) if e.is_cookie_error() => e.exit(),
        Err(e) => {
            crate::stdio::write_stderr(&format!("{DRIVER_NAME}: {e}\n"));
            1
        }
    }
}
