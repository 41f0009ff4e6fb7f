//! The stream hub: one per live stream on a node. It owns the fan-out of that stream.
//!
//! A single [`HubWriter`] (the publisher's connection at an origin, the relay pull at an edge)
//! pushes frames in. The writer muxes each frame once per output format and coalesces frames
//! into [`Batch`]es: a frame waits only while another is due before its window closes (see
//! [`HubConfig::coalesce_window`]); each batch goes to every subscriber through a bounded
//! broadcast ring as one shared `Arc`, so per subscriber there is one wake-up and one vectored
//! write per batch, and never a copy of the payload. The hub also keeps what a newcomer needs
//! to start at once: the configuration frames ([`Init`]) and the group of pictures since the
//! last keyframe (or, for audio-only streams, a short recent window).
//!
//! Memory is bounded per stream (ring capacity × batch, plus the GOP cache), never per
//! subscriber: a subscriber that falls behind loses its place in the ring and skips to the next
//! keyframe (see [`crate::feed`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::time::Instant;

use crate::fanout::{Fanout, Sink};
use crate::feed::Feed;
use crate::frame::{Frame, FrameKind, FrameRole};
use crate::info::{self, MediaInfo, RateMeter, metadata_tracks};
use crate::metrics::Protocol;
use crate::mux::{Outputs, mux_frame};
use crate::output::{
    Batch, EndReason, FeedEnd, Init, LagPolicy, Segment, Source, TrackFlags, chunk_head,
};
use crate::ring::{RingSender, ring};
use corriente_core::StreamKey;

/// How a hub batches, muxes and caches.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// The longest a frame waits for others to go out with it. A frame is held only while
    /// another frame of the stream is due before its window closes (each track's next frame is
    /// expected one frame duration after its last), so most frames go out as soon as nothing
    /// more can join them, and a batch never waits longer than this. Zero sends every frame at
    /// once. The dial between latency and writes per viewer.
    pub coalesce_window: Duration,
    /// A pending batch is sent early once it holds this many payload bytes.
    pub coalesce_max_bytes: usize,
    /// Formats muxed for subscribers.
    pub outputs: Outputs,
    /// Batches the broadcast ring keeps. A subscriber further behind skips to a keyframe.
    pub ring_capacity: usize,
    /// Bytes the broadcast ring keeps at most (by [`Batch::memory_bytes`]), whatever the count:
    /// a stream of huge frames cannot pin `ring_capacity` of them.
    pub ring_max_bytes: usize,
    /// Largest GOP cached for newcomers. A longer GOP is not cached: newcomers wait for the
    /// next keyframe instead of the node holding an unbounded GOP.
    pub gop_max_bytes: usize,
    /// Largest GOP cached, in frames (a stream of tiny frames is bounded by this, not bytes).
    pub gop_max_frames: usize,
    /// How much recent audio an audio-only stream keeps for newcomers: at most this long (by
    /// timestamp), this many bytes (by [`Batch::memory_bytes`]) and this many frames, whichever
    /// is reached first, so timestamps that do not advance cannot grow it.
    pub audio_window: Duration,
    pub audio_window_max_bytes: usize,
    pub audio_window_max_frames: usize,
    /// Largest configuration frame (metadata, sequence header) taken: each one re-muxes the
    /// stream's configuration block for every later viewer. Larger ones are dropped and counted.
    pub max_config_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            coalesce_window: Duration::ZERO,
            coalesce_max_bytes: 256 << 10,
            outputs: Outputs::RAW,
            ring_capacity: 128,
            ring_max_bytes: 32 << 20,
            gop_max_bytes: 32 << 20,
            gop_max_frames: 16_384,
            audio_window: Duration::from_millis(500),
            audio_window_max_bytes: 1 << 20,
            audio_window_max_frames: 512,
            max_config_bytes: 64 << 10,
        }
    }
}

/// A sink attached to a hub. Dropping it detaches the sink.
pub struct Attachment {
    shared: Arc<Shared>,
    sink: Arc<Sink>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.sink.detach();
        self.shared.subscriber_left();
        if let Some(fanout) = &mut self.shared.lock().fanout {
            fanout.removed();
        }
        crate::metrics::VIEWERS
            .with_label_values(&[self.sink.protocol().as_str()])
            .dec();
    }
}

