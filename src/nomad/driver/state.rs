//! The task handle's `driver_state` (spec nomad-driver-plugin.md §8 TaskHandle, §10 RecoverTask,
//! §11): everything the driver needs to find a task again after the agent or the driver itself
//! restarted, since the agent then sends no task config (pitfall P6). msgpack (named fields),
//! versioned, and marked with the driver's name so a handle written by another driver is refused
//! rather than misread. Version 2 adds `helpers` (one helper process per task or two); a
//! version 1 handle, written before that choice existed, is a two-helper task.

use serde::{Deserialize, Serialize};

use super::config::{Helpers, TaskConfig};
use super::DRIVER_NAME;
use crate::reattach::{ProcessIdentity, ReattachConfig};

/// `TaskHandle.version` this driver writes and reads (0 is reserved by Nomad); the layout of
/// `driver_state` is versioned inside it ([`STATE_VERSION`]).
pub const HANDLE_VERSION: i32 = 1;
/// [`TaskState::version`] this driver writes: 2 since `helpers`.
pub const STATE_VERSION: u32 = 2;
/// The oldest [`TaskState::version`] this driver reads: 1, two helpers, no `helpers` field.
pub const OLDEST_STATE_VERSION: u32 = 1;

/// Errors reading a handle.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not our msgpack.
    #[error(
        "task handle state is not goplugin_exec's (corrupt or written by another driver): {0}"
    )]
    Corrupt(String),
    /// Written by another driver.
    #[error("task handle was written by driver {0:?}, not goplugin_exec")]
    Foreign(String),
    /// Written by a version of this driver that this one cannot read.
    #[error(
        "task handle state version {0} is not one this driver reads (it reads {OLDEST_STATE_VERSION} to {STATE_VERSION})"
    )]
    Version(u32),
}

/// What a task's logmon was started with, to start another on the same FIFOs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    /// `<alloc dir>/alloc/logs`.
    pub log_dir: String,
    /// FIFO the task's stdout goes into.
    pub stdout_fifo: String,
    /// FIFO the task's stderr goes into.
    pub stderr_fifo: String,
    /// Files kept per stream.
    pub max_files: u32,
    /// MiB per file.
    pub max_file_size_mb: u32,
}

/// The persisted task state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// Always [`DRIVER_NAME`].
    pub driver: String,
    /// [`STATE_VERSION`].
    pub version: u32,
    /// `TaskConfig.id`.
    pub id: String,
    /// Task name.
    pub name: String,
    /// Allocation id.
    pub alloc_id: String,
    /// Host alloc dir.
    pub alloc_dir: String,
    /// User the task runs as ("" = the driver's).
    pub user: String,
    /// The decoded task config.
    pub config: TaskConfig,
    /// Logs; `None` when the task's output goes to /dev/null.
    pub logs: Option<LogConfig>,
    /// One helper process or two (absent from version 1 handles: two).
    #[serde(default = "two_helpers")]
    pub helpers: Helpers,
    /// Reattach to the executor (with `Helpers::Combined`, the one helper serving both).
    pub executor: ReattachConfig,
    /// Reattach to logmon (as first started; a replacement started later is found again by
    /// starting another); `None` with `Helpers::Combined` or when there are no logs.
    pub logmon: Option<ReattachConfig>,
    /// The task's main process.
    pub task: ProcessIdentity,
    /// Start time, nanoseconds since the Unix epoch.
    pub started_at_unix_nanos: i64,
}

fn two_helpers() -> Helpers {
    Helpers::Separate
}

