//! The go-plugin handshake: configuration shared by host and plugin, the environment variables
//! that carry it, application protocol-version negotiation and the stdout handshake line
//! (spec go-plugin-wire.md §2, §3, §5).

use std::fmt;

use crate::negotiate::parse_go_bool;

/// The core protocol version: field 1 of every handshake line.
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// Environment variables of the go-plugin protocol (spec §2.1).
pub mod env {
    /// Lower bound of the TCP port range for plugin listeners.
    pub const MIN_PORT: &str = "PLUGIN_MIN_PORT";
    /// Upper bound of the TCP port range for plugin listeners.
    pub const MAX_PORT: &str = "PLUGIN_MAX_PORT";
    /// Comma-separated application protocol versions the host supports.
    pub const PROTOCOL_VERSIONS: &str = "PLUGIN_PROTOCOL_VERSIONS";
    /// Set (to `true`) when the host wants a multiplexed broker.
    pub const MULTIPLEX_GRPC: &str = "PLUGIN_MULTIPLEX_GRPC";
    /// The host's AutoMTLS certificate, PEM.
    pub const CLIENT_CERT: &str = "PLUGIN_CLIENT_CERT";
    /// Group (name or gid) that must own the plugin's unix sockets, mode 0660.
    pub const UNIX_SOCKET_GROUP: &str = "PLUGIN_UNIX_SOCKET_GROUP";
    /// Directory in which the plugin creates its unix sockets.
    pub const UNIX_SOCKET_DIR: &str = "PLUGIN_UNIX_SOCKET_DIR";
    /// goplugin's own extension: `tcp` makes a Rust plugin listen on loopback TCP even where
    /// unix sockets work (Go plugins choose by OS only).
    pub const NETWORK: &str = "GOPLUGIN_NETWORK";
}

/// What host and plugin must agree on before anything else: the magic cookie and the
/// application protocol version(s).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeConfig {
    /// The legacy single application protocol version (Go's `HandshakeConfig.ProtocolVersion`).
    pub protocol_version: u32,
    /// Environment variable name of the magic cookie, e.g. `BASIC_PLUGIN`.
    pub magic_cookie_key: String,
    /// Value the cookie variable must hold, e.g. `hello`.
    pub magic_cookie_value: String,
}

impl HandshakeConfig {
    /// A handshake with protocol version 1 and the given cookie.
    ///
    /// ```
    /// use goplugin::HandshakeConfig;
    ///
    /// // upstream's examples/grpc contract: cookie BASIC_PLUGIN=hello, protocol version 1.
    /// let kv = HandshakeConfig::new("BASIC_PLUGIN", "hello");
    /// assert_eq!(kv.protocol_version, 1);
    /// // Nomad's helpers speak version 2 under NOMAD_PLUGIN_MAGIC_COOKIE.
    /// let nomad = HandshakeConfig::new(
    ///     "NOMAD_PLUGIN_MAGIC_COOKIE",
    ///     "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
    /// )
    /// .with_protocol_version(2);
    /// assert_eq!(nomad.protocol_version, 2);
    /// ```
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            protocol_version: 1,
            magic_cookie_key: key.into(),
            magic_cookie_value: value.into(),
        }
    }

    /// The same handshake with another protocol version.
    pub fn with_protocol_version(mut self, version: u32) -> Self {
        self.protocol_version = version;
        self
    }
}

/// Transport of the plugin's services (field 5 of the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC over HTTP/2: the only protocol this crate speaks.
    Grpc,
    /// Go's net/rpc with gob: recognised in lines, never served.
    NetRpc,
}

impl Protocol {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::NetRpc => "netrpc",
        }
    }
}

/// Network of the plugin's listener (field 3 of the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// A unix domain socket; the address is its path.
    Unix,
    /// Loopback TCP; the address is `host:port`.
    Tcp,
}

impl Network {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Unix => "unix",
            Network::Tcp => "tcp",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Network> {
        match s {
            "unix" => Some(Network::Unix),
            "tcp" => Some(Network::Tcp),
            _ => None,
        }
    }

