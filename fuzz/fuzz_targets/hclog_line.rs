//! A plugin's stderr as the host reads it (`src/hclog/parse.rs` and `emit.rs` through
//! `goplugin::fuzzing`; go-plugin-wire.md §13), and the plugin side's JSON lines read back.
//!
//! Input: stderr bytes, split into lines as the host splits them. Properties: never a panic;
//! a plain line keeps its text and a JSON line its raw text; the stateful parser agrees with the
//! stateless one but for the panic-mode level; `emit` formats every line (the subscriber
//! installed formats all fields); and a line used as the message and a field of a `tracing`
//! event written by `HclogLayer` comes back from `parse_line` as that message and field.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use goplugin::fuzzing::{hclog_emit, hclog_parse_line, LogLine, StderrLogParser};
use goplugin::hclog::HclogLayer;
use libfuzzer_sys::fuzz_target;
use tracing::{Dispatch, Level};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The host side's events go here: every field is formatted, then dropped.
struct FormatAll;

struct Formatter(String);

impl tracing::field::Visit for Formatter {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for FormatAll {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = Formatter(String::new());
        event.record(&mut out);
        std::hint::black_box(out.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

struct Plugin {
    buffer: Buffer,
    dispatch: Dispatch,
}

fn plugin() -> &'static Plugin {
    static PLUGIN: OnceLock<Plugin> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        tracing::subscriber::set_global_default(FormatAll).expect("one global subscriber");
        let buffer = Buffer::default();
        let layer = HclogLayer::new("fuzz", buffer.clone());
        let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
        Plugin { buffer, dispatch }
    })
}

fn check_round_trip(plugin: &Plugin, text: &str) {
    plugin.buffer.0.lock().unwrap().clear();
    tracing::dispatcher::with_default(&plugin.dispatch, || {
        tracing::warn!(f = text, "{}", text);
    });
    let out = String::from_utf8(std::mem::take(&mut *plugin.buffer.0.lock().unwrap()))
        .expect("hclog output is UTF-8");
    let line = out
        .strip_suffix('\n')
        .expect("one line ending in a newline");
    assert!(!line.contains('\n'), "{line:?}");
    match hclog_parse_line(line) {
        LogLine::Json {
            level,
            message,
            fields,
            timestamp,
            ..
        } => {
            assert_eq!(level, Some(Level::WARN), "{line}");
            assert_eq!(message, text, "{line}");
            assert!(timestamp.is_some(), "{line}");
            let f = fields.iter().find(|(k, _)| k == "f").map(|(_, v)| v);
            assert_eq!(f.and_then(|v| v.as_str()), Some(text), "{line}");
        }
        plain => panic!("hclog's own line read as plain: {plain:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let plugin = plugin();
    let stderr = String::from_utf8_lossy(data);
    let mut parser = StderrLogParser::new();
    for line in stderr.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let stateless = hclog_parse_line(line);
        match &stateless {
            LogLine::Plain { text, .. } => assert_eq!(text, line),
            LogLine::Json { raw, .. } => assert_eq!(raw, line),
        }
        let stateful = parser.parse(line);
        match (&stateless, &stateful) {
            (LogLine::Plain { text: a, level: la }, LogLine::Plain { text: b, level: lb }) => {
                assert_eq!(a, b);
                assert!(la == lb || (la.is_none() && *lb == Some(Level::ERROR)));
            }
            (a, b) => assert_eq!(a, b),
        }
        hclog_emit(&stateful, "fuzz");
        hclog_emit(&LogLine::fragment(line), "fuzz");
    }
    check_round_trip(plugin, &stderr);
});