impl TaskState {
    /// msgpack with field names.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Reads `driver_state`, refusing another driver's or an unknown version.
    pub fn decode(bytes: &[u8]) -> Result<TaskState, StateError> {
        #[derive(Deserialize)]
        struct Mark {
            driver: String,
            version: u32,
        }
        let mark: Mark =
            rmp_serde::from_slice(bytes).map_err(|e| StateError::Corrupt(e.to_string()))?;
        if mark.driver != DRIVER_NAME {
            return Err(StateError::Foreign(mark.driver));
        }
        if !(OLDEST_STATE_VERSION..=STATE_VERSION).contains(&mark.version) {
            return Err(StateError::Version(mark.version));
        }
        rmp_serde::from_slice(bytes).map_err(|e| StateError::Corrupt(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TaskState {
        let rc = ReattachConfig {
            protocol: "grpc".into(),
            protocol_version: 2,
            network: "unix".into(),
            addr: "/tmp/plugin1".into(),
            pid: 42,
            test: false,
            process: Some(ProcessIdentity {
                pid: 42,
                start_ticks: 7,
            }),
            tls: None,
        };
        TaskState {
            driver: DRIVER_NAME.into(),
            version: STATE_VERSION,
            id: "a/web/1".into(),
            name: "web".into(),
            alloc_id: "a".into(),
            alloc_dir: "/alloc".into(),
            user: String::new(),
            config: TaskConfig {
                command: "/bin/sleep".into(),
                args: vec!["5".into()],
                max_files: 10,
                max_file_size_mb: 10,
                ..Default::default()
            },
            logs: None,
            helpers: Helpers::Separate,
            executor: rc.clone(),
            logmon: Some(rc),
            task: ProcessIdentity {
                pid: 43,
                start_ticks: 8,
            },
            started_at_unix_nanos: 1,
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(TaskState::decode(&s.encode()).unwrap(), s);
    }

    /// What the driver wrote before `helpers` existed: version 1, the same fields without it.
    #[test]
    fn reads_a_version_1_handle_as_two_helpers() {
        let mut s = sample();
        s.helpers = Helpers::Combined;
        let rmpv::Value::Map(fields) = rmpv::decode::read_value(&mut &s.encode()[..]).unwrap()
        else {
            panic!("not a map")
        };
        let v1: Vec<_> = fields
            .into_iter()
            .filter(|(k, _)| k.as_str() != Some("helpers"))
            .map(|(k, v)| match k.as_str() {
                Some("version") => (k, rmpv::Value::from(1)),
                _ => (k, v),
            })
            .collect();
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &rmpv::Value::Map(v1)).unwrap();
        let read = TaskState::decode(&bytes).unwrap();
        assert_eq!(read.helpers, Helpers::Separate);
        assert_eq!(read.version, 1);
        assert_eq!(read.executor, s.executor);
        let mut combined = sample();
        combined.helpers = Helpers::Combined;
        combined.logmon = None;
        assert_eq!(TaskState::decode(&combined.encode()).unwrap(), combined);
    }

    #[test]
    fn refuses_garbage_foreign_and_future_handles() {
        assert!(matches!(
            TaskState::decode(b"\x93\x01\x02"),
            Err(StateError::Corrupt(_))
        ));
        assert!(matches!(
            TaskState::decode(&[]),
            Err(StateError::Corrupt(_))
        ));
        let mut s = sample();
        s.driver = "raw_exec".into();
        assert!(matches!(
            TaskState::decode(&s.encode()),
            Err(StateError::Foreign(d)) if d == "raw_exec"
        ));
        let mut s = sample();
        s.version = 9;
        assert!(matches!(
            TaskState::decode(&s.encode()),
            Err(StateError::Version(9))
        ));
        // raw_exec's own state: {ReattachConfig, TaskConfig, Pid, StartedAt}.
        let go = rmpv::Value::Map(vec![
            (rmpv::Value::from("Pid"), rmpv::Value::from(10)),
            (
                rmpv::Value::from("StartedAt"),
                rmpv::Value::Binary(vec![1; 15]),
            ),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &go).unwrap();
        assert!(matches!(
            TaskState::decode(&bytes),
            Err(StateError::Corrupt(_))
        ));
    }
}
