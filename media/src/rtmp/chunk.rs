//! The RTMP chunk stream: reassembles messages from interleaved chunks, and writes messages as
//! chunks.
//!
//! Corriente decodes chunks itself instead of using rml_rtmp's `ChunkDeserializer`, which keeps
//! one payload buffer for all chunk streams: legal interleaving of chunk streams (audio chunks
//! between the chunks of a large video message) underflows in debug builds and corrupts media in
//! release builds. Here every chunk stream has its own header state and partial payload, and
//! every size a peer declares is checked against limits before anything is buffered.
//!
//! The encoder writes a full (type 0) header for every message and type 3 headers for its
//! continuation chunks. Each message is then self-describing, so the same bytes are valid for
//! every viewer whatever was sent to them before: this is what lets a frame be chunked once
//! and written to every RTMP viewer.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest value the 24-bit timestamp field holds; at or above it the timestamp moves to the
/// extended field.
const EXTENDED_TIMESTAMP: u32 = 0x00ff_ffff;

/// Default chunk size before the peer changes it (RTMP specification).
pub const DEFAULT_CHUNK_SIZE: u32 = 128;

/// A complete RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub csid: u32,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

/// Bounds on what a peer may make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Largest chunk size a peer may set with SetChunkSize.
    pub max_chunk_size: u32,
    /// Largest message, in bytes.
    pub max_message_size: u32,
    /// Most bytes of unfinished messages held across all chunk streams.
    pub max_buffered: usize,
    /// Most chunk streams with state at once.
    pub max_chunk_streams: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        Self {
            max_chunk_size: 16_777_215,
            max_message_size: 8 << 20,
            max_buffered: 16 << 20,
            max_chunk_streams: 64,
        }
    }
}

/// Why a chunk stream was refused. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size {0} is outside 1..={1}")]
    BadChunkSize(u32, u32),
    #[error("message of {0} bytes is over the {1} byte limit")]
    MessageTooLarge(u32, u32),
    #[error("more than {0} bytes of unfinished messages")]
    TooMuchBuffered(usize),
    #[error("more than {0} chunk streams in use")]
    TooManyChunkStreams(usize),
    #[error("chunk stream {0} continues a message it never started (header type {1} first)")]
    NoPriorHeader(u32, u8),
}

#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    /// The last timestamp field: absolute for type 0, a delta for types 1 and 2. A type 3 chunk
    /// that starts a new message adds it again (as ffmpeg and SRS do).
    timestamp_field: u32,
    extended: bool,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The message being reassembled, at the front of a block that later messages of this
    /// chunk stream reuse: a finished message is split off, its payload keeps the block alive,
    /// and the rest of the block holds the next one. One allocation serves many messages.
    partial: BytesMut,
    in_progress: bool,
    /// Payload bytes of the messages finished on this chunk stream (saturating): a new block is
    /// never larger than this, so no peer makes the decoder allocate far ahead of its data.
    finished_bytes: usize,
}

/// Largest block a chunk stream reassembles its messages into (a larger message gets a block of
/// its own). Many audio and video messages of a live stream share one such allocation.
const BLOCK: usize = 64 << 10;

/// Reassembles RTMP messages from chunks.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    limits: ChunkLimits,
    streams: HashMap<u32, ChunkStream>,
    buffered: usize,
}

