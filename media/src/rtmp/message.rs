//! RTMP messages: parsing what a peer sends (protocol control, user control, commands, data,
//! media, aggregates) and writing the control and command messages Corriente sends.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::chunk::{RawMessage, encode_message};
use crate::amf0::{self, Amf0Error, Amf0Value};

/// Message type ids.
pub mod type_id {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const SHARED_OBJECT_AMF3: u8 = 16;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const SHARED_OBJECT_AMF0: u8 = 19;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

/// Chunk stream ids Corriente writes on. Every message carries a full header, so these only
/// need to be distinct per kind to keep players that look at them happy.
pub mod csid {
    pub const CONTROL: u8 = 2;
    pub const COMMAND: u8 = 3;
    pub const AUDIO: u8 = 4;
    pub const SCRIPT: u8 = 5;
    pub const VIDEO: u8 = 6;
}

/// The message stream id every Corriente session hands out from `createStream` (as nginx-rtmp
/// and SRS do), so pre-chunked media is valid for every viewer.
pub const MEDIA_STREAM_ID: u32 = 1;

/// A parsed inbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    SetChunkSize(u32),
    Abort(u32),
    Acknowledgement(u32),
    UserControl(UserControl),
    WindowAckSize(u32),
    SetPeerBandwidth(u32),
    Audio(Bytes),
    Video(Bytes),
    /// AMF0 script data, raw (validated by whoever uses it).
    Data(Bytes),
    Command(Command),
    Aggregate(Bytes),
    /// Shared objects and anything else Corriente ignores.
    Ignored(u8),
}

/// An AMF0 command: `connect`, `publish`, `play`, `_result`, `onStatus`, ...
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub transaction_id: f64,
    pub object: Amf0Value,
    pub args: Vec<Amf0Value>,
}

impl Command {
    /// The first string argument (stream names of `publish`, `play`, `FCPublish`).
    pub fn string_arg(&self, index: usize) -> Option<&str> {
        self.args.get(index).and_then(Amf0Value::as_str)
    }

    pub fn number_arg(&self, index: usize) -> Option<f64> {
        self.args.get(index).and_then(Amf0Value::as_number)
    }
}

/// User control events (message type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserControl {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength { stream_id: u32, millis: u32 },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
    Other(u16),
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message type {0} is {1} bytes, too short")]
    TooShort(u8, usize),
    #[error("bad AMF0 in a command or data message: {0}")]
    Amf0(#[from] Amf0Error),
    #[error("command message without a name")]
    CommandWithoutName,
    #[error("aggregate message with a truncated or oversized sub-message")]
    BadAggregate,
}

