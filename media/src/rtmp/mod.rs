//! RTMP: handshake, chunk stream, messages, and the server and client session state machines.

pub mod chunk;
pub mod client;
pub mod handshake;
pub mod message;
pub mod session;

pub use chunk::{ChunkDecoder, ChunkError, ChunkLimits, RawMessage};
pub use client::{ClientEvent, ClientMode, ClientSession};
pub use session::{ServerSession, SessionConfig, SessionError, SessionEvent, SessionState};
