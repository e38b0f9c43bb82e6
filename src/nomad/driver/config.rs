//! The plugin config (`plugin "goplugin_exec" { config { … } }`) and a task's `config {}`, as
//! raw_exec defines them (spec nomad-driver-plugin.md §11, nomad-versions.md §3), decoded from
//! Nomad's msgpack (§6) and checked. Differences from raw_exec: `enabled` defaults to true
//! (copying the binary into `plugin_dir` is the opt-in, and a Nomad 1.6 agent may load it with no
//! `plugin` block at all), `no_cgroups` is kept from 1.6, and the task config adds log rotation.

use serde::{Deserialize, Serialize};

use super::msgpack::{Fields, MsgpackError};

/// Keys of the plugin config.
pub const PLUGIN_KEYS: &[&str] = &[
    "allow_caps",
    "default_ipc_mode",
    "default_pid_mode",
    "denied_envvars",
    "denied_host_gids",
    "denied_host_uids",
    "enabled",
    "helpers",
    "isolation",
    "no_cgroups",
    "no_pivot_root",
];

/// Keys of a task's config.
pub const TASK_KEYS: &[&str] = &[
    "args",
    "cap_add",
    "cap_drop",
    "cgroup_v1_override",
    "cgroup_v2_override",
    "command",
    "denied_envvars",
    "ipc_mode",
    "isolation",
    "max_file_size",
    "max_files",
    "oom_score_adj",
    "pid_mode",
    "work_dir",
];

/// Nomad's `logs` block defaults.
pub const DEFAULT_MAX_FILES: u32 = 10;
/// MiB.
pub const DEFAULT_MAX_FILE_SIZE_MB: u32 = 10;

/// Config errors: the text is what the agent shows (agent start failure or task event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not the shape of the schema.
    #[error(transparent)]
    Msgpack(#[from] MsgpackError),
    /// A uid/gid range list that does not parse.
    #[error("plugin config: {key} {value:?} is not a list of ids and ranges like \"0-999,1005\": {reason}")]
    IdRange {
        /// `denied_host_uids` or `denied_host_gids`.
        key: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A plugin setting whose value is out of its domain.
    #[error("plugin config: {key} {value:?} {reason}")]
    PluginValue {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A capability name or policy problem (`allow_caps`, `cap_add`, `cap_drop`).
    #[error("{0}")]
    Capabilities(String),
    /// A setting whose value is out of its domain.
    #[error("task config: {key} {value:?} {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// Inclusive ranges of uids or gids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRanges(pub Vec<(u32, u32)>);

impl IdRanges {
    /// Parses `"0-999,1005"` (spaces allowed, empty = none).
    pub fn parse(key: &'static str, value: &str) -> Result<IdRanges, ConfigError> {
        let err = |reason: String| ConfigError::IdRange {
            key,
            value: value.to_string(),
            reason,
        };
        let mut out = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let num = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| err(format!("{s:?} is not an id")))
            };
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(err(format!("range {part:?} ends before it starts")));
            }
            out.push((lo, hi));
        }
        Ok(IdRanges(out))
    }

    /// Whether `id` is in one of the ranges.
    pub fn contains(&self, id: u32) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&id))
    }
}

/// How a task's executor and logmon run: the plugin config's `helpers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Helpers {
    /// One `goplugin task-helper` per task serving both services (one socket, one reattach):
    /// less memory, fewer threads and fds, a faster start (BENCHMARKS.md).
    #[default]
    Combined,
    /// `goplugin executor` and `goplugin logmon`, two processes, as Nomad's own client runs them.
    Separate,
}

impl Helpers {
    /// The value as written in the plugin config.
    pub fn as_str(self) -> &'static str {
        match self {
            Helpers::Combined => "combined",
            Helpers::Separate => "separate",
        }
    }

    fn parse(value: &str) -> Result<Helpers, ConfigError> {
        match value {
            "combined" => Ok(Helpers::Combined),
            "separate" => Ok(Helpers::Separate),
            _ => Err(ConfigError::PluginValue {
                key: "helpers",
                value: value.to_string(),
                reason: "must be \"combined\" (executor and logmon in one process per task) or \"separate\" (two, as Nomad's client runs them)",
            }),
        }
    }
}