/// A snapshot of a hub for stats.
#[derive(Debug, Clone, Serialize)]
pub struct HubStats {
    pub key: StreamKey,
    pub media: MediaInfo,
    pub subscribers: usize,
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub gop_frames: usize,
    /// Memory the stream's hub keeps for viewers: the cached GOP (or audio window) and the
    /// broadcast ring, by [`Batch::memory_bytes`] (shared batches counted in both).
    pub retained_bytes: usize,
}

/// The hub is gone: its stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream ended ({})", .0.as_str())]
pub struct Ended(pub EndReason);

struct GopEntry {
    batch: Arc<Batch>,
    from: usize,
}

struct State {
    init: Arc<Init>,
    gop: VecDeque<GopEntry>,
    gop_bytes: usize,
    gop_frames: usize,
    media: MediaInfo,
    /// `None` once the stream has ended.
    tx: Option<RingSender>,
    end: Option<EndReason>,
    /// Sequence number of the last batch sent.
    last_seq: u64,
    /// Shard tasks writing to attached sinks, started with the first one.
    fanout: Option<Fanout>,
}

struct Shared {
    key: StreamKey,
    config: HubConfig,
    state: Mutex<State>,
    subscribers: AtomicUsize,
    /// Tracks the stream has, known from its metadata or its frames as soon as they are
    /// pushed (a viewer's FLV header needs them before the first batch goes out).
    has_audio: AtomicBool,
    has_video: AtomicBool,
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    started_at_ms: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is a plain
        // assignment), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Source for Shared {
    fn end_reason(&self) -> Option<EndReason> {
        self.lock().end
    }

    fn subscriber_left(&self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A handle on a live stream's hub, for subscribing and stats. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("key", &self.shared.key)
            .finish()
    }
}

/// The hub with its single writer.
pub fn spawn_hub(key: StreamKey, config: HubConfig) -> (Hub, HubWriter) {
    let tx = ring(config.ring_capacity, config.ring_max_bytes);
    let shared = Arc::new(Shared {
        key,
        config,
        state: Mutex::new(State {
            init: Arc::new(Init::default()),
            gop: VecDeque::new(),
            gop_bytes: 0,
            gop_frames: 0,
            media: MediaInfo::default(),
            tx: Some(tx),
            end: None,
            last_seq: 0,
            fanout: None,
        }),
        subscribers: AtomicUsize::new(0),
        has_audio: AtomicBool::new(false),
        has_video: AtomicBool::new(false),
        frames_in: AtomicU64::new(0),
        bytes_in: AtomicU64::new(0),
        started_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    });
    let writer = HubWriter {
        shared: shared.clone(),
        init: Arc::new(Init::default()),
        pending: Pending::default(),
        deadline: None,
        pending_since: Instant::now(),
        clocks: [TrackClock::default(); 2],
        synced: false,
        has_video: false,
        rate: RateMeter::new(Duration::from_secs(2)),
        finished: false,
        config_log: corriente_core::limits::LogThrottle::new(Duration::from_secs(10)),
        holding: false,
        held_first_sync: false,
        batches: crate::metrics::BATCHES.with_label_values(&[
            if config.outputs.flv || config.outputs.rtmp {
                "muxed"
            } else {
                "raw"
            },
        ]),
    };
    (Hub { shared }, writer)
}

impl Hub {
    pub fn key(&self) -> &StreamKey {
        &self.shared.key
    }

    /// Subscribes: the feed starts with the configuration frames and the cached GOP, then
    /// continues live with no gap and no duplicate.
    pub fn subscribe(&self, policy: LagPolicy, protocol: Protocol) -> Result<Feed, Ended> {
        let state = self.shared.lock();
        let Some(tx) = &state.tx else {
            return Err(Ended(state.end.unwrap_or(EndReason::Unpublished)));
        };
        let rx = tx.subscribe();
        let mut prelude = Vec::with_capacity(state.gop.len() + 1);
        if !state.init.is_empty() {
            prelude.push(Segment::Init(state.init.clone()));
        }
        for entry in &state.gop {
            prelude.push(Segment::Batch {
                batch: entry.batch.clone(),
                from: entry.from,
            });
        }
        let tracks = self.tracks();
        let init_version = state.init.version;
        drop(state);
        self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
        Ok(Feed::new(
            self.shared.clone(),
            rx,
            prelude,
            init_version,
            tracks,
            policy,
            protocol,
        ))
    }

