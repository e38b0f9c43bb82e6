//! Capabilities of an isolated task (spec nomad-executor-logmon.md §5.1.4): the set the exec
//! driver computes from Nomad's defaults, `allow_caps`, `cap_add` and `cap_drop`, and the five
//! kernel sets the executor gives it — root gets the legacy 38-capability set, any other user
//! exactly the requested list in bounding, permitted, inheritable and ambient (so `nobody` with
//! the defaults has `a80405fb` everywhere and never more).

use std::str::FromStr;

use caps::Capability;

use super::spec::CapabilitySets;

/// Nomad's default task capabilities (`capabilities.NomadDefaults`: Docker's minus NET_RAW).
pub const NOMAD_DEFAULTS: [&str; 13] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Number of capabilities in Nomad's `LegacySupported` list (CAP_CHOWN … CAP_AUDIT_READ), the
/// set a root task gets.
pub const LEGACY_COUNT: u8 = 38;

/// Errors of capability names and policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// A name that is no Linux capability.
    #[error("unknown capability {0:?}")]
    Unknown(String),
    /// `cap_add` outside the driver's `allow_caps` (Nomad's text).
    #[error("driver does not allow the following capabilities: {}", .0.join(", "))]
    NotAllowed(Vec<String>),
}

/// `net_raw`, `CAP_NET_RAW` → `CAP_NET_RAW`; `all` stays `ALL`.
pub fn normalise(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" || upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// Every capability this kernel knows, in number order.
pub fn supported() -> Vec<Capability> {
    let mut all: Vec<Capability> = caps::runtime::thread_all_supported().into_iter().collect();
    if all.is_empty() {
        all = caps::all().into_iter().collect();
    }
    all.sort_by_key(Capability::index);
    all
}

fn parse(name: &str) -> Result<Capability, CapabilityError> {
    Capability::from_str(&normalise(name)).map_err(|_| CapabilityError::Unknown(name.to_string()))
}

/// Expands `all` and normalises; unknown names are an error.
fn expand(names: &[String]) -> Result<Vec<String>, CapabilityError> {
    let mut out = Vec::new();
    for name in names {
        if normalise(name) == "ALL" {
            out.extend(supported().iter().map(|c| c.to_string()));
        } else {
            out.push(parse(name)?.to_string());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The exec driver's task capabilities: (defaults ∩ `allow_caps`) − `cap_drop` ∪ `cap_add`,
/// with `cap_add` checked against `allow_caps` (`all` allowed means every capability).
pub fn task_capabilities(
    allow_caps: &[String],
    cap_add: &[String],
    cap_drop: &[String],
) -> Result<Vec<String>, CapabilityError> {
    let allowed = expand(allow_caps)?;
    let add = expand(cap_add)?;
    let drop = expand(cap_drop)?;
    let denied: Vec<String> = add
        .iter()
        .filter(|c| !allowed.contains(c))
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    if !denied.is_empty() {
        return Err(CapabilityError::NotAllowed(denied));
    }
    let mut set: Vec<String> = NOMAD_DEFAULTS
        .iter()
        .map(|c| c.to_string())
        .filter(|c| allowed.contains(c) && !drop.contains(c))
        .collect();
    set.extend(add);
    set.sort();
    set.dedup();
    Ok(set)
}

/// The five sets for a task: root's legacy set, or exactly `requested` for anyone else.
pub fn sets_for(root: bool, requested: &[String]) -> Result<CapabilitySets, CapabilityError> {
    if root {
        let legacy: Vec<u8> = (0..LEGACY_COUNT).collect();
        return Ok(CapabilitySets {
            bounding: legacy.clone(),
            permitted: legacy.clone(),
            effective: legacy,
            inheritable: Vec::new(),
            ambient: Vec::new(),
        });
    }
    let mut set: Vec<u8> = requested
        .iter()
        .map(|n| parse(n).map(|c| c.index()))
        .collect::<Result<_, _>>()?;
    set.sort_unstable();
    set.dedup();
    Ok(CapabilitySets {
        bounding: set.clone(),
        permitted: set.clone(),
        effective: set.clone(),
        inheritable: set.clone(),
        ambient: set,
    })
}

/// The kernel's mask of a set (as `/proc/<pid>/status` prints it).
pub fn mask(set: &[u8]) -> u64 {
    set.iter()
        .filter(|&&c| c < 64)
        .fold(0, |m, &c| m | (1 << c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nobody_with_defaults_gets_nomads_mask() {
        let caps = task_capabilities(&names(&["all"]), &[], &[]).unwrap();
        let sets = sets_for(false, &caps).unwrap();
        for set in [
            &sets.bounding,
            &sets.permitted,
            &sets.effective,
            &sets.inheritable,
            &sets.ambient,
        ] {
            assert_eq!(format!("{:016x}", mask(set)), "00000000a80405fb");
        }
    }

    #[test]
    fn root_gets_the_legacy_set_whatever_was_asked() {
        let sets = sets_for(true, &names(&["CAP_NET_RAW"])).unwrap();
        assert_eq!(format!("{:016x}", mask(&sets.bounding)), "0000003fffffffff");
        assert_eq!(mask(&sets.effective), mask(&sets.permitted));
        assert!(sets.inheritable.is_empty() && sets.ambient.is_empty());
    }

    #[test]
    fn drop_all_add_one() {
        let caps = task_capabilities(
            &names(&["all"]),
            &names(&["net_bind_service"]),
            &names(&["all"]),
        )
        .unwrap();
        assert_eq!(caps, names(&["CAP_NET_BIND_SERVICE"]));
        assert_eq!(mask(&sets_for(false, &caps).unwrap().ambient), 0x400);
    }

    #[test]
    fn cap_add_outside_allow_caps_and_unknown_names_are_errors() {
        let e = task_capabilities(&names(NOMAD_DEFAULTS.as_slice()), &names(&["net_raw"]), &[])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "driver does not allow the following capabilities: net_raw"
        );
        let e = task_capabilities(&names(&["all"]), &names(&["cap_flying"]), &[]).unwrap_err();
        assert_eq!(e, CapabilityError::Unknown("cap_flying".into()));
        assert!(sets_for(false, &names(&["CAP_NOPE"])).is_err());
    }
}
