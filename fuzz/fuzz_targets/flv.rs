//! FLV tag parsing and codec inspection: the incremental tag reader over arbitrary reads, every
//! tag as an aggregate message body and as a frame (legacy and enhanced RTMP video and audio
//! headers, AVC/HEVC/AAC sequence headers, AudioSpecificConfig) through what the hub does.
//!
//! Input: one byte choosing the read sizes, then an FLV byte stream.
#![no_main]

use bytes::{Bytes, BytesMut};
use corriente_fuzz::{HubStandIn, Reads};
use corriente_media::flv::{self, TagReader};
use corriente_media::rtmp::message::split_aggregate;
use corriente_media::{Frame, FrameKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corriente_fuzz::bounded_memory(data.len(), || run(data));
});

fn run(data: &[u8]) {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    // The raw bytes as tag bodies and as an aggregate message.
    let _ = flv::inspect_video(rest);
    let _ = flv::inspect_audio(rest);
    let _ = flv::aac_config(rest);
    let mut hub = HubStandIn::new();
    let body = Bytes::copy_from_slice(rest);
    if let Ok(subs) = split_aggregate(u32::from(seed) << 24, &body) {
        for sub in subs {
            if let Some(kind) = FrameKind::from_tag_type(sub.type_id) {
                hub.push(&Frame::new(kind, sub.timestamp, sub.payload, 0));
            }
        }
    }
    for kind in [FrameKind::Audio, FrameKind::Video] {
        hub.push(&Frame::new(kind, 0, body.clone(), 0));
    }

    // The stream, as the tag reader gets it from a socket.
    let mut reader = TagReader::new(16 << 20);
    let mut buf = BytesMut::new();
    for read in Reads::new(seed, rest) {
        buf.extend_from_slice(read);
        loop {
            match reader.next_tag(&mut buf) {
                Ok(Some(tag)) => {
                    if let Some(kind) = FrameKind::from_tag_type(tag.tag_type) {
                        hub.push(&Frame::new(kind, tag.timestamp, tag.body, 0));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
