//! Shared harness of the fuzz targets: how an input is cut into reads, the connection task's
//! side of a server session (what `origin/src/ingest.rs` and `edge/src/rtmp.rs` decide), and
//! what a stream hub does with every frame it is given (classify, inspect, mux).
//!
//! Invariant checks live here too: whatever Corriente writes in answer to a hostile peer must
//! decode again with Corriente's own decoders.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use corriente_core::access;
use corriente_core::key::{StreamKey, split_query};
use corriente_media::flv::{self, TagReader};
use corriente_media::info::{self, MediaInfo, metadata_tracks};
use corriente_media::mux::{Outputs, mux_frame};
use corriente_media::rtmp::message::Message;
use corriente_media::rtmp::{
    ChunkDecoder, ChunkLimits, ServerSession, SessionConfig, SessionEvent, SessionState,
};
use corriente_media::{Frame, FrameRole, Hub, HubConfig, HubWriter, spawn_hub};

/// Counts the bytes the Rust code has allocated, so a target can check that what an input
/// makes Corriente hold is proportional to the input (libFuzzer's `-malloc_limit_mb` only sees
/// one allocation at a time, and a fuzz input is far smaller than a real message may be).
pub struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// Most bytes held per input byte, on top of [`MEMORY_SLACK`]. Decoding legitimately costs a
/// few dozen bytes per input byte (an AMF0 null is one byte in, a 32-byte value out, in a
/// vector that may have doubled); what a lying length field makes a decoder reserve is not
/// bounded by the input at all.
pub const MEMORY_PER_BYTE: usize = 128;
/// Fixed allowance: buffers sized by configuration rather than by input.
pub const MEMORY_SLACK: usize = 1 << 20;

/// Runs `f` on an input of `len` bytes and fails if the memory it held at its peak exceeds
/// [`MEMORY_PER_BYTE`] per input byte plus [`MEMORY_SLACK`].
pub fn bounded_memory<R>(len: usize, f: impl FnOnce() -> R) -> R {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = f();
    let held = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let limit = MEMORY_PER_BYTE * len + MEMORY_SLACK;
    assert!(
        held <= limit,
        "{held} bytes held for a {len}-byte input (limit {limit})"
    );
    result
}

/// Cuts `data` into pieces the way a socket delivers them: `seed` picks the largest read
/// (from a byte at a time to 64 KiB) and a small PRNG the size of each read.
pub struct Reads<'a> {
    data: &'a [u8],
    state: u32,
    max: usize,
}

impl<'a> Reads<'a> {
    pub fn new(seed: u8, data: &'a [u8]) -> Self {
        const MAX: [usize; 8] = [16 << 10, 1, 7, 64, 512, 4096, 4096 + 17, 64 << 10];
        Self {
            data,
            state: u32::from(seed).wrapping_mul(2_654_435_761) | 1,
            max: MAX[usize::from(seed & 7)],
        }
    }
}

impl<'a> Iterator for Reads<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.data.is_empty() {
            return None;
        }
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let n = (1 + self.state as usize % self.max).min(self.data.len());
        let (piece, rest) = self.data.split_at(n);
        self.data = rest;
        Some(piece)
    }
}

/// Which connection task drives the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An origin's ingest (`origin/src/ingest.rs`): connect and publish are accepted, play is
    /// refused.
    Origin,
    /// An edge's RTMP playback (`edge/src/rtmp.rs`): play is accepted and the session keeps
    /// reading the viewer's messages.
    Edge,
}

/// The secret publish keys are checked against (`NAME?key=TOKEN`).
const SECRETS: &[&[u8]] = &[b"fuzz-secret"];

