//! What a child process inherits: only fds 0, 1 and 2 (and what the caller set up on them), as
//! Go's os/exec hands a plugin or a task nothing else. Rust's `Command` passes on every
//! descriptor that lacks `O_CLOEXEC`, e.g. one a shell or a library opened without it, so a
//! plugin would otherwise hold the host's descriptors (and a task the executor's) for life.

/// Makes `cmd`'s child inherit fds 0-2 only (see [`cloexec_from_3`]).
pub(crate) fn only_stdio(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and makes one async-signal-safe system
    // call, allocating nothing and taking no lock.
    unsafe {
        cmd.pre_exec(|| {
            cloexec_from_3();
            Ok(())
        });
    }
}

/// Marks every descriptor from 3 up close-on-exec. For `pre_exec`: one system call, no
/// allocation, async-signal-safe. The standard library's own exec-error pipe is close-on-exec
/// already, so spawn errors are still reported. Kernels before 5.11 lack the flag; there the
/// call fails and nothing changes (as before).
pub(crate) fn cloexec_from_3() {
    #[cfg(target_os = "linux")]
    {
        const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;
        // SAFETY: close_range only changes the descriptor table; its arguments are plain
        // integers.
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_close_range,
                3 as nix::libc::c_uint,
                nix::libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
        }
    }
}
