//! The host role (spec go-plugin-wire.md §2-§15, checklist §18): start a go-plugin plugin
//! (written in Go or in Rust), read its handshake line, connect, keep its broker and stdio
//! streams drained, log its stderr, and stop it with go-plugin's kill sequence. Also reattach to
//! a plugin a previous host process started.
//!
//! ```no_run
//! # async fn f() -> Result<(), goplugin::ClientError> {
//! use goplugin::{Client, HandshakeConfig};
//! let mut cmd = std::process::Command::new("./kv-plugin");
//! cmd.arg("serve");
//! let client = Client::builder(cmd, HandshakeConfig::new("BASIC_PLUGIN", "hello"))
//!     .auto_mtls(true)
//!     .start()
//!     .await?;
//! client.ping().await?;
//! // let kv = KvClient::new(client.channel());
//! client.kill().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::broker::{Broker, Side};
use crate::handshake::{env, HandshakeConfig, HandshakeError, HandshakeLine, Network, Protocol};
use crate::hclog::{self, LogLine, StderrLogParser, DEFAULT_LINE_LIMIT};
use crate::proto::plugin::grpc_broker_client::GrpcBrokerClient;
use crate::proto::plugin::grpc_controller_client::GrpcControllerClient;
use crate::proto::plugin::grpc_stdio_client::GrpcStdioClient;
use crate::proto::plugin::{stdio_data::Channel as StdioChannel, Empty};
use crate::reattach::{ProcessIdentity, ReattachConfig, ReattachTls};
use crate::tls::{self, Identity, MtlsConfig, PinnedPeers};
use crate::transport::{self, Conn, ListenConfig};

/// A writer the host copies plugin output into.
pub type Sink = Box<dyn Write + Send>;
type SharedSink = Arc<Mutex<Sink>>;

