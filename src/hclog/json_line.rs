//! Plugin side: one hclog JSON line as go-hclog writes it with Go's `encoding/json` (§13): keys
//! sorted bytewise, Go's escaping (HTML on), `@timestamp` in hclog's `TimeFormatJSON`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike};
use serde_json::Value;

/// `t` in hclog's JSON layout `2006-01-02T15:04:05.000000Z07:00`: microseconds truncated, `Z` for
/// a zero offset, otherwise `±hh:mm` with any seconds of the offset dropped, as Go formats it.
pub(crate) fn format_hclog_timestamp<Tz: TimeZone>(t: &DateTime<Tz>) -> String {
    let local = t.naive_local();
    let micros = (local.nanosecond() % 1_000_000_000) / 1_000;
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
        local.year(),
        local.month(),
        local.day(),
        local.hour(),
        local.minute(),
        local.second(),
        micros
    );
    out.push_str(&format_zone(t.offset().fix().local_minus_utc(), true));
    out
}

/// Go's `Z07:00` (`colon`) or `Z0700` zone: `Z` only when the offset is zero seconds; the sign
/// comes from the offset in whole minutes, truncated toward zero.
pub(crate) fn format_zone(offset_seconds: i32, colon: bool) -> String {
    if offset_seconds == 0 {
        return "Z".into();
    }
    let minutes = offset_seconds / 60;
    let sign = if minutes < 0 { '-' } else { '+' };
    let minutes = minutes.unsigned_abs();
    let separator = if colon { ":" } else { "" };
    format!("{sign}{:02}{separator}{:02}", minutes / 60, minutes % 60)
}

/// One JSON object and `\n`, keys in the map's (bytewise) order, escaped as Go's
/// `encoding/json` escapes with HTML escaping on (hclog's default).
pub(crate) fn render_json_line(fields: &BTreeMap<String, Value>) -> String {
    let mut out = String::with_capacity(128);
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_go_json_string(&mut out, key);
        out.push(':');
        write_go_json_value(&mut out, value);
    }
    out.push_str("}\n");
    out
}

fn write_go_json_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => write_go_json_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json_string(out, key);
                out.push(':');
                write_go_json_value(out, item);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // Go escapes the HTML specials and the JavaScript line separators as \u00XX / \u20XX.
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
