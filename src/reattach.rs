//! What a host persists to reattach to a running plugin (spec go-plugin-wire.md §15; Nomad's
//! `pstructs.ReattachConfig`, nomad-executor-logmon.md §2.6), and how it makes sure the pid it
//! finds is still that plugin: a pid alone can be reused by an unrelated process, which Nomad then
//! killed (hashicorp/nomad#23969), so we also record the process start time.

use serde::{Deserialize, Serialize};

use crate::tls::{self, Identity, MtlsConfig, PinnedPeers, TlsError};

/// A reattach record. Serialises with Nomad's Go field names (`Protocol`, `Network`, `Addr`,
/// `Pid`), so it round-trips with Nomad's persisted state; our additions are optional fields a
/// Go reader ignores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReattachConfig {
    /// `grpc` (`netrpc` is recognised and refused).
    #[serde(rename = "Protocol")]
    pub protocol: String,
    /// Negotiated application version (Go fills it only in test mode).
    #[serde(rename = "ProtocolVersion", default, skip_serializing_if = "is_zero")]
    pub protocol_version: u32,
    /// `unix` or `tcp` (Go spellings such as `tcp4` accepted).
    #[serde(rename = "Network")]
    pub network: String,
    /// Socket path or host:port.
    #[serde(rename = "Addr")]
    pub addr: String,
    /// Plugin pid (0 when unknown).
    #[serde(rename = "Pid")]
    pub pid: u32,
    /// go-plugin's test mode: the host never kills the process.
    #[serde(rename = "Test", default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
    /// Start time of the pid when recorded, to refuse a reused pid.
    #[serde(rename = "Process", default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
    /// AutoMTLS material, which go-plugin's own reattach cannot carry (pitfall P15).
    #[serde(rename = "TLS", default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ReattachTls>,
}

impl ReattachConfig {
    /// A record of a gRPC plugin at `addr` on `network` (`unix` or `tcp`) with process `pid`,
    /// as Nomad persists one; without start time or TLS material.
    pub fn new(
        protocol_version: u32,
        network: impl Into<String>,
        addr: impl Into<String>,
        pid: u32,
    ) -> ReattachConfig {
        ReattachConfig {
            protocol: "grpc".to_string(),
            protocol_version,
            network: network.into(),
            addr: addr.into(),
            pid,
            test: false,
            process: None,
            tls: None,
        }
    }

    /// Parses a reattach record as Go's `encoding/json` would (Nomad writes it with Go: keys
    /// match field names case-insensitively, the last of two wins, unknown keys are ignored).
    ///
    /// ```
    /// use goplugin::ReattachConfig;
    ///
    /// // Key case does not matter to Go, and unknown keys are skipped.
    /// let cfg = ReattachConfig::from_json(
    ///     r#"{"protocol":"grpc","ProtocolVersion":2,"network":"unix",
    ///         "Addr":"/tmp/plugin1234","Pid":4242,"Note":"ignored"}"#,
    /// )
    /// .unwrap();
    /// assert_eq!(cfg.protocol, "grpc");
    /// assert_eq!(cfg.addr, "/tmp/plugin1234");
    /// assert_eq!(cfg.pid, 4242);
    /// assert!(cfg.process.is_none() && cfg.tls.is_none());
    /// // Written back with go-plugin's field names, for a Go host to read.
    /// let json = serde_json::to_string(&cfg).unwrap();
    /// assert!(json.contains(r#""Addr":"/tmp/plugin1234""#), "{json}");
    /// ```
    pub fn from_json(json: &str) -> Result<ReattachConfig, serde_json::Error> {
        crate::gojson::from_str(json)
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A pid together with its start time, so a pid the system has since given to another process is
/// not taken for the recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Process id.
    #[serde(rename = "Pid")]
    pub pid: u32,
    /// Start time in the platform's units: clock ticks after boot on Linux (`/proc/PID/stat`
    /// field 22), the creation FILETIME (100 ns since 1601) on Windows, 0 on other Unix systems,
    /// where only liveness is checked (as go-plugin does everywhere).
    #[serde(rename = "StartTicks")]
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// Reads the identity of a running process.
    pub fn of(pid: u32) -> Result<ProcessIdentity, String> {
        let start_ticks = crate::process::start_time(pid)?;
        Ok(ProcessIdentity { pid, start_ticks })
    }

    /// Checks that `pid` is this very process: alive, and started when recorded.
    pub fn check(&self, pid: u32) -> Result<(), String> {
        if pid != self.pid {
            return Err(format!(
                "recorded pid {} differs from process identity pid {}",
                pid, self.pid
            ));
        }
        let now = crate::process::start_time(pid)?;
        if now != self.start_ticks {
            return Err(format!(
                "pid {pid} now belongs to another process (started at tick {now}, recorded {})",
                self.start_ticks
            ));
        }
        Ok(())
    }

    /// Whether the recorded process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        self.check(self.pid).is_ok()
    }
}

/// The host's identity and the plugin's certificate of an AutoMTLS session, so a new host can
/// speak TLS to the same plugin (which still pins the original host certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReattachTls {
    /// Host certificate, PEM.
    #[serde(rename = "HostCertPEM")]
    pub host_cert_pem: String,
    /// Host private key, PEM. Store the record where only the host can read it.
    #[serde(rename = "HostKeyPEM")]
    pub host_key_pem: String,
    /// Plugin certificate as in handshake field 6 (unpadded base64 DER).
    #[serde(rename = "PluginCert")]
    pub plugin_cert: String,
}

impl ReattachTls {
    /// Records `host` and the plugin's field 6.
    pub fn new(host: &Identity, plugin_cert: &str) -> Self {
        Self {
            host_cert_pem: host.cert_pem(),
            host_key_pem: host.key_pem(),
            plugin_cert: plugin_cert.to_string(),
        }
    }

    /// The TLS configuration this record describes.
    pub fn config(&self) -> Result<MtlsConfig, TlsError> {
        let host = Identity::from_pem(&self.host_cert_pem, &self.host_key_pem)?;
        let plugin = tls::decode_server_cert(&self.plugin_cert)?;
        MtlsConfig::new(&host, PinnedPeers::from_certs([plugin])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_nomads_persisted_form() {
        let nomad = r#"{"Protocol":"grpc","Network":"unix","Addr":"/tmp/plugin123","Pid":4242}"#;
        let cfg: ReattachConfig = serde_json::from_str(nomad).unwrap();
        assert_eq!(cfg.pid, 4242);
        assert_eq!(cfg.network, "unix");
        assert_eq!(serde_json::to_string(&cfg).unwrap(), nomad);
    }

    #[test]
    fn reads_keys_as_gos_decoder_does() {
        let odd =
            r#"{"protocol":"grpc","NETWORK":"unix","addr":"/a","Addr":"/b","pid":7,"Extra":1}"#;
        let cfg = ReattachConfig::from_json(odd).unwrap();
        assert_eq!(
            (cfg.network.as_str(), cfg.addr.as_str(), cfg.pid),
            ("unix", "/b", 7)
        );
        assert!(
            ReattachConfig::from_json(r#"{"Protocol":"grpc"}"#).is_err(),
            "Addr is required"
        );
    }

    #[test]
    fn identity_of_self_checks_and_reused_pid_is_refused() {
        let me = ProcessIdentity::of(std::process::id()).unwrap();
        assert!(me.check(std::process::id()).is_ok());
        assert!(me.is_alive());
        let forged = ProcessIdentity {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        let err = forged.check(std::process::id()).unwrap_err();
        assert!(err.contains("another process"), "{err}");
        assert!(ProcessIdentity::of(0).is_err());
    }
}
