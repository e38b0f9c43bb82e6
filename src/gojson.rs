//! JSON that a Go program wrote, decoded with Go's `encoding/json` rules (the executor's argv
//! config, reattach configs, agent state). serde matches struct keys exactly; Go does not:
//!
//! - a key matches the field with exactly that name, else the first field whose name is equal
//!   under Unicode case folding (`{"fsisolation":true}` sets `FSIsolation`);
//! - keys are applied in document order, so of two keys naming one field the last wins;
//! - `null` for a field leaves it as it was;
//! - unknown keys are ignored.
//!
//! [`from_slice`] parses into an order-keeping tree, then hands it to the type's own
//! `Deserialize`, renaming keys to the field names serde passes to `deserialize_struct`.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// Decodes `json` into `T` as Go's `json.Unmarshal` would fill the struct.
pub fn from_slice<T: DeserializeOwned>(json: &[u8]) -> Result<T, serde_json::Error> {
    let node: Node = serde_json::from_slice(json)?;
    T::deserialize(node)
}

/// [`from_slice`] for text.
pub fn from_str<T: DeserializeOwned>(json: &str) -> Result<T, serde_json::Error> {
    from_slice(json.as_bytes())
}

/// A JSON value whose objects keep every key, duplicates included, in document order.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    Scalar(Value),
}

/// Go's `bytes.EqualFold` on names: equal under simple case folding.
fn fold_eq(a: &str, b: &str) -> bool {
    let mut x = a.chars();
    let mut y = b.chars();
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) if p == q => {}
            (Some(p), Some(q)) => {
                let lower = p.to_lowercase().eq(q.to_lowercase());
                let upper = p.to_uppercase().eq(q.to_uppercase());
                if !lower && !upper {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The field a key sets: exact name first, then the first case-folded match.
fn field_for(key: &str, fields: &'static [&'static str]) -> Option<&'static str> {
    fields
        .iter()
        .find(|f| **f == key)
        .or_else(|| fields.iter().find(|f| fold_eq(f, key)))
        .copied()
}

/// Keys renamed to the struct's field names, in order, last assignment winning; `null`s and
/// unknown keys dropped.
fn struct_entries(
    pairs: Vec<(String, Node)>,
    fields: &'static [&'static str],
) -> Vec<(String, Node)> {
    let mut out: Vec<(String, Node)> = Vec::new();
    for (key, value) in pairs {
        if value == Node::Scalar(Value::Null) {
            continue;
        }
        let Some(field) = field_for(&key, fields) else {
            continue;
        };
        match out.iter_mut().find(|(k, _)| k == field) {
            Some(slot) => slot.1 = value,
            None => out.push((field.to_string(), value)),
        }
    }
    out
}

/// A map's entries with exact duplicates resolved as Go does for map targets: last wins.
fn map_entries(pairs: Vec<(String, Node)>) -> Vec<(String, Node)> {
    let mut out: Vec<(String, Node)> = Vec::new();
    for (key, value) in pairs {
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => out.push((key, value)),
        }
    }
    out
}

impl<'de> de::Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        de::Deserialize::deserialize(d)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut pairs = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Node>()? {
            pairs.push((k, v));
        }
        Ok(Node::Object(pairs))
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Node {
    type Deserializer = Node;
    fn into_deserializer(self) -> Node {
        self
    }
}

