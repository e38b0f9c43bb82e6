//! AutoMTLS certificates from the other side (`goplugin::tls`, go-plugin-wire.md §5.1, §6.1):
//! `PLUGIN_CLIENT_CERT` PEM (`parse_cert_pem`, `PinnedPeers::from_pem`), handshake field 6
//! (`decode_server_cert`, base64 DER) and a persisted identity (`Identity::from_pem`, as a
//! reattach record carries it).
//!
//! Input: one mode byte, then the value. Mode 0: DER bytes, given to the decoders as field 6
//! (base64, unpadded and padded) and as a PEM block. Mode 1: PEM text. Mode 2: field 6 text.
//! Mode 3: a certificate PEM and a key PEM, separated by a NUL byte.
//!
//! Properties: never a panic; what decodes re-encodes to the same DER; field 6 and PEM agree
//! on the same DER.
#![no_main]

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use goplugin::tls::{decode_server_cert, parse_cert_pem, Identity, PinnedPeers};
use libfuzzer_sys::fuzz_target;

fn pem_of(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn der_both_ways(der: &[u8]) {
    let field6 = decode_server_cert(&STANDARD_NO_PAD.encode(der));
    let padded = decode_server_cert(&STANDARD.encode(der));
    let pem = parse_cert_pem(&pem_of(der));
    assert_eq!(field6.is_ok(), padded.is_ok());
    assert_eq!(field6.is_ok(), pem.is_ok(), "field 6 and PEM disagree");
    if let (Ok(a), Ok(b), Ok(certs)) = (field6, padded, pem) {
        assert_eq!(a.as_ref(), der);
        assert_eq!(b.as_ref(), der);
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].as_ref(), der);
        let peers = PinnedPeers::from_pem(&pem_of(der)).expect("pinned");
        assert!(peers.contains(&a));
    }
}

fn pem_text(text: &str) {
    let certs = parse_cert_pem(text);
    let pinned = PinnedPeers::from_pem(text);
    assert_eq!(certs.is_ok(), pinned.is_ok());
    if let (Ok(certs), Ok(pinned)) = (certs, pinned) {
        assert!(!certs.is_empty());
        for cert in &certs {
            assert!(pinned.contains(cert));
            let again = decode_server_cert(&STANDARD_NO_PAD.encode(cert)).expect("re-decodes");
            assert_eq!(again.as_ref(), cert.as_ref());
        }
    }
}

fn field6_text(text: &str) {
    if let Ok(cert) = decode_server_cert(text) {
        let certs = parse_cert_pem(&pem_of(&cert)).expect("its PEM parses");
        assert_eq!(certs[0].as_ref(), cert.as_ref());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => der_both_ways(rest),
        1 => pem_text(&String::from_utf8_lossy(rest)),
        2 => field6_text(&String::from_utf8_lossy(rest)),
        _ => {
            let text = String::from_utf8_lossy(rest);
            let (cert, key) = text.split_once('\0').unwrap_or((&text, ""));
            if let Ok(identity) = Identity::from_pem(cert, key) {
                let again = Identity::from_pem(&identity.cert_pem(), &identity.key_pem())
                    .expect("a loaded identity reloads");
                assert_eq!(again.cert_der(), identity.cert_der());
            }
        }
    }
});
