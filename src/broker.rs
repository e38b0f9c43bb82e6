//! go-plugin's GRPCBroker, in direct mode (a listener per brokered ID, announced by `ConnInfo`;
//! spec go-plugin-wire.md §8) and in multiplexed mode (one yamux session, knock/ack; §9).
//!
//! Both roles share this core: whoever accepts allocates an ID, whoever dials waits for the
//! announcement (direct) or the knock ack (multiplexed), at most 5 s each, as Go does. The plugin
//! role serves `plugin.GRPCBroker/StartStream`; the host role ([`Client`](crate::Client)) opens
//! that stream right after connecting. Authors get the broker of their side from
//! [`Client::broker`](crate::Client::broker) or [`Services::broker`](crate::Services::broker):
//!
//! ```no_run
//! # async fn demo(client: goplugin::Client) -> Result<(), goplugin::BrokerError> {
//! use tonic::service::Routes;
//!
//! let broker = client.broker();
//! // Serve a service of the host's on a fresh ID and tell the plugin that ID in an RPC of your
//! // contract (go-plugin's bidirectional example passes it in a request field).
//! let id = broker.next_id();
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! broker.accept_and_serve(id, Routes::new(health)).await?;
//! // Dial a server the plugin announced on an ID it handed over.
//! let channel = broker.dial(7).await?;
//! # let _ = channel;
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::handshake::Network;
use crate::mux::{MuxSession, Role};
use crate::proto::plugin::conn_info::Knock;
use crate::proto::plugin::grpc_broker_server::GrpcBroker;
use crate::proto::plugin::ConnInfo;
use crate::tls::MtlsConfig;
use crate::transport::{self, Conn, ListenConfig, TransportError};

/// How long a dialer waits for an announcement or a knock ack, and how long an unclaimed
/// announcement is kept (Go's hard-coded 5 s windows, spec §8 and pitfall P11).
pub const BROKER_WINDOW: Duration = Duration::from_secs(5);

/// Errors of brokered connections; each names the broker ID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No `ConnInfo` for the ID arrived within 5 s (Go's text).
    #[error("timeout waiting for connection info for broker id {id}")]
    InfoTimeout {
        /// Broker ID.
        id: u32,
    },
    /// No knock ack arrived within 5 s (Go's text).
    #[error("timeout waiting for multiplexing knock handshake on id {id}")]
    KnockTimeout {
        /// Broker ID.
        id: u32,
    },
    /// The acceptor answered the knock with an error.
    #[error("knock on broker id {id} refused by peer: {reason}")]
    KnockRefused {
        /// Broker ID.
        id: u32,
        /// The peer's `error` text.
        reason: String,
    },
    /// An announcement named a network we do not know.
    #[error("broker id {id} announced unknown network {network:?}")]
    BadNetwork {
        /// Broker ID.
        id: u32,
        /// What was announced.
        network: String,
    },
    /// The broker was closed (server shut down or stream ended for good).
    #[error("broker closed")]
    Closed,
    /// Multiplexed mode without a yamux session.
    #[error("multiplexed broker has no yamux session")]
    NoSession,
    /// Opening a listener or dialing failed.
    #[error("broker id {id}: {source}")]
    Transport {
        /// Broker ID.
        id: u32,
        /// What failed.
        source: TransportError,
    },
    /// Opening a yamux stream failed.
    #[error("broker id {id}: opening a multiplexed stream failed: {source}")]
    Stream {
        /// Broker ID.
        id: u32,
        /// What failed.
        source: std::io::Error,
    },
    /// The TLS handshake of a brokered connection failed.
    #[error("broker id {id}: TLS handshake failed: {source}")]
    Tls {
        /// Broker ID.
        id: u32,
        /// What failed.
        source: std::io::Error,
    },
    /// gRPC could not run over the connection.
    #[error("broker id {id}: gRPC connection failed: {source}")]
    Connect {
        /// Broker ID.
        id: u32,
        /// What failed.
        source: tonic::transport::Error,
    },
}

/// Which side of go-plugin this broker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(hidden)] // plumbing the crate's integration tests use; not API
pub enum Side {
    /// The plugin (serves `StartStream`, yamux server).
    Plugin,
    /// The host (opens `StartStream`, yamux client).
    Host,
}

enum Slot {
    Waiting(oneshot::Sender<ConnInfo>),
    Ready(ConnInfo, Instant),
}

#[derive(Default)]
struct MuxState {
    session: OnceLock<MuxSession>,
    listeners: Mutex<HashMap<u32, mpsc::UnboundedSender<Conn>>>,
    armed: Mutex<VecDeque<u32>>,
    knock: tokio::sync::Mutex<()>,
}

