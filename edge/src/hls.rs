//! HLS and Low-Latency HLS from a pulled stream: the edge remuxes the relay's frames, in
//! memory, into CMAF segments (`media::mp4`) cut into partial segments of about
//! [`HlsConfig::part_target`], and answers playlists (blocking reloads, delta updates), parts
//! and segments.
//!
//! **Every edge gives the same bytes.** Segment starts and media sequence numbers are the
//! origin's marks ([`Frame::segment`], see `media::segment`), parts are cut at fixed media
//! times from the segment's start, every segment is muxed by a fresh fragmenter from its own
//! frames only, and names, durations and program date-times derive from the epoch, the
//! publication's start time and media timestamps. The packager takes the relay's frames before
//! the pull's timeline rebasing (which depends on the edge's own history). An edge that joins
//! mid-stream starts at the next marked frame.
//!
//! **A failover continues the playlist.** The registry numbers a new publication of a name a
//! few numbers past the last one its previous publication reported, with the next
//! discontinuity sequence number (`HlsSequence` in the cluster crate). An edge that still
//! lists the old publication's segments keeps them, fills the numbers between with
//! `EXT-X-GAP` segments (a playlist's numbers grow by one per segment; the gaps belong to the
//! old publication, whose next segment players may have been hinted) and lists the new
//! publication's after an `EXT-X-DISCONTINUITY`; the same holds for segments lost within one
//! publication (a relay reconnect). The old publication's open segment ends when the new
//! one's first segment starts. Every edge that saw the same old segments gives the same
//! playlist. A publication that does not follow on (numbers too far ahead or behind, another
//! discontinuity sequence) restarts the playlist.
//!
//! Memory is bounded per stream: a sliding window of segments, nothing per viewer.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corriente_core::MediaInfo;
use corriente_core::digest::fnv1a_parts;
use corriente_core::time::iso8601_ms;
use corriente_media::frame::{Frame, FrameRole};
use corriente_media::mp4::{Fragmenter, SampleData, TrackKind, Tracks, sample};
use tokio::sync::watch;
use tracing::debug;

/// What the packagers of this edge do.
#[derive(Debug, Clone, Copy)]
pub struct HlsConfig {
    /// Partial segments last about this long (media time).
    pub part_target: Duration,
    /// Complete segments kept (and listed) per stream.
    pub window: usize,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            part_target: Duration::from_millis(200),
            window: 6,
        }
    }
}

/// Most bytes of segments kept per stream, whatever the window says.
const MAX_BYTES: usize = 96 << 20;

/// One partial segment: a `moof` + `mdat`.
#[derive(Debug, Clone)]
pub struct Part {
    pub bytes: Bytes,
    /// Media time it covers, milliseconds.
    pub duration_ms: u32,
    /// Starts with a picture that decodes alone (or is audio).
    pub independent: bool,
}

/// A segment: its parts, and once complete its duration.
#[derive(Debug, Clone)]
pub struct Segment {
    pub msn: u64,
    /// The initialization segment its fragments refer to (its file name).
    pub init: Arc<InitSegment>,
    /// Wall-clock time of its start, Unix milliseconds (the publication's start plus media
    /// time).
    pub pdt_ms: u64,
    pub parts: Vec<Part>,
    pub complete: bool,
    /// Once complete, the whole segment (its parts are slices of it).
    pub whole: Option<Bytes>,
    /// Discontinuity sequence number (of its publication).
    pub discontinuity: u64,
    /// A segment the edge never had (`EXT-X-GAP`), and the duration it is given.
    pub gap: Option<u32>,
}

impl Segment {
    /// Media time it covers: its parts' (the last part's is known once the next segment
    /// starts; until then, or when none follows, it counts as long as the part before it).
    pub fn duration_ms(&self) -> u32 {
        if let Some(gap) = self.gap {
            return gap;
        }
        let sum: u32 = self.parts.iter().map(|p| p.duration_ms).sum();
        match self.parts.as_slice() {
            [.., before, last] if self.complete && last.duration_ms == 0 => {
                sum + before.duration_ms
            }
            _ => sum,
        }
    }
}

/// An initialization segment (`ftyp` + `moov`), named after a digest of its bytes.
#[derive(Debug)]
pub struct InitSegment {
    pub name: String,
    pub bytes: Bytes,
}

/// Where the stream's HLS stands: the newest segment and how many parts it has (for blocking
/// requests), and whether the stream ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub msn: u64,
    pub parts: usize,
    pub complete: bool,
    pub ended: bool,
    /// The oldest segment kept.
    pub first_msn: u64,
}

/// The HLS output of one pulled stream.
pub struct Packager {
    config: HlsConfig,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    /// Playlists rendered lately: every viewer at the live edge asks the same blocking
    /// request, so each answer is rendered once per change of the window, not per viewer.
    rendered: std::sync::Mutex<VecDeque<Rendered>>,
}

/// A rendered playlist: the window's generation and the request it answers, its bytes and tag.
struct Rendered {
    generation: u64,
    request: PlaylistRequest,
    uris: String,
    body: Bytes,
    etag: String,
}

/// Rendered playlists kept (requests differ by query: tokens, skips, part numbers).
const RENDERED: usize = 16;

/// Most missing segments bridged with `EXT-X-GAP` segments; a longer hole restarts the
/// playlist.
const MAX_GAP: u64 = 32;

/// Shortest duration given to a gap segment.
const MIN_GAP_MS: u32 = 100;

/// The publication a frame belongs to, as the registry described it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Publication {
    /// Its fencing epoch.
    pub epoch: u64,
    /// When it started (Unix milliseconds): program date-times are this plus media time.
    pub started_at_ms: u64,
    /// Its discontinuity sequence number.
    pub discontinuity: u64,
}

#[derive(Default)]
struct State {
    /// Off until someone asks for HLS: until then frames are ignored.
    enabled: bool,
    publication: Publication,
    media: MediaInfo,
    video_config: Option<Frame>,
    audio_config: Option<Frame>,
    /// The tracks of the current configuration and their initialization segment.
    tracks: Option<(Tracks, Arc<InitSegment>)>,
    /// The open segment's muxer (a fresh one per segment).
    open: Option<Open>,
    segments: VecDeque<Segment>,
    bytes: usize,
    /// Grows with every change of what a playlist would list.
    generation: u64,
    /// Frames the pull already delivered are coming again (a relay reconnect): ignored until
    /// the next segment starts.
    resent: bool,
}