impl<'de> de::Deserializer<'de> for Node {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self {
            Node::Scalar(value) => de::Deserializer::deserialize_any(value, v),
            Node::Array(items) => v.visit_seq(SeqDeserializer::new(items.into_iter())),
            Node::Object(pairs) => {
                v.visit_map(MapDeserializer::new(map_entries(pairs).into_iter()))
            }
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            Node::Object(pairs) => v.visit_map(MapDeserializer::new(
                struct_entries(pairs, fields).into_iter(),
            )),
            // Go leaves a struct as it is for `null` and refuses anything else but an object.
            Node::Scalar(Value::Null) => v.visit_map(MapDeserializer::new(
                Vec::<(String, Node)>::new().into_iter(),
            )),
            _ => Err(de::Error::custom(format!(
                "cannot unmarshal a non-object into Go struct {name}"
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self {
            Node::Scalar(Value::Null) => v.visit_none(),
            other => v.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            Node::Scalar(value) => value.deserialize_enum(name, variants, v),
            _ => Err(de::Error::custom(format!(
                "{name}: expected a string naming one of {variants:?}"
            ))),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    struct Inner {
        #[serde(rename = "tc", default)]
        tc: u64,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    struct Outer {
        #[serde(rename = "FSIsolation", default)]
        fs_isolation: bool,
        #[serde(rename = "LogFile", default)]
        log_file: String,
        #[serde(rename = "Compute", default)]
        compute: Inner,
        #[serde(rename = "Pid", default)]
        pid: Option<i64>,
        #[serde(rename = "Env", default)]
        env: HashMap<String, String>,
        #[serde(rename = "Args", default)]
        args: Vec<Inner>,
    }

    fn outer(json: &str) -> Outer {
        from_str(json).unwrap()
    }

    #[test]
    fn exact_keys_decode_as_serde_would() {
        let o = outer(r#"{"FSIsolation":true,"LogFile":"/x","Compute":{"tc":5},"Pid":3}"#);
        assert!(o.fs_isolation);
        assert_eq!(
            (o.log_file.as_str(), o.compute.tc, o.pid),
            ("/x", 5, Some(3))
        );
    }

    #[test]
    fn keys_match_fields_case_insensitively_at_every_depth() {
        for key in ["fsisolation", "FSISOLATION", "fsIsolation", "FsIsOlAtIoN"] {
            assert!(outer(&format!(r#"{{"{key}":true}}"#)).fs_isolation, "{key}");
        }
        assert_eq!(outer(r#"{"compute":{"TC":7}}"#).compute.tc, 7);
        assert_eq!(outer(r#"{"args":[{"Tc":1},{"tC":2}]}"#).args.len(), 2);
        // Go folds the Kelvin sign to k and long s to s.
        assert!(fold_eq("\u{212A}ey", "key") && fold_eq("\u{17F}et", "SET"));
        assert!(!fold_eq("LogFile", "LogFiles"));
    }

    #[test]
    fn the_last_key_for_a_field_wins_in_document_order() {
        assert!(outer(r#"{"FSIsolation":false,"fsisolation":true}"#).fs_isolation);
        assert!(!outer(r#"{"fsisolation":true,"FSIsolation":false}"#).fs_isolation);
        assert!(outer(r#"{"FSIsolation":false,"FSIsolation":true}"#).fs_isolation);
    }

    #[test]
    fn null_leaves_a_field_unchanged() {
        let o = outer(r#"{"FSIsolation":true,"fsisolation":null,"LogFile":null,"Pid":null}"#);
        assert!(o.fs_isolation);
        assert_eq!((o.log_file.as_str(), o.pid), ("", None));
    }

    #[test]
    fn unknown_keys_are_ignored_and_map_keys_stay_exact() {
        let o = outer(r#"{"CpuTotalTicks":1,"Env":{"path":"a","PATH":"b","PATH":"c"}}"#);
        assert_eq!(o.env.get("path").map(String::as_str), Some("a"));
        assert_eq!(o.env.get("PATH").map(String::as_str), Some("c"));
    }

    #[test]
    fn type_errors_and_bad_json_are_errors() {
        assert!(from_str::<Outer>(r#"{"fsisolation":"yes"}"#).is_err());
        assert!(from_str::<Outer>(r#"{"Compute":{"tc":-1}}"#).is_err());
        assert!(from_str::<Outer>(r#"{"Compute":{"tc":1.5}}"#).is_err());
        assert!(from_str::<Outer>("{not json").is_err());
        assert!(from_str::<Outer>("[]").is_err());
    }
}
