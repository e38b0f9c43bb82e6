//! Fixtures shared by the TLS unit tests: a certificate and key written by Go, pinned configs,
//! in-memory handshakes and the refusal checks.

use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use x509_parser::prelude::X509Certificate;

/// A certificate and SEC1 key written by Go's crypto/x509 with go-plugin's template
/// (NotBefore moved back to 2025-01-01 so the fixture stays valid on any sane clock).
pub(crate) const GO_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICUDCCAbGgAwIBAgIRAJtF39PXv6SEaRy6/YlKUhwwCgYIKoZIzj0EAwQwKDES
MBAGA1UEChMJSGFzaGlDb3JwMRIwEAYDVQQDEwlsb2NhbGhvc3QwIBcNMjUwMTAx
MDAwMDAwWhgPMjA1NjExMjgxMzU0NDZaMCgxEjAQBgNVBAoTCUhhc2hpQ29ycDES
MBAGA1UEAxMJbG9jYWxob3N0MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQACh1n
0kOt2njSX1orh0fv5+3Q2mSK7MmKgCew3MRZFcsQK/nk5g1PNLq9eyzunRcgVaXp
nOaMUv9VFSdVQfsnKpYAcV/kAo7X/A4EUcy9JYZmZ6lD6TcgMI38A2l1PRlelLHd
fT1j8blraCgdKD2JMeDa1u15AQqD/McRrRkSWm5QQ0yjdzB1MA4GA1UdDwEB/wQE
AwICrDAdBgNVHSUEFjAUBggrBgEFBQcDAgYIKwYBBQUHAwEwDwYDVR0TAQH/BAUw
AwEB/zAdBgNVHQ4EFgQUdRnDPwQdB+s9r4MBkZgFi/dwvhMwFAYDVR0RBA0wC4IJ
bG9jYWxob3N0MAoGCCqGSM49BAMEA4GMADCBiAJCAKkjkx5Q/PAe+meMxQvOVHmh
d1mst+v6E2V67oh2lyrbr3C0fOLm5ZBf7gNZRa7V+52VuLEDwnEn7MZN7FFzBH1N
AkIBNVobiaSw5SSATBYoj+nkPX5Pck195GttyUzNHOYR99ZFZ1mN7kECOAIgMdSM
ea8mzhpe+eOtStjbMpxaxobS/bQ=
-----END CERTIFICATE-----
";
pub(crate) const GO_KEY_SEC1_PEM: &str = "-----BEGIN EC PRIVATE KEY-----
MIHcAgEBBEIAscVfCrCZCS/Q3MOEdoRuD1mr0l/GCFIxFAOa2HhEARasySCVVTmi
GXfJ6mTrdyQTDd0FGRN6+DyXRoUZC6PyAHGgBwYFK4EEACOhgYkDgYYABAAKHWfS
Q63aeNJfWiuHR+/n7dDaZIrsyYqAJ7DcxFkVyxAr+eTmDU80ur17LO6dFyBVpemc
5oxS/1UVJ1VB+ycqlgBxX+QCjtf8DgRRzL0lhmZnqUPpNyAwjfwDaXU9GV6Usd19
PWPxuWtoKB0oPYkx4NrW7XkBCoP8xxGtGRJablBDTA==
-----END EC PRIVATE KEY-----
";
/// `GO_CERT_PEM`'s DER as Go's `RawStdEncoding` prints it in field 6.
pub(crate) const GO_FIELD6: &str = "MIICUDCCAbGgAwIBAgIRAJtF39PXv6SEaRy6/YlKUhwwCgYIKoZIzj0EAwQwKDESMBAGA1UEChMJSGFzaGlDb3JwMRIwEAYDVQQDEwlsb2NhbGhvc3QwIBcNMjUwMTAxMDAwMDAwWhgPMjA1NjExMjgxMzU0NDZaMCgxEjAQBgNVBAoTCUhhc2hpQ29ycDESMBAGA1UEAxMJbG9jYWxob3N0MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQACh1n0kOt2njSX1orh0fv5+3Q2mSK7MmKgCew3MRZFcsQK/nk5g1PNLq9eyzunRcgVaXpnOaMUv9VFSdVQfsnKpYAcV/kAo7X/A4EUcy9JYZmZ6lD6TcgMI38A2l1PRlelLHdfT1j8blraCgdKD2JMeDa1u15AQqD/McRrRkSWm5QQ0yjdzB1MA4GA1UdDwEB/wQEAwICrDAdBgNVHSUEFjAUBggrBgEFBQcDAgYIKwYBBQUHAwEwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUdRnDPwQdB+s9r4MBkZgFi/dwvhMwFAYDVR0RBA0wC4IJbG9jYWxob3N0MAoGCCqGSM49BAMEA4GMADCBiAJCAKkjkx5Q/PAe+meMxQvOVHmhd1mst+v6E2V67oh2lyrbr3C0fOLm5ZBf7gNZRa7V+52VuLEDwnEn7MZN7FFzBH1NAkIBNVobiaSw5SSATBYoj+nkPX5Pck195GttyUzNHOYR99ZFZ1mN7kECOAIgMdSMea8mzhpe+eOtStjbMpxaxobS/bQ";

