//! The plugin role (spec go-plugin-wire.md §2-§12, checklist §18): check the cookie, negotiate
//! the application version, listen, set up AutoMTLS, print the handshake line and serve the
//! application's tonic services next to go-plugin's internal ones until the host says stop.
//!
//! ```no_run
//! # use goplugin::{HandshakeConfig, Server};
//! # async fn f() -> Result<(), goplugin::ServeError> {
//! Server::new(HandshakeConfig::new("BASIC_PLUGIN", "hello"))
//!     .services(|s| {
//!         // s.add_service(KvServer::new(MyKv));
//!         let _broker = s.broker();
//!     })
//!     .serve()
//!     .await
//! # }
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};

use crate::broker::{Broker, BrokerService, Side};
use crate::controller::ControllerService;
use crate::handshake::{env, HandshakeConfig, HandshakeLine, Protocol, CORE_PROTOCOL_VERSION};
use crate::negotiate::{negotiate, parse_go_bool, HostVersions};
use crate::proto::plugin::grpc_broker_server::GrpcBrokerServer;
use crate::proto::plugin::grpc_controller_server::GrpcControllerServer;
use crate::proto::plugin::grpc_stdio_server::GrpcStdioServer;
use crate::stdio::{self, StdioService};
use crate::tls::{self, Identity, MtlsConfig, PinnedPeers};
use crate::tls_accept::tls_incoming;
use crate::transport::{Conn, ListenConfig, Listener, TransportError};

/// How long the plugin waits for the host's one raw connection in multiplexed mode (§9.2).
const MUX_CONNECT_WINDOW: Duration = Duration::from_secs(5);

/// Go's text for a plugin started without its cookie (§2.3).
pub const COOKIE_MISMATCH_TEXT: &str =
    "This binary is a plugin. These are not meant to be executed directly.\n\
Please execute the program that consumes these plugins, which will\n\
load any plugins automatically\n";

/// Go's text for a plugin whose own handshake config lacks the cookie (§2.3).
pub const COOKIE_MISCONFIGURED_TEXT: &str =
    "Misconfigured ServeConfig given to serve this plugin: no magic cookie\n\
key or value was set. Please notify the plugin author and report\n\
this as a bug.\n";

