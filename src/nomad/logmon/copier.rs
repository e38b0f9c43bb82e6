//! Copies one FIFO into a [`Rotator`] (spec nomad-executor-logmon.md §7.3), event-driven: one
//! thread blocks in `poll(2)` on the FIFO and a stop pipe, so an idle logmon never wakes up.
//!
//! Where Nomad's copier ends at the first EOF (and a later `Start` makes a new one), ours opens a
//! fresh read end before closing the old one and keeps going, so a writer that closes and
//! reopens the FIFO (a restarted task) loses nothing and the pipe never lacks a reader. On a write
//! error such as ENOSPC it keeps the unwritten bytes, stops reading (the task blocks on its pipe
//! rather than losing output), reports once and retries every second until the disk has room.
//!
//! Bytes leave the FIFO only once they are in the file: each chunk is first copied out with
//! `tee(2)` (which leaves the pipe as it is) into a private pipe, written, and only then consumed
//! from the FIFO. A logmon killed meanwhile (SIGKILL, OOM) leaves the chunk in the FIFO for the
//! next one; a kill between the write and the consume can at worst write a chunk twice, never
//! lose one. What a `Stop` has to give up (the disk still full) is counted and returned.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::rotator::Rotator;

/// Bytes read from the FIFO at once (the default pipe capacity).
const CHUNK: usize = 64 * 1024;

/// Output a stopped copier could not write (the disk full at its `Stop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The FIFO it came from.
    pub fifo: PathBuf,
    /// The file it was for.
    pub file: PathBuf,
    /// How many bytes: those held for the retry and those still in the FIFO.
    pub bytes: usize,
    /// The last write error.
    pub error: String,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes from {} were not written to {} ({})",
            self.bytes,
            self.fifo.display(),
            self.file.display(),
            self.error
        )
    }
}

/// A running copier; [`Copier::stop`] drains what the pipe holds and ends it.
#[derive(Debug)]
pub struct Copier {
    stop: Option<OwnedFd>,
    done: Option<tokio::sync::oneshot::Receiver<Option<Lost>>>,
    alive: Arc<AtomicBool>,
    fifo: PathBuf,
    /// The copier thread's kernel id, once it runs (0 before).
    tid: Arc<std::sync::atomic::AtomicI32>,
}

impl Copier {
    /// Starts copying `fifo` (which must exist) into `rotator`.
    pub fn start(fifo: &Path, rotator: Rotator) -> io::Result<Copier> {
        let (stop_read, stop_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let peek = Peek::new()?;
        let reader = open_reader(fifo)?;
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let path = fifo.to_path_buf();
        let tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let own_tid = tid.clone();
        std::thread::Builder::new()
            .name("logmon-copier".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                own_tid.store(nix::unistd::gettid().as_raw(), Ordering::Release);
                let lost = copy(&path, reader, stop_read, peek, rotator);
                flag.store(false, Ordering::Release);
                let _ = done_tx.send(lost);
            })?;
        Ok(Copier {
            stop: Some(stop_write),
            done: Some(done),
            alive,
            fifo: fifo.to_path_buf(),
            tid,
        })
    }

    /// The copier thread's kernel id (0 until it has started).
    pub fn thread_id(&self) -> i32 {
        self.tid.load(Ordering::Acquire)
    }

