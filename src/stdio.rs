//! Stdio capture and `plugin.GRPCStdio` (spec go-plugin-wire.md §11).
//!
//! Go swaps its language-level `os.Stdout`/`os.Stderr`; we go further and move file descriptors
//! 1 and 2 themselves onto pipes, so output of C code and child processes is caught too, and
//! nothing the plugin prints can reach the real stdout before the handshake line. A thread per
//! pipe blocks in `read` (no polling) and hands chunks to the one `StreamStdio` consumer through a
//! bounded channel: a slow host slows the writers (backpressure) instead of growing memory.
//! What arrives on fd 2 is also copied to the real stderr, so log lines still reach the host's log.
//!
//! A writer to fd 1 therefore waits while a host has opened `StreamStdio` and does not read it,
//! as a goroutine writing Go's `os.Stdout` would: plugin code must not do that on a tokio worker
//! (a blocked worker can stall the runtime's other tasks; use `spawn_blocking`, see the grpctest
//! example's `PrintStdio`). Once no server serves any more (after `Shutdown`) nothing will ever
//! read the capture: from then on it is dropped instead of held, so every writer, also one stuck
//! on a worker, gets going again and the plugin can exit.
//!
//! The capture is Unix-only: elsewhere (Windows) [`capture`] does nothing, output goes straight
//! to the host's pipes and `StreamStdio` answers `UNAVAILABLE`, so part of the bookkeeping below
//! is unused there.
#![cfg_attr(not(unix), allow(dead_code))]

use std::fs::File;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::proto::plugin::grpc_stdio_server::GrpcStdio;
use crate::proto::plugin::{stdio_data::Channel, StdioData};

/// Largest chunk sent in one `StdioData` message.
const CHUNK: usize = 16 * 1024;
/// Chunks buffered per stream before writers block.
const DEPTH: usize = 16;

/// Whether a server serves (and a host may still read `StreamStdio`).
#[derive(Debug, Default, Clone, Copy)]
struct Serving {
    active: usize,
    ended: bool,
}

impl Serving {
    /// A server has served and none serves now: nobody will read the capture again.
    fn released(&self) -> bool {
        self.active == 0 && self.ended
    }
}

static SERVING: LazyLock<tokio::sync::watch::Sender<Serving>> =
    LazyLock::new(|| tokio::sync::watch::channel(Serving::default()).0);

/// Held by a serving [`crate::Server`]; dropped when it stops serving.
#[derive(Debug)]
pub(crate) struct ServingGuard(());

/// Marks a server as serving until the guard is dropped.
pub(crate) fn serving() -> ServingGuard {
    SERVING.send_modify(|s| s.active += 1);
    ServingGuard(())
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        SERVING.send_modify(|s| {
            s.active = s.active.saturating_sub(1);
            s.ended = true;
        });
    }
}

/// Hands `msg` to the stream, waiting for room, unless (or until) no server serves any more,
/// when it is dropped; false when the stream side is gone.
fn send_or_drop(
    tx: &mpsc::Sender<StdioData>,
    msg: StdioData,
    serving: &mut tokio::sync::watch::Receiver<Serving>,
) -> bool {
    if serving.borrow().released() {
        let _ = tx.try_send(msg);
        return true;
    }
    // tokio's channel and watch need no runtime: this thread waits on either.
    futures::executor::block_on(async {
        tokio::select! {
            sent = tx.send(msg) => sent.is_ok(),
            _ = serving.wait_for(Serving::released) => {
                tracing::debug!("no server serves any more: dropping captured stdout");
                true
            }
        }
    })
}