impl ChunkDecoder {
    pub fn new(limits: ChunkLimits) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            limits,
            streams: HashMap::new(),
            buffered: 0,
        }
    }

    /// Applies the peer's SetChunkSize.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size > self.limits.max_chunk_size {
            return Err(ChunkError::BadChunkSize(size, self.limits.max_chunk_size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Applies the peer's Abort: drops the unfinished message on `csid`.
    pub fn abort(&mut self, csid: u32) {
        if let Some(stream) = self.streams.get_mut(&csid) {
            self.buffered -= stream.partial.len();
            stream.partial.clear();
            stream.in_progress = false;
        }
    }

    /// Takes the next complete message out of `input`. Returns `Ok(None)` when `input` holds
    /// no complete message yet; partial chunks stay in `input` until more bytes arrive.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            let Some(header) = self.parse_header(input)? else {
                return Ok(None);
            };
            if let Some(message) = self.consume_chunk(input, header)? {
                return Ok(Some(message));
            }
        }
    }

    /// Parses the header of the next chunk without consuming anything. `None` when the whole
    /// chunk (header and payload) is not in `input` yet.
    fn parse_header(&mut self, input: &[u8]) -> Result<Option<ChunkHeader>, ChunkError> {
        let Some(&first) = input.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3f {
            0 => match input.get(1) {
                Some(b) => (64 + u32::from(*b), 2),
                None => return Ok(None),
            },
            1 => match input.get(1..3) {
                Some(b) => (64 + u32::from(b[0]) + 256 * u32::from(b[1]), 3),
                None => return Ok(None),
            },
            id => (u32::from(id), 1),
        };
        let header_len = [11, 7, 3, 0][fmt as usize];
        let Some(h) = input.get(pos..pos + header_len) else {
            return Ok(None);
        };
        let prior = self.streams.get(&csid);
        if fmt != 0 && prior.is_none() {
            return Err(ChunkError::NoPriorHeader(csid, fmt));
        }
        if prior.is_none() && self.streams.len() >= self.limits.max_chunk_streams {
            return Err(ChunkError::TooManyChunkStreams(
                self.limits.max_chunk_streams,
            ));
        }
        let u24 = |b: &[u8]| u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let mut header = ChunkHeader {
            fmt,
            csid,
            timestamp_field: None,
            length: None,
            type_id: None,
            stream_id: None,
            header_len: 0,
            extended: false,
        };
        if fmt <= 2 {
            header.timestamp_field = Some(u24(&h[0..3]));
        }
        if fmt <= 1 {
            header.length = Some(u24(&h[3..6]));
            header.type_id = Some(h[6]);
        }
        if fmt == 0 {
            header.stream_id = Some(u32::from_le_bytes([h[7], h[8], h[9], h[10]]));
        }
        pos += header_len;
        header.extended = match header.timestamp_field {
            Some(field) => field == EXTENDED_TIMESTAMP,
            None => prior.is_some_and(|s| s.extended),
        };
        if header.extended {
            let Some(ext) = input.get(pos..pos + 4) else {
                return Ok(None);
            };
            let ext = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]);
            if fmt <= 2 {
                header.timestamp_field = Some(ext);
            }
            pos += 4;
        }
        header.header_len = pos;

        let length = header.length.or(prior.map(|s| s.length)).unwrap_or(0);
        if length > self.limits.max_message_size {
            return Err(ChunkError::MessageTooLarge(
                length,
                self.limits.max_message_size,
            ));
        }
        let continuing = fmt == 3 && prior.is_some_and(|s| s.in_progress);
        let already = if continuing {
            prior.map_or(0, |s| s.partial.len())
        } else {
            0
        };
        let payload = (length as usize - already).min(self.chunk_size as usize);
        if input.len() < pos + payload {
            return Ok(None);
        }
        if !continuing && self.buffered + payload > self.limits.max_buffered {
            return Err(ChunkError::TooMuchBuffered(self.limits.max_buffered));
        }
        Ok(Some(header))
    }

    fn consume_chunk(
        &mut self,
        input: &mut BytesMut,
        header: ChunkHeader,
    ) -> Result<Option<RawMessage>, ChunkError> {
        let stream = self.streams.entry(header.csid).or_default();
        let continuing = header.fmt == 3 && stream.in_progress;
        if !continuing {
            if stream.in_progress {
                // A new header before the previous message on this chunk stream was complete:
                // drop the unfinished one, as ffmpeg does.
                self.buffered -= stream.partial.len();
                stream.partial.clear();
            }
            match header.fmt {
                0 => {
                    let field = header.timestamp_field.unwrap_or(0);
                    stream.timestamp = field;
                    stream.timestamp_field = field;
                }
                1 | 2 => {
                    let field = header.timestamp_field.unwrap_or(0);
                    stream.timestamp = stream.timestamp.wrapping_add(field);
                    stream.timestamp_field = field;
                }
                _ => {
                    stream.timestamp = stream.timestamp.wrapping_add(stream.timestamp_field);
                }
            }
            if let Some(length) = header.length {
                stream.length = length;
            }
            if let Some(type_id) = header.type_id {
                stream.type_id = type_id;
            }
            if let Some(stream_id) = header.stream_id {
                stream.stream_id = stream_id;
            }
            if header.fmt <= 2 {
                stream.extended = header.extended;
            }
            stream.in_progress = true;
            // Room for the whole message when it is small next to what the peer has sent (its
            // first chunk): never more than eight times what arrived, so a peer declaring huge
            // messages cannot make us allocate ahead of its data. The block left over from the
            // previous message usually has it; otherwise a new block for about sixteen such
            // messages, no larger than what this chunk stream has delivered so far nor than
            // `BLOCK` (a block stays alive as long as any message in it: small messages get
            // small blocks).
            let first_chunk = (stream.length as usize).min(self.chunk_size as usize);
            let room = (stream.length as usize).min(first_chunk.max(512) * 8);
            if stream.partial.capacity() < room {
                let block = room.max(stream.finished_bytes.min(BLOCK).min(room * 16));
                stream.partial = BytesMut::with_capacity(block);
            }
        }
        input.advance(header.header_len);
        let payload = (stream.length as usize - stream.partial.len()).min(self.chunk_size as usize);
        stream.partial.extend_from_slice(&input[..payload]);
        input.advance(payload);
        self.buffered += payload;
        if stream.partial.len() < stream.length as usize {
            return Ok(None);
        }
        stream.in_progress = false;
        self.buffered -= stream.partial.len();
        stream.finished_bytes = stream.finished_bytes.saturating_add(stream.partial.len());
        Ok(Some(RawMessage {
            csid: header.csid,
            timestamp: stream.timestamp,
            type_id: stream.type_id,
            stream_id: stream.stream_id,
            payload: stream.partial.split().freeze(),
        }))
    }
}

