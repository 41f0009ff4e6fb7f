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
    /// Its HLS numbering.
    pub hls: HlsSequence,
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
    /// Its HLS numbering as it stands: `first_msn` is the next number it will use.
    pub hls: HlsSequence,
}

/// How a publication numbers its HLS segments, decided by the registry when the stream is
/// claimed, so that every edge numbers alike and a failover continues the playlist.
///
/// Media sequence numbers must grow by one per segment in a playlist and never be reused for
/// other media (caches in front keep segments by name). The registry remembers, per name, the
/// next number the owner last reported in its heartbeat and the publication's discontinuity
/// sequence number. A new publication of the name then starts [`HlsSequence::slack`] numbers
/// past the reported one (covering the segments cut since the last report, at most one per
/// [`MIN_SEGMENT_MS`] of a lease TTL) with the next discontinuity sequence number: edges that
/// still list the old publication's segments fill the few numbers in between with
/// `EXT-X-GAP` segments and continue after an `EXT-X-DISCONTINUITY`. A name the registry
/// does not remember starts at a tenth of the Unix time in milliseconds, with discontinuity
/// sequence 0: above every number used before as long as segments last 100 ms or more on
/// average (segments last a second or more).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HlsSequence {
    /// First media sequence number (in a heartbeat: the next one the owner will use).
    pub first_msn: u64,
    /// Discontinuity sequence number of the publication.
    pub discontinuity: u64,
}

/// Shortest time between two segment starts the origin makes (a second's target, less the
/// jitter `media::segment` allows).
pub const MIN_SEGMENT_MS: u64 = 950;

impl HlsSequence {
    /// Numbers a lapsed owner may have used since its last report (one per
    /// [`MIN_SEGMENT_MS`] of the lease, and one for the report in flight), and one more, so
    /// that at least one gap segment separates two publications: a player hinted the old
    /// publication's next segment finds that number a gap of the old publication.
    pub fn slack(lease_ttl: std::time::Duration) -> u64 {
        (lease_ttl.as_millis() as u64).div_ceil(MIN_SEGMENT_MS) + 2
    }

    /// The numbering of a new publication claimed at `now_ms`, after a previous one the
    /// registry remembers as `previous` (its reported next number and discontinuity), if any.
    pub fn after(
        previous: Option<HlsSequence>,
        now_ms: u64,
        lease_ttl: std::time::Duration,
    ) -> Self {
        match previous {
            Some(p) if p.first_msn > 0 => HlsSequence {
                first_msn: p.first_msn + Self::slack(lease_ttl),
                discontinuity: p.discontinuity + 1,
            },
            _ => HlsSequence {
                first_msn: (now_ms / 100).max(1),
                discontinuity: 0,
            },
        }
    }
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