/// Errors setting up the capture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StdioError {
    /// pipe/dup/dup2 failed.
    #[error("capturing {what} failed: {source}")]
    Redirect {
        /// Which step.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

struct Captured {
    original_stdout: File,
    stdout_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<StdioData>>>,
    stderr_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<StdioData>>>,
    stderr_attached: Arc<AtomicBool>,
}

static CAPTURE: OnceLock<Result<Captured, String>> = OnceLock::new();
/// The one dup of the real fd 2 that every logger and the stderr tee share, taken before the
/// capture moves fd 2 (one descriptor where three copies once sat open).
static REAL_STDERR: Mutex<Option<Arc<File>>> = Mutex::new(None);

/// The real stderr (the host's log pipe), shared: a cheap handle on one descriptor.
#[derive(Debug, Clone)]
pub struct OriginalStderr(Arc<File>);

impl Write for OriginalStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

/// The shared dup of fd 2, taken now if nobody took it yet. Called before fd 2 is redirected
/// (by [`capture`] itself), so it always names the real stderr.
fn real_stderr() -> io::Result<OriginalStderr> {
    let mut slot = REAL_STDERR.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = slot.as_ref() {
        return Ok(OriginalStderr(f.clone()));
    }
    let file = Arc::new(dup_stderr()?);
    *slot = Some(file.clone());
    Ok(OriginalStderr(file))
}

#[cfg(unix)]
fn dup_stderr() -> io::Result<File> {
    use std::os::fd::AsFd;
    Ok(File::from(io::stderr().as_fd().try_clone_to_owned()?))
}

#[cfg(windows)]
fn dup_stderr() -> io::Result<File> {
    use std::os::windows::io::AsHandle;
    Ok(File::from(io::stderr().as_handle().try_clone_to_owned()?))
}

#[cfg(unix)]
fn redirect_err(what: &'static str) -> impl FnOnce(nix::Error) -> StdioError {
    move |e| StdioError::Redirect {
        what,
        source: io::Error::from(e),
    }
}

/// Moves fd 1 and fd 2 onto pipes, once per process; later calls do nothing. Call it first thing
/// in `main` if the plugin may print before [`crate::Server::serve`] (which calls it too).
/// Does nothing where there is no capture (not Unix).
#[cfg(unix)]
pub fn capture() -> Result<(), StdioError> {
    static START: Mutex<()> = Mutex::new(());
    let _guard = START.lock().unwrap_or_else(|p| p.into_inner());
    let result = CAPTURE.get_or_init(|| start_capture().map_err(|e| e.to_string()));
    result
        .as_ref()
        .map(|_| ())
        .map_err(|e| StdioError::Redirect {
            what: "stdio",
            source: io::Error::other(e.clone()),
        })
}

/// Moves fd 1 and fd 2 onto pipes, once per process; later calls do nothing. Call it first thing
/// in `main` if the plugin may print before [`crate::Server::serve`] (which calls it too).
/// Does nothing where there is no capture (not Unix).
#[cfg(not(unix))]
pub fn capture() -> Result<(), StdioError> {
    Ok(())
}

#[cfg(unix)]
fn start_capture() -> Result<Captured, StdioError> {
    use std::os::fd::AsFd;
    let _ = io::stdout().flush();
    let original_stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| StdioError::Redirect {
            what: "stdout",
            source,
        })?;
    let tee = real_stderr().map_err(|source| StdioError::Redirect {
        what: "stderr",
        source,
    })?;
    let out_read = redirect("stdout", |w| nix::unistd::dup2_stdout(w))?;
    let err_read = redirect("stderr", |w| nix::unistd::dup2_stderr(w))?;
    let (out_tx, out_rx) = mpsc::channel(DEPTH);
    let (err_tx, err_rx) = mpsc::channel(DEPTH);
    let stderr_attached = Arc::new(AtomicBool::new(false));
    spawn_pump(out_read, Channel::Stdout, out_tx, None, None);
    spawn_pump(
        err_read,
        Channel::Stderr,
        err_tx,
        Some(tee),
        Some(stderr_attached.clone()),
    );
    Ok(Captured {
        original_stdout: File::from(original_stdout),
        stdout_rx: Arc::new(tokio::sync::Mutex::new(out_rx)),
        stderr_rx: Arc::new(tokio::sync::Mutex::new(err_rx)),
        stderr_attached,
    })
}