/// Filesystem isolation: the plugin's `isolation` (what it declares to the agent) and a task's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// raw_exec's: the task runs on the host, in its task dir.
    #[default]
    None,
    /// exec's: the agent builds a chroot, the isolated executor runs the task inside it.
    Chroot,
}

impl Isolation {
    fn parse(value: &str) -> Option<Isolation> {
        match value {
            "none" => Some(Isolation::None),
            "chroot" => Some(Isolation::Chroot),
            _ => None,
        }
    }
}

/// Nomad's exec driver default for `allow_caps` (its `NomadDefaults`, lower case).
pub fn default_allow_caps() -> Vec<String> {
    crate::nomad::executor::isolation::capabilities::NOMAD_DEFAULTS
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

fn check_mode(plugin: bool, key: &'static str, value: String) -> Result<String, ConfigError> {
    if value == "private" || value == "host" {
        return Ok(value);
    }
    let reason = "must be \"private\" or \"host\"";
    Err(if plugin {
        ConfigError::PluginValue { key, value, reason }
    } else {
        ConfigError::Invalid { key, value, reason }
    })
}

fn check_caps(key: &str, names: &[String]) -> Result<(), ConfigError> {
    use std::str::FromStr;
    for n in names {
        let canon = crate::nomad::executor::isolation::capabilities::normalise(n);
        if canon != "ALL" && caps::Capability::from_str(&canon).is_err() {
            return Err(ConfigError::Capabilities(format!(
                "{key}: unknown capability {n:?}"
            )));
        }
    }
    Ok(())
}

/// The plugin config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Tasks may run (raw_exec's `enabled`; default true here).
    pub enabled: bool,
    /// Never put tasks in cgroups (raw_exec 1.6's `no_cgroups`).
    pub no_cgroups: bool,
    /// Tasks may not run as these uids.
    pub denied_host_uids: IdRanges,
    /// Tasks may not run with these gids.
    pub denied_host_gids: IdRanges,
    /// Globs of environment variables never passed to tasks.
    pub denied_envvars: Vec<String>,
    /// One helper process per task or two.
    pub helpers: Helpers,
    /// `chroot`: declare chroot isolation and run tasks in the isolated executor.
    pub isolation: Isolation,
    /// Isolated tasks' PID namespace unless the task says (`private` or `host`).
    pub default_pid_mode: String,
    /// Isolated tasks' IPC namespace unless the task says.
    pub default_ipc_mode: String,
    /// chroot instead of pivot_root.
    pub no_pivot_root: bool,
    /// Capabilities isolated tasks may have (exec's `allow_caps`).
    pub allow_caps: Vec<String>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            enabled: true,
            no_cgroups: false,
            denied_host_uids: IdRanges::default(),
            denied_host_gids: IdRanges::default(),
            denied_envvars: vec![],
            helpers: Helpers::default(),
            isolation: Isolation::None,
            default_pid_mode: "private".into(),
            default_ipc_mode: "private".into(),
            no_pivot_root: false,
            allow_caps: default_allow_caps(),
        }
    }
}

impl PluginConfig {
    /// Decodes `SetConfig.msgpack_config` (empty: the defaults).
    pub fn decode(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        let f = Fields::decode("plugin config", bytes, PLUGIN_KEYS)?;
        let d = PluginConfig::default();
        Ok(PluginConfig {
            enabled: f.bool("enabled")?.unwrap_or(d.enabled),
            no_cgroups: f.bool("no_cgroups")?.unwrap_or(d.no_cgroups),
            denied_host_uids: IdRanges::parse(
                "denied_host_uids",
                &f.string("denied_host_uids")?.unwrap_or_default(),
            )?,
            denied_host_gids: IdRanges::parse(
                "denied_host_gids",
                &f.string("denied_host_gids")?.unwrap_or_default(),
            )?,
            denied_envvars: f.strings("denied_envvars")?,
            helpers: match f.string("helpers")? {
                Some(h) => Helpers::parse(&h)?,
                None => d.helpers,
            },
            isolation: match f.string("isolation")? {
                Some(v) => Isolation::parse(&v).ok_or(ConfigError::PluginValue {
                    key: "isolation",
                    value: v,
                    reason: "must be \"none\" (raw_exec's) or \"chroot\" (exec's)",
                })?,
                None => d.isolation,
            },
            default_pid_mode: match f.string("default_pid_mode")? {
                Some(v) => check_mode(true, "default_pid_mode", v)?,
                None => d.default_pid_mode,
            },
            default_ipc_mode: match f.string("default_ipc_mode")? {
                Some(v) => check_mode(true, "default_ipc_mode", v)?,
                None => d.default_ipc_mode,
            },
            no_pivot_root: f.bool("no_pivot_root")?.unwrap_or(d.no_pivot_root),
            allow_caps: {
                let caps = match f.strings_opt("allow_caps")? {
                    Some(c) => c,
                    None => d.allow_caps,
                };
                check_caps("plugin config: allow_caps", &caps)?;
                caps
            },
        })
    }
}

