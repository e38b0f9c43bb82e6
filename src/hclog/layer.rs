//! Plugin side: the `tracing_subscriber` layer that writes each event as one hclog JSON line
//! (go-plugin-wire.md §13): spans as `@module` suffixes and fields, Go-typed field values.

use std::collections::BTreeMap;
use std::fmt::{self};
use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::Local;
use serde_json::{Number, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::*;

/// A `tracing_subscriber` layer writing each event as one hclog JSON line.
///
/// hclog's `Named("sub")` plus `With(k, v)` is what a `tracing` span is, so `@module` is the
/// configured module name followed by the names of the event's spans, root first, joined with
/// `.` (`executor.launch`), and the fields of those spans are written with the event's own (inner
/// ones win, as hclog's call arguments win over its implied ones). `@module` is left out when
/// it would be empty, as hclog leaves it out for an unnamed logger.
///
/// Each line is rendered first and written with a single `write_all` under a mutex, so lines of
/// concurrent events never interleave.
pub struct HclogLayer {
    module: String,
    include_caller: bool,
    sink: SharedSink,
}

impl fmt::Debug for HclogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HclogLayer")
            .field("module", &self.module)
            .field("include_caller", &self.include_caller)
            .finish_non_exhaustive()
    }
}

impl HclogLayer {
    /// A layer naming its lines `module` and writing them to `writer`.
    pub fn new<W: Write + Send + 'static>(module: impl Into<String>, writer: W) -> Self {
        Self::with_sink(module.into(), Arc::new(Mutex::new(Box::new(writer))))
    }

    pub(super) fn with_sink(module: String, sink: SharedSink) -> Self {
        HclogLayer {
            module,
            include_caller: false,
            sink,
        }
    }

    /// Also write `@caller` (`file:line` of the event), as hclog does with `IncludeLocation`.
    pub fn with_caller(mut self, include: bool) -> Self {
        self.include_caller = include;
        self
    }

    fn render_event<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> String
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let mut module_parts: Vec<String> = Vec::new();
        if !self.module.is_empty() {
            module_parts.push(self.module.clone());
        }
        let mut fields = BTreeMap::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                module_parts.push(span.name().to_string());
                if let Some(span_fields) = span.extensions().get::<SpanFields>() {
                    fields.extend(span_fields.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut collector = FieldCollector::for_event(&mut fields);
        event.record(&mut collector);
        let message = collector.message.take().unwrap_or_default();
        let log_location = collector.log_location.take();

        for key in RESERVED_KEYS {
            fields.remove(key);
        }
        let meta = event.metadata();
        fields.insert(
            "@level".into(),
            Value::from(hclog_level_name(*meta.level())),
        );
        fields.insert("@message".into(), Value::String(message));
        fields.insert(
            "@timestamp".into(),
            Value::String(format_hclog_timestamp(&Local::now())),
        );
        if !module_parts.is_empty() {
            fields.insert("@module".into(), Value::String(module_parts.join(".")));
        }
        if self.include_caller {
            let caller = match (meta.file(), meta.line()) {
                (Some(file), Some(line)) => Some(format!("{file}:{line}")),
                _ => log_location,
            };
            if let Some(caller) = caller {
                fields.insert("@caller".into(), Value::String(caller));
            }
        }
        render_json_line(&fields)
    }

    fn write_line(&self, line: &str) {
        let mut sink = lock_sink(&self.sink);
        // Nowhere is left to report a failing log write; the plugin keeps running.
        let _ = sink.write_all(line.as_bytes());
        let _ = sink.flush();
    }
}

impl<S> Layer<S> for HclogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        // A second HclogLayer on the same registry shares (and idempotently refills) the entry.
        if extensions.get_mut::<SpanFields>().is_none() {
            extensions.insert(SpanFields::default());
        }
        if let Some(span_fields) = extensions.get_mut::<SpanFields>() {
            attrs.record(&mut FieldCollector::for_span(&mut span_fields.0));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if extensions.get_mut::<SpanFields>().is_none() {
            extensions.insert(SpanFields::default());
        }
        if let Some(span_fields) = extensions.get_mut::<SpanFields>() {
            values.record(&mut FieldCollector::for_span(&mut span_fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let line = self.render_event(event, &ctx);
        self.write_line(&line);
    }
}

/// The recorded fields of one span, kept in the registry's span extensions.
#[derive(Default)]
struct SpanFields(BTreeMap<String, Value>);

/// Turns `tracing` field values into JSON values of their natural type.
struct FieldCollector<'a> {
    fields: &'a mut BTreeMap<String, Value>,
    /// `Some` while collecting an event: its `message` field becomes `@message`.
    message: Option<String>,
    is_event: bool,
    log_file: Option<String>,
    log_line: Option<u64>,
    log_location: Option<String>,
}

impl<'a> FieldCollector<'a> {
    fn for_span(fields: &'a mut BTreeMap<String, Value>) -> Self {
        FieldCollector {
            fields,
            message: None,
            is_event: false,
            log_file: None,
            log_line: None,
            log_location: None,
        }
    }

    fn for_event(fields: &'a mut BTreeMap<String, Value>) -> Self {
        FieldCollector {
            is_event: true,
            ..Self::for_span(fields)
        }
    }

    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if self.is_event && name == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
            return;
        }
        if LOG_BRIDGE_FIELDS.contains(&name) {
            self.note_log_location(name, &value);
            return;
        }
        self.fields.insert(name.to_string(), value);
    }

    fn note_log_location(&mut self, name: &str, value: &Value) {
        match (name, value) {
            ("log.file", Value::String(file)) => self.log_file = Some(file.clone()),
            ("log.line", Value::Number(line)) => self.log_line = line.as_u64(),
            _ => return,
        }
        if let (Some(file), Some(line)) = (&self.log_file, self.log_line) {
            self.log_location = Some(format!("{file}:{line}"));
        }
    }
}

