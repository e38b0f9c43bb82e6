//! What the wire core asks of another process by pid, per platform: when it started (so a reused
//! pid is not taken for the recorded plugin; a process that has exited has no start time) and a
//! forced kill (Go's `Process.Kill`).
//!
//! - Linux: the start time is `/proc/PID/stat` field 22 (clock ticks after boot); a zombie has
//!   exited.
//! - Other Unix (macOS, the BSDs): no start time without a sysctl per platform, so it is 0 and the
//!   check is liveness alone (`kill(pid, 0)`), which is what go-plugin's reattach checks.
//! - Windows: the creation time from `GetProcessTimes` (100 ns units since 1601) while
//!   `GetExitCodeProcess` says `STILL_ACTIVE`; killed with `TerminateProcess`.

/// The start time of the running process `pid` in the platform's units (see the module docs), or
/// why there is none: no such process, or it has exited.
pub(crate) fn start_time(pid: u32) -> Result<u64, String> {
    if pid == 0 {
        return Err("pid 0 names no process".into());
    }
    imp::start_time(pid)
}

/// Kills `pid` at once: SIGKILL on Unix. Errors are ignored: the process may have gone on its own.
#[cfg(unix)]
pub(crate) fn kill(pid: u32) {
    if let Ok(pid @ 1..) = i32::try_from(pid) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Kills `pid` at once: `TerminateProcess`. Errors are ignored: the process may have gone on its
/// own.
#[cfg(windows)]
pub(crate) fn kill(pid: u32) {
    if pid != 0 {
        imp::kill(pid)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    pub(super) fn start_time(pid: u32) -> Result<u64, String> {
        let st = crate::procfs::stat(pid).map_err(|e| e.to_string())?;
        if st.is_zombie() {
            return Err(format!("pid {pid} has exited (a zombie)"));
        }
        Ok(st.start_ticks)
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
mod imp {
    use nix::errno::Errno;
    use nix::unistd::Pid;

    /// `kill(pid, 0)`: the process exists (EPERM: it exists but is not ours to signal).
    pub(super) fn start_time(pid: u32) -> Result<u64, String> {
        let exists = match i32::try_from(pid) {
            Ok(raw) => match nix::sys::signal::kill(Pid::from_raw(raw), None) {
                Ok(()) | Err(Errno::EPERM) => Ok(()),
                Err(e) => Err(e),
            },
            Err(_) => Err(Errno::ESRCH),
        };
        exists.map(|()| 0).map_err(|e| format!("pid {pid}: {e}"))
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
    fn this_process_keeps_its_start_time() {
        let me = std::process::id();
        assert_eq!(start_time(me).unwrap(), start_time(me).unwrap());
        assert!(start_time(0).is_err());
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
        assert!(start_time(pid).is_ok());
        kill(pid);
        // Killed but not yet reaped (a zombie on Linux, an exited handle on Windows): gone.
        let t0 = std::time::Instant::now();
        while start_time(pid).is_ok() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "pid {pid} survived"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(start_time(pid).is_err());
    }
}
