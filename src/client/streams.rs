//! What the host keeps reading while a plugin runs (§10, §12, §13): the broker's `StartStream`,
//! the `GRPCStdio` stream, the plugin's stdout after the handshake line, and its stderr as
//! `tracing` events; lines bounded as a Go host bounds them (64 KiB).

use std::io::Write;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::broker::Broker;
use crate::hclog::{self, LogLine, StderrLogParser, DEFAULT_LINE_LIMIT};
use crate::proto::plugin::grpc_broker_client::GrpcBrokerClient;
use crate::proto::plugin::grpc_stdio_client::GrpcStdioClient;
use crate::proto::plugin::stdio_data::Channel as StdioChannel;

use super::*;

/// Opens `GRPCBroker/StartStream` at once and keeps feeding the broker. Spawned, never awaited
/// here: a grpc-go handler sends no headers before its first message.
pub(super) fn open_broker_stream(
    broker: &Broker,
    channel: &Channel,
    closed: &CancellationToken,
    limit: usize,
) {
    let (tx, rx) = mpsc::channel(16);
    broker.attach(tx.clone());
    let broker = broker.clone();
    let closed = closed.clone();
    let mut client = GrpcBrokerClient::new(channel.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    tokio::spawn(async move {
        let call = tokio::select! {
            r = client.start_stream(ReceiverStream::new(rx)) => r,
            _ = closed.cancelled() => {
                broker.detach(&tx);
                return;
            }
        };
        let stream = match call {
            Ok(resp) => resp.into_inner(),
            Err(e) => {
                // A grpc-go plugin sends the stream's headers with its first message, so the
                // call is still waiting for them when the client is killed: that is the end of
                // a good stream, not a failure.
                if broker.is_closed() {
                    tracing::trace!("plugin broker stream closed with the client: {e}");
                } else if e.code() == tonic::Code::Unimplemented {
                    // A plugin without a broker: only brokered calls will fail (as in Go).
                    tracing::debug!("plugin has no broker service: {e}");
                } else {
                    tracing::debug!("plugin broker stream ended: {e}");
                }
                broker.detach(&tx);
                return;
            }
        };
        let mut stream = stream;
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = closed.cancelled() => break,
            };
            match msg {
                Ok(Some(info)) => broker.receive(info),
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("plugin broker stream ended: {e}");
                    break;
                }
            }
        }
        broker.detach(&tx);
    });
}

/// Opens `GRPCStdio/StreamStdio` and copies each chunk to the sinks verbatim until the plugin or
/// the client goes away.
pub(super) fn open_stdio_stream(
    channel: &Channel,
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    closed: &CancellationToken,
    limit: usize,
) {
    let mut client = GrpcStdioClient::new(channel.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let closed = closed.clone();
    let mut stdout = stdout;
    let mut stderr = stderr;
    tokio::spawn(async move {
        let call = tokio::select! {
            r = client.stream_stdio(()) => r,
            _ = closed.cancelled() => return,
        };
        let mut stream = match call {
            Ok(resp) => resp.into_inner(),
            Err(e) => {
                tracing::debug!("plugin stdio stream unavailable: {e}");
                return;
            }
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = closed.cancelled() => return,
            };
            match msg {
                Ok(Some(data)) => {
                    let sink = match StdioChannel::try_from(data.channel) {
                        Ok(StdioChannel::Stdout) => stdout.as_mut(),
                        Ok(StdioChannel::Stderr) => stderr.as_mut(),
                        _ => {
                            tracing::warn!(channel = data.channel, "unknown channel, dropping");
                            continue;
                        }
                    };
                    if let Some(sink) = sink {
                        let _ = sink.write_all(&data.data);
                        let _ = sink.flush();
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    use tonic::Code::*;
                    match e.code() {
                        Unavailable | Cancelled | Unimplemented => {
                            tracing::debug!("plugin stdio stream ended: {e}")
                        }
                        _ => tracing::error!("plugin stdio stream failed: {e}"),
                    }
                    return;
                }
            }
        }
    });
}

/// Reads the first stdout line (at most 64 KiB) for the handshake, then drains the rest.
pub(super) async fn read_stdout(
    stdout: Option<tokio::process::ChildStdout>,
    line_tx: tokio::sync::oneshot::Sender<Result<String, ClientError>>,
) {
    let Some(stdout) = stdout else {
        let _ = line_tx.send(Err(ClientError::NoHandshake));
        return;
    };
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    let first = match read_limited_line(&mut reader, DEFAULT_LINE_LIMIT, &mut buf).await {
        Ok(Piece::Line) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Ok(Piece::Fragment) => Err(ClientError::LineTooLong {
            limit: DEFAULT_LINE_LIMIT,
        }),
        Ok(Piece::Eof) if !buf.is_empty() => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Ok(Piece::Eof) | Err(_) => Err(ClientError::NoHandshake),
    };
    let _ = line_tx.send(first);
    // Go hosts discard every later stdout line; keep reading so the plugin never blocks.
    let mut sink = [0u8; 8192];
    while let Ok(n) = reader.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// What one bounded line read produced.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// A whole line (without its `\n`).
    Line,
    /// `limit` bytes of a longer line.
    Fragment,
    /// End of input (with whatever partial line was left).
    Eof,
}

async fn read_limited_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<Piece> {
    out.clear();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Piece::Eof);
        }
        let room = limit - out.len();
        let window = &buf[..buf.len().min(room)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(&window[..i]);
            r.consume(i + 1);
            return Ok(Piece::Line);
        }
        let n = window.len();
        out.extend_from_slice(window);
        r.consume(n);
        if out.len() >= limit {
            return Ok(Piece::Fragment);
        }
    }
}

