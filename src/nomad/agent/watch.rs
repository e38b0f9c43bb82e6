//! The watcher of an attached `goplugin run`: a small child (`goplugin agent-watch NAME`) that
//! outlives the agent and stops what the agent started when the agent ends without doing so
//! itself (SIGKILL, a crash, a lost terminal).
//!
//! Why a process: the helpers sit outside the terminal's process group (a Ctrl-C is the
//! agent's to turn into the task's shutdown) and the task in a session of its own, so nothing
//! reaches them when the agent dies; PR_SET_PDEATHSIG on the helpers would kill an executor
//! without its task and a logmon without draining its FIFOs. The watcher reads one pipe whose
//! only write end the agent holds: each step of the start arrives as a [`Note`] line (logmon's
//! and the executor's reattach records, the task's pid, start time and cgroups), and the agent's
//! last word is [`Note::Done`] (it stopped everything itself) or [`Note::Detached`] (the task is
//! meant to keep running). End of file without either means the agent is gone: the watcher kills
//! the task, has the executor shut down, lets logmon drain what the task wrote into the files
//! (logmon's `Stop`) and stops it, then kills whatever else is left in its process group, which
//! the helpers join (a helper killed mid-handshake has no reattach record yet).

use std::io::{BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::record::{kill_helper, TaskRecord};
use super::AgentError;
use crate::proto::executor::executor_client::ExecutorClient;
use crate::proto::executor::{ShutdownRequest, WaitRequest};
use crate::proto::logmon::log_mon_client::LogMonClient;
use crate::proto::logmon::StopRequest;
use crate::reattach::ReattachConfig;
use crate::Client;

/// The re-exec entry name of the watcher; a binary that calls [`super::run`] must dispatch it
/// (`goplugin::reexec::Entry::new(WATCH_ENTRY, watch_main)`), as `goplugin` does.
pub const ENTRY: &str = "agent-watch";

/// What the watcher prints on its stdout once it watches.
const READY: &[u8; 6] = b"ready\n";

/// One line from the agent to its watcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Note {
    /// logmon runs.
    Logmon(ReattachConfig),
    /// The executor runs.
    Executor(ReattachConfig),
    /// The task runs.
    Task(TaskRecord),
    /// The agent stopped everything itself.
    Done,
    /// The task is left running on purpose (`--detach`).
    Detached,
}

/// The agent's end: the watcher child and the write end of its pipe.
pub(super) struct Watcher {
    child: Child,
    pipe: Option<std::fs::File>,
}

impl Watcher {
    /// Starts `goplugin agent-watch NAME` in a process group of its own (a Ctrl-C in the terminal
    /// is not for it), which the helpers then join ([`Watcher::group`]), and waits for it to say
    /// it watches (a binary without the entry would otherwise leave the helpers unwatched).
    pub(super) async fn spawn(name: &str) -> Result<Watcher, AgentError> {
        use std::os::unix::process::CommandExt;
        let err = |source: std::io::Error| AgentError::Watcher { source };
        let (read, write): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err(e.into()))?;
        let mut cmd = crate::reexec::command(ENTRY).map_err(err)?;
        cmd.arg(name)
            .stdin(Stdio::from(read))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // SAFETY: the closure makes one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                crate::inherit::cloexec_from_3();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(err)?;
        let ready = child.stdout.take().map(|mut out| {
            tokio::task::spawn_blocking(move || {
                let mut word = [0u8; READY.len()];
                out.read_exact(&mut word).is_ok() && word == *READY
            })
        });
        let ready = match ready {
            Some(r) => tokio::time::timeout(Duration::from_secs(10), r).await,
            None => Ok(Ok(false)),
        };
        if !matches!(ready, Ok(Ok(true))) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(std::io::Error::other(format!(
                "it did not start watching (is {} goplugin?)",
                std::env::current_exe().map_or("this binary".into(), |p| p.display().to_string())
            ))));
        }
        Ok(Watcher {
            child,
            pipe: Some(std::fs::File::from(write)),
        })
    }

    /// The watcher's process group, for the helpers to join.
    pub(super) fn group(&self) -> i32 {
        self.child.id() as i32
    }

    /// Tells the watcher about a step; a watcher that is gone is reported once.
    pub(super) fn note(&mut self, note: &Note) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut line = serde_json::to_string(note).unwrap_or_default();
        line.push('\n');
        if let Err(e) = pipe.write_all(line.as_bytes()) {
            tracing::warn!("the run's watcher (pid {}) is gone: {e}", self.child.id());
            self.pipe = None;
        }
    }

    /// Sends the last word and waits (bounded) for the watcher to exit.
    pub(super) async fn release(mut self, last: Note) {
        self.note(&last);
        drop(self.pipe.take());
        for _ in 0..300 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(
            "the run's watcher (pid {}) did not exit; killing it",
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the watcher knows.
#[derive(Default)]
struct Notes {
    logmon: Option<ReattachConfig>,
    executor: Option<ReattachConfig>,
    task: Option<TaskRecord>,
}

/// `goplugin agent-watch NAME`: reads the agent's notes on stdin until its last word or the end
/// of the pipe; the process exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    let name = args
        .first()
        .map_or("?".into(), |a| a.to_string_lossy().into_owned());
    let agent = nix::unistd::getppid().as_raw();
    // When the agent dies and a helper is stopped (SIGSTOP), the kernel sends this orphaned
    // process group SIGHUP and SIGCONT: the watcher's work starts then, it must not end.
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn);
        let _ = nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn);
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(READY);
        let _ = out.flush();
    }
    let mut notes = Notes::default();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Note>(&line) {
            Ok(Note::Logmon(c)) => notes.logmon = Some(c),
            Ok(Note::Executor(c)) => notes.executor = Some(c),
            Ok(Note::Task(t)) => notes.task = Some(t),
            Ok(Note::Detached) => return 0,
            Ok(Note::Done) => {
                sweep_group();
                return 0;
            }
            Err(e) => say(&format!("agent-watch: unreadable note {line:?}: {e}")),
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("agent-watch: cannot start tokio: {e}"));
            sweep_group();
            return 1;
        }
    };
    let done = runtime.block_on(clean_up(&notes));
    let left = sweep_group();
    say(&format!(
        "goplugin: `goplugin run` (pid {agent}) of task {name} ended without stopping it: {done}{}",
        if left > 0 {
            format!("; {left} more process(es) of its group killed")
        } else {
            String::new()
        }
    ));
    0
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Bounds every call to a helper: the watcher has no one to wait for it.
const CALL: Duration = Duration::from_secs(3);

