//! Go's `encoding/json` rules (`src/gojson.rs`) on a nested struct with every shape the crate
//! decodes: renamed fields, defaults, options, nested structs, sequences, maps, newtypes and
//! unit enums.
//!
//! Properties: never a panic; anything accepted is valid JSON; a decoded value serialised with
//! its exact field names decodes to itself, under Go's rules and plain serde alike.
#![no_main]

use std::collections::BTreeMap;

use goplugin::fuzzing::gojson_from_slice;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Mode {
    Fast,
    #[serde(rename = "slow")]
    Slow,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Millis(u64);

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Inner {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Count", default)]
    count: i32,
    #[serde(rename = "Tags", default)]
    tags: Vec<String>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Outer {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(rename = "Enabled", default)]
    enabled: bool,
    #[serde(rename = "Ratio", default)]
    ratio: f64,
    #[serde(rename = "Inner", default)]
    inner: Inner,
    #[serde(rename = "Maybe", default)]
    maybe: Option<Inner>,
    #[serde(rename = "List", default)]
    list: Vec<Inner>,
    #[serde(rename = "Env", default)]
    env: BTreeMap<String, String>,
    #[serde(rename = "Timeout", default)]
    timeout: Option<Millis>,
    #[serde(rename = "Mode", default)]
    mode: Option<Mode>,
    #[serde(rename = "ŞpecialKey", default)]
    special: i8,
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = gojson_from_slice::<Outer>(data) else {
        return;
    };
    assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok());
    let json = serde_json::to_vec(&value).expect("serialises");
    let again: Outer = gojson_from_slice(&json).expect("Go rules");
    let plain: Outer = serde_json::from_slice(&json).expect("plain serde");
    // NaN cannot come from JSON; every f64 compares.
    assert_eq!(again, value);
    assert_eq!(plain, value);
});