struct Open {
    fragmenter: Fragmenter,
    /// Which track cuts parts (video when there is one).
    cutter: TrackKind,
    /// Decode time (ms) the open part started at, and of the next part boundary.
    part_start: u32,
    next_boundary: u32,
    /// The open part begins with a keyframe (or the stream is audio-only).
    independent: bool,
    /// Fragments (parts) written, for `mfhd` numbers.
    fragments: u32,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Packager {
    pub fn new(config: HlsConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            progress: watch::channel(Progress::default()).0,
            rendered: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// The playlist answering `request` now, with media URIs `{prefix}…{?query}`, and its
    /// entity tag; rendered once per window generation and request.
    pub fn playlist(
        &self,
        request: &PlaylistRequest,
        prefix: &str,
        query: &str,
    ) -> (Bytes, String) {
        let uris = format!("{prefix}?{query}");
        let (generation, snapshot) = {
            let state = lock(&self.state);
            let generation = state.generation;
            let cached = self
                .rendered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|r| r.generation == generation && r.request == *request && r.uris == uris)
                .map(|r| (r.body.clone(), r.etag.clone()));
            if let Some(hit) = cached {
                return hit;
            }
            (
                generation,
                Snapshot {
                    segments: state.segments.iter().cloned().collect(),
                    discontinuity_sequence: state
                        .segments
                        .front()
                        .map_or(state.publication.discontinuity, |s| s.discontinuity),
                },
            )
        };
        let text = playlist(&snapshot, self.config, request, prefix, query);
        let etag = format!("\"{:016x}\"", fnv1a_parts(&[text.as_bytes()]));
        let body = Bytes::from(text);
        let mut rendered = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
        rendered.retain(|r| r.generation == generation);
        if rendered.len() >= RENDERED {
            rendered.pop_front();
        }
        rendered.push_back(Rendered {
            generation,
            request: *request,
            uris,
            body: body.clone(),
            etag: etag.clone(),
        });
        (body, etag)
    }

    /// Turns packaging on (the first HLS request for the stream).
    pub fn enable(&self) {
        lock(&self.state).enabled = true;
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The stream ended (its pull is over): blocked requests give up.
    pub fn end(&self) {
        self.progress.send_modify(|p| p.ended = true);
    }

    /// A frame as the relay delivered it (before any rebasing), of `publication`.
    pub fn push(&self, publication: Publication, frame: &Frame) {
        let mut state = lock(&self.state);
        // Configuration is kept even while packaging is off: it comes once, at the start of
        // the pull, and a later first HLS request needs it.
        if !state.enabled && !frame.is_config() {
            return;
        }
        if publication.epoch != state.publication.epoch {
            // A new publication: it continues the playlist when it is the next discontinuity
            // (its first segment decides whether its numbers follow on), or replaces it.
            let follows = state.publication.epoch != 0
                && publication.discontinuity == state.publication.discontinuity + 1;
            close_open(&mut state);
            if !follows {
                state.segments.clear();
                state.bytes = 0;
            }
            state.generation += 1;
            state.publication = publication;
            state.resent = false;
            state.tracks = None;
            state.video_config = None;
            state.audio_config = None;
            state.media = MediaInfo::default();
        }
        match frame.role() {
            FrameRole::Metadata => {
                corriente_media::info::observe(&mut state.media, frame);
                return;
            }
            FrameRole::VideoConfig | FrameRole::AudioConfig => {
                corriente_media::info::observe(&mut state.media, frame);
                let slot = if frame.role() == FrameRole::VideoConfig {
                    &mut state.video_config
                } else {
                    &mut state.audio_config
                };
                if slot.as_ref().map(|f| &f.payload) != Some(&frame.payload) {
                    *slot = Some(frame.clone());
                    // A new configuration takes effect at the next segment.
                    state.tracks = None;
                }
                return;
            }
            _ => {}
        }
        if !state.enabled {
            return;
        }
        let Some(s) = sample(frame) else { return };
        let changed = if frame.segment != 0 {
            self.start_segment(&mut state, frame.segment, frame.timestamp, &s)
        } else {
            self.continue_segment(&mut state, s)
        };
        if changed {
            self.changed(state);
        }
    }

    /// Announces a change of the window to blocked requests.
    fn changed(&self, mut state: MutexGuard<'_, State>) {
        state.generation += 1;
        let p = state.progress();
        // Not under the state's lock: a blocked request checks the state from inside the
        // watch's.
        drop(state);
        self.progress.send_if_modified(|old| {
            let new = Progress {
                ended: old.ended,
                ..p
            };
            let differs = *old != new;
            *old = new;
            differs
        });
    }

    /// Closes the open segment and opens `msn` with `first`.
    fn start_segment(&self, state: &mut State, msn: u64, ts: u32, first: &SampleData) -> bool {
        let discontinuity = state.publication.discontinuity;
        if state
            .segments
            .back()
            .is_some_and(|last| msn <= last.msn && last.discontinuity == discontinuity)
        {
            // Already had (a relay reconnect resends from a keyframe): its frames are
            // dropped until the next segment starts.
            state.resent = true;
            return false;
        }
        state.resent = false;
        let closed = close_segment(state, Some(ts));
        let pdt_ms = state.publication.started_at_ms + u64::from(ts);
        if let Some(last) = state.segments.back() {
            let (last_msn, last_dsn) = (last.msn, last.discontinuity);
            let last_end = last.pdt_ms + u64::from(last.duration_ms());
            let missing = msn.checked_sub(last_msn + 1).filter(|m| *m <= MAX_GAP);
            match missing {
                Some(missing) if missing > 0 => {
                    let cap = max_target_ms(&state.segments);
                    let hole = pdt_ms.saturating_sub(last_end) / missing;
                    let each = (hole.min(u64::from(cap)) as u32).max(MIN_GAP_MS);
                    let init = last.init.clone();
                    // Gaps belong to the publication before: players that hinted its next
                    // segment find that number in the discontinuity they expect.
                    for (i, n) in (last_msn + 1..msn).enumerate() {
                        state.segments.push_back(Segment {
                            msn: n,
                            init: init.clone(),
                            pdt_ms: last_end + i as u64 * u64::from(each),
                            parts: Vec::new(),
                            complete: true,
                            whole: None,
                            discontinuity: last_dsn,
                            gap: Some(each),
                        });
                    }
                }
                Some(_) => {}
                None => {
                    // Does not follow on: a new playlist.
                    state.segments.clear();
                    state.bytes = 0;
                }
            }
        }
        if state.tracks.is_none() {
            let tracks = Tracks::new(
                state.video_config.as_ref(),
                state.audio_config.as_ref(),
                state.media.width,
                state.media.height,
            );
            let init = tracks.and_then(|t| t.init_segment().map(|bytes| (t, bytes)));
            match init {
                Ok((tracks, bytes)) => {
                    let name = format!(
                        "init-{:016x}.mp4",
                        fnv1a_parts(&[&state.publication.epoch.to_be_bytes(), &bytes])
                    );
                    let init = Arc::new(InitSegment {
                        name,
                        bytes: Bytes::from(bytes),
                    });
                    state.tracks = Some((tracks, init));
                }
                Err(e) => {
                    debug!(error = %e, "this stream cannot be packaged as HLS");
                    return closed;
                }
            }
        }
        let Some((tracks, init)) = state.tracks.clone() else {
            return closed;
        };
        let cutter = if tracks.track_id(TrackKind::Video).is_some() {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        let part_ms = self.config.part_target.as_millis() as u32;
        let mut fragmenter = Fragmenter::new(tracks);
        fragmenter.push(first.clone());
        state.open = Some(Open {
            fragmenter,
            cutter,
            part_start: ts,
            next_boundary: ts.wrapping_add(part_ms),
            independent: true,
            fragments: 0,
        });
        state.segments.push_back(Segment {
            msn,
            init,
            pdt_ms,
            parts: Vec::new(),
            complete: false,
            whole: None,
            discontinuity,
            gap: None,
        });
        // The window: complete segments beyond it, and bytes beyond the cap, go. Gap segments
        // hold nothing and do not count; none is left at the front.
        let mut media = state.segments.iter().filter(|s| s.gap.is_none()).count();
        while media > self.config.window + 1
            || (state.bytes > MAX_BYTES && state.segments.len() > 1)
            || state.segments.front().is_some_and(|s| s.gap.is_some())
        {
            let Some(old) = state.segments.pop_front() else {
                break;
            };
            if old.gap.is_none() {
                media -= 1;
            }
            state.bytes -= old.parts.iter().map(|p| p.bytes.len()).sum::<usize>();
        }
        true
    }

    /// Adds a sample to the open segment, cutting a part at the next boundary.
    fn continue_segment(&self, state: &mut State, s: SampleData) -> bool {
        let part_ms = self.config.part_target.as_millis() as u32;
        if state.resent {
            return false;
        }
        let Some(open) = state.open.as_mut() else {
            return false;
        };
        let boundary =
            s.track == open.cutter && s.dts_ms.wrapping_sub(open.next_boundary) < u32::MAX / 2;
        let keyframe = s.track == TrackKind::Video && s.keyframe;
        let dts = s.dts_ms;
        open.fragmenter.push(s);
        if !boundary {
            return false;
        }
        let sequence = fragment_number(
            state.segments.back().map_or(0, |seg| seg.msn),
            open.fragments,
        );
        let Ok(Some(bytes)) = open.fragmenter.flush(sequence) else {
            return false;
        };
        let part = Part {
            bytes: Bytes::from(bytes),
            duration_ms: dts.wrapping_sub(open.part_start),
            independent: open.independent,
        };
        open.fragments += 1;
        open.part_start = dts;
        // Boundaries at fixed media times from the segment's start.
        while dts.wrapping_sub(open.next_boundary) < u32::MAX / 2 {
            open.next_boundary = open.next_boundary.wrapping_add(part_ms);
        }
        open.independent = keyframe || open.cutter == TrackKind::Audio;
        state.bytes += part.bytes.len();
        if let Some(seg) = state.segments.back_mut() {
            seg.parts.push(part);
        }
        true
    }

    /// The initialization segment named `name`, if a kept segment uses it.
    pub fn init(&self, name: &str) -> Option<Bytes> {
        let state = lock(&self.state);
        state
            .segments
            .iter()
            .map(|s| &s.init)
            .chain(state.tracks.iter().map(|(_, i)| i))
            .find(|i| i.name == name)
            .map(|i| i.bytes.clone())
    }

    /// Segment `msn` whole, if kept and complete.
    pub fn whole(&self, msn: u64) -> Option<Bytes> {
        lock(&self.state)
            .segments
            .iter()
            .find(|s| s.msn == msn)
            .and_then(|s| s.whole.clone())
    }

    /// Part `part` of segment `msn`, if kept.
    pub fn part(&self, msn: u64, part: usize) -> Option<Bytes> {
        lock(&self.state)
            .segments
            .iter()
            .find(|s| s.msn == msn)
            .and_then(|s| s.parts.get(part))
            .map(|p| p.bytes.clone())
    }

    pub fn config(&self) -> HlsConfig {
        self.config
    }

    /// Whether a playlist now lists what a blocking request waits for: segment `msn` whole
    /// (`part` = `None`), or its part `part` — a part past the last of a complete segment being
    /// the next segment's first (RFC 8216bis 6.2.5.2).
    pub fn lists(&self, request: &PlaylistRequest) -> bool {
        let state = lock(&self.state);
        let Some(newest) = state.segments.back() else {
            return false;
        };
        let Some(msn) = request.msn else {
            // A first playlist lists one whole segment at least (for players without LL-HLS).
            return state.segments.iter().any(|s| s.complete);
        };
        if state.segments.front().is_some_and(|f| msn < f.msn) || msn < newest.msn {
            return match (request.part, state.segments.iter().find(|s| s.msn == msn)) {
                (Some(part), Some(s)) if part >= s.parts.len() => state
                    .segments
                    .iter()
                    .find(|n| n.msn == msn + 1)
                    .is_some_and(|n| !n.parts.is_empty() || n.complete),
                _ => true,
            };
        }
        if msn > newest.msn {
            return false;
        }
        match request.part {
            None => newest.complete,
            Some(part) => newest.parts.len() > part,
        }
    }
}

/// `mfhd` sequence numbers: growing within a stream, from the segment's number and the part's.
fn fragment_number(msn: u64, part: u32) -> u32 {
    ((msn % (1 << 24)) as u32) * 128 + part.min(127) + 1
}

/// The longest complete segment's duration (at least a second): gap segments last no longer,
/// so that they never raise the playlist's target duration.
fn max_target_ms(segments: &VecDeque<Segment>) -> u32 {
    segments
        .iter()
        .filter(|s| s.complete && s.gap.is_none())
        .map(Segment::duration_ms)
        .max()
        .unwrap_or(1000)
        .max(1000)
}

/// Ends the open segment where its frames end (its publication is over); a segment that got
/// no part at all is dropped. Returns whether anything changed.
///
/// Not done when the relay merely breaks: players hold a hint for the open segment's next
/// part, and hls.js refuses a playlist in which that segment then ends without it and later
/// numbers appear ("media sequence mismatch"); the segment ends when the next publication
/// (or the same one, back) starts its next segment.
fn close_open(state: &mut State) -> bool {
    if !close_segment(state, None) {
        return false;
    }
    if state
        .segments
        .back()
        .is_some_and(|s| s.gap.is_none() && s.parts.is_empty())
    {
        state.segments.pop_back();
    }
    true
}

/// Ends the open segment with its last part (every sample, the last ones with the duration of
/// the one before), which lasts until `next_start` when the next segment starts there.
/// Returns whether anything changed.
fn close_segment(state: &mut State, next_start: Option<u32>) -> bool {
    let Some(mut open) = state.open.take() else {
        return false;
    };
    let Some(seg) = state.segments.back_mut() else {
        return false;
    };
    let sequence = fragment_number(seg.msn, open.fragments);
    if let Ok(Some(bytes)) = open.fragmenter.finish(sequence) {
        // The last part ends where the next segment starts; until then, at its own end.
        let part = Part {
            bytes: Bytes::from(bytes),
            duration_ms: next_start.map_or(0, |t| t.wrapping_sub(open.part_start)),
            independent: open.independent,
        };
        state.bytes += part.bytes.len();
        seg.parts.push(part);
    }
    // The whole segment is served as often as its parts: join it once, and let the parts be
    // slices of it, so it costs no memory of its own.
    let mut whole = BytesMut::with_capacity(seg.parts.iter().map(|p| p.bytes.len()).sum());
    for p in &seg.parts {
        whole.extend_from_slice(&p.bytes);
    }
    let whole = whole.freeze();
    let mut at = 0;
    for p in &mut seg.parts {
        let len = p.bytes.len();
        p.bytes = whole.slice(at..at + len);
        at += len;
    }
    seg.whole = Some(whole);
    seg.complete = true;
    true
}

impl State {
    fn progress(&self) -> Progress {
        match self.segments.back() {
            Some(s) => Progress {
                msn: s.msn,
                parts: s.parts.len(),
                complete: s.complete,
                ended: false,
                first_msn: self.segments.front().map_or(s.msn, |f| f.msn),
            },
            None => Progress::default(),
        }
    }
}

/// A copy of what a packager keeps, for one answer.
pub struct Snapshot {
    pub segments: Vec<Segment>,
    pub discontinuity_sequence: u64,
}

/// What a playlist request asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlaylistRequest {
    /// `_HLS_msn`, `_HLS_part`: block until this part (or segment) is listed.
    pub msn: Option<u64>,
    pub part: Option<usize>,
    /// `_HLS_skip=YES` (or `v2`): a delta update.
    pub skip: bool,
}

impl PlaylistRequest {
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut r = PlaylistRequest::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "_HLS_msn" => {
                    r.msn = Some(v.parse().map_err(|_| format!("bad _HLS_msn {v:?}"))?);
                }
                "_HLS_part" => {
                    r.part = Some(v.parse().map_err(|_| format!("bad _HLS_part {v:?}"))?);
                }
                "_HLS_skip" => r.skip = matches!(v, "YES" | "v2"),
                _ => {}
            }
        }
        if r.part.is_some() && r.msn.is_none() {
            return Err("_HLS_part without _HLS_msn".to_owned());
        }
        Ok(r)
    }
}

