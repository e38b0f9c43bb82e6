//! Starting a plugin (§2-§5, §18): the environment it gets, spawn, the first stdout line read
//! within the start timeout, version and feature checks, AutoMTLS pinning, connect; a failed
//! start kills and reaps the child and removes its socket directory.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Side};
use crate::handshake::{env, HandshakeLine, Protocol};
use crate::reattach::{ProcessIdentity, ReattachTls};
use crate::tls::{self, Identity, MtlsConfig, PinnedPeers};
use crate::transport::ListenConfig;

use super::*;

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
pub(super) struct Starter {
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
    pub(super) async fn run(b: ClientBuilder) -> Result<Client, ClientError> {
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
                kill_on_drop: b.kill_on_drop,
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
            let gid = crate::transport::resolve_group(g).map_err(std::io::Error::other)?;
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
