//! A Rust plugin for go-plugin's `examples/bidirectional` host (`proto.Counter`, plugin
//! `counter`): `Put` calls back into the host's `AddHelper` through the broker to add the new
//! value to the stored one, and keeps the sum as `{"Value":N}` in `kv_<key>`.

use goplugin::proto::counter::add_helper_client::AddHelperClient;
use goplugin::proto::counter::counter_server::{Counter, CounterServer};
use goplugin::proto::counter::{Empty, GetRequest, GetResponse, PutRequest, SumRequest};
use goplugin::{Broker, HandshakeConfig, Server};
use tonic::{Request, Response, Status};

struct FileCounter {
    broker: Broker,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    #[serde(rename = "Value")]
    value: i64,
}

async fn load(key: &str) -> Result<i64, Status> {
    let path = format!("kv_{key}");
    let raw = tokio::fs::read(&path)
        .await
        .map_err(|e| Status::not_found(format!("reading {path}: {e}")))?;
    let stored: Stored = serde_json::from_slice(&raw)
        .map_err(|e| Status::data_loss(format!("{path} is not a stored counter: {e}")))?;
    Ok(stored.value)
}

#[tonic::async_trait]
impl Counter for FileCounter {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let value = load(&req.get_ref().key).await?;
        Ok(Response::new(GetResponse { value }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<Empty>, Status> {
        let req = req.into_inner();
        let current = load(&req.key).await.unwrap_or(0);
        let channel = self
            .broker
            .dial(req.add_server)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let sum = AddHelperClient::new(channel)
            .sum(SumRequest {
                a: current,
                b: req.value,
            })
            .await?
            .into_inner()
            .r;
        let path = format!("kv_{}", req.key);
        let json = serde_json::to_vec(&Stored { value: sum })
            .map_err(|e| Status::internal(e.to_string()))?;
        tokio::fs::write(&path, json)
            .await
            .map_err(|e| Status::internal(format!("writing {path}: {e}")))?;
        Ok(Response::new(Empty {}))
    }
}

#[tokio::main]
async fn main() {
    let _ = goplugin::hclog::init_plugin_logging("counter");
    // Go's behaviour on any error: go-plugin's texts for a bad cookie, exit status 1.
    Server::new(HandshakeConfig::new("BASIC_PLUGIN", "hello"))
        .services(|s| {
            let broker = s.broker();
            s.add_service(CounterServer::new(FileCounter { broker }));
        })
        .serve_or_exit()
        .await;
}