/// Seconds with three decimals.
fn secs(ms: u32) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The media playlist of `snapshot`, for `request`: segments' URIs are `{prefix}MSN.m4s`
/// (parts `{prefix}MSN.PART.m4s`, maps `{prefix}init-….mp4`), each followed by `query` (a
/// playback token) when it is not empty. A function of its arguments only.
pub fn playlist(
    snapshot: &Snapshot,
    config: HlsConfig,
    request: &PlaylistRequest,
    prefix: &str,
    query: &str,
) -> String {
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let segs = &snapshot.segments;
    let part_target = config.part_target.as_millis() as u32;
    let durations: Vec<u32> = segs.iter().map(Segment::duration_ms).collect();
    let target = durations
        .iter()
        .zip(segs)
        .filter(|(_, s)| s.complete)
        .map(|(d, _)| d.div_ceil(1000))
        .max()
        .unwrap_or(2)
        .max(1);
    let mut out = String::with_capacity(2048);
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:9");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let skip_until = 6 * target * 1000;
    let _ = writeln!(
        out,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={},PART-HOLD-BACK={}",
        secs(skip_until),
        secs(part_target * 3)
    );
    let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={}", secs(part_target));
    let first = segs.first().map_or(0, |s| s.msn);
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first}");
    let _ = writeln!(
        out,
        "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
        snapshot.discontinuity_sequence
    );
    // A delta update skips the complete segments older than CAN-SKIP-UNTIL from the end.
    let total: u64 = durations.iter().map(|d| u64::from(*d)).sum();
    let mut skipped = 0usize;
    if request.skip {
        let mut from_end = total;
        let first_dsn = segs.first().map_or(0, |s| s.discontinuity);
        for (s, d) in segs.iter().zip(&durations) {
            // Never past a discontinuity: the tag must stay in the update.
            if from_end <= u64::from(skip_until) || !s.complete || s.discontinuity != first_dsn {
                break;
            }
            from_end -= u64::from(*d);
            skipped += 1;
        }
        if skipped > 0 {
            let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        }
    }
    // Parts are listed for the last segments only (about three target durations).
    let mut listed_parts_from = segs.len();
    let mut tail = 0u64;
    for (i, d) in durations.iter().enumerate().rev() {
        listed_parts_from = i;
        tail += u64::from(*d);
        if tail >= u64::from(3 * target * 1000) {
            break;
        }
    }
    let mut map: Option<&str> = None;
    for (i, (s, d)) in segs.iter().zip(&durations).enumerate().skip(skipped) {
        if i > 0 && segs[i - 1].discontinuity != s.discontinuity {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
        }
        if map != Some(s.init.name.as_str()) {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{prefix}{}{q}\"", s.init.name);
            map = Some(s.init.name.as_str());
        }
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", iso8601_ms(s.pdt_ms));
        if s.gap.is_some() {
            let _ = writeln!(out, "#EXT-X-GAP");
        }
        if i >= listed_parts_from {
            let count = s.parts.len();
            for (p, part) in s.parts.iter().enumerate() {
                let duration = if p + 1 == count && s.complete {
                    d.saturating_sub(s.parts[..p].iter().map(|x| x.duration_ms).sum())
                } else {
                    part.duration_ms
                };
                let independent = if part.independent {
                    ",INDEPENDENT=YES"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "#EXT-X-PART:DURATION={},URI=\"{prefix}{}.{p}.m4s{q}\"{independent}",
                    secs(duration),
                    s.msn
                );
            }
        }
        if s.complete {
            let _ = writeln!(out, "#EXTINF:{},", secs(*d));
            let _ = writeln!(out, "{prefix}{}.m4s{q}", s.msn);
        } else {
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{prefix}{}.{}.m4s{q}\"",
                s.msn,
                s.parts.len()
            );
        }
    }
    out
}

