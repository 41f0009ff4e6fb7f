//! FLV: tag layout, codec identification from tag bodies (legacy and enhanced RTMP), and a tag
//! reader for FLV files and HTTP-FLV streams.
//!
//! RTMP audio, video and data message payloads are FLV tag bodies, so the same inspection
//! serves RTMP ingest, the relay and HTTP-FLV output.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// Size of an FLV tag header.
pub const TAG_HEADER_LEN: usize = 11;
/// Size of the FLV file header including the first (zero) previous-tag-size field.
pub const FILE_HEADER_LEN: usize = 13;

/// The FLV file header with the zero PreviousTagSize0 that follows it.
pub fn file_header(has_audio: bool, has_video: bool) -> [u8; FILE_HEADER_LEN] {
    let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// Appends one complete tag (header, body, previous-tag-size trailer) to `out`.
pub fn write_tag(out: &mut BytesMut, tag_type: u8, timestamp: u32, body: &[u8]) {
    let len = body.len().min(0x00ff_ffff) as u32;
    out.reserve(TAG_HEADER_LEN + len as usize + 4);
    out.put_u8(tag_type);
    put_u24(out, len);
    put_u24(out, timestamp & 0x00ff_ffff);
    out.put_u8((timestamp >> 24) as u8);
    put_u24(out, 0);
    out.put_slice(&body[..len as usize]);
    out.put_u32(TAG_HEADER_LEN as u32 + len);
}

fn put_u24(out: &mut BytesMut, v: u32) {
    out.put_u8((v >> 16) as u8);
    out.put_u8((v >> 8) as u8);
    out.put_u8(v as u8);
}

/// What a video tag body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoTag {
    pub codec: VideoCodec,
    /// A random access point (FLV frame type 1).
    pub keyframe: bool,
    /// Decoder configuration (AVC/HEVC sequence header, enhanced RTMP SequenceStart).
    pub sequence_header: bool,
    /// Not a picture: end of sequence, video info or command frames.
    pub non_picture: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H263,
    Screen,
    Vp6,
    Vp6Alpha,
    Screen2,
    H264,
    Hevc,
    Av1,
    Vp9,
    Unknown(u32),
}

impl VideoCodec {
    /// The codec name ffprobe uses.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H263 => "flv1",
            VideoCodec::Screen => "flashsv",
            VideoCodec::Vp6 => "vp6f",
            VideoCodec::Vp6Alpha => "vp6a",
            VideoCodec::Screen2 => "flashsv2",
            VideoCodec::H264 => "h264",
            VideoCodec::Hevc => "hevc",
            VideoCodec::Av1 => "av1",
            VideoCodec::Vp9 => "vp9",
            VideoCodec::Unknown(_) => "unknown",
        }
    }
}

/// Inspects a video tag body. `None` for an empty body.
pub fn inspect_video(body: &[u8]) -> Option<VideoTag> {
    let first = *body.first()?;
    if first & 0x80 != 0 {
        // Enhanced RTMP: [1 bit IsExHeader][3 bits FrameType][4 bits PacketType][FourCC].
        let frame_type = (first >> 4) & 0x07;
        let packet_type = first & 0x0f;
        let fourcc = body
            .get(1..5)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        let codec = match &fourcc.to_be_bytes() {
            b"avc1" => VideoCodec::H264,
            b"hvc1" => VideoCodec::Hevc,
            b"av01" => VideoCodec::Av1,
            b"vp09" => VideoCodec::Vp9,
            _ => VideoCodec::Unknown(fourcc),
        };
        // Packet types: 0 SequenceStart, 1 CodedFrames, 2 SequenceEnd, 3 CodedFramesX,
        // 4 Metadata, 5 MPEG2TSSequenceStart, 6 Multitrack, 7 ModEx.
        let sequence_header = matches!(packet_type, 0 | 5);
        let picture = matches!(packet_type, 1 | 3);
        return Some(VideoTag {
            codec,
            keyframe: frame_type == 1 && picture,
            sequence_header,
            non_picture: !picture && !sequence_header,
        });
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0f;
    let codec = match codec_id {
        2 => VideoCodec::H263,
        3 => VideoCodec::Screen,
        4 => VideoCodec::Vp6,
        5 => VideoCodec::Vp6Alpha,
        6 => VideoCodec::Screen2,
        7 => VideoCodec::H264,
        12 => VideoCodec::Hevc,
        13 => VideoCodec::Av1,
        other => VideoCodec::Unknown(other as u32),
    };
    let (sequence_header, non_picture) = match codec {
        // AVCPacketType: 0 sequence header, 1 NALU, 2 end of sequence.
        VideoCodec::H264 | VideoCodec::Hevc | VideoCodec::Av1 => match body.get(1) {
            Some(0) => (true, false),
            Some(1) => (false, false),
            _ => (false, true),
        },
        _ => (false, false),
    };
    // Frame type 5 is a video info/command frame, not a picture.
    let non_picture = non_picture || frame_type == 5;
    Some(VideoTag {
        codec,
        keyframe: frame_type == 1 && !sequence_header && !non_picture,
        sequence_header,
        non_picture,
    })
}

/// What an audio tag body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioTag {
    pub codec: AudioCodec,
    /// Decoder configuration (AAC AudioSpecificConfig, enhanced RTMP SequenceStart).
    pub sequence_header: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Pcm,
    Adpcm,
    Mp3,
    PcmLe,
    Nellymoser,
    G711A,
    G711U,
    Aac,
    Speex,
    Opus,
    Flac,
    Ac3,
    Eac3,
    Unknown(u32),
}