/// Errors that stop a plugin from serving; each names the setting or value at fault.
///
/// [`ServeError::exit`] ends the process the way a Go plugin's `Serve` does (go-plugin's texts
/// for the cookie errors, exit status 1); [`Server::serve_or_exit`] serves and does that.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The magic cookie variable is missing or has another value: the binary was run by hand,
    /// not by a host (§2.3). [`ServeError::exit`] prints go-plugin's [`COOKIE_MISMATCH_TEXT`].
    #[error("not launched by a plugin host: {key} is unset or not the expected value")]
    NotLaunchedByHost {
        /// The cookie's environment variable.
        key: String,
    },
    /// The plugin's own [`HandshakeConfig`] has an empty cookie key or value (§2.3).
    /// [`ServeError::exit`] prints go-plugin's [`COOKIE_MISCONFIGURED_TEXT`].
    #[error("misconfigured handshake: the magic cookie key {key:?} or its value is empty")]
    CookieMisconfigured {
        /// The configured key (possibly empty).
        key: String,
    },
    /// No service set was registered.
    #[error("no plugin services registered: call Server::services or Server::version")]
    NoServices,
    /// Setting up stdio capture failed.
    #[error(transparent)]
    Stdio(#[from] stdio::StdioError),
    /// Listener settings or binding failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// `PLUGIN_CLIENT_CERT` is not a usable PEM certificate.
    #[error("PLUGIN_CLIENT_CERT is unusable: {0}")]
    ClientCert(tls::TlsError),
    /// Our own AutoMTLS certificate or TLS configuration could not be made.
    #[error("AutoMTLS setup failed: {0}")]
    Tls(tls::TlsError),
    /// Writing the handshake line failed.
    #[error("writing the handshake line to stdout failed: {0}")]
    Handshake(std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// Multiplexed mode: the host's one connection never came, or its yamux session failed.
    #[error("error establishing yamux session: {0}")]
    MuxSession(String),
}

impl ServeError {
    /// Whether the cookie check refused to serve ([`ServeError::NotLaunchedByHost`] or
    /// [`ServeError::CookieMisconfigured`]), the errors a Go plugin answers with a fixed text.
    pub fn is_cookie_error(&self) -> bool {
        matches!(
            self,
            ServeError::NotLaunchedByHost { .. } | ServeError::CookieMisconfigured { .. }
        )
    }

    /// Ends the process as go-plugin's `Serve` would: the cookie errors print go-plugin's exact
    /// texts on the real stderr, any other error prints `error serving plugin: <error>`; the
    /// exit status is 1. For a plugin's `main`, which owns the process; the library itself
    /// never exits.
    pub fn exit(self) -> ! {
        match &self {
            ServeError::NotLaunchedByHost { .. } => stdio::write_stderr(COOKIE_MISMATCH_TEXT),
            ServeError::CookieMisconfigured { .. } => {
                stdio::write_stderr(COOKIE_MISCONFIGURED_TEXT)
            }
            other => stdio::write_stderr(&format!("error serving plugin: {other}\n")),
        }
        std::process::exit(1)
    }
}

type ServiceSet = Box<dyn FnOnce(&mut Services) + Send>;
type OnServing = Box<dyn FnOnce(&HandshakeLine) + Send>;

/// What a service set gets to register its services: the routes and the broker.
pub struct Services {
    routes: RoutesBuilder,
    broker: Broker,
    max_message_size: usize,
}

impl Services {
    /// Registers a tonic service (a generated `...Server::new(impl)`).
    pub fn add_service<S>(&mut self, svc: S) -> &mut Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(svc);
        self
    }

    /// The broker, for services that call back into the host or serve extra servers.
    pub fn broker(&self) -> Broker {
        self.broker.clone()
    }

    /// The server's message-size limit ([`crate::MAX_MESSAGE_SIZE`] unless
    /// [`Server::max_message_size`] changed it), for the generated servers you add: tonic sets
    /// limits per service, so without
    /// `KvServer::new(kv).max_decoding_message_size(s.max_message_size())` a service decodes at
    /// most tonic's 4 MiB where a Go host sends up to 2 GiB.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }
}

/// A go-plugin plugin server. Build it with the handshake and the service sets, then `serve`.
pub struct Server {
    handshake: HandshakeConfig,
    versions: BTreeMap<u32, ServiceSet>,
    listen: Option<ListenConfig>,
    shutdown_grace: Duration,
    on_serving: Option<OnServing>,
    max_message_size: usize,
    tls: Option<MtlsConfig>,
}

impl Server {
    /// A server for `handshake`; add services with [`Server::services`] or [`Server::version`].
    /// Nothing happens to the process until [`Server::serve`].
    pub fn new(handshake: HandshakeConfig) -> Self {
        Self {
            handshake,
            versions: BTreeMap::new(),
            listen: None,
            shutdown_grace: Duration::from_secs(1),
            on_serving: None,
            max_message_size: crate::MAX_MESSAGE_SIZE,
            tls: None,
        }
    }