/// Drives a [`ServerSession`] with `data` (what a client sends after the handshake) delivered
/// in `seed`-chosen reads, answering its requests the way the connection tasks do. Frames go
/// through a [`HubStandIn`]; every byte the session writes must decode again.
pub fn drive_session(role: Role, seed: u8, data: &[u8]) {
    let mut session = ServerSession::new(SessionConfig::default());
    let mut input = BytesMut::new();
    let mut events = Vec::new();
    let mut hub = HubStandIn::new();
    let mut output = OutputCheck::new();
    let mut publishing = false;
    let mut playing = false;
    let now = 1_700_000_000_000_000;
    for read in Reads::new(seed, data) {
        input.extend_from_slice(read);
        if playing {
            // `RtmpPlayback::input` (edge/src/rtmp.rs): the viewer's messages are fed to the
            // session and only PlayStopped matters; nobody answers requests any more.
            if !feed_playing(&mut session, &mut input, now, &mut events, &mut output, read.len()) {
                return;
            }
            continue;
        }
        loop {
            if session.feed(&mut input, now, &mut events).is_err() {
                // The connection task closes the connection.
                return;
            }
            if events.is_empty() {
                break;
            }
            for event in events.drain(..) {
                answer(role, &mut session, event, &mut publishing, &mut hub);
            }
            output.check(session.take_output());
            if session.state() == &SessionState::Closed {
                return;
            }
            if session.state() == &SessionState::Playing {
                // The edge hands the connection to the fan-out (edge/src/viewer.rs): what
                // came with `play` is fed at once (edge/src/rtmp.rs `setup`), and playback
                // reads on from what is left (at most the start of an unfinished chunk).
                playing = true;
                if !feed_playing(&mut session, &mut input, now, &mut events, &mut output, 0) {
                    return;
                }
                break;
            }
        }
        output.check(session.take_output());
    }
}

/// One read of a playing viewer, as the edge handles it. False when the connection ends.
/// What the session answers must stay proportional to what the viewer sent (`read` bytes, or
/// what remained after `play`): the edge reads a viewer's input only while nothing waits to
/// be written to it, so answers a viewer does not read can never pile up — provided each read
/// makes a bounded answer.
fn feed_playing(
    session: &mut ServerSession,
    input: &mut BytesMut,
    now: u64,
    events: &mut Vec<SessionEvent>,
    output: &mut OutputCheck,
    read: usize,
) -> bool {
    let before = input.len().max(read);
    if session.feed(input, now, events).is_err() {
        return false;
    }
    if events
        .iter()
        .any(|e| matches!(e, SessionEvent::PlayStopped))
    {
        return false;
    }
    events.clear();
    let out = session.take_output();
    assert!(
        out.len() <= 4 * before + 4096,
        "{} bytes of answers to {before} bytes of a viewer's input",
        out.len()
    );
    output.check(out);
    assert!(
        !session.is_waiting(),
        "a playing session waits for a decision nobody makes: the viewer's input would pile \
         up unread"
    );
    true
}

fn answer(
    role: Role,
    session: &mut ServerSession,
    event: SessionEvent,
    publishing: &mut bool,
    hub: &mut HubStandIn,
) {
    match event {
        SessionEvent::ConnectRequested { app, tc_url: _ } => match StreamKey::new(&app, "probe") {
            Ok(_) => session.accept_connect(),
            Err(e) => session.reject_connect(&e.to_string()),
        },
        SessionEvent::PublishRequested { name, .. } => {
            let (name, query) = split_query(&name);
            let key = match StreamKey::new(session.app(), name) {
                Ok(key) => key,
                Err(e) => {
                    session.reject_publish("NetStream.Publish.BadName", &e.to_string());
                    return;
                }
            };
            // Publish keys: checked, but a bad one does not stop the fuzzer reaching media.
            let secrets: Vec<Vec<u8>> = SECRETS.iter().map(|s| s.to_vec()).collect();
            let token = access::query_param(query, "key").unwrap_or("");
            let _ = access::verify(&secrets, "publish", &key.to_string(), token, 0);
            if role == Role::Edge || *publishing {
                session.reject_publish("NetStream.Publish.BadName", "refused");
            } else {
                *publishing = true;
                session.accept_publish();
            }
        }
        SessionEvent::PlayRequested { name } => {
            let (name, _query) = split_query(&name);
            match (role, StreamKey::new(session.app(), name)) {
                (Role::Edge, Ok(_)) => session.accept_play(),
                (Role::Edge, Err(e)) => {
                    session.reject_play("NetStream.Play.StreamNotFound", &e.to_string())
                }
                (Role::Origin, _) => session.reject_play("NetStream.Play.Failed", "origin"),
            }
        }
        SessionEvent::Frame(frame) => {
            assert!(*publishing, "a frame before publish was accepted");
            hub.push(&frame);
        }
        SessionEvent::PublishStopped => *publishing = false,
        SessionEvent::PlayStopped | SessionEvent::Ignored(_) => {}
    }
}

