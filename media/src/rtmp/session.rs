//! The RTMP server session: an IO-free state machine from `connect` to publishing or playing.
//!
//! The connection task feeds it received bytes and writes out what it queues; every decision
//! that needs the rest of the system (may this app connect? may this name be published? does
//! this stream exist?) comes back as an event, and the session waits for the answer before it
//! reads further messages. Media never passes through here on the way out: viewers get
//! pre-chunked bytes from the stream hub (see [`crate::mux`]).

use bytes::{Bytes, BytesMut};

use super::chunk::{ChunkDecoder, ChunkError, ChunkLimits, RawMessage};
use super::message::{
    self, Command, MEDIA_STREAM_ID, Message, MessageError, UserControl, split_aggregate,
};
use crate::amf0::{self, Amf0Value};
use crate::frame::{Frame, FrameKind};

/// Settings of a server session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Chunk size Corriente sends with (announced by SetChunkSize right after `connect`).
    pub chunk_size: u32,
    /// Window acknowledgement size and peer bandwidth announced to the client.
    pub window_ack_size: u32,
    /// Limits on what the peer may make the chunk decoder hold.
    pub limits: ChunkLimits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            limits: ChunkLimits::default(),
        }
    }
}

/// Where the session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Handshake done, waiting for `connect`.
    AwaitingConnect,
    /// `connect` received; waiting for [`ServerSession::accept_connect`] or a rejection.
    ConnectPending,
    /// Connected to an application; waiting for `publish` or `play`.
    Connected,
    /// `publish` received; waiting for the decision.
    PublishPending,
    Publishing,
    /// `play` received; waiting for the decision.
    PlayPending,
    Playing,
    /// Refused or stopped: the connection should be closed once the output is written.
    Closed,
}

/// What the session needs the application to know or decide.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Answer with [`ServerSession::accept_connect`] or [`ServerSession::reject_connect`].
    ConnectRequested { app: String, tc_url: String },
    /// `name` is raw, query string included. Answer with `accept_publish`/`reject_publish`.
    PublishRequested { name: String, publish_type: String },
    /// Answer with `accept_play`/`reject_play`.
    PlayRequested { name: String },
    /// A media or script frame from the publisher.
    Frame(Frame),
    /// The publisher stopped (FCUnpublish, deleteStream or closeStream).
    PublishStopped,
    /// The player stopped (deleteStream or closeStream).
    PlayStopped,
    /// A message was ignored; worth a debug or warn log line, nothing more.
    Ignored(String),
}

/// Why the session ended the connection.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("message: {0}")]
    Message(#[from] MessageError),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Server side of one RTMP connection, after the handshake.
#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    decoder: ChunkDecoder,
    state: SessionState,
    out: BytesMut,
    /// Chunk size of outbound messages: 128 until our SetChunkSize is queued.
    out_chunk_size: usize,
    app: String,
    stream_name: String,
    pending_transaction: f64,
    object_encoding: f64,
    bytes_in: u64,
    last_ack: u64,
    peer_window: u32,
}

