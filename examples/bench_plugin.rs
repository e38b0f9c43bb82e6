//! A Rust plugin serving the streaming part of gRPC's benchmark contract
//! (`grpc.testing.BenchmarkService/StreamingFromServer`, cookie `GOPLUGIN_BENCH=stream`) for
//! `scripts/bench`'s throughput rows; its Go twin is
//! `compat-tests/cmd/bench` started with that cookie (see its stream.go).
//!
//! `StreamingFromServer` sends responses of `response_size` bytes until the host cancels, as
//! gRPC's own benchmark servers do. One current-thread runtime: one host, one stream at a time.

use std::pin::Pin;

use futures::Stream;
use goplugin::proto::benchmark::benchmark_service_server::{
    BenchmarkService, BenchmarkServiceServer,
};
use goplugin::proto::benchmark::{Payload, SimpleRequest, SimpleResponse};
use goplugin::{HandshakeConfig, Server};
use tonic::{Request, Response, Status};

/// Largest `response_size` served: a bench asks for KiBs; refusing more keeps a bad request from
/// allocating gigabytes.
const MAX_RESPONSE_SIZE: usize = 16 << 20;

struct Bench;

type Responses = Pin<Box<dyn Stream<Item = Result<SimpleResponse, Status>> + Send>>;

fn response(req: &SimpleRequest) -> Result<SimpleResponse, Status> {
    let size = usize::try_from(req.response_size)
        .ok()
        .filter(|&n| n <= MAX_RESPONSE_SIZE)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "response_size {} is not in 0..={MAX_RESPONSE_SIZE}",
                req.response_size
            ))
        })?;
    Ok(SimpleResponse {
        payload: Some(Payload {
            r#type: 0,
            body: vec![0; size],
        }),
    })
}

#[tonic::async_trait]
impl BenchmarkService for Bench {
    async fn unary_call(
        &self,
        req: Request<SimpleRequest>,
    ) -> Result<Response<SimpleResponse>, Status> {
        response(req.get_ref()).map(Response::new)
    }

    type StreamingFromServerStream = Responses;

    async fn streaming_from_server(
        &self,
        req: Request<SimpleRequest>,
    ) -> Result<Response<Responses>, Status> {
        let resp = response(req.get_ref())?;
        // Ends when the host cancels: hyper then drops the response body and this stream.
        Ok(Response::new(Box::pin(futures::stream::repeat_with(
            move || Ok(resp.clone()),
        ))))
    }
}

fn main() {
    let _ = goplugin::hclog::init_plugin_logging("bench");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            goplugin::stdio::write_stderr(&format!("bench plugin: cannot start tokio: {e}\n"));
            std::process::exit(1);
        }
    };
    let served = runtime.block_on(
        Server::new(HandshakeConfig::new("GOPLUGIN_BENCH", "stream"))
            .services(|s| {
                let limit = s.max_message_size();
                s.add_service(
                    BenchmarkServiceServer::new(Bench)
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(limit),
                );
            })
            .serve(),
    );
    if let Err(e) = served {
        goplugin::stdio::write_stderr(&format!("bench plugin: {e}\n"));
        std::process::exit(1);
    }
}
