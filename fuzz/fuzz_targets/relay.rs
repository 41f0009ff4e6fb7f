//! Relay messages as an edge decodes them (prost, then `corriente_edge::frame_from_pb`, then the edge
//! hub), and the requests an origin's relay service decodes from edges.
//!
//! Input: one byte choosing the message type, then its protobuf encoding.
#![no_main]

use bytes::Bytes;
use corriente_edge::frame_from_pb;
use corriente_fuzz::HubStandIn;
use corriente_media::StreamKey;
use corriente_origin::frame_to_pb;
use corriente_proto::relay::{OwnsRequest, RelayMessage, SubscribeRequest, relay_message::Body};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    corriente_fuzz::bounded_memory(data.len(), || run(data));
});

fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    // tonic hands prost the message as `Bytes`; payloads are slices of it.
    let bytes = Bytes::copy_from_slice(rest);
    match which % 4 {
        0 | 1 => {
            let Ok(message) = RelayMessage::decode(bytes) else {
                return;
            };
            if let Some(Body::Frame(pb)) = message.body {
                let Some(frame) = frame_from_pb(pb.clone()) else {
                    return;
                };
                let back = frame_to_pb(&frame);
                assert_eq!((back.kind, back.timestamp), (pb.kind, pb.timestamp));
                assert_eq!(back.payload, pb.payload);
                let again = RelayMessage {
                    body: Some(Body::Frame(back)),
                }
                .encode_to_vec();
                assert!(RelayMessage::decode(&again[..]).is_ok());
                HubStandIn::new().push(&frame);
            }
        }
        2 => {
            if let Ok(request) = SubscribeRequest::decode(bytes) {
                let _ = StreamKey::new(&request.app, &request.name);
            }
        }
        _ => {
            if let Ok(request) = OwnsRequest::decode(bytes) {
                let _ = StreamKey::new(&request.app, &request.name);
            }
        }
    }
}
