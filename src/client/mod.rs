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

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::broker::Broker;
use crate::handshake::{HandshakeError, Network, Protocol};
use crate::proto::plugin::grpc_controller_client::GrpcControllerClient;
use crate::proto::plugin::Empty;
use crate::reattach::{ProcessIdentity, ReattachConfig, ReattachTls};
use crate::tls::{self};
use crate::transport::{self};

mod builder;
mod connect;
mod reattach;
mod start;
mod streams;

pub use builder::ClientBuilder;
use connect::{connect_channel, connect_main};
use start::Starter;
use streams::{open_broker_stream, open_stdio_stream, read_stdout, spawn_stderr_logger};

/// A writer the host copies plugin output into.
pub(crate) type Sink = Box<dyn Write + Send>;
type SharedSink = Arc<Mutex<Sink>>;

/// Errors starting, connecting to or reattaching to a plugin; each names what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    kill_on_drop: bool,
    shutdown_timeout: Duration,
    socket_dir: Mutex<Option<SocketDirGuard>>,
    max_message_size: usize,
}

impl Drop for Inner {
    /// The last clone gone: the broker and stdio stream tasks end, and with them the last
    /// clones of the channel, so the connection closes (a host that reattaches often, as
    /// `goplugin status` does, would otherwise keep one connection per reattach). A managed
    /// plugin ([`ClientBuilder::kill_on_drop`]) that still runs is SIGKILLed and reaped here and
    /// now, since a drop cannot await the graceful sequence; its socket directory goes with
    /// `socket_dir`.
    fn drop(&mut self) {
        self.closed.cancel();
        if !self.kill_on_drop || self.exit.borrow().is_some() {
            return;
        }
        if self.still_running() {
            crate::process::kill(self.pid);
            reap(self.pid);
        }
    }
}

impl Inner {
    /// Whether the plugin this client started or reattached to still runs as that process: its
    /// recorded identity (pid and start time) when there is one, else no exit seen yet.
    fn still_running(&self) -> bool {
        match &self.identity {
            Some(id) => id.is_alive(),
            None => self.pid != 0 && self.exit.borrow().is_none(),
        }
    }
}

/// Waits for our SIGKILLed child so no zombie is left (the exit task may reap it first, then
/// this returns at once with `ECHILD`); a few milliseconds, SIGKILL cannot be caught.
#[cfg(unix)]
fn reap(pid: u32) {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
}

/// `TerminateProcess` has ended the process; Windows keeps no zombies.
#[cfg(not(unix))]
fn reap(_pid: u32) {}

/// A connected plugin. Cheap to clone; all clones share the plugin.
///
/// A started plugin is killed (SIGKILL, reaped, socket directory removed) when the last clone is
/// dropped while it still runs, unless [`ClientBuilder::kill_on_drop`] turned that off;
/// [`Client::kill`] is the graceful way (go-plugin's kill sequence). A reattached client
/// ([`Client::reattach`]) never kills on drop: the plugin belongs to whoever started it.
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

    /// The plugin's own certificate as DER, the one this host pinned: AutoMTLS field 6 for a
    /// started client, the saved one for a reattached client. `None` without AutoMTLS (with
    /// pre-shared TLS the host's own configuration names what it trusts). The host's private
    /// key is not handed out here.
    pub fn plugin_certificate(&self) -> Option<Vec<u8>> {
        let saved = self.inner.tls.as_ref()?;
        tls::decode_server_cert(&saved.plugin_cert)
            .ok()
            .map(|der| der.as_ref().to_vec())
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
        if self.inner.still_running() {
            crate::process::kill(self.inner.pid);
        }
    }
}
