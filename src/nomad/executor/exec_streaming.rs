//! `ExecStreaming` (spec nomad-executor-logmon.md §5.8): a command in the task's context with its
//! stdin, stdout and stderr carried over one bidirectional stream, on pipes or on a real PTY.
//! Message order as Nomad's: output chunks (≤ 4096 bytes), a `close` per output stream at EOF,
//! then exactly one `exited` with the exit code. Cancelling the RPC kills the command.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::cgroups::{self, CgroupMode};
use super::signals::kill_pid;
use super::task::{resolve_exec, task_command, Ended, Task};
use crate::proto::drivers::exec_task_streaming_request::TerminalSize;
use crate::proto::drivers::{
    ExecTaskStreamingIoOperation, ExecTaskStreamingRequest, ExecTaskStreamingResponse, ExitResult,
};

const CHUNK: usize = 4096;

type Out = mpsc::Sender<Result<ExecTaskStreamingResponse, Status>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecTaskStreamingResponse, Status>> + Send>>;

fn unknown(e: impl std::fmt::Display) -> Status {
    Status::unknown(e.to_string())
}

fn data(stdout: bool, bytes: &[u8], close: bool) -> ExecTaskStreamingResponse {
    let op = Some(ExecTaskStreamingIoOperation {
        data: bytes.to_vec(),
        close,
    });
    if stdout {
        ExecTaskStreamingResponse {
            stdout: op,
            ..Default::default()
        }
    } else {
        ExecTaskStreamingResponse {
            stderr: op,
            ..Default::default()
        }
    }
}

fn exited(code: i32) -> ExecTaskStreamingResponse {
    ExecTaskStreamingResponse {
        exited: true,
        result: Some(ExitResult {
            exit_code: code,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reads the setup message, starts the command and returns the response stream.
pub(crate) async fn run(
    mut inbound: Streaming<ExecTaskStreamingRequest>,
    task: Option<Arc<Task>>,
) -> Result<ExecStream, Status> {
    let setup = inbound
        .message()
        .await?
        .and_then(|m| m.setup)
        .ok_or_else(|| unknown("first message should always be setup"))?;
    let Some((program, args)) = setup.command.split_first() else {
        return Err(unknown("command is required"));
    };
    if let Some(t) = task.as_ref().filter(|t| t.container.is_some()) {
        return run_in_container(t, setup.command.clone(), setup.tty, inbound).await;
    }
    let bin = resolve_exec(program, task.as_deref()).map_err(unknown)?;
    let v2 = cgroups::detect_mode() == CgroupMode::V2;
    let (mut cmd, mut child_setup) = task_command(&bin, args, task.as_deref(), v2, true);
    let (tx, rx) = mpsc::channel(16);
    if setup.tty {
        let pty = nix::pty::openpty(None, None).map_err(unknown)?;
        let slave = pty.slave;
        let stdio = |fd: &OwnedFd| fd.try_clone().map(std::process::Stdio::from);
        cmd.stdin(stdio(&slave).map_err(unknown)?)
            .stdout(stdio(&slave).map_err(unknown)?)
            .stderr(stdio(&slave).map_err(unknown)?);
        child_setup.controlling_tty = true;
        child_setup.apply(&mut cmd);
        let child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| unknown(format!("failed to start {}: {e}", bin.display())))?;
        drop(slave);
        tokio::spawn(run_tty(child, pty.master, inbound, tx));
    } else {
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        child_setup.apply(&mut cmd);
        let child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| unknown(format!("failed to start {}: {e}", bin.display())))?;
        tokio::spawn(run_pipes(child, inbound, tx));
    }
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// ExecStreaming inside an isolated task's container: the stage enters it and, for a TTY,
/// makes the PTY there and hands back its master.
async fn run_in_container(
    task: &Task,
    argv: Vec<String>,
    tty: bool,
    inbound: Streaming<ExecTaskStreamingRequest>,
) -> Result<ExecStream, Status> {
    let Some(container) = task.container.as_ref() else {
        return Err(unknown("the task has no container"));
    };
    let (tx, rx) = mpsc::channel(16);
    let piped = || {
        [
            std::process::Stdio::piped(),
            std::process::Stdio::piped(),
            std::process::Stdio::piped(),
        ]
    };
    let null = || {
        [
            std::process::Stdio::null(),
            std::process::Stdio::null(),
            std::process::Stdio::null(),
        ]
    };
    let stdio = if tty { null() } else { piped() };
    let started = container
        .exec(argv, tty, stdio, task.cgroup.as_ref())
        .await
        .map_err(unknown)?;
    match (tty, started.pty) {
        (true, Some(master)) => {
            tokio::spawn(run_tty(started.child, master, inbound, tx));
        }
        (true, None) => return Err(unknown("the container stage made no terminal")),
        (false, _) => {
            tokio::spawn(run_pipes(started.child, inbound, tx));
        }
    }
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

async fn pump_output<R: tokio::io::AsyncRead + Unpin>(mut r: R, stdout: bool, tx: Out) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(Ok(data(stdout, &buf[..n], false))).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Ok(data(stdout, &[], true))).await;
}

async fn run_pipes(
    mut child: tokio::process::Child,
    mut inbound: Streaming<ExecTaskStreamingRequest>,
    tx: Out,
) {
    let pid = child.id();
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump_output(o, true, tx.clone())));
    let err = child
        .stderr
        .take()
        .map(|e| tokio::spawn(pump_output(e, false, tx.clone())));
    let mut stdin = child.stdin.take();
    let forward = tokio::spawn(async move {
        while let Ok(Some(msg)) = inbound.message().await {
            if let Some(op) = msg.stdin {
                if let Some(w) = stdin.as_mut() {
                    if !op.data.is_empty() && w.write_all(&op.data).await.is_err() {
                        stdin = None;
                    }
                }
                if op.close {
                    stdin = None;
                }
            }
            // A resize without a TTY has nothing to resize; heartbeats carry nothing.
        }
    });
    let outputs = async {
        if let Some(h) = out {
            let _ = h.await;
        }
        if let Some(h) = err {
            let _ = h.await;
        }
    };
    tokio::select! {
        _ = outputs => {}
        _ = tx.closed() => {
            if let Some(pid) = pid {
                let _ = kill_pid(pid, Signal::SIGKILL);
            }
        }
    }
    let code = Ended::of(child.wait().await).streaming_code();
    forward.abort();
    let _ = tx.send(Ok(exited(code))).await;
}

