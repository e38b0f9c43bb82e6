//! AutoMTLS: go-plugin's per-process certificates and the pinned-peer mutual TLS built on them
//! (spec go-plugin-wire.md §6, pitfalls P5–P9).
//!
//! Each side generates one self-signed P-521 certificate with go-plugin's template
//! ([`Identity::generate`]). The host hands its certificate to the plugin as PEM in
//! `PLUGIN_CLIENT_CERT` ([`Identity::cert_pem`], read back with [`parse_cert_pem`]); the plugin
//! hands its own back as unpadded base64 DER in handshake field 6 ([`Identity::cert_base64`],
//! read back with [`decode_server_cert`]). Each side then trusts exactly the other's certificate
//! ([`PinnedPeers`]) and uses its single certificate in both TLS roles ([`MtlsConfig`]), because
//! brokered connections are dialled from either side (§6.1, P9).
//!
//! Go's certificates are `CA:TRUE` self-signed leaves, which webpki refuses as end-entity
//! certificates (P7), so the verifiers here are our own: DER equality with a pinned certificate,
//! its validity dates, and the handshake signature checked with the aws-lc-rs algorithms (ring
//! has no P-521, P6).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use base64::engine::{DecodePaddingMode, Engine};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Both sides dial with this name and go-plugin certificates carry it as their only SAN (§6.3, P9).
const LOCALHOST: &str = "localhost";

/// go-plugin backdates NotBefore by 30 s to absorb small clock differences between the processes.
const BACKDATE: Duration = Duration::from_secs(30);

/// go-plugin's certificate lifetime: 262 980 h, about 30 years.
const LIFETIME: Duration = Duration::from_secs(262_980 * 3600);

/// grpc-go ≥ 1.67 refuses TLS connections that do not negotiate `h2` (P8).
const ALPN_H2: &[u8] = b"h2";

/// Field 6 is written by Go's `RawStdEncoding` (no padding, trailing bits not checked); padded
/// input is accepted too so a hand-written line with `=` still works.
const FIELD6_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// What can go wrong while making, reading or using AutoMTLS certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not generate the key pair or sign the certificate.
    #[error("generating the AutoMTLS certificate: {0}")]
    Generate(#[source] rcgen::Error),
    /// The system clock is so far off that the validity window cannot be computed.
    #[error("system clock {now:?} cannot bound a certificate valid from now-30s to now+262980h")]
    ClockOutOfRange {
        /// The clock reading that overflowed.
        now: SystemTime,
    },
    /// Certificate PEM text (such as `PLUGIN_CLIENT_CERT`) is not well-formed PEM.
    #[error("malformed certificate PEM: {reason}")]
    ClientCertPem {
        /// What the PEM parser reported.
        reason: String,
    },
    /// PEM text holds no `CERTIFICATE` block at all.
    #[error("no CERTIFICATE block in the PEM text")]
    NoCertificateInPem,
    /// A certificate's DER bytes are not a parseable X.509 certificate.
    #[error("certificate #{index} is not a valid X.509 certificate: {reason}")]
    CertParse {
        /// Position of the certificate among those given (0 for field 6).
        index: usize,
        /// What the X.509 parser reported.
        reason: String,
    },
    /// Handshake field 6 is not standard-alphabet base64.
    #[error("server certificate in handshake field 6 is not valid base64: {reason}")]
    ServerCertBase64 {
        /// What the base64 decoder reported.
        reason: String,
    },
    /// An identity's certificate PEM must hold exactly one certificate.
    #[error("identity certificate PEM holds {count} certificates, expected exactly one")]
    IdentityCertCount {
        /// How many `CERTIFICATE` blocks were found.
        count: usize,
    },
    /// An identity's private key PEM holds no usable private key block.
    #[error("identity private key PEM: {reason}")]
    KeyPem {
        /// What was wrong with the key text.
        reason: String,
    },
    /// rustls refused the private key, or it does not belong to the certificate.
    #[error("identity private key rejected: {0}")]
    KeyRejected(#[source] rustls::Error),
    /// A pinned set must trust at least one certificate, or every peer is refused.
    #[error("no pinned peer certificate: every peer would be refused")]
    NoPinnedPeer,
    /// rustls refused to build a client or server configuration.
    #[error("building the rustls configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// One side's AutoMTLS certificate and private key, used in both TLS roles (§6.1).
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    key_pem: String,
}

impl Identity {
    /// Generates a fresh identity with go-plugin's template (§6.2): ECDSA P-521 key,
    /// ecdsa-with-SHA512 self-signature, subject `O=HashiCorp, CN=localhost`, SAN `localhost`,
    /// both EKUs, `CA:TRUE`, random 128-bit serial, valid from now−30 s for 262 980 h.
    pub fn generate() -> Result<Self, TlsError> {
        let key_pair =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).map_err(TlsError::Generate)?;
        let cert = go_plugin_template(SystemTime::now())?
            .self_signed(&key_pair)
            .map_err(TlsError::Generate)?;
        let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
        let key_pem = pem_block("PRIVATE KEY", key.secret_der());
        Ok(Self {
            cert: cert.der().clone(),
            key,
            key_pem,
        })
    }

    /// Loads a persisted identity (one `CERTIFICATE` block and its private key, SEC1
    /// `EC PRIVATE KEY` as Go writes it or PKCS#8 `PRIVATE KEY`), so a host can keep its identity
    /// across a reattach (§15).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let [cert]: [CertificateDer<'static>; 1] = parse_cert_pem(cert_pem)?
            .try_into()
            .map_err(|certs: Vec<_>| TlsError::IdentityCertCount { count: certs.len() })?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::KeyPem {
                reason: e.to_string(),
            })?;
        let label = key_label(&key)?;
        CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &provider())
            .map_err(TlsError::KeyRejected)?;
        let key_pem = pem_block(label, key.secret_der());
        Ok(Self { cert, key, key_pem })
    }

    /// The certificate, DER-encoded: what the peer pins.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate as one PEM block with 64-column lines and a trailing newline, as Go's
    /// `pem.Encode` writes it: the value a host puts in `PLUGIN_CLIENT_CERT` (§2.1, §6.1).
    pub fn cert_pem(&self) -> String {
        pem_block("CERTIFICATE", &self.cert)
    }

    /// The certificate as standard-alphabet base64 DER without padding: what a plugin prints in
    /// handshake field 6 (§5.1, P5).
    pub fn cert_base64(&self) -> String {
        STANDARD_NO_PAD.encode(&self.cert)
    }

    /// The private key as PEM (PKCS#8 for generated keys, else the kind it was loaded as), so a
    /// host can persist the identity and reload it with [`Identity::from_pem`].
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            key_pem: self.key_pem.clone(),
        }
    }
}

