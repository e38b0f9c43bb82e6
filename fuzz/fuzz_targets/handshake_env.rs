//! What a plugin reads from the host's environment before its handshake (go-plugin-wire.md
//! §2.1, §3): `PLUGIN_PROTOCOL_VERSIONS`, `PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT`, `GOPLUGIN_NETWORK`,
//! `PLUGIN_MULTIPLEX_GRPC`. Input: those five values, one a line, in that order.
//!
//! Properties: every entry of the versions list is either a version or reported invalid;
//! negotiation picks the highest common version, else the plugin's lowest; the port range is
//! read exactly as trimmed decimal u16s when the plugin listens on TCP, and never fails a unix
//! plugin.
#![no_main]

use std::collections::BTreeSet;

use goplugin::fuzzing::{negotiate, parse_go_bool, HostVersions};
use goplugin::handshake::env;
use goplugin::{ListenConfig, Network};
use libfuzzer_sys::fuzz_target;

fn set_var(name: &str, value: &str) {
    if value.is_empty() {
        std::env::remove_var(name);
    } else {
        std::env::set_var(name, value);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains('\0') {
        return; // cannot be in an environment variable
    }
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let (versions, min, max, network, mux) = (next(), next(), next(), next(), next());

    let host = HostVersions::parse(versions);
    let entries = if versions.is_empty() {
        0
    } else {
        versions.split(',').count()
    };
    assert!(host.versions.len() + host.invalid.len() <= entries);
    for bad in &host.invalid {
        // Go's strict rule: an optional `+`, then decimal digits that fit.
        let digits = bad.strip_prefix('+').unwrap_or(bad);
        let strict = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        assert!(
            !strict || digits.parse::<u32>().is_err(),
            "{bad:?} reported invalid"
        );
    }
    for plugin in [
        BTreeSet::from([1]),
        BTreeSet::from([2, 3]),
        BTreeSet::from([1, 5, 7]),
    ] {
        let chosen = negotiate(&plugin, &host).expect("a plugin with versions picks one");
        assert!(plugin.contains(&chosen));
        match plugin.iter().rev().find(|v| host.versions.contains(v)) {
            Some(common) => assert_eq!(chosen, *common),
            None => assert_eq!(chosen, *plugin.first().unwrap()),
        }
    }
    let _ = parse_go_bool(mux);

    set_var(env::MIN_PORT, min);
    set_var(env::MAX_PORT, max);
    set_var(env::NETWORK, network);
    set_var(env::UNIX_SOCKET_DIR, "");
    set_var(env::UNIX_SOCKET_GROUP, "");
    let tcp = network == "tcp";
    let port = |v: &str| {
        if v.is_empty() {
            Ok(0)
        } else {
            v.trim().parse::<u16>()
        }
    };
    match ListenConfig::from_env() {
        Ok(cfg) => {
            assert_eq!(cfg.network, if tcp { Network::Tcp } else { Network::Unix });
            match (port(min), port(max)) {
                (Ok(a), Ok(b)) => assert_eq!((cfg.min_port, cfg.max_port), (a, b)),
                _ => {
                    assert!(!tcp, "bad ports accepted for tcp: {min:?} {max:?}");
                    assert_eq!((cfg.min_port, cfg.max_port), (0, 0));
                }
            }
        }
        Err(e) => assert!(tcp && (port(min).is_err() || port(max).is_err()), "{e}"),
    }
});