// ---- HTTP -------------------------------------------------------------------------------

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corriente_media::StreamKey;

use crate::EdgeContext;
use crate::pulls::{PlayError, ViewerLease};
use crate::vod::plain;

/// Longest a blocking request (a playlist reload, a part not yet written) is held.
fn block_limit(config: HlsConfig) -> Duration {
    // Three target durations, as RFC 8216bis asks of servers, with 2 s segments; more when the
    // stream is just starting (the first segment mark may be a GOP away).
    Duration::from_secs(6).max(config.part_target * 30)
}

/// The purpose HLS media tokens are signed for (see [`media_token`]).
const MEDIA_TOKEN: &str = "hls-media";

/// How long a media token is valid at most: tokens change every hour, and each is valid for
/// the hour after.
const MEDIA_TOKEN_BUCKET: u64 = 3600;

/// Whether `key` needs a signed URL on this edge.
fn needs_token(ctx: &EdgeContext, key: &StreamKey) -> bool {
    let auth = &ctx.config.play_auth;
    auth.secrets.is_some()
        && (auth.token_apps.is_empty() || auth.token_apps.iter().any(|a| a == key.app()))
}

/// The token the playlist puts in its media URIs when the stream needs a signed URL: signed
/// with the edge's first playback secret for [`MEDIA_TOKEN`], the stream and an expiry rounded
/// up to the next hour plus one. Every viewer of the stream, on every edge with the same
/// secrets, gets the same token for an hour, so a cache in front shares parts and segments
/// between viewers (its key includes the query), while the URIs still only work for someone
/// given a playlist, and for two hours at most. The viewer's own token (which may be
/// per-viewer) stays on the playlist URL only.
fn media_token(ctx: &EdgeContext, key: &StreamKey) -> Option<String> {
    if !needs_token(ctx, key) {
        return None;
    }
    let secrets = ctx.config.play_auth.secrets.as_ref()?.secrets();
    let secret = secrets.first()?;
    let now = corriente_media::frame::unix_micros() / 1_000_000;
    let expires = (now / MEDIA_TOKEN_BUCKET + 2) * MEDIA_TOKEN_BUCKET;
    Some(corriente_core::access::sign(
        secret,
        MEDIA_TOKEN,
        &key.to_string(),
        expires,
    ))
}

