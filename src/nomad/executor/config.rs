//! The executor's argv JSON (spec nomad-executor-logmon.md §3.1, nomad-versions.md §1.1):
//! `nomad executor <json>` gets `{"LogFile","LogLevel","FSIsolation",…}` plus, from a Nomad 1.7+
//! agent, `"Compute":{"tc","nc"}` or, from a 1.6 agent, `"CpuTotalTicks":<MHz>`. Decoded with
//! Go's rules (keys case-insensitive, last one wins, unknown keys ignored), as Nomad's executor
//! decodes it: `{"fsisolation":true}` asks for isolation there, so it does here too.

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
    /// Node CPU capacity, for CPU%-to-MHz conversion and share clamping (Nomad 1.7+).
    #[serde(rename = "Compute", default)]
    pub compute: Compute,
    /// Total MHz of the node as a Nomad 1.6 agent sends it (no core count).
    #[serde(rename = "CpuTotalTicks", default)]
    pub cpu_total_ticks: Option<u64>,
}

impl ExecutorConfig {
    /// Parses the arguments after `executor` (exactly one: the JSON).
    pub fn from_args(args: &[std::ffi::OsString]) -> Result<ExecutorConfig, ConfigError> {
        let [json] = args else {
            return Err(ConfigError::Missing { count: args.len() });
        };
        let cfg: ExecutorConfig = crate::gojson::from_slice(json.as_encoded_bytes())?;
        cfg.filter_directive()?;
        Ok(cfg)
    }

    /// The CPU capacity to convert percent into MHz with: `Compute` when given; else a 1.6
    /// agent's `CpuTotalTicks` over this process's CPU count, which is what Nomad 1.6's executor
    /// divides by (`runtime.NumCPU()`).
    pub fn effective_compute(&self) -> Compute {
        match self.cpu_total_ticks {
            Some(total_mhz) if self.compute == Compute::default() => Compute {
                total_mhz,
                cores: std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
            },
            _ => self.compute,
        }
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
    fn a_nomad_16_agents_cpu_total_ticks_is_divided_by_this_hosts_cores() {
        let json =
            r#"{"LogFile":"/x","LogLevel":"debug","FSIsolation":false,"CpuTotalTicks":4600}"#;
        let cfg = ExecutorConfig::from_args(&[OsString::from(json)]).unwrap();
        let c = cfg.effective_compute();
        assert_eq!(c.total_mhz, 4600);
        assert_eq!(
            c.cores as usize,
            std::thread::available_parallelism().unwrap().get()
        );
        let none = ExecutorConfig::from_args(&[OsString::from("{}")]).unwrap();
        assert_eq!(none.effective_compute(), Compute::default());
    }

    /// Go's decoder matches keys case-insensitively: a task asking for isolation in any casing
    /// must not get the universal executor.
    #[test]
    fn keys_are_matched_as_go_matches_them() {
        for json in [
            r#"{"fsisolation":true}"#,
            r#"{"FSISOLATION":true}"#,
            r#"{"fsIsolation":true}"#,
            r#"{"FSIsolation":false,"fsisolation":true}"#,
        ] {
            let cfg = ExecutorConfig::from_args(&[OsString::from(json)]).unwrap();
            assert!(cfg.fs_isolation, "{json}");
        }
        let cfg =
            ExecutorConfig::from_args(&[r#"{"compute":{"TC":10,"NC":2},"logfile":"/l"}"#.into()])
                .unwrap();
        assert_eq!((cfg.compute.total_mhz, cfg.compute.cores), (10, 2));
        assert_eq!(cfg.log_file, "/l");
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
        for bad in [
            r#"{"FSIsolation":"yes"}"#,
            r#"{"CpuTotalTicks":"4600"}"#,
            r#"{"CpuTotalTicks":-1}"#,
            r#"{"Compute":{"tc":4600,"nc":"2"}}"#,
            r#"{"Compute":[4600,2]}"#,
            r#"["LogFile"]"#,
        ] {
            assert!(
                matches!(
                    ExecutorConfig::from_args(&[bad.into()]),
                    Err(ConfigError::Json(_))
                ),
                "{bad}"
            );
        }
    }
}