fn resize(master: &OwnedFd, size: &TerminalSize) {
    let ws = nix::pty::Winsize {
        ws_row: size.height.clamp(0, u16::MAX as i32) as u16,
        ws_col: size.width.clamp(0, u16::MAX as i32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one Winsize from the pointer, which lives across the call.
    unsafe {
        nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws);
    }
}

async fn run_tty(
    mut child: tokio::process::Child,
    master: OwnedFd,
    mut inbound: Streaming<ExecTaskStreamingRequest>,
    tx: Out,
) {
    let pid = child.id();
    // The pty master is read and written with blocking calls on their own threads.
    let reader_fd = master.try_clone();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    if let Ok(fd) = reader_fd {
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(fd);
            let mut buf = vec![0u8; CHUNK];
            // EIO once every slave end is closed.
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 || out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    let fwd_tx = tx.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(chunk) = out_rx.recv().await {
            if fwd_tx.send(Ok(data(true, &chunk, false))).await.is_err() {
                break;
            }
        }
    });
    let writer = master.try_clone().ok().map(std::fs::File::from);
    let forward = tokio::spawn(async move {
        let mut writer = writer;
        while let Ok(Some(msg)) = inbound.message().await {
            if let Some(size) = msg.tty_size.as_ref() {
                resize(&master, size);
            }
            if let Some(op) = msg.stdin {
                if let (Some(w), false) = (writer.as_mut(), op.data.is_empty()) {
                    let bytes = op.data;
                    let mut file = match w.try_clone() {
                        Ok(f) => f,
                        Err(_) => continue,
                    };
                    let _ = tokio::task::spawn_blocking(move || file.write_all(&bytes)).await;
                }
                if op.close {
                    // End of input on a terminal: send EOF (Ctrl-D) as a terminal user would.
                    if let Some(w) = writer.as_mut() {
                        let _ = w.write_all(&[4]);
                    }
                }
            }
        }
        master
    });
    let lead = tokio::select! {
        status = child.wait() => status,
        _ = tx.closed() => {
            if let Some(pid) = pid {
                let _ = kill_pid(pid, Signal::SIGKILL);
            }
            child.wait().await
        }
    };
    // The lead process is gone: pass on what it left in the terminal (the reader ends at EIO
    // once nothing holds the terminal), then report the exit; background processes still
    // holding the terminal do not delay it beyond a short grace.
    let _ = tokio::time::timeout(Duration::from_millis(500), forwarder).await;
    forward.abort();
    let _ = tx.send(Ok(data(true, &[], true))).await;
    let _ = tx.send(Ok(exited(Ended::of(lead).streaming_code()))).await;
}
