//! What the broker does with the `ConnInfo` messages the other side sends on its
//! `GRPCBroker.StartStream` stream (go-plugin-wire.md §8, §9.3): the protobuf decode, then
//! `Broker::receive` on a fresh plugin-side broker, direct or multiplexed.
//!
//! Input: one flags byte (bit 0: multiplexed; the next bits: brokered listeners registered for
//! IDs 1..=3), then gRPC length-prefixed messages as on the wire (1 byte compressed flag,
//! 4 bytes big-endian length, the message); reading stops at the first frame that tonic would
//! refuse (compressed, truncated, or not a `ConnInfo`).
//!
//! Properties: never a panic; every knock gets one ack, in order, for its ID, with an error
//! exactly when nobody listens on that ID; an announced ID gives a dialer the first
//! announcement for it (later duplicates dropped, as in Go) and its network is one a dialer
//! accepts or refuses by name, never by a crash.
#![no_main]

use goplugin::fuzzing::broker_receive;
use goplugin::proto::plugin::ConnInfo;
use goplugin::Network;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const MAX_MESSAGES: usize = 64;

fn frames(mut data: &[u8]) -> Vec<ConnInfo> {
    let mut out = Vec::new();
    while out.len() < MAX_MESSAGES && data.len() >= 5 {
        let compressed = data[0] != 0;
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let Some(body) = data.get(5..5 + len) else {
            break;
        };
        if compressed {
            break;
        }
        let Ok(info) = ConnInfo::decode(body) else {
            break;
        };
        // prost's encoding of what it decoded decodes to the same message.
        assert_eq!(
            ConnInfo::decode(info.encode_to_vec().as_slice()).unwrap(),
            info
        );
        out.push(info);
        data = &data[5 + len..];
    }
    out
}

fn is_knock(info: &ConnInfo) -> bool {
    matches!(&info.knock, Some(k) if k.knock && !k.ack)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let multiplexed = flags & 1 != 0;
    let listening: Vec<u32> = (1..=3).filter(|id| flags & (1 << id) != 0).collect();
    let messages = frames(rest);
    let run = broker_receive(messages.clone(), multiplexed, &listening);

    let knocks: Vec<u32> = messages
        .iter()
        .filter(|m| is_knock(m))
        .map(|m| m.service_id)
        .collect();
    let acked: Vec<u32> = run.sent.iter().map(|m| m.service_id).collect();
    assert_eq!(acked, knocks, "one ack per knock, in order");
    for ack in &run.sent {
        let k = ack.knock.as_ref().expect("an ack is a knock message");
        assert!(k.knock && k.ack);
        let listened = multiplexed && listening.contains(&ack.service_id);
        assert_eq!(k.error.is_empty(), listened, "{k:?}");
    }
    for (id, got) in &run.announced {
        let first = messages
            .iter()
            .find(|m| m.service_id == *id && !is_knock(m))
            .expect("announced IDs were sent");
        assert_eq!(got.as_ref(), Some(first));
        let _ = Network::parse(&first.network);
    }
});