    /// Whether the copier thread still runs.
    pub fn is_running(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Asks the copier to drain the pipe and finish; waits up to `limit` for it (without
    /// blocking a thread of the caller's runtime). Returns what it could not write.
    pub async fn stop(&mut self, limit: Duration) -> Option<Lost> {
        drop(self.stop.take());
        let done = self.done.take()?;
        match tokio::time::timeout(limit, done).await {
            Ok(lost) => lost.ok().flatten(),
            Err(_) => {
                tracing::warn!(fifo = %self.fifo.display(), "log copier did not finish in {limit:?}");
                None
            }
        }
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// Opens the read end without blocking for a writer and without following a symlink.
fn open_reader(fifo: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOFOLLOW).bits())
        .open(fifo)
}

enum Wake {
    Data,
    Hangup,
    Stop,
}

fn wait(reader: &File, stop: &OwnedFd) -> io::Result<Wake> {
    loop {
        let mut fds = [
            PollFd::new(reader.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let stop_ev = fds[1].revents().unwrap_or(PollFlags::empty());
        let ev = fds[0].revents().unwrap_or(PollFlags::empty());
        if !stop_ev.is_empty() {
            return Ok(Wake::Stop);
        }
        if ev.contains(PollFlags::POLLIN) {
            return Ok(Wake::Data);
        }
        if ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            return Ok(Wake::Hangup);
        }
    }
}

/// The private pipe a chunk is copied into with `tee(2)`, so that it stays in the FIFO until
/// it is written.
struct Peek {
    read: File,
    write: OwnedFd,
}

impl Peek {
    fn new() -> io::Result<Peek> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (read, write) = nix::unistd::pipe2(flags)?;
        Ok(Peek {
            read: File::from(read),
            write,
        })
    }
}

/// What one look at the FIFO gave.
enum Took {
    /// Bytes copied out (still in the FIFO), in `buf[..n]`.
    Bytes(usize),
    /// No writer and nothing left.
    Eof,
    /// Nothing there now.
    Empty,
}

/// Copies up to a chunk from the head of the FIFO into `buf`, leaving it in the FIFO.
fn peek(reader: &File, peek: &mut Peek, buf: &mut [u8]) -> io::Result<Took> {
    // SAFETY: tee(2) takes two descriptors we hold open and a length; it touches no memory of
    // ours.
    let r = unsafe {
        nix::libc::tee(
            reader.as_raw_fd(),
            peek.write.as_raw_fd(),
            buf.len(),
            nix::libc::SPLICE_F_NONBLOCK,
        )
    };
    let n = match nix::errno::Errno::result(r) {
        Ok(0) => return Ok(Took::Eof),
        Ok(n) => n as usize,
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => return Ok(Took::Empty),
        Err(e) => return Err(e.into()),
    };
    let mut got = 0;
    while got < n {
        match peek.read.read(&mut buf[got..n]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Took::Bytes(got))
}

/// Removes `n` bytes (the ones [`peek`] copied out and that are now written) from the FIFO.
fn consume(reader: &mut File, buf: &mut [u8], mut n: usize) -> io::Result<()> {
    while n > 0 {
        let want = n.min(buf.len());
        match reader.read(&mut buf[..want]) {
            Ok(0) => return Ok(()),
            Ok(k) => n -= k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How one chunk went.
enum Moved {
    /// Written and consumed (or nothing there).
    Ok(Took),
    /// Stopped with bytes unwritten.
    Lost(Lost),
    /// Reading the FIFO failed.
    Failed(io::Error),
}

/// Peeks a chunk, writes it, then consumes it from the FIFO.
fn move_chunk(
    fifo: &Path,
    reader: &mut File,
    peek_pipe: &mut Peek,
    buf: &mut [u8],
    rotator: &mut Rotator,
    stop: &OwnedFd,
) -> Moved {
    let n = match peek(reader, peek_pipe, buf) {
        Ok(Took::Bytes(n)) => n,
        Ok(other) => return Moved::Ok(other),
        Err(e) => return Moved::Failed(e),
    };
    if let Err(held) = write_all(rotator, &buf[..n], stop) {
        let queued = queued_bytes(reader).saturating_sub(n);
        return Moved::Lost(Lost {
            fifo: fifo.to_path_buf(),
            file: rotator.current_path(),
            bytes: held.bytes + queued,
            error: held.error,
        });
    }
    match consume(reader, buf, n) {
        Ok(()) => Moved::Ok(Took::Bytes(n)),
        Err(e) => Moved::Failed(e),
    }
}

/// Bytes waiting in the FIFO (FIONREAD), 0 when unknown.
fn queued_bytes(reader: &File) -> usize {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer we pass.
    let r = unsafe { nix::libc::ioctl(reader.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    if r == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

fn copy(
    fifo: &Path,
    mut reader: File,
    stop: OwnedFd,
    mut peek_pipe: Peek,
    mut rotator: Rotator,
) -> Option<Lost> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match wait(&reader, &stop) {
            Ok(Wake::Data) => {
                match move_chunk(
                    fifo,
                    &mut reader,
                    &mut peek_pipe,
                    &mut buf,
                    &mut rotator,
                    &stop,
                ) {
                    Moved::Ok(Took::Bytes(_)) | Moved::Ok(Took::Empty) => {}
                    Moved::Ok(Took::Eof) => match reopen(fifo, reader, &stop) {
                        Some(r) => reader = r,
                        None => return None,
                    },
                    Moved::Lost(lost) => return Some(lost),
                    Moved::Failed(e) => {
                        tracing::error!(fifo = %fifo.display(), "reading log fifo: {e}");
                        match reopen(fifo, reader, &stop) {
                            Some(r) => reader = r,
                            None => return None,
                        }
                    }
                }
            }
            Ok(Wake::Hangup) => {
                // Drain first: a writer may have written and closed at once.
                if let Some(lost) = drain(
                    fifo,
                    &mut reader,
                    &mut peek_pipe,
                    &mut buf,
                    &mut rotator,
                    &stop,
                ) {
                    return Some(lost);
                }
                match reopen(fifo, reader, &stop) {
                    Some(r) => reader = r,
                    None => return None,
                }
            }
            Ok(Wake::Stop) => {
                return drain(
                    fifo,
                    &mut reader,
                    &mut peek_pipe,
                    &mut buf,
                    &mut rotator,
                    &stop,
                );
            }
            Err(e) => {
                tracing::error!(fifo = %fifo.display(), "waiting on log fifo: {e}");
                return None;
            }
        }
    }
}

/// Moves whatever the pipe holds right now into the rotator.
fn drain(
    fifo: &Path,
    reader: &mut File,
    peek_pipe: &mut Peek,
    buf: &mut [u8],
    rotator: &mut Rotator,
    stop: &OwnedFd,
) -> Option<Lost> {
    loop {
        match move_chunk(fifo, reader, peek_pipe, buf, rotator, stop) {
            Moved::Ok(Took::Bytes(_)) => {}
            Moved::Ok(_) | Moved::Failed(_) => return None,
            Moved::Lost(lost) => return Some(lost),
        }
    }
}

/// A fresh read end replaces one that saw EOF; the old one closes only afterwards, so the FIFO
/// always has a reader (writers never get EPIPE, nothing in the pipe is lost). When the FIFO
/// cannot be opened (removed, replaced by something else) the old end stays, and the open is
/// retried every second instead of spinning on its hang-up; `None` when stopped meanwhile.
fn reopen(fifo: &Path, old: File, stop: &OwnedFd) -> Option<File> {
    let mut reported = false;
    loop {
        match open_reader(fifo) {
            Ok(new) => {
                tracing::trace!(fifo = %fifo.display(), fd = new.as_raw_fd(), "writer closed the fifo; waiting for the next");
                if reported {
                    tracing::info!(fifo = %fifo.display(), "log fifo open again");
                }
                drop(old);
                return Some(new);
            }
            Err(e) => {
                if !reported {
                    tracing::error!(fifo = %fifo.display(), "reopening log fifo: {e}; retrying every second");
                    reported = true;
                }
                let mut fds = [PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
                if matches!(poll(&mut fds, PollTimeout::from(1000u16)), Ok(n) if n > 0) {
                    return None;
                }
            }
        }
    }
}

/// What [`write_all`] could not write when stopped.
struct Held {
    bytes: usize,
    error: String,
}

/// Writes all of `data`, retrying every second on errors (e.g. a full disk) until it fits or the
/// copier is stopped; stopped with bytes unwritten, says how many and why.
fn write_all(rotator: &mut Rotator, mut data: &[u8], stop: &OwnedFd) -> Result<(), Held> {
    let mut reported = false;
    loop {
        match rotator.write(data) {
            Ok(()) => {
                if reported {
                    tracing::info!("log writes resumed");
                }
                return Ok(());
            }
            Err((written, e)) => {
                data = &data[written..];
                if !reported {
                    tracing::error!(
                        "{e}; holding {} bytes and retrying every second",
                        data.len()
                    );
                    reported = true;
                }
                let mut fds = [PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
                if let Ok(n) = poll(&mut fds, PollTimeout::from(1000u16)) {
                    if n > 0 {
                        return Err(Held {
                            bytes: data.len(),
                            error: e.to_string(),
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    fn wait_for(path: &Path, want: &[u8]) {
        let t0 = Instant::now();
        loop {
            let got = std::fs::read(path).unwrap_or_default();
            if got == want {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "{} = {:?}",
                path.display(),
                String::from_utf8_lossy(&got)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn copies_and_survives_a_writer_reopening_the_fifo() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join(".t.stdout.fifo");
        mkfifo(&fifo);
        let rot = Rotator::open(d.path(), "t.stdout", 10, 1 << 20).unwrap();
        let mut c = Copier::start(&fifo, rot).unwrap();
        for round in 0..3 {
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            writeln!(w, "line {round}").unwrap();
            drop(w);
        }
        wait_for(&d.path().join("t.stdout.0"), b"line 0\nline 1\nline 2\n");
        assert!(c.is_running());
        c.stop(Duration::from_secs(2)).await;
        assert!(!c.is_running());
    }

    #[tokio::test]
    async fn data_left_in_the_pipe_reaches_the_next_copier() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("f");
        mkfifo(&fifo);
        let rot = Rotator::open(d.path(), "t", 10, 1 << 20).unwrap();
        let mut c = Copier::start(&fifo, rot).unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"before\n").unwrap();
        wait_for(&d.path().join("t.0"), b"before\n");
        // Another reader keeps the pipe open (as a killed logmon's successor would find it):
        // what the task writes meanwhile waits in the kernel buffer.
        let _keep = open_reader(&fifo).unwrap();
        c.stop(Duration::from_secs(2)).await;
        w.write_all(b"between\n").unwrap();
        let rot = Rotator::open(d.path(), "t", 10, 1 << 20).unwrap();
        let mut c2 = Copier::start(&fifo, rot).unwrap();
        w.write_all(b"after\n").unwrap();
        wait_for(&d.path().join("t.0"), b"before\nbetween\nafter\n");
        c2.stop(Duration::from_secs(2)).await;
    }

    /// CPU time (user + system) of one thread of this process, in clock ticks.
    fn thread_ticks(tid: i32) -> u64 {
        let st = crate::procfs::thread_stat(tid).unwrap();
        st.utime + st.stime
    }

    /// The FIFO vanishes while its writer closes: the copier cannot reopen it and must wait
    /// (it used to spin on the hang-up at 100% CPU), then resume once the FIFO is back.
    #[tokio::test]
    async fn a_fifo_that_cannot_be_reopened_is_retried_without_spinning() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join(".spin.stdout.fifo");
        mkfifo(&fifo);
        let rot = Rotator::open(d.path(), "spin", 10, 1 << 20).unwrap();
        let mut c = Copier::start(&fifo, rot).unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"one\n").unwrap();
        wait_for(&d.path().join("spin.0"), b"one\n");
        std::fs::remove_file(&fifo).unwrap();
        drop(w);
        let tid = c.thread_id();
        assert!(tid > 0);
        let before = thread_ticks(tid);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let spent = thread_ticks(tid) - before;
        eprintln!("SPENT {spent}");
        assert!(
            spent < 20,
            "copier burnt {spent} ticks in 1.5 s with the fifo gone"
        );
        assert!(c.is_running());
        mkfifo(&fifo);
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"two\n").unwrap();
        drop(w);
        wait_for(&d.path().join("spin.0"), b"one\ntwo\n");
        c.stop(Duration::from_secs(2)).await;
    }
}