impl Visit for FieldCollector<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, float_value(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let json = match i64::try_from(value) {
            Ok(small) => Value::from(small),
            Err(_) => match u64::try_from(value) {
                Ok(unsigned) => Value::from(unsigned),
                Err(_) => Value::String(value.to_string()),
            },
        };
        self.put(field, json);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let json = match u64::try_from(value) {
            Ok(small) => Value::from(small),
            Err(_) => Value::String(value.to_string()),
        };
        self.put(field, json);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // hclog writes an error value as its Error() string.
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

/// JSON has no NaN or infinities; Go's encoder refuses them and hclog then drops the whole line,
/// so write them as the strings Go's `%v` prints instead.
fn float_value(value: f64) -> Value {
    match Number::from_f64(value) {
        Some(number) => Value::Number(number),
        None if value.is_nan() => Value::String("NaN".into()),
        None if value > 0.0 => Value::String("+Inf".into()),
        None => Value::String("-Inf".into()),
    }
}

pub(crate) fn hclog_level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{self};

    use std::time::Duration;

    use chrono::{FixedOffset, TimeZone};
    use serde_json::Value;

    use tracing::Level;

    use tracing_subscriber::prelude::*;

    use crate::hclog::test_support::*;

    #[test]
    fn layer_output_parses_back_with_same_level_message_and_fields() {
        let out = capture("kv", || {
            tracing::warn!(
                key = "hello",
                count = 42u64,
                delta = -7i64,
                ratio = 0.5,
                ok = true,
                "put {}",
                "done"
            );
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let parsed = parse_line(lines[0]);
        assert_eq!(parsed.level(), Level::WARN);
        assert_eq!(parsed.text(), "put done");
        let fields = fields_of(&parsed);
        assert_eq!(fields["key"], Value::from("hello"));
        assert_eq!(fields["count"], Value::from(42u64));
        assert_eq!(fields["delta"], Value::from(-7i64));
        assert_eq!(fields["ratio"], Value::from(0.5));
        assert_eq!(fields["ok"], Value::Bool(true));
        assert_eq!(fields["@module"], Value::from("kv"));
        let LogLine::Json { timestamp, .. } = parsed else {
            unreachable!()
        };
        assert!(timestamp.is_some());
    }

    #[test]
    fn timestamp_has_six_fractional_digits_in_go_layout() {
        let out = capture("ts", || tracing::info!("tick"));
        let map = json_of(out.trim_end());
        let Some(Value::String(ts)) = map.get("@timestamp") else {
            panic!("no @timestamp in {out}")
        };
        assert!(matches_go_layout(ts), "{ts}");
        assert!(parse_hclog_timestamp(ts).is_some(), "{ts}");
    }

    #[test]
    fn timestamp_formats_zone_like_go() {
        let utc = FixedOffset::east_opt(0).and_then(|o| {
            o.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
                .single()
                .map(|t| t + chrono::Duration::nanoseconds(123_456_789))
        });
        let utc = utc.expect("valid time");
        assert_eq!(format_hclog_timestamp(&utc), "2026-01-02T03:04:05.123456Z");
        let india = utc.with_timezone(&FixedOffset::east_opt(5 * 3600 + 1800).expect("offset"));
        assert_eq!(
            format_hclog_timestamp(&india),
            "2026-01-02T08:34:05.123456+05:30"
        );
        let pacific = utc.with_timezone(&FixedOffset::west_opt(8 * 3600).expect("offset"));
        assert_eq!(
            format_hclog_timestamp(&pacific),
            "2026-01-01T19:04:05.123456-08:00"
        );
        assert_eq!(
            format_go_plain_timestamp(&pacific),
            "2026-01-01T19:04:05.123-0800"
        );
        assert_eq!(format_go_plain_timestamp(&utc), "2026-01-02T03:04:05.123Z");
    }

    #[test]
    fn levels_map_to_hclog_names() {
        let out = capture("lv", || {
            tracing::trace!("t");
            tracing::debug!("d");
            tracing::info!("i");
            tracing::warn!("w");
            tracing::error!("e");
        });
        let levels: Vec<Value> = out.lines().map(|l| json_of(l)["@level"].clone()).collect();
        assert_eq!(
            levels,
            ["trace", "debug", "info", "warn", "error"].map(Value::from)
        );
        let parsed: Vec<Level> = out.lines().map(|l| parse_line(l).level()).collect();
        assert_eq!(
            parsed,
            [
                Level::TRACE,
                Level::DEBUG,
                Level::INFO,
                Level::WARN,
                Level::ERROR
            ]
        );
    }

    #[test]
    fn span_names_extend_module_and_span_fields_are_included() {
        let out = capture("exec", || {
            let outer = tracing::info_span!("launch", task = "web", attempt = 1u64);
            let _outer = outer.enter();
            let inner = tracing::info_span!("wait", attempt = 2u64, pid = tracing::field::Empty);
            inner.record("pid", 4242i64);
            let _inner = inner.enter();
            tracing::info!(exit = 0i64, "exited");
        });
        let map = json_of(out.trim_end());
        assert_eq!(map["@module"], Value::from("exec.launch.wait"));
        assert_eq!(map["task"], Value::from("web"));
        assert_eq!(map["attempt"], Value::from(2u64), "inner span wins");
        assert_eq!(map["pid"], Value::from(4242i64));
        assert_eq!(map["exit"], Value::from(0i64));
        assert_eq!(map["@message"], Value::from("exited"));
    }

    #[test]
    fn empty_module_without_spans_omits_module_key() {
        let out = capture("", || tracing::info!("anonymous"));
        assert!(!json_of(out.trim_end()).contains_key("@module"), "{out}");
    }

    #[test]
    fn keys_are_sorted_bytewise_like_go_encoding_json() {
        let out = capture("m", || tracing::info!(zeta = 1u64, alpha = 2u64, "msg"));
        let line = out.trim_end();
        let keys = [
            "\"@level\"",
            "\"@message\"",
            "\"@module\"",
            "\"@timestamp\"",
            "\"alpha\"",
            "\"zeta\"",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| {
                line.find(k)
                    .unwrap_or_else(|| panic!("{k} missing in {line}"))
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert!(line.starts_with("{\"@level\":\"info\",\"@message\":\"msg\",\"@module\":\"m\","));
    }

    #[test]
    fn message_with_quotes_newlines_and_unicode_stays_one_escaped_line() {
        let tricky = "say \"hi\"\nback\\slash\ttab <b>&</b> \u{2028} \u{1} żółw 🦀";
        let out = capture("esc", || tracing::error!(detail = tricky, "{}", tricky));
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(out.ends_with("}\n"));
        assert!(out.contains(r#"say \"hi\"\nback\\slash\ttab \u003cb\u003e\u0026\u003c/b\u003e \u2028 \u0001 żółw 🦀"#), "{out}");
        let parsed = parse_line(out.trim_end());
        assert_eq!(parsed.text(), tricky);
        assert_eq!(fields_of(&parsed)["detail"], Value::from(tricky));
    }

    #[test]
    fn debug_and_display_values_are_strings_and_odd_numbers_survive() {
        let err = io::Error::other("disk on fire");
        let out = capture("v", || {
            tracing::info!(
                wait = ?Duration::from_millis(1500),
                addr = %"127.0.0.1:9",
                err = &err as &(dyn std::error::Error + 'static),
                huge = u128::MAX,
                nan = f64::NAN,
                "values"
            )
        });
        let map = json_of(out.trim_end());
        assert_eq!(map["wait"], Value::from("1.5s"));
        assert_eq!(map["addr"], Value::from("127.0.0.1:9"));
        assert_eq!(map["err"], Value::from("disk on fire"));
        assert_eq!(map["huge"], Value::from(u128::MAX.to_string()));
        assert_eq!(map["nan"], Value::from("NaN"));
    }

    #[test]
    fn fields_never_overwrite_reserved_keys() {
        let out = capture("m", || {
            tracing::info!("@level" = 5u64, "@module" = "x", "real")
        });
        let map = json_of(out.trim_end());
        assert_eq!(map["@level"], Value::from("info"));
        assert_eq!(map["@module"], Value::from("m"));
    }

    #[test]
    fn caller_is_written_when_asked() {
        let buf = SharedBuf::default();
        let layer = HclogLayer::new("c", buf.clone()).with_caller(true);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || tracing::info!("where"));
        let map = json_of(buf.text().trim_end());
        let Some(Value::String(caller)) = map.get("@caller") else {
            panic!("no @caller")
        };
        assert!(caller.contains("layer.rs:"), "{caller}");
    }
}