impl fmt::Debug for Identity {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert_der_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

/// go-plugin's `generateCert` template (§6.2) with validity counted from `now`.
fn go_plugin_template(now: SystemTime) -> Result<CertificateParams, TlsError> {
    let not_before = now.checked_sub(BACKDATE);
    let not_after = now.checked_add(LIFETIME);
    let (Some(not_before), Some(not_after)) = (not_before, not_after) else {
        return Err(TlsError::ClockOutOfRange { now });
    };
    let mut params = CertificateParams::default();
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    // Go's rand.Int(2^128): uniform, encoded as a positive INTEGER.
    params.serial_number = Some(SerialNumber::from_slice(
        &rand::random::<u128>().to_be_bytes(),
    ));
    params.distinguished_name = go_plugin_subject()?;
    params.subject_alt_names = vec![localhost_san()?];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    Ok(params)
}

/// `O=HashiCorp, CN=localhost` in Go's order, as PrintableStrings like Go's encoder picks.
fn go_plugin_subject() -> Result<rcgen::DistinguishedName, TlsError> {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::OrganizationName, printable("HashiCorp")?);
    dn.push(DnType::CommonName, printable(LOCALHOST)?);
    Ok(dn)
}

fn printable(s: &str) -> Result<DnValue, TlsError> {
    let value = rcgen::string::PrintableString::try_from(s).map_err(TlsError::Generate)?;
    Ok(DnValue::PrintableString(value))
}

fn localhost_san() -> Result<SanType, TlsError> {
    let name = rcgen::string::Ia5String::try_from(LOCALHOST).map_err(TlsError::Generate)?;
    Ok(SanType::DnsName(name))
}

