//! The host's settings for starting a plugin (go-plugin's `ClientConfig`, spec
//! go-plugin-wire.md §2-§5): command, versions offered, AutoMTLS or TLS, multiplexing, sockets,
//! timeouts, output sinks.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::handshake::HandshakeConfig;
use crate::tls::MtlsConfig;

use super::*;

/// Settings for starting a plugin; see [`Client::builder`].
pub struct ClientBuilder {
    pub(super) cmd: std::process::Command,
    pub(super) handshake: HandshakeConfig,
    pub(super) versions: BTreeSet<u32>,
    /// Whether `versions` replaced the handshake's own version.
    pub(super) versions_explicit: bool,
    pub(super) auto_mtls: bool,
    pub(super) multiplex: bool,
    pub(super) socket_dir: Option<PathBuf>,
    pub(super) socket_group: Option<String>,
    pub(super) ports: (u16, u16),
    pub(super) start_timeout: Duration,
    pub(super) kill_grace: Duration,
    pub(super) kill_on_drop: bool,
    pub(super) shutdown_timeout: Duration,
    pub(super) sync_stdout: Option<Sink>,
    pub(super) sync_stderr: Option<Sink>,
    pub(super) stderr: Option<Sink>,
    pub(super) name: Option<String>,
    pub(super) skip_host_env: bool,
    pub(super) stdin: Option<Stdio>,
    pub(super) tls: Option<MtlsConfig>,
    pub(super) max_message_size: usize,
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

    /// Whether dropping the last clone of the [`Client`] kills a plugin that still runs
    /// (default `true`, go-plugin's `Managed` clients and `CleanupClients`). Turn it off when the
    /// plugin must outlive this handle, as a Nomad agent's helpers outlive the agent: a later
    /// host then reattaches with [`Client::reattach`].
    pub fn kill_on_drop(mut self, on: bool) -> Self {
        self.kill_on_drop = on;
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
            kill_on_drop: true,
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
}
