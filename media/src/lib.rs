//! Shared media plumbing of Corriente: frames and their FLV/AMF0 encodings, the RTMP protocol
//! (chunk stream, messages, server and client sessions), the per-stream hub with its GOP cache
//! and batching, subscriber feeds with the slow-viewer policy, and socket helpers for fan-out.
//!
//! Nothing here knows about the cluster: origins and edges build on it. Stream names and media
//! descriptions come from `corriente-core`, and are re-exported here.

pub mod amf0;
pub mod fanout;
pub mod feed;
pub mod flv;
pub mod frame;
pub mod hub;
pub mod info;
pub mod io;
pub mod metrics;
pub mod mux;
pub mod rtmp;

pub use corriente_core::StreamKey;
pub use feed::{Feed, FeedEnd, LagPolicy, Segment};
pub use frame::{Frame, FrameKind, FrameRole};
pub use hub::{EndReason, Hub, HubConfig, HubWriter, spawn_hub};
pub use info::{MediaInfo, Observe};
pub use metrics::Protocol;