/// A task's config, decoded; kept in the handle state (the agent does not send it again after a
/// restart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Program to run.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// cgroup v2 directory to run in instead of the agent's.
    #[serde(default)]
    pub cgroup_v2_override: String,
    /// cgroup v1 controller -> directory, instead of the agent's.
    #[serde(default)]
    pub cgroup_v1_override: Vec<(String, String)>,
    /// The task's `oom_score_adj` (0..=1000).
    #[serde(default)]
    pub oom_score_adj: i32,
    /// Working directory (absolute; default the task dir).
    #[serde(default)]
    pub work_dir: String,
    /// Globs of environment variables this task never gets.
    #[serde(default)]
    pub denied_envvars: Vec<String>,
    /// Log files kept per stream.
    pub max_files: u32,
    /// Size of each log file in MiB.
    pub max_file_size_mb: u32,
    /// `none` or `chroot`; unset: the plugin's.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// Isolated: `private` or `host` PID namespace; unset: the plugin's default.
    #[serde(default)]
    pub pid_mode: Option<String>,
    /// Isolated: `private` or `host` IPC namespace; unset: the plugin's default.
    #[serde(default)]
    pub ipc_mode: Option<String>,
    /// Isolated: capabilities added (within `allow_caps`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Isolated: capabilities dropped.
    #[serde(default)]
    pub cap_drop: Vec<String>,
}

