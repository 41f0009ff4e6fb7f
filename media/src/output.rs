//! The output vocabulary of the media plumbing: what a hub hands its subscribers ([`Init`],
//! [`Batch`], [`Segment`]), why a stream or a subscription ends ([`EndReason`], [`FeedEnd`]),
//! the slow-subscriber policy ([`LagPolicy`], counted by one [`SkipCounter`] for feeds and
//! fan-out sinks alike) and HTTP/1.1 chunk framing.
//!
//! The hub, feeds, the fan-out and the write queues all speak it; it uses none of them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::time::Instant;

use crate::frame::{Frame, FrameRole};
use crate::metrics::{self, Protocol};
use crate::mux::{Outputs, mux_frame};

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The publisher stopped or disconnected.
    Unpublished,
    /// The node lost ownership of the stream (fenced by a newer epoch).
    Fenced,
    /// The node is shutting down.
    Shutdown,
    /// The upstream (origin relay) went away and the stream did not come back in time.
    UpstreamLost,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Unpublished => "unpublished",
            EndReason::Fenced => "fenced",
            EndReason::Shutdown => "shutdown",
            EndReason::UpstreamLost => "upstream_lost",
        }
    }
}

/// The configuration frames a viewer needs before any media, muxed once.
#[derive(Debug, Default)]
pub struct Init {
    /// Grows on every change; subscribers compare it to know whether to resend.
    pub version: u64,
    pub metadata: Option<Frame>,
    pub video_config: Option<Frame>,
    pub audio_config: Option<Frame>,
    /// FLV tags of the frames above.
    pub flv: Bytes,
    /// Pre-chunked RTMP messages of the frames above.
    pub rtmp: Bytes,
}

impl Init {
    /// The configuration frames, metadata first.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        [&self.metadata, &self.video_config, &self.audio_config]
            .into_iter()
            .flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.frames().next().is_none()
    }

    /// True when `frame` is the configuration already in effect for its role (encoders repeat
    /// sequence headers and metadata).
    pub(crate) fn unchanged_by(&self, frame: &Frame) -> bool {
        let current = match frame.role() {
            FrameRole::Metadata => &self.metadata,
            FrameRole::VideoConfig => &self.video_config,
            FrameRole::AudioConfig => &self.audio_config,
            _ => return false,
        };
        current.as_ref().is_some_and(|c| c.payload == frame.payload)
    }

    pub(crate) fn with(&self, frame: &Frame, outputs: Outputs) -> Init {
        let mut next = Init {
            version: self.version + 1,
            metadata: self.metadata.clone(),
            video_config: self.video_config.clone(),
            audio_config: self.audio_config.clone(),
            ..Init::default()
        };
        match frame.role() {
            FrameRole::Metadata => next.metadata = Some(frame.clone()),
            FrameRole::VideoConfig => next.video_config = Some(frame.clone()),
            FrameRole::AudioConfig => next.audio_config = Some(frame.clone()),
            _ => {}
        }
        let (mut flv, mut rtmp) = (BytesMut::new(), BytesMut::new());
        for f in next.frames() {
            mux_frame(f, outputs, &mut flv, &mut rtmp);
        }
        next.flv = flv.freeze();
        next.rtmp = rtmp.freeze();
        next
    }
}

/// Frames sent to subscribers together, with their muxed forms.
#[derive(Debug)]
pub struct Batch {
    /// Position in the stream: grows by one per batch.
    pub seq: u64,
    pub frames: Vec<Frame>,
    /// FLV tags of all frames, back to back.
    pub flv: Bytes,
    /// Pre-chunked RTMP messages of all frames, back to back.
    pub rtmp: Bytes,
    /// Start of each frame in `flv` and `rtmp`.
    pub(crate) offsets: Vec<(u32, u32)>,
    /// Indexes of frames where a viewer may start (keyframes; any audio frame of an
    /// audio-only stream).
    pub(crate) sync_points: Vec<u32>,
    /// Configuration in effect for the media frames of this batch. Configuration frames only
    /// ever lead a batch, so this holds for all of them.
    pub init: Arc<Init>,
    /// When the batch was sent.
    pub sent_at: Instant,
    /// HTTP/1.1 chunk-size line for all of `flv`, shared by every chunked HTTP-FLV viewer; set
    /// whenever `flv` is not empty (the fan-out's hot path relies on it).
    pub(crate) flv_chunk_head: Bytes,
}

impl Batch {
    /// First frame where a viewer may start, if any.
    pub fn first_sync_point(&self) -> Option<usize> {
        self.sync_points.first().map(|i| *i as usize)
    }