impl Message {
    /// Parses a complete message.
    pub fn parse(raw: &RawMessage) -> Result<Self, MessageError> {
        let p = &raw.payload;
        let u32_at = |offset: usize| -> Result<u32, MessageError> {
            p.get(offset..offset + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(MessageError::TooShort(raw.type_id, p.len()))
        };
        Ok(match raw.type_id {
            type_id::SET_CHUNK_SIZE => Message::SetChunkSize(u32_at(0)? & 0x7fff_ffff),
            type_id::ABORT => Message::Abort(u32_at(0)?),
            type_id::ACKNOWLEDGEMENT => Message::Acknowledgement(u32_at(0)?),
            type_id::WINDOW_ACK_SIZE => Message::WindowAckSize(u32_at(0)?),
            type_id::SET_PEER_BANDWIDTH => Message::SetPeerBandwidth(u32_at(0)?),
            type_id::USER_CONTROL => {
                let event = p
                    .get(0..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .ok_or(MessageError::TooShort(raw.type_id, p.len()))?;
                let arg = u32_at(2);
                Message::UserControl(match event {
                    0 => UserControl::StreamBegin(arg?),
                    1 => UserControl::StreamEof(arg?),
                    2 => UserControl::StreamDry(arg?),
                    3 => UserControl::SetBufferLength {
                        stream_id: arg?,
                        millis: u32_at(6)?,
                    },
                    4 => UserControl::StreamIsRecorded(arg?),
                    6 => UserControl::PingRequest(arg?),
                    7 => UserControl::PingResponse(arg?),
                    other => UserControl::Other(other),
                })
            }
            type_id::AUDIO => Message::Audio(raw.payload.clone()),
            type_id::VIDEO => Message::Video(raw.payload.clone()),
            type_id::DATA_AMF0 => Message::Data(raw.payload.clone()),
            // AMF3 data and commands start with a format byte and are then AMF0 in practice.
            type_id::DATA_AMF3 => Message::Data(raw.payload.slice(p.len().min(1)..)),
            type_id::COMMAND_AMF0 => Message::Command(parse_command(p)?),
            type_id::COMMAND_AMF3 => Message::Command(parse_command(p.get(1..).unwrap_or(&[]))?),
            type_id::AGGREGATE => Message::Aggregate(raw.payload.clone()),
            other => Message::Ignored(other),
        })
    }
}

fn parse_command(body: &[u8]) -> Result<Command, MessageError> {
    let mut values = amf0::decode_all(body)?.into_iter();
    let name = match values.next() {
        Some(Amf0Value::String(name)) => name,
        _ => return Err(MessageError::CommandWithoutName),
    };
    let transaction_id = values.next().and_then(|v| v.as_number()).unwrap_or(0.0);
    let object = values.next().unwrap_or(Amf0Value::Null);
    Ok(Command {
        name,
        transaction_id,
        object,
        args: values.collect(),
    })
}

/// One message inside an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubMessage {
    pub type_id: u8,
    pub timestamp: u32,
    pub payload: Bytes,
}

/// Splits an aggregate message (type 22) into its sub-messages. Their timestamps are rebased
/// on the aggregate's own timestamp, as the specification asks.
pub fn split_aggregate(timestamp: u32, body: &Bytes) -> Result<Vec<SubMessage>, MessageError> {
    let mut rest = body.clone();
    let mut out = Vec::new();
    let mut first_ts = None;
    while !rest.is_empty() {
        if rest.len() < 11 {
            return Err(MessageError::BadAggregate);
        }
        let tag_type = rest[0] & 0x1f;
        let size = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        let ts = u32::from_be_bytes([rest[7], rest[4], rest[5], rest[6]]);
        if rest.len() < 11 + size {
            return Err(MessageError::BadAggregate);
        }
        rest.advance(11);
        let payload = rest.split_to(size);
        // The back pointer; tolerate its absence at the very end.
        rest.advance(rest.len().min(4));
        let base = *first_ts.get_or_insert(ts);
        out.push(SubMessage {
            type_id: tag_type,
            timestamp: timestamp.wrapping_add(ts.wrapping_sub(base)),
            payload,
        });
    }
    Ok(out)
}

/// Appends a protocol control message (chunk stream 2, message stream 0).
fn control(out: &mut BytesMut, type_id: u8, body: &[u8]) {
    encode_message(out, csid::CONTROL, 0, type_id, 0, body, 128);
}

pub fn write_set_chunk_size(out: &mut BytesMut, size: u32) {
    control(out, type_id::SET_CHUNK_SIZE, &size.to_be_bytes());
}

pub fn write_window_ack_size(out: &mut BytesMut, size: u32) {
    control(out, type_id::WINDOW_ACK_SIZE, &size.to_be_bytes());
}

/// SetPeerBandwidth with the dynamic limit type.
pub fn write_set_peer_bandwidth(out: &mut BytesMut, size: u32) {
    let mut body = [0u8; 5];
    body[..4].copy_from_slice(&size.to_be_bytes());
    body[4] = 2;
    control(out, type_id::SET_PEER_BANDWIDTH, &body);
}

pub fn write_acknowledgement(out: &mut BytesMut, sequence: u32) {
    control(out, type_id::ACKNOWLEDGEMENT, &sequence.to_be_bytes());
}

pub fn write_user_control(out: &mut BytesMut, event: UserControl) {
    let mut body = BytesMut::with_capacity(10);
    let (code, arg, extra) = match event {
        UserControl::StreamBegin(id) => (0u16, id, None),
        UserControl::StreamEof(id) => (1, id, None),
        UserControl::StreamDry(id) => (2, id, None),
        UserControl::SetBufferLength { stream_id, millis } => (3, stream_id, Some(millis)),
        UserControl::StreamIsRecorded(id) => (4, id, None),
        UserControl::PingRequest(t) => (6, t, None),
        UserControl::PingResponse(t) => (7, t, None),
        UserControl::Other(code) => (code, 0, None),
    };
    body.put_u16(code);
    body.put_u32(arg);
    if let Some(extra) = extra {
        body.put_u32(extra);
    }
    control(out, type_id::USER_CONTROL, &body);
}

/// Appends an AMF0 command on the command chunk stream.
pub fn write_command(
    out: &mut BytesMut,
    chunk_size: usize,
    stream_id: u32,
    name: &str,
    transaction_id: f64,
    object: Amf0Value,
    args: Vec<Amf0Value>,
) {
    let mut body = BytesMut::with_capacity(128);
    amf0::encode(&Amf0Value::string(name), &mut body);
    amf0::encode(&Amf0Value::Number(transaction_id), &mut body);
    amf0::encode(&object, &mut body);
    amf0::encode_all(&args, &mut body);
    encode_message(
        out,
        csid::COMMAND,
        0,
        type_id::COMMAND_AMF0,
        stream_id,
        &body,
        chunk_size,
    );
}

/// Appends an `onStatus` command with the usual info object.
pub fn write_on_status(
    out: &mut BytesMut,
    chunk_size: usize,
    stream_id: u32,
    level: &str,
    code: &str,
    description: &str,
) {
    write_command(
        out,
        chunk_size,
        stream_id,
        "onStatus",
        0.0,
        Amf0Value::Null,
        vec![Amf0Value::object([
            ("level", Amf0Value::string(level)),
            ("code", Amf0Value::string(code)),
            ("description", Amf0Value::string(description)),
        ])],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::chunk::{ChunkDecoder, ChunkLimits};

    fn roundtrip(bytes: BytesMut) -> Message {
        let mut input = bytes;
        let raw = ChunkDecoder::new(ChunkLimits::default())
            .decode(&mut input)
            .unwrap()
            .unwrap();
        Message::parse(&raw).unwrap()
    }

    #[test]
    fn parses_what_it_writes() {
        let mut out = BytesMut::new();
        write_set_chunk_size(&mut out, 4096);
        assert_eq!(roundtrip(out), Message::SetChunkSize(4096));
        let mut out = BytesMut::new();
        write_user_control(&mut out, UserControl::PingRequest(77));
        assert_eq!(
            roundtrip(out),
            Message::UserControl(UserControl::PingRequest(77))
        );
        let mut out = BytesMut::new();
        write_command(
            &mut out,
            128,
            0,
            "connect",
            1.0,
            Amf0Value::object([("app", Amf0Value::string("live"))]),
            vec![],
        );
        match roundtrip(out) {
            Message::Command(c) => {
                assert_eq!((c.name.as_str(), c.transaction_id), ("connect", 1.0));
                assert_eq!(
                    c.object.property("app").and_then(Amf0Value::as_str),
                    Some("live")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_short_control_messages() {
        let raw = RawMessage {
            csid: 2,
            timestamp: 0,
            type_id: type_id::SET_CHUNK_SIZE,
            stream_id: 0,
            payload: Bytes::from_static(&[0, 1]),
        };
        assert_eq!(Message::parse(&raw), Err(MessageError::TooShort(1, 2)));
    }

    #[test]
    fn splits_aggregates() {
        let mut body = BytesMut::new();
        crate::flv::write_tag(&mut body, 9, 1000, &[0x17, 1, 0, 0, 0]);
        crate::flv::write_tag(&mut body, 8, 1023, &[0xaf, 1]);
        let subs = split_aggregate(5000, &body.freeze()).unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!((subs[0].type_id, subs[0].timestamp), (9, 5000));
        assert_eq!(
            (subs[1].type_id, subs[1].timestamp, &subs[1].payload[..]),
            (8, 5023, &[0xaf, 1][..])
        );
        assert_eq!(
            split_aggregate(
                0,
                &Bytes::from_static(&[9, 0, 0, 50, 0, 0, 0, 0, 0, 0, 0, 1])
            ),
            Err(MessageError::BadAggregate)
        );
    }
}