pub(crate) type ServerStream = tokio_rustls::server::TlsStream<DuplexStream>;
pub(crate) type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;

pub(crate) fn parsed(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
    assert!(rest.is_empty());
    cert
}

pub(crate) fn go_cert() -> CertificateDer<'static> {
    parse_cert_pem(GO_CERT_PEM).expect("Go fixture").remove(0)
}

/// An identity with go-plugin's template but its validity counted from `now`.
pub(crate) fn identity_at(now: SystemTime) -> Identity {
    let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).expect("key");
    let cert = go_plugin_template(now)
        .expect("template")
        .self_signed(&key_pair)
        .expect("sign");
    let pem = pem_block("PRIVATE KEY", &key_pair.serialize_der());
    Identity::from_pem(&cert.pem(), &pem).expect("identity")
}

pub(crate) fn pins(peer: &Identity) -> PinnedPeers {
    PinnedPeers::from_certs([peer.cert_der().clone()]).expect("pins")
}

pub(crate) fn mtls(own: &Identity, peer: &Identity) -> MtlsConfig {
    MtlsConfig::new(own, pins(peer)).expect("config")
}

pub(crate) fn mtls_tls12(own: &Identity, peer: &Identity) -> MtlsConfig {
    MtlsConfig::with_versions(own, pins(peer), &[&rustls::version::TLS12]).expect("config")
}

pub(crate) async fn handshake(
    acceptor: TlsAcceptor,
    connector: TlsConnector,
) -> (std::io::Result<ServerStream>, std::io::Result<ClientStream>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let both = async {
        tokio::join!(
            acceptor.accept(server_io),
            connector.connect(server_name(), client_io)
        )
    };
    tokio::time::timeout(Duration::from_secs(20), both)
        .await
        .expect("handshake timed out")
}

pub(crate) async fn ping_pong(server: &mut ServerStream, client: &mut ClientStream) {
    client.write_all(b"ping").await.expect("client write");
    client.flush().await.expect("client flush");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("server read");
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.expect("server write");
    server.flush().await.expect("server flush");
    client.read_exact(&mut buf).await.expect("client read");
    assert_eq!(&buf, b"pong");
}

/// Handshakes, checks ALPN `h2` and the version on both ends, and moves bytes both ways.
pub(crate) async fn assert_mutual_tls(
    server: &MtlsConfig,
    client: &MtlsConfig,
    version: rustls::ProtocolVersion,
) {
    let (server_side, client_side) = handshake(server.acceptor(), client.connector()).await;
    let mut server_side = server_side.expect("server handshake");
    let mut client_side = client_side.expect("client handshake");
    let (_, server_conn) = server_side.get_ref();
    assert_eq!(server_conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(server_conn.protocol_version(), Some(version));
    let (_, client_conn) = client_side.get_ref();
    assert_eq!(client_conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(client_conn.protocol_version(), Some(version));
    ping_pong(&mut server_side, &mut client_side).await;
}

pub(crate) fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// In TLS 1.3 the client finishes before the server judges its certificate, so a refused
/// client may only learn it on its first read.
pub(crate) async fn assert_client_refused(client: std::io::Result<ClientStream>) {
    if let Ok(mut stream) = client {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("client read timed out");
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "refused client read {read:?}"
        );
    }
}
