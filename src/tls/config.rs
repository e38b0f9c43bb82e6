//! The rustls configurations of one side (§6.1, §6.3): one identity in both TLS roles, ALPN `h2`,
//! TLS 1.2 and 1.3, dialled as `localhost`; connecting and accepting over any transport.

use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

/// The aws-lc-rs provider, named explicitly so no process-wide default has to be installed.
pub(super) fn provider() -> CryptoProvider {
    aws_lc_rs::default_provider()
}

/// The name to dial with: `localhost`, as go-plugin does on both sides (§6.3, P9).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(LOCALHOST).expect("\"localhost\" is a valid DNS name")
}

/// Both TLS roles of one side (§6.1, §6.3): brokered connections are dialled in both directions,
/// so each side needs a server and a client configuration with the same identity and pins.
#[derive(Clone, Debug)]
pub struct MtlsConfig {
    /// Serves TLS 1.2/1.3 with ALPN `h2`, presenting our identity and requiring a pinned client.
    pub server: Arc<ServerConfig>,
    /// Dials TLS 1.2/1.3 with ALPN `h2`, presenting our identity and accepting a pinned server.
    pub client: Arc<ClientConfig>,
    /// Name sent and checked when dialing: `localhost` for AutoMTLS.
    pub server_name: ServerName<'static>,
}

impl MtlsConfig {
    /// Builds both roles from our identity and the peer certificates we trust.
    ///
    /// ```
    /// use goplugin::tls::{Identity, MtlsConfig, PinnedPeers};
    ///
    /// // Pre-shared TLS between a host and a plugin that know each other's certificates:
    /// // each side trusts exactly the other's (P-521, as AutoMTLS generates).
    /// let host = Identity::generate().unwrap();
    /// let plugin = Identity::generate().unwrap();
    /// let host_side =
    ///     MtlsConfig::new(&host, PinnedPeers::from_pem(&plugin.cert_pem()).unwrap()).unwrap();
    /// let plugin_side =
    ///     MtlsConfig::new(&plugin, PinnedPeers::from_pem(&host.cert_pem()).unwrap()).unwrap();
    /// # let _ = (host_side, plugin_side);
    /// // host: `ClientBuilder::tls(host_side)`; plugin: `Server::tls(plugin_side)`.
    /// ```
    pub fn new(own: &Identity, peers: PinnedPeers) -> Result<Self, TlsError> {
        Self::with_versions(own, peers, rustls::ALL_VERSIONS)
    }

    pub(super) fn with_versions(
        own: &Identity,
        peers: PinnedPeers,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(provider());
        Ok(Self {
            server: Arc::new(server_config(
                own,
                peers.clone(),
                provider.clone(),
                versions,
            )?),
            client: Arc::new(client_config(own, peers, provider, versions)?),
            server_name: server_name(),
        })
    }

    /// Pre-shared TLS (go-plugin's `TLSConfig` / `TLSProvider`): the application's own rustls
    /// configs for both roles and the name to dial. ALPN `h2` is added where missing, since
    /// grpc-go refuses TLS without it.
    pub fn from_rustls(
        mut client: ClientConfig,
        mut server: ServerConfig,
        server_name: ServerName<'static>,
    ) -> Self {
        if !client.alpn_protocols.iter().any(|p| p == b"h2") {
            client.alpn_protocols.push(b"h2".to_vec());
        }
        if !server.alpn_protocols.iter().any(|p| p == b"h2") {
            server.alpn_protocols.push(b"h2".to_vec());
        }
        Self {
            server: Arc::new(server),
            client: Arc::new(client),
            server_name,
        }
    }

    /// Wraps accepted streams (plugin listener, host-side broker listeners).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// Wraps dialled streams; pair it with [`server_name`].
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.clone())
    }

    /// Runs the client side of a TLS handshake over `conn` (ALPN h2, our server name).
    pub(crate) async fn connect(
        &self,
        conn: crate::transport::Conn,
    ) -> std::io::Result<crate::transport::Conn> {
        let tls = self
            .connector()
            .connect(self.server_name.clone(), conn)
            .await?;
        Ok(crate::transport::Conn::new(tls))
    }

    /// Runs the server side of a TLS handshake over `conn`, requiring the pinned client cert.
    pub(crate) async fn accept(
        &self,
        conn: crate::transport::Conn,
    ) -> std::io::Result<crate::transport::Conn> {
        let tls = self.acceptor().accept(conn).await?;
        Ok(crate::transport::Conn::new(tls))
    }
}

