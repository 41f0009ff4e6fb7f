//! Fragmented MP4 (CMAF) from the frames a hub carries: the initialization segment (`ftyp` +
//! `moov`) from a stream's sequence headers, and fragments (`moof` + `mdat`) from its coded
//! frames. The foundation of HLS (CMAF segments and LL-HLS parts) and of recordings; and
//! [`faststart`], which turns a recording into a progressive MP4 (`moov` first, one `mdat`).
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

use std::io::{Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use mp4_atom::{
    Atom, Audio, Avc1, Avcc, Co64, Codec, Ctts, CttsEntry, Decode, Dinf, Dref, Edts, Elst,
    ElstEntry, Encode, Esds, FourCC, Ftyp, Hdlr, Header, Hvc1, Hvcc, Mdhd, Mdia, Mfhd, Minf, Moof,
    Moov, Mp4a, Mvex, Mvhd, Smhd, Stbl, Stco, Stsc, StscEntry, Stsd, Stss, Stsz, StszSamples, Stts,
    SttsEntry, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, TrunSamples, Url, Visual, Vmhd,
    esds,
};

use crate::flv::{self, AudioCodec, VideoCodec};
use crate::frame::{Frame, FrameKind};

/// Video timescale: 90 kHz, so millisecond timestamps convert exactly.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Why a stream cannot be muxed into MP4, or a recording made progressive.
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
    #[error("not a recording this server wrote: {0}")]
    Malformed(String),
    #[error("reading or writing MP4 failed: {0}")]
    Io(String),
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

/// What [`faststart`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faststart {
    /// The movie's length (the longest track's, from the earliest start), milliseconds.
    pub duration_ms: u64,
    /// The output's length.
    pub bytes: u64,
    /// Samples of the video track.
    pub video_samples: u64,
    /// Samples of the audio track.
    pub audio_samples: u64,
}

/// Largest `ftyp`, `moov` or `moof` read into memory: they describe the media, they do not
/// carry it.
const MAX_HEADER_BOX: u64 = 64 << 20;

/// Turns a recording (a fragmented MP4: `ftyp`, `moov`, then `moof` + `mdat` pairs) into a
/// progressive MP4 whose `moov` comes first, with full sample tables, followed by a single
/// `mdat`: the file a download or an editor wants.
///
/// Two passes over `input`: the first walks the top-level boxes by their headers, decodes the
/// `moov` and each `moof` and keeps one small entry per sample (never the media); the second
/// copies the samples, one run of a fragment at a time, behind the new `moov`. A trailing
/// `moof` without its `mdat` (a file cut by a crash) is left out. `output` is written in
/// order, never sought; give it a buffer (`BufWriter`).
///
/// The tracks keep their place on the timeline: a progressive file's sample tables start each
/// track at 0, so the time a fragmented one gives by its first `tfdt` (and the composition
/// offset of its first sample) becomes an edit list, and audio and video stay in sync.
pub fn faststart<R: Read + Seek, W: Write>(
    input: &mut R,
    output: &mut W,
) -> Result<Faststart, Mp4Error> {
    let file_len = input.seek(SeekFrom::End(0)).map_err(io_error)?;
    let (mut ftyp, mut moov) = (None::<Ftyp>, None::<Moov>);
    let mut tracks: Vec<InputTrack> = Vec::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    // A fragment's runs, until its mdat shows its data is there.
    let mut pending: Option<Vec<Run>> = None;
    let mut at = 0;
    while let Some(b) = box_at(input, at, file_len)? {
        match &<[u8; 4]>::from(b.kind) {
            b"ftyp" => ftyp = Some(decode_box(input, &b)?),
            b"moov" => {
                let m: Moov = decode_box(input, &b)?;
                tracks = m
                    .trak
                    .iter()
                    .map(|t| InputTrack::new(t, m.mvex.as_ref()))
                    .collect::<Result<_, _>>()?;
                moov = Some(m);
            }
            b"moof" => {
                if moov.is_none() {
                    return Err(malformed("a moof before the moov"));
                }
                if pending.is_some() {
                    return Err(malformed(format!(
                        "the moof before the one at {} has no mdat",
                        b.start
                    )));
                }
                let moof = decode_box(input, &b)?;
                pending = Some(fragment_runs(&moof, b.start, file_len, &tracks)?);
            }
            b"mdat" => {
                if let Some(runs) = pending.take() {
                    commit(runs, &b, &mut tracks, &mut chunks)?;
                }
            }
            // free, skip, sidx, mfra...: nothing a progressive file needs.
            _ => {}
        }
        at = b.start + b.len;
    }
    let ftyp = ftyp.ok_or_else(|| malformed("no ftyp"))?;
    let moov = moov.ok_or_else(|| malformed("no moov"))?;
    if chunks.is_empty() {
        return Err(malformed("no samples"));
    }
    write_progressive(input, output, ftyp, moov, &tracks, &chunks)
}

/// A top-level box of the input, by its header.
#[derive(Debug, Clone, Copy)]
struct BoxAt {
    kind: FourCC,
    /// Where it starts.
    start: u64,
    /// Its header's length: 8, or 16 with a 64-bit size.
    header: u64,
    /// Its length, header included.
    len: u64,
}

