//! Which cgroups a task goes into, by the rules of the Nomad generation that sent the Launch
//! (spec nomad-versions.md §4.2, §4.3, §10.1; nomad-executor-logmon.md §5.1.5). The request
//! itself says which generation it is:
//!
//! - `basic_process_cgroup` (Nomad 1.6 raw_exec as root): the executor makes a freezer cgroup
//!   `/nomad/<random uuid>` of its own, kills through it on Shutdown and removes it;
//! - `resources.linux_resources` with a cpuset path or an override (Nomad 1.7+): the agent made
//!   `/nomad/<alloc>.<task>` in freezer, cpu and memory and the cpuset partition; the task joins
//!   them, limits are written there, nothing is removed;
//! - `resources` without either (goplugin's own agent, `goplugin run`): cgroups of our own,
//!   `/goplugin/<executor pid>` in every controller, removed on Shutdown;
//! - otherwise (no resources: Nomad 1.6 raw_exec with `no_cgroups` or not root) none.
//!
//! The executor never joins any of them (hashicorp/nomad#4495): the task's process writes itself
//! into the `cgroup.procs` files between fork and exec.

use std::path::{Path, PathBuf};

use super::cgroups::{self, CgroupError, CgroupMode, ExistingDirs, Limits, TaskCgroup};
use crate::proto::drivers::Resources;
use crate::proto::executor::LaunchRequest;

/// Nomad's cgroup parent under each v1 controller and its v2 slice.
pub const NOMAD_PARENT: &str = "nomad";
/// The parent of cgroups of our own.
pub const OWN_PARENT: &str = "goplugin";

/// Errors placing a task; the text follows Nomad's (`unable to configure cgroups: …`).
#[derive(Debug, thiserror::Error)]
pub enum ContainmentError {
    /// A cgroup could not be created or written.
    #[error("unable to configure cgroups: {0}")]
    Cgroup(#[from] CgroupError),
    /// A `cgroup_v1_override`/`cgroup_v2_override` path that is not a cgroup.
    #[error(
        "unable to configure cgroups: unable to write to custom cgroup: {path}: no such cgroup"
    )]
    MissingOverride {
        /// The directory.
        path: PathBuf,
    },
    /// The agent's v2 task cgroup does not exist.
    #[error("unable to configure cgroups: {path}: no such cgroup")]
    MissingAgentCgroup {
        /// The directory.
        path: PathBuf,
    },
    /// A Nomad 1.6 v2 launch without the variables naming the task's scope.
    #[error("unable to configure cgroups: environment variables NOMAD_PARENT_CGROUP, NOMAD_ALLOC_ID and NOMAD_TASK_NAME must be set")]
    MissingTaskEnv,
}

/// Which rules apply to a Launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// No cgroups: processes are found from the task pid and killed by process group.
    Uncontained,
    /// Nomad 1.6 raw_exec: a freezer cgroup of the executor's own.
    Nomad16Freezer,
    /// Nomad 1.7+: the agent's task cgroups.
    AgentManaged,
    /// Outside Nomad: cgroups of our own in every controller.
    Own,
}

impl Placement {
    /// The rules `req` asks for.
    pub fn of(req: &LaunchRequest) -> Placement {
        #[allow(deprecated)]
        let basic = req.basic_process_cgroup;
        if basic {
            return Placement::Nomad16Freezer;
        }
        let Some(resources) = &req.resources else {
            return Placement::Uncontained;
        };
        let agent = resources.linux_resources.as_ref().is_some_and(|l| {
            !l.cpuset_cgroup.is_empty()
                || !req.cgroup_v1_override.is_empty()
                || !req.cgroup_v2_override.is_empty()
        });
        if agent {
            Placement::AgentManaged
        } else {
            Placement::Own
        }
    }
}

