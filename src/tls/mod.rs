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

use std::time::{Duration, SystemTime};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;

mod config;
mod identity;
mod pem;
mod pinned;
#[cfg(test)]
mod test_support;

use config::provider;
pub use config::{server_name, MtlsConfig};
#[cfg(test)]
use identity::go_plugin_template;
pub use identity::Identity;
use pem::pem_block;
pub use pem::{decode_server_cert, parse_cert_pem};
use pinned::parse_x509;
pub use pinned::{PinnedClientVerifier, PinnedPeers, PinnedServerVerifier};

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
#[non_exhaustive]
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