struct Inner {
    side: Side,
    next_id: AtomicU32,
    out: watch::Sender<Option<mpsc::Sender<ConnInfo>>>,
    pending: Mutex<HashMap<u32, Slot>>,
    listen: ListenConfig,
    mux: Option<MuxState>,
    tls: Option<MtlsConfig>,
    closed: CancellationToken,
}

/// A go-plugin broker: lets either side serve extra gRPC servers the other side dials by ID.
/// Cheap to clone; all clones share one broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("side", &self.inner.side)
            .field("multiplexed", &self.inner.mux.is_some())
            .field("tls", &self.inner.tls.is_some())
            .finish()
    }
}

impl Broker {
    /// A broker for `side`; `multiplexed` selects §9 over §8; `closed` ends it.
    #[doc(hidden)] // plumbing the crate's integration tests use; not API
    pub fn new(
        side: Side,
        listen: ListenConfig,
        tls: Option<MtlsConfig>,
        multiplexed: bool,
        closed: CancellationToken,
    ) -> Broker {
        let (out, _) = watch::channel(None);
        Broker {
            inner: Arc::new(Inner {
                side,
                next_id: AtomicU32::new(0),
                out,
                pending: Mutex::new(HashMap::new()),
                listen,
                mux: multiplexed.then(MuxState::default),
                tls,
                closed,
            }),
        }
    }

    /// The next free ID of this side (1, 2, 3, ...), as Go's `NextId`.
    pub fn next_id(&self) -> u32 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether brokered connections go through one yamux session.
    pub fn is_multiplexed(&self) -> bool {
        self.inner.mux.is_some()
    }

