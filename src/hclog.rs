//! Plugin stderr as hclog JSON lines, and the host's reading of those lines back into `tracing`
//! events (go-plugin-wire.md §13, pitfall P16).
//!
//! Plugin side: [`HclogLayer`] writes every `tracing` event as one JSON object per line in the
//! format go-hclog's JSON logger writes and a Go host's `logStderr` parses: `@level`, `@message`,
//! `@module`, `@timestamp` (local time, exactly six fractional digits) and the event's fields, all
//! keys sorted bytewise as Go's `encoding/json` sorts map keys. [`init_plugin_logging`] installs it
//! on a dup of fd 2 taken before the server redirects fd 2 into the stdio stream, and
//! [`install_panic_hook`] writes a Go-like `panic: ` report to the same descriptor so a Go host
//! switches to Error level for it.
//!
//! Host side: [`parse_line`] and [`StderrLogParser`] apply go-plugin v1.8.0's rules to one stderr
//! line of a plugin, and [`emit`] re-emits the result as a `tracing` event with target
//! [`HOST_TARGET`].

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::panic::{Location, PanicHookInfo};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, FixedOffset, Local, NaiveDate, Offset, TimeZone, Timelike};
use serde_json::{Map, Number, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_log::AsLog;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, ParseError};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// go-plugin's default `PluginLogBufferSize`: a Go host reads stderr lines in pieces of this many
/// bytes and logs the pieces of a longer line verbatim at Debug, unparsed.
pub const DEFAULT_LINE_LIMIT: usize = 64 * 1024;

/// The environment variable [`init_plugin_logging`] reads its `EnvFilter` directives from.
pub const LOG_FILTER_ENV: &str = "GOPLUGIN_LOG";

/// The filter [`init_plugin_logging`] uses when [`LOG_FILTER_ENV`] is unset or empty.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// The `tracing` target of the events [`emit`] produces for a plugin's stderr lines.
pub const HOST_TARGET: &str = "goplugin::plugin";

/// The Go layout of `@timestamp` (hclog's `TimeFormatJSON`, the layout go-plugin's host parses).
pub const HCLOG_TIMESTAMP_LAYOUT: &str = "2006-01-02T15:04:05.000000Z07:00";

/// Keys of an hclog line that its fields never overwrite.
const RESERVED_KEYS: [&str; 5] = ["@caller", "@level", "@message", "@module", "@timestamp"];

/// Fields the `tracing-log` bridge adds to events that came from the `log` crate.
const LOG_BRIDGE_FIELDS: [&str; 4] = ["log.target", "log.module_path", "log.file", "log.line"];

/// How long the panic hook waits for a log line being written by another thread.
const PANIC_LOCK_WAIT: Duration = Duration::from_millis(250);

/// Errors of installing plugin-side logging.
#[derive(Debug, thiserror::Error)]
pub enum HclogError {
    /// The shared handle on the real stderr could not be taken.
    #[error("duplicating stderr (fd 2) for plugin logging: {source}")]
    DupStderr {
        /// The OS error.
        source: io::Error,
    },
    /// A log filter does not parse.
    #[error("invalid log filter {directives:?} (from {origin}): {source}")]
    Filter {
        /// The filter as given.
        directives: String,
        /// Where it came from (an environment variable or the caller).
        origin: &'static str,
        /// Why it does not parse.
        source: ParseError,
    },
    /// Another global `tracing` subscriber is installed already.
    #[error("installing the global tracing subscriber for plugin logging: {source}")]
    Install {
        /// tracing's error.
        source: tracing::subscriber::SetGlobalDefaultError,
    },
}

type SharedSink = Arc<Mutex<Box<dyn Write + Send>>>;

/// The sink of the installed global layer, which the panic hook writes to as well.
static GLOBAL_SINK: OnceLock<SharedSink> = OnceLock::new();

fn lock_sink(sink: &SharedSink) -> MutexGuard<'_, Box<dyn Write + Send>> {
    // A panic while a line was being written must not silence every later line.
    sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The host's log pipe: the real stderr even after [`crate::stdio::capture`] moved fd 2, so
/// log lines never land in the mirrored stderr stream, whichever was set up first.
fn dup_stderr() -> Result<crate::stdio::OriginalStderr, HclogError> {
    crate::stdio::original_stderr().map_err(|source| HclogError::DupStderr { source })
}

