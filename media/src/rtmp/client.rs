//! The RTMP client session: an IO-free state machine that publishes or plays one stream. Used
//! by the load generator and the end-to-end tests to speak RTMP as a real client does.

use bytes::{Bytes, BytesMut};

use super::chunk::{ChunkDecoder, ChunkLimits, encode_message};
use super::message::{self, Command, Message, UserControl, csid, split_aggregate, type_id};
use super::session::SessionError;
use crate::amf0::Amf0Value;
use crate::frame::{Frame, FrameKind};

/// Publish or play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    Publish,
    Play,
}

/// What the client learned.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// `NetStream.Publish.Start` or `NetStream.Play.Start`.
    Started,
    /// Any `onStatus` (including the one that started the stream).
    Status {
        level: String,
        code: String,
        description: String,
    },
    /// A frame of the played stream.
    Frame(Frame),
    /// The server ended the stream (`NetStream.Play.UnpublishNotify` or StreamEOF).
    Ended,
    /// The server refused a request (`_error` or an error-level status).
    Refused { code: String, description: String },
    /// The server answered a ping request of ours ([`ClientSession::ping`]).
    PingResponse(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connecting,
    CreatingStream,
    Starting,
    Active,
    Ended,
}

/// Client side of one RTMP connection, after the handshake.
#[derive(Debug)]
pub struct ClientSession {
    mode: ClientMode,
    name: String,
    decoder: ChunkDecoder,
    out: BytesMut,
    chunk_size: usize,
    step: Step,
    stream_id: u32,
    connect_txn: f64,
    create_txn: f64,
    bytes_in: u64,
    last_ack: u64,
    peer_window: u32,
}

impl ClientSession {
    /// Starts a session: queues SetChunkSize and `connect` to `app`.
    pub fn new(mode: ClientMode, app: &str, tc_url: &str, name: &str, chunk_size: u32) -> Self {
        Self::with_limits(mode, app, tc_url, name, chunk_size, ChunkLimits::default())
    }