    /// Serves every connection, brokered ones too, with pre-shared TLS: go-plugin's
    /// `ServeConfig.TLSProvider`. As there, it wins over AutoMTLS (`PLUGIN_CLIENT_CERT` is then
    /// not read) and the handshake line carries no certificate, so the host must already trust
    /// this config's certificate (go-plugin's `ClientConfig.TLSConfig`, here
    /// [`ClientBuilder::tls`](crate::ClientBuilder::tls)). Build it with
    /// [`MtlsConfig::new`](crate::tls::MtlsConfig::new) (pinned peers) or
    /// [`MtlsConfig::from_rustls`](crate::tls::MtlsConfig::from_rustls) (a CA, as Vault's).
    pub fn tls(mut self, tls: MtlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Registers the services of the handshake's own protocol version.
    pub fn services(self, register: impl FnOnce(&mut Services) + Send + 'static) -> Self {
        let v = self.handshake.protocol_version;
        self.version(v, register)
    }

    /// Registers the services of application protocol `version` (Go's `VersionedPlugins`).
    pub fn version(
        mut self,
        version: u32,
        register: impl FnOnce(&mut Services) + Send + 'static,
    ) -> Self {
        self.versions.insert(version, Box::new(register));
        self
    }

    /// Overrides listener settings otherwise read from the environment.
    pub fn listen_config(mut self, cfg: ListenConfig) -> Self {
        self.listen = Some(cfg);
        self
    }

    /// Runs `f` right after the handshake line went out (the host may already be connecting).
    pub fn on_serving(mut self, f: impl FnOnce(&HandshakeLine) + Send + 'static) -> Self {
        self.on_serving = Some(Box::new(f));
        self
    }

    /// The largest message the internal services send and accept, and what
    /// [`Services::max_message_size`] hands to yours; [`crate::MAX_MESSAGE_SIZE`] (2^31-1, what a
    /// Go host sends and accepts) by default. A Go plugin server keeps grpc-go's 4 MiB receive
    /// limit (spec go-plugin-wire.md P19); ours accepts what a Go host may send.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// How long in-flight RPCs may run after `Shutdown` before the server stops anyway.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Serves until the host calls `GRPCController.Shutdown`. First checks the magic cookie
    /// ([`ServeError::NotLaunchedByHost`] when it is missing or wrong), then captures fds 1
    /// and 2 (see [`crate::stdio::capture`]) so nothing printed from here on can come before
    /// the handshake line, as go-plugin redirects `os.Stdout`/`os.Stderr` in `Serve`. Never
    /// exits the process: see [`Server::serve_or_exit`] for go-plugin's behaviour.
    pub async fn serve(mut self) -> Result<(), ServeError> {
        check_cookie(&self.handshake)?;
        stdio::capture()?;
        ignore_sigint();
        if self.versions.is_empty() {
            return Err(ServeError::NoServices);
        }
        let host = HostVersions::parse(&std::env::var(env::PROTOCOL_VERSIONS).unwrap_or_default());
        for bad in &host.invalid {
            // Go prints this without a newline; ours ends the line so the next log line survives.
            stdio::write_stderr(&format!("server sent invalid plugin version {bad:?}\n"));
        }
        let offered = self.versions.keys().copied().collect();
        let version = negotiate(&offered, &host).ok_or(ServeError::NoServices)?;
        let register = self
            .versions
            .remove(&version)
            .ok_or(ServeError::NoServices)?;

        // go-plugin: a TLSProvider's config first, else AutoMTLS if the host asked for it.
        let (tls, server_cert) = match self.tls.take() {
            Some(config) => (Some(config), None),
            None => match auto_mtls()? {
                Some((identity, config)) => (Some(config), Some(identity.cert_base64())),
                None => (None, None),
            },
        };
        let mux_env = std::env::var(env::MULTIPLEX_GRPC).unwrap_or_default();
        let multiplexed = parse_go_bool(&mux_env) == Some(true);
        let listen = match self.listen.take() {
            Some(cfg) => cfg,
            None => ListenConfig::from_env()?,
        };
        let listener = listen.listen()?;

        let shutdown = CancellationToken::new();
        let broker = Broker::new(
            Side::Plugin,
            listen,
            tls.clone(),
            multiplexed,
            shutdown.clone(),
        );
        let routes = build_routes(register, &broker, &shutdown, self.max_message_size).await;

        let line = HandshakeLine {
            core_version: CORE_PROTOCOL_VERSION,
            app_version: version,
            network: listener.network(),
            address: listener.address(),
            protocol: Protocol::Grpc,
            server_cert,
            multiplex: (!mux_env.is_empty()).then_some(true),
        };
        let (incoming, accepting) = incoming(listener, &broker, multiplexed, &shutdown);
        let incoming = tls_incoming(incoming, tls);
        if let Err(e) = stdio::write_handshake(&line.to_string()) {
            shutdown.cancel();
            return Err(ServeError::Handshake(e));
        }
        tracing::debug!(version, address = %line.address, "plugin serving");
        // From the Shutdown on, captured stdout nobody will read is dropped, not waited for: a
        // handler stuck writing fd 1 then finishes within the grace period.
        let serving = stdio::serving();
        let released = shutdown.clone();
        tokio::spawn(async move {
            released.cancelled().await;
            drop(serving);
        });
        if let Some(f) = self.on_serving.take() {
            f(&line);
        }
        let result = run(routes, incoming, shutdown.clone(), self.shutdown_grace).await;
        shutdown.cancel();
        // The accept task owns the listener: once it is done the socket file is gone.
        match tokio::time::timeout(Duration::from_millis(500), accepting).await {
            Ok(Ok(Some(e))) => Err(e),
            _ => result,
        }
    }

    /// [`Server::serve`], and on an error [`ServeError::exit`]: go-plugin's texts for a missing
    /// or wrong cookie and a misconfigured handshake, exit status 1, as a Go plugin's `Serve`.
    /// Returns when the host has shut the plugin down.
    pub async fn serve_or_exit(self) {
        if let Err(e) = self.serve().await {
            e.exit()
        }
    }
}

fn check_cookie(h: &HandshakeConfig) -> Result<(), ServeError> {
    if h.magic_cookie_key.is_empty() || h.magic_cookie_value.is_empty() {
        return Err(ServeError::CookieMisconfigured {
            key: h.magic_cookie_key.clone(),
        });
    }
    if std::env::var_os(&h.magic_cookie_key).as_deref()
        != Some(std::ffi::OsStr::new(&h.magic_cookie_value))
    {
        return Err(ServeError::NotLaunchedByHost {
            key: h.magic_cookie_key.clone(),
        });
    }
    Ok(())
}

/// Go plugins ignore SIGINT so that a Ctrl-C in the host's terminal does not kill them (§2.3).
#[cfg(unix)]
fn ignore_sigint() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        Ok(mut sig) => {
            tokio::spawn(async move {
                let mut count = 0u64;
                while sig.recv().await.is_some() {
                    count += 1;
                    tracing::trace!(count, "plugin received interrupt signal, ignoring");
                }
            });
        }
        Err(e) => tracing::debug!("cannot install SIGINT handler: {e}"),
    }
}