/// The top-level box at `at`, if a whole one is there: what follows an incomplete box (a file
/// cut while it was written) is left out.
fn box_at<R: Read + Seek>(
    input: &mut R,
    at: u64,
    file_len: u64,
) -> Result<Option<BoxAt>, Mp4Error> {
    let left = file_len.saturating_sub(at);
    if left < 8 {
        return Ok(None);
    }
    input.seek(SeekFrom::Start(at)).map_err(io_error)?;
    let mut head = [0u8; 16];
    input.read_exact(&mut head[..8]).map_err(io_error)?;
    let kind = FourCC::new(&[head[4], head[5], head[6], head[7]]);
    let (header, len) = match u32::from_be_bytes([head[0], head[1], head[2], head[3]]) {
        // To the end of the file.
        0 => (8, left),
        1 if left < 16 => return Ok(None),
        1 => {
            input.read_exact(&mut head[8..]).map_err(io_error)?;
            let mut large = [0u8; 8];
            large.copy_from_slice(&head[8..]);
            (16, u64::from_be_bytes(large))
        }
        n => (8, u64::from(n)),
    };
    if len < header {
        return Err(malformed(format!("a {kind} box of {len} bytes at {at}")));
    }
    Ok((len <= left).then_some(BoxAt {
        kind,
        start: at,
        header,
        len,
    }))
}

/// Decodes a (small) top-level box.
fn decode_box<T: Decode, R: Read + Seek>(input: &mut R, b: &BoxAt) -> Result<T, Mp4Error> {
    if b.len > MAX_HEADER_BOX {
        return Err(malformed(format!("a {} box of {} bytes", b.kind, b.len)));
    }
    input.seek(SeekFrom::Start(b.start)).map_err(io_error)?;
    let mut bytes = vec![0; b.len as usize];
    input.read_exact(&mut bytes).map_err(io_error)?;
    T::decode(&mut &bytes[..])
        .map_err(|e| malformed(format!("the {} box at {}: {e}", b.kind, b.start)))
}

/// A sample, as the sample tables describe it: in its track's timescale.
#[derive(Debug, Clone, Copy)]
struct Sample {
    duration: u32,
    size: u32,
    cts_offset: i32,
    sync: bool,
}

/// A track of the input, and the samples its fragments describe (in `moov.trak` order).
#[derive(Debug)]
struct InputTrack {
    track_id: u32,
    timescale: u32,
    handler: FourCC,
    /// Its `trex`: the sample defaults a fragment may leave out.
    defaults: Trex,
    samples: Vec<Sample>,
    /// The first fragment's decode time (`tfdt`).
    start: Option<u64>,
    /// The samples' durations, summed.
    duration: u64,
}

impl InputTrack {
    fn new(trak: &Trak, mvex: Option<&Mvex>) -> Result<Self, Mp4Error> {
        let track_id = trak.tkhd.track_id;
        let timescale = trak.mdia.mdhd.timescale;
        if timescale == 0 {
            return Err(malformed(format!("track {track_id} has no timescale")));
        }
        let defaults = mvex
            .and_then(|m| m.trex.iter().find(|t| t.track_id == track_id))
            .cloned()
            .unwrap_or_default();
        Ok(Self {
            track_id,
            timescale,
            handler: trak.mdia.hdlr.handler,
            defaults,
            samples: Vec::new(),
            start: None,
            duration: 0,
        })
    }

    /// The decode time after the last sample.
    fn end(&self) -> u64 {
        self.start.unwrap_or(0).saturating_add(self.duration)
    }

    /// The first sample's composition offset, when positive (B-frames: the first frame is
    /// decoded before it is shown): where the track's presentation starts in its media.
    fn lead(&self) -> u64 {
        self.samples
            .first()
            .map_or(0, |s| u64::from(s.cts_offset.max(0).unsigned_abs()))
    }

    /// When the first sample is shown (its decode time plus [`Self::lead`]), as (time,
    /// timescale); `None` without samples.
    fn presentation_start(&self) -> Option<(u64, u32)> {
        let first = self.start?.saturating_add(self.lead());
        (!self.samples.is_empty()).then_some((first, self.timescale))
    }
}

/// A run of samples contiguous in the input (one `trun`'s): one chunk of the output.
#[derive(Debug)]
struct Chunk {
    /// Its track, an index in `moov.trak`.
    track: usize,
    /// Where its data starts in the input.
    offset: u64,
    len: u64,
    samples: u32,
    /// Its sample description, 1-based.
    description: u32,
}

/// A `trun` of a fragment whose `mdat` is not yet seen.
#[derive(Debug)]
struct Run {
    chunk: Chunk,
    /// The `tfdt` of its `traf`, on the traf's first run.
    base_decode_time: Option<u64>,
    samples: Vec<Sample>,
}

/// Sample flags: `sample_is_non_sync_sample`.
const NON_SYNC_BIT: u32 = 0x0001_0000;

