//! Frames: one audio, video or script message of a live stream, as it travels from ingest
//! through the relay to every viewer. The payload is the FLV tag body, shared, never copied.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

use crate::flv;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Audio,
    Video,
    /// AMF0 script data: onMetaData, onTextData, cue points.
    Script,
}

impl FrameKind {
    /// FLV tag type, which is also the RTMP message type id.
    pub fn tag_type(self) -> u8 {
        match self {
            FrameKind::Audio => flv::TAG_AUDIO,
            FrameKind::Video => flv::TAG_VIDEO,
            FrameKind::Script => flv::TAG_SCRIPT,
        }
    }

    pub fn from_tag_type(tag_type: u8) -> Option<Self> {
        match tag_type {
            flv::TAG_AUDIO => Some(FrameKind::Audio),
            flv::TAG_VIDEO => Some(FrameKind::Video),
            flv::TAG_SCRIPT => Some(FrameKind::Script),
            _ => None,
        }
    }
}

/// What a frame means to the fan-out: configuration that every viewer needs first, a random
/// access point, or an ordinary frame that may be dropped for a late viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRole {
    /// `onMetaData`.
    Metadata,
    /// Video decoder configuration (AVC/HEVC sequence header).
    VideoConfig,
    /// Audio decoder configuration (AAC sequence header).
    AudioConfig,
    /// A video keyframe.
    Keyframe,
    /// A video frame that depends on earlier ones.
    Inter,
    /// Video data that is not a picture (end of sequence, info frames).
    VideoOther,
    /// An audio frame.
    Audio,
    /// Script data other than metadata (text, cue points).
    Data,
}

/// One media message.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: FrameKind,
    /// RTMP/FLV timestamp in milliseconds.
    pub timestamp: u32,
    /// The FLV tag body.
    pub payload: Bytes,
    /// Wall-clock time the origin received the frame, microseconds since the Unix epoch.
    /// Carried through the relay so edges can measure end-to-end lag.
    pub ingest_us: u64,
    /// The HLS media sequence number of the segment this video keyframe (or, in an audio-only
    /// stream, audio frame) starts; 0 when it starts none. Decided once, by the origin
    /// ([`crate::segment::SegmentMarker`]), and carried through the relay, so every edge cuts
    /// the same segments with the same numbers.
    pub segment: u64,
    role: FrameRole,
}

impl Frame {
    /// Builds a frame and classifies it from its payload.
    pub fn new(kind: FrameKind, timestamp: u32, payload: Bytes, ingest_us: u64) -> Self {
        let role = classify(kind, &payload);
        Self {
            kind,
            timestamp,
            payload,
            ingest_us,
            segment: 0,
            role,
        }
    }

    pub fn role(&self) -> FrameRole {
        self.role
    }

    /// Metadata or a sequence header: state a viewer needs before any media.
    pub fn is_config(&self) -> bool {
        matches!(
            self.role,
            FrameRole::Metadata | FrameRole::VideoConfig | FrameRole::AudioConfig
        )
    }

    pub fn is_keyframe(&self) -> bool {
        self.role == FrameRole::Keyframe
    }

    /// The same frame at another timestamp (the payload is shared).
    pub fn with_timestamp(&self, timestamp: u32) -> Self {
        Self {
            timestamp,
            ..self.clone()
        }
    }
}

fn classify(kind: FrameKind, payload: &[u8]) -> FrameRole {
    match kind {
        FrameKind::Audio => match flv::inspect_audio(payload) {
            Some(tag) if tag.sequence_header => FrameRole::AudioConfig,
            _ => FrameRole::Audio,
        },
        FrameKind::Video => match flv::inspect_video(payload) {
            Some(tag) if tag.sequence_header => FrameRole::VideoConfig,
            Some(tag) if tag.keyframe => FrameRole::Keyframe,
            Some(tag) if tag.non_picture => FrameRole::VideoOther,
            Some(_) => FrameRole::Inter,
            None => FrameRole::VideoOther,
        },
        FrameKind::Script => {
            if is_on_metadata(payload) {
                FrameRole::Metadata
            } else {
                FrameRole::Data
            }
        }
    }
}

/// True when an AMF0 script body starts with the string `onMetaData`.
pub fn is_on_metadata(payload: &[u8]) -> bool {
    const PREFIX: &[u8] = b"\x02\x00\x0aonMetaData";
    payload.starts_with(PREFIX)
}

/// Microseconds since the Unix epoch, now.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames() {
        let f = |kind, p: &'static [u8]| Frame::new(kind, 0, Bytes::from_static(p), 0).role();
        assert_eq!(
            f(FrameKind::Video, &[0x17, 0, 0, 0, 0]),
            FrameRole::VideoConfig
        );
        assert_eq!(
            f(FrameKind::Video, &[0x17, 1, 0, 0, 0]),
            FrameRole::Keyframe
        );
        assert_eq!(f(FrameKind::Video, &[0x27, 1, 0, 0, 0]), FrameRole::Inter);
        assert_eq!(
            f(FrameKind::Audio, &[0xaf, 0, 0x12, 0x10]),
            FrameRole::AudioConfig
        );
        assert_eq!(f(FrameKind::Audio, &[0xaf, 1, 1]), FrameRole::Audio);
        assert_eq!(
            f(FrameKind::Script, b"\x02\x00\x0aonMetaData\x05"),
            FrameRole::Metadata
        );
        assert_eq!(
            f(FrameKind::Script, b"\x02\x00\x0aonTextData"),
            FrameRole::Data
        );
    }
}