    /// Attaches a viewer's socket to the direct fan-out: the sink starts with the
    /// configuration frames and the cached GOP (drained by its connection task), then gets every
    /// batch written straight to its socket. Dropping the returned guard detaches it.
    pub fn attach(&self, sink: &Arc<Sink>) -> Result<Attachment, Ended> {
        let mut state = self.shared.lock();
        let State {
            tx,
            end,
            fanout,
            gop,
            init,
            last_seq,
            ..
        } = &mut *state;
        let Some(tx) = tx.as_ref() else {
            return Err(Ended(end.unwrap_or(EndReason::Unpublished)));
        };
        let mut prelude = Vec::with_capacity(gop.len() + 1);
        if !init.is_empty() {
            prelude.push(Segment::Init(init.clone()));
        }
        for entry in gop.iter() {
            prelude.push(Segment::Batch {
                batch: entry.batch.clone(),
                from: entry.from,
            });
        }
        sink.start(&prelude, init.version, *last_seq + 1);
        let fanout = fanout.get_or_insert_with(|| {
            let shared = self.shared.clone();
            Fanout::new(Arc::new(move || {
                FeedEnd::Ended(shared.end_reason().unwrap_or(EndReason::Unpublished))
            }))
        });
        fanout.add(sink.clone(), || tx.subscribe());
        drop(state);
        self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
        crate::metrics::VIEWERS
            .with_label_values(&[sink.protocol().as_str()])
            .inc();
        Ok(Attachment {
            shared: self.shared.clone(),
            sink: sink.clone(),
        })
    }

    /// Tracks the stream has now (for an FLV header).
    pub fn tracks(&self) -> TrackFlags {
        TrackFlags {
            has_audio: self.shared.has_audio.load(Ordering::Relaxed),
            has_video: self.shared.has_video.load(Ordering::Relaxed),
        }
    }

    /// Number of feeds currently open.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers.load(Ordering::Relaxed)
    }

    /// Why the stream ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.shared.end_reason()
    }

    pub fn media(&self) -> MediaInfo {
        self.shared.lock().media.clone()
    }

    pub fn stats(&self) -> HubStats {
        let state = self.shared.lock();
        HubStats {
            key: self.shared.key.clone(),
            media: state.media.clone(),
            subscribers: self.subscribers(),
            frames_in: self.shared.frames_in.load(Ordering::Relaxed),
            bytes_in: self.shared.bytes_in.load(Ordering::Relaxed),
            started_at_ms: self.shared.started_at_ms,
            gop_frames: state.gop_frames,
            retained_bytes: state.gop_bytes + state.tx.as_ref().map_or(0, RingSender::bytes),
        }
    }
}

#[derive(Default)]
struct Pending {
    frames: Vec<Frame>,
    flv: BytesMut,
    rtmp: BytesMut,
    offsets: Vec<(u32, u32)>,
    sync_points: Vec<u32>,
    payload_bytes: usize,
}

impl Pending {
    fn has_media(&self) -> bool {
        self.frames.iter().any(|f| !f.is_config())
    }
}

/// When a track's next frame is due: one frame duration after its last one arrived. The
/// duration is the smaller of the last timestamp step and the last arrival gap, so a burst
/// (frames arriving faster than their timestamps advance) is expected to go on.
#[derive(Debug, Clone, Copy, Default)]
struct TrackClock {
    last: Option<(u32, Instant)>,
    period: Option<Duration>,
}

impl TrackClock {
    /// Longest frame duration believed: past it (a pause, a timestamp jump) nothing is expected.
    const MAX_PERIOD: Duration = Duration::from_secs(1);

    fn arrived(&mut self, timestamp: u32, at: Instant) {
        self.period = self.last.and_then(|(ts, then)| {
            let step = Duration::from_millis(u64::from(timestamp.wrapping_sub(ts)));
            let gap = at.saturating_duration_since(then);
            let period = step.min(gap);
            (step > Duration::ZERO && step <= Self::MAX_PERIOD).then_some(period)
        });
        self.last = Some((timestamp, at));
    }

    fn next_due(&self) -> Option<Instant> {
        Some(self.last?.1 + self.period?)
    }
}