impl ServerSession {
    pub fn new(config: SessionConfig) -> Self {
        Self {
            decoder: ChunkDecoder::new(config.limits),
            config,
            state: SessionState::AwaitingConnect,
            out: BytesMut::new(),
            out_chunk_size: 128,
            app: String::new(),
            stream_name: String::new(),
            pending_transaction: 0.0,
            object_encoding: 0.0,
            bytes_in: 0,
            last_ack: 0,
            peer_window: 0,
        }
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The application named in `connect`.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Chunk size of what this session sends; pre-chunked media must use the same.
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    /// True when queued output is waiting to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Takes the queued output. The session keeps no allocation behind it: output is rare once
    /// a stream plays, and a session lives as long as its connection.
    pub fn take_output(&mut self) -> Bytes {
        std::mem::take(&mut self.out).freeze()
    }

    /// True while the session waits for the application to decide a request; feed no more
    /// input until it has.
    pub fn is_waiting(&self) -> bool {
        matches!(
            self.state,
            SessionState::ConnectPending | SessionState::PublishPending | SessionState::PlayPending
        )
    }

    /// Processes received bytes. Complete messages are taken out of `input`; a partial one
    /// stays. Stops early after a request event, so the application can answer before later
    /// messages (such as the publisher's first frames) are processed.
    pub fn feed(
        &mut self,
        input: &mut BytesMut,
        now_us: u64,
        events: &mut Vec<SessionEvent>,
    ) -> Result<(), SessionError> {
        let before = input.len();
        let result = self.process(input, now_us, events);
        self.bytes_in += (before - input.len()) as u64;
        if self.peer_window > 0 && self.bytes_in - self.last_ack >= u64::from(self.peer_window) {
            message::write_acknowledgement(&mut self.out, self.bytes_in as u32);
            self.last_ack = self.bytes_in;
        }
        result
    }

    fn process(
        &mut self,
        input: &mut BytesMut,
        now_us: u64,
        events: &mut Vec<SessionEvent>,
    ) -> Result<(), SessionError> {
        while !self.is_waiting() && self.state != SessionState::Closed {
            let Some(raw) = self.decoder.decode(input)? else {
                break;
            };
            self.handle(raw, now_us, events)?;
        }
        Ok(())
    }

    fn handle(
        &mut self,
        raw: RawMessage,
        now_us: u64,
        events: &mut Vec<SessionEvent>,
    ) -> Result<(), SessionError> {
        match Message::parse(&raw)? {
            Message::SetChunkSize(size) => self.decoder.set_chunk_size(size)?,
            Message::Abort(csid) => self.decoder.abort(csid),
            Message::WindowAckSize(size) => self.peer_window = size,
            Message::Acknowledgement(_) | Message::SetPeerBandwidth(_) => {}
            Message::UserControl(UserControl::PingRequest(t)) => {
                message::write_user_control(&mut self.out, UserControl::PingResponse(t));
            }
            Message::UserControl(_) => {}
            Message::Command(command) => self.handle_command(command, events)?,
            Message::Data(body) => self.handle_data(raw.timestamp, body, now_us, events),
            Message::Audio(body) => {
                self.media(FrameKind::Audio, raw.timestamp, body, now_us, events)
            }
            Message::Video(body) => {
                self.media(FrameKind::Video, raw.timestamp, body, now_us, events)
            }
            Message::Aggregate(body) => {
                if self.state != SessionState::Publishing {
                    return Ok(());
                }
                for sub in split_aggregate(raw.timestamp, &body)? {
                    match FrameKind::from_tag_type(sub.type_id) {
                        Some(FrameKind::Script) => {
                            self.handle_data(sub.timestamp, sub.payload, now_us, events)
                        }
                        Some(kind) => self.media(kind, sub.timestamp, sub.payload, now_us, events),
                        None => {}
                    }
                }
            }
            Message::Ignored(type_id) => {
                events.push(SessionEvent::Ignored(format!("message type {type_id}")));
            }
        }
        Ok(())
    }

    fn media(
        &mut self,
        kind: FrameKind,
        timestamp: u32,
        body: Bytes,
        now_us: u64,
        events: &mut Vec<SessionEvent>,
    ) {
        if self.state == SessionState::Publishing && !body.is_empty() {
            events.push(SessionEvent::Frame(Frame::new(
                kind, timestamp, body, now_us,
            )));
        }
    }

    /// Script data from a publisher. `@setDataFrame` wraps metadata the encoder wants kept
    /// (`["@setDataFrame", "onMetaData", {...}]`); the wrapper is removed so viewers receive a
    /// plain `onMetaData`. Data that does not decode is ignored with a note: it never reaches
    /// viewers, and the stream goes on.
    fn handle_data(
        &mut self,
        timestamp: u32,
        body: Bytes,
        now_us: u64,
        events: &mut Vec<SessionEvent>,
    ) {
        if self.state != SessionState::Publishing {
            events.push(SessionEvent::Ignored(
                "script data outside of publishing".to_owned(),
            ));
            return;
        }
        let payload = match amf0::decode_one(&body) {
            Ok((Amf0Value::String(s), used)) if s == "@setDataFrame" => body.slice(used..),
            Ok((Amf0Value::String(s), _)) if s == "@clearDataFrame" => return,
            Ok((Amf0Value::String(_), _)) => body,
            Ok(_) => {
                events.push(SessionEvent::Ignored(
                    "script data without a handler name".to_owned(),
                ));
                return;
            }
            Err(e) => {
                events.push(SessionEvent::Ignored(format!(
                    "bad AMF0 in script data: {e}"
                )));
                return;
            }
        };
        match amf0::decode_all(&payload) {
            Ok(values) if values.len() >= 2 && values[0].as_str().is_some() => {
                events.push(SessionEvent::Frame(Frame::new(
                    FrameKind::Script,
                    timestamp,
                    payload,
                    now_us,
                )));
            }
            Ok(_) => events.push(SessionEvent::Ignored(
                "script data needs a handler name and a value".to_owned(),
            )),
            Err(e) => events.push(SessionEvent::Ignored(format!(
                "bad AMF0 in script data: {e}"
            ))),
        }
    }

    fn handle_command(
        &mut self,
        command: Command,
        events: &mut Vec<SessionEvent>,
    ) -> Result<(), SessionError> {
        let txn = command.transaction_id;
        match command.name.as_str() {
            "connect" => {
                if self.state != SessionState::AwaitingConnect {
                    return Err(SessionError::Protocol("second connect".to_owned()));
                }
                let prop = |name: &str| {
                    command
                        .object
                        .property(name)
                        .and_then(Amf0Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                let app = prop("app");
                // OBS and others may put a query string or a trailing slash in `app`.
                let app = app
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/')
                    .to_owned();
                self.object_encoding = command
                    .object
                    .property("objectEncoding")
                    .and_then(Amf0Value::as_number)
                    .unwrap_or(0.0);
                self.app = app.clone();
                self.pending_transaction = txn;
                self.state = SessionState::ConnectPending;
                events.push(SessionEvent::ConnectRequested {
                    app,
                    tc_url: prop("tcUrl"),
                });
            }
            "createStream" => {
                self.require_connected("createStream")?;
                self.result(txn, vec![Amf0Value::Number(f64::from(MEDIA_STREAM_ID))]);
            }
            "releaseStream" | "FCPublish" => {
                self.require_connected(&command.name)?;
                self.result(txn, vec![Amf0Value::Undefined]);
            }
            "getStreamLength" => self.result(txn, vec![Amf0Value::Number(0.0)]),
            "publish" => {
                self.require_connected("publish")?;
                self.refuse_while_playing("publish")?;
                let name = command.string_arg(0).unwrap_or("").to_owned();
                let publish_type = command.string_arg(1).unwrap_or("live").to_owned();
                self.stream_name = name.clone();
                self.state = SessionState::PublishPending;
                events.push(SessionEvent::PublishRequested { name, publish_type });
            }
            "play" => {
                self.require_connected("play")?;
                self.refuse_while_playing("play")?;
                let name = command.string_arg(0).unwrap_or("").to_owned();
                self.stream_name = name.clone();
                self.state = SessionState::PlayPending;
                events.push(SessionEvent::PlayRequested { name });
            }
            "FCUnpublish" | "deleteStream" | "closeStream" => {
                if command.name == "FCUnpublish" {
                    self.result(txn, vec![Amf0Value::Undefined]);
                }
                match self.state {
                    SessionState::Publishing => {
                        self.state = SessionState::Connected;
                        events.push(SessionEvent::PublishStopped);
                    }
                    SessionState::Playing => {
                        self.state = SessionState::Connected;
                        events.push(SessionEvent::PlayStopped);
                    }
                    _ => {}
                }
            }
            // Replies to our own commands, bandwidth checks and Flash-era extras.
            "_result" | "_error" | "_checkbw" | "checkBandwidth" | "receiveAudio"
            | "receiveVideo" | "pause" | "seek" | "FCSubscribe" | "FCUnsubscribe" | "onBWDone"
            | "setPeerInfo" => {}
            other => events.push(SessionEvent::Ignored(format!("command {other:?}"))),
        }
        Ok(())
    }

    fn require_connected(&self, what: &str) -> Result<(), SessionError> {
        match self.state {
            SessionState::Connected | SessionState::Publishing | SessionState::Playing => Ok(()),
            _ => Err(SessionError::Protocol(format!("{what} before connect"))),
        }
    }

    /// A playing connection belongs to the fan-out, which reads the viewer's messages but
    /// decides nothing: a request would leave the session waiting for ever while the viewer's
    /// input piles up unread.
    fn refuse_while_playing(&self, what: &str) -> Result<(), SessionError> {
        if self.state == SessionState::Playing {
            return Err(SessionError::Protocol(format!("{what} while playing")));
        }
        Ok(())
    }

    fn result(&mut self, txn: f64, args: Vec<Amf0Value>) {
        message::write_command(
            &mut self.out,
            self.out_chunk_size,
            0,
            "_result",
            txn,
            Amf0Value::Null,
            args,
        );
    }

    /// Accepts `connect`: announces window, bandwidth and chunk size, then answers `_result`.
    pub fn accept_connect(&mut self) {
        if self.state != SessionState::ConnectPending {
            return;
        }
        message::write_window_ack_size(&mut self.out, self.config.window_ack_size);
        message::write_set_peer_bandwidth(&mut self.out, self.config.window_ack_size);
        message::write_set_chunk_size(&mut self.out, self.config.chunk_size);
        self.out_chunk_size = self.config.chunk_size as usize;
        message::write_command(
            &mut self.out,
            self.out_chunk_size,
            0,
            "_result",
            self.pending_transaction,
            Amf0Value::object([
                ("fmsVer", Amf0Value::string("FMS/3,5,7,7009")),
                ("capabilities", Amf0Value::Number(31.0)),
                ("mode", Amf0Value::Number(1.0)),
            ]),
            vec![Amf0Value::object([
                ("level", Amf0Value::string("status")),
                ("code", Amf0Value::string("NetConnection.Connect.Success")),
                ("description", Amf0Value::string("Connection succeeded.")),
                ("objectEncoding", Amf0Value::Number(self.object_encoding)),
            ])],
        );
        self.state = SessionState::Connected;
    }

    /// Refuses `connect` with `NetConnection.Connect.Rejected`; the session is then closed.
    pub fn reject_connect(&mut self, description: &str) {
        message::write_command(
            &mut self.out,
            self.out_chunk_size,
            0,
            "_error",
            self.pending_transaction,
            Amf0Value::Null,
            vec![Amf0Value::object([
                ("level", Amf0Value::string("error")),
                ("code", Amf0Value::string("NetConnection.Connect.Rejected")),
                ("description", Amf0Value::string(description)),
            ])],
        );
        self.state = SessionState::Closed;
    }

    /// Accepts `publish` with `NetStream.Publish.Start`.
    pub fn accept_publish(&mut self) {
        if self.state != SessionState::PublishPending {
            return;
        }
        message::write_user_control(&mut self.out, UserControl::StreamBegin(MEDIA_STREAM_ID));
        let description = format!("{} is now published.", self.stream_name);
        self.status("status", "NetStream.Publish.Start", &description);
        self.state = SessionState::Publishing;
    }

    /// Refuses `publish` with an error status (for example `NetStream.Publish.BadName`); the
    /// session is then closed. ffmpeg prints the description and exits; OBS shows a failure.
    pub fn reject_publish(&mut self, code: &str, description: &str) {
        self.status("error", code, description);
        self.state = SessionState::Closed;
    }

    /// Stops a publisher from the server side (its stream was taken over or the node drains).
    pub fn stop_publish(&mut self, code: &str, description: &str) {
        self.status("error", code, description);
        self.state = SessionState::Closed;
    }

    /// Accepts `play`: StreamBegin, `NetStream.Play.Reset`, `NetStream.Play.Start`. Media
    /// follows as pre-chunked bytes on [`MEDIA_STREAM_ID`] with [`Self::chunk_size`].
    pub fn accept_play(&mut self) {
        if self.state != SessionState::PlayPending {
            return;
        }
        message::write_user_control(&mut self.out, UserControl::StreamBegin(MEDIA_STREAM_ID));
        let name = self.stream_name.clone();
        self.status(
            "status",
            "NetStream.Play.Reset",
            &format!("Playing and resetting {name}."),
        );
        self.status(
            "status",
            "NetStream.Play.Start",
            &format!("Started playing {name}."),
        );
        self.state = SessionState::Playing;
    }

    /// Refuses `play` (for example `NetStream.Play.StreamNotFound`); the session is then closed.
    pub fn reject_play(&mut self, code: &str, description: &str) {
        self.status("error", code, description);
        self.state = SessionState::Closed;
    }

    /// Ends playback: `NetStream.Play.UnpublishNotify`, then StreamEOF. The session is closed.
    pub fn end_play(&mut self, description: &str) {
        self.status("status", "NetStream.Play.UnpublishNotify", description);
        message::write_user_control(&mut self.out, UserControl::StreamEof(MEDIA_STREAM_ID));
        self.state = SessionState::Closed;
    }

    fn status(&mut self, level: &str, code: &str, description: &str) {
        message::write_on_status(
            &mut self.out,
            self.out_chunk_size,
            MEDIA_STREAM_ID,
            level,
            code,
            description,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::chunk::encode_message;
    use crate::rtmp::message::{type_id, write_command};

    fn command(name: &str, txn: f64, args: Vec<Amf0Value>, stream_id: u32) -> BytesMut {
        let mut out = BytesMut::new();
        write_command(&mut out, 128, stream_id, name, txn, Amf0Value::Null, args);
        out
    }

    fn connect(app: &str) -> BytesMut {
        let mut out = BytesMut::new();
        write_command(
            &mut out,
            128,
            0,
            "connect",
            1.0,
            Amf0Value::object([
                ("app", Amf0Value::string(app)),
                (
                    "tcUrl",
                    Amf0Value::string(format!("rtmp://localhost/{app}")),
                ),
            ]),
            vec![],
        );
        out
    }

    /// Decodes everything the session wrote and returns the commands.
    fn sent_commands(session: &mut ServerSession) -> Vec<Command> {
        let mut decoder = ChunkDecoder::new(ChunkLimits::default());
        let mut out = BytesMut::from(&session.take_output()[..]);
        let mut commands = Vec::new();
        while let Some(raw) = decoder.decode(&mut out).unwrap() {
            match Message::parse(&raw).unwrap() {
                Message::SetChunkSize(n) => decoder.set_chunk_size(n).unwrap(),
                Message::Command(c) => commands.push(c),
                _ => {}
            }
        }
        commands
    }

    fn status_code(c: &Command) -> &str {
        c.args[0]
            .property("code")
            .and_then(Amf0Value::as_str)
            .unwrap()
    }

    fn publishing_session() -> ServerSession {
        let mut session = ServerSession::new(SessionConfig::default());
        let mut events = Vec::new();
        let mut input = connect("live");
        input.extend_from_slice(&command("createStream", 2.0, vec![], 0));
        input.extend_from_slice(&command(
            "publish",
            3.0,
            vec![Amf0Value::string("cam?key=1"), Amf0Value::string("live")],
            1,
        ));
        session.feed(&mut input, 0, &mut events).unwrap();
        assert!(
            matches!(&events[..], [SessionEvent::ConnectRequested { app, .. }] if app == "live")
        );
        assert!(
            !input.is_empty(),
            "waits for the decision before reading on"
        );
        session.accept_connect();
        events.clear();
        session.feed(&mut input, 0, &mut events).unwrap();
        assert!(
            matches!(&events[..], [SessionEvent::PublishRequested { name, .. }] if name == "cam?key=1")
        );
        session.accept_publish();
        let commands = sent_commands(&mut session);
        let names: Vec<&str> = commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["_result", "_result", "onStatus"]);
        assert_eq!(commands[1].args[0], Amf0Value::Number(1.0), "stream id");
        assert_eq!(status_code(&commands[2]), "NetStream.Publish.Start");
        session
    }

    #[test]
    fn publishes_metadata_and_media() {
        let mut session = publishing_session();
        let mut input = BytesMut::new();
        let mut meta = BytesMut::new();
        amf0::encode_all(
            &[
                Amf0Value::string("@setDataFrame"),
                Amf0Value::string("onMetaData"),
                Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(640.0))]),
            ],
            &mut meta,
        );
        encode_message(&mut input, 5, 0, type_id::DATA_AMF0, 1, &meta, 128);
        encode_message(
            &mut input,
            6,
            40,
            type_id::VIDEO,
            1,
            &[0x17, 1, 0, 0, 0, 1],
            128,
        );
        let mut events = Vec::new();
        session.feed(&mut input, 7, &mut events).unwrap();
        let frames: Vec<&Frame> = events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Frame(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(frames.len(), 2);
        assert!(
            crate::frame::is_on_metadata(&frames[0].payload),
            "@setDataFrame stripped"
        );
        assert!(frames[1].is_keyframe());
        assert_eq!((frames[1].timestamp, frames[1].ingest_us), (40, 7));
    }

    /// rml_rtmp 0.8 panics (index out of bounds) on a data message that is only
    /// `["@setDataFrame"]`, even before `connect`. Here it is ignored, before and after.
    #[test]
    fn survives_a_bare_set_data_frame() {
        let mut bare = BytesMut::new();
        amf0::encode(&Amf0Value::string("@setDataFrame"), &mut bare);
        let mut input = BytesMut::new();
        encode_message(&mut input, 5, 0, type_id::DATA_AMF0, 0, &bare, 128);
        let mut fresh = ServerSession::new(SessionConfig::default());
        let mut events = Vec::new();
        fresh.feed(&mut input, 0, &mut events).unwrap();
        assert!(matches!(&events[..], [SessionEvent::Ignored(_)]));

        let mut session = publishing_session();
        let mut input = BytesMut::new();
        encode_message(&mut input, 5, 0, type_id::DATA_AMF0, 1, &bare, 128);
        encode_message(&mut input, 5, 0, type_id::DATA_AMF0, 1, &[0x02, 0xff], 128);
        let mut events = Vec::new();
        session.feed(&mut input, 0, &mut events).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| matches!(e, SessionEvent::Ignored(_))));
        assert_eq!(session.state(), &SessionState::Publishing);
    }

