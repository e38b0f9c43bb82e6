//! Listeners and dialers of go-plugin (spec go-plugin-wire.md §4): unix sockets in
//! `PLUGIN_UNIX_SOCKET_DIR` (or the temp dir) owned by `PLUGIN_UNIX_SOCKET_GROUP` with mode 0660,
//! or loopback TCP within `PLUGIN_MIN_PORT`..`PLUGIN_MAX_PORT`. The same rules serve the main
//! listener and every brokered one. Also the boxed connection type all of them produce.
//!
//! Unix sockets exist only on Unix; elsewhere (Windows) every listener is TCP, as go-plugin's is
//! there, and dialing a `unix` address fails with [`TransportError::Dial`].

use std::io;
#[cfg(unix)]
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

use crate::handshake::{env, Network};

/// Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;

/// Errors opening a listener or dialing a peer; each names the setting or address involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A port variable is not a number in 0..=65535.
    #[error("invalid {var} value {value:?}: {source}")]
    BadPort {
        /// `PLUGIN_MIN_PORT` or `PLUGIN_MAX_PORT`.
        var: &'static str,
        /// What it held.
        value: String,
        /// Why it did not parse.
        source: std::num::ParseIntError,
    },
    /// Go's own text for an inverted range.
    #[error("PLUGIN_MIN_PORT value of {min} is greater than PLUGIN_MAX_PORT value of {max}")]
    PortRangeInverted {
        /// Lower bound given.
        min: u16,
        /// Upper bound given.
        max: u16,
    },
    /// Every port of the range is taken (Go: `couldn't bind plugin TCP listener`).
    #[error("couldn't bind plugin TCP listener on 127.0.0.1 ports {min}..={max}")]
    NoFreePort {
        /// Lower bound tried.
        min: u16,
        /// Upper bound tried.
        max: u16,
    },
    /// Binding a TCP listener failed for another reason.
    #[error("couldn't bind plugin TCP listener on {addr}: {source}")]
    TcpBind {
        /// Address tried.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// Binding a unix socket failed (missing or unwritable directory, ...).
    #[error("couldn't bind plugin unix socket {path}: {source}")]
    UnixBind {
        /// Socket path tried.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The socket directory does not exist or is not a directory.
    #[error("unix socket directory {path} is not usable: {reason}")]
    SocketDir {
        /// `PLUGIN_UNIX_SOCKET_DIR` or the temp dir.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The socket path would exceed the kernel's limit.
    #[error("unix socket path {path} is {len} bytes, longer than the {MAX_UNIX_PATH} the kernel accepts")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// `PLUGIN_UNIX_SOCKET_GROUP` names no group.
    #[error("PLUGIN_UNIX_SOCKET_GROUP {group:?} is neither a group name nor a numeric gid of this system")]
    UnknownGroup {
        /// What was given.
        group: String,
    },
    /// chown/chmod of the socket failed.
    #[error("couldn't set group {gid} and mode 0660 on unix socket {path}: {source}")]
    SocketPermissions {
        /// Socket path.
        path: PathBuf,
        /// Target gid.
        gid: u32,
        /// The OS error.
        source: io::Error,
    },
    /// Dialing a peer failed.
    #[error("couldn't connect to {network} address {address}: {source}")]
    Dial {
        /// `unix` or `tcp`.
        network: Network,
        /// Path or host:port.
        address: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Where and how listeners are opened; read from the environment once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenConfig {
    /// Preferred network; unix falls back to tcp where unix sockets are not supported.
    pub network: Network,
    /// Directory for unix sockets (`PLUGIN_UNIX_SOCKET_DIR`), else the temp dir.
    pub socket_dir: Option<PathBuf>,
    /// Group for unix sockets (`PLUGIN_UNIX_SOCKET_GROUP`), name or gid.
    pub socket_group: Option<String>,
    /// TCP port range; `0..=0` lets the OS choose.
    pub min_port: u16,
    /// Upper bound of the range.
    pub max_port: u16,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            network: Network::Unix,
            socket_dir: None,
            socket_group: None,
            min_port: 0,
            max_port: 0,
        }
    }
}

impl ListenConfig {
    /// Reads the plugin-side variables of §2.1 (and goplugin's `GOPLUGIN_NETWORK=tcp`).
    pub fn from_env() -> Result<ListenConfig, TransportError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let port = |name: &'static str| -> Result<u16, TransportError> {
            match var(name) {
                None => Ok(0),
                Some(v) => v.trim().parse().map_err(|source| TransportError::BadPort {
                    var: name,
                    value: v.clone(),
                    source,
                }),
            }
        };
        let network = match var(env::NETWORK).as_deref() {
            Some("tcp") => Network::Tcp,
            _ => Network::Unix,
        };
        // Go plugins read the port range only where they listen on TCP; a unix plugin does not
        // fail on a range it never uses (a TCP fallback then gets the OS's choice).
        let (min_port, max_port) = match (port(env::MIN_PORT), port(env::MAX_PORT)) {
            (Ok(min), Ok(max)) => (min, max),
            (Err(e), _) | (_, Err(e)) if network == Network::Tcp => return Err(e),
            _ => (0, 0),
        };
        Ok(ListenConfig {
            network,
            socket_dir: var(env::UNIX_SOCKET_DIR).map(PathBuf::from),
            socket_group: var(env::UNIX_SOCKET_GROUP),
            min_port,
            max_port,
        })
    }

    /// Opens a listener by these rules; it already accepts connections when this returns.
    pub(crate) fn listen(&self) -> Result<Listener, TransportError> {
        #[cfg(unix)]
        if self.network == Network::Unix {
            match self.listen_unix() {
                Err(TransportError::UnixBind { source, .. }) if unix_unsupported(&source) => {
                    tracing::debug!("unix sockets unavailable ({source}), using tcp");
                }
                other => return other,
            }
        }
        self.listen_tcp()
    }

    #[cfg(unix)]
    fn listen_unix(&self) -> Result<Listener, TransportError> {
        let dir = self.socket_dir.clone().unwrap_or_else(std::env::temp_dir);
        check_dir(&dir)?;
        let gid = match &self.socket_group {
            Some(g) => Some(resolve_group(g)?),
            None => None,
        };
        let (listener, path) = bind_fresh_socket(&dir)?;
        let guard = SocketFile(path.clone());
        if let Some(gid) = gid {
            set_group_and_mode(&path, gid)?;
        }
        Ok(Listener::Unix {
            listener,
            path: guard,
        })
    }

    fn listen_tcp(&self) -> Result<Listener, TransportError> {
        let (min, max) = (self.min_port, self.max_port);
        if min > max {
            return Err(TransportError::PortRangeInverted { min, max });
        }
        if min == 0 && max == 0 {
            return bind_tcp(0).map(Listener::Tcp);
        }
        for port in min.max(1)..=max {
            match bind_tcp(port) {
                Ok(l) => return Ok(Listener::Tcp(l)),
                Err(TransportError::TcpBind { source, .. })
                    if source.kind() == io::ErrorKind::AddrInUse
                        || source.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(e),
            }
        }
        Err(TransportError::NoFreePort { min, max })
    }
}

