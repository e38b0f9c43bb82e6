//! Plugin side: installing the global subscriber (an [`HclogLayer`] on the host's log pipe, an
//! `EnvFilter` from `GOPLUGIN_LOG` with quiet transport crates, the `log` bridge), and
//! [`log_kv`] for fields named at run time (§13).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::Local;
use serde_json::Value;
use tracing::Level;
use tracing_log::AsLog;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::prelude::*;

use super::*;

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

/// Installs the global subscriber of a plugin: an [`HclogLayer`] named `module` on a dup of fd 2
/// taken now, filtered by the `EnvFilter` directives in `GOPLUGIN_LOG` (default `info`). Also
/// bridges the `log` crate unless a `log` logger is already set. Before or after the server
/// redirects fd 2 for stdio streaming, the lines go to the real stderr (the host's log).
///
/// ```no_run
/// // First thing in a plugin's main: every `tracing` event (and `log` record) becomes one
/// // hclog JSON line on stderr, which a Go host logs under its plugin logger at the event's
/// // level, with its fields.
/// goplugin::hclog::init_plugin_logging("kv-plugin").expect("logging installed once");
/// tracing::info!(key = "hello", "put");
/// ```
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
}
