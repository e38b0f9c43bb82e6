//! A Go plugin's stderr as `tracing` events at go-plugin's levels. Its own test binary: it
//! installs a thread-local subscriber, which parallel tests in one process would race with
//! (tracing's callsite interest is process-wide).

mod common;

use std::time::Duration;

use common::go::compat;
use common::Buf;
use goplugin::proto::grpctest::test_client::TestClient;
use goplugin::proto::grpctest::{print_kv_request, PanicRequest, PrintKvRequest};
use goplugin::{Client, Exit, HandshakeConfig};

fn handshake() -> HandshakeConfig {
    HandshakeConfig::new("TEST_MAGIC_COOKIE", "test")
}

/// Mirrors go-plugin TestClient_Stderr, TestClient_StderrJSON, TestClient_textLogLevel,
/// TestClient_logger and TestServerLogPanic: the Go plugin's stderr as `tracing` events.
#[tokio::test]
async fn go_plugin_stderr_becomes_tracing_events_at_go_levels() {
    let logs = Buf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let raw = Buf::default();
    let client = Client::builder(compat(&["stderr"]), handshake())
        .stderr(raw.clone())
        .start()
        .await
        .unwrap();
    let mut test = TestClient::new(client.channel());
    for value in [
        print_kv_request::Value::ValueString("bar".into()),
        print_kv_request::Value::ValueInt(12),
    ] {
        test.print_kv(PrintKvRequest {
            key: "foo".into(),
            value: Some(value),
        })
        .await
        .unwrap();
    }
    assert!(test
        .panic(PanicRequest {
            message: "invalid foo bar".into()
        })
        .await
        .is_err());
    let exit = tokio::time::timeout(Duration::from_secs(5), client.wait())
        .await
        .unwrap();
    assert!(matches!(exit, Exit::Status(s) if !s.success()));
    let text = logs.text();
    let line_with = |needle: &str| -> String {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{text}"))
            .to_string()
    };
    assert!(line_with("HELLO").contains("DEBUG"));
    assert!(line_with("12345").contains("DEBUG"));
    assert!(line_with("test line 98765").contains("WARN"));
    let kv = line_with("PrintKV called");
    assert!(kv.contains("INFO") && kv.contains("foo=bar"), "{kv}");
    assert!(text.contains("foo=12"), "{text}");
    let panic_at = text
        .lines()
        .position(|l| l.contains("panic: invalid foo bar"))
        .expect("panic line");
    let errors_after = text
        .lines()
        .skip(panic_at + 1)
        .filter(|l| l.contains("ERROR"))
        .count();
    assert!(
        errors_after >= 10,
        "{errors_after} error lines after the panic"
    );
    assert!(raw.text().contains("HELLO\nWORLD\n"), "raw stderr copy");

    // Killing a healthy grpc-go plugin ends its broker stream while the call still waits for
    // headers (grpc-go sends them with the first message): not worth a debug line.
    let before = logs.text().len();
    let client = Client::builder(compat(&["stderr"]), handshake())
        .start()
        .await
        .unwrap();
    client.kill().await;
    // A stream task that logs would do so once the connection is gone: give it that moment.
    for _ in 0..100 {
        if logs.text()[before..].contains("broker stream") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = logs.text()[before..].to_string();
    let noisy: Vec<&str> = after
        .lines()
        .filter(|l| l.contains("broker stream") && !l.contains("TRACE"))
        .collect();
    // Killing the client cancels its broker stream task, so nothing (or a trace line) is logged.
    assert!(noisy.is_empty(), "{noisy:?}");
}