#[cfg(unix)]
fn unix_unsupported(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EAFNOSUPPORT | Errno::EPROTONOSUPPORT)
    )
}

#[cfg(unix)]
fn check_dir(dir: &Path) -> Result<(), TransportError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(TransportError::SocketDir {
            path: dir.to_path_buf(),
            reason: "not a directory".into(),
        }),
        Err(e) => Err(TransportError::SocketDir {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Binds `plugin<random digits>` in `dir`, retrying on the rare name collision.
#[cfg(unix)]
fn bind_fresh_socket(dir: &Path) -> Result<(UnixListener, PathBuf), TransportError> {
    let mut last = None;
    for _ in 0..16 {
        let path = dir.join(format!("plugin{}", rand::random::<u32>()));
        let len = path.as_os_str().len();
        if len > MAX_UNIX_PATH {
            return Err(TransportError::PathTooLong { path, len });
        }
        match UnixListener::bind(&path) {
            Ok(l) => return Ok((l, path)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some((path, e)),
            Err(source) => return Err(TransportError::UnixBind { path, source }),
        }
    }
    let (path, source) = last.expect("loop ran at least once");
    Err(TransportError::UnixBind { path, source })
}

fn bind_tcp(port: u16) -> Result<TcpListener, TransportError> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| TransportError::TcpBind {
            addr: addr.to_string(),
            source,
        })?;
    std_listener
        .set_nonblocking(true)
        .and_then(|_| TcpListener::from_std(std_listener))
        .map_err(|source| TransportError::TcpBind {
            addr: addr.to_string(),
            source,
        })
}

/// Resolves a group name or numeric gid (name first, as Go's `user.LookupGroup` then `LookupGroupId`).
#[cfg(unix)]
pub(crate) fn resolve_group(group: &str) -> Result<u32, TransportError> {
    if let Ok(Some(g)) = nix::unistd::Group::from_name(group) {
        return Ok(g.gid.as_raw());
    }
    if let Ok(gid) = group.parse::<u32>() {
        if let Ok(Some(g)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
            return Ok(g.gid.as_raw());
        }
    }
    Err(TransportError::UnknownGroup {
        group: group.to_string(),
    })
}

#[cfg(unix)]
fn set_group_and_mode(path: &Path, gid: u32) -> Result<(), TransportError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| TransportError::SocketPermissions {
        path: path.to_path_buf(),
        gid,
        source,
    };
    nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(|e| err(io::Error::from(e)))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)
}