/// The single producer of a hub. Dropping it ends the stream as unpublished.
pub struct HubWriter {
    shared: Arc<Shared>,
    init: Arc<Init>,
    pending: Pending,
    deadline: Option<Instant>,
    /// When the pending batch's first frame was pushed.
    pending_since: Instant,
    /// When the next audio (`[0]`) and video (`[1]`) frames are due, for coalescing.
    clocks: [TrackClock; 2],
    /// A frame where viewers may start has been pushed.
    synced: bool,
    has_video: bool,
    rate: RateMeter,
    finished: bool,
    /// This hub's batch counter, looked up once rather than per batch.
    batches: prometheus::IntCounter,
    /// Oversized configuration frames are logged at most this often.
    config_log: corriente_core::limits::LogThrottle,
    /// Between [`Self::hold`] and [`Self::release`].
    holding: bool,
    /// A held frame was the stream's first sync point.
    held_first_sync: bool,
}

impl HubWriter {
    pub fn hub(&self) -> Hub {
        Hub {
            shared: self.shared.clone(),
        }
    }

    /// Adds a frame. It goes out at once when the coalescing window is zero, otherwise when
    /// the window closes (see [`Self::flush_due`]) or the batch is full.
    pub fn push(&mut self, frame: Frame) {
        let outputs = self.shared.config.outputs;
        self.shared.frames_in.fetch_add(1, Ordering::Relaxed);
        self.shared
            .bytes_in
            .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
        self.rate.add(frame.payload.len());

        if frame.is_config() {
            if frame.payload.len() > self.shared.config.max_config_bytes {
                crate::metrics::STREAM_FRAMES_DROPPED
                    .with_label_values(&["oversized_config"])
                    .inc();
                if let Some(held_back) = self.config_log.allow(Instant::now()) {
                    tracing::info!(
                        stream = %self.shared.key,
                        bytes = frame.payload.len(),
                        max = self.shared.config.max_config_bytes,
                        not_logged = held_back,
                        "configuration frame dropped: larger than the limit"
                    );
                }
                return;
            }
            // Configuration only ever leads a batch, so `Batch::init` holds for all its media.
            if self.pending.has_media() {
                self.flush();
            }
            // A repeat of the configuration in effect (encoders repeat sequence headers; a new
            // origin after a failover sends the same ones) still reaches live viewers in-band,
            // but makes no new configuration block for newcomers.
            if !self.init.unchanged_by(&frame) {
                if frame.role() == FrameRole::Metadata
                    && let Some((audio, video)) = metadata_tracks(&frame.payload)
                {
                    self.has_video |= video;
                    if audio {
                        self.shared.has_audio.store(true, Ordering::Relaxed);
                    }
                }
                self.init = Arc::new(self.init.with(&frame, outputs));
            }
        }
        if frame.kind == FrameKind::Video && !frame.is_config() {
            self.has_video = true;
        }
        if frame.kind == FrameKind::Audio {
            self.shared.has_audio.store(true, Ordering::Relaxed);
        }
        if self.has_video {
            self.shared.has_video.store(true, Ordering::Relaxed);
        }
        let sync = match frame.role() {
            FrameRole::Keyframe => true,
            FrameRole::Audio => !self.has_video,
            _ => false,
        };
        let p = &mut self.pending;
        if outputs.flv || outputs.rtmp {
            p.offsets.push((p.flv.len() as u32, p.rtmp.len() as u32));
        }
        if sync {
            p.sync_points.push(p.frames.len() as u32);
        }
        mux_frame(&frame, outputs, &mut p.flv, &mut p.rtmp);
        p.payload_bytes += frame.payload.len();
        let coalescing = !self.shared.config.coalesce_window.is_zero();
        if p.frames.capacity() == 0 && !coalescing {
            // One frame per batch: no room for more.
            p.frames.reserve_exact(1);
        }
        if coalescing {
            let now = Instant::now();
            if p.frames.is_empty() {
                self.pending_since = now;
            }
            if !frame.is_config() {
                match frame.kind {
                    FrameKind::Audio => self.clocks[0].arrived(frame.timestamp, now),
                    FrameKind::Video => self.clocks[1].arrived(frame.timestamp, now),
                    FrameKind::Script => {}
                }
            }
        }
        p.frames.push(frame);

        // The stream's first keyframe goes out at once: viewers waiting for a picture (the
        // first viewer of a pull) should not wait for the window too.
        let first_sync = sync && !self.synced;
        self.synced |= sync;
        if p.payload_bytes >= self.shared.config.coalesce_max_bytes {
            self.flush();
        } else if self.holding {
            self.held_first_sync |= first_sync;
        } else {
            self.schedule(first_sync);
        }
    }

