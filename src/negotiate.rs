//! The plugin's reading of what the host offers before the handshake (go-plugin-wire.md §3):
//! `PLUGIN_PROTOCOL_VERSIONS` with Go's strict integer rules, the version picked from it, and
//! Go's `strconv.ParseBool` for `PLUGIN_MULTIPLEX_GRPC`. Crate-private; the fuzz targets reach
//! it through `goplugin::fuzzing`.

use std::collections::BTreeSet;

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Outcome of reading `PLUGIN_PROTOCOL_VERSIONS` (§3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostVersions {
    /// Every well-formed version the host offered.
    pub versions: BTreeSet<u32>,
    /// Entries that were not strict decimal integers, reported by the plugin on stderr.
    pub invalid: Vec<String>,
}

impl HostVersions {
    /// Parses the variable's value with Go's strict integer rules (no spaces, no sign games).
    pub fn parse(value: &str) -> HostVersions {
        let mut out = HostVersions::default();
        if value.is_empty() {
            return out;
        }
        for entry in value.split(',') {
            match parse_strict_u32(entry) {
                Some(v) => {
                    out.versions.insert(v);
                }
                None => out.invalid.push(entry.to_string()),
            }
        }
        out
    }
}

fn parse_strict_u32(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Picks the version a plugin announces (§3): the highest plugin version the host offered, else
/// the plugin's lowest (the host will then refuse it). `None` only when the plugin has no version.
pub fn negotiate(plugin_versions: &BTreeSet<u32>, host: &HostVersions) -> Option<u32> {
    plugin_versions
        .iter()
        .rev()
        .find(|v| host.versions.contains(v))
        .or_else(|| plugin_versions.iter().next())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn negotiates_highest_common_version() {
        let host = HostVersions::parse("3,1,2");
        assert_eq!(negotiate(&set(&[1, 2]), &host), Some(2));
        assert_eq!(negotiate(&set(&[2, 3, 4]), &host), Some(3));
    }

    #[test]
    fn falls_back_to_lowest_without_common_version() {
        assert_eq!(negotiate(&set(&[2, 3]), &HostVersions::parse("1")), Some(2));
        assert_eq!(negotiate(&set(&[2, 3]), &HostVersions::parse("")), Some(2));
        assert_eq!(negotiate(&set(&[]), &HostVersions::parse("1")), None);
    }

    #[test]
    fn reports_invalid_version_entries() {
        let v = HostVersions::parse("1, 2,x,,3");
        assert_eq!(v.versions, set(&[1, 3]));
        assert_eq!(v.invalid, vec![" 2", "x", ""]);
    }
}
