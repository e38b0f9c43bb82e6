//! One yamux session over one raw connection, as go-plugin's multiplexed broker uses it (spec
//! go-plugin-wire.md §9.2). The plugin is the yamux server, the host the client.
//!
//! yamux 0.14 has no control handle, so a single driver task owns the session: it keeps polling
//! for inbound streams and opens outbound ones on request. Two interop fixes from DESIGN.md: the
//! connection receive window is capped (else stream windows outgrow the crate's frame limit and Go's
//! large data frames kill the session), and every new stream gets an empty write at once, which
//! makes the crate send SYN/ACK immediately (hashicorp/yamux aborts the session when a stream
//! open is not acknowledged in time).

use std::future::poll_fn;
use std::io;
use std::task::Poll;

use futures::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

use crate::transport::Conn;

/// Streams a session may hold at once; with 256 KiB each this is the receive-window cap.
const MAX_STREAMS: usize = 512;
const STREAM_WINDOW: usize = 256 * 1024;

type OpenRequest = oneshot::Sender<io::Result<Conn>>;

/// Which end of the session we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host: opens odd-numbered streams.
    Client,
    /// The plugin: opens even-numbered streams.
    Server,
}

/// A handle to a running session: opens outbound streams; cloning shares the session.
#[derive(Clone, Debug)]
pub struct MuxSession {
    open_tx: mpsc::Sender<OpenRequest>,
    closed: CancellationToken,
    failure: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl MuxSession {
    /// Starts the driver over `conn`. Inbound streams arrive on the returned receiver, in order.
    pub fn start(conn: Conn, role: Role) -> (MuxSession, mpsc::UnboundedReceiver<Conn>) {
        let mut cfg = yamux::Config::default();
        cfg.set_max_num_streams(MAX_STREAMS);
        cfg.set_max_connection_receive_window(Some(MAX_STREAMS * STREAM_WINDOW));
        let mode = match role {
            Role::Client => yamux::Mode::Client,
            Role::Server => yamux::Mode::Server,
        };
        let connection = yamux::Connection::new(conn.compat(), cfg, mode);
        let (open_tx, open_rx) = mpsc::channel(16);
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let closed = CancellationToken::new();
        let failure = std::sync::Arc::new(std::sync::OnceLock::new());
        tokio::spawn(drive(
            connection,
            open_rx,
            in_tx,
            closed.clone(),
            failure.clone(),
        ));
        (
            MuxSession {
                open_tx,
                closed,
                failure,
            },
            in_rx,
        )
    }

    /// Opens a new stream to the peer.
    pub async fn open(&self) -> io::Result<Conn> {
        let (tx, rx) = oneshot::channel();
        self.open_tx
            .send(tx)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "yamux session closed"))?;
        rx.await
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "yamux session closed"))?
    }

    /// Resolves when the session has ended (peer gone, error, or [`MuxSession::close`]).
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Ends the session.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Why the session ended, when it ended on an error (garbage, a protocol violation, an I/O
    /// failure) rather than by a close from either side.
    pub fn failure(&self) -> Option<String> {
        self.failure.get().cloned()
    }
}

enum Event {
    Outbound(yamux::Result<yamux::Stream>),
    Inbound(Option<yamux::Result<yamux::Stream>>),
    Closed,
}

async fn drive<T>(
    mut connection: yamux::Connection<T>,
    mut open_rx: mpsc::Receiver<OpenRequest>,
    in_tx: mpsc::UnboundedSender<Conn>,
    closed: CancellationToken,
    failure: std::sync::Arc<std::sync::OnceLock<String>>,
) where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
{
    let mut pending: Option<OpenRequest> = None;
    loop {
        let event = poll_fn(|cx| {
            if closed.is_cancelled() {
                return Poll::Ready(Event::Closed);
            }
            if pending.is_none() {
                if let Poll::Ready(Some(req)) = open_rx.poll_recv(cx) {
                    pending = Some(req);
                }
            }
            if pending.is_some() {
                if let Poll::Ready(res) = connection.poll_new_outbound(cx) {
                    return Poll::Ready(Event::Outbound(res));
                }
            }
            if let Poll::Ready(next) = connection.poll_next_inbound(cx) {
                return Poll::Ready(Event::Inbound(next));
            }
            // Wake on cancellation too.
            let cancelled = std::pin::pin!(closed.cancelled());
            match cancelled.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Event::Closed),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match event {
            Event::Outbound(res) => {
                if let Some(reply) = pending.take() {
                    match res {
                        Ok(stream) => {
                            tokio::spawn(async move {
                                let _ = reply.send(announce(stream).await);
                            });
                        }
                        Err(e) => {
                            let _ = reply.send(Err(io::Error::other(e)));
                        }
                    }
                }
            }
            Event::Inbound(Some(Ok(stream))) => {
                let tx = in_tx.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = announce(stream).await {
                        let _ = tx.send(conn);
                    }
                });
            }
            Event::Inbound(Some(Err(e))) => {
                tracing::debug!("yamux session ended: {e}");
                let _ = failure.set(e.to_string());
                break;
            }
            Event::Inbound(None) | Event::Closed => break,
        }
    }
    closed.cancel();
    let _ = poll_fn(|cx| connection.poll_close(cx)).await;
}

use std::future::Future;

/// Sends SYN/ACK now with an empty write (see the module comment), then boxes the stream.
async fn announce(mut stream: yamux::Stream) -> io::Result<Conn> {
    #[allow(clippy::unused_io_amount)]
    stream.write(&[]).await?;
    Ok(Conn::new(stream.compat()))
}