    /// Parses a Go network name as Nomad persists it in a reattach record (nomad-executor-logmon.md
    /// §2.6: `unix*`, `tcp*`, e.g. `unixpacket`, `tcp4`): the wire spelling it starts with.
    pub(crate) fn parse_go(s: &str) -> Option<Network> {
        ["unix", "tcp"]
            .into_iter()
            .find(|wire| s.starts_with(wire))
            .and_then(Network::parse)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors reading a handshake line or the handshake environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Fewer than four `|`-separated fields (Go: `Unrecognized remote plugin message`).
    #[error("Unrecognized remote plugin message: {line}")]
    Unrecognized {
        /// The offending line.
        line: String,
    },
    /// Field 1 is not an integer.
    #[error("error parsing core protocol version {value:?}: {reason}")]
    BadCoreVersion {
        /// Field 1.
        value: String,
        /// Why it did not parse.
        reason: String,
    },
    /// Field 1 is an integer other than 1.
    #[error(
        "incompatible core API version with plugin. Plugin version: {plugin}, Core version: {core}"
    )]
    IncompatibleCore {
        /// What the plugin announced.
        plugin: u32,
        /// What we speak.
        core: u32,
    },
    /// Field 2 is not an integer.
    #[error("error parsing protocol version {value:?}: {reason}")]
    BadAppVersion {
        /// Field 2.
        value: String,
        /// Why it did not parse.
        reason: String,
    },
    /// Field 3 is neither `unix` nor `tcp`.
    #[error("unknown address type: {network}")]
    UnknownNetwork {
        /// Field 3.
        network: String,
    },
    /// Field 5 is neither `grpc` nor `netrpc`.
    #[error("unsupported plugin protocol {protocol:?}")]
    UnknownProtocol {
        /// Field 5.
        protocol: String,
    },
    /// Field 7 is not a Go boolean.
    #[error("error parsing {value:?} as a boolean for gRPC broker multiplexing support")]
    BadMuxField {
        /// Field 7.
        value: String,
    },
}

/// The one line a plugin prints on stdout (spec §5):
/// `CORE|APPVER|NETWORK|ADDRESS|PROTOCOL|SERVERCERT[|MUX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeLine {
    /// Field 1, always 1 when valid.
    pub core_version: u32,
    /// Field 2: negotiated application protocol version.
    pub app_version: u32,
    /// Field 3.
    pub network: Network,
    /// Field 4: socket path or `host:port`.
    pub address: String,
    /// Field 5 (`netrpc` when absent, as Go hosts read it).
    pub protocol: Protocol,
    /// Field 6: the plugin's AutoMTLS certificate, unpadded standard base64 of the DER;
    /// `None` when empty or not longer than 50 characters (Go's rule).
    pub server_cert: Option<String>,
    /// Field 7: `Some(true)` when the plugin supports a multiplexed broker, `None` when absent.
    pub multiplex: Option<bool>,
}

impl HandshakeLine {
    /// Parses a line with go-plugin's host rules (§5.2): whitespace trimmed, split on every `|`,
    /// at least four fields, field 6 kept only when longer than 50 characters.
    ///
    /// ```
    /// use goplugin::{HandshakeLine, Network, Protocol};
    ///
    /// // What a go-plugin plugin prints on stdout once it listens (no AutoMTLS certificate).
    /// let line = HandshakeLine::parse("1|1|unix|/tmp/plugin2817362041|grpc|\n").unwrap();
    /// assert_eq!((line.core_version, line.app_version), (1, 1));
    /// assert_eq!(line.network, Network::Unix);
    /// assert_eq!(line.address, "/tmp/plugin2817362041");
    /// assert_eq!(line.protocol, Protocol::Grpc);
    /// assert_eq!(line.server_cert, None);
    /// // And back, byte for byte as go-plugin writes it.
    /// assert_eq!(line.to_string(), "1|1|unix|/tmp/plugin2817362041|grpc|");
    /// // Go's own error texts for a line that is not one.
    /// let err = HandshakeLine::parse("hello").unwrap_err();
    /// assert!(err.to_string().contains("Unrecognized remote plugin message"));
    /// ```
    pub fn parse(line: &str) -> Result<HandshakeLine, HandshakeError> {
        let line = line.trim();
        let parts: Vec<&str> = line.split('|').collect();
        if parts.len() < 4 {
            return Err(HandshakeError::Unrecognized {
                line: line.to_string(),
            });
        }
        let core_version: u32 = parts[0].parse().map_err(|e: std::num::ParseIntError| {
            HandshakeError::BadCoreVersion {
                value: parts[0].to_string(),
                reason: e.to_string(),
            }
        })?;
        if core_version != CORE_PROTOCOL_VERSION {
            return Err(HandshakeError::IncompatibleCore {
                plugin: core_version,
                core: CORE_PROTOCOL_VERSION,
            });
        }
        let app_version: u32 = parts[1].parse().map_err(|e: std::num::ParseIntError| {
            HandshakeError::BadAppVersion {
                value: parts[1].to_string(),
                reason: e.to_string(),
            }
        })?;
        let network = Network::parse(parts[2]).ok_or_else(|| HandshakeError::UnknownNetwork {
            network: parts[2].to_string(),
        })?;
        let protocol = match parts.get(4).copied() {
            None | Some("netrpc") => Protocol::NetRpc,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(HandshakeError::UnknownProtocol {
                    protocol: other.to_string(),
                })
            }
        };
        let server_cert = parts.get(5).filter(|c| c.len() > 50).map(|c| c.to_string());
        let multiplex = match parts.get(6) {
            None => None,
            Some(v) => Some(parse_go_bool(v).ok_or_else(|| HandshakeError::BadMuxField {
                value: v.to_string(),
            })?),
        };
        Ok(HandshakeLine {
            core_version,
            app_version,
            network,
            address: parts[3].to_string(),
            protocol,
            server_cert,
            multiplex,
        })
    }
}

