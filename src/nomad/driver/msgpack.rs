//! Reading the msgpack Nomad sends for the plugin config and a task's `config {}` (spec
//! nomad-driver-plugin.md §6): go-cty's encoding of the object the schema describes (every key
//! present, nil when unset, non-negative integers in the uint family, other numbers float64 or,
//! past float64, decimal strings), and also the shape Go tests produce with go-msgpack (signed
//! integers, byte strings as legacy str). Typed lookups say which key is wrong and what it was.

use rmpv::Value;

/// A config that is not what the schema says; the text names the key and what it held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackError {
    /// The bytes are not msgpack.
    #[error("{what} is not valid msgpack: {reason}")]
    Malformed {
        /// `plugin config` or `task config`.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The top level is not a map.
    #[error("{what} must be a map of settings, not {found}")]
    NotAMap {
        /// `plugin config` or `task config`.
        what: &'static str,
        /// What it was.
        found: String,
    },
    /// A key the schema does not have.
    #[error("{what}: unknown key {key:?} (known: {known})")]
    UnknownKey {
        /// `plugin config` or `task config`.
        what: &'static str,
        /// The key.
        key: String,
        /// The keys there are.
        known: String,
    },
    /// A value of the wrong type.
    #[error("{what}: {key:?} must be {expected}, not {found}")]
    Type {
        /// `plugin config` or `task config`.
        what: &'static str,
        /// The key.
        key: String,
        /// The schema's type.
        expected: &'static str,
        /// What it was.
        found: String,
    },
    /// A required key without a value.
    #[error("{what}: {key:?} is required")]
    Missing {
        /// `plugin config` or `task config`.
        what: &'static str,
        /// The key.
        key: String,
    },
}

/// A decoded msgpack map with typed, named lookups.
#[derive(Debug)]
pub struct Fields {
    what: &'static str,
    entries: Vec<(String, Value)>,
}

/// A short description of a value for error messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Nil => "null".into(),
        Value::Boolean(b) => format!("bool {b}"),
        Value::Integer(i) => format!("number {i}"),
        Value::F32(f) => format!("number {f}"),
        Value::F64(f) => format!("number {f}"),
        Value::String(s) => format!("string {:?}", s.as_str().unwrap_or("<not UTF-8>")),
        Value::Binary(b) => format!("{} bytes", b.len()),
        Value::Array(a) => format!("a list of {} items", a.len()),
        Value::Map(m) => format!("a map of {} entries", m.len()),
        Value::Ext(t, _) => format!("msgpack extension {t}"),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.as_str().map(str::to_string),
        // go-msgpack writes []byte as legacy str; a str8 with raw bytes arrives here too.
        Value::Binary(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => i
            .as_i64()
            .map(|n| n as f64)
            .or(i.as_u64().map(|n| n as f64)),
        Value::F32(f) => Some(f64::from(*f)),
        Value::F64(f) => Some(*f),
        // go-cty writes numbers past float64's precision as decimal text.
        Value::String(_) | Value::Binary(_) => text(v)?.trim().parse().ok(),
        _ => None,
    }
}

impl Fields {
    /// Decodes `bytes` (empty means no config: every key unset) and checks every key is in `known`.
    pub fn decode(
        what: &'static str,
        bytes: &[u8],
        known: &[&str],
    ) -> Result<Fields, MsgpackError> {
        if bytes.is_empty() {
            return Ok(Fields {
                what,
                entries: vec![],
            });
        }
        let mut cursor = bytes;
        let value = rmpv::decode::read_value(&mut cursor).map_err(|e| MsgpackError::Malformed {
            what,
            reason: e.to_string(),
        })?;
        if !cursor.is_empty() {
            return Err(MsgpackError::Malformed {
                what,
                reason: format!("{} bytes left after the value", cursor.len()),
            });
        }
        let map = match value {
            Value::Map(m) => m,
            Value::Nil => vec![],
            other => {
                return Err(MsgpackError::NotAMap {
                    what,
                    found: describe(&other),
                })
            }
        };
        let mut entries = Vec::with_capacity(map.len());
        for (k, v) in map {
            let key = text(&k).ok_or_else(|| MsgpackError::NotAMap {
                what,
                found: format!("a map keyed by {}", describe(&k)),
            })?;
            if !known.contains(&key.as_str()) {
                return Err(MsgpackError::UnknownKey {
                    what,
                    key,
                    known: known.join(", "),
                });
            }
            entries.push((key, v));
        }
        Ok(Fields { what, entries })
    }

    /// The value of `key`; nil counts as unset. The last of duplicate keys wins, as in Go.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| !v.is_nil())
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> MsgpackError {
        MsgpackError::Type {
            what: self.what,
            key: key.to_string(),
            expected,
            found: describe(v),
        }
    }

    /// A string; `None` when unset.
    pub fn string(&self, key: &str) -> Result<Option<String>, MsgpackError> {
        self.get(key)
            .map(|v| text(v).ok_or_else(|| self.wrong(key, "a string", v)))
            .transpose()
    }

    /// A string that must be set and non-empty.
    pub fn required_string(&self, key: &str) -> Result<String, MsgpackError> {
        match self.string(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(MsgpackError::Missing {
                what: self.what,
                key: key.to_string(),
            }),
        }
    }