/// Go plugins ignore Ctrl-C (§2.3); a registered handler keeps Windows from ending the process.
#[cfg(not(unix))]
fn ignore_sigint() {
    tokio::spawn(async {
        while tokio::signal::ctrl_c().await.is_ok() {
            tracing::trace!("plugin received interrupt signal, ignoring");
        }
    });
}

/// AutoMTLS when the host sent `PLUGIN_CLIENT_CERT` (§6): our identity and the TLS configs.
fn auto_mtls() -> Result<Option<(Identity, MtlsConfig)>, ServeError> {
    let pem = match std::env::var(env::CLIENT_CERT) {
        Ok(p) if !p.is_empty() => p,
        _ => return Ok(None),
    };
    let peers = PinnedPeers::from_pem(&pem).map_err(ServeError::ClientCert)?;
    let identity = Identity::generate().map_err(ServeError::Tls)?;
    let config = MtlsConfig::new(&identity, peers).map_err(ServeError::Tls)?;
    Ok(Some((identity, config)))
}

async fn build_routes(
    register: ServiceSet,
    broker: &Broker,
    shutdown: &CancellationToken,
    limit: usize,
) -> Routes {
    // The reporter starts with "" SERVING; go-plugin hosts check "plugin".
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let mut services = Services {
        routes: RoutesBuilder::default(),
        broker: broker.clone(),
        max_message_size: limit,
    };
    register(&mut services);
    services
        .add_service(
            health_service
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            GrpcControllerServer::new(ControllerService::new(shutdown.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            GrpcStdioServer::new(StdioService::new(shutdown.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            GrpcBrokerServer::new(BrokerService::new(broker.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        health
            .set_service_status("plugin", tonic_health::ServingStatus::NotServing)
            .await;
    });
    services.routes.routes()
}

/// Connections for the main server: every accepted one (direct), or the yamux streams no
/// brokered listener claimed (multiplexed: one raw connection for life, §9.2).
fn incoming(
    listener: Listener,
    broker: &Broker,
    multiplexed: bool,
    shutdown: &CancellationToken,
) -> (
    impl Stream<Item = Conn> + Send + 'static,
    tokio::task::JoinHandle<Option<ServeError>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = shutdown.clone();
    let broker = broker.clone();
    let task = tokio::spawn(async move {
        if multiplexed {
            serve_mux(listener, broker, tx, shutdown).await.err()
        } else {
            serve_direct(listener, tx, shutdown).await;
            None
        }
    });
    (UnboundedReceiverStream::new(rx), task)
}

async fn serve_direct(
    listener: Listener,
    tx: mpsc::UnboundedSender<Conn>,
    shutdown: CancellationToken,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(conn) => {
                    backoff.succeeded();
                    let _ = tx.send(conn);
                }
                Err(e) => {
                    let (delay, report) = backoff.failed(Instant::now());
                    if let Some(suppressed) = report {
                        tracing::warn!(
                            "accepting on {} failed: {e}; retrying in {delay:?} ({suppressed} more failures since the last report)",
                            listener.address()
                        );
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Retrying a failing `accept` (EMFILE, ENFILE: it fails again until a descriptor is freed) as
/// Go's net/http does: 5 ms, doubling up to 1 s, back to the start after a success; reported
/// at most every 10 s, with the count of failures in between, instead of 20 lines a second.
#[derive(Debug, Default)]
struct AcceptBackoff {
    delay: Duration,
    last_report: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);
    const REPORT_EVERY: Duration = Duration::from_secs(10);

    /// The delay before the next accept, and whether to report (with the failures not reported).
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.delay = if self.delay.is_zero() {
            Self::FIRST
        } else {
            (self.delay * 2).min(Self::MAX)
        };
        let due = self
            .last_report
            .is_none_or(|t| now.duration_since(t) >= Self::REPORT_EVERY);
        if due {
            self.last_report = Some(now);
            let n = std::mem::take(&mut self.suppressed);
            (self.delay, Some(n))
        } else {
            self.suppressed += 1;
            (self.delay, None)
        }
    }

    fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// The one connection of multiplexed mode and the streams of its yamux session. An error when
/// the connection never came or the session failed (garbage, a protocol violation): the plugin
/// then stops serving and must not exit as if the host had shut it down.
async fn serve_mux(
    listener: Listener,
    broker: Broker,
    tx: mpsc::UnboundedSender<Conn>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let first = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(MUX_CONNECT_WINDOW, listener.accept()) => r,
    };
    let fail = |reason: String| {
        tracing::error!("error establishing yamux session: {reason}");
        shutdown.cancel();
        Err(ServeError::MuxSession(reason))
    };
    let conn = match first {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return fail(e.to_string()),
        Err(_) => return fail("timed out waiting for connection to be established".into()),
    };
    let mut streams = match broker.start_mux(conn) {
        Ok(rx) => rx,
        Err(e) => return fail(e.to_string()),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            s = streams.recv() => match s {
                Some(conn) => { let _ = tx.send(conn); }
                None => break,
            },
        }
    }
    drop(listener);
    let session = broker.mux_session();
    if let Some(session) = &session {
        session.close();
    }
    match session.and_then(|s| s.failure()) {
        Some(reason) if !shutdown.is_cancelled() => fail(reason),
        _ => Ok(()),
    }
}

async fn run(
    routes: Routes,
    incoming: impl Stream<Item = Result<Conn, std::io::Error>> + Send + 'static,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), ServeError> {
    let server = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::select! {
        r = server => r?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::debug!("shutdown grace period over; stopping with RPCs still open");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_accepts_back_off_to_a_second_and_are_reported_every_ten_seconds() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        let mut delays = Vec::new();
        let mut reports = Vec::new();
        // 60 failures, each after the delay the previous one asked for.
        let mut now = t0;
        for _ in 0..60 {
            let (d, r) = b.failed(now);
            delays.push(d);
            if let Some(n) = r {
                reports.push((now.duration_since(t0).as_secs(), n));
            }
            now += d;
        }
        assert_eq!(delays[0], Duration::from_millis(5));
        assert_eq!(delays[1], Duration::from_millis(10));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert_eq!(delays[59], Duration::from_secs(1));
        // ~53 s of failures: the first at once, then one line per 10 s with what it skipped.
        assert_eq!(reports.len(), 6, "{reports:?}");
        assert_eq!(reports[0], (0, 0));
        assert!(reports[1].1 > 0);
        // Every failure is either reported or counted in a later report (or the pending count).
        assert_eq!(
            reports.iter().map(|r| r.1).sum::<u64>() + reports.len() as u64 + b.suppressed,
            60
        );
        b.succeeded();
        assert_eq!(b.failed(now).0, Duration::from_millis(5));
    }
}