/// The limits of `resources` with Nomad's memory arithmetic and unclamped CPU shares.
pub fn limits_of(resources: Option<&Resources>) -> Limits {
    let Some(r) = resources else {
        return Limits::default();
    };
    let alloc = r.allocated_resources.as_ref();
    let mem = alloc.and_then(|a| a.memory.as_ref());
    let (hard, soft) = cgroups::memory_limits(
        mem.map_or(0, |m| m.memory_mb),
        mem.map_or(0, |m| m.memory_max_mb),
    );
    let linux = r.linux_resources.as_ref();
    let shares = linux
        .map(|l| l.cpu_shares)
        .filter(|s| *s > 0)
        .or_else(|| alloc.and_then(|a| a.cpu.as_ref()).map(|c| c.cpu_shares))
        .filter(|s| *s > 0)
        .map(|s| s as u64);
    Limits {
        memory_hard: hard,
        memory_soft: soft,
        cpu_shares: shares,
        cpuset_cpus: linux
            .map(|l| l.cpuset_cpus.clone())
            .filter(|c| !c.is_empty()),
    }
}

/// Where the cgroup filesystems are and what the host runs (a seam for tests).
#[derive(Debug, Clone)]
pub struct Host {
    /// [`cgroups::CGROUP_ROOT`] outside tests.
    pub root: PathBuf,
    /// The hierarchy the host runs.
    pub mode: CgroupMode,
    /// Whether the executor runs as root (cgroups need it, as in Nomad).
    pub root_user: bool,
}

impl Host {
    /// This machine.
    pub fn detect() -> Host {
        Host {
            root: PathBuf::from(cgroups::CGROUP_ROOT),
            mode: cgroups::detect_mode(),
            root_user: nix::unistd::geteuid().is_root(),
        }
    }
}

/// The task cgroup for `req` on `host`, created when the rules say the executor makes it.
pub fn task_cgroup(
    req: &LaunchRequest,
    host: &Host,
) -> Result<Option<TaskCgroup>, ContainmentError> {
    if host.mode == CgroupMode::Off || !host.root_user {
        return Ok(None);
    }
    match Placement::of(req) {
        Placement::Uncontained => Ok(None),
        Placement::Nomad16Freezer => nomad16(req, host),
        Placement::AgentManaged => agent_managed(req, host).map(Some),
        Placement::Own => {
            sweep_stale_own(host);
            let relative = match host.mode {
                CgroupMode::V2 => format!("{OWN_PARENT}.slice/{}.scope", std::process::id()),
                _ => format!("{OWN_PARENT}/{}", std::process::id()),
            };
            let limits = limits_of(req.resources.as_ref());
            let cg = TaskCgroup::create(
                host.mode,
                &host.root,
                &relative,
                &cgroups::V1_CONTROLLERS,
                &limits,
            )?;
            Ok(Some(cg))
        }
    }
}

/// Nomad 1.6 `ConfigureBasicCgroups`: v1 freezer `/nomad/<uuid>`, made and removed by the
/// executor; a failure is logged and the task runs uncontained, as there. On v2 the task's scope
/// named by its environment, kept afterwards as 1.6 keeps it.
fn nomad16(req: &LaunchRequest, host: &Host) -> Result<Option<TaskCgroup>, ContainmentError> {
    if host.mode == CgroupMode::V2 {
        let env = |key: &str| {
            req.env
                .iter()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .filter(|v| !v.is_empty())
        };
        let (Some(parent), Some(alloc), Some(task)) = (
            env("NOMAD_PARENT_CGROUP"),
            env("NOMAD_ALLOC_ID"),
            env("NOMAD_TASK_NAME"),
        ) else {
            return Err(ContainmentError::MissingTaskEnv);
        };
        let relative = format!("{}/{alloc}.{task}.scope", parent.trim_matches('/'));
        let cg = TaskCgroup::create(
            CgroupMode::V2,
            &host.root,
            &relative,
            &[],
            &Limits::default(),
        )?;
        return Ok(Some(cg.disowned()));
    }
    let relative = format!("{NOMAD_PARENT}/{}", random_uuid());
    match TaskCgroup::create(
        CgroupMode::V1,
        &host.root,
        &relative,
        &["freezer"],
        &Limits::default(),
    ) {
        Ok(cg) => Ok(Some(cg)),
        Err(e) => {
            tracing::warn!(error = %e, "failed to create basic cgroup; the task runs uncontained");
            Ok(None)
        }
    }
}

