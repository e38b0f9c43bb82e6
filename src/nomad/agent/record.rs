//! What the agent records about a running task so that someone other than its executor can kill
//! it: the task's pid with its start time (a pid alone may by then name another process,
//! hashicorp/nomad#23969) and the cgroups its executor made for it. Used when the executor died
//! (an attached run's Wait fails, `goplugin stop`/`status` find no executor) and by the watcher
//! of an attached run whose `goplugin run` died.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::nomad::executor::cgroups::{self, TaskCgroup, CGROUP_ROOT};
use crate::nomad::executor::containment::OWN_PARENT;
use crate::nomad::executor::signals;
use crate::reattach::{ProcessIdentity, ReattachConfig};

/// One cgroup directory an executor made for the task: (controller, directory), controller ""
/// on cgroup v2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDir {
    /// The v1 controller (`freezer`, `memory`, ...), "" on v2.
    pub controller: String,
    /// The directory under the cgroup root.
    pub dir: PathBuf,
}

/// The task as launched: enough to find and kill all of it without its executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's pid and start time; it leads its own session and process group.
    pub process: ProcessIdentity,
    /// The cgroups the executor made for it (`/goplugin/<executor pid>` in each v1 controller,
    /// `/goplugin.slice/<executor pid>.scope` on v2), empty when it made none.
    #[serde(default)]
    pub cgroups: Vec<CgroupDir>,
}

impl TaskRecord {
    /// Records the task `pid` as it runs now; `None` when it is already gone (or pid 0).
    pub fn of(pid: i32) -> Option<TaskRecord> {
        let pid = u32::try_from(pid).ok()?;
        let process = ProcessIdentity::of(pid).ok()?;
        let raw = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        Some(TaskRecord {
            process,
            cgroups: executor_made(&raw, Path::new(CGROUP_ROOT)),
        })
    }

    /// SIGKILLs the task's process group (only while its leader is the recorded process) and
    /// every process in its recorded cgroups, frozen first, then removes those cgroups. Blocks
    /// for up to about a second (the freezer).
    pub fn kill(&self) -> Killed {
        let pid = self.process.pid;
        let leader = self.process.is_alive();
        if self.process.check(pid).is_ok() {
            let _ = signals::kill_group(pid, Signal::SIGKILL);
            let _ = signals::kill_pid(pid, Signal::SIGKILL);
        }
        let dirs: Vec<(String, PathBuf)> = self
            .cgroups
            .iter()
            .filter(|c| c.dir.join("cgroup.procs").exists())
            .map(|c| (c.controller.clone(), c.dir.clone()))
            .collect();
        if dirs.is_empty() {
            return Killed {
                pid,
                leader,
                in_cgroups: 0,
            };
        }
        let cg = TaskCgroup::adopted(cgroups::detect_mode(), dirs);
        let in_cgroups = cg.pids().into_iter().filter(|p| *p != pid).count();
        cg.kill_all();
        if let Err(e) = cg.remove() {
            tracing::warn!("{e}");
        }
        Killed {
            pid,
            leader,
            in_cgroups,
        }
    }
}

/// What [`TaskRecord::kill`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Killed {
    /// The task's pid.
    pub pid: u32,
    /// Whether the task's own process still ran.
    pub leader: bool,
    /// Other processes found in its cgroups (its children, a process group left behind).
    pub in_cgroups: usize,
}

impl std::fmt::Display for Killed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.leader { "killed" } else { "had ended" };
        write!(f, "task pid {} {what}", self.pid)?;
        if self.in_cgroups > 0 {
            write!(
                f,
                ", {} more process(es) in its cgroups killed",
                self.in_cgroups
            )?;
        }
        Ok(())
    }
}

/// SIGKILLs a helper plugin that no longer answers, if the recorded process is still it.
/// Returns whether it was signalled.
pub fn kill_helper(cfg: &ReattachConfig) -> bool {
    match cfg.process {
        Some(id) if id.is_alive() => signals::kill_pid(id.pid, Signal::SIGKILL).is_ok(),
        _ => false,
    }
}

/// The directories among `/proc/PID/cgroup`'s lines (`raw`) that goplugin's executor makes for
/// a task it runs without a Nomad cgroup: `/goplugin/<digits>` (v1, per controller) and
/// `/goplugin.slice/<digits>.scope` (v2).
fn executor_made(raw: &str, root: &Path) -> Vec<CgroupDir> {
    crate::nomad::executor::cgroups::dirs_in_proc_cgroup(raw, root, is_own)
        .into_iter()
        .map(|(controller, dir)| CgroupDir { controller, dir })
        .collect()
}

fn is_own(path: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if let Some(pid) = rest
        .strip_prefix(OWN_PARENT)
        .and_then(|r| r.strip_prefix('/'))
    {
        return digits(pid);
    }
    rest.strip_prefix(OWN_PARENT)
        .and_then(|r| r.strip_prefix(".slice/"))
        .and_then(|r| r.strip_suffix(".scope"))
        .is_some_and(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cgroups_an_executor_made_are_recorded() {
        let raw = "12:freezer:/goplugin/4242\n\
                   11:memory:/goplugin/4242\n\
                   10:cpu,cpuacct:/goplugin/4242\n\
                   9:pids:/user.slice\n\
                   8:name=systemd:/goplugin/4242\n\
                   7:blkio:/goplugin/x42\n\
                   6:devices:/goplugin/4242/child\n\
                   0::/goplugin.slice/4242.scope\n";
        let got = executor_made(raw, Path::new("/sys/fs/cgroup"));
        let want: Vec<(&str, &str)> = vec![
            ("freezer", "/sys/fs/cgroup/freezer/goplugin/4242"),
            ("memory", "/sys/fs/cgroup/memory/goplugin/4242"),
            ("cpu", "/sys/fs/cgroup/cpu/goplugin/4242"),
            ("", "/sys/fs/cgroup/goplugin.slice/4242.scope"),
        ];
        let got: Vec<(&str, &str)> = got
            .iter()
            .map(|c| (c.controller.as_str(), c.dir.to_str().unwrap()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_record_of_a_gone_pid_is_none_and_a_reused_pid_is_not_killed() {
        assert!(TaskRecord::of(0).is_none());
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let mut rec = TaskRecord::of(child.id() as i32).unwrap();
        // Another start time: the pid now names "another" process, which must not be signalled.
        rec.process.start_ticks += 1;
        rec.kill();
        assert!(
            child.try_wait().unwrap().is_none(),
            "a foreign pid was killed"
        );
        rec.process.start_ticks -= 1;
        rec.kill();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
}