    pub(crate) fn last_sync_point(&self) -> Option<usize> {
        self.sync_points.last().map(|i| *i as usize)
    }

    /// FLV tags from frame `from` on.
    pub fn flv_from(&self, from: usize) -> Bytes {
        match self.offsets.get(from) {
            Some((flv, _)) => self.flv.slice(*flv as usize..),
            None => Bytes::new(),
        }
    }

    /// RTMP messages from frame `from` on.
    pub fn rtmp_from(&self, from: usize) -> Bytes {
        match self.offsets.get(from) {
            Some((_, rtmp)) => self.rtmp.slice(*rtmp as usize..),
            None => Bytes::new(),
        }
    }

    /// Payload bytes of frames from `from` on.
    pub fn payload_bytes_from(&self, from: usize) -> usize {
        self.frames.iter().skip(from).map(|f| f.payload.len()).sum()
    }

    /// Memory the batch holds: the frames' payloads, both muxed forms and the bookkeeping of
    /// each frame and of the batch itself, so that a bound in bytes also bounds a stream of tiny
    /// frames (an aggregate message of one-byte sub-messages costs far more than its bytes).
    pub fn memory_bytes(&self) -> usize {
        const PER_BATCH: usize = std::mem::size_of::<Batch>() + 64;
        const PER_FRAME: usize = std::mem::size_of::<Frame>() + 16;
        PER_BATCH
            + self.frames.len() * PER_FRAME
            + self.payload_bytes_from(0)
            + self.flv.len()
            + self.rtmp.len()
    }

    /// A batch of `frames` with no muxed forms, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(seq: u64, frames: Vec<Frame>) -> Batch {
        Batch {
            seq,
            frames,
            flv: Bytes::new(),
            rtmp: Bytes::new(),
            offsets: Vec::new(),
            sync_points: Vec::new(),
            init: Arc::new(Init::default()),
            sent_at: Instant::now(),
            flv_chunk_head: Bytes::new(),
        }
    }
}

/// What a new subscriber starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackFlags {
    pub has_audio: bool,
    pub has_video: bool,
}

/// One thing to send to a subscriber.
#[derive(Debug, Clone)]
pub enum Segment {
    /// Configuration frames (metadata and sequence headers).
    Init(Arc<Init>),
    /// Frames `from..` of a batch.
    Batch { batch: Arc<Batch>, from: usize },
}

/// Why a feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEnd {
    /// The stream ended.
    Ended(EndReason),
    /// The subscriber could not keep up and was cut off.
    TooSlow,
}

/// When a lagging subscriber is cut off. The default (3 skips within a minute) is what
/// `--viewer-max-skips` documents, for viewers and relay pulls alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagPolicy {
    /// Skips allowed within `window` before the subscriber is disconnected.
    pub max_skips: u32,
    /// How long a skip counts against the subscriber.
    pub window: Duration,
}

impl LagPolicy {
    /// How long a skip counts, unless configured otherwise.
    pub const WINDOW: Duration = Duration::from_secs(60);
}

impl Default for LagPolicy {
    fn default() -> Self {
        Self {
            max_skips: 3,
            window: Self::WINDOW,
        }
    }
}

/// The lag policy applied to one subscriber: when it skipped lately.
#[derive(Debug)]
pub struct SkipCounter {
    policy: LagPolicy,
    /// Skips within the policy's window; never more than `max_skips + 1`, as the subscriber is
    /// cut off then.
    at: VecDeque<Instant>,
}

impl SkipCounter {
    pub fn new(policy: LagPolicy) -> Self {
        Self {
            policy,
            at: VecDeque::new(),
        }
    }

    /// Records (and counts, for `protocol`) a skip to the next keyframe; true when the
    /// subscriber has now skipped too often and must be cut off.
    pub fn skipped(&mut self, protocol: Protocol) -> bool {
        metrics::LAG_SKIPS
            .with_label_values(&[protocol.as_str()])
            .inc();
        let now = Instant::now();
        self.at.push_back(now);
        while self
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.at.pop_front();
        }
        self.at.len() as u32 > self.policy.max_skips
    }
}

/// What a subscription asks of the stream it reads: why it ended, and that one subscriber
/// left. The hub implements it; feeds hold it without knowing the hub.
pub(crate) trait Source: Send + Sync {
    fn end_reason(&self) -> Option<EndReason>;
    fn subscriber_left(&self);
}

/// The HTTP/1.1 chunk-size line for `len` bytes.
pub fn chunk_head(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}