/// The alloc ID and task name a task dir `<alloc dir>/<alloc id>/<task>` names, as Nomad's
/// executor derives them.
pub(crate) fn alloc_and_task(task_dir: &str) -> Option<(String, String)> {
    let dir = Path::new(task_dir);
    let task = dir.file_name()?.to_str()?.to_string();
    let alloc = dir.parent()?.file_name()?.to_str()?.to_string();
    Some((alloc, task))
}

/// `cgroupslib.CustomPathCG1`: absolute as given, else under the controller's hierarchy.
fn custom_v1(root: &Path, controller: &str, path: &str) -> PathBuf {
    if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        root.join(controller).join(path)
    }
}

fn is_cgroup(dir: &Path) -> bool {
    dir.join("cgroup.procs").exists()
}

/// Nomad 1.7+: the agent's cgroups, limits written into them as Nomad's universal executor
/// writes them (errors ignored, as there), overrides joined as they are.
fn agent_managed(req: &LaunchRequest, host: &Host) -> Result<TaskCgroup, ContainmentError> {
    let linux = req
        .resources
        .as_ref()
        .and_then(|r| r.linux_resources.as_ref());
    let cpuset_path = linux.map(|l| l.cpuset_cgroup.clone()).unwrap_or_default();
    if host.mode == CgroupMode::V2 {
        let dir = match req.cgroup_v2_override.as_str() {
            "" => PathBuf::from(&cpuset_path),
            p if p.starts_with('/') => PathBuf::from(p),
            p => host.root.join(p),
        };
        if !is_cgroup(&dir) {
            return Err(ContainmentError::MissingAgentCgroup { path: dir });
        }
        let cg = TaskCgroup::existing(
            CgroupMode::V2,
            ExistingDirs {
                join: vec![(String::new(), dir.clone())],
                stats: Some(dir.clone()),
                memory: Some(dir),
                freezer: None,
            },
        );
        cg.apply_best_effort(&limits_of(req.resources.as_ref()));
        return Ok(cg);
    }
    let nomad_dir = |controller: &str| {
        alloc_and_task(&req.task_dir).map(|(alloc, task)| {
            host.root
                .join(controller)
                .join(NOMAD_PARENT)
                .join(format!("{alloc}.{task}"))
        })
    };
    if !req.cgroup_v1_override.is_empty() {
        let mut join = Vec::new();
        let mut overrides: Vec<_> = req.cgroup_v1_override.iter().collect();
        overrides.sort();
        for (controller, path) in overrides {
            let dir = custom_v1(&host.root, controller, path);
            if !is_cgroup(&dir) {
                return Err(ContainmentError::MissingOverride { path: dir });
            }
            join.push((controller.clone(), dir));
        }
        let pick = |c: &str| join.iter().find(|(k, _)| k == c).map(|(_, d)| d.clone());
        let stats = pick("pids").or_else(|| nomad_dir("freezer").filter(|d| is_cgroup(d)));
        return Ok(TaskCgroup::existing(
            CgroupMode::V1,
            ExistingDirs {
                stats,
                memory: pick("memory"),
                freezer: pick("freezer"),
                join,
            },
        ));
    }
    let mut join = Vec::new();
    for controller in ["freezer", "cpu", "memory"] {
        match nomad_dir(controller) {
            Some(dir) if is_cgroup(&dir) => join.push((controller.to_string(), dir)),
            dir => tracing::warn!(
                controller,
                dir = ?dir,
                "the agent's task cgroup is missing; the task does not join it"
            ),
        }
    }
    if !cpuset_path.is_empty() {
        let dir = PathBuf::from(&cpuset_path);
        if is_cgroup(&dir) {
            join.push(("cpuset".to_string(), dir));
        } else {
            tracing::warn!(dir = %cpuset_path, "the agent's cpuset cgroup is missing");
        }
    }
    let pick = |c: &str| join.iter().find(|(k, _)| k == c).map(|(_, d)| d.clone());
    let cg = TaskCgroup::existing(
        CgroupMode::V1,
        ExistingDirs {
            stats: pick("freezer"),
            memory: pick("memory"),
            freezer: pick("freezer"),
            join: join.clone(),
        },
    );
    cg.apply_best_effort(&limits_of(req.resources.as_ref()));
    Ok(cg)
}

