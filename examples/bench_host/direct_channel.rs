//! A gRPC channel straight on one HTTP/2 connection: hyper's `http2::SendRequest` as the service
//! under tonic's generated clients, which accept any `tonic::client::GrpcService`. bench_host
//! measures it against tonic's `Channel` (spec go-plugin-wire.md §7: the host's one gRPC
//! connection to the plugin).
//!
//! Why it exists: tonic's `Channel` puts a `tower::buffer::Buffer` in front of its connection, a
//! worker task every call is handed to and answered from (a cross-thread hop on a multi-thread
//! runtime), plus `Reconnect`, which a plugin connection never needs (go-plugin does not redial
//! either). `SendRequest` is `Clone` and needs no worker. Measured in BENCHMARKS.md: the win is
//! small (hyper's own dispatch task and per-request task remain), so `goplugin::Client` keeps
//! tonic's `Channel` and this stays a benchmark-side experiment.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;

use tokio::io::{AsyncRead, AsyncWrite};

/// What can fail on a [`DirectChannel`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectChannelError {
    /// The HTTP/2 preface and SETTINGS exchange with the plugin failed.
    #[error("HTTP/2 handshake with the plugin failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The connection is closed or the request could not be sent or answered.
    #[error("gRPC request {path} on the plugin connection failed: {source}")]
    Request {
        /// The request's path, `/package.Service/Method`.
        path: String,
        /// hyper's error (its source is h2's, which tonic maps to a status code).
        #[source]
        source: hyper::Error,
    },
    /// The request's URI could not take the connection's scheme and authority.
    #[error("gRPC request URI {uri} is not a path: {source}")]
    Uri {
        /// The URI tonic built.
        uri: String,
        /// Why it could not be completed.
        #[source]
        source: http::uri::InvalidUriParts,
    },
}

/// A cloneable gRPC channel on one HTTP/2 connection; pass it where a generated client takes a
/// channel (`KvClient::new(channel)`). The connection is driven by a spawned task that ends when
/// the peer closes it or the last clone is dropped.
#[derive(Clone, Debug)]
pub struct DirectChannel {
    send: http2::SendRequest<Body>,
}

impl DirectChannel {
    /// Runs the HTTP/2 handshake on `io` (a connected socket, possibly inside TLS) with hyper's
    /// default settings, the ones tonic's `Channel` uses too, and spawns the connection task on
    /// the current tokio runtime.
    pub async fn handshake(
        io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
    ) -> Result<DirectChannel, DirectChannelError> {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(DirectChannelError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("plugin HTTP/2 connection ended: {e}");
            }
        });
        Ok(DirectChannel { send })
    }
}

/// The response of one call, as hyper returns it.
pub type DirectResponseFuture = Pin<
    Box<
        dyn Future<Output = Result<http::Response<hyper::body::Incoming>, DirectChannelError>>
            + Send,
    >,
>;

impl tower::Service<http::Request<Body>> for DirectChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = DirectChannelError;
    type Future = DirectResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send
            .poll_ready(cx)
            .map_err(|source| DirectChannelError::Request {
                path: String::new(),
                source,
            })
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        // tonic's generated clients send a path only; h2 needs :scheme and :authority, which
        // tonic's Channel adds from its endpoint (`http://localhost`, as go-plugin dials).
        if let Err(e) = with_origin(req.uri_mut()) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let sent = self.send.send_request(req);
        Box::pin(async move {
            sent.await
                .map_err(|source| DirectChannelError::Request { path, source })
        })
    }
}

fn with_origin(uri: &mut Uri) -> Result<(), DirectChannelError> {
    let mut parts = std::mem::take(uri).into_parts();
    let shown = format!("{:?}", parts.path_and_query);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(Authority::from_static("localhost"));
    *uri =
        Uri::from_parts(parts).map_err(|source| DirectChannelError::Uri { uri: shown, source })?;
    Ok(())
}