/// Reads the plugin's stderr line by line: a raw copy to `raw`, and each line re-emitted as a
/// `tracing` event with go-plugin's rules (§13); over-long lines are split and logged at Debug.
pub(super) fn spawn_stderr_logger(
    stderr: Option<tokio::process::ChildStderr>,
    raw: Option<Sink>,
    name: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(stderr) = stderr else { return };
        let raw: Option<SharedSink> = raw.map(|s| Arc::new(Mutex::new(s)));
        let mut reader = BufReader::new(stderr);
        let mut parser = StderrLogParser::new();
        let mut buf = Vec::new();
        let mut in_long_line = false;
        loop {
            let piece = match read_limited_line(&mut reader, DEFAULT_LINE_LIMIT, &mut buf).await {
                Ok(p) => p,
                Err(_) => break,
            };
            if piece == Piece::Eof && buf.is_empty() {
                break;
            }
            if let Some(raw) = &raw {
                let mut w = raw.lock().unwrap_or_else(|p| p.into_inner());
                let _ = w.write_all(&buf);
                if piece != Piece::Fragment {
                    let _ = w.write_all(b"\n");
                }
            }
            let text = String::from_utf8_lossy(&buf);
            if piece == Piece::Fragment || in_long_line {
                hclog::emit(&LogLine::fragment(&text), &name);
            } else {
                hclog::emit(&parser.parse(&text), &name);
            }
            in_long_line = piece == Piece::Fragment;
            if piece == Piece::Eof {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::BufReader;

    async fn pieces(input: &[u8], limit: usize) -> Vec<(Piece, Vec<u8>)> {
        let mut r = BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            let p = read_limited_line(&mut r, limit, &mut buf).await.unwrap();
            let done = p == Piece::Eof;
            if !(done && buf.is_empty()) {
                out.push((p, buf.clone()));
            }
            if done {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_over_long_lines_without_losing_bytes() {
        let got = pieces(b"short\n0123456789abc\ntail", 8).await;
        assert_eq!(
            got,
            vec![
                (Piece::Line, b"short".to_vec()),
                (Piece::Fragment, b"01234567".to_vec()),
                (Piece::Line, b"89abc".to_vec()),
                (Piece::Eof, b"tail".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn exact_limit_line_is_a_fragment_then_an_empty_line() {
        let got = pieces(b"01234567\nx\n", 8).await;
        assert_eq!(got[0], (Piece::Fragment, b"01234567".to_vec()));
        assert_eq!(got[1], (Piece::Line, b"".to_vec()));
        assert_eq!(got[2], (Piece::Line, b"x".to_vec()));
    }
}