impl AudioCodec {
    /// The codec name ffprobe uses.
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::Pcm => "pcm_s16be",
            AudioCodec::Adpcm => "adpcm_swf",
            AudioCodec::Mp3 => "mp3",
            AudioCodec::PcmLe => "pcm_s16le",
            AudioCodec::Nellymoser => "nellymoser",
            AudioCodec::G711A => "pcm_alaw",
            AudioCodec::G711U => "pcm_mulaw",
            AudioCodec::Aac => "aac",
            AudioCodec::Speex => "speex",
            AudioCodec::Opus => "opus",
            AudioCodec::Flac => "flac",
            AudioCodec::Ac3 => "ac3",
            AudioCodec::Eac3 => "eac3",
            AudioCodec::Unknown(_) => "unknown",
        }
    }
}

/// Inspects an audio tag body. `None` for an empty body.
pub fn inspect_audio(body: &[u8]) -> Option<AudioTag> {
    let first = *body.first()?;
    let format = first >> 4;
    if format == 9 {
        // Enhanced RTMP audio: [4 bits SoundFormat=9][4 bits PacketType][FourCC].
        let packet_type = first & 0x0f;
        let fourcc = body
            .get(1..5)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        let codec = match &fourcc.to_be_bytes() {
            b"Opus" => AudioCodec::Opus,
            b"fLaC" => AudioCodec::Flac,
            b"ac-3" => AudioCodec::Ac3,
            b"ec-3" => AudioCodec::Eac3,
            b".mp3" => AudioCodec::Mp3,
            b"mp4a" => AudioCodec::Aac,
            _ => AudioCodec::Unknown(fourcc),
        };
        return Some(AudioTag {
            codec,
            sequence_header: packet_type == 0,
        });
    }
    let codec = match format {
        0 => AudioCodec::Pcm,
        1 => AudioCodec::Adpcm,
        2 | 14 => AudioCodec::Mp3,
        3 => AudioCodec::PcmLe,
        4..=6 => AudioCodec::Nellymoser,
        7 => AudioCodec::G711A,
        8 => AudioCodec::G711U,
        10 => AudioCodec::Aac,
        11 => AudioCodec::Speex,
        other => AudioCodec::Unknown(other as u32),
    };
    Some(AudioTag {
        codec,
        sequence_header: codec == AudioCodec::Aac && body.get(1) == Some(&0),
    })
}

/// Sample rate and channel count from an AAC AudioSpecificConfig (the body of an AAC
/// sequence header after its two-byte FLV prefix).
pub fn aac_config(asc: &[u8]) -> Option<(u32, u8)> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let b0 = *asc.first()?;
    let b1 = *asc.get(1)?;
    let index = ((b0 & 0x07) << 1) | (b1 >> 7);
    let channels = (b1 >> 3) & 0x0f;
    RATES.get(index as usize).map(|r| (*r, channels))
}

/// One tag read from an FLV file or HTTP-FLV stream.
#[derive(Debug, Clone)]
pub struct Tag {
    pub tag_type: u8,
    pub timestamp: u32,
    pub body: Bytes,
}

/// Why an FLV byte stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("not an FLV stream (bad signature)")]
    BadSignature,
    #[error("FLV tag of {0} bytes is over the {1} byte limit")]
    TagTooLarge(usize, usize),
}

/// Most a [`TagReader`] reserves ahead of the bytes it holds for an incomplete tag.
const READ_AHEAD: usize = 64 << 10;

/// Incremental FLV reader: feed it bytes, take tags out. Used by the load generator, tests and
/// anything else that consumes FLV.
#[derive(Debug)]
pub struct TagReader {
    header_done: bool,
    max_tag: usize,
}

impl TagReader {
    /// A reader that refuses tags over `max_tag` bytes.
    pub fn new(max_tag: usize) -> Self {
        Self {
            header_done: false,
            max_tag,
        }
    }

