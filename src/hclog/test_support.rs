//! Fixtures shared by hclog's unit tests: an in-memory sink, a capturing subscriber, JSON and
//! Go-layout checks.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing_subscriber::prelude::*;

use super::*;

/// A cloneable in-memory writer standing in for the stderr dup.
#[derive(Clone, Default)]
pub(crate) struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).expect("layer output is UTF-8")
    }
}

/// Runs `f` under a subscriber with an HclogLayer named `module`; returns the written text.
pub(crate) fn capture(module: &str, f: impl FnOnce()) -> String {
    let buf = SharedBuf::default();
    let subscriber = tracing_subscriber::registry().with(HclogLayer::new(module, buf.clone()));
    tracing::subscriber::with_default(subscriber, f);
    buf.text()
}

pub(crate) fn json_of(line: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(line).expect("valid JSON") {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

pub(crate) fn fields_of(line: &LogLine) -> BTreeMap<String, Value> {
    match line {
        LogLine::Json { fields, .. } => fields.iter().cloned().collect(),
        other => panic!("not JSON: {other:?}"),
    }
}

/// The Go layout as a pattern: `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)`.
pub(crate) fn matches_go_layout(s: &str) -> bool {
    let b = s.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd.dddddd";
    if b.len() < shape.len() + 1 {
        return false;
    }
    let head_ok = shape.iter().zip(b).all(|(want, got)| match want {
        b'd' => got.is_ascii_digit(),
        lit => lit == got,
    });
    let zone = &b[shape.len()..];
    let zone_ok = zone == b"Z"
        || (zone.len() == 6
            && matches!(zone[0], b'+' | b'-')
            && zone[1].is_ascii_digit()
            && zone[2].is_ascii_digit()
            && zone[3] == b':'
            && zone[4].is_ascii_digit()
            && zone[5].is_ascii_digit());
    head_ok && zone_ok
}