/// Errors starting, connecting to or reattaching to a plugin; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The plugin command could not be started.
    #[error("starting plugin {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No handshake line within the start timeout (Go's text).
    #[error("timeout while waiting for plugin to start (after {timeout:?})")]
    StartTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The process exited before printing a handshake line (Go's text).
    #[error("plugin exited before we could connect: {status}")]
    ExitedBeforeConnect {
        /// How it exited.
        status: ExitStatus,
    },
    /// stdout closed without a line (Go's texts).
    #[error("Unrecognized remote plugin message: \nFailed to read any lines from plugin's stdout")]
    NoHandshake,
    /// The first stdout line is longer than go-plugin's 64 KiB line limit.
    #[error("plugin's first stdout line is longer than {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// The handshake line did not parse.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The plugin does not speak gRPC.
    #[error("unsupported plugin protocol {protocol:?}. Supported: [grpc]")]
    UnsupportedProtocol {
        /// Field 5.
        protocol: &'static str,
    },
    /// The plugin announced a version we did not offer (Go's text).
    #[error("incompatible API version with plugin. Plugin version: {plugin}, Client versions: {offered:?}")]
    IncompatibleVersion {
        /// Field 2.
        plugin: u32,
        /// What we offered.
        offered: Vec<u32>,
    },
    /// Multiplexing was requested and the plugin refused or ignored it (Go's text).
    #[error("client requested gRPC broker multiplexing but plugin does not support the feature")]
    MuxNotSupported,
    /// AutoMTLS was requested and the plugin sent no certificate in field 6.
    #[error("AutoMTLS requested but the plugin's handshake line carries no certificate")]
    MissingServerCert,
    /// Field 6 or our own TLS setup was unusable.
    #[error("AutoMTLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The TLS handshake with the plugin failed (e.g. it presented another certificate).
    #[error("TLS handshake with plugin at {address}: {source}")]
    TlsHandshake {
        /// Plugin address.
        address: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Connecting to the announced address failed.
    #[error(transparent)]
    Dial(#[from] transport::TransportError),
    /// gRPC could not run over the connection.
    #[error("gRPC connection to plugin at {address}: {source}")]
    Grpc {
        /// Plugin address.
        address: String,
        /// What failed.
        source: tonic::transport::Error,
    },
    /// A socket directory for the plugin could not be prepared.
    #[error("preparing plugin socket directory under {dir}: {source}")]
    SocketDir {
        /// Parent directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Opening the multiplexed session failed.
    #[error("multiplexed session with plugin: {0}")]
    Mux(String),
    /// Reattach target is gone or is another process (Go: `reattachment process not found`).
    #[error("reattachment process not found: pid {pid}: {reason}")]
    ProcessNotFound {
        /// The recorded pid.
        pid: u32,
        /// Why we think so.
        reason: String,
    },
    /// A reattach config that cannot work.
    #[error("invalid reattach config: {0}")]
    BadReattach(String),
    /// Health check failed.
    #[error("plugin health check failed: {0}")]
    Ping(tonic::Status),
}

/// How the plugin process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A child we started, reaped with this status.
    Status(ExitStatus),
    /// A reattached process that disappeared (its status belongs to its parent).
    Gone,
}

/// Settings for starting a plugin; see [`Client::builder`].
pub struct ClientBuilder {
    cmd: std::process::Command,
    handshake: HandshakeConfig,
    versions: BTreeSet<u32>,
    /// Whether `versions` replaced the handshake's own version.
    versions_explicit: bool,
    auto_mtls: bool,
    multiplex: bool,
    socket_dir: Option<PathBuf>,
    socket_group: Option<String>,
    ports: (u16, u16),
    start_timeout: Duration,
    kill_grace: Duration,
    shutdown_timeout: Duration,
    sync_stdout: Option<Sink>,
    sync_stderr: Option<Sink>,
    stderr: Option<Sink>,
    name: Option<String>,
    skip_host_env: bool,
    stdin: Option<Stdio>,
    tls: Option<MtlsConfig>,
    max_message_size: usize,
}

impl ClientBuilder {
    /// Pre-shared TLS instead of AutoMTLS (Go's `ClientConfig.TLSConfig`, which wins over
    /// AutoMTLS there too): used for the main connection and every brokered one.
    pub fn tls(mut self, tls: MtlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The plugin's stdin (default: inherited from this process, as Go passes `os.Stdin`).
    pub fn stdin(mut self, stdin: impl Into<Stdio>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// Offer these application protocol versions (Go's `VersionedPlugins` keys) instead of the
    /// handshake's own: `.versions([5, 6])` offers exactly `5,6`, as Terraform does. Go offers
    /// the handshake's `ProtocolVersion` only for an unversioned plugin set, which is what a
    /// builder without `versions` means. Calls add up.
    pub fn versions(mut self, versions: impl IntoIterator<Item = u32>) -> Self {
        if !self.versions_explicit {
            self.versions.clear();
            self.versions_explicit = true;
        }
        self.versions.extend(versions);
        self
    }

    /// Turns AutoMTLS on: a fresh P-521 identity is sent as `PLUGIN_CLIENT_CERT`.
    pub fn auto_mtls(mut self, on: bool) -> Self {
        self.auto_mtls = on;
        self
    }

    /// Asks for a multiplexed broker (`PLUGIN_MULTIPLEX_GRPC=true`); no fallback, as in Go.
    pub fn multiplex(mut self, on: bool) -> Self {
        self.multiplex = on;
        self
    }

    /// Creates a private `plugin-dir*` directory under `parent` for the plugin's sockets
    /// (`PLUGIN_UNIX_SOCKET_DIR`), removed when the plugin is killed.
    pub fn socket_dir(mut self, parent: impl Into<PathBuf>) -> Self {
        self.socket_dir = Some(parent.into());
        self
    }

    /// Group (name or gid) for the plugin's sockets (`PLUGIN_UNIX_SOCKET_GROUP`).
    pub fn socket_group(mut self, group: impl Into<String>) -> Self {
        self.socket_group = Some(group.into());
        self
    }

    /// TCP port range for the plugin (`PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT`, default 10000-25000).
    pub fn port_range(mut self, min: u16, max: u16) -> Self {
        self.ports = (min, max);
        self
    }

    /// How long to wait for the handshake line (default 1 minute, as Go).
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.start_timeout = d;
        self
    }

    /// How long `kill` waits for a graceful exit before SIGKILL (default 2 s, as Go).
    pub fn kill_grace(mut self, d: Duration) -> Self {
        self.kill_grace = d;
        self
    }

    /// Bound on the `Controller.Shutdown` call inside `kill` (Go has none; default 2 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Receives what the plugin mirrors of its stdout through `GRPCStdio` (Go's `SyncStdout`).
    pub fn sync_stdout(mut self, w: impl Write + Send + 'static) -> Self {
        self.sync_stdout = Some(Box::new(w));
        self
    }

    /// Receives what the plugin mirrors of its stderr through `GRPCStdio` (Go's `SyncStderr`).
    pub fn sync_stderr(mut self, w: impl Write + Send + 'static) -> Self {
        self.sync_stderr = Some(Box::new(w));
        self
    }

    /// Receives a raw copy of the plugin's stderr pipe (Go's `Stderr`).
    pub fn stderr(mut self, w: impl Write + Send + 'static) -> Self {
        self.stderr = Some(Box::new(w));
        self
    }

    /// The name plugin log lines carry (default: the executable's base name, as Go).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Starts the plugin without this process's environment (Go's `SkipHostEnv`).
    pub fn skip_host_env(mut self, skip: bool) -> Self {
        self.skip_host_env = skip;
        self
    }

    /// The largest message the internal clients (health, controller, broker, stdio) send and
    /// accept, and what [`Client::max_message_size`] hands to yours; [`crate::MAX_MESSAGE_SIZE`]
    /// (2^31-1, go-plugin's Go host's `MaxCallRecvMsgSize`/`MaxCallSendMsgSize`) by default.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Starts the plugin and connects to it.
    pub async fn start(self) -> Result<Client, ClientError> {
        Starter::run(self).await
    }
}

/// Removes the plugin's private socket directory when dropped.
#[derive(Debug)]
struct SocketDirGuard(PathBuf);

impl Drop for SocketDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Inner {
    channel: Channel,
    broker: Broker,
    version: u32,
    network: Network,
    address: String,
    pid: u32,
    identity: Option<ProcessIdentity>,
    tls: Option<ReattachTls>,
    exit: watch::Receiver<Option<Exit>>,
    closed: CancellationToken,
    kill_grace: Duration,
    shutdown_timeout: Duration,
    socket_dir: Mutex<Option<SocketDirGuard>>,
    max_message_size: usize,
}

impl Drop for Inner {
    /// The last clone gone: the broker and stdio stream tasks end, and with them the last
    /// clones of the channel, so the connection closes (a host that reattaches often, as
    /// `goplugin status` does, would otherwise keep one connection per reattach). The plugin
    /// itself keeps running, as in Go.
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// A connected plugin. Cheap to clone; all clones share the plugin.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("pid", &self.inner.pid)
            .field("address", &self.inner.address)
            .field("version", &self.inner.version)
            .finish()
    }
}

impl Client {
    /// Settings to start `cmd` as a plugin with `handshake` (its protocol version is offered
    /// unless [`ClientBuilder::versions`] names others).
    pub fn builder(cmd: std::process::Command, handshake: HandshakeConfig) -> ClientBuilder {
        let versions = BTreeSet::from([handshake.protocol_version]);
        ClientBuilder {
            cmd,
            handshake,
            versions,
            versions_explicit: false,
            auto_mtls: false,
            multiplex: false,
            socket_dir: None,
            socket_group: None,
            ports: (10000, 25000),
            start_timeout: Duration::from_secs(60),
            kill_grace: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(2),
            sync_stdout: None,
            sync_stderr: None,
            stderr: None,
            name: None,
            skip_host_env: false,
            stdin: None,
            tls: None,
            max_message_size: crate::MAX_MESSAGE_SIZE,
        }
    }

    /// The gRPC channel to the plugin's main server: build your service clients on it, with
    /// [`Client::max_message_size`] as their limits (tonic sets them per generated client and
    /// decodes at most 4 MiB otherwise):
    ///
    /// ```ignore
    /// let kv = KvClient::new(client.channel())
    ///     .max_decoding_message_size(client.max_message_size())
    ///     .max_encoding_message_size(client.max_message_size());
    /// ```
    pub fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    /// The message-size limit for clients built on [`Client::channel`] (and on brokered
    /// channels): [`crate::MAX_MESSAGE_SIZE`], as a Go host's, unless
    /// [`ClientBuilder::max_message_size`] changed it (a reattached client has the default).
    pub fn max_message_size(&self) -> usize {
        self.inner.max_message_size
    }

    /// The broker, to serve callbacks (`accept_and_serve`) or dial the plugin's extra servers.
    pub fn broker(&self) -> Broker {
        self.inner.broker.clone()
    }

    /// The negotiated application protocol version.
    pub fn negotiated_version(&self) -> u32 {
        self.inner.version
    }

    /// The plugin's process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// `grpc.health.v1.Health/Check("plugin")`; any answer counts as healthy, as in Go.
    pub async fn ping(&self) -> Result<(), ClientError> {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        HealthClient::new(self.channel())
            .max_decoding_message_size(self.inner.max_message_size)
            .max_encoding_message_size(self.inner.max_message_size)
            .check(HealthCheckRequest {
                service: "plugin".into(),
            })
            .await
            .map(|_| ())
            .map_err(ClientError::Ping)
    }

    /// Whether the plugin process has exited.
    pub fn exited(&self) -> bool {
        self.inner.exit.borrow().is_some()
    }

    /// Resolves when the plugin exits or crashes, with how it ended.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.inner.exit.clone();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                return Exit::Gone;
            }
        }
    }

    /// What a later host process needs to reattach (`Client::reattach`).
    pub fn reattach_config(&self) -> ReattachConfig {
        ReattachConfig {
            protocol: Protocol::Grpc.as_str().to_string(),
            protocol_version: self.inner.version,
            network: self.inner.network.as_str().to_string(),
            addr: self.inner.address.clone(),
            pid: self.inner.pid,
            test: false,
            process: self.inner.identity,
            tls: self.inner.tls.clone(),
        }
    }

    /// go-plugin's kill sequence (§14): close the broker, `Controller.Shutdown`, drop the
    /// connection, wait for the exit (2 s by default), then SIGKILL; returns how it ended.
    pub async fn kill(&self) -> Exit {
        self.inner.closed.cancel();
        if !self.exited() {
            let mut ctl = GrpcControllerClient::new(self.channel())
                .max_decoding_message_size(self.inner.max_message_size)
                .max_encoding_message_size(self.inner.max_message_size);
            let call = ctl.shutdown(Empty {});
            let _ = tokio::time::timeout(self.inner.shutdown_timeout, call).await;
        }
        let exit = match tokio::time::timeout(self.inner.kill_grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(pid = self.inner.pid, "plugin failed to exit gracefully");
                self.force_kill();
                self.wait().await
            }
        };
        drop(self.lock_dir().take());
        exit
    }

    fn lock_dir(&self) -> std::sync::MutexGuard<'_, Option<SocketDirGuard>> {
        self.inner
            .socket_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn force_kill(&self) {
        let still_ours = match &self.inner.identity {
            Some(id) => id.is_alive(),
            None => !self.exited(),
        };
        if still_ours {
            kill_pid(self.inner.pid);
        }
    }

    /// Reconnects to a plugin started by an earlier host process. Fails with
    /// [`ClientError::ProcessNotFound`] when the pid is gone, belongs to another process (start
    /// time differs), or the address does not answer. Multiplexed plugins cannot be reattached.
    pub async fn reattach(cfg: &ReattachConfig) -> Result<Client, ClientError> {
        Self::reattach_with_tls(cfg, None).await
    }

    /// [`Client::reattach`] for a plugin served with pre-shared TLS, which a reattach record does
    /// not carry: give the same settings as at start.
    pub async fn reattach_with_tls(
        cfg: &ReattachConfig,
        tls: Option<MtlsConfig>,
    ) -> Result<Client, ClientError> {
        if cfg.protocol != Protocol::Grpc.as_str() {
            return Err(ClientError::BadReattach(format!(
                "protocol {:?} is not grpc",
                cfg.protocol
            )));
        }
        let network = reattach_network(&cfg.network)?;
        let identity = match cfg.process {
            Some(id) => {
                id.check(cfg.pid)
                    .map_err(|reason| ClientError::ProcessNotFound {
                        pid: cfg.pid,
                        reason,
                    })?;
                Some(id)
            }
            None if cfg.pid != 0 => {
                let id = ProcessIdentity::of(cfg.pid).map_err(|reason| {
                    ClientError::ProcessNotFound {
                        pid: cfg.pid,
                        reason,
                    }
                })?;
                Some(id)
            }
            None => None,
        };
        let mtls = match (&cfg.tls, tls) {
            (_, Some(given)) => Some(given),
            (Some(saved), None) => Some(saved.config()?),
            (None, None) => None,
        };
        let conn = transport::dial(network, &cfg.addr).await.map_err(|e| {
            ClientError::ProcessNotFound {
                pid: cfg.pid,
                reason: e.to_string(),
            }
        })?;
        let channel = connect_channel(conn, mtls.as_ref(), &cfg.addr).await?;
        let closed = CancellationToken::new();
        let broker = Broker::new(
            Side::Host,
            ListenConfig::default(),
            mtls.clone(),
            false,
            closed.clone(),
        );
        let limit = crate::MAX_MESSAGE_SIZE;
        open_broker_stream(&broker, &channel, &closed, limit);
        open_stdio_stream(&channel, None, None, &closed, limit);
        let (exit_tx, exit_rx) = watch::channel(None);
        if let Some(id) = identity {
            tokio::spawn(poll_liveness(id, exit_tx, closed.clone()));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                channel,
                broker,
                version: cfg.protocol_version,
                network,
                address: cfg.addr.clone(),
                pid: cfg.pid,
                identity,
                tls: cfg.tls.clone(),
                exit: exit_rx,
                closed,
                kill_grace: Duration::from_secs(2),
                shutdown_timeout: Duration::from_secs(2),
                socket_dir: Mutex::new(None),
                max_message_size: limit,
            }),
        })
    }
}

