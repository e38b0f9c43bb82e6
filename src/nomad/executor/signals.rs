//! Signal names as Nomad's executor accepts them for `Shutdown` (spec nomad-executor-logmon.md
//! §5.3: consul-template's table, case-sensitive; empty means SIGINT), and the only ways the
//! executor signals a pid or a process group: never pid 0 or 1.

use nix::sys::signal::Signal;

/// Errors of signal names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    /// Nomad's text for a name not in the table.
    #[error("error unknown signal given for shutdown: {0}")]
    Unknown(String),
}

/// The signal a `Shutdown` name means; `None` for `SIGNULL` (check only, deliver nothing).
pub fn parse_shutdown_signal(name: &str) -> Result<Option<Signal>, SignalError> {
    let sig = match name {
        "" | "SIGINT" => Signal::SIGINT,
        "SIGABRT" | "SIGIOT" => Signal::SIGABRT,
        "SIGALRM" => Signal::SIGALRM,
        "SIGBUS" => Signal::SIGBUS,
        "SIGCONT" => Signal::SIGCONT,
        "SIGFPE" => Signal::SIGFPE,
        "SIGHUP" => Signal::SIGHUP,
        "SIGILL" => Signal::SIGILL,
        "SIGIO" => Signal::SIGIO,
        "SIGKILL" => Signal::SIGKILL,
        "SIGNULL" => return Ok(None),
        "SIGPIPE" => Signal::SIGPIPE,
        "SIGPROF" => Signal::SIGPROF,
        "SIGQUIT" => Signal::SIGQUIT,
        "SIGSEGV" => Signal::SIGSEGV,
        "SIGSTOP" => Signal::SIGSTOP,
        "SIGSYS" => Signal::SIGSYS,
        "SIGTERM" => Signal::SIGTERM,
        "SIGTRAP" => Signal::SIGTRAP,
        "SIGTSTP" => Signal::SIGTSTP,
        "SIGTTIN" => Signal::SIGTTIN,
        "SIGTTOU" => Signal::SIGTTOU,
        "SIGUSR1" => Signal::SIGUSR1,
        "SIGUSR2" => Signal::SIGUSR2,
        "SIGWINCH" => Signal::SIGWINCH,
        "SIGXCPU" => Signal::SIGXCPU,
        "SIGXFSZ" => Signal::SIGXFSZ,
        other => return Err(SignalError::Unknown(other.to_string())),
    };
    Ok(Some(sig))
}

/// Errors signalling a process.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// A pid that would not name one process (0 is the caller's own process group, 1 is init,
    /// and as a group they mean everything or nothing).
    #[error("refusing to signal pid {pid}: not a task process")]
    InvalidPid {
        /// The pid asked for.
        pid: u32,
    },
    /// The kernel refused.
    #[error("signalling pid {pid}: {source}")]
    Kill {
        /// The pid (negative: a process group).
        pid: i64,
        /// The errno.
        source: nix::Error,
    },
}

fn checked(pid: u32) -> Result<i32, KillError> {
    match i32::try_from(pid) {
        Ok(p) if p > 1 => Ok(p),
        _ => Err(KillError::InvalidPid { pid }),
    }
}

/// Sends `sig` to one process; refuses pids 0 and 1 (and any that do not fit a pid_t).
pub fn kill_pid(pid: u32, sig: Signal) -> Result<(), KillError> {
    let p = checked(pid)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig).map_err(|source| KillError::Kill {
        pid: p.into(),
        source,
    })
}

/// Sends `sig` to the process group led by `pid` (`kill(-pid)`); refuses pids 0 and 1, which
/// would signal the caller's own group or every process.
pub fn kill_group(pid: u32, sig: Signal) -> Result<(), KillError> {
    let p = checked(pid)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(-p), sig).map_err(|source| KillError::Kill {
        pid: -i64::from(p),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_table_case_sensitively() {
        assert_eq!(parse_shutdown_signal(""), Ok(Some(Signal::SIGINT)));
        assert_eq!(parse_shutdown_signal("SIGTERM"), Ok(Some(Signal::SIGTERM)));
        assert_eq!(parse_shutdown_signal("SIGIOT"), Ok(Some(Signal::SIGABRT)));
        assert_eq!(parse_shutdown_signal("SIGNULL"), Ok(None));
        assert_eq!(
            parse_shutdown_signal("sigterm").unwrap_err().to_string(),
            "error unknown signal given for shutdown: sigterm"
        );
        assert!(parse_shutdown_signal("SIGRTMIN").is_err());
    }

    #[test]
    fn pids_that_are_not_one_task_process_are_refused() {
        for pid in [0, 1, u32::MAX, i32::MAX as u32 + 1] {
            assert!(matches!(
                kill_group(pid, Signal::SIGKILL),
                Err(KillError::InvalidPid { .. })
            ));
            assert!(matches!(
                kill_pid(pid, Signal::SIGKILL),
                Err(KillError::InvalidPid { .. })
            ));
        }
    }
}