/// The runs of the `moof` at `start`: their samples (what a `trun` leaves out comes from the
/// `tfhd`, then the `trex`) and where their data is.
fn fragment_runs(
    moof: &Moof,
    start: u64,
    file_len: u64,
    tracks: &[InputTrack],
) -> Result<Vec<Run>, Mp4Error> {
    let mut runs = Vec::new();
    // Without a base offset, a traf's data follows the previous traf's (the first's, the moof).
    let mut next = start;
    for traf in &moof.traf {
        let tfhd = &traf.tfhd;
        let track = tracks
            .iter()
            .position(|t| t.track_id == tfhd.track_id)
            .ok_or_else(|| {
                malformed(format!(
                    "a fragment of track {}, which the moov does not describe",
                    tfhd.track_id
                ))
            })?;
        let defaults = &tracks[track].defaults;
        let base = match tfhd.base_data_offset {
            Some(offset) => offset,
            None if tfhd.default_base_is_moof => start,
            None => next,
        };
        next = base;
        let mut base_decode_time = traf.tfdt.as_ref().map(|t| t.base_media_decode_time);
        for trun in &traf.trun {
            // A run without per-sample fields is only a count: every sample having data, it
            // cannot exceed the file's bytes (nor make the tables outgrow the file).
            if trun.samples.len() as u64 > file_len - start {
                return Err(malformed(format!(
                    "a run of {} samples in the moof at {start}",
                    trun.samples.len()
                )));
            }
            let offset = match trun.data_offset {
                Some(d) => base.checked_add_signed(i64::from(d)).ok_or_else(|| {
                    malformed(format!("a data offset of {d} in the moof at {start}"))
                })?,
                None => next,
            };
            let samples = trun
                .samples
                .iter()
                .map(|e| {
                    let cts_offset = i32::try_from(e.cts.unwrap_or(0))
                        .map_err(|_| malformed(format!("a composition offset of {:?}", e.cts)))?;
                    let flags = e
                        .flags
                        .or(tfhd.default_sample_flags)
                        .unwrap_or(defaults.default_sample_flags);
                    Ok(Sample {
                        duration: e
                            .duration
                            .or(tfhd.default_sample_duration)
                            .unwrap_or(defaults.default_sample_duration),
                        size: e
                            .size
                            .or(tfhd.default_sample_size)
                            .unwrap_or(defaults.default_sample_size),
                        cts_offset,
                        sync: flags & NON_SYNC_BIT == 0,
                    })
                })
                .collect::<Result<Vec<_>, Mp4Error>>()?;
            let len: u64 = samples.iter().map(|s| u64::from(s.size)).sum();
            next = offset.saturating_add(len);
            if samples.is_empty() {
                continue;
            }
            runs.push(Run {
                chunk: Chunk {
                    track,
                    offset,
                    len,
                    samples: samples.len() as u32,
                    description: tfhd
                        .sample_description_index
                        .unwrap_or(defaults.default_sample_description_index)
                        .max(1),
                },
                base_decode_time: base_decode_time.take(),
                samples,
            });
        }
    }
    Ok(runs)
}

/// Adds a fragment's runs to the tables, now that its `mdat` is there; their data must be in it.
fn commit(
    runs: Vec<Run>,
    mdat: &BoxAt,
    tracks: &mut [InputTrack],
    chunks: &mut Vec<Chunk>,
) -> Result<(), Mp4Error> {
    let (data, end) = (mdat.start + mdat.header, mdat.start + mdat.len);
    if let Some(run) = runs
        .iter()
        .find(|r| r.chunk.offset < data || r.chunk.offset.saturating_add(r.chunk.len) > end)
    {
        return Err(malformed(format!(
            "{} bytes at {} lie outside the mdat at {}",
            run.chunk.len, run.chunk.offset, mdat.start
        )));
    }
    for run in runs {
        let track = &mut tracks[run.chunk.track];
        if let Some(base) = run.base_decode_time {
            let end = track.end();
            match track.samples.last_mut() {
                None => track.start = Some(base),
                // A gap in the timeline (the stream stalled, or frames were skipped): the
                // sample before it lasts until the fragment starts, so decode times stay right.
                Some(last) if base > end => {
                    let longer = (u64::from(last.duration) + (base - end)).min(u64::from(u32::MAX));
                    track.duration += longer - u64::from(last.duration);
                    last.duration = longer as u32;
                }
                // An overlap (a fragment starting before the previous one ended) goes on from
                // the previous sample: decode times must increase.
                Some(_) => {}
            }
        }
        track.start.get_or_insert(0);
        track.duration += run
            .samples
            .iter()
            .map(|s| u64::from(s.duration))
            .sum::<u64>();
        track.samples.extend(run.samples);
        chunks.push(run.chunk);
    }
    Ok(())
}

