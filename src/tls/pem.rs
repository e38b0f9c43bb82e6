//! The two text forms certificates cross the wire in (§5.1, §6.1): PEM in `PLUGIN_CLIENT_CERT`
//! (Go's `pem.Encode` layout) and unpadded base64 DER in handshake field 6.

use base64::engine::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::*;

/// One PEM block laid out like Go's `pem.Encode`: padded base64 in 64-column lines.
pub(super) fn pem_block(label: &str, der: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use base64::engine::Engine;

    use crate::tls::test_support::*;

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
}
