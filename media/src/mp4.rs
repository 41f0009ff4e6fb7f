//! Fragmented MP4 (CMAF) from the frames a hub carries: the initialization segment (`ftyp` +
//! `moov`) from a stream's sequence headers, and fragments (`moof` + `mdat`) from its coded
//! frames. The foundation of HLS (CMAF segments and LL-HLS parts) and of recordings.
//!
//! The boxes are built with the `mp4-atom` crate (typed ISO-BMFF boxes that encode and decode,
//! CMAF's `moof`/`traf`/`trun` included, H.264 and HEVC sample entries, `esds`), rather than by
//! hand: the byte layout of each box is the crate's, tested against real files; this module
//! only decides what goes in them.
//!
//! Output is deterministic: the same frames (payloads and millisecond timestamps) give the same
//! bytes, whichever node muxes them. Nothing here reads a clock or a counter of its own.
//!
//! Timescales: video 90 kHz (every millisecond timestamp is exact), audio its sample rate.

use bytes::Bytes;
use mp4_atom::{
    Atom, Audio, Avc1, Avcc, Codec, Dinf, Dref, Encode, Esds, FourCC, Ftyp, Hdlr, Hvc1, Hvcc, Mdhd,
    Mdia, Mfhd, Minf, Moof, Moov, Mp4a, Mvex, Mvhd, Smhd, Stbl, Stco, Stsc, Stsd, Stsz, Stts, Tfdt,
    Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, TrunSamples, Url, Visual, Vmhd, esds,
};

use crate::flv::{self, AudioCodec, VideoCodec};
use crate::frame::{Frame, FrameKind};

