//! Nomad's per-task helper plugins (spec nomad-executor-logmon.md), Linux only.

pub mod agent;
pub mod combined;
pub mod driver;
pub mod executor;
pub mod logmon;

use crate::HandshakeConfig;

/// Nomad's plugin cookie variable (`plugins/base/plugin.go`, §2.1).
pub const MAGIC_COOKIE_KEY: &str = "NOMAD_PLUGIN_MAGIC_COOKIE";
/// Its value.
pub const MAGIC_COOKIE_VALUE: &str =
    "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255";

/// Nomad's handshake: its cookie, application protocol 2.
pub fn handshake() -> HandshakeConfig {
    HandshakeConfig::new(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE).with_protocol_version(2)
}
