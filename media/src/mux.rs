//! Muxing a frame once per output format: an FLV tag for HTTP-FLV viewers and a pre-chunked
//! RTMP message for RTMP viewers. The bytes are written to every viewer as they are.

use bytes::BytesMut;

use crate::flv;
use crate::frame::{Frame, FrameKind, FrameRole};
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
///
/// Metadata goes out at timestamp 0, whatever its own: for a joining viewer and for the
/// updates some publishers send every few hundred ms (GStreamer's flvmux), as nginx-rtmp sends
/// it. ffmpeg's FLV demuxer (and so ffplay, VLC, OBS media sources) reads a metadata tag at any
/// other timestamp as a data stream, a phantom subtitle track.
pub fn mux_frame(frame: &Frame, outputs: Outputs, flv_out: &mut BytesMut, rtmp_out: &mut BytesMut) {
    let timestamp = if frame.role() == FrameRole::Metadata {
        0
    } else {
        frame.timestamp
    };
    if outputs.flv {
        flv::write_tag(flv_out, frame.kind.tag_type(), timestamp, &frame.payload);
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
            timestamp,
            type_id,
            MEDIA_STREAM_ID,
            &frame.payload,
            outputs.rtmp_chunk_size as usize,
        );
    }
}
