//! Reattaching to a plugin an earlier host process started (§15): the recorded pid checked
//! against its start time, the address dialled, the process polled for liveness.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Side};
use crate::handshake::{Network, Protocol};
use crate::reattach::{ProcessIdentity, ReattachConfig};
use crate::tls::MtlsConfig;
use crate::transport::{self, ListenConfig};

use super::*;

impl Client {
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
                // A reattaching host (Nomad's driver) must not end a task's helper by dropping
                // its handle.
                kill_on_drop: false,
                shutdown_timeout: Duration::from_secs(2),
                socket_dir: Mutex::new(None),
                max_message_size: limit,
            }),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reattach_networks_accept_go_spellings() {
        for n in ["unix", "unixpacket", "tcp", "tcp4", "tcp6"] {
            assert!(reattach_network(n).is_ok(), "{n}");
        }
        assert!(reattach_network("udp").is_err());
    }
}