    /// Sends the pending batch now, or holds it for a frame due before its window closes.
    fn schedule(&mut self, first_sync: bool) {
        let window = self.shared.config.coalesce_window;
        if window.is_zero() || first_sync {
            self.flush();
            return;
        }
        if self.pending.frames.is_empty() {
            return;
        }
        let closes = self.pending_since + window;
        let next_due = self.clocks.iter().filter_map(TrackClock::next_due).min();
        match next_due {
            // Another frame can still join: wait for it, or for the window to close.
            Some(due) if due <= closes => self.deadline = Some(closes),
            // Nothing more is due in time: holding would only add latency.
            _ => self.flush(),
        }
    }

    /// Frames pushed until [`Self::release`] arrived together (one read from the publisher,
    /// an aggregate message): they go out as one batch rather than one each, which costs
    /// nothing in latency and keeps a burst of tiny frames from costing a batch per frame.
    pub fn hold(&mut self) {
        self.holding = true;
    }

    /// Ends a [`Self::hold`]: what was held goes out as usual.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.holding) {
            let first_sync = std::mem::take(&mut self.held_first_sync);
            self.schedule(first_sync);
        }
    }

    /// When the pending batch must go out, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Waits for the coalescing window to close, then sends the pending batch. Never
    /// completes while nothing is pending, so it sits in a `select!` next to the input.
    pub async fn flush_due(&mut self) {
        match self.deadline {
            Some(deadline) => {
                tokio::time::sleep_until(deadline).await;
                self.flush();
            }
            None => std::future::pending().await,
        }
    }

    /// Sends the pending batch now.
    pub fn flush(&mut self) {
        self.deadline = None;
        if self.pending.frames.is_empty() {
            return;
        }
        let p = std::mem::take(&mut self.pending);
        let config = self.shared.config;
        let mut state = self.shared.lock();
        state.last_seq += 1;
        let batch = Arc::new(Batch {
            seq: state.last_seq,
            flv_chunk_head: if p.flv.is_empty() {
                Bytes::new()
            } else {
                chunk_head(p.flv.len())
            },
            frames: p.frames,
            flv: p.flv.freeze(),
            rtmp: p.rtmp.freeze(),
            offsets: p.offsets,
            sync_points: p.sync_points,
            init: self.init.clone(),
            sent_at: Instant::now(),
        });
        for frame in &batch.frames {
            info::observe(&mut state.media, frame);
        }
        state.media.bitrate_bps = self.rate.bps();
        state.init = self.init.clone();
        update_gop(&mut state, &batch, self.has_video, &config);
        self.batches.inc();
        if let Some(tx) = &state.tx {
            // No receivers is fine: the batch still went into the GOP cache.
            tx.send(batch);
        }
    }

    /// Flushes and ends the stream; subscribers drain what they have, then see `reason`.
    pub fn finish(mut self, reason: EndReason) {
        self.end(reason);
    }

    fn end(&mut self, reason: EndReason) {
        if self.finished {
            return;
        }
        self.flush();
        self.finished = true;
        let mut state = self.shared.lock();
        state.end = Some(reason);
        state.tx = None;
        state.gop.clear();
        state.fanout = None;
    }
}

impl Drop for HubWriter {
    fn drop(&mut self) {
        self.end(EndReason::Unpublished);
    }
}

