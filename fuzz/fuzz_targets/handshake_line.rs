//! The handshake line a plugin prints on stdout, read by the host (`HandshakeLine::parse`,
//! go-plugin-wire.md §5.2). Properties: never a panic; a parsed line prints as a line that
//! parses back to the same value and prints the same again; field 6, when kept, goes on to the
//! certificate decoder the host uses.
#![no_main]

use goplugin::HandshakeLine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(line) = HandshakeLine::parse(text) else {
        return;
    };
    let printed = line.to_string();
    let again = HandshakeLine::parse(&printed).expect("a printed line parses");
    assert_eq!(again, line, "{printed:?}");
    assert_eq!(again.to_string(), printed);
    if let Some(cert) = &line.server_cert {
        let _ = goplugin::tls::decode_server_cert(cert);
    }
});