/// Decodes what a server session writes, as a client would: it must always be valid RTMP.
struct OutputCheck {
    decoder: ChunkDecoder,
    pending: BytesMut,
}

impl OutputCheck {
    fn new() -> Self {
        Self {
            decoder: ChunkDecoder::new(ChunkLimits::default()),
            pending: BytesMut::new(),
        }
    }

    fn check(&mut self, out: Bytes) {
        self.pending.extend_from_slice(&out);
        while let Some(raw) = self
            .decoder
            .decode(&mut self.pending)
            .expect("the session wrote an invalid chunk stream")
        {
            let message = Message::parse(&raw).expect("the session wrote an invalid message");
            if let Message::SetChunkSize(size) = message {
                self.decoder
                    .set_chunk_size(size)
                    .expect("the session announced a bad chunk size");
            }
        }
        assert!(
            self.pending.is_empty(),
            "the session wrote a partial message"
        );
    }
}

/// What a stream hub does with each frame (`media/src/hub.rs`): track declaration from
/// metadata, the media description, and muxing once per output format (the muxed bytes must
/// decode back to the frame), and a real hub the frames go through, with bounds small enough
/// for a fuzz input to reach: what it retains (ring, GOP cache, audio window) must stay within
/// them whatever the frames' timestamps, sizes and counts.
pub struct HubStandIn {
    media: MediaInfo,
    outputs: Outputs,
    flv: BytesMut,
    rtmp: BytesMut,
    hub: Hub,
    writer: HubWriter,
    /// The newest batch may exceed the bounds on its own (a frame is never split).
    largest_batch: usize,
}

/// The hub bounds of the fuzz harness, small enough for an input of at most 64 KiB to reach.
pub fn fuzz_hub() -> HubConfig {
    HubConfig {
        coalesce_window: std::time::Duration::ZERO,
        coalesce_max_bytes: 16 << 10,
        outputs: Outputs::viewers(4096),
        ring_capacity: 16,
        ring_max_bytes: 32 << 10,
        gop_max_bytes: 32 << 10,
        gop_max_frames: 64,
        audio_window: std::time::Duration::from_millis(500),
        audio_window_max_bytes: 16 << 10,
        audio_window_max_frames: 32,
        max_config_bytes: 4 << 10,
    }
}

impl Default for HubStandIn {
    fn default() -> Self {
        Self::new()
    }
}

impl HubStandIn {
    pub fn new() -> Self {
        let (hub, writer) = spawn_hub(
            StreamKey::new("live", "fuzz").expect("a valid name"),
            fuzz_hub(),
        );
        Self {
            media: MediaInfo::default(),
            outputs: Outputs::viewers(4096),
            flv: BytesMut::new(),
            rtmp: BytesMut::new(),
            hub,
            writer,
            largest_batch: 0,
        }
    }