/// Whether a media request carries a valid media token for `key` (then the on_play hook is
/// not asked again: the playlist request was authorized).
fn has_media_token(ctx: &EdgeContext, key: &StreamKey, query: &str) -> bool {
    let Some(secrets) = ctx.config.play_auth.secrets.as_ref() else {
        return false;
    };
    let token = corriente_core::access::query_param(query, "token").unwrap_or("");
    let now = corriente_media::frame::unix_micros() / 1_000_000;
    corriente_core::access::verify(
        &secrets.secrets(),
        MEDIA_TOKEN,
        &key.to_string(),
        token,
        now,
    )
    .is_ok()
}

/// The stream's pull, for an HLS request (authorized first).
async fn lease(
    ctx: &EdgeContext,
    key: &StreamKey,
    query: &str,
    peer: std::net::IpAddr,
    media: bool,
) -> Result<ViewerLease, Response> {
    if media && needs_token(ctx, key) && has_media_token(ctx, key, query) {
        if !ctx.config.play_auth.ip_rules.permits(peer) {
            return Err(plain(
                StatusCode::FORBIDDEN,
                format!("playback from {peer} is not allowed"),
            ));
        }
    } else {
        crate::vod::authorize(ctx, key, query, peer, "hls").await?;
    }
    if ctx.draining.is_cancelled() {
        return Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "this edge is shutting down; retry",
        ));
    }
    ctx.pulls.acquire_hls(key).await.map_err(|e| match e {
        PlayError::NotFound(_) => plain(StatusCode::NOT_FOUND, e.to_string()),
        PlayError::Unavailable { .. } => plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })
}

/// Waits until `ready` holds for the packager's progress, or the stream ends, or `limit`.
async fn wait_until(
    packager: &Packager,
    limit: Duration,
    ready: impl Fn(&Progress) -> bool,
) -> Result<(), Response> {
    let mut progress = packager.progress();
    let waited = tokio::time::timeout(limit, progress.wait_for(|p| p.ended || ready(p))).await;
    match waited {
        Ok(Ok(p)) if !p.ended || ready(&p) => Ok(()),
        Ok(_) => Err(plain(StatusCode::NOT_FOUND, "the stream ended")),
        Err(_) => Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the stream has no such segment yet; retry",
        )),
    }
}