fn key_label(key: &PrivateKeyDer<'_>) -> Result<&'static str, TlsError> {
    match key {
        PrivateKeyDer::Pkcs8(_) => Ok("PRIVATE KEY"),
        PrivateKeyDer::Sec1(_) => Ok("EC PRIVATE KEY"),
        PrivateKeyDer::Pkcs1(_) => Ok("RSA PRIVATE KEY"),
        _ => Err(TlsError::KeyPem {
            reason: "unsupported private key encoding".to_owned(),
        }),
    }
}

/// One PEM block laid out like Go's `pem.Encode`: padded base64 in 64-column lines.
fn pem_block(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so splitting bytes never cuts a character.
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads every `CERTIFICATE` block of PEM text such as `PLUGIN_CLIENT_CERT` (§6.1 step 2).
///
/// Go only logs a bad value and then refuses every client; here malformed PEM, a text without
/// any certificate, or a block that is not X.509 is an error so the plugin fails at start-up
/// with a message that says why.
pub fn parse_cert_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::ClientCertPem {
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificateInPem);
    }
    for (index, cert) in certs.iter().enumerate() {
        parse_x509(cert, index)?;
    }
    Ok(certs)
}

/// Decodes handshake field 6 (§5.1): the plugin's certificate as unpadded standard base64 DER
/// (padded input is accepted too); it must parse as X.509, as the Go host requires.
pub fn decode_server_cert(field6: &str) -> Result<CertificateDer<'static>, TlsError> {
    let der = FIELD6_BASE64
        .decode(field6.trim())
        .map_err(|e| TlsError::ServerCertBase64 {
            reason: e.to_string(),
        })?;
    let cert = CertificateDer::from(der);
    parse_x509(&cert, 0)?;
    Ok(cert)
}

/// Validity window of a parsed certificate, in Unix seconds.
#[derive(Clone, Copy, Debug)]
struct Validity {
    not_before: i64,
    not_after: i64,
}

