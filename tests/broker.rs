//! The broker against the real example plugin, with this crate's broker playing the host: both
//! directions in direct and multiplexed mode, and the bad input a broker stream can carry
//! (a knock for an ID nobody accepted, an ID nobody announced, bytes that are not a ConnInfo).

mod common;

use std::time::{Duration, Instant};

use common::start;
use goplugin::broker::{Broker, Side};
use goplugin::proto::grpctest::test_client::TestClient;
use goplugin::proto::grpctest::{BidirectionalRequest, TestRequest};
use goplugin::proto::plugin::conn_info::Knock;
use goplugin::proto::plugin::grpc_broker_client::GrpcBrokerClient;
use goplugin::proto::plugin::ConnInfo;
use goplugin::transport::ListenConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Request;

/// A host: the main channel plus a host-side broker fed by the plugin's broker stream.
struct Host {
    main: Channel,
    broker: Broker,
    out: mpsc::Sender<ConnInfo>,
    _closed: CancellationToken,
}

async fn connect_host(p: &common::Plugin, multiplexed: bool) -> Host {
    let closed = CancellationToken::new();
    let broker = Broker::new(
        Side::Host,
        ListenConfig::default(),
        None,
        multiplexed,
        closed.clone(),
    );
    let main = if multiplexed {
        let conn = goplugin::transport::Conn::new(p.conn().await);
        let _unclaimed = broker.start_mux(conn).unwrap();
        let session = broker.mux_session().unwrap();
        common::wire::grpc_channel(Box::pin(session.open().await.unwrap()))
            .await
            .unwrap()
    } else {
        p.channel(None).await
    };
    // Open the broker stream as a Go host does right after connecting.
    let (tx, rx) = mpsc::channel(16);
    broker.attach(tx.clone());
    let mut inbound = GrpcBrokerClient::new(main.clone())
        .start_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let b = broker.clone();
    tokio::spawn(async move {
        while let Ok(Some(info)) = inbound.message().await {
            b.receive(info);
        }
    });
    Host {
        main,
        broker,
        out: tx,
        _closed: closed,
    }
}

/// Spec §19 items 21 and 22: the host serves PingPong on an ID, the plugin dials it, serves its
/// own PingPong on a new ID, and the host dials that one.
async fn bidirectional(multiplexed: bool) {
    let env: &[(&str, &str)] = if multiplexed {
        &[("PLUGIN_MULTIPLEX_GRPC", "true")]
    } else {
        &[]
    };
    let p = start(&[], env);
    let host = connect_host(&p, multiplexed).await;
    let mut test = TestClient::new(host.main.clone());
    assert_eq!(
        test.double(TestRequest { input: 21 })
            .await
            .unwrap()
            .get_ref()
            .output,
        42
    );
    for _ in 0..3 {
        bidirectional_once(&host).await;
    }
}

#[tokio::test]
async fn bidirectional_broker_direct_mode() {
    bidirectional(false).await;
}

#[tokio::test]
async fn bidirectional_broker_multiplexed_mode() {
    bidirectional(true).await;
}

#[tokio::test]
async fn knock_for_an_id_nobody_accepted_is_acked_with_an_error() {
    let p = start(&[], &[("PLUGIN_MULTIPLEX_GRPC", "true")]);
    let host = connect_host(&p, true).await;
    // The host broker's own dial sends the knock and reads the ack.
    let t0 = Instant::now();
    let err = host.broker.dial(99).await.unwrap_err().to_string();
    assert!(err.contains("no listener for id 99"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "answered, not timed out"
    );
    let mut test = TestClient::new(host.main.clone());
    assert!(test.double(TestRequest { input: 1 }).await.is_ok());
}

#[tokio::test]
async fn plugin_dial_of_an_unannounced_id_times_out_with_go_text() {
    let p = start(&[], &[]);
    let host = connect_host(&p, false).await;
    let mut test = TestClient::new(host.main.clone());
    let t0 = Instant::now();
    let err = test
        .bidirectional(BidirectionalRequest { id: 4242 })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("timeout waiting for connection info"),
        "{err}"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
}

#[tokio::test]
async fn stray_announcements_do_not_disturb_the_broker() {
    let p = start(&[], &[]);
    let host = connect_host(&p, false).await;
    // An announcement for an ID the plugin never dials, and an ack nobody waits for.
    let tx = host.out.clone();
    tx.send(ConnInfo {
        service_id: 7,
        network: "unix".into(),
        address: "/nonexistent".into(),
        knock: None,
    })
    .await
    .unwrap();
    tx.send(ConnInfo {
        service_id: 8,
        knock: Some(Knock {
            knock: true,
            ack: true,
            error: String::new(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    bidirectional_once(&host).await;
}

async fn bidirectional_once(host: &Host) {
    common::broker_round_trip(&host.broker, host.main.clone()).await;
}

/// Sends bytes that do not decode as `ConnInfo` on the broker stream.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Default)]
    pub struct RawCodec;
    pub struct Raw;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let out = src.chunk().to_vec();
            src.advance(out.len());
            Ok(Some(out))
        }
    }
}

#[tokio::test]
async fn garbage_on_the_broker_stream_ends_that_stream_only() {
    let p = start(&[], &[]);
    let host = connect_host(&p, false).await;
    let mut grpc = tonic::client::Grpc::new(host.main.clone());
    grpc.ready().await.unwrap();
    let garbage = futures::stream::iter(vec![vec![0xffu8, 0xff, 0xff, 0x0f]]);
    let path = http::uri::PathAndQuery::from_static("/plugin.GRPCBroker/StartStream");
    let resp = grpc
        .streaming(Request::new(garbage), path, raw::RawCodec)
        .await;
    // Either the call fails at once, or its stream ends (with an error or EOF) and never yields
    // a message.
    if let Ok(resp) = resp {
        let mut s = resp.into_inner();
        let end = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("garbage stream must end, not hang");
        assert!(!matches!(end, Ok(Some(_))), "no ConnInfo answers garbage");
    }
    // The plugin keeps serving, and a proper broker stream still works.
    let mut test = TestClient::new(host.main.clone());
    assert_eq!(
        test.double(TestRequest { input: 2 })
            .await
            .unwrap()
            .get_ref()
            .output,
        4
    );
    let host2 = connect_host(&p, false).await;
    bidirectional_once(&host2).await;
}

/// Multiplexed mode has one host connection for life. When that connection speaks garbage
/// instead of yamux, the session fails and the plugin stops serving: with a non-zero exit and
/// the reason on stderr, not the clean exit of a host-requested shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_as_the_multiplexed_connection_is_an_error_exit() {
    use tokio::io::AsyncWriteExt;
    let mut p = start(&[], &[("PLUGIN_MULTIPLEX_GRPC", "true")]);
    let mut conn = p.conn().await;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nthis is not yamux at all")
        .await
        .unwrap();
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)))
        .expect("the plugin stops serving once its only session failed");
    assert!(
        !status.success(),
        "exit {status:?}; stderr: {}",
        p.stderr_text()
    );
    assert!(
        p.stderr_text().contains("yamux session"),
        "{}",
        p.stderr_text()
    );
}
