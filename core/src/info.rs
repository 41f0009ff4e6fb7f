//! What a stream carries (codecs, resolution, frame rate, bitrate), as the stats API, the
//! dashboard and the control plane describe it. `corriente_media::info` learns it from a
//! stream's metadata and sequence headers.

use serde::{Deserialize, Serialize};

/// Media description of a live stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaInfo {
    /// ffprobe-style codec name (`h264`, `hevc`, ...), empty when the stream has no video.
    pub video_codec: String,
    /// ffprobe-style codec name (`aac`, `mp3`, ...), empty when the stream has no audio.
    pub audio_codec: String,
    pub width: u32,
    pub height: u32,
    pub frame_rate: f64,
    /// Measured ingest bitrate, bits per second.
    pub bitrate_bps: u64,
    pub audio_sample_rate: u32,
    pub audio_channels: u32,
}

impl MediaInfo {
    /// True when metadata or frames say the stream carries video.
    pub fn has_video(&self) -> bool {
        !self.video_codec.is_empty()
    }
}
