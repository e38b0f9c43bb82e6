//! The main connection to a plugin (§5, §6, §9): a raw transport connection or the first stream
//! of a yamux session, TLS on it when configured, and gRPC over that.

use tonic::transport::Channel;

use crate::broker::Broker;
use crate::handshake::HandshakeLine;
use crate::tls::MtlsConfig;
use crate::transport::{self, Conn};

use super::*;

/// Connects the main gRPC channel: one raw connection, or the first stream of a yamux session.
pub(super) async fn connect_main(
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

pub(super) async fn connect_channel(
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