/// The second pass: `ftyp`, the `moov` with full sample tables, one `mdat` with every chunk's
/// data in the input's order.
fn write_progressive<R: Read + Seek, W: Write>(
    input: &mut R,
    output: &mut W,
    mut ftyp: Ftyp,
    moov: Moov,
    tracks: &[InputTrack],
    chunks: &[Chunk],
) -> Result<Faststart, Mp4Error> {
    // A progressive file is not CMAF: the cmf* brands go.
    ftyp.compatible_brands
        .retain(|b| !<[u8; 4]>::from(*b).starts_with(b"cmf"));
    let mut head = Vec::new();
    encode(&ftyp, &mut head)?;
    let mut moov = progressive_moov(moov, tracks, chunks);

    let payload: u64 = chunks.iter().map(|c| c.len).sum();
    let mut mdat = Vec::new();
    Header {
        kind: FourCC::new(b"mdat"),
        size: Some(
            usize::try_from(payload).map_err(|_| Mp4Error::Encode("mdat too large".into()))?,
        ),
    }
    .encode(&mut mdat)
    .map_err(|e| Mp4Error::Encode(e.to_string()))?;

    // The chunk offsets depend on the moov's size, which depends on whether they are 32 or 64
    // bits but not on their values: measure with zeros, then encode with the real ones.
    let mut wide = false;
    let moov_bytes = loop {
        set_chunk_offsets(&mut moov, chunks, 0, wide);
        let mut measured = Vec::new();
        encode(&moov, &mut measured)?;
        let data_start = (head.len() + measured.len() + mdat.len()) as u64;
        if wide || data_start + payload <= u64::from(u32::MAX) {
            set_chunk_offsets(&mut moov, chunks, data_start, wide);
            measured.clear();
            encode(&moov, &mut measured)?;
            break measured;
        }
        wide = true;
    };
    head.extend_from_slice(&moov_bytes);
    head.extend_from_slice(&mdat);
    output.write_all(&head).map_err(io_error)?;
    for chunk in chunks {
        input
            .seek(SeekFrom::Start(chunk.offset))
            .map_err(io_error)?;
        let copied = std::io::copy(&mut (&mut *input).take(chunk.len), output).map_err(io_error)?;
        if copied != chunk.len {
            return Err(Mp4Error::Io(format!(
                "the input ended {copied} bytes into the {} at {} (did it change?)",
                chunk.len, chunk.offset
            )));
        }
    }
    output.flush().map_err(io_error)?;

    let count = |handler: &[u8; 4]| {
        tracks
            .iter()
            .filter(|t| t.handler == FourCC::new(handler))
            .map(|t| t.samples.len() as u64)
            .sum()
    };
    Ok(Faststart {
        duration_ms: rescale(moov.mvhd.duration, moov.mvhd.timescale, 1000),
        bytes: head.len() as u64 + payload,
        video_samples: count(b"vide"),
        audio_samples: count(b"soun"),
    })
}

/// The input's `moov` without `mvex`, with edit lists, durations and full sample tables
/// (chunk offsets still to set).
fn progressive_moov(mut moov: Moov, tracks: &[InputTrack], chunks: &[Chunk]) -> Moov {
    moov.mvex = None;
    let movie_timescale = moov.mvhd.timescale.max(1);
    moov.mvhd.timescale = movie_timescale;
    // The movie starts when the first of its tracks does.
    let earliest = tracks
        .iter()
        .filter_map(InputTrack::presentation_start)
        .min_by(|&(a, a_scale), &(b, b_scale)| {
            (u128::from(a) * u128::from(b_scale)).cmp(&(u128::from(b) * u128::from(a_scale)))
        });
    let mut longest = 0;
    for (i, (trak, track)) in moov.trak.iter_mut().zip(tracks).enumerate() {
        let media = rescale(track.duration, track.timescale, movie_timescale);
        let delay = match (track.presentation_start(), earliest) {
            (Some(start), Some(earliest)) => later_by(start, earliest, movie_timescale),
            _ => 0,
        };
        // Whatever edits the input had described it as fragmented; these replace them.
        trak.edts = edit_list(delay, track.lead(), media);
        let duration = delay.saturating_add(media);
        longest = longest.max(duration);
        trak.tkhd.duration = duration;
        trak.mdia.mdhd.duration = track.duration;
        let stbl = &mut trak.mdia.minf.stbl;
        *stbl = Stbl {
            stsd: std::mem::take(&mut stbl.stsd),
            stts: Stts {
                entries: runs_of(track.samples.iter().map(|s| s.duration))
                    .map(|(sample_count, sample_delta)| SttsEntry {
                        sample_count,
                        sample_delta,
                    })
                    .collect(),
            },
            // mp4-atom writes version 1 (signed) when an offset is negative, else version 0.
            ctts: track
                .samples
                .iter()
                .any(|s| s.cts_offset != 0)
                .then(|| Ctts {
                    entries: runs_of(track.samples.iter().map(|s| s.cts_offset))
                        .map(|(sample_count, offset)| CttsEntry {
                            sample_count,
                            sample_offset: i64::from(offset),
                        })
                        .collect(),
                }),
            // Without stss every sample is a sync sample (audio).
            stss: track.samples.iter().any(|s| !s.sync).then(|| Stss {
                entries: (1..)
                    .zip(&track.samples)
                    .filter(|(_, s)| s.sync)
                    .map(|(n, _)| n)
                    .collect(),
            }),
            stsc: Stsc {
                entries: runs_of(
                    chunks
                        .iter()
                        .filter(|c| c.track == i)
                        .map(|c| (c.samples, c.description)),
                )
                .scan(
                    1,
                    |first_chunk, (count, (samples_per_chunk, sample_description_index))| {
                        let entry = StscEntry {
                            first_chunk: *first_chunk,
                            samples_per_chunk,
                            sample_description_index,
                        };
                        *first_chunk += count;
                        Some(entry)
                    },
                )
                .collect(),
            },
            stsz: Stsz {
                samples: StszSamples::Different {
                    sizes: track.samples.iter().map(|s| s.size).collect(),
                },
            },
            ..Default::default()
        };
    }
    moov.mvhd.duration = longest;
    moov
}

/// A track's edit list (ISO/IEC 14496-12 8.6.6), in the movie's timescale but for
/// `media_time` (the track's): an empty edit for the `delay` between the movie's start and the
/// track's, then the track's media from `media_time` (its [`InputTrack::lead`], so that it
/// is shown from its first frame) for `duration`. Its durations add up to the `tkhd`'s. `None`
/// when the track starts the movie at its media's start: the sample tables say it all, and
/// every player agrees on a track without edits.
///
/// This is what ffmpeg's MP4 muxer writes, and what ffmpeg and Chromium honour.
fn edit_list(delay: u64, media_time: u64, duration: u64) -> Option<Edts> {
    if delay == 0 && media_time == 0 {
        return None;
    }
    let empty = (delay > 0).then_some(ElstEntry {
        segment_duration: delay,
        media_time: None,
        media_rate: 1.into(),
    });
    let media = ElstEntry {
        segment_duration: duration,
        media_time: Some(media_time),
        media_rate: 1.into(),
    };
    Some(Edts {
        elst: Some(Elst {
            entries: empty.into_iter().chain([media]).collect(),
        }),
    })
}

