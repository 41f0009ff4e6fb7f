//! Learning what a stream carries ([`MediaInfo`]: codecs, resolution, frame rate, bitrate) from
//! its metadata and sequence headers, and measuring its bitrate.

use std::time::Duration;

pub use corriente_core::MediaInfo;
use tokio::time::Instant;

use crate::amf0::{self, Amf0Value};
use crate::flv;
use crate::frame::{Frame, FrameRole};

/// Updates `info` with what a frame reveals. Metadata gives declared values; sequence headers
/// and frames override the codecs with what is actually sent.
pub fn observe(info: &mut MediaInfo, frame: &Frame) {
    match frame.role() {
        FrameRole::Metadata => apply_metadata(info, &frame.payload),
        FrameRole::VideoConfig | FrameRole::Keyframe => {
            if let Some(tag) = flv::inspect_video(&frame.payload) {
                info.video_codec = tag.codec.name().to_owned();
            }
        }
        FrameRole::AudioConfig => {
            if let Some(tag) = flv::inspect_audio(&frame.payload) {
                info.audio_codec = tag.codec.name().to_owned();
                if tag.codec == flv::AudioCodec::Aac
                    && let Some((rate, channels)) = frame.payload.get(2..).and_then(flv::aac_config)
                {
                    info.audio_sample_rate = rate;
                    info.audio_channels = u32::from(channels);
                }
            }
        }
        FrameRole::Audio if info.audio_codec.is_empty() => {
            if let Some(tag) = flv::inspect_audio(&frame.payload) {
                info.audio_codec = tag.codec.name().to_owned();
                let first = frame.payload[0];
                if tag.codec != flv::AudioCodec::Aac && info.audio_sample_rate == 0 {
                    info.audio_sample_rate =
                        [5512, 11025, 22050, 44100][((first >> 2) & 3) as usize];
                    info.audio_channels = u32::from(first & 1) + 1;
                }
            }
        }
        _ => {}
    }
}

fn apply_metadata(info: &mut MediaInfo, payload: &[u8]) {
    let Ok(values) = amf0::decode_all(payload) else {
        return;
    };
    let Some(props) = values.get(1) else { return };
    let num = |name: &str| props.property(name).and_then(Amf0Value::as_number);
    if let Some(w) = num("width") {
        info.width = w.clamp(0.0, 65535.0) as u32;
    }
    if let Some(h) = num("height") {
        info.height = h.clamp(0.0, 65535.0) as u32;
    }
    if let Some(fps) = num("framerate").or_else(|| num("fps")) {
        info.frame_rate = if fps.is_finite() {
            fps.clamp(0.0, 1000.0)
        } else {
            0.0
        };
    }
    if info.video_codec.is_empty()
        && let Some(id) = num("videocodecid")
        && id > 0.0
    {
        let body = [0x10 | (id as u8 & 0x0f), 1];
        if let Some(tag) = flv::inspect_video(&body) {
            info.video_codec = tag.codec.name().to_owned();
        }
    }
    if info.audio_codec.is_empty()
        && let Some(id) = num("audiocodecid")
    {
        let body = [(id as u8 & 0x0f) << 4, 1];
        if let Some(tag) = flv::inspect_audio(&body) {
            info.audio_codec = tag.codec.name().to_owned();
        }
    }
    if let Some(rate) = num("audiosamplerate") {
        info.audio_sample_rate = rate.clamp(0.0, 1e6) as u32;
    }
}

/// The tracks metadata declares: (audio, video), from `audiocodecid` and a non-zero
/// `videocodecid`.
pub fn metadata_tracks(payload: &[u8]) -> Option<(bool, bool)> {
    let values = amf0::decode_all(payload).ok()?;
    let props = values.get(1)?;
    let declared = |name: &str, zero_means_none: bool| {
        props.property(name).is_some_and(|v| {
            let absent = matches!(v, Amf0Value::Null | Amf0Value::Undefined);
            let zero = zero_means_none && matches!(v, Amf0Value::Number(n) if *n == 0.0);
            !absent && !zero
        })
    };
    Some((
        declared("audiocodecid", false),
        declared("videocodecid", true),
    ))
}

/// Measures a byte rate over fixed windows.
#[derive(Debug)]
pub struct RateMeter {
    window: Duration,
    started: Instant,
    bytes: u64,
    last_bps: u64,
}

impl RateMeter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            started: Instant::now(),
            bytes: 0,
            last_bps: 0,
        }
    }

    /// Counts `bytes` and returns the rate of the last completed window, bits per second.
    pub fn add(&mut self, bytes: usize) -> u64 {
        self.bytes += bytes as u64;
        let elapsed = self.started.elapsed();
        if elapsed >= self.window {
            self.last_bps = (self.bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
            self.bytes = 0;
            self.started = Instant::now();
        }
        self.last_bps
    }

    pub fn bps(&self) -> u64 {
        self.last_bps
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::frame::FrameKind;

    fn metadata(props: Vec<(&str, Amf0Value)>) -> Frame {
        let mut buf = BytesMut::new();
        amf0::encode(&Amf0Value::string("onMetaData"), &mut buf);
        amf0::encode(
            &Amf0Value::EcmaArray(props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
            &mut buf,
        );
        Frame::new(FrameKind::Script, 0, buf.freeze(), 0)
    }

    #[test]
    fn learns_from_metadata_and_headers() {
        let mut info = MediaInfo::default();
        observe(
            &mut info,
            &metadata(vec![
                ("width", Amf0Value::Number(1280.0)),
                ("height", Amf0Value::Number(720.0)),
                ("framerate", Amf0Value::Number(30.0)),
                ("videocodecid", Amf0Value::Number(7.0)),
                ("audiocodecid", Amf0Value::Number(10.0)),
            ]),
        );
        assert_eq!(
            (info.width, info.height, info.frame_rate),
            (1280, 720, 30.0)
        );
        assert_eq!(
            (info.video_codec.as_str(), info.audio_codec.as_str()),
            ("h264", "aac")
        );
        observe(
            &mut info,
            &Frame::new(
                FrameKind::Audio,
                0,
                Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
                0,
            ),
        );
        assert_eq!((info.audio_sample_rate, info.audio_channels), (44100, 2));
    }

    #[test]
    fn detects_declared_video() {
        let with = metadata(vec![("videocodecid", Amf0Value::Number(7.0))]);
        let without = metadata(vec![("audiocodecid", Amf0Value::Number(10.0))]);
        assert_eq!(metadata_tracks(&with.payload), Some((false, true)));
        assert_eq!(metadata_tracks(&without.payload), Some((true, false)));
    }
}
