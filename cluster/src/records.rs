//! The cluster's records, as every member and the control plane see them: nodes with their
//! role and load, streams with their owner and fencing epoch, claims, the streams a heartbeat
//! reports, and the changes the watch announces.

use corriente_core::{MediaInfo, StreamKey};

use crate::forward::ForwardStatus;
use serde::{Deserialize, Serialize};

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Origin,
    Edge,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Origin => "origin",
            NodeRole::Edge => "edge",
        }
    }
}

/// A node's load, as it reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub streams: u32,
    pub viewers: u32,
    pub ingress_bps: u64,
    pub egress_bps: u64,
}

/// An origin or edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub role: NodeRole,
    /// Where edges dial this origin's relay (its advertised address).
    pub relay_addr: String,
    pub rtmp_addr: String,
    pub http_addr: String,
    pub admin_addr: String,
    pub load: NodeLoad,
    /// Viewers per stream on this edge.
    pub viewers: Vec<(StreamKey, u32)>,
    pub version: String,
    pub started_at_ms: u64,
    pub ready: bool,
}

/// A live stream and its owner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamRecord {
    pub key: StreamKey,
    pub node_id: String,
    pub relay_addr: String,
    pub epoch: u64,
    pub media: MediaInfo,
    pub publisher_addr: String,
    pub started_at_ms: u64,
    /// Its forwards (restreaming), as the owner last reported them.
    pub forwards: Vec<ForwardStatus>,
}

/// A request to own a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamClaim {
    pub key: StreamKey,
    pub node_id: String,
    pub relay_addr: String,
    pub media: MediaInfo,
    pub publisher_addr: String,
}

/// A stream a node believes it owns, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedStream {
    pub key: StreamKey,
    pub epoch: u64,
    pub media: MediaInfo,
    pub publisher_addr: String,
    pub started_at_ms: u64,
    /// Its forwards, as the node runs them.
    pub forwards: Vec<ForwardStatus>,
}

/// A change in the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryEvent {
    StreamUp(StreamRecord),
    StreamDown {
        key: StreamKey,
        epoch: u64,
        node_id: String,
    },
    NodeUp(NodeRecord),
    NodeDown(String),
}

/// Where a recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Being written, while the publication is live.
    Recording,
    /// Finished: the publication ended, or a restarted origin recovered the file.
    Complete,
    /// Stopped by an error (disk full, write error); the file holds what was written before.
    Failed,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Recording => "recording",
            RecordingState::Complete => "complete",
            RecordingState::Failed => "failed",
        }
    }
}

/// A recording in the cluster's index: a file on the origin that recorded a publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingRecord {
    /// The stream recorded (`APP/NAME`).
    pub stream: StreamKey,
    /// `YYYYMMDDTHHMMSSZ-eEPOCH`: unique for the stream.
    pub id: String,
    /// The origin whose disk holds it.
    pub node_id: String,
    pub epoch: u64,
    pub started_at_ms: u64,
    pub duration_ms: u64,
    pub size: u64,
    pub state: RecordingState,
    /// How it ended or why it stopped: `unpublished`, `recovered`, `disk_full`, ...
    pub reason: String,
    /// Changes whenever the file's bytes may have.
    pub etag: String,
    /// The holding origin's relay address, filled in by the control plane when listing
    /// (empty while that origin is down); never stored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub relay_addr: String,
}