    /// A bool; `None` when unset.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, MsgpackError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "a bool", v)))
            .transpose()
    }

    /// A whole number within `min..=max`; `None` when unset.
    pub fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, MsgpackError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let expected = "a whole number in range";
        let n = number(v).ok_or_else(|| self.wrong(key, "a number", v))?;
        if n.fract() != 0.0 || n < min as f64 || n > max as f64 {
            return Err(MsgpackError::Type {
                what: self.what,
                key: key.to_string(),
                expected,
                found: format!("{} (allowed {min}..={max})", describe(v)),
            });
        }
        Ok(Some(n as i64))
    }

    /// A list of strings; empty when unset.
    pub fn strings(&self, key: &str) -> Result<Vec<String>, MsgpackError> {
        let Some(v) = self.get(key) else {
            return Ok(vec![]);
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "a list of strings", v))?;
        items
            .iter()
            .map(|i| text(i).ok_or_else(|| self.wrong(key, "a list of strings", i)))
            .collect()
    }

    /// A `list(string)` that may be unset (`None`), as opposed to set and empty.
    pub fn strings_opt(&self, key: &str) -> Result<Option<Vec<String>>, MsgpackError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.strings(key).map(Some),
        }
    }

    /// A `list(map(string))` (HCL blocks arrive as a list of objects), merged in order; also
    /// accepts a single map.
    pub fn merged_maps(&self, key: &str) -> Result<Vec<(String, String)>, MsgpackError> {
        let Some(v) = self.get(key) else {
            return Ok(vec![]);
        };
        let expected = "a list of maps of strings";
        let maps: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Map(_) => vec![v],
            other => return Err(self.wrong(key, expected, other)),
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for m in maps {
            let entries = m.as_map().ok_or_else(|| self.wrong(key, expected, m))?;
            for (k, val) in entries {
                let k = text(k).ok_or_else(|| self.wrong(key, expected, k))?;
                let val = text(val).ok_or_else(|| self.wrong(key, expected, val))?;
                out.retain(|(old, _)| *old != k);
                out.push((k, val));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// go-cty's bytes for `{count = 300, name = "x", neg = -5, off = null, ratio = 1.5}`: a map
    /// with sorted keys, 300 as uint16 (0xcd), -5 as a negative fixint, 1.5 as float64.
    const CTY: &[u8] = &[
        0x85, 0xa5, b'c', b'o', b'u', b'n', b't', 0xcd, 0x01, 0x2c, 0xa4, b'n', b'a', b'm', b'e',
        0xa1, b'x', 0xa3, b'n', b'e', b'g', 0xfb, 0xa3, b'o', b'f', b'f', 0xc0, 0xa5, b'r', b'a',
        b't', b'i', b'o', 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,
    ];
    const KEYS: &[&str] = &["count", "name", "neg", "off", "ratio"];

    #[test]
    fn reads_go_cty_encoding() {
        let f = Fields::decode("test", CTY, KEYS).unwrap();
        assert_eq!(f.integer("count", 0, 1000).unwrap(), Some(300));
        assert_eq!(f.integer("neg", -10, 0).unwrap(), Some(-5));
        assert_eq!(f.string("name").unwrap().as_deref(), Some("x"));
        assert_eq!(f.string("off").unwrap(), None, "nil is unset");
        assert!(f.integer("ratio", 0, 10).is_err(), "1.5 is not whole");
    }

    #[test]
    fn big_numbers_as_decimal_text_and_signed_ints_are_accepted() {
        // {"count": "12"} as go-cty writes a number past float64 (text), and {"neg": int8 -1}.
        let f = Fields::decode(
            "test",
            &[
                0x82, 0xa5, b'c', b'o', b'u', b'n', b't', 0xa2, b'1', b'2', 0xa3, b'n', b'e', b'g',
                0xd0, 0xff,
            ],
            KEYS,
        )
        .unwrap();
        assert_eq!(f.integer("count", 0, 100).unwrap(), Some(12));
        assert_eq!(f.integer("neg", -1, 0).unwrap(), Some(-1));
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let e = Fields::decode("task config", CTY, &["count"]).unwrap_err();
        assert!(e.to_string().contains("unknown key \"name\""), "{e}");
        let f = Fields::decode("task config", CTY, KEYS).unwrap();
        let e = f.strings("count").unwrap_err().to_string();
        assert_eq!(
            e,
            "task config: \"count\" must be a list of strings, not number 300"
        );
        let e = f.required_string("off").unwrap_err().to_string();
        assert_eq!(e, "task config: \"off\" is required");
        let e = Fields::decode("task config", &[0x93, 1, 2, 3], KEYS).unwrap_err();
        assert!(e.to_string().contains("must be a map"), "{e}");
        let e = Fields::decode("task config", &[0x85, 0xa5], KEYS).unwrap_err();
        assert!(matches!(e, MsgpackError::Malformed { .. }), "{e}");
        assert!(Fields::decode("x", &[], KEYS)
            .unwrap()
            .get("name")
            .is_none());
    }

    #[test]
    fn block_maps_are_merged() {
        // [{"pids": "/a"}, {"pids": "/b", "cpu": "/c"}]
        let v = Value::Map(vec![(
            Value::from("m"),
            Value::Array(vec![
                Value::Map(vec![(Value::from("pids"), Value::from("/a"))]),
                Value::Map(vec![
                    (Value::from("pids"), Value::from("/b")),
                    (Value::from("cpu"), Value::from("/c")),
                ]),
            ]),
        )]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &v).unwrap();
        let f = Fields::decode("x", &bytes, &["m"]).unwrap();
        assert_eq!(
            f.merged_maps("m").unwrap(),
            vec![("pids".into(), "/b".into()), ("cpu".into(), "/c".into())]
        );
    }
}