/// Writes one hclog JSON line with fields whose names are only known at run time (tracing
/// needs static field names), to the sink of [`init_plugin_logging`] or else the real stderr.
/// Go plugins log like this: `logger.Info("PrintKV called", key, value)`.
pub fn log_kv(level: Level, message: &str, fields: &[(&str, Value)]) {
    let mut map: BTreeMap<String, Value> = fields
        .iter()
        .filter(|(k, _)| !RESERVED_KEYS.contains(k))
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    map.insert("@level".into(), Value::from(hclog_level_name(level)));
    map.insert("@message".into(), Value::String(message.to_string()));
    map.insert(
        "@timestamp".into(),
        Value::String(format_hclog_timestamp(&Local::now())),
    );
    let line = render_json_line(&map);
    match GLOBAL_SINK.get() {
        Some(sink) => {
            let mut sink = lock_sink(sink);
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
        }
        None => {
            if let Ok(mut f) = dup_stderr() {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin side: the layer
// ---------------------------------------------------------------------------------------------

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

    fn with_sink(module: String, sink: SharedSink) -> Self {
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

fn hclog_level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        _ => "error",
    }
}

/// `t` in hclog's JSON layout `2006-01-02T15:04:05.000000Z07:00`: microseconds truncated, `Z` for
/// a zero offset, otherwise `±hh:mm` with any seconds of the offset dropped, as Go formats it.
fn format_hclog_timestamp<Tz: TimeZone>(t: &DateTime<Tz>) -> String {
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
fn format_zone(offset_seconds: i32, colon: bool) -> String {
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
fn render_json_line(fields: &BTreeMap<String, Value>) -> String {
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

// ---------------------------------------------------------------------------------------------
// Plugin side: installation and the panic hook
// ---------------------------------------------------------------------------------------------

/// Installs the global subscriber of a plugin: an [`HclogLayer`] named `module` on a dup of fd 2
/// taken now, filtered by the `EnvFilter` directives in `GOPLUGIN_LOG` (default `info`). Also
/// bridges the `log` crate unless a `log` logger is already set. Before or after the server
/// redirects fd 2 for stdio streaming, the lines go to the real stderr (the host's log).
pub fn init_plugin_logging(module: &str) -> Result<(), HclogError> {
    let directives = match std::env::var_os(LOG_FILTER_ENV) {
        Some(value) if !value.is_empty() => value.to_string_lossy().into_owned(),
        _ => DEFAULT_LOG_FILTER.to_string(),
    };
    let filter = parse_filter(&directives, LOG_FILTER_ENV)?;
    install_global(module, Box::new(dup_stderr()?), filter)
}

/// Installs the global subscriber of a plugin: an [`HclogLayer`] named `module` on `writer`,
/// filtered by the `EnvFilter` directives `filter` (an empty string enables nothing).
pub fn init_plugin_logging_with<W: Write + Send + 'static>(
    module: &str,
    writer: W,
    filter: &str,
) -> Result<(), HclogError> {
    let filter = parse_filter(filter, "argument")?;
    install_global(module, Box::new(writer), filter)
}

/// Transport crates whose events are per frame or per poll: off unless a directive names them
/// (Nomad asks its helpers for `debug` and never rotates their log files), and the level their
/// real problems are reported at otherwise.
const TRANSPORT_TARGETS: [(&str, &str); 9] = [
    ("h2", "off"),
    ("hyper", "off"),
    ("hyper_util", "off"),
    ("tower", "off"),
    ("mio", "off"),
    ("tonic", "warn"),
    ("rustls", "warn"),
    ("tokio_rustls", "warn"),
    ("yamux", "warn"),
];

/// `directives` plus the transport defaults for every transport target it does not name.
fn with_transport_defaults(directives: &str) -> String {
    let named = |target: &str| {
        directives.split(',').any(|d| {
            let d = d.trim();
            d == target
                || d.starts_with(&format!("{target}="))
                || d.starts_with(&format!("{target}::"))
        })
    };
    let mut out = directives.trim().to_string();
    for (target, level) in TRANSPORT_TARGETS {
        if !named(target) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{target}={level}"));
        }
    }
    out
}

fn parse_filter(directives: &str, origin: &'static str) -> Result<EnvFilter, HclogError> {
    EnvFilter::builder()
        .parse(with_transport_defaults(directives))
        .map_err(|source| HclogError::Filter {
            directives: directives.to_string(),
            origin,
            source,
        })
}

fn install_global(
    module: &str,
    writer: Box<dyn Write + Send>,
    filter: EnvFilter,
) -> Result<(), HclogError> {
    let sink: SharedSink = Arc::new(Mutex::new(writer));
    let layer = HclogLayer::with_sink(module.to_string(), Arc::clone(&sink));
    let subscriber = tracing_subscriber::registry().with(filter).with(layer);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|source| HclogError::Install { source })?;
    // Only one global subscriber can ever be installed, so this is the first and only set.
    let _ = GLOBAL_SINK.set(sink);
    // `log` records (yamux, rustls) become events too, unless the program installed its own
    // `log` logger, which then keeps them.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(LevelFilter::current().as_log())
        .init();
    Ok(())
}

/// Replaces the panic hook with one that writes a Go-style report to the log descriptor:
/// `panic: <payload> at <file>:<line>:<col>`, a blank line, `thread '<name>' [running]:`, then
/// one backtrace frame per line. A Go host logs a line starting `panic: ` and every following
/// non-JSON line at Error (§13 step 5).
///
/// The descriptor is the one of [`init_plugin_logging`] (whenever it was called), otherwise a dup
/// of fd 2 taken now, otherwise stderr at panic time. The previous hook is not called: the
/// default one would print to fd 2, which a serving plugin has redirected into the stdio stream.
/// After the report the process exits with status 2 ([`PANIC_EXIT_CODE`]), as Go's does.
pub fn install_panic_hook() {
    let fallback: Option<SharedSink> = match GLOBAL_SINK.get() {
        Some(_) => None,
        None => dup_stderr()
            .ok()
            .map(|file| Arc::new(Mutex::new(Box::new(file) as Box<dyn Write + Send>))),
    };
    std::panic::set_hook(Box::new(move |info| {
        let report = panic_report_for(info);
        match GLOBAL_SINK.get().or(fallback.as_ref()) {
            Some(sink) => write_panic_report(sink, &report),
            None => {
                let _ = io::stderr().write_all(report.as_bytes());
            }
        }
        // A Go plugin dies on an unrecovered panic (exit status 2) and its host sees the crash;
        // tokio would otherwise swallow a panicking handler and leave a half-working plugin.
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// Exit status after a panic, as a Go program's.
pub const PANIC_EXIT_CODE: i32 = 2;

fn panic_report_for(info: &PanicHookInfo<'_>) -> String {
    // `PanicHookInfo::payload_as_str` is newer than the crate's MSRV.
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let thread = std::thread::current();
    let backtrace = std::backtrace::Backtrace::force_capture().to_string();
    panic_report(
        payload,
        info.location(),
        thread.name().unwrap_or("<unnamed>"),
        &backtrace,
    )
}

fn panic_report(
    payload: &str,
    location: Option<&Location<'_>>,
    thread: &str,
    backtrace: &str,
) -> String {
    let mut report = format!("panic: {payload}");
    if let Some(location) = location {
        let _ = write!(report, " at {location}");
    }
    let _ = write!(report, "\n\nthread '{thread}' [running]:\n");
    for frame in backtrace_frames(backtrace) {
        report.push_str(&frame);
        report.push('\n');
    }
    report
}

/// std prints a frame as `  N: symbol` and then `      at file:line:col` lines; fold each
/// frame into one line, as Go's trace gives one line per call, and drop the frames of the hook
/// and of std's panic machinery (up to `__rust_end_short_backtrace`, as std's short format does).
fn backtrace_frames(backtrace: &str) -> Vec<String> {
    let mut frames = fold_frames(backtrace);
    if let Some(marker) = frames
        .iter()
        .position(|frame| frame.contains("__rust_end_short_backtrace"))
    {
        frames.drain(..=marker);
    }
    frames
}

fn fold_frames(backtrace: &str) -> Vec<String> {
    let mut frames: Vec<String> = Vec::new();
    for line in backtrace.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match frames.last_mut() {
            Some(frame) if trimmed.starts_with("at ") => {
                frame.push(' ');
                frame.push_str(trimmed);
            }
            _ => frames.push(line.trim_end().to_string()),
        }
    }
    frames
}

fn write_panic_report(sink: &SharedSink, report: &str) {
    // The panicking thread may itself hold the lock (a writer that panicked); don't deadlock.
    let deadline = Instant::now() + PANIC_LOCK_WAIT;
    let mut guard = loop {
        match sink.try_lock() {
            Ok(guard) => break Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => break Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TryLockError::WouldBlock) => break None,
        }
    };
    match guard.as_mut() {
        Some(writer) => {
            let _ = writer.write_all(report.as_bytes());
            let _ = writer.flush();
        }
        None => {
            let _ = io::stderr().write_all(report.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host side: parsing a plugin's stderr lines
// ---------------------------------------------------------------------------------------------

/// One stderr line of a plugin as a Go host (go-plugin v1.8.0 `logStderr`) understands it.
#[derive(Debug, Clone, PartialEq)]
pub enum LogLine {
    /// A JSON object (or `null`) that go-plugin's `parseJSON` accepts.
    Json {
        /// `@level` when it names trace/debug/info/warn/error; `None` (an unknown, missing or
        /// `off` level) makes a Go host log the raw line at Debug.
        level: Option<Level>,
        /// `@message`, empty when missing.
        message: String,
        /// `@timestamp`; an offset of ±24:xx, which Go accepts and chrono cannot hold, is
        /// converted to UTC.
        timestamp: Option<DateTime<FixedOffset>>,
        /// Every other key, `@module` and `@caller` included.
        fields: Vec<(String, Value)>,
        /// The line as read.
        raw: String,
    },
    /// Anything else, kept verbatim (a `[LEVEL]` prefix included).
    Plain {
        /// From a `[TRACE]`..`[ERROR]` prefix, Error for a `panic: `/`fatal error: ` line (and,
        /// through [`StderrLogParser`], the lines after it); `None` means Debug.
        level: Option<Level>,
        /// The line, verbatim.
        text: String,
    },
}

impl LogLine {
    /// A fragment of an over-long line: a Go host logs it verbatim at Debug, never parses it and
    /// does not let it change panic mode.
    pub fn fragment(text: &str) -> Self {
        LogLine::Plain {
            level: Some(Level::DEBUG),
            text: text.to_string(),
        }
    }

    /// The level a Go host logs this line at.
    pub fn level(&self) -> Level {
        match self {
            LogLine::Json { level, .. } | LogLine::Plain { level, .. } => {
                level.unwrap_or(Level::DEBUG)
            }
        }
    }

    /// The text a Go host logs: the message of a leveled JSON line, otherwise the line itself.
    pub fn text(&self) -> &str {
        match self {
            LogLine::Json {
                level: Some(_),
                message,
                ..
            } => message,
            LogLine::Json { raw, .. } => raw,
            LogLine::Plain { text, .. } => text,
        }
    }
}

/// Parses one stderr line (without its line ending) by go-plugin's host rules, statelessly.
///
/// Where a Go host would crash (a non-string `@message`, `@level` or `@timestamp`: an unchecked
/// type assertion in `parseJSON`), the line is treated as plain text instead.
pub fn parse_line(line: &str) -> LogLine {
    parse_json_line(line).unwrap_or_else(|| parse_plain_line(line))
}

fn parse_json_line(line: &str) -> Option<LogLine> {
    // Go unmarshals into a map: objects are accepted, and so is `null` (a nil map).
    let mut map = match serde_json::from_str::<Value>(line).ok()? {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => return None,
    };
    let message = take_string(&mut map, "@message")?.unwrap_or_default();
    let level_name = take_string(&mut map, "@level")?.unwrap_or_default();
    let timestamp = match take_string(&mut map, "@timestamp")? {
        Some(text) => Some(parse_hclog_timestamp(&text)?),
        None => None,
    };
    Some(LogLine::Json {
        level: level_from_hclog(&level_name),
        message,
        timestamp,
        fields: map.into_iter().collect(),
        raw: line.to_string(),
    })
}

/// `Some(None)` when `key` is absent, `None` when its value is not a string.
fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<Option<String>> {
    match map.remove(key) {
        None => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => None,
    }
}

/// hclog's `LevelFromString`: trimmed, case-insensitive; `off` and unknown names are no level.
fn level_from_hclog(name: &str) -> Option<Level> {
    // Go lowercases with the simple (one-rune) mapping: İ becomes i, not i + U+0307.
    let lower: String = name
        .trim()
        .chars()
        .filter_map(|c| c.to_lowercase().next())
        .collect();
    match lower.as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" => Some(Level::WARN),
        "error" => Some(Level::ERROR),
        _ => None,
    }
}

const LEVEL_PREFIXES: [(&str, Level); 5] = [
    ("[TRACE]", Level::TRACE),
    ("[DEBUG]", Level::DEBUG),
    ("[INFO]", Level::INFO),
    ("[WARN]", Level::WARN),
    ("[ERROR]", Level::ERROR),
];

fn starts_panic(text: &str) -> bool {
    text.starts_with("panic: ") || text.starts_with("fatal error: ")
}

fn parse_plain_line(line: &str) -> LogLine {
    let level = LEVEL_PREFIXES
        .iter()
        .find(|(prefix, _)| line.starts_with(prefix))
        .map(|(_, level)| *level)
        .or_else(|| starts_panic(line).then_some(Level::ERROR));
    LogLine::Plain {
        level,
        text: line.to_string(),
    }
}

/// Parses a Go `time.Parse("2006-01-02T15:04:05.000000Z07:00", s)` would accept, with its quirks:
/// one-digit hours, `,` as the fraction separator, a signed fraction (`.+12345`), zone offsets up
/// to 24:60; seconds below 60, real calendar days.
fn parse_hclog_timestamp(s: &str) -> Option<DateTime<FixedOffset>> {
    let b = s.as_bytes();
    let (year, rest) = fixed_digits(b, 4)?;
    let rest = literal(rest, b'-')?;
    let (month, rest) = fixed_digits(rest, 2)?;
    let rest = literal(rest, b'-')?;
    let (day, rest) = fixed_digits(rest, 2)?;
    let rest = literal(rest, b'T')?;
    let (hour, rest) = one_or_two_digits(rest)?;
    let rest = literal(rest, b':')?;
    let (minute, rest) = fixed_digits(rest, 2)?;
    let rest = literal(rest, b':')?;
    let (second, rest) = fixed_digits(rest, 2)?;
    let (nanos, rest) = go_fraction(rest)?;
    let (offset_seconds, rest) = go_colon_zone(rest)?;
    if !rest.is_empty() || !(1..=12).contains(&month) || hour >= 24 || minute >= 60 || second >= 60
    {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let naive = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    let utc = naive.checked_sub_signed(chrono::Duration::seconds(i64::from(offset_seconds)))?;
    let offset = FixedOffset::east_opt(offset_seconds).unwrap_or(FixedOffset::east_opt(0)?);
    Some(offset.from_utc_datetime(&utc))
}

fn literal(b: &[u8], want: u8) -> Option<&[u8]> {
    match b.split_first() {
        Some((&c, rest)) if c == want => Some(rest),
        _ => None,
    }
}

fn fixed_digits(b: &[u8], n: usize) -> Option<(u32, &[u8])> {
    if b.len() < n || !b[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = b[..n]
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    Some((value, &b[n..]))
}

/// Go's `15` takes one digit when a second one does not follow.
fn one_or_two_digits(b: &[u8]) -> Option<(u32, &[u8])> {
    match b {
        [d0, d1, ..] if d0.is_ascii_digit() && d1.is_ascii_digit() => fixed_digits(b, 2),
        [d0, ..] if d0.is_ascii_digit() => fixed_digits(b, 1),
        _ => None,
    }
}

/// `.000000`: a `.` or `,` then six characters Go's `atoi` reads as a non-negative number
/// (an optional sign and digits), scaled as six digits.
fn go_fraction(b: &[u8]) -> Option<(u32, &[u8])> {
    let (&separator, rest) = b.split_first()?;
    if !matches!(separator, b'.' | b',') || rest.len() < 6 {
        return None;
    }
    let (field, rest) = rest.split_at(6);
    let (negative, digits) = match field.split_first() {
        Some((b'+', digits)) => (false, digits),
        Some((b'-', digits)) => (true, digits),
        _ => (false, field),
    };
    let (value, _) = fixed_digits(digits, digits.len())?;
    if negative && value != 0 {
        return None;
    }
    Some((value * 1_000, rest))
}

/// `Z07:00`: `Z`, or a sign, two digits, `:`, two digits, hours up to 24 and minutes up to 60.
fn go_colon_zone(b: &[u8]) -> Option<(i32, &[u8])> {
    if let Some(rest) = literal(b, b'Z') {
        return Some((0, rest));
    }
    if b.len() < 6 || b[3] != b':' {
        return None;
    }
    let (hours, _) = fixed_digits(&b[1..3], 2)?;
    let (minutes, _) = fixed_digits(&b[4..6], 2)?;
    if hours > 24 || minutes > 60 {
        return None;
    }
    let magnitude = i32::try_from((hours * 60 + minutes) * 60).ok()?;
    let offset = match b[0] {
        b'+' => magnitude,
        b'-' => -magnitude,
        _ => return None,
    };
    Some((offset, &b[6..]))
}

/// [`parse_line`] plus go-plugin's panic mode (v1.7.0+): once a plain line starts with
/// `panic: ` or `fatal error: `, it and every later plain line without a `[LEVEL]` prefix are
/// Error; JSON lines keep their own level. One parser per plugin process.
///
/// Fragments of over-long lines must not go through [`StderrLogParser::parse`]: log them as
/// [`LogLine::fragment`].
#[derive(Debug, Default, Clone)]
pub struct StderrLogParser {
    in_panic: bool,
}

impl StderrLogParser {
    /// A parser that has seen no panic yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a `panic: `/`fatal error: ` line has been seen.
    pub fn in_panic(&self) -> bool {
        self.in_panic
    }

    /// Parses one complete stderr line with go-plugin's rules; once a panic started, every
    /// later plain line without a `[LEVEL]` prefix is an Error.
    pub fn parse(&mut self, line: &str) -> LogLine {
        match parse_line(line) {
            LogLine::Plain { level, text } => {
                if starts_panic(&text) {
                    self.in_panic = true;
                }
                let level = match level {
                    None if self.in_panic => Some(Level::ERROR),
                    other => other,
                };
                LogLine::Plain { level, text }
            }
            json => json,
        }
    }
}

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
fn format_go_plain_timestamp(t: &DateTime<FixedOffset>) -> String {
    let millis = (t.nanosecond() % 1_000_000_000) / 1_000_000;
    format!(
        "{}.{millis:03}{}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        format_zone(t.offset().local_minus_utc(), false)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn transport_targets_are_off_unless_named() {
        let d = super::with_transport_defaults("debug");
        assert!(
            d.starts_with("debug,") && d.contains("h2=off") && d.contains("yamux=warn"),
            "{d}"
        );
        let d = super::with_transport_defaults("trace,h2=trace,hyper::proto=debug");
        assert!(d.contains("h2=trace") && !d.contains("h2=off"), "{d}");
        assert!(
            !d.contains("hyper=off") && d.contains("hyper_util=off"),
            "{d}"
        );
        assert_eq!(super::with_transport_defaults("").split(',').count(), 9);
        assert!(super::parse_filter("info", "test").is_ok());
    }

    use super::*;
    use std::process::Command;

    /// A cloneable in-memory writer standing in for the stderr dup.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

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
        fn text(&self) -> String {
            let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            String::from_utf8(bytes).expect("layer output is UTF-8")
        }
    }

    /// Runs `f` under a subscriber with an HclogLayer named `module`; returns the written text.
    fn capture(module: &str, f: impl FnOnce()) -> String {
        let buf = SharedBuf::default();
        let subscriber = tracing_subscriber::registry().with(HclogLayer::new(module, buf.clone()));
        tracing::subscriber::with_default(subscriber, f);
        buf.text()
    }

    fn json_of(line: &str) -> Map<String, Value> {
        match serde_json::from_str::<Value>(line).expect("valid JSON") {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn fields_of(line: &LogLine) -> BTreeMap<String, Value> {
        match line {
            LogLine::Json { fields, .. } => fields.iter().cloned().collect(),
            other => panic!("not JSON: {other:?}"),
        }
    }

    /// The Go layout as a pattern: `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)`.
    fn matches_go_layout(s: &str) -> bool {
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
        assert!(caller.contains("hclog.rs:"), "{caller}");
    }

    #[test]
    fn parses_minimal_conforming_hclog_line() {
        let line = r#"{"@level":"info","@message":"PrintKV called","@timestamp":"2026-01-02T03:04:05.123456Z","foo":"bar"}"#;
        let parsed = parse_line(line);
        let LogLine::Json {
            level,
            message,
            timestamp,
            fields,
            raw,
        } = &parsed
        else {
            panic!("not JSON: {parsed:?}")
        };
        assert_eq!(*level, Some(Level::INFO));
        assert_eq!(message, "PrintKV called");
        let ts = timestamp.expect("timestamp");
        assert_eq!(ts.to_rfc3339(), "2026-01-02T03:04:05.123456+00:00");
        assert_eq!(fields, &vec![("foo".to_string(), Value::from("bar"))]);
        assert_eq!(raw, line);
    }

    #[test]
    fn bracketed_level_prefix_sets_level_and_stays_in_text() {
        assert_eq!(
            parse_line("[WARN] test line 98765"),
            LogLine::Plain {
                level: Some(Level::WARN),
                text: "[WARN] test line 98765".into()
            }
        );
        assert_eq!(parse_line("[TRACE] x").level(), Level::TRACE);
        assert_eq!(parse_line("[DEBUG] x").level(), Level::DEBUG);
        assert_eq!(parse_line("[INFO] x").level(), Level::INFO);
        assert_eq!(parse_line("[ERROR] x").level(), Level::ERROR);
        assert_eq!(
            parse_line("[warn] lowercase is not a prefix").level(),
            Level::DEBUG
        );
    }

    #[test]
    fn json_that_is_not_an_object_is_plain_debug_verbatim() {
        for line in [r#"["HELLO"]"#, "12345", "\"str\"", "true", "{not json"] {
            assert_eq!(
                parse_line(line),
                LogLine::Plain {
                    level: None,
                    text: line.into()
                },
                "{line}"
            );
        }
    }

    #[test]
    fn object_without_level_is_raw_line_at_debug() {
        let parsed = parse_line(r#"{"a":1}"#);
        assert!(matches!(parsed, LogLine::Json { level: None, .. }));
        assert_eq!(parsed.level(), Level::DEBUG);
        assert_eq!(parsed.text(), r#"{"a":1}"#);
        // Go unmarshals `null` into a nil map without error: the JSON path, no level.
        assert!(matches!(
            parse_line("null"),
            LogLine::Json { level: None, .. }
        ));
    }

    #[test]
    fn unknown_or_off_level_is_raw_line_at_debug() {
        for level in ["verbose", "off", "", "fatal"] {
            let line = format!(r#"{{"@level":"{level}","@message":"m"}}"#);
            let parsed = parse_line(&line);
            assert!(
                matches!(parsed, LogLine::Json { level: None, .. }),
                "{line}"
            );
            assert_eq!(parsed.level(), Level::DEBUG);
            assert_eq!(parsed.text(), line);
        }
    }

    #[test]
    fn level_is_trimmed_and_case_insensitive() {
        assert_eq!(
            parse_line(r#"{"@level":" WARN ","@message":"m"}"#).level(),
            Level::WARN
        );
        assert_eq!(
            parse_line(r#"{"@level":"Error","@message":"m"}"#).level(),
            Level::ERROR
        );
        assert_eq!(
            parse_line(r#"{"@level":"\u0130NFO","@message":"m"}"#).level(),
            Level::INFO
        );
    }

    #[test]
    fn bad_timestamp_makes_line_plain() {
        for ts in [
            "2026-01-02T03:04:05.12345Z",
            "2026-01-02T03:04:05.1234567Z",
            "2026-01-02T03:04:05Z",
            "2026-01-02 03:04:05.123456Z",
            "2026-01-02T03:04:05.123456+0100",
            "2026-01-02T03:04:05.123456",
            "2026-01-02T03:04:05.123456Zjunk",
            "2026-02-29T03:04:05.123456Z",
            "2026-13-02T03:04:05.123456Z",
            "2026-01-02T24:04:05.123456Z",
            "2026-01-02T03:04:60.123456Z",
            "2026-01-02T03:04:05.-12345Z",
            "2026-01-02T03:04:05.123456+25:00",
            "2026-1-02T03:04:05.123456Z",
        ] {
            let line = format!(r#"{{"@level":"info","@message":"m","@timestamp":"{ts}"}}"#);
            assert!(
                matches!(parse_line(&line), LogLine::Plain { level: None, .. }),
                "{ts} should be rejected"
            );
        }
    }

    #[test]
    fn timestamp_accepts_what_go_time_parse_accepts() {
        let cases = [
            (
                "2026-01-02T03:04:05.123456+05:30",
                "2026-01-02T03:04:05.123456+05:30",
            ),
            (
                "2026-01-02T03:04:05,123456Z",
                "2026-01-02T03:04:05.123456+00:00",
            ),
            (
                "2026-01-02T3:04:05.123456Z",
                "2026-01-02T03:04:05.123456+00:00",
            ),
            (
                "2026-01-02T03:04:05.+12345Z",
                "2026-01-02T03:04:05.012345+00:00",
            ),
            ("2026-01-02T03:04:05.-00000Z", "2026-01-02T03:04:05+00:00"),
            (
                "2024-02-29T03:04:05.000001-08:00",
                "2024-02-29T03:04:05.000001-08:00",
            ),
            // Go allows ±24:xx; chrono cannot hold it, so the instant is kept in UTC.
            (
                "2026-01-02T03:04:05.000000+24:00",
                "2026-01-01T03:04:05+00:00",
            ),
        ];
        for (input, want) in cases {
            let got = parse_hclog_timestamp(input).unwrap_or_else(|| panic!("{input} rejected"));
            assert_eq!(got.to_rfc3339(), want, "{input}");
        }
    }

    #[test]
    fn non_string_reserved_values_are_plain_not_a_crash() {
        // Each of these crashes a Go host (unchecked type assertion in parseJSON).
        for line in [
            r#"{"@level":"info","@message":42}"#,
            r#"{"@level":"info","@message":null}"#,
            r#"{"@level":["info"],"@message":"m"}"#,
            r#"{"@level":"info","@message":"m","@timestamp":1767322245}"#,
        ] {
            assert_eq!(
                parse_line(line),
                LogLine::Plain {
                    level: None,
                    text: line.into()
                }
            );
        }
    }

    #[test]
    fn panic_mode_makes_following_plain_lines_error() {
        let mut parser = StderrLogParser::new();
        let info =
            r#"{"@level":"info","@message":"before","@timestamp":"2026-01-02T03:04:05.123456Z"}"#;
        let script: [(&str, Level); 8] = [
            ("plain before", Level::DEBUG),
            (info, Level::INFO),
            ("panic: boom", Level::ERROR),
            ("", Level::ERROR),
            ("goroutine 1 [running]:", Level::ERROR),
            ("[INFO] prefixed lines keep their level", Level::INFO),
            (
                r#"{"@level":"debug","@message":"json keeps its level"}"#,
                Level::DEBUG,
            ),
            ("\tmain.go:12 +0x1d", Level::ERROR),
        ];
        for (line, want) in script {
            assert_eq!(parser.parse(line).level(), want, "{line:?}");
        }
        assert!(parser.in_panic());

        let mut fatal = StderrLogParser::new();
        assert_eq!(
            fatal
                .parse("fatal error: all goroutines are asleep")
                .level(),
            Level::ERROR
        );
        assert_eq!(fatal.parse("more").level(), Level::ERROR);
        assert!(!StderrLogParser::new().in_panic());
    }

    #[test]
    fn fragments_are_debug_verbatim() {
        assert_eq!(
            LogLine::fragment("{\"@level\":\"error\"").level(),
            Level::DEBUG
        );
        assert_eq!(LogLine::fragment("abc").text(), "abc");
    }

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

    #[test]
    fn panic_report_folds_frames_onto_one_line_each() {
        let backtrace = "   0: app::inner\n             at ./src/main.rs:3:5\n   1: app::main\n             at ./src/main.rs:9:5\n   2: <unknown>\n";
        let report = panic_report("boom", None, "main", backtrace);
        assert_eq!(
            report,
            "panic: boom\n\nthread 'main' [running]:\n   0: app::inner at ./src/main.rs:3:5\n   1: app::main at ./src/main.rs:9:5\n   2: <unknown>\n"
        );
    }

    const CHILD_ENV: &str = "GOPLUGIN_HCLOG_TEST_CHILD";

    /// The body of the child process of `plugin_logging_and_panic_hook_reach_a_go_host_as_expected`.
    #[test]
    fn child_process_plugin_main() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        init_plugin_logging("hclog-child").expect("install logging");
        install_panic_hook();
        tracing::info!(answer = 42u64, "child up");
        tracing::trace!("filtered out by GOPLUGIN_LOG=debug");
        tracing::debug!("child debug");
        let payload = String::from("kaboom");
        nested_panic(&payload);
    }

    #[inline(never)]
    fn nested_panic(payload: &str) {
        panic!("{payload} in child");
    }

    #[test]
    fn plugin_logging_and_panic_hook_reach_a_go_host_as_expected() {
        let exe = std::env::current_exe().expect("test binary path");
        let output = Command::new(exe)
            .args([
                "--exact",
                "hclog::tests::child_process_plugin_main",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env(LOG_FILTER_ENV, "debug")
            .output()
            .expect("run child");
        assert!(!output.status.success(), "child should panic");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();

        let mut parser = StderrLogParser::new();
        let parsed: Vec<LogLine> = lines.iter().map(|l| parser.parse(l)).collect();
        assert!(parsed.len() >= 3, "{stderr}");
        assert_eq!(parsed[0].level(), Level::INFO, "{stderr}");
        assert_eq!(parsed[0].text(), "child up");
        assert_eq!(fields_of(&parsed[0])["@module"], Value::from("hclog-child"));
        assert_eq!(fields_of(&parsed[0])["answer"], Value::from(42u64));
        assert_eq!(parsed[1].level(), Level::DEBUG);
        assert_eq!(parsed[1].text(), "child debug");

        let panic_at = lines
            .iter()
            .position(|l| l.starts_with("panic: "))
            .unwrap_or_else(|| panic!("no panic line in {stderr}"));
        assert_eq!(panic_at, 2, "{stderr}");
        let first = lines[panic_at];
        assert!(first.contains("kaboom in child"), "{first}");
        assert!(first.contains("hclog.rs:"), "location missing: {first}");
        assert_eq!(lines[panic_at + 1], "");
        assert!(lines[panic_at + 2].ends_with("[running]:"), "{stderr}");
        let after = &lines[panic_at + 1..];
        assert!(
            after.len() >= 10,
            "only {} lines after panic: {stderr}",
            after.len()
        );
        assert!(stderr.contains("nested_panic"), "{stderr}");
        assert!(parsed[panic_at..].iter().all(|l| l.level() == Level::ERROR));
    }
}