impl fmt::Display for HandshakeLine {
    /// Formats the line exactly as a Go gRPC plugin prints it, without the trailing newline:
    /// field 6 always present (empty without AutoMTLS), field 7 only when `multiplex` is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|{}|{}|{}|{}|{}",
            self.core_version,
            self.app_version,
            self.network,
            self.address,
            self.protocol.as_str(),
            self.server_cert.as_deref().unwrap_or("")
        )?;
        if let Some(mux) = self.multiplex {
            write!(f, "|{mux}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_plain_grpc_line_with_empty_field_six() {
        let line = HandshakeLine {
            core_version: 1,
            app_version: 1,
            network: Network::Unix,
            address: "/tmp/plugin2817362041".into(),
            protocol: Protocol::Grpc,
            server_cert: None,
            multiplex: None,
        };
        assert_eq!(line.to_string(), "1|1|unix|/tmp/plugin2817362041|grpc|");
    }

    #[test]
    fn formats_mux_field_after_empty_cert() {
        let line = HandshakeLine {
            core_version: 1,
            app_version: 1,
            network: Network::Unix,
            address: "/tmp/plugin77".into(),
            protocol: Protocol::Grpc,
            server_cert: None,
            multiplex: Some(true),
        };
        assert_eq!(line.to_string(), "1|1|unix|/tmp/plugin77|grpc||true");
    }

    #[test]
    fn the_line_takes_wire_spellings_and_reattach_records_gos() {
        assert_eq!(
            Network::parse("tcp4"),
            None,
            "the line is strict, as go-plugin's"
        );
        for (go, wire) in [("unixpacket", Network::Unix), ("tcp6", Network::Tcp)] {
            assert_eq!(Network::parse_go(go), Some(wire), "{go}");
            assert_eq!(Network::parse_go(wire.as_str()), Some(wire));
        }
        assert_eq!(Network::parse_go("udp"), None);
        assert_eq!(Network::parse_go(""), None);
    }

    #[test]
    fn parses_minimal_four_field_line_as_netrpc() {
        let l = HandshakeLine::parse("1|1|tcp|:1234\n").unwrap();
        assert_eq!(l.network, Network::Tcp);
        assert_eq!(l.address, ":1234");
        assert_eq!(l.protocol, Protocol::NetRpc);
        assert_eq!(l.server_cert, None);
        assert_eq!(l.multiplex, None);
    }

    #[test]
    fn ignores_short_field_six_and_reads_mux() {
        let l = HandshakeLine::parse("1|1|tcp|:1234|grpc|short|false\r\n").unwrap();
        assert_eq!(l.server_cert, None);
        assert_eq!(l.multiplex, Some(false));
        let long = "A".repeat(51);
        let l = HandshakeLine::parse(&format!("1|2|unix|/s|grpc|{long}|true")).unwrap();
        assert_eq!(l.server_cert.as_deref(), Some(long.as_str()));
        assert_eq!(l.multiplex, Some(true));
    }

    #[test]
    fn rejects_bad_lines_with_go_texts() {
        assert_eq!(
            HandshakeLine::parse("lolinvalid").unwrap_err().to_string(),
            "Unrecognized remote plugin message: lolinvalid"
        );
        assert!(matches!(
            HandshakeLine::parse("2|1|tcp|:1"),
            Err(HandshakeError::IncompatibleCore { plugin: 2, core: 1 })
        ));
        assert!(matches!(
            HandshakeLine::parse("1|1|udp|:1"),
            Err(HandshakeError::UnknownNetwork { .. })
        ));
        assert!(matches!(
            HandshakeLine::parse("1|x|tcp|:1"),
            Err(HandshakeError::BadAppVersion { .. })
        ));
        assert!(matches!(
            HandshakeLine::parse("1|1|tcp|:1|grpc||maybe"),
            Err(HandshakeError::BadMuxField { .. })
        ));
    }
}
