//! What the wire core asks of another process by pid, per platform: when it started (so a reused
//! pid is not taken for the recorded plugin), whether it still runs, and a forced kill (Go's
//! `Process.Kill`).
//!
//! - Linux: the start time is `/proc/PID/stat` field 22 (clock ticks after boot); a zombie counts
//!   as gone.
//! - Other Unix (macOS, the BSDs): no start time without a sysctl per platform, so it is 0 and the
//!   check is liveness alone (`kill(pid, 0)`), which is what go-plugin's reattach checks.
//! - Windows: the creation time from `GetProcessTimes` (100 ns units since 1601), alive while
//!   `GetExitCodeProcess` says `STILL_ACTIVE`, killed with `TerminateProcess`.

/// The start time of `pid` in the platform's units (see the module docs), or why it has none.
pub(crate) fn start_time(pid: u32) -> Result<u64, String> {
    if pid == 0 {
        return Err("pid 0 names no process".into());
    }
    imp::start_time(pid)
}

/// Whether `pid` names a running process (not a zombie).
pub(crate) fn is_running(pid: u32) -> bool {
    pid != 0 && imp::is_running(pid)
}

/// Kills `pid` at once (SIGKILL; `TerminateProcess` on Windows). Errors are ignored: the process
/// may have gone on its own.
pub(crate) fn kill(pid: u32) {
    if pid != 0 {
        imp::kill(pid)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    pub(super) fn start_time(pid: u32) -> Result<u64, String> {
        crate::procfs::stat(pid)
            .map(|st| st.start_ticks)
            .map_err(|e| e.to_string())
    }

    pub(super) fn is_running(pid: u32) -> bool {
        crate::procfs::stat(pid).is_ok_and(|st| !st.is_zombie())
    }

    pub(super) fn kill(pid: u32) {
        super::unix_kill(pid)
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
mod imp {
    use nix::errno::Errno;
    use nix::unistd::Pid;

    pub(super) fn start_time(pid: u32) -> Result<u64, String> {
        match signal_zero(pid) {
            Ok(()) => Ok(0),
            Err(e) => Err(format!("pid {pid}: {e}")),
        }
    }

    pub(super) fn is_running(pid: u32) -> bool {
        signal_zero(pid).is_ok()
    }

    /// `kill(pid, 0)`: the process exists (EPERM: it exists but is not ours to signal).
    fn signal_zero(pid: u32) -> Result<(), Errno> {
        let pid = i32::try_from(pid).map_err(|_| Errno::ESRCH)?;
        match nix::sys::signal::kill(Pid::from_raw(pid), None) {
            Ok(()) | Err(Errno::EPERM) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn kill(pid: u32) {
        super::unix_kill(pid)
    }
}

#[cfg(unix)]
fn unix_kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(windows)]
#[allow(unsafe_code)] // OpenProcess and friends: Win32 calls std does not wrap for foreign pids
mod imp {
    use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};

    use windows_sys::Win32::Foundation::{FILETIME, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, GetProcessTimes, OpenProcess, TerminateProcess,
        PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_TERMINATE,
    };

    /// A handle on `pid` with `access`, closed on drop.
    fn open(pid: u32, access: u32) -> Result<OwnedHandle, String> {
        // SAFETY: OpenProcess takes no pointers; it returns a new handle we own, or null.
        let raw = unsafe { OpenProcess(access, 0, pid) };
        if raw.is_null() {
            return Err(format!("pid {pid}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a valid handle just returned to us and owned by nobody else.
        Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
    }

    fn still_active(handle: &OwnedHandle) -> bool {
        let mut code = 0u32;
        // SAFETY: a valid process handle and a pointer to a live u32.
        let ok = unsafe { GetExitCodeProcess(handle.as_raw_handle(), &mut code) };
        ok != 0 && code == STILL_ACTIVE as u32
    }

    pub(super) fn start_time(pid: u32) -> Result<u64, String> {
        let handle = open(pid, PROCESS_QUERY_LIMITED_INFORMATION)?;
        if !still_active(&handle) {
            return Err(format!("pid {pid} has exited"));
        }
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        // SAFETY: a valid process handle and four pointers to live FILETIMEs.
        let ok = unsafe {
            GetProcessTimes(
                handle.as_raw_handle(),
                &mut created,
                &mut exited,
                &mut kernel,
                &mut user,
            )
        };
        if ok == 0 {
            return Err(format!("pid {pid}: {}", std::io::Error::last_os_error()));
        }
        Ok((u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
    }

    pub(super) fn is_running(pid: u32) -> bool {
        open(pid, PROCESS_QUERY_LIMITED_INFORMATION).is_ok_and(|h| still_active(&h))
    }

    pub(super) fn kill(pid: u32) {
        if let Ok(handle) = open(pid, PROCESS_TERMINATE) {
            // SAFETY: a valid process handle opened with PROCESS_TERMINATE.
            let _ = unsafe { TerminateProcess(handle.as_raw_handle(), 1) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_keeps_its_start_time() {
        let me = std::process::id();
        assert!(is_running(me));
        assert_eq!(start_time(me).unwrap(), start_time(me).unwrap());
        assert!(start_time(0).is_err());
        assert!(!is_running(0));
    }

    #[test]
    fn a_killed_child_is_gone() {
        #[cfg(unix)]
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        #[cfg(windows)]
        let mut child = std::process::Command::new("ping")
            .args(["-n", "30", "127.0.0.1"])
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(is_running(pid));
        kill(pid);
        child.wait().unwrap();
        assert!(!is_running(pid));
        assert!(start_time(pid).is_err());
    }
}
