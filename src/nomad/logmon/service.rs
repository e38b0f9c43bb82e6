//! `hashicorp.nomad.client.logmon.proto.LogMon` (spec nomad-executor-logmon.md §7.2, §7.3):
//! `Start` creates the FIFOs and copiers for a task, idempotently; `Stop` drains and closes them,
//! and answers `DATA_LOSS` naming the bytes and files when some output could not be written (a
//! full disk): Nomad's logmon drops it without a word.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::Mutex;

use tonic::{Request, Response, Status};

use super::copier::Copier;
use super::rotator::Rotator;
use crate::proto::logmon::log_mon_server::LogMon;
use crate::proto::logmon::{StartRequest, StartResponse, StopRequest, StopResponse};

/// Largest accepted `max_file_size_mb` (1 TiB per file) and `max_files`: beyond is a typo.
const MAX_FILE_SIZE_MB: u32 = 1024 * 1024;
const MAX_FILES: u32 = 100_000;
/// How long `Stop` waits for each copier (Nomad's bound).
const STOP_WAIT: Duration = Duration::from_secs(2);

struct Running {
    request: StartRequest,
    stdout: Copier,
    stderr: Copier,
}

impl Running {
    fn is_running(&self) -> bool {
        self.stdout.is_running() && self.stderr.is_running()
    }

    /// What could not be written, per stream.
    async fn stop(mut self) -> Vec<super::copier::Lost> {
        let out = self.stdout.stop(STOP_WAIT).await;
        let err = self.stderr.stop(STOP_WAIT).await;
        out.into_iter().chain(err).collect()
    }
}

/// The logmon service: at most one task logger per process, as in Nomad.
/// Start and Stop are serialised: the state lock is held across their awaits.
#[derive(Default)]
pub struct LogMonService {
    current: Mutex<Option<Running>>,
}

fn validate(req: &StartRequest) -> Result<(), Status> {
    let bad = |msg: String| Err(Status::invalid_argument(msg));
    if req.log_dir.is_empty() {
        return bad("log_dir is empty".into());
    }
    for (name, value) in [
        ("stdout_file_name", &req.stdout_file_name),
        ("stderr_file_name", &req.stderr_file_name),
        ("stdout_fifo", &req.stdout_fifo),
        ("stderr_fifo", &req.stderr_fifo),
    ] {
        if value.is_empty() {
            return bad(format!("{name} is empty"));
        }
    }
    if req.max_files == 0 || req.max_files > MAX_FILES {
        return bad(format!(
            "max_files {} is not in 1..={MAX_FILES}",
            req.max_files
        ));
    }
    if req.max_file_size_mb == 0 || req.max_file_size_mb > MAX_FILE_SIZE_MB {
        return bad(format!(
            "max_file_size_mb {} is not in 1..={MAX_FILE_SIZE_MB}",
            req.max_file_size_mb
        ));
    }
    Ok(())
}

/// Creates the FIFO (mode 0600) when missing; an existing path must be a FIFO, not a symlink.
fn ensure_fifo(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_symlink() {
                Err(format!("{} is a symlink, not a fifo", path.display()))
            } else if !m.file_type().is_fifo() {
                Err(format!("{} exists and is not a fifo", path.display()))
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn start_stream(
    dir: &Path,
    name: &str,
    fifo: &str,
    req: &StartRequest,
    label: &str,
) -> Result<Copier, Status> {
    let limit = u64::from(req.max_file_size_mb) * 1024 * 1024;
    let rotator = Rotator::open(dir, name, req.max_files, limit).map_err(|e| {
        Status::unknown(format!(
            "failed to create {label} logfile for {name:?}: {e}"
        ))
    })?;
    let fifo = PathBuf::from(fifo);
    ensure_fifo(&fifo)
        .map_err(|e| Status::unknown(format!("failed to create fifo for extracting logs: {e}")))?;
    Copier::start(&fifo, rotator)
        .map_err(|e| Status::unknown(format!("opening fifo {}: {e}", fifo.display())))
}

#[tonic::async_trait]
impl LogMon for LogMonService {
    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<StartResponse>, Status> {
        let req = request.into_inner();
        validate(&req)?;
        let mut current = self.current.lock().await;
        let previous = {
            match current.as_ref() {
                Some(running) if running.is_running() && running.request == req => {
                    return Ok(Response::new(StartResponse {}));
                }
                Some(running) if running.is_running() => {
                    return Err(Status::failed_precondition(format!(
                        "logmon already copies {} and {} into {}; call Stop before starting with other parameters",
                        running.request.stdout_fifo, running.request.stderr_fifo, running.request.log_dir
                    )));
                }
                _ => current.take(),
            }
        };
        if let Some(old) = previous {
            for lost in old.stop().await {
                tracing::error!("{lost}");
            }
        }
        let dir = PathBuf::from(&req.log_dir);
        let stdout = start_stream(
            &dir,
            &req.stdout_file_name,
            &req.stdout_fifo,
            &req,
            "stdout",
        )?;
        let stderr = start_stream(
            &dir,
            &req.stderr_file_name,
            &req.stderr_fifo,
            &req,
            "stderr",
        )?;
        tracing::debug!(log_dir = %req.log_dir, "logmon started");
        *current = Some(Running {
            request: req,
            stdout,
            stderr,
        });
        Ok(Response::new(StartResponse {}))
    }

    async fn stop(&self, _request: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        let running = self.current.lock().await.take();
        let Some(running) = running else {
            return Ok(Response::new(StopResponse {}));
        };
        let lost = running.stop().await;
        tracing::debug!("logmon stopped");
        if lost.is_empty() {
            return Ok(Response::new(StopResponse {}));
        }
        let text: Vec<String> = lost.iter().map(ToString::to_string).collect();
        tracing::error!("{}", text.join("; "));
        Err(Status::data_loss(text.join("; ")))
    }
}
