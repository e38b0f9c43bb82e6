//! What the driver tells the agent about the node (spec nomad-driver-plugin.md §10
//! "Fingerprint"): health and attributes, first at once and then every 30 s; and the node's CPU
//! capacity, which a Nomad 1.7+ agent sends as a topology and a 1.6 agent does not send at all
//! (nomad-versions.md §7), so the driver works it out as 1.6's own fingerprinter did.

use std::collections::HashMap;

use crate::nomad::executor::config::Compute;
use crate::proto::base::ClientTopology;
use crate::proto::drivers::fingerprint_response::HealthState;
use crate::proto::drivers::FingerprintResponse;
use crate::proto::structs::{attribute, Attribute};

use super::config::PluginConfig;
use super::DRIVER_NAME;

/// How often the fingerprint is repeated (upstream drivers: 30 s).
pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// One fingerprint for `cfg`.
pub fn fingerprint(cfg: &PluginConfig) -> FingerprintResponse {
    if !cfg.enabled {
        return FingerprintResponse {
            health: HealthState::Undetected as i32,
            health_description: "disabled".into(),
            ..Default::default()
        };
    }
    let mut attributes = HashMap::new();
    attributes.insert(
        format!("driver.{DRIVER_NAME}"),
        Attribute {
            value: Some(attribute::Value::BoolVal(true)),
            unit: String::new(),
        },
    );
    attributes.insert(
        format!("driver.{DRIVER_NAME}.version"),
        Attribute {
            value: Some(attribute::Value::StringVal(
                env!("CARGO_PKG_VERSION").to_string(),
            )),
            unit: String::new(),
        },
    );
    FingerprintResponse {
        attributes,
        health: HealthState::Healthy as i32,
        health_description: "Healthy".into(),
        err: String::new(),
    }
}

/// The CPU capacity from the agent's topology (Nomad 1.7+): the override when set, else the sum
/// of each core's base, max or guessed speed.
pub fn compute_of_topology(t: &ClientTopology) -> Compute {
    let total: u64 = if t.override_total_compute > 0 {
        t.override_total_compute
    } else {
        t.cores
            .iter()
            .map(|c| {
                [c.base_speed, c.max_speed, c.guess_speed]
                    .into_iter()
                    .find(|s| *s > 0)
                    .unwrap_or(0)
            })
            .sum()
    };
    Compute {
        total_mhz: total,
        cores: t.cores.len() as i64,
    }
}

/// The CPU capacity of this host, as Nomad 1.6's agent fingerprinted it: logical cores times
/// the highest `cpu MHz` in /proc/cpuinfo (cpufreq's maximum when cpuinfo has none).
pub fn host_compute() -> Compute {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz = cpuinfo_mhz(&cpuinfo).or_else(cpufreq_mhz).unwrap_or(1000.0);
    Compute {
        total_mhz: (mhz * cores as f64) as u64,
        cores,
    }
}

fn cpuinfo_mhz(cpuinfo: &str) -> Option<f64> {
    cpuinfo
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "cpu MHz").then(|| v.trim().parse::<f64>().ok())?
        })
        .fold(None, |max: Option<f64>, v| {
            Some(max.map_or(v, |m| m.max(v)))
        })
}

fn cpufreq_mhz() -> Option<f64> {
    let khz: f64 = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(khz / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::base::ClientTopologyCore;

    #[test]
    fn topology_compute_prefers_override_then_base_max_guess() {
        let core = |b, m, g| ClientTopologyCore {
            base_speed: b,
            max_speed: m,
            guess_speed: g,
            ..Default::default()
        };
        let mut t = ClientTopology {
            cores: vec![core(2000, 3000, 0), core(0, 2500, 0), core(0, 0, 1800)],
            ..Default::default()
        };
        assert_eq!(
            compute_of_topology(&t),
            Compute {
                total_mhz: 6300,
                cores: 3
            }
        );
        t.override_total_compute = 9000;
        assert_eq!(compute_of_topology(&t).total_mhz, 9000);
    }

    #[test]
    fn host_compute_reads_cpuinfo() {
        assert_eq!(
            cpuinfo_mhz("processor\t: 0\ncpu MHz\t\t: 2599.998\ncpu MHz : 3000.5\n"),
            Some(3000.5)
        );
        let c = host_compute();
        assert!(c.cores >= 1 && c.total_mhz > 0, "{c:?}");
    }

    #[test]
    fn disabled_is_undetected() {
        let cfg = PluginConfig {
            enabled: false,
            ..Default::default()
        };
        let f = fingerprint(&cfg);
        assert_eq!(f.health, HealthState::Undetected as i32);
        assert!(f.attributes.is_empty());
        let f = fingerprint(&PluginConfig::default());
        assert_eq!(f.health, HealthState::Healthy as i32);
        assert!(f.attributes.contains_key("driver.goplugin_exec"));
    }
}