/// How much later the time `a` is than `b` (each a time and its timescale) in timescale `to`,
/// rounded; 0 when it is not later. Exact up to the rounding, whatever the timescales.
fn later_by((a, a_scale): (u64, u32), (b, b_scale): (u64, u32), to: u32) -> u64 {
    let (a_scale, b_scale) = (u128::from(a_scale.max(1)), u128::from(b_scale.max(1)));
    let scale = a_scale * b_scale;
    let diff = (u128::from(a) * b_scale).saturating_sub(u128::from(b) * a_scale);
    // diff / scale is at most a's seconds (below 2^64): no step overflows.
    let to = u128::from(to);
    let scaled = diff / scale * to + (diff % scale * to + scale / 2) / scale;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Points each track's chunk offsets at its chunks in an `mdat` whose data starts at
/// `data_start`: `co64` when `wide`, else `stco` (the caller checked that they fit).
fn set_chunk_offsets(moov: &mut Moov, chunks: &[Chunk], data_start: u64, wide: bool) {
    let mut offsets = vec![Vec::new(); moov.trak.len()];
    let mut at = data_start;
    for chunk in chunks {
        offsets[chunk.track].push(at);
        at += chunk.len;
    }
    for (trak, offsets) in moov.trak.iter_mut().zip(offsets) {
        let stbl = &mut trak.mdia.minf.stbl;
        if wide {
            stbl.stco = None;
            stbl.co64 = Some(Co64 { entries: offsets });
        } else {
            stbl.co64 = None;
            stbl.stco = Some(Stco {
                entries: offsets.into_iter().map(|o| o as u32).collect(),
            });
        }
    }
}

/// Run-length coding: each run of equal values as (count, value).
fn runs_of<T: PartialEq>(values: impl Iterator<Item = T>) -> impl Iterator<Item = (u32, T)> {
    let mut values = values.peekable();
    std::iter::from_fn(move || {
        let value = values.next()?;
        let mut count = 1;
        while values.next_if(|v| *v == value).is_some() {
            count += 1;
        }
        Some((count, value))
    })
}

/// `value` in timescale `from` as timescale `to`, rounded.
fn rescale(value: u64, from: u32, to: u32) -> u64 {
    let from = u128::from(from.max(1));
    let scaled = (u128::from(value) * u128::from(to) + from / 2) / from;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

fn malformed(what: impl Into<String>) -> Mp4Error {
    Mp4Error::Malformed(what.into())
}

fn io_error(e: std::io::Error) -> Mp4Error {
    Mp4Error::Io(e.to_string())
}

#[cfg(test)]
mod tests {
    use mp4_atom::Mdat;

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

    /// The samples of `trak` in a progressive file, found the way a player does: through
    /// stsc, the chunk offsets and stsz.
    fn samples_in<'a>(trak: &Trak, file: &'a [u8]) -> Vec<&'a [u8]> {
        let stbl = &trak.mdia.minf.stbl;
        let offsets: Vec<u64> = match (&stbl.stco, &stbl.co64) {
            (Some(stco), None) => stco.entries.iter().map(|&o| u64::from(o)).collect(),
            (None, Some(co64)) => co64.entries.clone(),
            other => panic!("chunk offsets: {other:?}"),
        };
        let StszSamples::Different { sizes } = &stbl.stsz.samples else {
            panic!("stsz {:?}", stbl.stsz)
        };
        let mut sizes = sizes.iter();
        let mut out = Vec::new();
        for (i, offset) in offsets.iter().enumerate() {
            let chunk = i as u32 + 1;
            let per_chunk = stbl
                .stsc
                .entries
                .iter()
                .rev()
                .find(|e| e.first_chunk <= chunk)
                .unwrap()
                .samples_per_chunk;
            let mut at = *offset as usize;
            for _ in 0..per_chunk {
                let size = *sizes.next().unwrap() as usize;
                out.push(&file[at..at + size]);
                at += size;
            }
        }
        assert!(sizes.next().is_none(), "every sample is in a chunk");
        out
    }

    fn stts_total(trak: &Trak) -> u64 {
        let stts = &trak.mdia.minf.stbl.stts;
        stts.entries
            .iter()
            .map(|e| u64::from(e.sample_count) * u64::from(e.sample_delta))
            .sum()
    }

    /// A recording of 3 GOPs (a keyframe per fragment, B-frame-like composition offsets) with
    /// audio, as the recorder writes it; and each fragment's start in it.
    fn recording() -> (Vec<u8>, Vec<SampleData>, Vec<usize>) {
        let tracks = Tracks::new(Some(&avc_config()), Some(&aac_config()), 320, 240).unwrap();
        let mut file = tracks.init_segment().unwrap();
        let mut f = Fragmenter::new(tracks);
        let mut samples = Vec::new();
        for i in 0..15u32 {
            samples.push(SampleData {
                track: TrackKind::Video,
                dts_ms: i * 40,
                // I P B B P B B ...: presentation runs ahead of decoding.
                cts_ms: [80, 120, 0, 0, 40][i as usize % 5],
                keyframe: i % 5 == 0,
                data: Bytes::from(vec![i as u8; 100 + i as usize]),
            });
            for a in 0..2 {
                samples.push(SampleData {
                    track: TrackKind::Audio,
                    dts_ms: i * 40 + a * 20,
                    cts_ms: 0,
                    keyframe: true,
                    data: Bytes::from(vec![0xa0 + (i * 2 + a) as u8; 10 + a as usize]),
                });
            }
        }
        let mut starts = Vec::new();
        let mut sequence = 1;
        for s in &samples {
            if s.track == TrackKind::Video && s.keyframe && f.pending() {
                starts.push(file.len());
                file.extend(f.flush(sequence).unwrap().unwrap());
                sequence += 1;
            }
            f.push(s.clone());
        }
        starts.push(file.len());
        file.extend(f.finish(sequence).unwrap().unwrap());
        (file, samples, starts)
    }

    fn progressive(input: &[u8]) -> (Faststart, Vec<u8>) {
        let mut out = Vec::new();
        let report = faststart(&mut std::io::Cursor::new(input), &mut out).unwrap();
        (report, out)
    }

    #[test]
    fn faststart_puts_the_moov_first_with_full_sample_tables() {
        let (input, samples, _) = recording();
        let (report, out) = progressive(&input);
        assert_eq!(report.bytes, out.len() as u64);
        assert_eq!((report.video_samples, report.audio_samples), (15, 30));
        // 15 frames of 40 ms, the last as long as the one before, the first shown at 80 ms.
        assert_eq!(report.duration_ms, 680);

        let mut buf = &out[..];
        let ftyp = Ftyp::decode(&mut buf).unwrap();
        assert_eq!(ftyp.major_brand, FourCC::new(b"iso6"));
        assert!(!ftyp.compatible_brands.contains(&FourCC::new(b"cmfc")));
        let moov = Moov::decode(&mut buf).unwrap();
        assert!(moov.mvex.is_none());
        assert_eq!(moov.mvhd.duration, 680);
        let mdat = Header::decode(&mut buf).unwrap();
        assert_eq!(mdat.kind, FourCC::new(b"mdat"));
        assert_eq!(mdat.size, Some(buf.len()), "one mdat, to the end");

        let (video, audio) = (&moov.trak[0], &moov.trak[1]);
        let data = |kind| -> Vec<&[u8]> {
            samples
                .iter()
                .filter(|s| s.track == kind)
                .map(|s| &s.data[..])
                .collect()
        };
        assert_eq!(samples_in(video, &out), data(TrackKind::Video));
        assert_eq!(samples_in(audio, &out), data(TrackKind::Audio));

        let vstbl = &video.mdia.minf.stbl;
        assert_eq!(vstbl.stss.as_ref().unwrap().entries, [1, 6, 11]);
        assert_eq!(
            vstbl.stts.entries,
            [SttsEntry {
                sample_count: 15,
                sample_delta: 3600
            }]
        );
        assert_eq!(stts_total(video), 15 * 3600);
        assert_eq!(video.mdia.mdhd.duration, 15 * 3600);
        assert_eq!(video.tkhd.duration, 680);
        assert_eq!(
            edits(video),
            Some(&[edit(80, None), edit(600, Some(7200))][..]),
            "shown from its first frame, 80 ms after the audio"
        );
        assert_eq!(edits(audio), None);
        let ctts = vstbl.ctts.as_ref().unwrap();
        let offsets: Vec<i64> = ctts
            .entries
            .iter()
            .flat_map(|e| std::iter::repeat_n(e.sample_offset, e.sample_count as usize))
            .collect();
        let expected: Vec<i64> = (0..15).map(|i| [80, 120, 0, 0, 40][i % 5] * 90).collect();
        assert_eq!(offsets, expected);
        // One chunk per fragment's run. Each track's latest sample waits for the next, so
        // the fragments cut at frames 5 and 10 hold 4, 5 and 6 frames.
        assert_eq!(vstbl.stco.as_ref().unwrap().entries.len(), 3);
        let stsc: Vec<(u32, u32, u32)> = vstbl
            .stsc
            .entries
            .iter()
            .map(|e| {
                (
                    e.first_chunk,
                    e.samples_per_chunk,
                    e.sample_description_index,
                )
            })
            .collect();
        assert_eq!(stsc, [(1, 4, 1), (2, 5, 1), (3, 6, 1)]);

        let astbl = &audio.mdia.minf.stbl;
        assert!(astbl.stss.is_none() && astbl.ctts.is_none());
        assert_eq!(stts_total(audio), audio.mdia.mdhd.duration);
        assert_eq!(audio.mdia.mdhd.duration, 26_460, "600 ms at 44.1 kHz");

        // Deterministic.
        assert_eq!(out, progressive(&input).1);
    }

    #[test]
    fn faststart_leaves_out_a_trailing_moof_without_its_mdat() {
        let (input, _, starts) = recording();
        let last = *starts.last().unwrap();
        let mut moof = &input[last..];
        Moof::decode(&mut moof).unwrap();
        let moof_end = input.len() - moof.len();
        let (report, out) = progressive(&input[..moof_end]);
        // The first two fragments: 9 frames (360 ms from 80 ms), 19 audio samples (380 ms).
        assert_eq!((report.video_samples, report.audio_samples), (9, 19));
        assert_eq!(report.duration_ms, 440);
        let mut buf = &out[..];
        Ftyp::decode(&mut buf).unwrap();
        let moov = Moov::decode(&mut buf).unwrap();
        assert_eq!(samples_in(&moov.trak[0], &out).len(), 9);
        assert_eq!(samples_in(&moov.trak[1], &out).len(), 19);
        assert_eq!(moov.mvhd.duration, 440);

        // A cut in the middle of a box is left out too.
        let (cut, _) = progressive(&input[..last + 20]);
        assert_eq!(cut, report);
    }

    #[test]
    fn faststart_keeps_the_timeline_across_a_gap_between_fragments() {
        let tracks = Tracks::new(Some(&avc_config()), None, 320, 240).unwrap();
        let mut input = tracks.init_segment().unwrap();
        let frame = |keyframe| FragmentSample {
            duration: 3000,
            // Negative (never from FLV, whose composition times are not): a signed ctts.
            cts_offset: if keyframe { 0 } else { -1500 },
            keyframe,
            data: Bytes::from_static(b"frame"),
        };
        let run = |base, samples| TrackRun {
            track_id: 1,
            base_decode_time: base,
            samples,
        };
        // Samples at 0 and 3000; a fragment at 9000 (a gap: the second sample ended at 6000);
        // one at 10000 (an overlap: the previous ended at 12000, where it goes on).
        for (i, r) in [
            run(0, vec![frame(true), frame(false)]),
            run(9000, vec![frame(true)]),
            run(10_000, vec![frame(true)]),
        ]
        .into_iter()
        .enumerate()
        {
            input.extend(fragment(i as u32 + 1, &[r]).unwrap());
        }
        let (report, out) = progressive(&input);
        let mut buf = &out[..];
        Ftyp::decode(&mut buf).unwrap();
        let moov = Moov::decode(&mut buf).unwrap();
        let stbl = &moov.trak[0].mdia.minf.stbl;
        let deltas: Vec<(u32, u32)> = stbl
            .stts
            .entries
            .iter()
            .map(|e| (e.sample_count, e.sample_delta))
            .collect();
        assert_eq!(deltas, [(1, 3000), (1, 6000), (2, 3000)]);
        assert_eq!(moov.trak[0].mdia.mdhd.duration, 15_000);
        assert_eq!(
            stbl.stss.as_ref().map(|s| &s.entries[..]),
            Some(&[1, 3, 4][..])
        );
        let ctts: Vec<(u32, i64)> = stbl
            .ctts
            .iter()
            .flat_map(|c| &c.entries)
            .map(|e| (e.sample_count, e.sample_offset))
            .collect();
        assert_eq!(ctts, [(1, 0), (1, -1500), (2, 0)]);
        assert_eq!(report.duration_ms, 167);
    }

    /// The `moov` of the progressive file made of a recording of `samples` (one fragment).
    fn progressive_moov_of(samples: &[SampleData]) -> (Faststart, Moov) {
        let video = samples.iter().any(|s| s.track == TrackKind::Video);
        let audio = samples.iter().any(|s| s.track == TrackKind::Audio);
        let tracks = Tracks::new(
            video.then(avc_config).as_ref(),
            audio.then(aac_config).as_ref(),
            320,
            240,
        )
        .unwrap();
        let mut input = tracks.init_segment().unwrap();
        let mut f = Fragmenter::new(tracks);
        for s in samples {
            f.push(s.clone());
        }
        input.extend(f.finish(1).unwrap().unwrap());
        let (report, out) = progressive(&input);
        let mut buf = &out[..];
        Ftyp::decode(&mut buf).unwrap();
        let moov = Moov::decode(&mut buf).unwrap();
        // Deterministic.
        assert_eq!(out, progressive(&input).1);
        (report, moov)
    }

    /// `count` samples of `track` every `every_ms` from `first_ms`, composition offsets from
    /// `cts_ms` in turn.
    fn run_of(
        track: TrackKind,
        first_ms: u32,
        every_ms: u32,
        count: u32,
        cts_ms: &[i32],
    ) -> Vec<SampleData> {
        (0..count)
            .map(|i| SampleData {
                track,
                dts_ms: first_ms + i * every_ms,
                cts_ms: cts_ms[i as usize % cts_ms.len()],
                keyframe: i == 0 || track == TrackKind::Audio,
                data: Bytes::from(vec![i as u8; 10]),
            })
            .collect()
    }

    fn edits(trak: &Trak) -> Option<&[ElstEntry]> {
        let elst = trak.edts.as_ref()?.elst.as_ref()?;
        Some(&elst.entries)
    }

    fn edit(segment_duration: u64, media_time: Option<u64>) -> ElstEntry {
        ElstEntry {
            segment_duration,
            media_time,
            media_rate: 1.into(),
        }
    }

    /// The durations of a progressive file agree: each track's `tkhd` is the sum of its edits
    /// (its media's length without them), the `mvhd` the longest.
    fn assert_durations_agree(moov: &Moov) {
        for trak in &moov.trak {
            let media = rescale(
                trak.mdia.mdhd.duration,
                trak.mdia.mdhd.timescale,
                moov.mvhd.timescale,
            );
            let edited = edits(trak).map_or(media, |e| e.iter().map(|e| e.segment_duration).sum());
            assert_eq!(trak.tkhd.duration, edited, "track {}", trak.tkhd.track_id);
        }
        let longest = moov.trak.iter().map(|t| t.tkhd.duration).max();
        assert_eq!(Some(moov.mvhd.duration), longest);
    }

    #[test]
    fn faststart_delays_a_track_that_starts_later_with_an_empty_edit() {
        // Video from 23 ms (every 33 ms, 30 frames: 990 ms), audio from 0 (every 23 ms, 43
        // samples: 989 ms at 44.1 kHz, the last as long as the one before).
        let mut samples = run_of(TrackKind::Video, 23, 33, 30, &[0]);
        samples.extend(run_of(TrackKind::Audio, 0, 23, 43, &[0]));
        samples.sort_by_key(|s| s.dts_ms);
        let (report, moov) = progressive_moov_of(&samples);
        assert_eq!(moov.mvhd.timescale, 1000);
        let (video, audio) = (&moov.trak[0], &moov.trak[1]);
        assert_eq!(
            edits(video),
            Some(&[edit(23, None), edit(990, Some(0))][..]),
            "23 ms of nothing, then the whole media"
        );
        assert_eq!(edits(audio), None, "audio starts the movie");
        assert_eq!((video.tkhd.duration, audio.tkhd.duration), (1013, 989));
        assert_eq!(
            video.mdia.mdhd.duration,
            990 * 90,
            "the media itself is not delayed"
        );
        assert_eq!(moov.mvhd.duration, 1013);
        assert_eq!(report.duration_ms, 1013);
        assert_durations_agree(&moov);

        // Audio starting later is delayed the same way; the earliest start is the movie's
        // zero, wherever the recording began.
        let mut samples = run_of(TrackKind::Video, 1000, 33, 30, &[0]);
        samples.extend(run_of(TrackKind::Audio, 1050, 23, 43, &[0]));
        samples.sort_by_key(|s| s.dts_ms);
        let (_, moov) = progressive_moov_of(&samples);
        assert_eq!(edits(&moov.trak[0]), None);
        assert_eq!(
            edits(&moov.trak[1]),
            Some(&[edit(50, None), edit(989, Some(0))][..])
        );
        assert_durations_agree(&moov);

        // One track: nothing to line up with.
        let (_, moov) = progressive_moov_of(&run_of(TrackKind::Audio, 500, 23, 10, &[0]));
        assert_eq!(edits(&moov.trak[0]), None);
        assert_durations_agree(&moov);
    }

    #[test]
    fn faststart_shows_a_b_frame_stream_from_its_first_frame() {
        // I P B B ...: the first frame, decoded at 0, is shown at 80 ms.
        let video = run_of(TrackKind::Video, 0, 40, 20, &[80, 120, 40, 40]);
        let (_, moov) = progressive_moov_of(&video);
        assert_eq!(
            edits(&moov.trak[0]),
            Some(&[edit(800, Some(7200))][..]),
            "the media from its first frame's composition time, 80 ms at 90 kHz"
        );
        assert_durations_agree(&moov);

        // With audio from 0, the video's presentation (not its decoding) starts 80 ms later.
        let mut samples = video.clone();
        samples.extend(run_of(TrackKind::Audio, 0, 23, 35, &[0]));
        samples.sort_by_key(|s| s.dts_ms);
        let (report, moov) = progressive_moov_of(&samples);
        assert_eq!(
            edits(&moov.trak[0]),
            Some(&[edit(80, None), edit(800, Some(7200))][..])
        );
        assert_eq!(edits(&moov.trak[1]), None);
        assert_eq!(report.duration_ms, 880);
        assert_durations_agree(&moov);

        // Video decoded from 0 but shown from 80 ms starts the movie before audio from 100 ms.
        let mut samples = video;
        samples.extend(run_of(TrackKind::Audio, 100, 23, 35, &[0]));
        samples.sort_by_key(|s| s.dts_ms);
        let (_, moov) = progressive_moov_of(&samples);
        assert_eq!(edits(&moov.trak[0]), Some(&[edit(800, Some(7200))][..]));
        assert_eq!(
            edits(&moov.trak[1]),
            Some(&[edit(20, None), edit(805, Some(0))][..])
        );
        assert_durations_agree(&moov);
    }

    #[test]
    fn faststart_measures_delays_exactly_across_timescales() {
        // 44.1 kHz against 90 kHz: 1 s and 2 ms after 1 s, to the millisecond.
        assert_eq!(later_by((45_180, 44_100), (90_000, 90_000), 1000), 24);
        assert_eq!(later_by((90_180, 90_000), (44_100, 44_100), 1000), 2);
        assert_eq!(later_by((44_100, 44_100), (90_180, 90_000), 1000), 0);
        assert_eq!(later_by((u64::MAX, 1), (0, 90_000), 1), u64::MAX);
    }

    #[test]
    fn faststart_refuses_what_is_not_a_recording() {
        let tracks = Tracks::new(Some(&avc_config()), None, 320, 240).unwrap();
        let init = tracks.init_segment().unwrap();
        let mut out = Vec::new();
        let err = faststart(&mut std::io::Cursor::new(&init), &mut out).unwrap_err();
        assert_eq!(err, Mp4Error::Malformed("no samples".into()));
        assert!(out.is_empty());
        let err = faststart(&mut std::io::Cursor::new(b"\0\0\0\x04moov"), &mut out).unwrap_err();
        assert!(matches!(err, Mp4Error::Malformed(_)), "{err}");
        let err = faststart(&mut std::io::Cursor::new(b""), &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a recording this server wrote: no ftyp"
        );
    }
}