    /// [`Self::new`] with the bounds on what the server may make this session buffer.
    pub fn with_limits(
        mode: ClientMode,
        app: &str,
        tc_url: &str,
        name: &str,
        chunk_size: u32,
        limits: ChunkLimits,
    ) -> Self {
        let mut out = BytesMut::with_capacity(512);
        message::write_set_chunk_size(&mut out, chunk_size);
        message::write_command(
            &mut out,
            chunk_size as usize,
            0,
            "connect",
            1.0,
            Amf0Value::object([
                ("app", Amf0Value::string(app)),
                ("type", Amf0Value::string("nonprivate")),
                (
                    "flashVer",
                    Amf0Value::string("FMLE/3.0 (compatible; corriente)"),
                ),
                ("tcUrl", Amf0Value::string(tc_url)),
            ]),
            vec![],
        );
        Self {
            mode,
            name: name.to_owned(),
            decoder: ChunkDecoder::new(limits),
            out,
            chunk_size: chunk_size as usize,
            step: Step::Connecting,
            stream_id: 0,
            connect_txn: 1.0,
            create_txn: 0.0,
            bytes_in: 0,
            last_ack: 0,
            peer_window: 0,
        }
    }

    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    /// Queues a ping request (user control event 6) with `timestamp`; a server answers with a
    /// [`ClientEvent::PingResponse`].
    pub fn ping(&mut self, timestamp: u32) {
        message::write_user_control(&mut self.out, UserControl::PingRequest(timestamp));
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// True once publishing or playing has started.
    pub fn is_active(&self) -> bool {
        self.step == Step::Active
    }

    /// Processes received bytes.
    pub fn feed(
        &mut self,
        input: &mut BytesMut,
        now_us: u64,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), SessionError> {
        let before = input.len();
        while let Some(raw) = self.decoder.decode(input)? {
            match Message::parse(&raw)? {
                Message::SetChunkSize(n) => self.decoder.set_chunk_size(n)?,
                Message::Abort(c) => self.decoder.abort(c),
                Message::WindowAckSize(n) => self.peer_window = n,
                Message::UserControl(UserControl::PingRequest(t)) => {
                    message::write_user_control(&mut self.out, UserControl::PingResponse(t));
                }
                Message::UserControl(UserControl::PingResponse(t)) => {
                    events.push(ClientEvent::PingResponse(t));
                }
                Message::UserControl(UserControl::StreamEof(_)) if self.step == Step::Active => {
                    self.step = Step::Ended;
                    events.push(ClientEvent::Ended);
                }
                Message::Command(c) => self.command(c, events),
                Message::Audio(p) => self.frame(FrameKind::Audio, raw.timestamp, p, now_us, events),
                Message::Video(p) => self.frame(FrameKind::Video, raw.timestamp, p, now_us, events),
                Message::Data(p) => self.frame(FrameKind::Script, raw.timestamp, p, now_us, events),
                Message::Aggregate(body) => {
                    for sub in split_aggregate(raw.timestamp, &body)? {
                        if let Some(kind) = FrameKind::from_tag_type(sub.type_id) {
                            self.frame(kind, sub.timestamp, sub.payload, now_us, events);
                        }
                    }
                }
                _ => {}
            }
        }
        self.bytes_in += (before - input.len()) as u64;
        if self.peer_window > 0 && self.bytes_in - self.last_ack >= u64::from(self.peer_window) {
            message::write_acknowledgement(&mut self.out, self.bytes_in as u32);
            self.last_ack = self.bytes_in;
        }
        Ok(())
    }

    fn frame(
        &mut self,
        kind: FrameKind,
        ts: u32,
        payload: Bytes,
        now_us: u64,
        events: &mut Vec<ClientEvent>,
    ) {
        if self.mode == ClientMode::Play && !payload.is_empty() {
            events.push(ClientEvent::Frame(Frame::new(kind, ts, payload, now_us)));
        }
    }

    fn command(&mut self, c: Command, events: &mut Vec<ClientEvent>) {
        match c.name.as_str() {
            "_result" if self.step == Step::Connecting && c.transaction_id == self.connect_txn => {
                if self.mode == ClientMode::Publish {
                    let name = Amf0Value::string(self.name.clone());
                    self.send_command("releaseStream", 2.0, vec![name.clone()], 0);
                    self.send_command("FCPublish", 3.0, vec![name], 0);
                }
                self.create_txn = 4.0;
                self.send_command("createStream", 4.0, vec![], 0);
                self.step = Step::CreatingStream;
            }
            "_result"
                if self.step == Step::CreatingStream && c.transaction_id == self.create_txn =>
            {
                self.stream_id = c.number_arg(0).unwrap_or(1.0) as u32;
                let name = Amf0Value::string(self.name.clone());
                match self.mode {
                    ClientMode::Publish => {
                        self.send_command(
                            "publish",
                            5.0,
                            vec![name, Amf0Value::string("live")],
                            self.stream_id,
                        );
                    }
                    ClientMode::Play => {
                        self.send_command(
                            "play",
                            5.0,
                            vec![name, Amf0Value::Number(-2000.0)],
                            self.stream_id,
                        );
                        message::write_user_control(
                            &mut self.out,
                            UserControl::SetBufferLength {
                                stream_id: self.stream_id,
                                millis: 1000,
                            },
                        );
                    }
                }
                self.step = Step::Starting;
            }
            // Some servers answer releaseStream (2) and FCPublish (3) with _error, and mean
            // nothing by it (ffmpeg ignores those too): only the other requests can be refused.
            "_error" if c.transaction_id == 2.0 || c.transaction_id == 3.0 => {}
            "_error" => {
                let (code, description) = status_fields(&c);
                self.step = Step::Ended;
                events.push(ClientEvent::Refused { code, description });
            }
            "onStatus" => {
                let (code, description) = status_fields(&c);
                let level = c
                    .args
                    .first()
                    .and_then(|o| o.property("level"))
                    .and_then(Amf0Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                events.push(ClientEvent::Status {
                    level: level.clone(),
                    code: code.clone(),
                    description: description.clone(),
                });
                if level == "error" {
                    self.step = Step::Ended;
                    events.push(ClientEvent::Refused { code, description });
                } else if code == "NetStream.Publish.Start" || code == "NetStream.Play.Start" {
                    self.step = Step::Active;
                    events.push(ClientEvent::Started);
                } else if code == "NetStream.Play.UnpublishNotify" || code == "NetStream.Play.Stop"
                {
                    self.step = Step::Ended;
                    events.push(ClientEvent::Ended);
                }
            }
            _ => {}
        }
    }

    fn send_command(&mut self, name: &str, txn: f64, args: Vec<Amf0Value>, stream_id: u32) {
        message::write_command(
            &mut self.out,
            self.chunk_size,
            stream_id,
            name,
            txn,
            Amf0Value::Null,
            args,
        );
    }

    /// Queues one frame for publishing.
    pub fn send_frame(&mut self, frame: &Frame) {
        let (cs, type_id) = match frame.kind {
            FrameKind::Audio => (csid::AUDIO, type_id::AUDIO),
            FrameKind::Video => (csid::VIDEO, type_id::VIDEO),
            FrameKind::Script => (csid::SCRIPT, type_id::DATA_AMF0),
        };
        encode_message(
            &mut self.out,
            cs,
            frame.timestamp,
            type_id,
            self.stream_id,
            &frame.payload,
            self.chunk_size,
        );
    }

    /// Queues `FCUnpublish` and `deleteStream`, the polite end of a publish.
    pub fn stop(&mut self) {
        let name = Amf0Value::string(self.name.clone());
        if self.mode == ClientMode::Publish {
            self.send_command("FCUnpublish", 6.0, vec![name], 0);
        }
        self.send_command(
            "deleteStream",
            7.0,
            vec![Amf0Value::Number(f64::from(self.stream_id))],
            0,
        );
        self.step = Step::Ended;
    }
}

fn status_fields(c: &Command) -> (String, String) {
    let info = c.args.first();
    let field = |name: &str| {
        info.and_then(|o| o.property(name))
            .and_then(Amf0Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (field("code"), field("description"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::session::{ServerSession, SessionConfig, SessionEvent};

    /// Drives a client against the server session, moving bytes both ways until quiet.
    fn pump(
        client: &mut ClientSession,
        server: &mut ServerSession,
        server_events: &mut Vec<SessionEvent>,
        client_events: &mut Vec<ClientEvent>,
    ) {
        for _ in 0..10 {
            let mut to_server = BytesMut::from(&client.take_output()[..]);
            server.feed(&mut to_server, 0, server_events).unwrap();
            let mut to_client = BytesMut::from(&server.take_output()[..]);
            client.feed(&mut to_client, 0, client_events).unwrap();
        }
    }

    #[test]
    fn publishes_and_plays_against_the_server_session() {
        let mut server = ServerSession::new(SessionConfig::default());
        let mut client =
            ClientSession::new(ClientMode::Publish, "live", "rtmp://h/live", "cam", 4096);
        let (mut se, mut ce) = (Vec::new(), Vec::new());
        pump(&mut client, &mut server, &mut se, &mut ce);
        assert!(matches!(
            se.last(),
            Some(SessionEvent::ConnectRequested { .. })
        ));
        server.accept_connect();
        pump(&mut client, &mut server, &mut se, &mut ce);
        assert!(
            matches!(se.last(), Some(SessionEvent::PublishRequested { name, .. }) if name == "cam")
        );
        server.accept_publish();
        pump(&mut client, &mut server, &mut se, &mut ce);
        assert!(client.is_active());
        client.send_frame(&Frame::new(
            FrameKind::Video,
            33,
            Bytes::from(vec![0x17, 1, 0, 0, 0, 5, 5, 5]),
            0,
        ));
        se.clear();
        pump(&mut client, &mut server, &mut se, &mut ce);
        assert!(
            matches!(&se[..], [SessionEvent::Frame(f)] if f.is_keyframe() && f.timestamp == 33)
        );

        let mut server = ServerSession::new(SessionConfig::default());
        let mut player = ClientSession::new(ClientMode::Play, "live", "rtmp://h/live", "cam", 4096);
        let (mut se, mut ce) = (Vec::new(), Vec::new());
        pump(&mut player, &mut server, &mut se, &mut ce);
        server.accept_connect();
        pump(&mut player, &mut server, &mut se, &mut ce);
        server.reject_play("NetStream.Play.StreamNotFound", "gone");
        pump(&mut player, &mut server, &mut se, &mut ce);
        assert!(ce.iter().any(|e| matches!(e, ClientEvent::Refused { code, .. } if code == "NetStream.Play.StreamNotFound")));
    }
}