/// Removes cgroups of our own left by executors that died without cleaning up (SIGKILL): a
/// directory is named after its executor's pid, and one whose executor is gone and that holds
/// no process can go (the kernel refuses to remove a cgroup that still has processes).
fn sweep_stale_own(host: &Host) {
    let parents: Vec<PathBuf> = match host.mode {
        CgroupMode::V2 => vec![host.root.join(format!("{OWN_PARENT}.slice"))],
        _ => cgroups::V1_CONTROLLERS
            .iter()
            .map(|c| host.root.join(c).join(OWN_PARENT))
            .collect(),
    };
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .map(|n| n.trim_end_matches(".scope"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// A random RFC 4122 version-4 UUID, as Nomad names 1.6 basic cgroups.
pub(crate) fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::drivers::{AllocatedMemoryResources, AllocatedTaskResources, LinuxResources};
    use std::collections::HashMap;

    fn resources(cpuset: &str, memory_mb: i64) -> Option<Resources> {
        Some(Resources {
            allocated_resources: Some(AllocatedTaskResources {
                memory: Some(AllocatedMemoryResources {
                    memory_mb,
                    memory_max_mb: 0,
                }),
                ..Default::default()
            }),
            linux_resources: Some(LinuxResources {
                cpu_shares: 500,
                cpuset_cgroup: cpuset.into(),
                ..Default::default()
            }),
            ports: vec![],
        })
    }

    #[test]
    #[allow(deprecated)]
    fn each_generations_request_selects_its_rules() {
        let mut req = LaunchRequest::default();
        assert_eq!(Placement::of(&req), Placement::Uncontained);
        req.basic_process_cgroup = true;
        assert_eq!(Placement::of(&req), Placement::Nomad16Freezer);
        let req = LaunchRequest {
            resources: resources("/sys/fs/cgroup/cpuset/nomad/share", 64),
            ..Default::default()
        };
        assert_eq!(Placement::of(&req), Placement::AgentManaged);
        let req = LaunchRequest {
            resources: resources("", 64),
            ..Default::default()
        };
        assert_eq!(Placement::of(&req), Placement::Own);
        let req = LaunchRequest {
            resources: resources("", 64),
            cgroup_v1_override: HashMap::from([("pids".into(), "custom".into())]),
            ..Default::default()
        };
        assert_eq!(Placement::of(&req), Placement::AgentManaged);
    }

    /// A request carrying both generations' signals: `basic_process_cgroup` is only ever sent by
    /// a 1.6 agent, so its rules win; a memory maximum below the reservation is written as given
    /// (the kernel takes a soft limit above the hard one as a hint; Nomad's scheduler refuses it
    /// before it gets here).
    #[test]
    #[allow(deprecated)]
    fn contradictory_requests_have_a_defined_outcome() {
        let req = LaunchRequest {
            basic_process_cgroup: true,
            resources: resources("/sys/fs/cgroup/cpuset/nomad/share", 64),
            ..Default::default()
        };
        assert_eq!(Placement::of(&req), Placement::Nomad16Freezer);
        let mut r = resources("", 128).unwrap();
        if let Some(m) = r
            .allocated_resources
            .as_mut()
            .and_then(|a| a.memory.as_mut())
        {
            m.memory_max_mb = 64;
        }
        let l = limits_of(Some(&r));
        assert_eq!(
            (l.memory_hard, l.memory_soft),
            (Some(64 << 20), Some(128 << 20))
        );
        assert_eq!(limits_of(None), Limits::default());
    }

    #[test]
    fn task_dirs_name_the_alloc_and_task_as_nomad_derives_them() {
        assert_eq!(
            alloc_and_task("/var/nomad/alloc/5f0e-aa/web"),
            Some(("5f0e-aa".into(), "web".into()))
        );
        assert_eq!(alloc_and_task(""), None);
        assert_eq!(
            custom_v1(Path::new("/r"), "pids", "a/b"),
            PathBuf::from("/r/pids/a/b")
        );
        assert_eq!(
            custom_v1(Path::new("/r"), "pids", "/abs"),
            PathBuf::from("/abs")
        );
    }

    #[test]
    fn uuids_have_the_version_4_shape() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, random_uuid());
    }

    /// A fake v1 hierarchy in a temp dir: the agent's dirs exist, limits land there, nothing
    /// is owned (so nothing is removed); a missing override is a named error.
    #[test]
    fn agent_managed_v1_joins_and_writes_the_agents_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for c in ["freezer", "cpu", "memory"] {
            let d = root.join(c).join("nomad/A1.web");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), "").unwrap();
        }
        let cpuset = root.join("cpuset/nomad/share");
        std::fs::create_dir_all(&cpuset).unwrap();
        std::fs::write(cpuset.join("cgroup.procs"), "").unwrap();
        let host = Host {
            root: root.to_path_buf(),
            mode: CgroupMode::V1,
            root_user: true,
        };
        let req = LaunchRequest {
            task_dir: "/alloc/A1/web".into(),
            resources: resources(&cpuset.display().to_string(), 64),
            ..Default::default()
        };
        let cg = task_cgroup(&req, &host).unwrap().unwrap();
        assert!(!cg.is_owned());
        let files = cg.procs_files();
        assert_eq!(files.len(), 4, "{files:?}");
        assert!(files.contains(&root.join("freezer/nomad/A1.web/cgroup.procs")));
        assert!(files.contains(&cpuset.join("cgroup.procs")));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("memory/nomad/A1.web/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("cpu/nomad/A1.web/cpu.shares"), "500");
        cg.remove().unwrap();
        assert!(root.join("freezer/nomad/A1.web").exists(), "never removed");

        let req = LaunchRequest {
            cgroup_v1_override: HashMap::from([("pids".into(), "nope".into())]),
            ..req
        };
        let e = task_cgroup(&req, &host).unwrap_err();
        assert!(matches!(e, ContainmentError::MissingOverride { .. }), "{e}");
        assert!(
            e.to_string().starts_with("unable to configure cgroups"),
            "{e}"
        );
    }

    /// A hierarchy where our cgroup cannot be made (here a file stands where the directory
    /// must go): a named error, and what was made in the other controllers is removed again.
    #[test]
    fn a_cgroup_that_cannot_be_created_is_an_error_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for c in cgroups::V1_CONTROLLERS {
            std::fs::create_dir_all(root.join(c)).unwrap();
        }
        std::fs::write(root.join("memory").join(OWN_PARENT), "not a directory").unwrap();
        let host = Host {
            root: root.to_path_buf(),
            mode: CgroupMode::V1,
            root_user: true,
        };
        let req = LaunchRequest {
            resources: resources("", 64),
            ..Default::default()
        };
        let e = task_cgroup(&req, &host).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("unable to configure cgroups: creating cgroup")
                && text.contains("memory/goplugin"),
            "{text}"
        );
        let pid = std::process::id().to_string();
        for c in cgroups::V1_CONTROLLERS {
            assert!(
                !root.join(c).join(OWN_PARENT).join(&pid).exists(),
                "{c} left behind"
            );
        }
    }

    #[test]
    fn without_root_or_cgroups_nothing_is_made() {
        let host = Host {
            root: PathBuf::from("/nonexistent"),
            mode: CgroupMode::V1,
            root_user: false,
        };
        let req = LaunchRequest {
            resources: resources("", 64),
            ..Default::default()
        };
        assert!(task_cgroup(&req, &host).unwrap().is_none());
    }
}
