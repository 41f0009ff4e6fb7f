//! AMF0 decoding wherever a peer's AMF0 reaches it: the decoder itself (values must survive a
//! re-encoding), command messages (AMF0 and AMF3-wrapped), script data through a publishing
//! session (`@setDataFrame` unwrapping), and metadata parsing for the stream description
//! (`info.rs`).
//!
//! Input: the AMF0 bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use corriente_fuzz::HubStandIn;
use corriente_media::amf0;
use corriente_media::info::{MediaInfo, metadata_tracks, observe};
use corriente_media::rtmp::RawMessage;
use corriente_media::rtmp::message::{Message, type_id};
use corriente_media::{Frame, FrameKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corriente_fuzz::bounded_memory(data.len(), || run(data));
});

fn run(data: &[u8]) {
    if let Ok(values) = amf0::decode_all(data) {
        let mut again = BytesMut::new();
        amf0::encode_all(&values, &mut again);
        let back = amf0::decode_all(&again).expect("re-encoded AMF0 does not decode");
        assert_eq!(back.len(), values.len());
    }
    if let Ok((_, used)) = amf0::decode_one(data) {
        assert!(used <= data.len());
    }

    let payload = Bytes::copy_from_slice(data);
    for type_id in [
        type_id::COMMAND_AMF0,
        type_id::COMMAND_AMF3,
        type_id::DATA_AMF0,
        type_id::DATA_AMF3,
    ] {
        let raw = RawMessage {
            csid: 3,
            timestamp: 0,
            type_id,
            stream_id: 0,
            payload: payload.clone(),
        };
        let _ = Message::parse(&raw);
    }

    // Metadata as the hub and the stats see it, with and without the onMetaData name.
    let mut hub = HubStandIn::new();
    hub.push(&Frame::new(FrameKind::Script, 0, payload.clone(), 0));
    let mut named = BytesMut::from(&b"\x02\x00\x0aonMetaData"[..]);
    named.extend_from_slice(data);
    let named = Frame::new(FrameKind::Script, 0, named.freeze(), 0);
    let _ = metadata_tracks(&named.payload);
    let mut info = MediaInfo::default();
    observe(&mut info, &named);
    hub.push(&named);

    // Script data from a publisher, through the session's @setDataFrame handling.
    corriente_fuzz::publish_script_data(&payload);
}
