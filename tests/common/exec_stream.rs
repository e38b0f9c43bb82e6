//! `ExecStreaming` from the test side: the messages a client sends (setup, stdin, resize) and
//! one call run to its end, collecting stdout, stderr and the exit code (bounded in time).

use std::time::Duration;

use futures::StreamExt;
use goplugin::proto::drivers::exec_task_streaming_request::{Setup, TerminalSize};
use goplugin::proto::drivers::{ExecTaskStreamingIoOperation, ExecTaskStreamingRequest};
use goplugin::proto::executor::executor_client::ExecutorClient;
use tonic::transport::Channel;

/// The first message: the command, with or without a TTY.
pub fn setup(command: &[&str], tty: bool) -> ExecTaskStreamingRequest {
    ExecTaskStreamingRequest {
        setup: Some(Setup {
            task_id: String::new(),
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
        }),
        ..Default::default()
    }
}

/// Bytes for the command's stdin, then (with `close`) its end.
pub fn stdin(data: &[u8], close: bool) -> ExecTaskStreamingRequest {
    ExecTaskStreamingRequest {
        stdin: Some(ExecTaskStreamingIoOperation {
            data: data.to_vec(),
            close,
        }),
        ..Default::default()
    }
}

/// A terminal resize.
pub fn resize(width: i32, height: i32) -> ExecTaskStreamingRequest {
    ExecTaskStreamingRequest {
        tty_size: Some(TerminalSize { height, width }),
        ..Default::default()
    }
}

/// What one call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Everything on stdout (the TTY's output with one).
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// The `exited` message's code.
    pub code: Option<i32>,
}

/// Sends `msgs` (the client then keeps the stream open) and reads the answer to its end; each
/// message must come within 20 s.
pub async fn run(
    exec: &mut ExecutorClient<Channel>,
    msgs: Vec<ExecTaskStreamingRequest>,
) -> Output {
    let (tx, rx) = tokio::sync::mpsc::channel(msgs.len().max(1));
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    let mut s = exec
        .exec_streaming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("the stream answers within 20 s")
    {
        let msg = msg.unwrap();
        if let Some(o) = msg.stdout {
            out.extend(o.data);
        }
        if let Some(e) = msg.stderr {
            err.extend(e.data);
        }
        if msg.exited {
            code = msg.result.map(|r| r.exit_code);
        }
    }
    drop(tx);
    Output {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        code,
    }
}