fn server_config(
    own: &Identity,
    peers: PinnedPeers,
    provider: Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(PinnedClientVerifier::new(peers)))
        .with_single_cert(vec![own.cert.clone()], own.key.clone_key())
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn client_config(
    own: &Identity,
    peers: PinnedPeers,
    provider: Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(peers)))
        .with_client_auth_cert(vec![own.cert.clone()], own.key.clone_key())
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::tls::test_support::*;
    use rustls::{CertificateError, ClientConfig};
    use tokio_rustls::TlsConnector;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn server_name_is_localhost() {
        assert_eq!(server_name().to_str(), "localhost");
    }

    #[tokio::test]
    async fn mutual_tls13_succeeds_in_both_directions_with_alpn_h2() {
        let host = Identity::generate().expect("generate");
        let plugin = Identity::generate().expect("generate");
        let host_tls = mtls(&host, &plugin);
        let plugin_tls = mtls(&plugin, &host);
        let tls13 = rustls::ProtocolVersion::TLSv1_3;
        assert_mutual_tls(&plugin_tls, &host_tls, tls13).await;
        // Broker connections dialled by the plugin to a host listener.
        assert_mutual_tls(&host_tls, &plugin_tls, tls13).await;
    }

    #[tokio::test]
    async fn mutual_tls12_succeeds_when_either_side_forces_it() {
        let host = Identity::generate().expect("generate");
        let plugin = Identity::generate().expect("generate");
        let tls12 = rustls::ProtocolVersion::TLSv1_2;
        assert_mutual_tls(&mtls(&plugin, &host), &mtls_tls12(&host, &plugin), tls12).await;
        assert_mutual_tls(&mtls_tls12(&plugin, &host), &mtls(&host, &plugin), tls12).await;
        assert_mutual_tls(
            &mtls_tls12(&host, &plugin),
            &mtls_tls12(&plugin, &host),
            tls12,
        )
        .await;
    }

    #[tokio::test]
    async fn mutual_tls_over_loopback_tcp() {
        let host = Identity::generate().expect("generate");
        let plugin = Identity::generate().expect("generate");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = mtls(&plugin, &host).acceptor();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("server handshake");
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.expect("server read");
            tls.write_all(&buf).await.expect("server write");
            tls.shutdown().await.expect("server shutdown");
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut tls = mtls(&host, &plugin)
            .connector()
            .connect(server_name(), tcp)
            .await
            .expect("client handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        tls.write_all(b"echo").await.expect("client write");
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.expect("client read");
        assert_eq!(&buf, b"echo");
        server.await.expect("server task");
    }

    #[tokio::test]
    async fn rejects_client_without_certificate() {
        for versions in [rustls::ALL_VERSIONS, &[&rustls::version::TLS12]] {
            let host = Identity::generate().expect("generate");
            let plugin = Identity::generate().expect("generate");
            let mut anonymous = ClientConfig::builder_with_provider(Arc::new(provider()))
                .with_protocol_versions(versions)
                .expect("versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(pins(
                    &plugin,
                ))))
                .with_no_client_auth();
            anonymous.alpn_protocols = vec![ALPN_H2.to_vec()];
            let connector = TlsConnector::from(Arc::new(anonymous));
            let (server, client) = handshake(mtls(&plugin, &host).acceptor(), connector).await;
            let err = server.expect_err("server must refuse");
            assert_eq!(
                rustls_error(&err),
                Some(&rustls::Error::NoCertificatesPresented),
                "{err}"
            );
            assert_client_refused(client).await;
        }
    }

    #[tokio::test]
    async fn rejects_client_with_unpinned_certificate() {
        for tls12_only in [false, true] {
            let host = Identity::generate().expect("generate");
            let plugin = Identity::generate().expect("generate");
            let impostor = Identity::generate().expect("generate");
            let impostor_tls = if tls12_only {
                mtls_tls12(&impostor, &plugin)
            } else {
                mtls(&impostor, &plugin)
            };
            let (server, client) =
                handshake(mtls(&plugin, &host).acceptor(), impostor_tls.connector()).await;
            let err = server.expect_err("server must refuse");
            let expected = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
            assert_eq!(rustls_error(&err), Some(&expected), "{err}");
            assert_client_refused(client).await;
        }
    }

    #[tokio::test]
    async fn client_rejects_server_with_unpinned_certificate() {
        for tls12_only in [false, true] {
            let host = Identity::generate().expect("generate");
            let plugin = Identity::generate().expect("generate");
            let impostor = Identity::generate().expect("generate");
            let host_tls = if tls12_only {
                mtls_tls12(&host, &plugin)
            } else {
                mtls(&host, &plugin)
            };
            let (server, client) =
                handshake(mtls(&impostor, &host).acceptor(), host_tls.connector()).await;
            let err = client.expect_err("client must refuse");
            let expected = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
            assert_eq!(rustls_error(&err), Some(&expected), "{err}");
            assert!(
                server.is_err(),
                "server must not complete with a refusing client"
            );
        }
    }
}