/// The playlist's query minus the blocking-request parameters and the viewer's session: what
/// segment URIs carry (a playback token), the same for every viewer with the same token.
fn passthrough(query: &str) -> String {
    query
        .split('&')
        .filter(|p| {
            !p.is_empty() && !p.starts_with("_HLS_") && p.split('=').next() != Some(SESSION_PARAM)
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Who asks, as an HLS request tells: its address, `User-Agent` and `If-None-Match`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client<'a> {
    pub peer: std::net::IpAddr,
    pub user_agent: &'a str,
    pub if_none_match: Option<&'a str>,
}

/// An answer of `body` with entity tag `etag`, or `304` when the client has it.
fn tagged(client: &Client<'_>, etag: &str, body: Body, len: usize, head: bool) -> Response {
    let mut response = if client
        .if_none_match
        .is_some_and(|h| h.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(if head { Body::empty() } else { body });
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r
    };
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, ETag"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    response
}

/// `GET /APP/NAME.m3u8`: the media playlist, LL-HLS with blocking reloads and delta updates.
pub(crate) async fn serve_playlist(
    ctx: &EdgeContext,
    client: Client<'_>,
    app: &str,
    name: &str,
    query: &str,
) -> Response {
    let key = match StreamKey::new(app, name) {
        Ok(key) => key,
        Err(e) => return plain(StatusCode::NOT_FOUND, e.to_string()),
    };
    let request = match PlaylistRequest::parse(query) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let lease = match lease(ctx, &key, query, client.peer, false).await {
        Ok(lease) => lease,
        Err(response) => return response,
    };
    ctx.hls_sessions
        .seen(client.peer, client.user_agent, &key, query);
    let packager = lease.hls();
    let config = packager.config();
    if let Some(msn) = request.msn {
        // A request too far ahead is refused at once (RFC 8216bis 6.2.5.2).
        let now = *packager.progress().borrow();
        if now.msn > 0 && msn > now.msn + 2 {
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "_HLS_msn={msn} is more than two segments ahead of {}",
                    now.msn
                ),
            );
        }
    }
    if let Err(response) =
        wait_until(packager, block_limit(config), |_| packager.lists(&request)).await
    {
        return response;
    }
    let media_query = match media_token(ctx, &key) {
        Some(token) => format!("token={token}"),
        None => passthrough(query),
    };
    let (body, etag) = packager.playlist(&request, &format!("{name}/hls/"), &media_query);
    drop(lease);
    let len = body.len();
    let mut response = tagged(&client, &etag, Body::from(body), len, false);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.apple.mpegurl"),
    );
    // A blocking request names what it waited for, so a cache may keep its answer a while;
    // a plain reload is fresh for about a part.
    let max_age = if request.msn.is_some() {
        "public, max-age=30"
    } else {
        "public, max-age=1"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(max_age));
    response
}

/// What `/APP/NAME/hls/FILE` names.
#[derive(Debug, PartialEq, Eq)]
enum Media {
    Init(String),
    Segment(u64),
    Part(u64, usize),
}

fn media_name(file: &str) -> Option<Media> {
    if file.starts_with("init-") && file.ends_with(".mp4") && file.len() < 64 {
        return Some(Media::Init(file.to_owned()));
    }
    let stem = file.strip_suffix(".m4s")?;
    match stem.split_once('.') {
        Some((msn, part)) => Some(Media::Part(msn.parse().ok()?, part.parse().ok()?)),
        None => Some(Media::Segment(stem.parse().ok()?)),
    }
}

