//! What the standalone agent has to say, as values for the binary to print: the task's output
//! (followed from its log files, or streamed from `exec`) goes to a [`Terminal`] the caller
//! passes in, the agent's own notes during a run are [`RunNote`]s, and what a command ends with
//! is returned ([`RunOutcome`], [`TaskStatus`]). The library itself never prints.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where the agent's output goes while it works: `goplugin` writes the task's streams to its
/// own stdout and stderr and each note as a `goplugin: ` line on stderr.
pub trait Terminal: Send + Sync + 'static {
    /// Bytes the task wrote to its stdout.
    fn stdout(&self, bytes: &[u8]);
    /// Bytes the task wrote to its stderr.
    fn stderr(&self, bytes: &[u8]);
    /// Something the agent says about the run while it goes on.
    fn note(&self, note: RunNote);
}

/// What the agent says about an attached run while it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunNote {
    /// The task runs.
    Running {
        /// Task name.
        name: String,
        /// The task's pid.
        pid: i32,
        /// Where its logs go.
        log_dir: PathBuf,
    },
    /// An interrupt (Ctrl-C): the task is stopped with its kill signal and timeout.
    Stopping {
        /// Task name.
        name: String,
        /// The kill signal.
        signal: String,
        /// Time before SIGKILL.
        timeout: Duration,
    },
    /// The task's last output could not all be printed within the bound.
    OutputLate {
        /// The bound.
        within: Duration,
    },
    /// logmon's `Stop` failed: a full disk, and logmon says how much output it lost.
    LogmonLost {
        /// logmon's message.
        message: String,
    },
}

impl fmt::Display for RunNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunNote::Running { name, pid, log_dir } => write!(
                f,
                "task {name} running as pid {pid}; logs in {}",
                log_dir.display()
            ),
            RunNote::Stopping {
                name,
                signal,
                timeout,
            } => write!(
                f,
                "stopping task {name} ({signal} then SIGKILL after {timeout:?})"
            ),
            RunNote::OutputLate { within } => write!(
                f,
                "the task's last output could not be printed within {} s",
                within.as_secs()
            ),
            RunNote::LogmonLost { message } => write!(f, "logmon: {message}"),
        }
    }
}

/// How `goplugin run` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// `--detach`: the task keeps running (its [`RunNote::Running`] said where).
    Detached,
    /// The task ended.
    Exited(TaskExit),
}

impl RunOutcome {
    /// The exit code the agent's process reports: the task's, or 0 when detached.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::Detached => 0,
            RunOutcome::Exited(exit) => exit.code,
        }
    }
}

/// An attached task that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExit {
    /// Task name.
    pub name: String,
    /// Its exit code (128 + signal when a signal killed it).
    pub code: i32,
    /// Where its logs are.
    pub log_dir: PathBuf,
}

impl fmt::Display for TaskExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} exited with code {}; logs in {}",
            self.name,
            self.code,
            self.log_dir.display()
        )
    }
}

/// What `goplugin status` reports about a detached task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatus {
    /// Task name.
    pub name: String,
    /// The task's pid.
    pub pid: i32,
    /// Its executor's pid.
    pub executor_pid: u32,
    /// Its logmon's pid.
    pub logmon_pid: u32,
    /// The task's resident memory, bytes (the executor's `Stats`).
    pub rss: u64,
    /// Where its logs are.
    pub log_dir: PathBuf,
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} running: pid {}, executor pid {}, logmon pid {}, rss {:.1} MiB, logs in {}",
            self.name,
            self.pid,
            self.executor_pid,
            self.logmon_pid,
            self.rss as f64 / (1 << 20) as f64,
            self.log_dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts `goplugin` printed when the agent printed them itself (tests/agent.rs reads
    /// some of them).
    #[test]
    fn notes_and_outcomes_read_as_before() {
        let running = RunNote::Running {
            name: "hello".into(),
            pid: 42,
            log_dir: "/t/hello/logs".into(),
        };
        assert_eq!(
            running.to_string(),
            "task hello running as pid 42; logs in /t/hello/logs"
        );
        let stopping = RunNote::Stopping {
            name: "hello".into(),
            signal: "SIGINT".into(),
            timeout: Duration::from_millis(1500),
        };
        assert_eq!(
            stopping.to_string(),
            "stopping task hello (SIGINT then SIGKILL after 1.5s)"
        );
        let late = RunNote::OutputLate {
            within: Duration::from_secs(5),
        };
        assert_eq!(
            late.to_string(),
            "the task's last output could not be printed within 5 s"
        );
        let lost = RunNote::LogmonLost {
            message: "lost 3 bytes".into(),
        };
        assert_eq!(lost.to_string(), "logmon: lost 3 bytes");
        let exit = TaskExit {
            name: "hello".into(),
            code: 3,
            log_dir: "/t/hello/logs".into(),
        };
        assert_eq!(
            exit.to_string(),
            "task hello exited with code 3; logs in /t/hello/logs"
        );
        assert_eq!(RunOutcome::Exited(exit).exit_code(), 3);
        assert_eq!(RunOutcome::Detached.exit_code(), 0);
        let status = TaskStatus {
            name: "bg".into(),
            pid: 7,
            executor_pid: 8,
            logmon_pid: 9,
            rss: 3 << 19,
            log_dir: "/t/bg/logs".into(),
        };
        assert_eq!(
            status.to_string(),
            "task bg running: pid 7, executor pid 8, logmon pid 9, rss 1.5 MiB, logs in /t/bg/logs"
        );
    }
}