impl TaskConfig {
    /// Decodes `TaskConfig.msgpack_driver_config` and checks it.
    pub fn decode(bytes: &[u8]) -> Result<TaskConfig, ConfigError> {
        let f = Fields::decode("task config", bytes, TASK_KEYS)?;
        let cfg = TaskConfig {
            command: f.required_string("command")?,
            args: f.strings("args")?,
            cgroup_v2_override: f.string("cgroup_v2_override")?.unwrap_or_default(),
            cgroup_v1_override: f.merged_maps("cgroup_v1_override")?,
            oom_score_adj: f.integer("oom_score_adj", 0, 1000)?.unwrap_or(0) as i32,
            work_dir: f.string("work_dir")?.unwrap_or_default(),
            denied_envvars: f.strings("denied_envvars")?,
            max_files: f
                .integer("max_files", 1, i64::from(u32::MAX))?
                .map_or(DEFAULT_MAX_FILES, |n| n as u32),
            max_file_size_mb: f
                .integer("max_file_size", 1, i64::from(u32::MAX))?
                .map_or(DEFAULT_MAX_FILE_SIZE_MB, |n| n as u32),
            isolation: match f.string("isolation")? {
                Some(v) => Some(Isolation::parse(&v).ok_or(ConfigError::Invalid {
                    key: "isolation",
                    value: v,
                    reason: "must be \"none\" or \"chroot\"",
                })?),
                None => None,
            },
            pid_mode: f
                .string("pid_mode")?
                .map(|v| check_mode(false, "pid_mode", v))
                .transpose()?,
            ipc_mode: f
                .string("ipc_mode")?
                .map(|v| check_mode(false, "ipc_mode", v))
                .transpose()?,
            cap_add: f.strings("cap_add")?,
            cap_drop: f.strings("cap_drop")?,
        };
        check_caps("task config: cap_add", &cfg.cap_add)?;
        check_caps("task config: cap_drop", &cfg.cap_drop)?;
        if !cfg.work_dir.is_empty() && !cfg.work_dir.starts_with('/') {
            return Err(ConfigError::Invalid {
                key: "work_dir",
                value: cfg.work_dir,
                reason: "must be an absolute path",
            });
        }
        if !cfg.cgroup_v2_override.is_empty() && !cfg.cgroup_v1_override.is_empty() {
            return Err(ConfigError::Invalid {
                key: "cgroup_v2_override",
                value: cfg.cgroup_v2_override,
                reason: "and cgroup_v1_override cannot both be set",
            });
        }
        Ok(cfg)
    }
}

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one character), as raw_exec's
/// `denied_envvars` globs.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        // `*` first: a `*` in the name is a plain character, not a match for the pattern's.
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The task's environment as the executor gets it: sorted `K=V`, without the variables any of
/// `denied` matches.
pub fn env_list<'a>(
    env: impl IntoIterator<Item = (&'a String, &'a String)>,
    denied: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = env
        .into_iter()
        .filter(|(k, _)| !denied.iter().any(|g| glob_match(g, k)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn encode(pairs: &[(&str, Value)]) -> Vec<u8> {
        let v = Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        );
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        out
    }

    #[test]
    fn empty_plugin_config_is_the_defaults() {
        assert_eq!(PluginConfig::decode(&[]).unwrap(), PluginConfig::default());
        assert!(PluginConfig::default().enabled);
    }

    #[test]
    fn plugin_config_ranges_and_errors() {
        let c = PluginConfig::decode(&encode(&[
            ("enabled", Value::from(false)),
            ("denied_host_uids", Value::from("0-999, 1005")),
            ("denied_host_gids", Value::Nil),
        ]))
        .unwrap();
        assert!(!c.enabled);
        assert!(c.denied_host_uids.contains(0) && c.denied_host_uids.contains(1005));
        assert!(!c.denied_host_uids.contains(1000));
        let e = PluginConfig::decode(&encode(&[("denied_host_uids", Value::from("10-1"))]))
            .unwrap_err();
        assert!(e.to_string().contains("ends before it starts"), "{e}");
        let e = PluginConfig::decode(&encode(&[("enabled", Value::from("yes"))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin config: \"enabled\" must be a bool, not string \"yes\""
        );
        let e = PluginConfig::decode(&encode(&[("helpers", Value::from("both"))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin config: helpers \"both\" must be \"combined\" (executor and logmon in one \
             process per task) or \"separate\" (two, as Nomad's client runs them)"
        );
        let e = PluginConfig::decode(&encode(&[("helpers", Value::from(2))])).unwrap_err();
        assert!(
            e.to_string().contains("\"helpers\" must be a string"),
            "{e}"
        );
        let c = PluginConfig::decode(&encode(&[("helpers", Value::from("separate"))])).unwrap();
        assert_eq!(c.helpers, Helpers::Separate);
        let e = PluginConfig::decode(&encode(&[("nope", Value::from(1))])).unwrap_err();
        assert!(e.to_string().contains("unknown key \"nope\""), "{e}");
    }

    #[test]
    fn task_config_defaults_and_checks() {
        let c = TaskConfig::decode(&encode(&[("command", Value::from("/bin/true"))])).unwrap();
        assert_eq!((c.max_files, c.max_file_size_mb), (10, 10));
        let e = TaskConfig::decode(&encode(&[("command", Value::Nil)])).unwrap_err();
        assert_eq!(e.to_string(), "task config: \"command\" is required");
        let e = TaskConfig::decode(&encode(&[
            ("command", Value::from("x")),
            ("work_dir", Value::from("rel")),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = TaskConfig::decode(&encode(&[
            ("command", Value::from("x")),
            ("oom_score_adj", Value::from(-1)),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("oom_score_adj"), "{e}");
    }

    #[test]
    fn globs_filter_the_environment() {
        assert!(glob_match("AWS_*", "AWS_SECRET"));
        assert!(glob_match("*TOKEN*", "MY_TOKEN_X"));
        assert!(glob_match("A?C", "ABC"));
        assert!(!glob_match("AWS_*", "XAWS_"));
        let env: std::collections::BTreeMap<String, String> =
            [("B", "2"), ("A", "1"), ("SECRET_X", "s")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(env_list(&env, &["SECRET_*".into()]), vec!["A=1", "B=2"]);
    }

    /// Found by fuzz/driver_msgpack: the pattern's `*` was matched literally against a `*` in
    /// the name, and then the star could not take the rest (`*E*` did not match `*E*GN`).
    #[test]
    fn a_star_in_the_name_is_a_plain_character() {
        assert!(glob_match("*E*", "*E*GN"));
        assert!(glob_match("*a", "*ba"));
        assert!(glob_match("*", "*"));
        assert!(!glob_match("a*", "*a"));
    }
}