    #[test]
    fn rejects_and_ends_play() {
        let mut session = ServerSession::new(SessionConfig::default());
        let mut events = Vec::new();
        let mut input = connect("live");
        session.feed(&mut input, 0, &mut events).unwrap();
        session.accept_connect();
        let mut input = command("play", 4.0, vec![Amf0Value::string("nope")], 1);
        session.feed(&mut input, 0, &mut events).unwrap();
        assert!(
            matches!(events.last(), Some(SessionEvent::PlayRequested { name }) if name == "nope")
        );
        session.reject_play("NetStream.Play.StreamNotFound", "no such stream");
        let commands = sent_commands(&mut session);
        assert_eq!(
            status_code(commands.last().unwrap()),
            "NetStream.Play.StreamNotFound"
        );
        assert_eq!(session.state(), &SessionState::Closed);

        let mut session = ServerSession::new(SessionConfig::default());
        let mut input = connect("live");
        session.feed(&mut input, 0, &mut events).unwrap();
        session.accept_connect();
        let mut input = command("play", 4.0, vec![Amf0Value::string("cam")], 1);
        session.feed(&mut input, 0, &mut events).unwrap();
        session.accept_play();
        session.end_play("cam ended");
        let codes: Vec<String> = sent_commands(&mut session)
            .iter()
            .filter(|c| c.name == "onStatus")
            .map(|c| status_code(c).to_owned())
            .collect();
        assert_eq!(
            codes,
            [
                "NetStream.Play.Reset",
                "NetStream.Play.Start",
                "NetStream.Play.UnpublishNotify"
            ]
        );
    }

