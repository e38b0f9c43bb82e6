//! A reattach record as a host persisted it (`ReattachConfig::from_json`, Go's JSON rules;
//! go-plugin-wire.md §15, Nomad's `pstructs.ReattachConfig`).
//!
//! Properties: never a panic; an accepted record serialises to JSON that both Go's rules and
//! plain serde decode to the same record; its TLS material, when present, goes through the
//! same loading a reattach does (`ReattachTls::config`).
#![no_main]

use goplugin::ReattachConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = ReattachConfig::from_json(text) else {
        return;
    };
    let json = serde_json::to_string(&cfg).expect("serialises");
    assert_eq!(ReattachConfig::from_json(&json).expect("Go rules"), cfg);
    let plain: ReattachConfig = serde_json::from_str(&json).expect("plain serde");
    assert_eq!(plain, cfg);
    if let Some(tls) = &cfg.tls {
        let _ = tls.config();
    }
});
