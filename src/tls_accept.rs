//! TLS on accepted connections (spec go-plugin-wire.md §6): the plugin's main listener and its
//! brokered listeners hand every connection to the AutoMTLS handshake, bounded in time and in
//! number. go-plugin hosts finish the handshake within milliseconds of connecting; a peer that
//! connects and says nothing (or too slowly) would otherwise hold a descriptor until it leaves,
//! and enough of them exhaust the plugin's descriptors and lock every host out. Every connection
//! ready for gRPC goes through [`AuthorityRepair`] (h2_authority.rs), so a gRPC core host's
//! unix-socket authority is accepted as grpc-go accepts it.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use crate::h2_authority::AuthorityRepair;
use crate::tls::MtlsConfig;
use crate::transport::Conn;

/// How long a connection may take to complete the TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; connections beyond are closed at once.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 32;

/// Connections ready for gRPC: as they come without TLS, else after a TLS handshake that must
/// finish within [`HANDSHAKE_TIMEOUT`], at most [`MAX_PENDING_HANDSHAKES`] at a time.
pub(crate) fn tls_incoming(
    conns: impl Stream<Item = Conn> + Send + 'static,
    tls: Option<MtlsConfig>,
) -> impl Stream<Item = Result<Conn, std::io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<Conn, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut conns = std::pin::pin!(conns);
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        while let Some(conn) = conns.next().await {
            let Some(tls) = &tls else {
                if tx.send(Ok(ready(conn))).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tracing::warn!(
                    "{MAX_PENDING_HANDSHAKES} TLS handshakes already in progress; closing a new connection"
                );
                drop(conn);
                continue;
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(conn)).await;
                drop(permit);
                match accepted {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(ready(conn))).await;
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake with peer failed: {e}"),
                    Err(_) => tracing::debug!(
                        "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}; connection closed"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A connection as the gRPC server reads it.
fn ready(conn: Conn) -> Conn {
    Conn::new(AuthorityRepair::new(conn))
}
