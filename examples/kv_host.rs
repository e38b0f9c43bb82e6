//! A Rust host for go-plugin's `examples/grpc` contract (`proto.KV`, cookie `BASIC_PLUGIN=hello`):
//! the mirror of upstream's Go host, driving any KV plugin, Go or Rust.
//!
//! ```text
//! KV_PLUGIN=path/to/plugin kv_host put KEY VALUE
//! KV_PLUGIN=path/to/plugin kv_host get KEY
//! KV_PLUGIN=path/to/plugin kv_host start STATEFILE   # start, save the reattach config, wait
//! kv_host --reattach STATEFILE get KEY               # talk to that plugin from a new process
//! kv_host --reattach STATEFILE stop                  # and shut it down
//! ```
//! `KV_PLUGIN` is run through `sh -c`, as upstream's host does (on Windows it is the plugin's path). Set `KV_AUTO_MTLS=1` for AutoMTLS.

use goplugin::proto::kv::kv_client::KvClient;
use goplugin::proto::kv::{GetRequest, PutRequest};
use goplugin::{Client, HandshakeConfig, ReattachConfig};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("kv_host: {msg}");
    std::process::exit(1)
}

async fn start() -> Client {
    let plugin = std::env::var("KV_PLUGIN").unwrap_or_else(|_| fail("set KV_PLUGIN"));
    #[cfg(unix)]
    let cmd = {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &plugin]);
        cmd
    };
    // No `sh` on Windows: KV_PLUGIN is the plugin's path.
    #[cfg(not(unix))]
    let cmd = std::process::Command::new(&plugin);
    Client::builder(cmd, HandshakeConfig::new("BASIC_PLUGIN", "hello"))
        .auto_mtls(std::env::var_os("KV_AUTO_MTLS").is_some())
        .start()
        .await
        .unwrap_or_else(|e| fail(e))
}

async fn reattach(state: &str) -> Client {
    let raw = std::fs::read_to_string(state).unwrap_or_else(|e| fail(format!("{state}: {e}")));
    let cfg: ReattachConfig =
        ReattachConfig::from_json(&raw).unwrap_or_else(|e| fail(format!("{state}: {e}")));
    Client::reattach(&cfg).await.unwrap_or_else(|e| fail(e))
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let client = if args.first().map(String::as_str) == Some("--reattach") {
        if args.len() < 2 {
            fail("--reattach needs a state file");
        }
        let state = args.remove(1);
        args.remove(0);
        reattach(&state).await
    } else {
        start().await
    };
    let mut kv = KvClient::new(client.channel())
        .max_decoding_message_size(client.max_message_size())
        .max_encoding_message_size(client.max_message_size());
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let detach = match words.as_slice() {
        ["put", key, value] => {
            let req = PutRequest {
                key: key.to_string(),
                value: value.as_bytes().to_vec(),
            };
            kv.put(req).await.unwrap_or_else(|e| fail(e.message()));
            false
        }
        ["get", key] => {
            let resp = kv
                .get(GetRequest {
                    key: key.to_string(),
                })
                .await
                .unwrap_or_else(|e| fail(e.message()));
            println!("{}", String::from_utf8_lossy(&resp.get_ref().value));
            false
        }
        ["start", state] => {
            let cfg =
                serde_json::to_string_pretty(&client.reattach_config()).unwrap_or_else(|e| fail(e));
            std::fs::write(state, cfg).unwrap_or_else(|e| fail(format!("{state}: {e}")));
            println!(
                "plugin pid {} serving; reattach config in {state}",
                client.pid()
            );
            // Stay up as the plugin's parent until killed; the plugin outlives us.
            std::future::pending::<()>().await;
            true
        }
        ["stop"] => false,
        _ => fail("usage: kv_host [--reattach STATE] put KEY VALUE | get KEY | start STATE | stop"),
    };
    if !detach {
        client.kill().await;
    }
}