    pub fn push(&mut self, frame: &Frame) {
        self.check_mux(frame);
        // The real hub: what it keeps stays within its bounds (plus the newest batch, and the
        // configuration block it brought).
        self.writer.push(frame.clone());
        let frame_cost = 3 * frame.payload.len() + 1024;
        self.largest_batch = self.largest_batch.max(frame_cost);
        let stats = self.hub.stats();
        let bounds = fuzz_hub();
        let limit = bounds.ring_max_bytes
            + bounds.gop_max_bytes.max(bounds.audio_window_max_bytes)
            + 2 * self.largest_batch
            + 2 * bounds.max_config_bytes;
        assert!(
            stats.retained_bytes <= limit,
            "the hub retains {} bytes (bounds {limit})",
            stats.retained_bytes
        );
        assert!(
            stats.gop_frames <= bounds.gop_max_frames.max(bounds.audio_window_max_frames) + 1,
            "the hub keeps {} GOP frames",
            stats.gop_frames
        );
    }

    fn check_mux(&mut self, frame: &Frame) {
        if frame.role() == FrameRole::Metadata {
            let _ = metadata_tracks(&frame.payload);
        }
        let _ = frame.is_config();
        let _ = frame.is_keyframe();
        info::observe(&mut self.media, frame);
        let _ = self.media.has_video();

        self.flv.clear();
        self.rtmp.clear();
        mux_frame(frame, self.outputs, &mut self.flv, &mut self.rtmp);

        // FLV: the tag reads back as the frame (tag bodies are at most 16 MiB - 1).
        if frame.payload.len() < 1 << 24 {
            let mut file = BytesMut::from(&flv::file_header(true, true)[..]);
            file.extend_from_slice(&self.flv);
            let tag = TagReader::new(1 << 24)
                .next_tag(&mut file)
                .expect("muxed FLV does not read back")
                .expect("muxed FLV tag is incomplete");
            assert_eq!(tag.tag_type, frame.kind.tag_type());
            assert_eq!(tag.body, frame.payload);
            assert!(file.is_empty());
        }
        // RTMP: the pre-chunked message decodes back as the frame (24-bit length field).
        if frame.payload.len() >= 1 << 24 {
            return;
        }
        let mut decoder = ChunkDecoder::new(ChunkLimits {
            max_message_size: u32::MAX >> 8,
            max_buffered: usize::MAX,
            ..ChunkLimits::default()
        });
        decoder
            .set_chunk_size(self.outputs.rtmp_chunk_size)
            .expect("chunk size");
        let raw = decoder
            .decode(&mut self.rtmp)
            .expect("muxed RTMP does not decode")
            .expect("muxed RTMP message is incomplete");
        assert_eq!(raw.type_id, frame.kind.tag_type());
        // Metadata goes out at timestamp 0 (`mux_frame`'s rule), everything else at its own.
        let timestamp = if frame.role() == FrameRole::Metadata {
            0
        } else {
            frame.timestamp
        };
        assert_eq!(raw.timestamp, timestamp);
        assert_eq!(raw.payload, frame.payload);
        assert!(self.rtmp.is_empty());
    }
}

/// Feeds `body` as an AMF0 data message (and as a command) to a session that is publishing,
/// as an encoder's `@setDataFrame` metadata or `onTextData` arrive.
pub fn publish_script_data(body: &[u8]) {
    use corriente_media::amf0::Amf0Value;
    use corriente_media::rtmp::chunk::encode_message;
    use corriente_media::rtmp::message::{type_id, write_command};

    let mut wire = BytesMut::new();
    write_command(
        &mut wire,
        128,
        0,
        "connect",
        1.0,
        Amf0Value::object([("app", Amf0Value::string("live"))]),
        vec![],
    );
    write_command(
        &mut wire,
        128,
        0,
        "createStream",
        2.0,
        Amf0Value::Null,
        vec![],
    );
    write_command(
        &mut wire,
        128,
        1,
        "publish",
        3.0,
        Amf0Value::Null,
        vec![Amf0Value::string("cam"), Amf0Value::string("live")],
    );
    encode_message(&mut wire, 5, 40, type_id::DATA_AMF0, 1, body, 128);
    encode_message(&mut wire, 3, 80, type_id::COMMAND_AMF0, 1, body, 128);
    drive_session(Role::Origin, 0, &wire);
}