/// Kills the task, shuts the executor down, drains and stops logmon; says what it did.
async fn clean_up(notes: &Notes) -> String {
    let mut done = Vec::new();
    if let Some(task) = notes.task.clone() {
        match tokio::task::spawn_blocking(move || task.kill()).await {
            Ok(killed) => done.push(killed.to_string()),
            Err(e) => done.push(format!("killing the task failed: {e}")),
        }
    }
    if let Some(cfg) = &notes.executor {
        done.push(stop_executor(cfg).await);
    }
    if let Some(cfg) = &notes.logmon {
        done.push(stop_logmon(cfg).await);
    }
    if done.is_empty() {
        "nothing had started".into()
    } else {
        done.join(", ")
    }
}

async fn reattach(cfg: &ReattachConfig) -> Option<Client> {
    tokio::time::timeout(CALL, Client::reattach(cfg))
        .await
        .ok()
        .and_then(Result::ok)
}

/// A `Shutdown` with SIGKILL (whatever a Launch in flight started), then the plugin's exit.
pub(super) async fn stop_executor(cfg: &ReattachConfig) -> String {
    let Some(executor) = reattach(cfg).await else {
        let killed = kill_helper(cfg);
        return format!(
            "executor pid {} {}",
            cfg.pid,
            if killed { "killed" } else { "gone" }
        );
    };
    let mut exec = ExecutorClient::new(executor.channel());
    let shutdown = ShutdownRequest {
        signal: "SIGKILL".into(),
        grace_period: 0,
    };
    let _ = tokio::time::timeout(CALL, exec.shutdown(shutdown)).await;
    let _ = tokio::time::timeout(CALL, exec.wait(WaitRequest {})).await;
    executor.kill().await;
    format!("executor pid {} shut down", cfg.pid)
}

/// logmon's `Stop` (it writes what the FIFOs still hold into the files), then its exit.
pub(super) async fn stop_logmon(cfg: &ReattachConfig) -> String {
    let Some(logmon) = reattach(cfg).await else {
        let killed = kill_helper(cfg);
        return format!(
            "logmon pid {} {}",
            cfg.pid,
            if killed { "killed" } else { "gone" }
        );
    };
    let stopped = tokio::time::timeout(
        CALL,
        LogMonClient::new(logmon.channel()).stop(StopRequest {}),
    )
    .await;
    let gone = cfg.process.is_some_and(|p| !p.is_alive());
    logmon.kill().await;
    match stopped {
        Ok(Ok(_)) => format!(
            "logmon pid {} stopped after writing the task's output",
            cfg.pid
        ),
        Ok(Err(_)) if gone => format!("logmon pid {} had exited", cfg.pid),
        Ok(Err(s)) => format!("logmon pid {} stopped: {}", cfg.pid, s.message()),
        Err(_) => format!("logmon pid {} killed (its Stop did not answer)", cfg.pid),
    }
}

/// SIGKILLs (and SIGCONTs, for stopped ones) every other process in the watcher's group, until
/// none is left (bounded); returns how many there were.
fn sweep_group() -> usize {
    let me = std::process::id() as i32;
    let mut killed = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let members = group_members(me);
        if members.is_empty() {
            break;
        }
        for pid in members {
            killed.insert(pid);
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
            let _ = nix::sys::signal::kill(p, Signal::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.len()
}

/// The live (not zombie) processes of process group `pgid` other than this one.
fn group_members(pgid: i32) -> Vec<i32> {
    let me = std::process::id();
    crate::procfs::pids()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter(|pid| crate::procfs::stat(*pid).is_ok_and(|st| !st.is_zombie() && st.pgrp == pgid))
        .map(|pid| pid as i32)
        .collect()
}
