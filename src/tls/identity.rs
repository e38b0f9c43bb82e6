//! One side's AutoMTLS identity (spec go-plugin-wire.md §6.2): a self-signed P-521 certificate
//! made with go-plugin's `generateCert` template, its key, and their PEM forms.

use std::fmt;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::engine::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::*;

/// One side's AutoMTLS certificate and private key, used in both TLS roles (§6.1).
pub struct Identity {
    pub(super) cert: CertificateDer<'static>,
    pub(super) key: PrivateKeyDer<'static>,
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
pub(super) fn go_plugin_template(now: SystemTime) -> Result<CertificateParams, TlsError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::SystemTime;

    use crate::tls::test_support::*;

    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry::{
        OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P521, OID_SIG_ECDSA_WITH_SHA512,
    };
    use x509_parser::prelude::X509Version;

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
}