/// Points fd 1 or 2 (`onto`: nix's `dup2_stdout` or `dup2_stderr`) at the write end of a new
/// pipe; returns the read end.
#[cfg(unix)]
fn redirect(
    what: &'static str,
    onto: impl FnOnce(&std::os::fd::OwnedFd) -> nix::Result<()>,
) -> Result<File, StdioError> {
    let (read, write) = nix::unistd::pipe().map_err(redirect_err(what))?;
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(redirect_err(what))?;
    onto(&write).map_err(redirect_err(what))?;
    Ok(File::from(read))
}

fn spawn_pump(
    mut pipe: File,
    channel: Channel,
    tx: mpsc::Sender<StdioData>,
    mut tee: Option<OriginalStderr>,
    attached: Option<Arc<AtomicBool>>,
) {
    let name = format!("goplugin-{}", channel.as_str_name().to_lowercase());
    let spawned = std::thread::Builder::new()
        .name(name)
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut serving = SERVING.subscribe();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                if let Some(t) = tee.as_mut() {
                    let _ = t.write_all(&buf[..n]);
                }
                let msg = StdioData {
                    channel: channel as i32,
                    data: buf[..n].to_vec(),
                };
                // stderr is also on the host's log pipe: without a consumer, keep what fits and
                // drop the rest rather than stall the log. stdout has no other way out: block.
                let must_wait = attached.as_ref().is_none_or(|a| a.load(Ordering::Acquire));
                if must_wait {
                    if !send_or_drop(&tx, msg, &mut serving) {
                        return;
                    }
                } else {
                    let _ = tx.try_send(msg);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start stdio pump thread: {e}");
    }
}

/// Writes the handshake line to the real stdout (the one before capture) and flushes it.
pub(crate) fn write_handshake(line: &str) -> io::Result<()> {
    let text = format!("{line}\n");
    match CAPTURE.get() {
        Some(Ok(c)) => {
            let mut f = &c.original_stdout;
            f.write_all(text.as_bytes())?;
            f.flush()
        }
        _ => {
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        }
    }
}

/// A handle on the real stderr (the host's log pipe), whether or not fd 2 was captured. Loggers
/// write here so their lines go to the host's log and not into the mirrored stderr stream.
pub fn original_stderr() -> io::Result<OriginalStderr> {
    real_stderr()
}

/// Writes `text` straight to the real stderr, bypassing the capture pipe (whose copy could be
/// lost when the process exits right after).
pub fn write_stderr(text: &str) {
    if let Ok(mut f) = original_stderr() {
        let _ = f.write_all(text.as_bytes());
    }
}

/// `plugin.GRPCStdio`: streams captured output to one host at a time until it cancels or the
/// server shuts down.
#[derive(Clone)]
pub(crate) struct StdioService {
    shutdown: CancellationToken,
}

impl StdioService {
    /// A service that ends its streams when `shutdown` fires.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { shutdown }
    }
}

type StdioStream = Pin<Box<dyn Stream<Item = Result<StdioData, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcStdio for StdioService {
    type StreamStdioStream = StdioStream;

    async fn stream_stdio(
        &self,
        _request: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        let Some(Ok(cap)) = CAPTURE.get() else {
            return Err(Status::unavailable("stdio is not captured in this process"));
        };
        let mut out = cap.stdout_rx.clone().lock_owned().await;
        let mut err = cap.stderr_rx.clone().lock_owned().await;
        let attached = AttachedFlag::set(cap.stderr_attached.clone());
        let shutdown = self.shutdown.clone();
        let stream = async_stream_from(
            move |tx: mpsc::Sender<Result<StdioData, Status>>| async move {
                let _attached = attached;
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        m = out.recv() => m,
                        m = err.recv() => m,
                    };
                    let Some(msg) = next else { return };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
            },
        );
        Ok(Response::new(stream))
    }
}

/// Marks stderr as having a consumer while alive.
struct AttachedFlag(Arc<AtomicBool>);

impl AttachedFlag {
    fn set(flag: Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag)
    }
}

impl Drop for AttachedFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs `body` as a task feeding a response stream; the task ends when the receiver is dropped.
pub(crate) fn async_stream_from<T, F, Fut>(body: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
