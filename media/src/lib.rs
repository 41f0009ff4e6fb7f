//! Shared media plumbing of Corriente: frames and their FLV/AMF0 encodings, the RTMP protocol
//! (chunk stream, messages, server and client sessions), the per-stream hub with its GOP cache
//! and batching, subscriber feeds with the slow-viewer policy, and socket helpers for fan-out.
//!
//! Nothing here knows about the cluster: origins, edges and the control plane build on it.

pub mod access;
pub mod amf0;
pub mod fanout;
pub mod feed;
pub mod flv;
pub mod frame;
pub mod hub;
pub mod info;
pub mod io;
pub mod key;
pub mod limits;
pub mod metrics;
pub mod mux;
pub mod net;
pub mod rtmp;
pub mod secret;
pub mod tls;

pub use feed::{Feed, FeedEnd, LagPolicy, Segment};
pub use frame::{Frame, FrameKind, FrameRole};
pub use hub::{EndReason, Hub, HubConfig, HubWriter, spawn_hub};
pub use info::MediaInfo;
pub use key::StreamKey;
pub use metrics::Protocol;