/// Parses `der` as one X.509 certificate with nothing after it, as Go's `x509.ParseCertificate`.
fn parse_x509(der: &[u8], index: usize) -> Result<Validity, TlsError> {
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

/// The aws-lc-rs provider, named explicitly so no process-wide default has to be installed.
fn provider() -> CryptoProvider {
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
    pub fn new(own: &Identity, peers: PinnedPeers) -> Result<Self, TlsError> {
        Self::with_versions(own, peers, rustls::ALL_VERSIONS)
    }

    fn with_versions(
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
    pub async fn connect(
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
    pub async fn accept(
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
    use rustls::pki_types::alg_id;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry::{
        OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P521, OID_SIG_ECDSA_WITH_SHA512,
    };
    use x509_parser::prelude::{X509Certificate, X509Version};

    /// A certificate and SEC1 key written by Go's crypto/x509 with go-plugin's template
    /// (NotBefore moved back to 2025-01-01 so the fixture stays valid on any sane clock).
    const GO_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
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
    const GO_KEY_SEC1_PEM: &str = "-----BEGIN EC PRIVATE KEY-----
MIHcAgEBBEIAscVfCrCZCS/Q3MOEdoRuD1mr0l/GCFIxFAOa2HhEARasySCVVTmi
GXfJ6mTrdyQTDd0FGRN6+DyXRoUZC6PyAHGgBwYFK4EEACOhgYkDgYYABAAKHWfS
Q63aeNJfWiuHR+/n7dDaZIrsyYqAJ7DcxFkVyxAr+eTmDU80ur17LO6dFyBVpemc
5oxS/1UVJ1VB+ycqlgBxX+QCjtf8DgRRzL0lhmZnqUPpNyAwjfwDaXU9GV6Usd19
PWPxuWtoKB0oPYkx4NrW7XkBCoP8xxGtGRJablBDTA==
-----END EC PRIVATE KEY-----
";
    /// `GO_CERT_PEM`'s DER as Go's `RawStdEncoding` prints it in field 6.
    const GO_FIELD6: &str = "MIICUDCCAbGgAwIBAgIRAJtF39PXv6SEaRy6/YlKUhwwCgYIKoZIzj0EAwQwKDESMBAGA1UEChMJSGFzaGlDb3JwMRIwEAYDVQQDEwlsb2NhbGhvc3QwIBcNMjUwMTAxMDAwMDAwWhgPMjA1NjExMjgxMzU0NDZaMCgxEjAQBgNVBAoTCUhhc2hpQ29ycDESMBAGA1UEAxMJbG9jYWxob3N0MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQACh1n0kOt2njSX1orh0fv5+3Q2mSK7MmKgCew3MRZFcsQK/nk5g1PNLq9eyzunRcgVaXpnOaMUv9VFSdVQfsnKpYAcV/kAo7X/A4EUcy9JYZmZ6lD6TcgMI38A2l1PRlelLHdfT1j8blraCgdKD2JMeDa1u15AQqD/McRrRkSWm5QQ0yjdzB1MA4GA1UdDwEB/wQEAwICrDAdBgNVHSUEFjAUBggrBgEFBQcDAgYIKwYBBQUHAwEwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUdRnDPwQdB+s9r4MBkZgFi/dwvhMwFAYDVR0RBA0wC4IJbG9jYWxob3N0MAoGCCqGSM49BAMEA4GMADCBiAJCAKkjkx5Q/PAe+meMxQvOVHmhd1mst+v6E2V67oh2lyrbr3C0fOLm5ZBf7gNZRa7V+52VuLEDwnEn7MZN7FFzBH1NAkIBNVobiaSw5SSATBYoj+nkPX5Pck195GttyUzNHOYR99ZFZ1mN7kECOAIgMdSMea8mzhpe+eOtStjbMpxaxobS/bQ";

    type ServerStream = tokio_rustls::server::TlsStream<DuplexStream>;
    type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;

    fn parsed(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
        assert!(rest.is_empty());
        cert
    }

    fn go_cert() -> CertificateDer<'static> {
        parse_cert_pem(GO_CERT_PEM).expect("Go fixture").remove(0)
    }

    /// An identity with go-plugin's template but its validity counted from `now`.
    fn identity_at(now: SystemTime) -> Identity {
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).expect("key");
        let cert = go_plugin_template(now)
            .expect("template")
            .self_signed(&key_pair)
            .expect("sign");
        let pem = pem_block("PRIVATE KEY", &key_pair.serialize_der());
        Identity::from_pem(&cert.pem(), &pem).expect("identity")
    }

    fn pins(peer: &Identity) -> PinnedPeers {
        PinnedPeers::from_certs([peer.cert_der().clone()]).expect("pins")
    }

    fn mtls(own: &Identity, peer: &Identity) -> MtlsConfig {
        MtlsConfig::new(own, pins(peer)).expect("config")
    }

    fn mtls_tls12(own: &Identity, peer: &Identity) -> MtlsConfig {
        MtlsConfig::with_versions(own, pins(peer), &[&rustls::version::TLS12]).expect("config")
    }

    async fn handshake(
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

    async fn ping_pong(server: &mut ServerStream, client: &mut ClientStream) {
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
    async fn assert_mutual_tls(
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

    fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    }

    /// In TLS 1.3 the client finishes before the server judges its certificate, so a refused
    /// client may only learn it on its first read.
    async fn assert_client_refused(client: std::io::Result<ClientStream>) {
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

    #[test]
    fn generated_cert_matches_go_plugin_template() {
        let before = SystemTime::now();
        let identity = Identity::generate().expect("generate");
        let cert = parsed(identity.cert_der());
        assert_eq!(cert.version(), X509Version::V3);
        let spki = &cert.public_key().algorithm;
        assert_eq!(spki.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
        let curve = spki.parameters.as_ref().and_then(|p| p.as_oid().ok());
        assert_eq!(curve, Some(OID_NIST_EC_P521));
        assert_eq!(
            cert.signature_algorithm.algorithm,
            OID_SIG_ECDSA_WITH_SHA512
        );

        // Same subject bytes as Go: O before CN, both PrintableString; issuer = subject.
        let go_der = go_cert();
        let go = parsed(&go_der);
        assert_eq!(cert.subject().as_raw(), go.subject().as_raw());
        assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
        let attrs: Vec<String> = cert
            .subject()
            .iter_attributes()
            .map(|a| a.as_str().expect("str").to_owned())
            .collect();
        assert_eq!(attrs, ["HashiCorp", "localhost"]);

        let san = cert
            .subject_alternative_name()
            .expect("SAN")
            .expect("SAN present");
        assert_eq!(san.value.general_names, [GeneralName::DNSName("localhost")]);
        let eku = cert
            .extended_key_usage()
            .expect("EKU")
            .expect("EKU present");
        assert!(eku.value.client_auth && eku.value.server_auth);
        assert!(!eku.value.any && !eku.value.code_signing && eku.value.other.is_empty());
        let key_usage = cert.key_usage().expect("KU").expect("KU present");
        let ku = key_usage.value;
        assert!(
            ku.digital_signature()
                && ku.key_encipherment()
                && ku.key_agreement()
                && ku.key_cert_sign()
        );
        assert_eq!(
            ku.flags,
            go.key_usage().expect("KU").expect("Go KU").value.flags
        );
        let bc = cert.basic_constraints().expect("BC").expect("BC present");
        assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
        let has_ski = cert.iter_extensions().any(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::SubjectKeyIdentifier(_)
            )
        });
        let has_aki = cert.iter_extensions().any(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::AuthorityKeyIdentifier(_)
            )
        });
        assert!(has_ski && !has_aki);

        // Same extensions with the same criticality as Go's certificate.
        let mut ours: Vec<(String, bool)> = cert
            .iter_extensions()
            .map(|e| (e.oid.to_id_string(), e.critical))
            .collect();
        let mut gos: Vec<(String, bool)> = go
            .iter_extensions()
            .map(|e| (e.oid.to_id_string(), e.critical))
            .collect();
        ours.sort();
        gos.sort();
        assert_eq!(ours, gos);

        let serial = &cert.tbs_certificate.serial;
        assert!(serial.bits() <= 128 && serial.bits() > 0, "serial {serial}");

        let before_secs = before
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        assert!(
            (before_secs - 31..=before_secs - 29 + 5).contains(&not_before),
            "NotBefore {not_before} vs now {before_secs}"
        );
        assert_eq!(not_after - not_before, 262_980 * 3600 + 30);
    }

    #[test]
    fn generated_serials_differ() {
        let a = Identity::generate().expect("generate");
        let b = Identity::generate().expect("generate");
        assert_ne!(
            parsed(a.cert_der()).raw_serial(),
            parsed(b.cert_der()).raw_serial()
        );
    }

    #[test]
    fn cert_base64_has_no_padding_and_round_trips() {
        let identity = Identity::generate().expect("generate");
        let field6 = identity.cert_base64();
        assert!(!field6.contains('=') && !field6.contains('\n'));
        assert!(field6.len() > 50, "Go ignores field 6 of 50 chars or fewer");
        assert_eq!(
            &decode_server_cert(&field6).expect("decode"),
            identity.cert_der()
        );
    }

    #[test]
    fn decode_server_cert_reads_go_field6_and_padded_base64() {
        assert_eq!(
            decode_server_cert(GO_FIELD6).expect("Go field 6"),
            go_cert()
        );
        let padded = base64::engine::general_purpose::STANDARD.encode(go_cert());
        assert!(padded.ends_with('='), "fixture should need padding");
        assert_eq!(decode_server_cert(&padded).expect("padded"), go_cert());
    }

    #[test]
    fn decode_server_cert_rejects_bad_base64_and_non_certificates() {
        let err = decode_server_cert("not base64!").expect_err("bad base64");
        assert!(matches!(err, TlsError::ServerCertBase64 { .. }), "{err}");
        let err = decode_server_cert(&STANDARD_NO_PAD.encode(b"hello world, not a cert"))
            .expect_err("not X.509");
        assert!(matches!(err, TlsError::CertParse { index: 0, .. }), "{err}");
        let mut with_trailer = go_cert().to_vec();
        with_trailer.push(0);
        let err =
            decode_server_cert(&STANDARD_NO_PAD.encode(with_trailer)).expect_err("trailing data");
        assert!(matches!(err, TlsError::CertParse { .. }), "{err}");
    }

    #[test]
    fn cert_pem_is_laid_out_like_go_pem_encode() {
        let pem = Identity::from_pem(GO_CERT_PEM, GO_KEY_SEC1_PEM)
            .expect("Go identity")
            .cert_pem();
        assert_eq!(pem, GO_CERT_PEM);
        let ours = Identity::generate().expect("generate").cert_pem();
        assert!(
            ours.starts_with("-----BEGIN CERTIFICATE-----\n")
                && ours.ends_with("-----END CERTIFICATE-----\n")
        );
        assert!(ours.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn parse_cert_pem_accepts_one_and_several_blocks() {
        let a = Identity::generate().expect("generate");
        assert_eq!(
            parse_cert_pem(&a.cert_pem()).expect("one"),
            [a.cert_der().clone()]
        );
        // Text around blocks and a key block between them are skipped, as Go's pool does.
        let several = format!(
            "leading text\n{}{}{}",
            a.cert_pem(),
            GO_KEY_SEC1_PEM,
            GO_CERT_PEM
        );
        assert_eq!(
            parse_cert_pem(&several).expect("several"),
            [a.cert_der().clone(), go_cert()]
        );
        assert_eq!(
            parse_cert_pem(&a.cert_pem().replace('\n', "\r\n"))
                .expect("CRLF")
                .len(),
            1
        );
    }

    #[test]
    fn parse_cert_pem_rejects_empty_and_garbage() {
        assert!(matches!(
            parse_cert_pem(""),
            Err(TlsError::NoCertificateInPem)
        ));
        assert!(matches!(
            parse_cert_pem("definitely not PEM"),
            Err(TlsError::NoCertificateInPem)
        ));
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = parse_cert_pem(bad_base64).expect_err("bad base64");
        assert!(matches!(err, TlsError::ClientCertPem { .. }), "{err}");
        let not_x509 = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(b"just some bytes")
        );
        let err = parse_cert_pem(&not_x509).expect_err("not X.509");
        assert!(matches!(err, TlsError::CertParse { index: 0, .. }), "{err}");
    }

    #[test]
    fn parse_cert_pem_rejects_truncated_block() {
        let pem = Identity::generate().expect("generate").cert_pem();
        let no_end = &pem[..pem.len() / 2];
        let err = parse_cert_pem(no_end).expect_err("missing END");
        assert!(matches!(err, TlsError::ClientCertPem { .. }), "{err}");
        // Whole lines cut out of the body: valid base64, truncated DER.
        let lines: Vec<&str> = pem.lines().collect();
        let cut = format!(
            "{}\n{}\n{}\n",
            lines[0],
            lines[1..4].join("\n"),
            lines[lines.len() - 1]
        );
        let err = parse_cert_pem(&format!("{GO_CERT_PEM}{cut}")).expect_err("truncated DER");
        assert!(matches!(err, TlsError::CertParse { index: 1, .. }), "{err}");
    }

    #[test]
    fn parse_cert_pem_rejects_non_certificate_block() {
        assert!(matches!(
            parse_cert_pem(GO_KEY_SEC1_PEM),
            Err(TlsError::NoCertificateInPem)
        ));
        let key_only = Identity::generate().expect("generate").key_pem();
        assert!(matches!(
            parse_cert_pem(&key_only),
            Err(TlsError::NoCertificateInPem)
        ));
    }

    #[test]
    fn identity_from_pem_round_trips_pkcs8_and_go_sec1_keys() {
        let generated = Identity::generate().expect("generate");
        assert!(generated
            .key_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let reloaded =
            Identity::from_pem(&generated.cert_pem(), &generated.key_pem()).expect("reload");
        assert_eq!(reloaded.cert_der(), generated.cert_der());
        assert_eq!(reloaded.key_pem(), generated.key_pem());

        let go = Identity::from_pem(GO_CERT_PEM, GO_KEY_SEC1_PEM).expect("Go SEC1 identity");
        assert_eq!(go.key_pem(), GO_KEY_SEC1_PEM);
        assert_eq!(go.cert_base64(), GO_FIELD6);
    }

    #[tokio::test]
    async fn reloaded_identities_still_handshake() {
        let host = Identity::generate().expect("generate");
        let host = Identity::from_pem(&host.cert_pem(), &host.key_pem()).expect("reload");
        let go_plugin = Identity::from_pem(GO_CERT_PEM, GO_KEY_SEC1_PEM).expect("Go identity");
        let tls13 = rustls::ProtocolVersion::TLSv1_3;
        assert_mutual_tls(&mtls(&go_plugin, &host), &mtls(&host, &go_plugin), tls13).await;
    }

    #[test]
    fn identity_from_pem_rejects_bad_input() {
        let a = Identity::generate().expect("generate");
        let b = Identity::generate().expect("generate");
        let err = Identity::from_pem(&a.cert_pem(), &b.key_pem()).expect_err("mismatched key");
        assert!(matches!(err, TlsError::KeyRejected(_)), "{err}");
        let err = Identity::from_pem(&a.cert_pem(), &a.cert_pem()).expect_err("no key");
        assert!(matches!(err, TlsError::KeyPem { .. }), "{err}");
        let two = format!("{}{}", a.cert_pem(), b.cert_pem());
        let err = Identity::from_pem(&two, &a.key_pem()).expect_err("two certs");
        assert!(
            matches!(err, TlsError::IdentityCertCount { count: 2 }),
            "{err}"
        );
    }

    #[test]
    fn identity_debug_does_not_print_the_key() {
        let identity = Identity::generate().expect("generate");
        let debug = format!("{identity:?}");
        assert!(
            !debug.contains("key_pem") && !debug.contains("PRIVATE"),
            "{debug}"
        );
    }

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