/// SIGKILL, as Go's `Process.Kill` on Unix.
#[cfg(unix)]
fn kill_pid(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

/// Forced termination, as Go's `Process.Kill` (TerminateProcess) on Windows.
#[cfg(not(unix))]
fn kill_pid(pid: u32) {
    let _ = std::process::Command::new("taskkill")
        .args(["/F", "/PID", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn reattach_network(network: &str) -> Result<Network, ClientError> {
    // Nomad persists Go's network names: unix, unixgram, unixpacket, tcp, tcp4, tcp6.
    Network::parse_go(network).ok_or_else(|| {
        ClientError::BadReattach(format!("network {network:?} is neither unix nor tcp"))
    })
}

/// Polls a reattached process every second (Go's rate) and reports when it is gone; stops when
/// every clone of the client is dropped, so a host that reattaches often leaks no task.
async fn poll_liveness(
    id: ProcessIdentity,
    exit: watch::Sender<Option<Exit>>,
    closed: CancellationToken,
) {
    loop {
        if !id.is_alive() {
            let _ = exit.send(Some(Exit::Gone));
            return;
        }
        let step = if closed.is_cancelled() {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = closed.cancelled(), if !closed.is_cancelled() => {}
            _ = exit.closed() => return,
        }
    }
}

/// How long a plugin whose stdout or connection just failed gets to show it is exiting.
const EXIT_GRACE: Duration = Duration::from_millis(200);

/// The child's exit status if it exits within [`EXIT_GRACE`].
async fn exit_soon(child: &mut tokio::process::Child) -> Option<ExitStatus> {
    tokio::time::timeout(EXIT_GRACE, child.wait())
        .await
        .ok()
        .and_then(Result::ok)
}

/// One start attempt: everything it creates is undone if it fails.
struct Starter {
    child: Option<tokio::process::Child>,
    socket_dir: Option<SocketDirGuard>,
}

impl Drop for Starter {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            // Reap in the background so no zombie is left.
            if let Some(mut child) = self.child.take() {
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
    }
}

impl Starter {
    async fn run(b: ClientBuilder) -> Result<Client, ClientError> {
        let mut starter = Starter {
            child: None,
            socket_dir: None,
        };
        let identity = if b.auto_mtls && b.tls.is_none() {
            Some(Identity::generate()?)
        } else {
            None
        };
        let mut cmd = b.cmd;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let name = b.name.clone().unwrap_or_else(|| {
            Path::new(&program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| program.clone())
        });
        if b.skip_host_env {
            let user: Vec<_> = cmd
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_os_string(), v.to_os_string())))
                .collect();
            cmd.env_clear();
            cmd.envs(user);
        }
        let versions: Vec<String> = b.versions.iter().map(u32::to_string).collect();
        cmd.env(
            &b.handshake.magic_cookie_key,
            &b.handshake.magic_cookie_value,
        )
        .env(env::MIN_PORT, b.ports.0.to_string())
        .env(env::MAX_PORT, b.ports.1.to_string())
        .env(env::PROTOCOL_VERSIONS, versions.join(","));
        if b.multiplex {
            cmd.env(env::MULTIPLEX_GRPC, "true");
        }
        #[cfg(unix)]
        crate::inherit::only_stdio(&mut cmd);
        if let Some(id) = &identity {
            cmd.env(env::CLIENT_CERT, id.cert_pem());
        }
        if let Some(group) = &b.socket_group {
            cmd.env(env::UNIX_SOCKET_GROUP, group);
        }
        if let Some(parent) = &b.socket_dir {
            let dir = make_socket_dir(parent, b.socket_group.as_deref())?;
            cmd.env(env::UNIX_SOCKET_DIR, &dir);
            starter.socket_dir = Some(SocketDirGuard(dir));
        }
        cmd.stdin(b.stdin.unwrap_or_else(Stdio::inherit))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|source| ClientError::Spawn {
                program: program.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        starter.child = Some(child);

        let stderr_done = spawn_stderr_logger(stderr, b.stderr, name);
        let (line_tx, line_rx) = tokio::sync::oneshot::channel();
        let stdout_done = tokio::spawn(read_stdout(stdout, line_tx));
        let line = starter.wait_line(line_rx, b.start_timeout).await?;

        let handshake = HandshakeLine::parse(&line)?;
        if handshake.protocol != Protocol::Grpc {
            return Err(ClientError::UnsupportedProtocol {
                protocol: handshake.protocol.as_str(),
            });
        }
        if !b.versions.contains(&handshake.app_version) {
            return Err(ClientError::IncompatibleVersion {
                plugin: handshake.app_version,
                offered: b.versions.iter().copied().collect(),
            });
        }
        if b.multiplex && handshake.multiplex != Some(true) {
            return Err(ClientError::MuxNotSupported);
        }
        let (mtls, reattach_tls) = match identity {
            Some(id) => {
                let field6 = handshake
                    .server_cert
                    .as_deref()
                    .ok_or(ClientError::MissingServerCert)?;
                let plugin_cert = tls::decode_server_cert(field6)?;
                let peers = PinnedPeers::from_certs([plugin_cert])?;
                let cfg = MtlsConfig::new(&id, peers)?;
                let saved = ReattachTls::new(&id, field6);
                (Some(cfg), Some(saved))
            }
            None => (b.tls, None),
        };
        let closed = CancellationToken::new();
        let broker = Broker::new(
            Side::Host,
            host_listen_config(starter.socket_dir.as_ref()),
            mtls.clone(),
            b.multiplex,
            closed.clone(),
        );
        let connected = connect_main(&handshake, &broker, b.multiplex, mtls.as_ref()).await;
        let channel = match connected {
            Ok(channel) => channel,
            Err(e) => return Err(starter.exited_or(e).await),
        };
        let limit = b.max_message_size;
        open_broker_stream(&broker, &channel, &closed, limit);
        open_stdio_stream(&channel, b.sync_stdout, b.sync_stderr, &closed, limit);

        let identity = ProcessIdentity::of(pid).ok();
        let (exit_tx, exit_rx) = watch::channel(None);
        let child = starter.child.take();
        tokio::spawn(async move {
            // Like Go: the exit is reported once both pipes reached EOF and the child is reaped.
            let _ = stdout_done.await;
            let _ = stderr_done.await;
            if let Some(mut child) = child {
                let exit = match child.wait().await {
                    Ok(status) => Exit::Status(status),
                    Err(_) => Exit::Gone,
                };
                tracing::debug!(pid, ?exit, "plugin process exited");
                let _ = exit_tx.send(Some(exit));
            }
        });
        Ok(Client {
            inner: Arc::new(Inner {
                channel,
                broker,
                version: handshake.app_version,
                network: handshake.network,
                address: handshake.address,
                pid,
                identity,
                tls: reattach_tls,
                exit: exit_rx,
                closed,
                kill_grace: b.kill_grace,
                shutdown_timeout: b.shutdown_timeout,
                socket_dir: Mutex::new(starter.socket_dir.take()),
                max_message_size: limit,
            }),
        })
    }

    /// A failed connect to a plugin that has exited in the meantime is that exit (Go's text).
    async fn exited_or(&mut self, err: ClientError) -> ClientError {
        let Some(child) = self.child.as_mut() else {
            return err;
        };
        match exit_soon(child).await {
            Some(status) => ClientError::ExitedBeforeConnect { status },
            None => err,
        }
    }

    /// Waits for the first stdout line, the process's exit, or the timeout, whichever is first.
    async fn wait_line(
        &mut self,
        line_rx: tokio::sync::oneshot::Receiver<Result<String, ClientError>>,
        timeout: Duration,
    ) -> Result<String, ClientError> {
        let child = self.child.as_mut().expect("child spawned");
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        tokio::pin!(line_rx);
        let mut exited = None;
        loop {
            tokio::select! {
                r = &mut line_rx => {
                    return match r {
                        Ok(Ok(line)) => Ok(line),
                        Ok(Err(ClientError::NoHandshake)) | Err(_) => {
                            // stdout closing usually means the process is exiting: say so when
                            // it does within a moment.
                            let status = match exited {
                                Some(s) => Some(s),
                                None => exit_soon(child).await,
                            };
                            match status {
                                Some(status) => Err(ClientError::ExitedBeforeConnect { status }),
                                None => Err(ClientError::NoHandshake),
                            }
                        }
                        Ok(Err(e)) => Err(e),
                    };
                }
                status = child.wait(), if exited.is_none() => {
                    match status {
                        // Give stdout a moment to deliver a line printed just before exiting.
                        Ok(status) => exited = Some(status),
                        Err(_) => return Err(ClientError::NoHandshake),
                    }
                }
                _ = &mut deadline => return Err(ClientError::StartTimeout { timeout }),
            }
        }
    }
}

/// Connects the main gRPC channel: one raw connection, or the first stream of a yamux session.
async fn connect_main(
    handshake: &HandshakeLine,
    broker: &Broker,
    multiplex: bool,
    mtls: Option<&MtlsConfig>,
) -> Result<Channel, ClientError> {
    let conn = transport::dial(handshake.network, &handshake.address).await?;
    let main = if multiplex {
        let _unclaimed = broker
            .start_mux(conn)
            .map_err(|e| ClientError::Mux(e.to_string()))?;
        let session = broker
            .mux_session()
            .ok_or_else(|| ClientError::Mux("no session".into()))?;
        session
            .open()
            .await
            .map_err(|e| ClientError::Mux(e.to_string()))?
    } else {
        conn
    };
    connect_channel(main, mtls, &handshake.address).await
}

fn make_socket_dir(parent: &Path, group: Option<&str>) -> Result<PathBuf, ClientError> {
    let err = |source| ClientError::SocketDir {
        dir: parent.to_path_buf(),
        source,
    };
    let dir = loop {
        let candidate = parent.join(format!("plugin-dir{}", rand::random::<u32>()));
        match std::fs::create_dir(&candidate) {
            Ok(()) => break candidate,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(e)),
        }
    };
    restrict_socket_dir(&dir, group).map_err(err)?;
    Ok(dir)
}

/// Mode 0700, or 0770 with `group` (name or gid) as the directory's group, as go-plugin's host.
#[cfg(unix)]
fn restrict_socket_dir(dir: &Path, group: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match group {
        Some(g) => {
            let gid = transport::resolve_group(g).map_err(std::io::Error::other)?;
            nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid)))?;
            0o770
        }
        None => 0o700,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Unix modes and groups do not exist here (the directory only matters to unix sockets).