/// `GET /APP/NAME/hls/FILE`: an initialization segment, a segment or a part. A part or segment
/// about to be written (the playlist's preload hint) is waited for.
pub(crate) async fn serve_media(
    ctx: &EdgeContext,
    client: Client<'_>,
    (app, name, file): (&str, &str, &str),
    query: &str,
    head: bool,
) -> Response {
    let key = match StreamKey::new(app, name) {
        Ok(key) => key,
        Err(e) => return plain(StatusCode::NOT_FOUND, e.to_string()),
    };
    let Some(media) = media_name(file) else {
        return plain(StatusCode::NOT_FOUND, format!("no such HLS file: {file}"));
    };
    let lease = match lease(ctx, &key, query, client.peer, true).await {
        Ok(lease) => lease,
        Err(response) => return response,
    };
    let packager = lease.hls();
    let limit = block_limit(packager.config());
    let gone = || {
        plain(
            StatusCode::NOT_FOUND,
            format!("{file} is not (or no longer) kept"),
        )
    };
    let bytes = match &media {
        Media::Init(name) => match packager.init(name) {
            Some(b) => b,
            None => return gone(),
        },
        &Media::Segment(msn) => {
            let now = *packager.progress().borrow();
            if msn > now.msn + 1 {
                return gone();
            }
            if let Err(r) = wait_until(packager, limit, |p| {
                p.msn > msn || (p.msn == msn && p.complete)
            })
            .await
            {
                return r;
            }
            match packager.whole(msn) {
                Some(b) => b,
                None => return gone(),
            }
        }
        &Media::Part(msn, part) => {
            let now = *packager.progress().borrow();
            let next = (msn == now.msn && part <= now.parts) || (msn == now.msn + 1 && part == 0);
            if !next && packager.part(msn, part).is_none() {
                return gone();
            }
            if let Err(r) = wait_until(packager, limit, |p| {
                p.msn > msn || (p.msn == msn && (p.parts > part || p.complete))
            })
            .await
            {
                return r;
            }
            match packager.part(msn, part) {
                Some(b) => b,
                None => return gone(),
            }
        }
    };
    drop(lease);
    if !matches!(media, Media::Init(_)) {
        ctx.hls_sessions
            .served_media(client.peer, client.user_agent, &key);
    }
    corriente_media::metrics::BYTES_OUT
        .with_label_values(&["hls"])
        .inc_by(bytes.len() as u64);
    let len = bytes.len();
    // Names are never reused (numbers grow across publications; init names are digests), so
    // the name is the entity tag and the bytes are immutable.
    let etag = format!("\"{file}\"");
    let mut response = tagged(&client, &etag, Body::from(bytes), len, head);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

/// HLS viewers: a viewer makes many requests, and is counted once. A session is the viewer's
/// address, `User-Agent` and stream, and the `session` query parameter of its playlist URL
/// when it has one (the player page adds a random one, so that two tabs of one browser are two
/// viewers; it is kept off media URIs, which caches share); alive while it keeps asking
/// (within [`SESSION_IDLE`]). `corriente_viewers{protocol="hls"}` counts sessions; time to
/// first frame runs from a session's first playlist request to its first part or segment
/// (media requests carry no session: each one counts for the oldest session of its address,
/// agent and stream still waiting for media).
pub(crate) struct Sessions {
    map: std::sync::Mutex<SessionMap>,
}

#[derive(Default)]
struct SessionMap {
    groups: std::collections::HashMap<SessionGroup, Vec<Session>>,
    /// Sessions in all groups.
    count: usize,
}

/// Sessions that media requests cannot tell apart: an address, a `User-Agent` digest, a stream.
type SessionGroup = (std::net::IpAddr, u64, StreamKey);

struct Session {
    /// Digest of the playlist URL's `session` parameter (0: none).
    id: u64,
    first: tokio::time::Instant,
    last: tokio::time::Instant,
    media_served: bool,
}

/// A session that asks for nothing this long is over.
pub const SESSION_IDLE: Duration = Duration::from_secs(15);

/// Most sessions tracked per edge (an address flooding with user agents cannot grow it past).
const MAX_SESSIONS: usize = 100_000;

/// Most sessions of one address, agent and stream (tabs of one browser).
const MAX_GROUP: usize = 64;

/// The playlist query parameter naming a viewer's session.
pub const SESSION_PARAM: &str = "session";

/// The digest of a query's `session` parameter (0 without one).
fn session_id(query: &str) -> u64 {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(SESSION_PARAM)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
        .map_or(0, |v| fnv1a_parts(&[v.as_bytes()]).max(1))
}

impl Sessions {
    pub fn new() -> Self {
        Self {
            map: std::sync::Mutex::new(SessionMap::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SessionMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn group(peer: std::net::IpAddr, user_agent: &str, key: &StreamKey) -> SessionGroup {
        (peer, fnv1a_parts(&[user_agent.as_bytes()]), key.clone())
    }

    /// A playlist request with `query`.
    pub fn seen(&self, peer: std::net::IpAddr, user_agent: &str, key: &StreamKey, query: &str) {
        let now = tokio::time::Instant::now();
        let id = session_id(query);
        let mut map = self.lock();
        let full = map.count >= MAX_SESSIONS;
        let group = Self::group(peer, user_agent, key);
        if let Some(sessions) = map.groups.get_mut(&group) {
            if let Some(s) = sessions.iter_mut().find(|s| s.id == id) {
                s.last = now;
                return;
            }
            if full || sessions.len() >= MAX_GROUP {
                return;
            }
            sessions.push(Session::new(id, now));
        } else {
            if full {
                return;
            }
            map.groups.insert(group, vec![Session::new(id, now)]);
        }
        map.count += 1;
        corriente_media::metrics::VIEWERS
            .with_label_values(&["hls"])
            .inc();
    }

    /// A part or segment served.
    pub fn served_media(&self, peer: std::net::IpAddr, user_agent: &str, key: &StreamKey) {
        let now = tokio::time::Instant::now();
        let mut map = self.lock();
        let Some(sessions) = map.groups.get_mut(&Self::group(peer, user_agent, key)) else {
            return;
        };
        for s in sessions.iter_mut() {
            s.last = now;
        }
        if let Some(s) = sessions
            .iter_mut()
            .filter(|s| !s.media_served)
            .min_by_key(|s| s.first)
        {
            s.media_served = true;
            corriente_media::metrics::time_to_first_frame(corriente_media::metrics::Protocol::Hls)
                .observe((now - s.first).as_secs_f64());
        }
    }

    /// HLS viewers per stream.
    pub fn per_stream(&self) -> std::collections::HashMap<StreamKey, u32> {
        let mut out = std::collections::HashMap::new();
        for ((_, _, key), sessions) in &self.lock().groups {
            *out.entry(key.clone()).or_insert(0) += sessions.len() as u32;
        }
        out
    }

    /// Ends the sessions idle for [`SESSION_IDLE`].
    pub fn sweep(&self) {
        let now = tokio::time::Instant::now();
        let mut map = self.lock();
        let mut ended = 0;
        map.groups.retain(|_, sessions| {
            let before = sessions.len();
            sessions.retain(|s| now - s.last < SESSION_IDLE);
            ended += before - sessions.len();
            !sessions.is_empty()
        });
        map.count -= ended;
        corriente_media::metrics::VIEWERS
            .with_label_values(&["hls"])
            .sub(ended as i64);
    }
}

impl Session {
    fn new(id: u64, now: tokio::time::Instant) -> Self {
        Self {
            id,
            first: now,
            last: now,
            media_served: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_requests_parse_and_wait_for_their_part() {
        let r = PlaylistRequest::parse("_HLS_msn=10&_HLS_part=2&_HLS_skip=YES").unwrap();
        assert_eq!((r.msn, r.part, r.skip), (Some(10), Some(2), true));
        assert!(PlaylistRequest::parse("_HLS_part=1").is_err());
        assert!(PlaylistRequest::parse("_HLS_msn=x").is_err());
    }

    /// An audio-only publication: AAC configuration, then `seconds` of 23 ms frames from
    /// media time `from_s`, segments starting at every second numbered from `first`.
    fn publish_from(p: &Packager, publication: Publication, first: u64, from_s: u32, seconds: u32) {
        use corriente_media::frame::FrameKind;
        let config = Frame::new(
            FrameKind::Audio,
            0,
            Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
            0,
        );
        p.push(publication, &config);
        let mut next_cut = from_s * 1000;
        let mut msn = first;
        for i in 0..(seconds * 1000 / 23) {
            let ts = from_s * 1000 + i * 23;
            let mut f = Frame::new(
                FrameKind::Audio,
                ts,
                Bytes::from(vec![0xaf, 1, 0x21, 0, 0, 0]),
                0,
            );
            if ts >= next_cut {
                f.segment = msn;
                msn += 1;
                next_cut += 1000;
            }
            p.push(publication, &f);
        }
    }

    fn publication(epoch: u64, started_at_ms: u64, discontinuity: u64) -> Publication {
        Publication {
            epoch,
            started_at_ms,
            discontinuity,
        }
    }

    fn publish(p: &Packager, publication: Publication, first: u64, seconds: u32) {
        publish_from(p, publication, first, 0, seconds);
    }

    fn render(p: &Packager) -> String {
        let (body, _) = p.playlist(&PlaylistRequest::default(), "", "");
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[test]
    fn a_failover_continues_the_playlist_after_gaps_and_a_discontinuity() {
        let p = Packager::new(HlsConfig {
            window: 20,
            ..HlsConfig::default()
        });
        p.enable();
        let a = publication(5, 1_000_000, 3);
        publish(&p, a, 100, 4);
        // The relay goes away mid-segment; the open segment stays open (hls.js holds a hint
        // for its next part) until the next publication's first frames close it.
        assert!(render(&p).contains("PRELOAD-HINT:TYPE=PART,URI=\"103."));
        // The next publication, numbered a few past the last report, one discontinuity on.
        let b = publication(9, 1_010_000, 4);
        publish(&p, b, 106, 3);
        let text = render(&p);
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:100\n"), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:3\n"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let uri = |name: &str| lines.iter().position(|l| *l == name).unwrap();
        // 104 and 105 were never made: gaps, then the discontinuity, then 106.
        let disc = lines
            .iter()
            .position(|l| *l == "#EXT-X-DISCONTINUITY")
            .expect("a discontinuity");
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
        assert!(uri("105.m4s") < disc && disc < uri("106.m4s"), "{text}");
        assert_eq!(text.matches("#EXT-X-GAP").count(), 2, "{text}");
        assert!(lines[uri("104.m4s") - 2] == "#EXT-X-GAP", "{text}");
        assert!(
            text.contains("#EXT-X-TARGETDURATION:2\n"),
            "gaps never raise it: {text}"
        );
        assert!(lines[uri("104.m4s") - 1] == "#EXTINF:1.012,", "{text}");
        assert!(lines[uri("105.m4s") - 2] == "#EXT-X-GAP", "{text}");
        assert!(uri("105.m4s") < uri("106.m4s") && uri("106.m4s") < uri("107.m4s"));
        // Gap segments are not served; the new publication's are.
        assert!(p.whole(104).is_none() && p.part(104, 0).is_none());
        assert!(p.whole(106).is_some());
        // A delta update never skips past the discontinuity.
        let (delta, _) = p.playlist(
            &PlaylistRequest {
                skip: true,
                ..PlaylistRequest::default()
            },
            "",
            "",
        );
        let delta = String::from_utf8(delta.to_vec()).unwrap();
        if delta.contains("EXT-X-SKIP") {
            assert!(delta.contains("#EXT-X-DISCONTINUITY\n"), "{delta}");
        }
    }

    #[test]
    fn frames_resent_by_a_relay_reconnect_are_not_packaged_twice() {
        let p = Packager::new(HlsConfig::default());
        p.enable();
        let a = publication(5, 1_000_000, 0);
        publish(&p, a, 100, 3);
        let before = render(&p);
        // The same publication from its start again: nothing changes until a new number.
        publish(&p, a, 100, 3);
        assert_eq!(render(&p), before);
        let whole = p.whole(101).unwrap();
        publish_from(&p, a, 102, 2, 2);
        let text = render(&p);
        assert!(
            text.contains("\n102.m4s") && text.contains("103.0.m4s"),
            "{text}"
        );
        assert_eq!(p.whole(101).unwrap(), whole);
        assert!(
            !text.contains("GAP") && !text.contains("#EXT-X-DISCONTINUITY\n"),
            "{text}"
        );
    }

    #[test]
    fn a_publication_that_does_not_follow_on_restarts_the_playlist() {
        let p = Packager::new(HlsConfig::default());
        p.enable();
        let a = publication(5, 1_000_000, 0);
        publish(&p, a, 100, 3);
        // A fresh numbering (the registry forgot the name): another discontinuity sequence.
        let b = publication(9, 2_000_000, 0);
        publish(&p, b, 20_000, 3);
        let text = render(&p);
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:20000\n"), "{text}");
        assert!(!text.contains("100.m4s") && !text.contains("GAP"), "{text}");
        assert!(!text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
        // Numbers too far ahead also restart, even one discontinuity on.
        let c = publication(11, 3_000_000, 1);
        publish(&p, c, 20_000 + MAX_GAP + 10, 2);
        let text = render(&p);
        assert!(
            text.contains(&format!(
                "#EXT-X-MEDIA-SEQUENCE:{}\n",
                20_000 + MAX_GAP + 10
            )),
            "{text}"
        );
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
    }

    #[test]
    fn sessions_count_tabs_apart_and_media_urls_never_carry_them() {
        assert_eq!(passthrough("token=t&session=ab12&_HLS_msn=3"), "token=t");
        assert_eq!(session_id("token=t"), 0);
        assert_ne!(session_id("session=ab12"), session_id("session=cd34"));
        let sessions = Sessions::new();
        let key = StreamKey::new("live", "a").unwrap();
        let ip: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        // Two tabs of one browser (one address, one agent), each reloading its playlist.
        for _ in 0..3 {
            sessions.seen(ip, "Chrome", &key, "session=ab12&_HLS_msn=1");
            sessions.seen(ip, "Chrome", &key, "session=cd34&_HLS_msn=1");
        }
        // A player without a session parameter counts once however often it asks.
        for _ in 0..3 {
            sessions.seen(ip, "VLC", &key, "");
        }
        assert_eq!(sessions.per_stream().get(&key), Some(&3));
        let map = sessions.lock();
        let tabs = &map.groups[&Sessions::group(ip, "Chrome", &key)];
        assert!(tabs.iter().all(|s| !s.media_served));
        drop(map);
        // Media requests carry no session: each serves the oldest session still waiting.
        sessions.served_media(ip, "Chrome", &key);
        let map = sessions.lock();
        let tabs = &map.groups[&Sessions::group(ip, "Chrome", &key)];
        assert_eq!(
            tabs.iter().map(|s| s.media_served).collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn dates_are_iso_8601_in_utc() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }
}