fn update_gop(state: &mut State, batch: &Arc<Batch>, has_video: bool, config: &HubConfig) {
    // Entries hold whole batches: count what they keep alive, bookkeeping included.
    let push = |state: &mut State, from: usize| {
        state.gop_bytes += batch.memory_bytes();
        state.gop_frames += batch.frames.len() - from;
        state.gop.push_back(GopEntry {
            batch: batch.clone(),
            from,
        });
    };
    let pop = |state: &mut State| {
        if let Some(entry) = state.gop.pop_front() {
            state.gop_bytes -= entry.batch.memory_bytes();
            state.gop_frames -= entry.batch.frames.len() - entry.from;
        }
    };
    if has_video {
        if let Some(k) = batch.last_sync_point() {
            state.gop.clear();
            state.gop_bytes = 0;
            state.gop_frames = 0;
            push(state, k);
        } else if !state.gop.is_empty() {
            push(state, 0);
        }
        if state.gop_bytes > config.gop_max_bytes || state.gop_frames > config.gop_max_frames {
            // Far too long a GOP: stop caching it rather than hold it all.
            state.gop.clear();
            state.gop_bytes = 0;
            state.gop_frames = 0;
        }
    } else {
        // Audio only: keep a short recent window, starting on a frame boundary, bounded by
        // time, bytes and frames (timestamps a publisher chose cannot be the only bound).
        let from = batch.first_sync_point().unwrap_or(batch.frames.len());
        if from < batch.frames.len() {
            push(state, from);
        }
        let newest = batch.frames.last().map_or(0, |f| f.timestamp);
        let window = config.audio_window.as_millis() as u32;
        while let Some(front) = state.gop.front() {
            let oldest = front.batch.frames.last().map_or(0, |f| f.timestamp);
            let over = newest.wrapping_sub(oldest) > window
                || state.gop_bytes > config.audio_window_max_bytes
                || state.gop_frames > config.audio_window_max_frames;
            if state.gop.len() > 1 && over {
                pop(state);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{FutureExt, StreamExt};

    use super::*;

    pub(crate) fn video(ts: u32, key: bool) -> Frame {
        let first = if key { 0x17 } else { 0x27 };
        Frame::new(
            FrameKind::Video,
            ts,
            Bytes::from(vec![first, 1, 0, 0, 0, 9, 9]),
            0,
        )
    }

    pub(crate) fn audio(ts: u32) -> Frame {
        Frame::new(
            FrameKind::Audio,
            ts,
            Bytes::from_static(&[0xaf, 1, 5, 5]),
            0,
        )
    }

    pub(crate) fn config() -> [Frame; 2] {
        [
            Frame::new(
                FrameKind::Video,
                0,
                Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
                0,
            ),
            Frame::new(
                FrameKind::Audio,
                0,
                Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
                0,
            ),
        ]
    }

    fn frames_of(segments: &[Segment]) -> Vec<(FrameKind, u32)> {
        let mut out = Vec::new();
        for s in segments {
            match s {
                Segment::Init(init) => out.extend(init.frames().map(|f| (f.kind, u32::MAX))),
                Segment::Batch { batch, from } => {
                    out.extend(batch.frames[*from..].iter().map(|f| (f.kind, f.timestamp)))
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn newcomers_start_with_config_and_the_gop_from_its_keyframe() {
        let (hub, mut writer) =
            spawn_hub(StreamKey::new("live", "a").unwrap(), HubConfig::default());
        for f in config() {
            writer.push(f);
        }
        writer.push(video(0, true));
        writer.push(video(33, false));
        writer.push(video(66, true));
        writer.push(audio(70));
        writer.push(video(100, false));
        let mut feed = hub
            .subscribe(LagPolicy::default(), Protocol::HttpFlv)
            .unwrap();
        assert_eq!(
            feed.tracks(),
            TrackFlags {
                has_audio: true,
                has_video: true
            }
        );
        let mut got = Vec::new();
        while let Some(Some(s)) = feed.next().now_or_never() {
            got.push(s);
        }
        assert_eq!(
            frames_of(&got),
            vec![
                (FrameKind::Video, u32::MAX),
                (FrameKind::Audio, u32::MAX),
                (FrameKind::Video, 66),
                (FrameKind::Audio, 70),
                (FrameKind::Video, 100),
            ]
        );
        writer.push(video(133, false));
        let live = feed.next().await.unwrap();
        assert_eq!(frames_of(&[live]), vec![(FrameKind::Video, 133)]);
        writer.finish(EndReason::Unpublished);
        assert!(feed.next().await.is_none());
        assert_eq!(feed.end(), Some(FeedEnd::Ended(EndReason::Unpublished)));
        assert!(
            hub.subscribe(LagPolicy::default(), Protocol::HttpFlv)
                .is_err()
        );
    }

    /// A hub coalescing over `window`, muxing for viewers, with one subscriber.
    fn coalescing(window: Duration) -> (Hub, HubWriter, Feed) {
        let config = HubConfig {
            coalesce_window: window,
            outputs: Outputs::viewers(4096),
            ..HubConfig::default()
        };
        let (hub, writer) = spawn_hub(StreamKey::new("live", "a").unwrap(), config);
        let feed = hub
            .subscribe(LagPolicy::default(), Protocol::HttpFlv)
            .unwrap();
        (hub, writer, feed)
    }

    #[tokio::test(start_paused = true)]
    async fn coalesces_frames_within_the_window() {
        let (_hub, mut writer, mut feed) = coalescing(Duration::from_millis(20));
        // The first keyframe goes out at once, for viewers waiting on a picture.
        writer.push(video(0, true));
        assert!(writer.deadline().is_none());
        assert!(
            matches!(feed.next().await, Some(Segment::Batch { batch, .. }) if batch.frames.len() == 1)
        );
        // Then frames coalesce until the window closes.
        writer.push(video(33, false));
        writer.push(audio(40));
        assert!(writer.deadline().is_some());
        assert!(
            feed.next().now_or_never().is_none(),
            "nothing before the window closes"
        );
        writer.flush_due().await;
        match feed.next().await.unwrap() {
            Segment::Batch { batch, from: 0 } => {
                assert_eq!(batch.frames.len(), 2);
                assert_eq!(batch.first_sync_point(), None);
                // The FLV output is the two tags back to back; the second starts after the first.
                assert_eq!(batch.flv.len(), (11 + 7 + 4) + (11 + 4 + 4));
                assert_eq!(batch.flv_from(1).len(), 11 + 4 + 4);
                assert_eq!(batch.rtmp_from(1).len(), 12 + 4);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A live stream at its own pace (30 fps video, AAC audio every 23 ms): frames are held
    /// only while another is due within the window, so most go out at once, none waits longer
    /// than the window, and batches are still fewer than frames.
    #[tokio::test(start_paused = true)]
    async fn a_frame_waits_only_for_frames_due_within_the_window() {
        let window = Duration::from_millis(20);
        let (_hub, mut writer, mut feed) = coalescing(window);
        let start = Instant::now();
        // Three seconds of frames in arrival order: (timestamp ms, video?).
        let mut frames: Vec<(u32, bool)> = (0..90).map(|i| (i * 1000 / 30, true)).collect();
        frames.extend((0..129).map(|i| (i * 1024 * 1000 / 44_100 + 7, false)));
        frames.sort();
        let mut waits = Vec::new();
        let mut batches = 0;
        let mut collect = |feed: &mut Feed| {
            while let Some(Some(Segment::Batch { batch, .. })) = feed.next().now_or_never() {
                batches += 1;
                for f in &batch.frames {
                    let arrived = start + Duration::from_millis(u64::from(f.timestamp));
                    waits.push(batch.sent_at - arrived);
                }
            }
        };
        for (ts, is_video) in frames {
            let at = start + Duration::from_millis(u64::from(ts));
            if let Some(deadline) = writer.deadline()
                && deadline <= at
            {
                tokio::time::advance(deadline - Instant::now()).await;
                writer.flush_due().await;
            }
            tokio::time::advance(at.saturating_duration_since(Instant::now())).await;
            writer.push(if is_video {
                video(ts, ts == 0)
            } else {
                audio(ts)
            });
            collect(&mut feed);
        }
        let total = waits.len();
        let at_once = waits.iter().filter(|w| w.is_zero()).count();
        let longest = waits.iter().max().copied().unwrap_or_default();
        assert!(longest <= window, "a frame waited {longest:?}");
        assert!(
            at_once * 2 > total,
            "{at_once} of {total} frames went out at once"
        );
        assert!(
            batches * 10 < total * 8,
            "{batches} batches for {total} frames: nothing coalesced"
        );
    }

    #[tokio::test]
    async fn audio_only_streams_start_at_once_with_a_short_window() {
        let (hub, mut writer) =
            spawn_hub(StreamKey::new("radio", "a").unwrap(), HubConfig::default());
        writer.push(config()[1].clone());
        for i in 0..100 {
            writer.push(audio(i * 23));
        }
        let mut feed = hub
            .subscribe(LagPolicy::default(), Protocol::HttpFlv)
            .unwrap();
        assert_eq!(
            feed.tracks(),
            TrackFlags {
                has_audio: true,
                has_video: false
            }
        );
        let mut got = Vec::new();
        while let Some(Some(s)) = feed.next().now_or_never() {
            got.push(s);
        }
        let frames = frames_of(&got);
        assert_eq!(frames[0], (FrameKind::Audio, u32::MAX), "config first");
        let first_ts = frames[1].1;
        assert!(
            (99 * 23 - 550..99 * 23).contains(&first_ts),
            "window starts at {first_ts}"
        );
    }

    #[tokio::test]
    async fn the_audio_window_is_bounded_when_timestamps_do_not_advance() {
        let (hub, mut writer) =
            spawn_hub(StreamKey::new("live", "a").unwrap(), HubConfig::default());
        let config = HubConfig::default();
        // Ten thousand audio frames, all at timestamp 0: the window stays at its frame bound.
        for _ in 0..10_000 {
            writer.push(audio(0));
        }
        let stats = hub.stats();
        assert!(
            stats.gop_frames <= config.audio_window_max_frames,
            "{} frames kept",
            stats.gop_frames
        );
        // Large frames: the byte bound.
        for _ in 0..200 {
            let mut payload = vec![0xaf, 1];
            payload.resize(64 << 10, 7);
            writer.push(Frame::new(FrameKind::Audio, 0, Bytes::from(payload), 0));
        }
        let stats = hub.stats();
        assert!(
            stats.retained_bytes
                <= config.audio_window_max_bytes + config.ring_max_bytes + (256 << 10),
            "{} bytes retained",
            stats.retained_bytes
        );
    }

    #[tokio::test]
    async fn the_ring_is_bounded_by_bytes_and_the_gop_by_frames() {
        let (hub, mut writer) =
            spawn_hub(StreamKey::new("live", "a").unwrap(), HubConfig::default());
        let config = HubConfig::default();
        let _feed = hub
            .subscribe(LagPolicy::default(), Protocol::HttpFlv)
            .unwrap();
        // 8 MiB keyframes (legal RTMP messages): the ring keeps its byte bound, not 128 of them.
        for i in 0..40u32 {
            let mut payload = vec![0x17, 1, 0, 0, 0];
            payload.resize(8 << 20, 7);
            writer.push(Frame::new(
                FrameKind::Video,
                i * 33,
                Bytes::from(payload),
                0,
            ));
            let retained = hub.stats().retained_bytes;
            assert!(
                retained <= config.ring_max_bytes + 2 * (8 << 20) + (1 << 20),
                "{retained} bytes retained after {i} frames"
            );
        }
        // A GOP of tiny frames is bounded by its frame count.
        writer.push(video(0, true));
        for i in 0..(config.gop_max_frames as u32 + 10) {
            writer.push(video(i, false));
        }
        assert!(hub.stats().gop_frames <= config.gop_max_frames);
    }

    #[tokio::test]
    async fn repeated_and_oversized_configuration_frames_make_no_new_init() {
        let (hub, mut writer) =
            spawn_hub(StreamKey::new("live", "a").unwrap(), HubConfig::default());
        for f in config() {
            writer.push(f);
        }
        writer.push(video(0, true));
        let version = hub.shared.lock().init.version;
        for f in config() {
            writer.push(f);
        }
        let mut huge = vec![0x17, 0, 0, 0, 0];
        huge.resize(HubConfig::default().max_config_bytes + 1, 1);
        writer.push(Frame::new(FrameKind::Video, 0, Bytes::from(huge), 0));
        writer.push(video(33, false));
        assert_eq!(hub.shared.lock().init.version, version);
    }

    #[tokio::test]
    async fn frames_that_arrived_together_go_out_as_one_batch() {
        let (hub, mut writer) =
            spawn_hub(StreamKey::new("live", "a").unwrap(), HubConfig::default());
        writer.push(video(0, true));
        let mut feed = hub
            .subscribe(LagPolicy::default(), Protocol::HttpFlv)
            .unwrap();
        while feed.next().now_or_never().flatten().is_some() {}
        // An aggregate of a hundred tiny frames: one batch, not a hundred.
        writer.hold();
        for i in 1..=100 {
            writer.push(audio(i));
        }
        assert!(feed.next().now_or_never().is_none(), "held until released");
        writer.release();
        match feed.next().now_or_never().flatten() {
            Some(Segment::Batch { batch, from: 0 }) => assert_eq!(batch.frames.len(), 100),
            other => panic!("expected one batch, got {other:?}"),
        }
        assert!(feed.next().now_or_never().is_none());
    }
}
