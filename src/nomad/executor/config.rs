//! The executor's argv JSON (spec nomad-executor-logmon.md §3.1): `nomad executor <json>` gets
//! `{"LogFile","LogLevel","FSIsolation","Compute":{"tc","nc"}}` with Go's field names; unknown
//! keys (e.g. an older agent's `CpuTotalTicks`) are ignored.

use serde::Deserialize;

/// Errors reading the executor's argv.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not exactly one argument after `executor` (Nomad logs this text and exits 1).
    #[error("json configuration not provided (got {count} arguments after \"executor\")")]
    Missing {
        /// How many arguments there were.
        count: usize,
    },
    /// The argument is not the JSON Nomad sends.
    #[error("executor configuration is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `LogLevel` names no hclog level.
    #[error("LogLevel {0:?} is not one of trace, debug, info, warn, error, off")]
    LogLevel(String),
}

/// Total and per-core CPU capacity of the node (`client/lib/cpustats.Compute`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Compute {
    /// Total MHz of the node.
    #[serde(rename = "tc", default)]
    pub total_mhz: u64,
    /// Number of cores.
    #[serde(rename = "nc", default)]
    pub cores: i64,
}

/// `ExecutorConfig` as Nomad's drivers marshal it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ExecutorConfig {
    /// File the executor logs to (created or appended, mode 0666).
    #[serde(rename = "LogFile", default)]
    pub log_file: String,
    /// hclog level name; drivers always send `debug`.
    #[serde(rename = "LogLevel", default)]
    pub log_level: String,
    /// `true` asks for the isolated (libcontainer) executor.
    #[serde(rename = "FSIsolation", default)]
    pub fs_isolation: bool,
    /// Node CPU capacity, for CPU%-to-MHz conversion and share clamping.
    #[serde(rename = "Compute", default)]
    pub compute: Compute,
}

impl ExecutorConfig {
    /// Parses the arguments after `executor` (exactly one: the JSON).
    pub fn from_args(args: &[std::ffi::OsString]) -> Result<ExecutorConfig, ConfigError> {
        let [json] = args else {
            return Err(ConfigError::Missing { count: args.len() });
        };
        let cfg: ExecutorConfig = serde_json::from_slice(json.as_encoded_bytes())?;
        cfg.filter_directive()?;
        Ok(cfg)
    }

    /// The `tracing` filter directive for `LogLevel` (empty means Nomad's default, `debug`).
    pub fn filter_directive(&self) -> Result<&'static str, ConfigError> {
        match self.log_level.trim().to_ascii_lowercase().as_str() {
            "trace" => Ok("trace"),
            "" | "debug" => Ok("debug"),
            "info" => Ok("info"),
            "warn" => Ok("warn"),
            "error" => Ok("error"),
            "off" => Ok("off"),
            _ => Err(ConfigError::LogLevel(self.log_level.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn parses_what_nomad_sends_and_ignores_unknown_keys() {
        let json = r#"{"LogFile":"/alloc/task/executor.out","LogLevel":"debug","FSIsolation":false,"Compute":{"tc":4600,"nc":2},"CpuTotalTicks":1}"#;
        let cfg = ExecutorConfig::from_args(&[OsString::from(json)]).unwrap();
        assert_eq!(cfg.log_file, "/alloc/task/executor.out");
        assert!(!cfg.fs_isolation);
        assert_eq!(
            cfg.compute,
            Compute {
                total_mhz: 4600,
                cores: 2
            }
        );
        assert_eq!(cfg.filter_directive().unwrap(), "debug");
    }

    #[test]
    fn refuses_missing_or_malformed_arguments() {
        assert!(matches!(
            ExecutorConfig::from_args(&[]),
            Err(ConfigError::Missing { count: 0 })
        ));
        assert!(matches!(
            ExecutorConfig::from_args(&["{}".into(), "x".into()]),
            Err(ConfigError::Missing { count: 2 })
        ));
        assert!(matches!(
            ExecutorConfig::from_args(&["{not json".into()]),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            ExecutorConfig::from_args(&[r#"{"LogLevel":"loud"}"#.into()]),
            Err(ConfigError::LogLevel(_))
        ));
        assert!(matches!(
            ExecutorConfig::from_args(&[r#"{"FSIsolation":"yes"}"#.into()]),
            Err(ConfigError::Json(_))
        ));
    }
}
