//! Muxing a frame once per output format: an FLV tag for HTTP-FLV viewers and a pre-chunked
//! RTMP message for RTMP viewers. The bytes are written to every viewer as they are.

use bytes::BytesMut;

use crate::flv;
use crate::frame::{Frame, FrameKind};
use crate::rtmp::chunk::encode_message;
use crate::rtmp::message::{MEDIA_STREAM_ID, csid, type_id};

/// Which formats a hub produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outputs {
    /// FLV tags (HTTP-FLV).
    pub flv: bool,
    /// Pre-chunked RTMP messages, at `rtmp_chunk_size`.
    pub rtmp: bool,
    /// Chunk size of the RTMP output; every RTMP session announces the same.
    pub rtmp_chunk_size: u32,
}

impl Outputs {
    /// No muxed output: only raw frames (an origin's hub feeds the relay).
    pub const RAW: Outputs = Outputs {
        flv: false,
        rtmp: false,
        rtmp_chunk_size: 4096,
    };

    /// FLV and RTMP at `chunk_size` (an edge's hub).
    pub fn viewers(chunk_size: u32) -> Self {
        Self {
            flv: true,
            rtmp: true,
            rtmp_chunk_size: chunk_size,
        }
    }
}

/// Appends `frame` in every enabled format.
pub fn mux_frame(frame: &Frame, outputs: Outputs, flv_out: &mut BytesMut, rtmp_out: &mut BytesMut) {
    if outputs.flv {
        flv::write_tag(
            flv_out,
            frame.kind.tag_type(),
            frame.timestamp,
            &frame.payload,
        );
    }
    if outputs.rtmp {
        let (cs, type_id) = match frame.kind {
            FrameKind::Audio => (csid::AUDIO, type_id::AUDIO),
            FrameKind::Video => (csid::VIDEO, type_id::VIDEO),
            FrameKind::Script => (csid::SCRIPT, type_id::DATA_AMF0),
        };
        encode_message(
            rtmp_out,
            cs,
            frame.timestamp,
            type_id,
            MEDIA_STREAM_ID,
            &frame.payload,
            outputs.rtmp_chunk_size as usize,
        );
    }
}