/// Removes a unix socket file when its listener goes away.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct SocketFile(PathBuf);

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An open listener; a unix socket file is removed when this is dropped.
#[derive(Debug)]
pub(crate) enum Listener {
    /// Unix socket and the guard of its file.
    #[cfg(unix)]
    Unix {
        /// The socket.
        listener: UnixListener,
        /// Removes the file on drop.
        path: SocketFile,
    },
    /// Loopback TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// `unix` or `tcp`.
    pub fn network(&self) -> Network {
        match self {
            #[cfg(unix)]
            Listener::Unix { .. } => Network::Unix,
            Listener::Tcp(_) => Network::Tcp,
        }
    }

    /// The address as it goes into a handshake line or a broker `ConnInfo`.
    pub fn address(&self) -> String {
        match self {
            #[cfg(unix)]
            Listener::Unix { path, .. } => path.0.display().to_string(),
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "127.0.0.1:0".into()),
        }
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<Conn> {
        match self {
            #[cfg(unix)]
            Listener::Unix { listener, .. } => Ok(Conn::new(listener.accept().await?.0)),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Conn::new(s))
            }
        }
    }
}

/// Dials a `unix` path or a `tcp` `host:port` (an empty host means loopback, as Go resolves `:1234`).
pub(crate) async fn dial(network: Network, address: &str) -> Result<Conn, TransportError> {
    let err = |source| TransportError::Dial {
        network,
        address: address.to_string(),
        source,
    };
    match network {
        #[cfg(unix)]
        Network::Unix => Ok(Conn::new(UnixStream::connect(address).await.map_err(err)?)),
        #[cfg(not(unix))]
        Network::Unix => Err(err(io::Error::new(
            io::ErrorKind::Unsupported,
            "unix sockets are not supported on this platform",
        ))),
        Network::Tcp => {
            let target = match address.strip_prefix(':') {
                Some(port) => format!("127.0.0.1:{port}"),
                None => address.to_string(),
            };
            let s = TcpStream::connect(target).await.map_err(err)?;
            let _ = s.set_nodelay(true);
            Ok(Conn::new(s))
        }
    }
}

/// Runs one gRPC client connection (HTTP/2) over an already-open connection. The channel does
/// not redial: once that connection is gone, calls fail with `UNAVAILABLE`, as a go-plugin
/// client's do.
pub(crate) async fn grpc_channel(
    conn: Conn,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(conn)));
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let conn = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            async move {
                conn.map(hyper_util::rt::TokioIo::new).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotConnected, "connection already closed")
                })
            }
        }))
        .await
}

/// Any byte stream a gRPC connection can run on.
#[doc(hidden)] // plumbing the crate's integration tests use; not API
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One connection: a socket, a yamux stream, or either inside TLS. tonic serves it and dials
/// through it without knowing which.
#[doc(hidden)] // plumbing the crate's integration tests use; not API
pub struct Conn(Pin<Box<dyn Io>>);

impl Conn {
    /// Boxes a stream.
    pub fn new(io: impl Io) -> Conn {
        Conn(Box::pin(io))
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.as_mut().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[tokio::test]
    async fn unix_socket_lands_in_dir_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ListenConfig {
            socket_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let l = cfg.listen().unwrap();
        let addr = l.address();
        assert_eq!(l.network(), Network::Unix);
        assert_eq!(Path::new(&addr).parent().unwrap(), dir.path());
        assert!(Path::new(&addr)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_prefix("plugin")
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit()));
        dial(Network::Unix, &addr).await.unwrap();
        drop(l);
        assert!(!Path::new(&addr).exists());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn group_socket_gets_mode_0660_and_gid() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        for group in ["daemon", "1"] {
            let cfg = ListenConfig {
                socket_dir: Some(dir.path().to_path_buf()),
                socket_group: Some(group.into()),
                ..Default::default()
            };
            let l = cfg.listen().unwrap();
            let meta = std::fs::metadata(l.address()).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o660);
            assert_eq!(meta.gid(), 1, "group {group}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn unknown_group_and_missing_dir_are_clear_errors() {
        let cfg = ListenConfig {
            socket_group: Some("no-such-group-xyz".into()),
            ..Default::default()
        };
        let e = cfg.listen().unwrap_err().to_string();
        assert!(e.contains("no-such-group-xyz"), "{e}");
        let cfg = ListenConfig {
            socket_dir: Some("/nonexistent/dir".into()),
            ..Default::default()
        };
        let e = cfg.listen().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/dir"), "{e}");
    }

    #[tokio::test]
    async fn tcp_takes_first_free_port_of_range() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let cfg = ListenConfig {
            network: Network::Tcp,
            min_port: port,
            max_port: port.saturating_add(20),
            ..Default::default()
        };
        let l = cfg.listen().unwrap();
        let addr: std::net::SocketAddr = l.address().parse().unwrap();
        assert!(addr.ip().is_loopback());
        assert!(addr.port() > port && addr.port() <= port + 20);
        let full = ListenConfig {
            network: Network::Tcp,
            min_port: port,
            max_port: port,
            ..Default::default()
        };
        assert!(matches!(
            full.listen(),
            Err(TransportError::NoFreePort { .. })
        ));
    }
}
