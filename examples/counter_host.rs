//! A Rust host for go-plugin's `examples/bidirectional` contract: it serves `proto.AddHelper` to
//! the plugin through the broker, so the plugin's `Put` calls back into this process.
//!
//! ```text
//! COUNTER_PLUGIN=path/to/plugin counter_host put KEY N
//! COUNTER_PLUGIN=path/to/plugin counter_host get KEY
//! ```

use goplugin::proto::counter::add_helper_server::{AddHelper, AddHelperServer};
use goplugin::proto::counter::counter_client::CounterClient;
use goplugin::proto::counter::{GetRequest, PutRequest, SumRequest, SumResponse};
use goplugin::{Client, HandshakeConfig};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

struct Adder;

#[tonic::async_trait]
impl AddHelper for Adder {
    async fn sum(&self, req: Request<SumRequest>) -> Result<Response<SumResponse>, Status> {
        let r = req.get_ref();
        let sum =
            r.a.checked_add(r.b)
                .ok_or_else(|| Status::out_of_range("sum overflows int64"))?;
        Ok(Response::new(SumResponse { r: sum }))
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("counter_host: {msg}");
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let plugin = std::env::var("COUNTER_PLUGIN").unwrap_or_else(|_| fail("set COUNTER_PLUGIN"));
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &plugin]);
    let client = Client::builder(cmd, HandshakeConfig::new("BASIC_PLUGIN", "hello"))
        .multiplex(std::env::var_os("COUNTER_MUX").is_some())
        .start()
        .await
        .unwrap_or_else(|e| fail(e));
    let mut counter = CounterClient::new(client.channel());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["put", key, n] => {
            let value: i64 = n.parse().unwrap_or_else(|e| fail(format!("{n}: {e}")));
            let broker = client.broker();
            let id = broker.next_id();
            broker
                .accept_and_serve(id, Routes::new(AddHelperServer::new(Adder)))
                .await
                .unwrap_or_else(|e| fail(e));
            let req = PutRequest {
                add_server: id,
                key: key.to_string(),
                value,
            };
            counter.put(req).await.unwrap_or_else(|e| fail(e.message()));
        }
        ["get", key] => {
            let resp = counter
                .get(GetRequest {
                    key: key.to_string(),
                })
                .await
                .unwrap_or_else(|e| fail(e.message()));
            println!("{}", resp.get_ref().value);
        }
        _ => fail("usage: counter_host put KEY N | get KEY"),
    }
    client.kill().await;
}