/// Video timescale: 90 kHz, so millisecond timestamps convert exactly.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Why a stream cannot be muxed into MP4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mp4Error {
    #[error("video codec {0} cannot go into MP4 here (H.264 and HEVC can)")]
    VideoCodec(&'static str),
    #[error("audio codec {0} cannot go into MP4 here (AAC can)")]
    AudioCodec(&'static str),
    #[error("the {0} sequence header is malformed: {1}")]
    BadConfig(&'static str, String),
    #[error("the stream has neither audio nor video configuration")]
    NoTracks,
    #[error("MP4 encoding failed: {0}")]
    Encode(String),
}

/// Which track a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Video,
    Audio,
}

#[derive(Debug, Clone)]
enum VideoConfig {
    Avc(Avcc),
    Hevc(Hvcc),
}

#[derive(Debug, Clone)]
struct VideoTrack {
    config: VideoConfig,
    width: u16,
    height: u16,
}

#[derive(Debug, Clone)]
struct AudioTrack {
    /// The AudioSpecificConfig.
    asc: Vec<u8>,
    sample_rate: u32,
    channels: u8,
}

/// The tracks of a stream, from its sequence headers: what the initialization segment
/// describes and what fragments refer to.
#[derive(Debug, Clone)]
pub struct Tracks {
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
}

/// A coded frame as an MP4 sample: its data without the FLV prefix, its decode time and
/// composition offset in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleData {
    pub track: TrackKind,
    pub dts_ms: u32,
    /// Presentation minus decode time (B-frames), milliseconds.
    pub cts_ms: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

/// The sample a coded frame carries; `None` for configuration, metadata and non-picture
/// frames, and for codecs this module does not mux.
pub fn sample(frame: &Frame) -> Option<SampleData> {
    let body = &frame.payload;
    match frame.kind {
        FrameKind::Video => {
            let tag = flv::inspect_video(body)?;
            if tag.sequence_header || tag.non_picture {
                return None;
            }
            let (cts, data) = if body[0] & 0x80 != 0 {
                // Enhanced RTMP: CodedFrames (1) carry a composition time, CodedFramesX (3) not.
                match body[0] & 0x0f {
                    1 => (si24(body.get(5..8)?), body.slice(8..)),
                    _ => (0, body.slice(5..)),
                }
            } else {
                (si24(body.get(2..5)?), body.slice(5..))
            };
            matches!(tag.codec, VideoCodec::H264 | VideoCodec::Hevc).then_some(SampleData {
                track: TrackKind::Video,
                dts_ms: frame.timestamp,
                cts_ms: cts,
                keyframe: tag.keyframe,
                data,
            })
        }
        FrameKind::Audio => {
            let tag = flv::inspect_audio(body)?;
            if tag.codec != AudioCodec::Aac || tag.sequence_header || body[0] >> 4 != 10 {
                return None;
            }
            Some(SampleData {
                track: TrackKind::Audio,
                dts_ms: frame.timestamp,
                cts_ms: 0,
                keyframe: true,
                data: body.slice(2..),
            })
        }
        FrameKind::Script => None,
    }
}

fn si24(b: &[u8]) -> i32 {
    let v = (i32::from(b[0]) << 16) | (i32::from(b[1]) << 8) | i32::from(b[2]);
    (v << 8) >> 8
}

impl Tracks {
    /// The tracks described by a stream's video and audio sequence headers (FLV bodies), and
    /// its picture size (from its metadata; players read the SPS anyway).
    pub fn new(
        video_config: Option<&Frame>,
        audio_config: Option<&Frame>,
        width: u32,
        height: u32,
    ) -> Result<Self, Mp4Error> {
        let video = video_config
            .map(|f| video_track(&f.payload, width, height))
            .transpose()?;
        let audio = audio_config.map(|f| audio_track(&f.payload)).transpose()?;
        if video.is_none() && audio.is_none() {
            return Err(Mp4Error::NoTracks);
        }
        Ok(Self { video, audio })
    }

    /// The track id of `kind` (video first), if the stream has it.
    pub fn track_id(&self, kind: TrackKind) -> Option<u32> {
        match kind {
            TrackKind::Video => self.video.as_ref().map(|_| 1),
            TrackKind::Audio => self
                .audio
                .as_ref()
                .map(|_| if self.video.is_some() { 2 } else { 1 }),
        }
    }

    /// The timescale of `kind`'s track.
    pub fn timescale(&self, kind: TrackKind) -> u32 {
        match kind {
            TrackKind::Video => VIDEO_TIMESCALE,
            TrackKind::Audio => self.audio.as_ref().map_or(1000, |a| a.sample_rate.max(1)),
        }
    }

    /// A millisecond time in `kind`'s timescale (exact for video; rounded for audio, the same
    /// way everywhere).
    pub fn to_timescale(&self, kind: TrackKind, ms: u64) -> u64 {
        let scale = u64::from(self.timescale(kind));
        (ms * scale + 500) / 1000
    }

    /// RFC 6381 codec strings, for `CODECS=` in a playlist (`avc1.64001f`, `mp4a.40.2`).
    pub fn codecs(&self) -> Vec<String> {
        let mut codecs = Vec::new();
        match self.video.as_ref().map(|v| &v.config) {
            Some(VideoConfig::Avc(c)) => codecs.push(format!(
                "avc1.{:02x}{:02x}{:02x}",
                c.avc_profile_indication, c.profile_compatibility, c.avc_level_indication
            )),
            Some(VideoConfig::Hevc(c)) => codecs.push(format!(
                "hvc1.{}.{:x}.{}{}.B0",
                c.general_profile_idc,
                u32::from_be_bytes(c.general_profile_compatibility_flags).reverse_bits(),
                if c.general_tier_flag { 'H' } else { 'L' },
                c.general_level_idc
            )),
            None => {}
        }
        if let Some(a) = &self.audio {
            let object_type = a.asc.first().map_or(2, |b| b >> 3);
            codecs.push(format!("mp4a.40.{object_type}"));
        }
        codecs
    }

    /// The initialization segment: `ftyp` and `moov` with one track per kind and `mvex`.
    pub fn init_segment(&self) -> Result<Vec<u8>, Mp4Error> {
        let ftyp = Ftyp {
            major_brand: FourCC::new(b"iso6"),
            minor_version: 0,
            compatible_brands: vec![
                FourCC::new(b"iso6"),
                FourCC::new(b"cmfc"),
                FourCC::new(b"mp41"),
            ],
        };
        let mut traks = Vec::new();
        let mut trex = Vec::new();
        if let Some(video) = &self.video {
            traks.push(self.video_trak(video));
        }
        if let Some(audio) = &self.audio {
            traks.push(self.audio_trak(audio));
        }
        for trak in &traks {
            trex.push(Trex {
                track_id: trak.tkhd.track_id,
                default_sample_description_index: 1,
                ..Default::default()
            });
        }
        let moov = Moov {
            mvhd: Mvhd {
                timescale: 1000,
                rate: 1.into(),
                volume: 1.into(),
                next_track_id: traks.len() as u32 + 1,
                ..Default::default()
            },
            mvex: Some(Mvex { mehd: None, trex }),
            trak: traks,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(1024);
        encode(&ftyp, &mut out)?;
        encode(&moov, &mut out)?;
        Ok(out)
    }

    fn video_trak(&self, video: &VideoTrack) -> Trak {
        let visual = Visual {
            data_reference_index: 1,
            width: video.width,
            height: video.height,
            horizresolution: 72.into(),
            vertresolution: 72.into(),
            frame_count: 1,
            compressor: "".into(),
            depth: 24,
        };
        let codec: Codec = match &video.config {
            VideoConfig::Avc(avcc) => Avc1 {
                visual,
                avcc: avcc.clone(),
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: Default::default(),
            }
            .into(),
            VideoConfig::Hevc(hvcc) => Hvc1 {
                visual,
                hvcc: hvcc.clone(),
                lhvc: None,
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                ccst: None,
                spatial: None,
            }
            .into(),
        };
        Trak {
            tkhd: Tkhd {
                track_id: 1,
                enabled: true,
                in_movie: true,
                width: video.width.into(),
                height: video.height.into(),
                ..Default::default()
            },
            mdia: mdia(
                VIDEO_TIMESCALE,
                b"vide",
                "Corriente video",
                Minf {
                    vmhd: Some(Vmhd::default()),
                    dinf: dinf(),
                    stbl: stbl(codec),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }
    }

    fn audio_trak(&self, audio: &AudioTrack) -> Trak {
        let track_id = self.track_id(TrackKind::Audio).unwrap_or(1);
        let b0 = audio.asc.first().copied().unwrap_or(0x10);
        let b1 = audio.asc.get(1).copied().unwrap_or(0);
        let codec: Codec = Mp4a {
            audio: Audio {
                data_reference_index: 1,
                channel_count: u16::from(audio.channels),
                sample_size: 16,
                sample_rate: (audio.sample_rate.min(u32::from(u16::MAX)) as u16).into(),
            },
            esds: Esds {
                es_desc: esds::EsDescriptor {
                    es_id: track_id as u16,
                    dec_config: esds::DecoderConfig {
                        object_type_indication: 0x40,
                        stream_type: 5,
                        dec_specific: Some(esds::DecoderSpecific {
                            profile: b0 >> 3,
                            freq_index: ((b0 & 0x07) << 1) | (b1 >> 7),
                            chan_conf: (b1 >> 3) & 0x0f,
                            raw: audio.asc.clone(),
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            btrt: None,
            taic: None,
        }
        .into();
        Trak {
            tkhd: Tkhd {
                track_id,
                alternate_group: 1,
                enabled: true,
                in_movie: true,
                volume: 1.into(),
                ..Default::default()
            },
            mdia: mdia(
                self.timescale(TrackKind::Audio),
                b"soun",
                "Corriente audio",
                Minf {
                    smhd: Some(Smhd::default()),
                    dinf: dinf(),
                    stbl: stbl(codec),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }
    }
}

fn mdia(timescale: u32, handler: &[u8; 4], name: &str, minf: Minf) -> Mdia {
    Mdia {
        mdhd: Mdhd {
            timescale,
            language: "und".into(),
            ..Default::default()
        },
        hdlr: Hdlr {
            handler: FourCC::new(handler),
            name: name.into(),
        },
        minf,
    }
}

fn dinf() -> Dinf {
    Dinf {
        dref: Dref {
            entries: vec![
                Url {
                    location: "".into(),
                }
                .into(),
            ],
        },
    }
}

fn stbl(codec: Codec) -> Stbl {
    Stbl {
        stsd: Stsd {
            codecs: vec![codec],
        },
        stts: Stts::default(),
        stsc: Stsc::default(),
        stsz: Stsz::default(),
        stco: Some(Stco::default()),
        ..Default::default()
    }
}

fn encode<T: Encode>(atom: &T, out: &mut Vec<u8>) -> Result<(), Mp4Error> {
    atom.encode(out)
        .map_err(|e| Mp4Error::Encode(e.to_string()))
}

fn video_track(body: &[u8], width: u32, height: u32) -> Result<VideoTrack, Mp4Error> {
    let tag =
        flv::inspect_video(body).ok_or_else(|| Mp4Error::BadConfig("video", "empty".to_owned()))?;
    // Legacy: [frame type|codec][AVCPacketType=0][CTS 3 bytes][record];
    // enhanced: [ex header|frame type|SequenceStart][FourCC][record].
    let record = body
        .get(5..)
        .ok_or_else(|| Mp4Error::BadConfig("video", "truncated".to_owned()))?;
    let bad = |e: mp4_atom::Error| Mp4Error::BadConfig("video", e.to_string());
    let config = match tag.codec {
        VideoCodec::H264 => VideoConfig::Avc(Avcc::decode_body(&mut &record[..]).map_err(bad)?),
        VideoCodec::Hevc => VideoConfig::Hevc(Hvcc::decode_body(&mut &record[..]).map_err(bad)?),
        other => return Err(Mp4Error::VideoCodec(other.name())),
    };
    Ok(VideoTrack {
        config,
        width: width.min(u32::from(u16::MAX)) as u16,
        height: height.min(u32::from(u16::MAX)) as u16,
    })
}

fn audio_track(body: &[u8]) -> Result<AudioTrack, Mp4Error> {
    let tag =
        flv::inspect_audio(body).ok_or_else(|| Mp4Error::BadConfig("audio", "empty".to_owned()))?;
    if tag.codec != AudioCodec::Aac || body[0] >> 4 != 10 {
        return Err(Mp4Error::AudioCodec(tag.codec.name()));
    }
    let asc = body
        .get(2..)
        .filter(|a| a.len() >= 2)
        .ok_or_else(|| Mp4Error::BadConfig("audio", "no AudioSpecificConfig".to_owned()))?;
    let (sample_rate, channels) = flv::aac_config(asc)
        .ok_or_else(|| Mp4Error::BadConfig("audio", "unknown AAC sampling frequency".to_owned()))?;
    Ok(AudioTrack {
        asc: asc.to_vec(),
        sample_rate,
        channels,
    })
}

/// One sample of a fragment, in its track's timescale.
#[derive(Debug, Clone)]
pub struct FragmentSample {
    pub duration: u32,
    pub cts_offset: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

/// One track's run of samples in a fragment.
#[derive(Debug, Clone)]
pub struct TrackRun {
    pub track_id: u32,
    /// Decode time of the first sample, in the track's timescale.
    pub base_decode_time: u64,
    pub samples: Vec<FragmentSample>,
}

/// Sample flags (ISO/IEC 14496-12 8.8.3.1): a sync sample, or one that depends on others.
const SYNC: u32 = 0x0200_0000;
const NON_SYNC: u32 = 0x0101_0000;

/// A fragment: `moof` (sequence number `sequence`, one `traf` per run) and one `mdat` with the
/// runs' data in order. Returns the bytes (the `mdat` payload is copied once, into them).
pub fn fragment(sequence: u32, runs: &[TrackRun]) -> Result<Vec<u8>, Mp4Error> {
    let build = |offsets: &[i32]| Moof {
        mfhd: Mfhd {
            sequence_number: sequence,
        },
        traf: runs
            .iter()
            .zip(offsets)
            .map(|(run, offset)| Traf {
                tfhd: Tfhd {
                    track_id: run.track_id,
                    default_base_is_moof: true,
                    ..Default::default()
                },
                tfdt: Some(Tfdt {
                    base_media_decode_time: run.base_decode_time,
                }),
                trun: vec![Trun {
                    data_offset: Some(*offset),
                    samples: TrunSamples::Explicit(
                        run.samples
                            .iter()
                            .map(|s| TrunEntry {
                                duration: Some(s.duration),
                                size: Some(s.data.len() as u32),
                                flags: Some(if s.keyframe { SYNC } else { NON_SYNC }),
                                cts: Some(i64::from(s.cts_offset)),
                            })
                            .collect(),
                    ),
                }],
                ..Default::default()
            })
            .collect(),
    };
    // The data offsets depend on the moof's size, which does not depend on their values.
    let mut moof = Vec::new();
    encode(&build(&vec![0; runs.len()]), &mut moof)?;
    let mut offsets = Vec::with_capacity(runs.len());
    let mut at = moof.len() + 8;
    for run in runs {
        offsets.push(i32::try_from(at).map_err(|_| Mp4Error::Encode("fragment too large".into()))?);
        at += run.samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    moof.clear();
    encode(&build(&offsets), &mut moof)?;
    let mdat_len = at - moof.len();
    let mut out = moof;
    out.reserve(mdat_len);
    out.extend_from_slice(
        &u32::try_from(mdat_len)
            .map_err(|_| Mp4Error::Encode("fragment too large".into()))?
            .to_be_bytes(),
    );
    out.extend_from_slice(b"mdat");
    for run in runs {
        for s in &run.samples {
            out.extend_from_slice(&s.data);
        }
    }
    Ok(out)
}

/// Turns a stream's samples, in decode order, into fragments: a sample's duration is the
/// time to the next sample of its track, so each track's latest sample waits for the next one
/// (or for [`Fragmenter::finish`], which gives it the duration before it).
#[derive(Debug)]
pub struct Fragmenter {
    tracks: Tracks,
    /// Samples whose duration is known, per track (video, audio), not yet in a fragment.
    ready: [Vec<(u64, FragmentSample)>; 2],
    /// Their data's bytes.
    ready_bytes: usize,
    /// Each track's latest sample: its decode time in the track's timescale, and the sample.
    held: [Option<(u64, SampleData)>; 2],
    last_duration: [u32; 2],
}

fn slot(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

impl Fragmenter {
    pub fn new(tracks: Tracks) -> Self {
        Self {
            tracks,
            ready: [Vec::new(), Vec::new()],
            ready_bytes: 0,
            held: [None, None],
            last_duration: [0, 0],
        }
    }

    pub fn tracks(&self) -> &Tracks {
        &self.tracks
    }

    /// Adds a sample (ignored when the stream has no track of its kind).
    pub fn push(&mut self, sample: SampleData) {
        if self.tracks.track_id(sample.track).is_none() {
            return;
        }
        let i = slot(sample.track);
        let dts = self
            .tracks
            .to_timescale(sample.track, u64::from(sample.dts_ms));
        if let Some((prev_dts, prev)) = self.held[i].take() {
            // Non-increasing timestamps (a publisher's glitch) still give a playable length.
            let duration = dts.saturating_sub(prev_dts).clamp(1, u64::from(u32::MAX)) as u32;
            self.last_duration[i] = duration;
            self.ready_bytes += prev.data.len();
            self.ready[i].push((prev_dts, self.entry(&prev, duration)));
        }
        self.held[i] = Some((dts, sample));
    }

    fn entry(&self, s: &SampleData, duration: u32) -> FragmentSample {
        let cts = self
            .tracks
            .to_timescale(s.track, s.cts_ms.unsigned_abs() as u64) as i64;
        FragmentSample {
            duration,
            cts_offset: (if s.cts_ms < 0 { -cts } else { cts }) as i32,
            keyframe: s.keyframe,
            data: s.data.clone(),
        }
    }

    /// Whether samples wait for a fragment.
    pub fn pending(&self) -> bool {
        self.ready.iter().any(|r| !r.is_empty())
    }

    /// Bytes of the samples waiting for a fragment.
    pub fn pending_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// A fragment (numbered `sequence`) of every sample whose duration is known; `None` when
    /// there is none.
    pub fn flush(&mut self, sequence: u32) -> Result<Option<Vec<u8>>, Mp4Error> {
        let mut runs = Vec::new();
        self.ready_bytes = 0;
        for kind in [TrackKind::Video, TrackKind::Audio] {
            let ready = std::mem::take(&mut self.ready[slot(kind)]);
            let (Some(track_id), Some((base, _))) = (self.tracks.track_id(kind), ready.first())
            else {
                continue;
            };
            runs.push(TrackRun {
                track_id,
                base_decode_time: *base,
                samples: ready.into_iter().map(|(_, s)| s).collect(),
            });
        }
        if runs.is_empty() {
            return Ok(None);
        }
        fragment(sequence, &runs).map(Some)
    }

    /// The last fragment: every sample, each track's latest with the duration of the one
    /// before it.
    pub fn finish(&mut self, sequence: u32) -> Result<Option<Vec<u8>>, Mp4Error> {
        for i in 0..2 {
            if let Some((dts, last)) = self.held[i].take() {
                let duration = self.last_duration[i].max(1);
                let entry = self.entry(&last, duration);
                self.ready[i].push((dts, entry));
            }
        }
        self.flush(sequence)
    }
}

#[cfg(test)]
mod tests {
    use mp4_atom::{Decode, Mdat};

    use super::*;

    /// An AVC sequence header (FLV body) with a real 320x240 High-profile SPS and PPS.
    fn avc_config() -> Frame {
        let sps = b"\x67\x64\x00\x0d\xac\xd9\x41\x41\xfb\x01\x10\x00\x00\x03\x00\x10\x00\x00\x03\x03\xc0\xf1\x42\x99\x60";
        let pps = b"\x68\xeb\xe3\xcb\x22\xc0";
        let mut body = vec![0x17, 0, 0, 0, 0, 1, 0x64, 0x00, 0x0d, 0xff, 0xe1];
        body.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        body.extend_from_slice(sps);
        body.push(1);
        body.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        body.extend_from_slice(pps);
        Frame::new(FrameKind::Video, 0, Bytes::from(body), 0)
    }

    fn aac_config() -> Frame {
        Frame::new(
            FrameKind::Audio,
            0,
            Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
            0,
        )
    }

    #[test]
    fn init_segment_describes_both_tracks() {
        let tracks = Tracks::new(Some(&avc_config()), Some(&aac_config()), 320, 240).unwrap();
        assert_eq!(tracks.codecs(), ["avc1.64000d", "mp4a.40.2"]);
        assert_eq!(tracks.track_id(TrackKind::Audio), Some(2));
        assert_eq!(tracks.timescale(TrackKind::Audio), 44100);
        let init = tracks.init_segment().unwrap();
        let mut buf = &init[..];
        let ftyp = Ftyp::decode(&mut buf).unwrap();
        assert_eq!(ftyp.major_brand, FourCC::new(b"iso6"));
        let moov = Moov::decode(&mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(moov.trak.len(), 2);
        assert_eq!(moov.mvex.as_ref().map(|m| m.trex.len()), Some(2));
        assert_eq!(moov.trak[0].mdia.mdhd.timescale, VIDEO_TIMESCALE);
        // Deterministic.
        assert_eq!(init, tracks.init_segment().unwrap());

        let radio = Tracks::new(None, Some(&aac_config()), 0, 0).unwrap();
        assert_eq!(radio.track_id(TrackKind::Audio), Some(1));
        assert!(Tracks::new(None, None, 0, 0).is_err());
        let mp3 = Frame::new(FrameKind::Audio, 0, Bytes::from_static(&[0x2f, 0xff]), 0);
        assert!(matches!(
            Tracks::new(None, Some(&mp3), 0, 0),
            Err(Mp4Error::AudioCodec("mp3"))
        ));
        let garbage = Frame::new(
            FrameKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
            0,
        );
        assert!(matches!(
            Tracks::new(Some(&garbage), None, 0, 0),
            Err(Mp4Error::BadConfig("video", _))
        ));
    }

    #[test]
    fn samples_lose_their_flv_prefix_and_keep_composition_time() {
        let key = Frame::new(
            FrameKind::Video,
            40,
            Bytes::from_static(&[0x17, 1, 0, 0, 0x50, 0, 0, 0, 1, 0x65]),
            0,
        );
        let s = sample(&key).unwrap();
        assert_eq!((s.dts_ms, s.cts_ms, s.keyframe), (40, 80, true));
        assert_eq!(&s.data[..], &[0, 0, 0, 1, 0x65]);
        assert!(sample(&avc_config()).is_none());
        let audio = Frame::new(
            FrameKind::Audio,
            23,
            Bytes::from_static(&[0xaf, 1, 9, 9]),
            0,
        );
        assert_eq!(&sample(&audio).unwrap().data[..], &[9, 9]);
        let negative = Frame::new(
            FrameKind::Video,
            0,
            Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xdf, 1]),
            0,
        );
        assert_eq!(sample(&negative).unwrap().cts_ms, -33);
    }

    #[test]
    fn the_fragmenter_holds_each_tracks_latest_sample_and_counts_what_waits() {
        let tracks = Tracks::new(Some(&avc_config()), None, 320, 240).unwrap();
        let mut f = Fragmenter::new(tracks);
        for (i, ts) in [0u32, 33, 66].into_iter().enumerate() {
            f.push(SampleData {
                track: TrackKind::Video,
                dts_ms: ts,
                cts_ms: 0,
                keyframe: i == 0,
                data: Bytes::from_static(b"abc"),
            });
        }
        // The latest waits for the next to know its duration.
        assert_eq!(f.pending_bytes(), 6);
        let fragment = f.flush(1).unwrap().unwrap();
        assert_eq!(f.pending_bytes(), 0);
        let moof = Moof::decode(&mut &fragment[..]).unwrap();
        assert_eq!(moof.traf[0].trun[0].samples.len(), 2);
        assert_eq!(
            moof.traf[0].trun[0].samples.get(0).unwrap().duration,
            Some(2970)
        );
        let last = f.finish(2).unwrap().unwrap();
        let moof = Moof::decode(&mut &last[..]).unwrap();
        assert_eq!(moof.traf[0].trun[0].samples.len(), 1);
    }

    #[test]
    fn fragments_point_at_their_data() {
        let runs = [
            TrackRun {
                track_id: 1,
                base_decode_time: 90_000,
                samples: vec![
                    FragmentSample {
                        duration: 3000,
                        cts_offset: 3000,
                        keyframe: true,
                        data: Bytes::from_static(b"key"),
                    },
                    FragmentSample {
                        duration: 3000,
                        cts_offset: 0,
                        keyframe: false,
                        data: Bytes::from_static(b"inter"),
                    },
                ],
            },
            TrackRun {
                track_id: 2,
                base_decode_time: 44_100,
                samples: vec![FragmentSample {
                    duration: 1024,
                    cts_offset: 0,
                    keyframe: true,
                    data: Bytes::from_static(b"aac"),
                }],
            },
        ];
        let bytes = fragment(7, &runs).unwrap();
        let mut buf = &bytes[..];
        let moof = Moof::decode(&mut buf).unwrap();
        let moof_len = bytes.len() - buf.len();
        let mdat = Mdat::decode(&mut buf).unwrap();
        assert_eq!(mdat.data, b"keyinteraac");
        assert_eq!(moof.mfhd.sequence_number, 7);
        let offsets: Vec<i32> = moof
            .traf
            .iter()
            .map(|t| t.trun[0].data_offset.unwrap())
            .collect();
        assert_eq!(offsets, [moof_len as i32 + 8, moof_len as i32 + 16]);
        assert_eq!(
            moof.traf[1].tfdt.as_ref().map(|t| t.base_media_decode_time),
            Some(44_100)
        );
        assert_eq!(bytes, fragment(7, &runs).unwrap());
    }
}