    /// Whether [`Broker::close`] was called (the client is going away).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Closes the broker: pending dials fail, brokered servers stop.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Accepts connections for `id` and serves `routes` on them until the broker closes. Returns
    /// once the listener exists and has been announced (direct) or registered (multiplexed).
    pub async fn accept_and_serve(&self, id: u32, routes: Routes) -> Result<(), BrokerError> {
        let incoming = self.accept(id).await?;
        let closed = self.inner.closed.clone();
        tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, closed.cancelled_owned())
                .await;
            if let Err(e) = res {
                tracing::debug!(id, "brokered server ended: {e}");
            }
        });
        Ok(())
    }

    /// Accepts connections for `id`: a stream of ready (TLS-terminated if AutoMTLS) connections.
    pub async fn accept(
        &self,
        id: u32,
    ) -> Result<impl Stream<Item = Result<Conn, std::io::Error>> + Send + 'static, BrokerError>
    {
        let conns: Pin<Box<dyn Stream<Item = Conn> + Send>> = match &self.inner.mux {
            Some(mux) => {
                let (tx, rx) = mpsc::unbounded_channel();
                lock(&mux.listeners).insert(id, tx);
                Box::pin(UnboundedReceiverStream::new(rx))
            }
            None => {
                let listener = self
                    .inner
                    .listen
                    .listen()
                    .map_err(|source| BrokerError::Transport { id, source })?;
                let info = ConnInfo {
                    service_id: id,
                    network: listener.network().as_str().to_string(),
                    address: listener.address(),
                    knock: None,
                };
                self.send(info).await?;
                Box::pin(accept_loop(listener, self.inner.closed.clone()))
            }
        };
        Ok(crate::tls_accept::tls_incoming(
            conns,
            self.inner.tls.clone(),
        ))
    }

    /// Dials the peer's brokered server `id` and returns a gRPC channel to it.
    pub async fn dial(&self, id: u32) -> Result<Channel, BrokerError> {
        let conn = match &self.inner.mux {
            Some(mux) => self.dial_mux(mux, id).await?,
            None => {
                let info = self
                    .wait_info(id)
                    .await?
                    .ok_or(BrokerError::InfoTimeout { id })?;
                let network =
                    Network::parse(&info.network).ok_or_else(|| BrokerError::BadNetwork {
                        id,
                        network: info.network.clone(),
                    })?;
                transport::dial(network, &info.address)
                    .await
                    .map_err(|source| BrokerError::Transport { id, source })?
            }
        };
        channel_over(conn, self.inner.tls.as_ref(), id).await
    }

    async fn dial_mux(&self, mux: &MuxState, id: u32) -> Result<Conn, BrokerError> {
        // Knocks are sequential per side (spec §9.3).
        let _turn = mux.knock.lock().await;
        let session = mux.session.get().ok_or(BrokerError::NoSession)?.clone();
        self.send(ConnInfo {
            service_id: id,
            knock: Some(Knock {
                knock: true,
                ack: false,
                error: String::new(),
            }),
            ..Default::default()
        })
        .await?;
        let ack = self
            .wait_info(id)
            .await?
            .ok_or(BrokerError::KnockTimeout { id })?;
        match ack.knock {
            Some(k) if k.knock && k.ack && k.error.is_empty() => {}
            Some(k) if !k.error.is_empty() => {
                return Err(BrokerError::KnockRefused {
                    id,
                    reason: k.error,
                })
            }
            _ => {
                return Err(BrokerError::KnockRefused {
                    id,
                    reason: "answer was not a knock ack".into(),
                })
            }
        }
        session
            .open()
            .await
            .map_err(|source| BrokerError::Stream { id, source })
    }

    /// Waits up to 5 s for the `ConnInfo` of `id`; `Ok(None)` on timeout.
    pub(crate) async fn wait_info(&self, id: u32) -> Result<Option<ConnInfo>, BrokerError> {
        let rx = {
            let mut pending = lock(&self.inner.pending);
            match pending.remove(&id) {
                Some(Slot::Ready(info, at)) if at.elapsed() < BROKER_WINDOW => {
                    return Ok(Some(info))
                }
                _ => {
                    let (tx, rx) = oneshot::channel();
                    pending.insert(id, Slot::Waiting(tx));
                    rx
                }
            }
        };
        tokio::select! {
            _ = self.inner.closed.cancelled() => Err(BrokerError::Closed),
            r = tokio::time::timeout(BROKER_WINDOW, rx) => {
                match r {
                    Ok(Ok(info)) => Ok(Some(info)),
                    _ => {
                        let mut pending = lock(&self.inner.pending);
                        if matches!(pending.get(&id), Some(Slot::Waiting(_))) {
                            pending.remove(&id);
                        }
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Sends on the broker stream, waiting until one is attached (as Go's broker does).
    async fn send(&self, info: ConnInfo) -> Result<(), BrokerError> {
        let mut rx = self.inner.out.subscribe();
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(tx) = current {
                if tx.send(info.clone()).await.is_ok() {
                    return Ok(());
                }
            }
            tokio::select! {
                _ = self.inner.closed.cancelled() => return Err(BrokerError::Closed),
                r = rx.changed() => if r.is_err() { return Err(BrokerError::Closed) },
            }
        }
    }

    /// Makes `tx` the outbound half of the broker stream (a new host replaces the old one).
    #[doc(hidden)] // plumbing the crate's integration tests use; not API
    pub fn attach(&self, tx: mpsc::Sender<ConnInfo>) {
        self.inner.out.send_replace(Some(tx));
    }

    /// Forgets `tx` if it is still the outbound half (its stream has ended).
    #[doc(hidden)] // plumbing the crate's integration tests use; not API
    pub fn detach(&self, tx: &mpsc::Sender<ConnInfo>) {
        self.inner.out.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| c.same_channel(tx)) {
                *current = None;
                true
            } else {
                false
            }
        });
    }

    /// Handles one message read from the broker stream.
    #[doc(hidden)] // plumbing the crate's integration tests use; not API
    pub fn receive(&self, info: ConnInfo) {
        let id = info.service_id;
        if matches!(&info.knock, Some(k) if k.knock && !k.ack) {
            self.answer_knock(id);
            return;
        }
        let mut pending = lock(&self.inner.pending);
        match pending.remove(&id) {
            Some(Slot::Waiting(tx)) => {
                if let Err(info) = tx.send(info) {
                    pending.insert(id, Slot::Ready(info, Instant::now()));
                }
            }
            // A duplicate for an ID nobody claimed yet is dropped, as in Go.
            Some(ready @ Slot::Ready(..)) => {
                pending.insert(id, ready);
            }
            None => {
                let at = Instant::now();
                pending.insert(id, Slot::Ready(info, at));
                let inner = Arc::downgrade(&self.inner);
                tokio::spawn(async move {
                    tokio::time::sleep(BROKER_WINDOW).await;
                    if let Some(inner) = inner.upgrade() {
                        let mut pending = lock(&inner.pending);
                        if matches!(pending.get(&id), Some(Slot::Ready(_, t)) if *t == at) {
                            pending.remove(&id);
                        }
                    }
                });
            }
        }
    }

    /// Arms listener `id` for the next inbound stream and acks, or acks with an error when no
    /// listener exists (a Go plugin would send nothing and let the dialer time out).
    fn answer_knock(&self, id: u32) {
        let error = match &self.inner.mux {
            Some(mux) if lock(&mux.listeners).contains_key(&id) => {
                lock(&mux.armed).push_back(id);
                String::new()
            }
            Some(_) => format!("no listener for id {id}"),
            None => "broker is not multiplexed".to_string(),
        };
        let ack = ConnInfo {
            service_id: id,
            knock: Some(Knock {
                knock: true,
                ack: true,
                error,
            }),
            ..Default::default()
        };
        let broker = self.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.send(ack).await {
                tracing::debug!(id, "cannot send knock ack: {e}");
            }
        });
    }

    /// Runs the yamux session over `conn` (multiplexed mode only). Inbound streams go to an
    /// armed brokered listener, else to the returned receiver (the plugin's main server); the
    /// host has no main server and drops unclaimed streams.
    #[doc(hidden)] // plumbing the crate's integration tests use; not API
    pub fn start_mux(&self, conn: Conn) -> Result<mpsc::UnboundedReceiver<Conn>, BrokerError> {
        let mux = self.inner.mux.as_ref().ok_or(BrokerError::NoSession)?;
        let role = match self.inner.side {
            Side::Plugin => Role::Server,
            Side::Host => Role::Client,
        };
        let (session, mut inbound) = MuxSession::start(conn, role);
        if mux.session.set(session.clone()).is_err() {
            session.close();
            return Err(BrokerError::NoSession);
        }
        let (main_tx, main_rx) = mpsc::unbounded_channel();
        let broker = self.clone();
        let closed = self.inner.closed.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = closed.cancelled() => break,
                    c = inbound.recv() => match c { Some(c) => c, None => break },
                };
                broker.route_inbound(conn, &main_tx);
            }
            session.close();
        });
        Ok(main_rx)
    }

    fn route_inbound(&self, conn: Conn, main: &mpsc::UnboundedSender<Conn>) {
        let Some(mux) = &self.inner.mux else { return };
        let armed = lock(&mux.armed).pop_front();
        match armed {
            Some(id) => match lock(&mux.listeners).get(&id) {
                Some(tx) => {
                    let _ = tx.send(conn);
                }
                None => tracing::debug!(id, "armed broker listener vanished; dropping stream"),
            },
            None if self.inner.side == Side::Plugin => {
                let _ = main.send(conn);
            }
            None => tracing::debug!("unclaimed inbound stream dropped"),
        }
    }

    /// The multiplexed session, once established.
    #[doc(hidden)] // plumbing the crate's integration tests use; not API
    pub fn mux_session(&self) -> Option<MuxSession> {
        self.inner.mux.as_ref()?.session.get().cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(
    listener: transport::Listener,
    closed: CancellationToken,
) -> impl Stream<Item = Conn> + Send {
    futures::stream::unfold((listener, closed), |(listener, closed)| async move {
        loop {
            tokio::select! {
                _ = closed.cancelled() => return None,
                r = listener.accept() => match r {
                    Ok(conn) => return Some((conn, (listener, closed))),
                    Err(e) => {
                        tracing::debug!("accept on {} failed: {e}", listener.address());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    })
}

/// Runs a gRPC client connection over one already-open connection (TLS first, if configured).
async fn channel_over(
    conn: Conn,
    tls: Option<&MtlsConfig>,
    id: u32,
) -> Result<Channel, BrokerError> {
    let conn = match tls {
        Some(tls) => tls
            .connect(conn)
            .await
            .map_err(|source| BrokerError::Tls { id, source })?,
        None => conn,
    };
    transport::grpc_channel(conn)
        .await
        .map_err(|source| BrokerError::Connect { id, source })
}

/// `plugin.GRPCBroker` for the plugin role: each `StartStream` call becomes the broker stream.
#[derive(Clone, Debug)]
pub(crate) struct BrokerService {
    broker: Broker,
}

impl BrokerService {
    /// Serves `broker`'s stream.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

type ConnInfoStream = Pin<Box<dyn Stream<Item = Result<ConnInfo, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcBroker for BrokerService {
    type StartStreamStream = ConnInfoStream;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        self.broker.attach(tx.clone());
        let broker = self.broker.clone();
        let closed = self.broker.inner.closed.clone();
        // The stream ends both ways when the host stops sending, sends garbage, or we close.
        let done = closed.child_token();
        let stream_done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.cancelled() => break,
                    m = inbound.message() => match m {
                        Ok(Some(info)) => broker.receive(info),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!("broker stream ended: {e}");
                            break;
                        }
                    }
                }
            }
            broker.detach(&tx);
            stream_done.cancel();
        });
        let out = ReceiverStream::new(rx)
            .map(Ok)
            .take_until(done.cancelled_owned());
        Ok(Response::new(Box::pin(out)))
    }
}
