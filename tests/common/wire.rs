//! A host's raw connection to a plugin, built from public crates only (tokio, tokio-rustls,
//! tonic) as a host outside this crate would: dial the handshake's address, optionally run TLS
//! with a `goplugin::tls::MtlsConfig`'s connector, run one HTTP/2 gRPC connection over it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use goplugin::tls::MtlsConfig;
use goplugin::Network;
use tokio::io::{AsyncRead, AsyncWrite};

/// Any byte stream a gRPC connection can run on.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// One open connection: a socket, or a socket inside TLS.
pub type Stream = Pin<Box<dyn ByteStream>>;

/// Connects to a plugin's `unix` path or `tcp` `host:port`.
pub async fn dial(network: Network, address: &str) -> io::Result<Stream> {
    Ok(match network {
        Network::Unix => Box::pin(tokio::net::UnixStream::connect(address).await?),
        Network::Tcp => Box::pin(tokio::net::TcpStream::connect(address).await?),
    })
}

/// The client side of a TLS handshake with `tls`'s identity and pinned peers.
pub async fn tls_connect(tls: &MtlsConfig, stream: Stream) -> io::Result<Stream> {
    let stream = tls
        .connector()
        .connect(goplugin::tls::server_name(), stream)
        .await?;
    Ok(Box::pin(stream))
}

/// A gRPC channel over `stream` that never redials (as a go-plugin host's connection).
pub async fn grpc_channel(
    stream: Stream,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let slot = Arc::new(Mutex::new(Some(stream)));
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let stream = slot.lock().unwrap().take();
            async move {
                stream
                    .map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| io::Error::other("connection already used"))
            }
        }))
        .await
}
