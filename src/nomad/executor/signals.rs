//! Signal names as Nomad's executor accepts them for `Shutdown` (spec nomad-executor-logmon.md
//! §5.3: consul-template's table, case-sensitive; empty means SIGINT).

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
}