#[cfg(not(unix))]
fn restrict_socket_dir(_dir: &Path, _group: Option<&str>) -> std::io::Result<()> {
    Ok(())
}

fn host_listen_config(dir: Option<&SocketDirGuard>) -> ListenConfig {
    ListenConfig {
        socket_dir: dir.map(|d| d.0.clone()),
        ..ListenConfig::default()
    }
}

async fn connect_channel(
    conn: Conn,
    mtls: Option<&MtlsConfig>,
    address: &str,
) -> Result<Channel, ClientError> {
    let conn = match mtls {
        Some(cfg) => cfg
            .connect(conn)
            .await
            .map_err(|source| ClientError::TlsHandshake {
                address: address.to_string(),
                source,
            })?,
        None => conn,
    };
    transport::grpc_channel(conn)
        .await
        .map_err(|source| ClientError::Grpc {
            address: address.to_string(),
            source,
        })
}

/// Opens `GRPCBroker/StartStream` at once and keeps feeding the broker. Spawned, never awaited
/// here: a grpc-go handler sends no headers before its first message.
fn open_broker_stream(
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
fn open_stdio_stream(
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
async fn read_stdout(
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
fn spawn_stderr_logger(
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

    #[test]
    fn reattach_networks_accept_go_spellings() {
        for n in ["unix", "unixpacket", "tcp", "tcp4", "tcp6"] {
            assert!(reattach_network(n).is_ok(), "{n}");
        }
        assert!(reattach_network("udp").is_err());
    }
}
