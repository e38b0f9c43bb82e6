//! Pinned-peer trust (§6.1, pitfalls P6/P7): the exact peer certificates trusted, by DER
//! equality and validity dates, and the rustls verifiers for both roles built on them (webpki
//! refuses go-plugin's `CA:TRUE` leaves, and ring has no P-521).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::*;

/// Validity window of a parsed certificate, in Unix seconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Validity {
    not_before: i64,
    not_after: i64,
}

/// Parses `der` as one X.509 certificate with nothing after it, as Go's `x509.ParseCertificate`.
pub(super) fn parse_x509(der: &[u8], index: usize) -> Result<Validity, TlsError> {
    let fail = |reason: String| TlsError::CertParse { index, reason };
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| fail(e.to_string()))?;
    if !rest.is_empty() {
        return Err(fail(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let validity = cert.validity();
    Ok(Validity {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// A certificate we trust, with its validity window read once at pinning time.
struct PinnedCert {
    der: CertificateDer<'static>,
    validity: Validity,
}

/// The exact peer certificates trusted (by DER equality), Go's one-certificate trust pool (§6.1).
///
/// Cheap to clone: the certificates are shared.
#[derive(Clone)]
pub struct PinnedPeers {
    certs: Arc<[PinnedCert]>,
}

impl PinnedPeers {
    /// Pins the given certificates; each must parse as X.509 and at least one is required.
    pub fn from_certs(
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let certs = certs
            .into_iter()
            .enumerate()
            .map(|(index, der)| {
                let validity = parse_x509(&der, index)?;
                Ok(PinnedCert { der, validity })
            })
            .collect::<Result<Arc<[_]>, TlsError>>()?;
        if certs.is_empty() {
            return Err(TlsError::NoPinnedPeer);
        }
        Ok(Self { certs })
    }

    /// Pins every certificate of PEM text such as `PLUGIN_CLIENT_CERT` (see [`parse_cert_pem`]).
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        Self::from_certs(parse_cert_pem(pem)?)
    }

    /// Whether `cert` is byte-for-byte one of the pinned certificates.
    pub fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.find(cert).is_some()
    }

    fn find(&self, cert: &CertificateDer<'_>) -> Option<&PinnedCert> {
        self.certs.iter().find(|p| p.der.as_ref() == cert.as_ref())
    }

    /// The TLS-level verdict on a presented leaf: pinned and valid at `now`, as Go checks a leaf
    /// that is itself in the trust pool (§6.3). Intermediates are ignored: the chain is the leaf.
    fn check(&self, end_entity: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let pinned = self
            .find(end_entity)
            .ok_or(CertificateError::UnknownIssuer)?;
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let Validity {
            not_before,
            not_after,
        } = pinned.validity;
        if now_secs < not_before {
            return Err(CertificateError::NotValidYetContext {
                time: now,
                not_before: unix_time(not_before),
            }
            .into());
        }
        if now_secs > not_after {
            return Err(CertificateError::ExpiredContext {
                time: now,
                not_after: unix_time(not_after),
            }
            .into());
        }
        Ok(())
    }
}

impl fmt::Debug for PinnedPeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedPeers")
            .field("count", &self.certs.len())
            .finish()
    }
}

/// Dates before 1970 clamp to the epoch: they only feed an error message.
fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The handshake-signature half shared by both verifiers.
#[derive(Debug)]
struct PinnedSignatures {
    peers: PinnedPeers,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedSignatures {
    fn new(peers: PinnedPeers) -> Self {
        Self {
            peers,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client-side check of the server's certificate: exactly a pinned one, valid now, with a good
/// handshake signature (P7).
///
/// The server name is not matched against the certificate: the pinned certificate is the one the
/// peer handed us, so its SAN adds nothing, and Go's SAN is always `localhost` anyway.
/// On TLS 1.2 Go signs with a P-521 key using ECDSA-SHA384; the aws-lc-rs table accepts that.
#[derive(Debug)]
pub struct PinnedServerVerifier(PinnedSignatures);

impl PinnedServerVerifier {
    /// A verifier that trusts exactly `peers`, with aws-lc-rs signature algorithms.
    pub fn new(peers: PinnedPeers) -> Self {
        Self(PinnedSignatures::new(peers))
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.peers.check(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Server-side check of the client's certificate: mandatory, exactly a pinned one, valid now,
/// with a good handshake signature.
///
/// No root hint subjects are sent: a hint that is not a complete DER Name makes Go silently
/// send no certificate, and Go needs none to pick its only one.
#[derive(Debug)]
pub struct PinnedClientVerifier(PinnedSignatures);

impl PinnedClientVerifier {
    /// A verifier that requires a client certificate and trusts exactly `peers`.
    pub fn new(peers: PinnedPeers) -> Self {
        Self(PinnedSignatures::new(peers))
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.peers.check(end_entity, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, SystemTime};

    use rustls::client::danger::ServerCertVerifier;

    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::danger::ClientCertVerifier;

    use rustls::{CertificateError, SignatureScheme};

    use crate::tls::test_support::*;
    use rustls::pki_types::alg_id;

    #[test]
    fn pinned_peers_must_not_be_empty() {
        let none: [CertificateDer<'static>; 0] = [];
        assert!(matches!(
            PinnedPeers::from_certs(none),
            Err(TlsError::NoPinnedPeer)
        ));
        let peers = PinnedPeers::from_pem(GO_CERT_PEM).expect("pins");
        assert!(peers.contains(&go_cert()));
        let other = Identity::generate().expect("generate");
        assert!(!peers.contains(other.cert_der()));
    }

    #[test]
    fn verifiers_refuse_unpinned_expired_and_not_yet_valid_certs() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let expired = identity_at(now - LIFETIME - day);
        let future = identity_at(now + day);
        let stranger = Identity::generate().expect("generate");
        let peers =
            PinnedPeers::from_certs([expired.cert_der().clone(), future.cert_der().clone()])
                .expect("pins");
        let client_side = PinnedServerVerifier::new(peers.clone());
        let server_side = PinnedClientVerifier::new(peers);
        let at = UnixTime::now();
        let verdict = |cert: &Identity| {
            let by_client = client_side
                .verify_server_cert(cert.cert_der(), &[], &server_name(), &[], at)
                .map(|_| ());
            let by_server = server_side
                .verify_client_cert(cert.cert_der(), &[], at)
                .map(|_| ());
            assert_eq!(by_client, by_server);
            by_client.expect_err("must be refused")
        };
        let cert_error = |e: rustls::Error| match e {
            rustls::Error::InvalidCertificate(c) => c,
            other => panic!("not a certificate error: {other}"),
        };
        assert!(matches!(
            cert_error(verdict(&expired)),
            CertificateError::ExpiredContext { .. }
        ));
        assert!(matches!(
            cert_error(verdict(&future)),
            CertificateError::NotValidYetContext { .. }
        ));
        assert_eq!(
            cert_error(verdict(&stranger)),
            CertificateError::UnknownIssuer
        );
    }

    #[test]
    fn client_verifier_requires_auth_and_sends_no_root_hints() {
        let verifier = PinnedClientVerifier::new(PinnedPeers::from_pem(GO_CERT_PEM).expect("pins"));
        assert!(verifier.offer_client_auth() && verifier.client_auth_mandatory());
        assert!(verifier.root_hint_subjects().is_empty());
    }

    #[test]
    fn verifiers_advertise_p521_and_accept_p521_sha384_on_tls12() {
        let peers = PinnedPeers::from_pem(GO_CERT_PEM).expect("pins");
        let schemes = PinnedServerVerifier::new(peers.clone()).supported_verify_schemes();
        assert!(schemes.contains(&SignatureScheme::ECDSA_NISTP521_SHA512));
        assert_eq!(
            schemes,
            PinnedClientVerifier::new(peers).supported_verify_schemes()
        );
        // Go on TLS 1.2 signs with a P-521 key under the first usable scheme: ECDSA-SHA384.
        let algorithms = provider().signature_verification_algorithms;
        let sha384 = algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == SignatureScheme::ECDSA_NISTP384_SHA384)
            .map(|(_, algs)| *algs)
            .expect("ECDSA-SHA384 scheme");
        assert!(sha384
            .iter()
            .any(|alg| alg.public_key_alg_id() == alg_id::ECDSA_P521));
    }
}
