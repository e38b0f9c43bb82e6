//! A Rust plugin for go-plugin's `examples/grpc` host (`proto.KV`, plugin `kv_grpc`, cookie
//! `BASIC_PLUGIN=hello`): `Put` writes `kv_<key>` in the working directory, `Get` reads it back.
//!
//! Try it with the upstream host: `KV_PLUGIN=target/debug/examples/kv_plugin KV_PROTO=grpc ./kv put hello world`.

use goplugin::proto::kv::kv_server::{Kv, KvServer};
use goplugin::proto::kv::{Empty, GetRequest, GetResponse, PutRequest};
use goplugin::{HandshakeConfig, Server};
use tonic::{Request, Response, Status};

/// Marks values written by this plugin, as upstream's Go and Python plugins mark theirs.
const MARKER: &str = "\n\nWritten from plugin-rust";

struct FileKv;

#[tonic::async_trait]
impl Kv for FileKv {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let path = format!("kv_{}", req.get_ref().key);
        // A small local file: read it in place, as the Go plugin does (tokio::fs would hop to
        // the blocking pool and back for every call).
        let value =
            std::fs::read(&path).map_err(|e| Status::not_found(format!("reading {path}: {e}")))?;
        Ok(Response::new(GetResponse { value }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<Empty>, Status> {
        let req = req.into_inner();
        let path = format!("kv_{}", req.key);
        let mut value = req.value;
        value.extend_from_slice(MARKER.as_bytes());
        std::fs::write(&path, value)
            .map_err(|e| Status::internal(format!("writing {path}: {e}")))?;
        tracing::info!(key = %req.key, "stored");
        Ok(Response::new(Empty {}))
    }
}

/// Serves the plugin until the host shuts it down; the process exit code. tokio's multi-thread
/// runtime (a worker per CPU): BENCHMARKS.md measured no difference in a call's cost against the
/// current-thread one (about 52 k instructions per call either way). The `goplugin`
/// binary re-executes itself into this as `goplugin kv-plugin` (see `src/main.rs`).
pub fn run() -> i32 {
    let _ = goplugin::hclog::init_plugin_logging("kv");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            goplugin::stdio::write_stderr(&format!("kv plugin: cannot start tokio: {e}\n"));
            return 1;
        }
    };
    let served = runtime.block_on(
        Server::new(HandshakeConfig::new("BASIC_PLUGIN", "hello"))
            .services(|s| {
                let limit = s.max_message_size();
                s.add_service(
                    KvServer::new(FileKv)
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(limit),
                );
            })
            .serve(),
    );
    match served {
        Ok(()) => 0,
        // go-plugin's texts for a binary run by hand, exit status 1.
        Err(e) if e.is_cookie_error() => e.exit(),
        Err(e) => {
            goplugin::stdio::write_stderr(&format!("kv plugin: {e}\n"));
            1
        }
    }
}

#[allow(dead_code)]
fn main() {
    std::process::exit(run());
}