#[derive(Debug)]
struct ChunkHeader {
    fmt: u8,
    csid: u32,
    timestamp_field: Option<u32>,
    length: Option<u32>,
    type_id: Option<u8>,
    stream_id: Option<u32>,
    extended: bool,
    header_len: usize,
}

/// Appends `payload` as one message: a type 0 chunk, then type 3 chunks of at most
/// `chunk_size` bytes each. `csid` must be 2..=63.
pub fn encode_message(
    out: &mut BytesMut,
    csid: u8,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: usize,
) {
    debug_assert!((2..64).contains(&csid));
    let chunk_size = chunk_size.max(1);
    let extended = timestamp >= EXTENDED_TIMESTAMP;
    let chunks = payload.len().div_ceil(chunk_size).max(1);
    out.reserve(12 + if extended { 4 } else { 0 } + payload.len() + (chunks - 1) * 5);
    out.put_u8(csid & 0x3f);
    let field = if extended {
        EXTENDED_TIMESTAMP
    } else {
        timestamp
    };
    out.put_slice(&field.to_be_bytes()[1..]);
    out.put_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.put_u8(type_id);
    out.put_u32_le(stream_id);
    if extended {
        out.put_u32(timestamp);
    }
    for (i, piece) in payload.chunks(chunk_size).enumerate() {
        if i > 0 {
            out.put_u8(0xc0 | (csid & 0x3f));
            if extended {
                out.put_u32(timestamp);
            }
        }
        out.put_slice(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut ChunkDecoder, bytes: &[u8]) -> Vec<RawMessage> {
        let mut input = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = decoder.decode(&mut input).unwrap() {
            out.push(m);
        }
        assert!(input.is_empty(), "{} bytes left over", input.len());
        out
    }

    #[test]
    fn roundtrips_messages_split_into_chunks() {
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        encode_message(&mut buf, 6, 1234, 9, 1, &payload, 128);
        encode_message(&mut buf, 4, 0x0100_0000, 8, 1, &payload[..300], 128);
        let mut decoder = ChunkDecoder::new(ChunkLimits::default());
        let messages = decode_all(&mut decoder, &buf);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].payload, &payload[..]);
        assert_eq!((messages[0].timestamp, messages[0].type_id), (1234, 9));
        assert_eq!(messages[1].timestamp, 0x0100_0000, "extended timestamp");
        assert_eq!(messages[1].payload, &payload[..300]);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut buf = BytesMut::new();
        encode_message(&mut buf, 6, 40, 9, 1, &[7u8; 700], 128);
        let mut decoder = ChunkDecoder::new(ChunkLimits::default());
        let mut input = BytesMut::new();
        let mut got = None;
        for b in buf.iter() {
            input.put_u8(*b);
            if let Some(m) = decoder.decode(&mut input).unwrap() {
                got = Some(m);
            }
        }
        assert_eq!(got.unwrap().payload.len(), 700);
    }

    /// Interleaved chunk streams are legal RTMP: rml_rtmp's deserializer panics (debug) or
    /// corrupts the payload (release) on exactly this input.
    #[test]
    fn keeps_interleaved_chunk_streams_apart() {
        let video: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let audio = [0xaf, 0x01, 0x21, 0x22, 0x23];
        let mut v = BytesMut::new();
        encode_message(&mut v, 6, 100, 9, 1, &video, 128);
        let mut a = BytesMut::new();
        encode_message(&mut a, 4, 101, 8, 1, &audio, 128);
        // First video chunk (12 + 128 bytes), the whole audio message, then the rest of the video.
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&v[..140]);
        wire.extend_from_slice(&a);
        wire.extend_from_slice(&v[140..]);
        let mut decoder = ChunkDecoder::new(ChunkLimits::default());
        let messages = decode_all(&mut decoder, &wire);
        assert_eq!(messages.len(), 2);
        assert_eq!(
            (messages[0].type_id, &messages[0].payload[..]),
            (8, &audio[..])
        );
        assert_eq!(
            (messages[1].type_id, &messages[1].payload[..]),
            (9, &video[..])
        );
    }

    #[test]
    fn follows_header_compression() {
        // Type 0 at t=1000, type 2 with delta 20, then type 3 starting a new message: +20.
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[0x04, 0x00, 0x03, 0xe8, 0, 0, 2, 8, 1, 0, 0, 0, 0xaa, 0xbb]);
        wire.extend_from_slice(&[0x84, 0x00, 0x00, 20, 0xcc, 0xdd]);
        wire.extend_from_slice(&[0xc4, 0xee, 0xff]);
        // Type 1: new length and type, delta 5.
        wire.extend_from_slice(&[0x44, 0x00, 0x00, 5, 0, 0, 1, 9, 0x11]);
        let mut decoder = ChunkDecoder::new(ChunkLimits::default());
        let m = decode_all(&mut decoder, &wire);
        let ts: Vec<u32> = m.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![1000, 1020, 1040, 1045]);
        assert_eq!(
            (m[3].type_id, m[3].stream_id, &m[3].payload[..]),
            (9, 1, &[0x11][..])
        );
    }

    /// Messages of a chunk stream are reassembled into shared blocks, not one allocation each,
    /// and a block is never larger than what the chunk stream has delivered (or its message).
    #[test]
    fn messages_of_a_chunk_stream_share_blocks() {
        let mut wire = BytesMut::new();
        for i in 0..200u32 {
            encode_message(&mut wire, 6, i * 33, 9, 1, &[i as u8; 1000], 4096);
            encode_message(&mut wire, 4, i * 33, 8, 1, &[0xaf; 300], 4096);
        }
        let mut decoder = ChunkDecoder::new(ChunkLimits::default());
        decoder.set_chunk_size(4096).unwrap();
        let messages = decode_all(&mut decoder, &wire);
        assert_eq!(messages.len(), 400);
        for csid in [4, 6] {
            let payloads: Vec<&Bytes> = messages
                .iter()
                .filter(|m| m.csid == csid)
                .map(|m| &m.payload)
                .collect();
            let blocks = 1 + payloads
                .windows(2)
                .filter(|w| w[0].as_ptr().wrapping_add(w[0].len()) != w[1].as_ptr())
                .count();
            // One allocation per message would make 200.
            assert!(blocks <= 20, "chunk stream {csid}: {blocks} blocks");
        }
        assert!(messages.iter().enumerate().all(|(i, m)| {
            let n = (i / 2) as u8;
            if m.csid == 6 {
                m.payload.iter().all(|b| *b == n)
            } else {
                m.payload.iter().all(|b| *b == 0xaf)
            }
        }));
        // The first message of a chunk stream gets a block of its own size, no more.
        let mut first = BytesMut::new();
        encode_message(&mut first, 5, 0, 9, 1, &[1u8; 20], 128);
        let mut input = first.clone();
        let mut decoder = ChunkDecoder::new(ChunkLimits::default());
        assert!(decoder.decode(&mut input).unwrap().is_some());
        assert_eq!(decoder.streams[&5].partial.capacity(), 0);
    }

    #[test]
    fn refuses_what_exceeds_limits() {
        let limits = ChunkLimits {
            max_message_size: 1000,
            ..ChunkLimits::default()
        };
        let mut decoder = ChunkDecoder::new(limits);
        let mut big = BytesMut::new();
        encode_message(&mut big, 6, 0, 9, 1, &[0u8; 1001], 4096);
        assert_eq!(
            decoder.decode(&mut big),
            Err(ChunkError::MessageTooLarge(1001, 1000))
        );
        assert!(matches!(
            decoder.set_chunk_size(0),
            Err(ChunkError::BadChunkSize(0, _))
        ));
        assert!(decoder.set_chunk_size(u32::MAX).is_err());
        // A continuation header on a chunk stream that never had a full one.
        let mut orphan = BytesMut::from(&[0xc5u8, 1, 2, 3][..]);
        assert_eq!(
            ChunkDecoder::new(ChunkLimits::default()).decode(&mut orphan),
            Err(ChunkError::NoPriorHeader(5, 3))
        );
    }

    #[test]
    fn caps_unfinished_messages_across_chunk_streams() {
        let limits = ChunkLimits {
            max_buffered: 1000,
            ..ChunkLimits::default()
        };
        let mut decoder = ChunkDecoder::new(limits);
        let mut wire = BytesMut::new();
        // Start 20 messages of 5000 bytes each on different chunk streams, 128 bytes each.
        for csid in 3..23u8 {
            let mut m = BytesMut::new();
            encode_message(&mut m, csid, 0, 9, 1, &[1u8; 5000], 128);
            wire.extend_from_slice(&m[..12 + 128]);
        }
        let err = loop {
            match decoder.decode(&mut wire) {
                Ok(None) => panic!("limit not enforced"),
                Ok(Some(_)) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err, ChunkError::TooMuchBuffered(1000));
    }
}