    /// Takes the next complete tag out of `buf`, or `None` when more bytes are needed.
    pub fn next_tag(&mut self, buf: &mut BytesMut) -> Result<Option<Tag>, FlvError> {
        if !self.header_done {
            if buf.len() < 9 {
                return Ok(None);
            }
            if &buf[..3] != b"FLV" {
                return Err(FlvError::BadSignature);
            }
            let offset = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
            // Header, then PreviousTagSize0.
            if buf.len() < offset + 4 {
                return Ok(None);
            }
            buf.advance(offset + 4);
            self.header_done = true;
        }
        if buf.len() < TAG_HEADER_LEN {
            return Ok(None);
        }
        let size = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]) as usize;
        if size > self.max_tag {
            return Err(FlvError::TagTooLarge(size, self.max_tag));
        }
        if buf.len() < TAG_HEADER_LEN + size + 4 {
            // Room for the next read, not for the size the peer declared: the data has to
            // arrive before it is worth memory.
            buf.reserve((TAG_HEADER_LEN + size + 4 - buf.len()).min(READ_AHEAD));
            return Ok(None);
        }
        let tag_type = buf[0] & 0x1f;
        let timestamp = u32::from_be_bytes([buf[7], buf[4], buf[5], buf[6]]);
        buf.advance(TAG_HEADER_LEN);
        let body = buf.split_to(size).freeze();
        buf.advance(4);
        Ok(Some(Tag {
            tag_type,
            timestamp,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_tags() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&file_header(true, true));
        write_tag(&mut buf, TAG_VIDEO, 0x0123_4567, &[0x17, 0x01, 0, 0, 0, 9]);
        write_tag(&mut buf, TAG_AUDIO, 5, &[0xaf, 0x01, 7]);
        let mut reader = TagReader::new(1 << 20);
        let mut partial = buf.split_to(20);
        assert!(reader.next_tag(&mut partial).unwrap().is_none());
        partial.unsplit(buf);
        let tag = reader.next_tag(&mut partial).unwrap().unwrap();
        assert_eq!((tag.tag_type, tag.timestamp), (TAG_VIDEO, 0x0123_4567));
        assert_eq!(&tag.body[..], &[0x17, 0x01, 0, 0, 0, 9]);
        let tag = reader.next_tag(&mut partial).unwrap().unwrap();
        assert_eq!(
            (tag.tag_type, tag.timestamp, tag.body.len()),
            (TAG_AUDIO, 5, 3)
        );
        assert!(partial.is_empty());
    }

    /// Found by the `flv` fuzz target: a tag header declaring 14 MB made the reader reserve
    /// 14 MB before any of it arrived.
    #[test]
    fn reserves_no_more_than_a_read_ahead_of_the_data() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&file_header(true, true));
        buf.extend_from_slice(&[TAG_VIDEO, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x17]);
        let mut reader = TagReader::new(16 << 20);
        assert!(reader.next_tag(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= buf.len() + READ_AHEAD,
            "{}",
            buf.capacity()
        );
    }

    #[test]
    fn classifies_video() {
        let seq = inspect_video(&[0x17, 0x00, 0, 0, 0]).unwrap();
        assert!(seq.sequence_header && !seq.keyframe);
        let key = inspect_video(&[0x17, 0x01, 0, 0, 0]).unwrap();
        assert!(key.keyframe && key.codec == VideoCodec::H264);
        let inter = inspect_video(&[0x27, 0x01, 0, 0, 0]).unwrap();
        assert!(!inter.keyframe && !inter.sequence_header);
        let eos = inspect_video(&[0x17, 0x02, 0, 0, 0]).unwrap();
        assert!(eos.non_picture && !eos.keyframe);
        // Enhanced RTMP HEVC: keyframe, CodedFramesX.
        let ex = inspect_video(&[0x80 | 0x10 | 3, b'h', b'v', b'c', b'1']).unwrap();
        assert!(ex.keyframe && ex.codec == VideoCodec::Hevc);
        let ex_seq = inspect_video(&[0x80 | 0x10, b'h', b'v', b'c', b'1']).unwrap();
        assert!(ex_seq.sequence_header && !ex_seq.keyframe);
        assert!(inspect_video(&[]).is_none());
    }

    #[test]
    fn classifies_audio() {
        let seq = inspect_audio(&[0xaf, 0x00, 0x12, 0x10]).unwrap();
        assert!(seq.sequence_header && seq.codec == AudioCodec::Aac);
        assert!(!inspect_audio(&[0xaf, 0x01, 1]).unwrap().sequence_header);
        assert_eq!(inspect_audio(&[0x2f, 0xff]).unwrap().codec, AudioCodec::Mp3);
        assert_eq!(aac_config(&[0x12, 0x10]), Some((44100, 2)));
    }
}