    /// Found modelling the edge's playback task in the `session` fuzz target, whose check fails
    /// on fuzz/corpus/session/regression-publish-while-playing: `publish` or `play` from a
    /// viewer that is already playing left the session waiting for a decision nobody makes, so
    /// it read nothing more while the viewer's input kept growing.
    #[test]
    fn a_playing_session_never_waits_for_a_decision() {
        for again in ["publish", "play"] {
            let mut session = ServerSession::new(SessionConfig::default());
            let mut events = Vec::new();
            session.feed(&mut connect("live"), 0, &mut events).unwrap();
            session.accept_connect();
            let mut input = command("play", 4.0, vec![Amf0Value::string("cam")], 1);
            session.feed(&mut input, 0, &mut events).unwrap();
            session.accept_play();
            let mut input = command(again, 5.0, vec![Amf0Value::string("cam")], 1);
            let result = session.feed(&mut input, 0, &mut events);
            assert!(matches!(result, Err(SessionError::Protocol(_))), "{again}");
            assert!(!session.is_waiting());
        }
    }

    #[test]
    fn refuses_commands_out_of_order() {
        let mut session = ServerSession::new(SessionConfig::default());
        let mut input = command("publish", 1.0, vec![Amf0Value::string("x")], 1);
        let err = session.feed(&mut input, 0, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, SessionError::Protocol(_)));
    }

    #[test]
    fn answers_pings_and_acknowledges_windows() {
        let mut session = ServerSession::new(SessionConfig::default());
        let mut input = BytesMut::new();
        let mut body = BytesMut::new();
        body.extend_from_slice(&20u32.to_be_bytes());
        encode_message(&mut input, 2, 0, type_id::WINDOW_ACK_SIZE, 0, &body, 128);
        message::write_user_control(&mut input, UserControl::PingRequest(9));
        session.feed(&mut input, 0, &mut Vec::new()).unwrap();
        let mut decoder = ChunkDecoder::new(ChunkLimits::default());
        let mut out = BytesMut::from(&session.take_output()[..]);
        let mut seen = Vec::new();
        while let Some(raw) = decoder.decode(&mut out).unwrap() {
            seen.push(Message::parse(&raw).unwrap());
        }
        assert!(seen.contains(&Message::UserControl(UserControl::PingResponse(9))));
        assert!(
            seen.iter()
                .any(|m| matches!(m, Message::Acknowledgement(n) if *n >= 20))
        );
    }
}
