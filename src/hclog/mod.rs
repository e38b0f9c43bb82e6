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
//! Host side (crate-private, used by [`Client`](crate::Client)): each stderr line of a plugin is
//! read with go-plugin v1.8.0's rules and re-emitted as a `tracing` event with target
//! [`HOST_TARGET`].

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::filter::ParseError;

pub(crate) mod emit;
mod install;
mod json_line;
mod layer;
mod panic;
pub(crate) mod parse;
#[cfg(test)]
mod test_support;

pub(crate) use emit::emit;
#[cfg(test)]
use emit::format_go_plain_timestamp;
pub use install::{init_plugin_logging, init_plugin_logging_with, log_kv};
pub(crate) use json_line::{format_hclog_timestamp, format_zone, render_json_line};
pub(crate) use layer::hclog_level_name;
pub use layer::HclogLayer;
pub use panic::{install_panic_hook, PANIC_EXIT_CODE};
#[cfg(test)]
use parse::parse_hclog_timestamp;
#[cfg(test)]
pub(crate) use parse::parse_line;
pub(crate) use parse::{LogLine, StderrLogParser};

/// go-plugin's default `PluginLogBufferSize`: a Go host reads stderr lines in pieces of this many
/// bytes and logs the pieces of a longer line verbatim at Debug, unparsed.
pub const DEFAULT_LINE_LIMIT: usize = 64 * 1024;

/// The environment variable [`init_plugin_logging`] reads its `EnvFilter` directives from.
pub const LOG_FILTER_ENV: &str = "GOPLUGIN_LOG";

/// The filter [`init_plugin_logging`] uses when [`LOG_FILTER_ENV`] is unset or empty.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// The `tracing` target of the events a [`Client`](crate::Client) emits for its plugin's stderr
/// lines (filter on it to route or silence them).
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
#[non_exhaustive]
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
