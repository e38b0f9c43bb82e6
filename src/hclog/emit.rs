//! Host side: a parsed stderr line re-emitted as a `tracing` event at the level a Go host logs it
//! at, with target [`HOST_TARGET`] (§13).

use chrono::{DateTime, FixedOffset, Timelike};
use serde_json::Value;
use tracing::Level;

use super::*;

/// Re-emits a parsed line as a `tracing` event with target [`HOST_TARGET`] at the level a Go host
/// would use, with fields `plugin`, `module` (the line's `@module`, when a string) and `fields`:
/// the other keys of a leveled JSON line as `key=value` pairs, hclog's plain style, ending with
/// `timestamp=` in hclog's `2006-01-02T15:04:05.000Z0700` as a Go host adds it.
pub fn emit(line: &LogLine, plugin_name: &str) {
    let (module, pairs) = match line {
        LogLine::Json {
            level: Some(_),
            timestamp,
            fields,
            ..
        } => (module_of(fields), render_pairs(fields, timestamp.as_ref())),
        _ => (None, String::new()),
    };
    let pairs = (!pairs.is_empty()).then_some(pairs);
    let pairs = pairs.as_deref().map(tracing::field::display);
    let text = line.text();
    macro_rules! event_at {
        ($level:expr) => {
            tracing::event!(
                target: HOST_TARGET,
                $level,
                plugin = plugin_name,
                module,
                fields = pairs,
                "{}",
                text
            )
        };
    }
    match line.level() {
        Level::TRACE => event_at!(Level::TRACE),
        Level::DEBUG => event_at!(Level::DEBUG),
        Level::INFO => event_at!(Level::INFO),
        Level::WARN => event_at!(Level::WARN),
        _ => event_at!(Level::ERROR),
    }
}

fn module_of(fields: &[(String, Value)]) -> Option<&str> {
    fields.iter().find_map(|(key, value)| match value {
        Value::String(module) if key == "@module" => Some(module.as_str()),
        _ => None,
    })
}

fn render_pairs(fields: &[(String, Value)], timestamp: Option<&DateTime<FixedOffset>>) -> String {
    let mut out = String::new();
    for (key, value) in fields {
        if key == "@module" && value.is_string() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(key);
        out.push('=');
        match value {
            Value::String(s) => push_plain_value(&mut out, s),
            other => out.push_str(&other.to_string()),
        }
    }
    if let Some(timestamp) = timestamp {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("timestamp=");
        out.push_str(&format_go_plain_timestamp(timestamp));
    }
    out
}

/// hclog's plain style: a value of only `-`..`~` characters goes bare, anything else quoted.
fn push_plain_value(out: &mut String, value: &str) {
    if !value.is_empty() && value.chars().all(|c| ('\u{2d}'..='\u{7e}').contains(&c)) {
        out.push_str(value);
    } else {
        out.push_str(&Value::String(value.to_string()).to_string());
    }
}

/// hclog's `TimeFormat`, `2006-01-02T15:04:05.000Z0700`.
pub(crate) fn format_go_plain_timestamp(t: &DateTime<FixedOffset>) -> String {
    let millis = (t.nanosecond() % 1_000_000_000) / 1_000_000;
    format!(
        "{}.{millis:03}{}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        format_zone(t.offset().local_minus_utc(), false)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fmt::{self};

    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};

    use tracing::{Event, Level, Subscriber};

    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::prelude::*;

    /// Records the events `emit` produces.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<RecordedEvent>>>);

    /// Target, level and fields (as strings) of one event.
    type RecordedEvent = (String, Level, BTreeMap<String, String>);

    impl<S: Subscriber> Layer<S> for Recorder {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            struct Strings(BTreeMap<String, String>);
            impl Visit for Strings {
                fn record_str(&mut self, field: &Field, value: &str) {
                    self.0.insert(field.name().into(), value.into());
                }
                fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                    self.0.insert(field.name().into(), format!("{value:?}"));
                }
            }
            let mut fields = Strings(BTreeMap::new());
            event.record(&mut fields);
            let meta = event.metadata();
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push((
                meta.target().to_string(),
                *meta.level(),
                fields.0,
            ));
        }
    }

    fn emitted(lines: &[LogLine]) -> Vec<RecordedEvent> {
        let recorder = Recorder::default();
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            for line in lines {
                emit(line, "kv-plugin");
            }
        });
        let events = recorder.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        events
    }

    #[test]
    fn emit_uses_plugin_target_level_and_fields() {
        let json = parse_line(
            r#"{"@level":"warn","@message":"slow put","@module":"kv.store","@timestamp":"2026-01-02T03:04:05.123456+01:00","key":"a b","n":3}"#,
        );
        let events = emitted(&[json, parse_line("[ERROR] plain"), parse_line(r#"{"x":1}"#)]);
        assert_eq!(events.len(), 3);

        let (target, level, fields) = &events[0];
        assert_eq!(target, HOST_TARGET);
        assert_eq!(*level, Level::WARN);
        assert_eq!(fields["message"], "slow put");
        assert_eq!(fields["plugin"], "kv-plugin");
        assert_eq!(fields["module"], "kv.store");
        assert_eq!(
            fields["fields"],
            r#"key="a b" n=3 timestamp=2026-01-02T03:04:05.123+0100"#
        );

        let (_, level, fields) = &events[1];
        assert_eq!(*level, Level::ERROR);
        assert_eq!(fields["message"], "[ERROR] plain");
        assert!(!fields.contains_key("module") && !fields.contains_key("fields"));

        let (_, level, fields) = &events[2];
        assert_eq!(*level, Level::DEBUG);
        assert_eq!(fields["message"], r#"{"x":1}"#);
    }
}
