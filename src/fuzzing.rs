//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by default; issue #13):
//! thin wrappers over the parsers of outside input that are not public API. Nothing here is
//! meant for other callers, and nothing here changes how the wrapped code behaves.

#[cfg(all(feature = "nomad", target_os = "linux"))]
use std::path::Path;

use crate::broker::{Broker, Side};
use crate::proto::plugin::ConnInfo;
use crate::transport::ListenConfig;

/// The plugin's reading of `PLUGIN_PROTOCOL_VERSIONS` and `PLUGIN_MULTIPLEX_GRPC`
/// (`src/negotiate.rs`).
pub use crate::negotiate::{negotiate, parse_go_bool, HostVersions};

/// The host's reading of a plugin's stderr lines and their re-emission (`src/hclog/parse.rs`,
/// `src/hclog/emit.rs`).
pub use crate::hclog::{
    emit::emit as hclog_emit,
    parse::{parse_line as hclog_parse_line, LogLine, StderrLogParser},
};

/// Go's `encoding/json` rules into any `Deserialize` type (`src/gojson.rs`).
pub use crate::gojson::{from_slice as gojson_from_slice, from_str as gojson_from_str};

/// What a broker did with the `ConnInfo` messages it read from its stream.
#[derive(Debug, Default)]
pub struct BrokerRun {
    /// What it sent back on the stream (knock acks), in order.
    pub sent: Vec<ConnInfo>,
    /// For each ID announced (a message that is not a knock), what a dialer of that ID gets.
    pub announced: Vec<(u32, Option<ConnInfo>)>,
}

/// Feeds `messages` to a fresh plugin-side broker through [`Broker::receive`], as its
/// `StartStream` loop does, with brokered listeners registered for `listening` (multiplexed
/// mode), lets its knock answers go out, then asks what a dialer of each announced ID would
/// read (never dialing it), `None` for an ID whose announcement did not arrive at once. Runs on its own current-thread runtime, dropped at the end with
/// every timer the broker started.
pub fn broker_receive(messages: Vec<ConnInfo>, multiplexed: bool, listening: &[u32]) -> BrokerRun {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async move {
        let closed = tokio_util::sync::CancellationToken::new();
        let broker = Broker::new(
            Side::Plugin,
            ListenConfig::default(),
            None,
            multiplexed,
            closed.clone(),
        );
        let mut accepts = Vec::new();
        if multiplexed {
            for &id in listening {
                // Multiplexed accept only registers the ID: no socket is opened.
                accepts.push(broker.accept(id).await.expect("multiplexed accept"));
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(messages.len().max(1));
        broker.attach(tx);
        let (mut ids, mut knocks) = (Vec::new(), 0);
        for info in messages {
            // What `receive` answers as a knock never reaches a dialer.
            let knock = matches!(&info.knock, Some(k) if k.knock && !k.ack);
            knocks += usize::from(knock);
            if !knock && !ids.contains(&info.service_id) {
                ids.push(info.service_id);
            }
            broker.receive(info);
        }
        let mut run = BrokerRun::default();
        // Knock answers are sent from spawned tasks: turns of the scheduler until all are out
        // (and a few more, so that an extra message would show).
        for turn in 0..64 {
            tokio::task::yield_now().await;
            while let Ok(info) = rx.try_recv() {
                run.sent.push(info);
            }
            if run.sent.len() >= knocks && turn >= 4 {
                break;
            }
        }
        for id in ids {
            let announced =
                tokio::time::timeout(std::time::Duration::from_millis(1), broker.wait_info(id))
                    .await;
            if let Ok(Ok(info)) = announced {
                run.announced.push((id, info));
            }
        }
        closed.cancel();
        drop(accepts);
        run
    })
}

/// The state file `goplugin run --detach` writes, decoded as [`crate::nomad::agent::load_state`]
/// decodes it once read.
#[cfg(all(feature = "nomad", target_os = "linux"))]
pub fn agent_state(json: &str) -> Result<crate::nomad::agent::TaskState, serde_json::Error> {
    crate::gojson::from_str(json)
}

/// The rotator's scan of `<base>.<N>` names in a log directory (logmon, spec
/// nomad-executor-logmon.md §7.4).
#[cfg(all(feature = "nomad", target_os = "linux"))]
pub fn logmon_indices(
    dir: &Path,
    base: &str,
) -> Result<Vec<u64>, crate::nomad::logmon::rotator::RotatorError> {
    crate::nomad::logmon::rotator::existing_indices(dir, base)
}

/// The agent's scan of the same names (`goplugin logs`), sorted.
#[cfg(all(feature = "nomad", target_os = "linux"))]
pub fn agent_log_indices(dir: &Path, base: &str) -> Vec<u64> {
    crate::nomad::agent::indices(dir, base)
}

/// What the gRPC server reads of a client connection that sent `data`, read `chunk` bytes at a
/// time through the `:authority` repair (`src/h2_authority.rs`); `Err` is the error the
/// connection ends with.
pub fn h2_authority_repair(data: &[u8], chunk: usize) -> std::io::Result<Vec<u8>> {
    crate::h2_authority::read_all_through_repair(data, chunk)
}
