//! The schemas the agent decodes configs with (spec nomad-driver-plugin.md §5): Object specs of
//! Attrs, defaults as `Default(Attr with an explicit name, Literal)` (children of Default get no
//! implied name). Defaults rather than `required` in the plugin schema: a required key with no
//! `plugin` block would stop the agent (pitfall P2).

use std::collections::HashMap;

use crate::proto::hclspec::{spec::Block, Attr, Default as DefaultSpec, Literal, Object, Spec};

fn spec(block: Block) -> Spec {
    Spec { block: Some(block) }
}

/// An attribute of `ty` (a type expression such as `string` or `list(string)`).
pub fn attr(name: &str, ty: &str, required: bool) -> Spec {
    spec(Block::Attr(Attr {
        name: name.to_string(),
        r#type: ty.to_string(),
        required,
    }))
}

/// `name` of `ty`, `literal` (an HCL expression) when unset.
pub fn with_default(name: &str, ty: &str, literal: &str) -> Spec {
    spec(Block::Default(Box::new(DefaultSpec {
        primary: Some(Box::new(attr(name, ty, false))),
        default: Some(Box::new(spec(Block::Literal(Literal {
            value: literal.to_string(),
        })))),
    })))
}

/// An object of named specs.
pub fn object(attrs: Vec<(&str, Spec)>) -> Spec {
    spec(Block::Object(Object {
        attributes: attrs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>(),
    }))
}

/// `plugin "goplugin_exec" { config { … } }`.
pub fn plugin_config() -> Spec {
    object(vec![
        ("enabled", with_default("enabled", "bool", "true")),
        ("no_cgroups", with_default("no_cgroups", "bool", "false")),
        ("helpers", with_default("helpers", "string", "\"combined\"")),
        ("isolation", with_default("isolation", "string", "\"none\"")),
        (
            "default_pid_mode",
            with_default("default_pid_mode", "string", "\"private\""),
        ),
        (
            "default_ipc_mode",
            with_default("default_ipc_mode", "string", "\"private\""),
        ),
        (
            "no_pivot_root",
            with_default("no_pivot_root", "bool", "false"),
        ),
        ("allow_caps", attr("allow_caps", "list(string)", false)),
        (
            "denied_host_uids",
            attr("denied_host_uids", "string", false),
        ),
        (
            "denied_host_gids",
            attr("denied_host_gids", "string", false),
        ),
        (
            "denied_envvars",
            attr("denied_envvars", "list(string)", false),
        ),
    ])
}

/// A task's `config {}`: raw_exec's keys, log rotation, and exec's isolation keys.
pub fn task_config() -> Spec {
    object(vec![
        ("command", attr("command", "string", true)),
        ("args", attr("args", "list(string)", false)),
        (
            "cgroup_v2_override",
            attr("cgroup_v2_override", "string", false),
        ),
        (
            "cgroup_v1_override",
            attr("cgroup_v1_override", "list(map(string))", false),
        ),
        ("oom_score_adj", attr("oom_score_adj", "number", false)),
        ("work_dir", attr("work_dir", "string", false)),
        (
            "denied_envvars",
            attr("denied_envvars", "list(string)", false),
        ),
        ("isolation", attr("isolation", "string", false)),
        ("pid_mode", attr("pid_mode", "string", false)),
        ("ipc_mode", attr("ipc_mode", "string", false)),
        ("cap_add", attr("cap_add", "list(string)", false)),
        ("cap_drop", attr("cap_drop", "list(string)", false)),
        ("max_files", with_default("max_files", "number", "10")),
        (
            "max_file_size",
            with_default("max_file_size", "number", "10"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &Spec) -> Vec<String> {
        let Some(Block::Object(o)) = &s.block else {
            panic!("not an object")
        };
        let mut k: Vec<String> = o.attributes.keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn schemas_name_exactly_the_decoded_keys() {
        assert_eq!(keys(&plugin_config()), super::super::config::PLUGIN_KEYS);
        assert_eq!(keys(&task_config()), super::super::config::TASK_KEYS);
    }

    #[test]
    fn attrs_inside_defaults_carry_their_name() {
        let Some(Block::Object(o)) = plugin_config().block else {
            panic!()
        };
        for (key, s) in o.attributes {
            if let Some(Block::Default(d)) = s.block {
                let Some(Block::Attr(a)) = d.primary.and_then(|p| p.block) else {
                    panic!("{key}: primary is not an attr")
                };
                assert_eq!(a.name, key);
            }
        }
    }
}
