//! Conversions between the control API's prost types and the domain types. Prost types stop
//! here: nothing else in Corriente handles them.

use corriente_core::{MediaInfo, StreamKey};
use corriente_proto::control as pb;
use tonic::Status;

use crate::forward::{ForwardSource, ForwardState, ForwardStatus, ForwardTarget};
use crate::records::{
    NodeLoad, NodeRecord, NodeRole, OwnedStream, RecordingRecord, RecordingState, RegistryEvent,
    StreamClaim, StreamRecord,
};

pub fn key_to_pb(key: &StreamKey) -> pb::StreamKey {
    pb::StreamKey {
        app: key.app().to_owned(),
        name: key.name().to_owned(),
    }
}

/// Validates a key received over gRPC.
pub fn key_from_pb(key: Option<pb::StreamKey>) -> Result<StreamKey, Status> {
    let key = key.ok_or_else(|| Status::invalid_argument("stream key missing"))?;
    StreamKey::new(&key.app, &key.name).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn media_to_pb(m: &MediaInfo) -> pb::MediaInfo {
    pb::MediaInfo {
        video_codec: m.video_codec.clone(),
        audio_codec: m.audio_codec.clone(),
        width: m.width,
        height: m.height,
        frame_rate: m.frame_rate,
        bitrate_bps: m.bitrate_bps,
        audio_sample_rate: m.audio_sample_rate,
        audio_channels: m.audio_channels,
    }
}

pub fn media_from_pb(m: Option<pb::MediaInfo>) -> MediaInfo {
    let m = m.unwrap_or_default();
    MediaInfo {
        video_codec: m.video_codec,
        audio_codec: m.audio_codec,
        width: m.width,
        height: m.height,
        frame_rate: m.frame_rate,
        bitrate_bps: m.bitrate_bps,
        audio_sample_rate: m.audio_sample_rate,
        audio_channels: m.audio_channels,
    }
}

pub fn role_to_pb(role: NodeRole) -> pb::NodeRole {
    match role {
        NodeRole::Origin => pb::NodeRole::Origin,
        NodeRole::Edge => pb::NodeRole::Edge,
    }
}

pub fn node_to_pb(n: &NodeRecord) -> pb::Node {
    pb::Node {
        id: n.id.clone(),
        role: role_to_pb(n.role) as i32,
        relay_addr: n.relay_addr.clone(),
        rtmp_addr: n.rtmp_addr.clone(),
        http_addr: n.http_addr.clone(),
        admin_addr: n.admin_addr.clone(),
        load: Some(pb::NodeLoad {
            streams: n.load.streams,
            viewers: n.load.viewers,
            ingress_bps: n.load.ingress_bps,
            egress_bps: n.load.egress_bps,
        }),
        viewers: n
            .viewers
            .iter()
            .map(|(key, viewers)| pb::StreamViewers {
                key: Some(key_to_pb(key)),
                viewers: *viewers,
            })
            .collect(),
        version: n.version.clone(),
        started_at_ms: n.started_at_ms as i64,
        ready: n.ready,
    }
}

pub fn node_from_pb(n: Option<pb::Node>) -> Result<NodeRecord, Status> {
    let n = n.ok_or_else(|| Status::invalid_argument("node missing"))?;
    if n.id.is_empty() || n.id.len() > 253 {
        return Err(Status::invalid_argument("node id must be 1 to 253 bytes"));
    }
    let role = match pb::NodeRole::try_from(n.role) {
        Ok(pb::NodeRole::Origin) => NodeRole::Origin,
        Ok(pb::NodeRole::Edge) => NodeRole::Edge,
        _ => return Err(Status::invalid_argument("node role must be origin or edge")),
    };
    let load = n.load.unwrap_or_default();
    let viewers = n
        .viewers
        .into_iter()
        .map(|v| Ok((key_from_pb(v.key)?, v.viewers)))
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(NodeRecord {
        id: n.id,
        role,
        relay_addr: n.relay_addr,
        rtmp_addr: n.rtmp_addr,
        http_addr: n.http_addr,
        admin_addr: n.admin_addr,
        load: NodeLoad {
            streams: load.streams,
            viewers: load.viewers,
            ingress_bps: load.ingress_bps,
            egress_bps: load.egress_bps,
        },
        viewers,
        version: n.version,
        started_at_ms: n.started_at_ms.max(0) as u64,
        ready: n.ready,
    })
}

pub fn stream_to_pb(s: &StreamRecord) -> pb::StreamRecord {
    pb::StreamRecord {
        key: Some(key_to_pb(&s.key)),
        node_id: s.node_id.clone(),
        relay_addr: s.relay_addr.clone(),
        epoch: s.epoch,
        media: Some(media_to_pb(&s.media)),
        publisher_addr: s.publisher_addr.clone(),
        started_at_ms: s.started_at_ms as i64,
        forwards: s.forwards.iter().map(forward_status_to_pb).collect(),
        hls_first_msn: s.hls.first_msn,
        hls_discontinuity: s.hls.discontinuity,
    }
}

pub fn stream_from_pb(s: Option<pb::StreamRecord>) -> Result<StreamRecord, Status> {
    let s = s.ok_or_else(|| Status::internal("stream record missing"))?;
    Ok(StreamRecord {
        key: key_from_pb(s.key)?,
        node_id: s.node_id,
        relay_addr: s.relay_addr,
        epoch: s.epoch,
        media: media_from_pb(s.media),
        publisher_addr: s.publisher_addr,
        started_at_ms: s.started_at_ms.max(0) as u64,
        forwards: s.forwards.into_iter().map(forward_status_from_pb).collect(),
        hls: crate::HlsSequence {
            first_msn: s.hls_first_msn,
            discontinuity: s.hls_discontinuity,
        },
    })
}

pub fn claim_from_pb(r: pb::RegisterStreamRequest) -> Result<StreamClaim, Status> {
    if r.node_id.is_empty() {
        return Err(Status::invalid_argument("node id missing"));
    }
    Ok(StreamClaim {
        key: key_from_pb(r.key)?,
        node_id: r.node_id,
        relay_addr: r.relay_addr,
        media: media_from_pb(r.media),
        publisher_addr: r.publisher_addr,
    })
}

pub fn claim_to_pb(c: &StreamClaim) -> pb::RegisterStreamRequest {
    pb::RegisterStreamRequest {
        key: Some(key_to_pb(&c.key)),
        node_id: c.node_id.clone(),
        relay_addr: c.relay_addr.clone(),
        media: Some(media_to_pb(&c.media)),
        publisher_addr: c.publisher_addr.clone(),
    }
}

pub fn owned_to_pb(o: &OwnedStream) -> pb::OwnedStream {
    pb::OwnedStream {
        key: Some(key_to_pb(&o.key)),
        epoch: o.epoch,
        media: Some(media_to_pb(&o.media)),
        publisher_addr: o.publisher_addr.clone(),
        started_at_ms: o.started_at_ms as i64,
        forwards: o.forwards.iter().map(forward_status_to_pb).collect(),
        hls_next_msn: o.hls.first_msn,
        hls_discontinuity: o.hls.discontinuity,
    }
}

pub fn owned_from_pb(o: pb::OwnedStream) -> Result<OwnedStream, Status> {
    Ok(OwnedStream {
        key: key_from_pb(o.key)?,
        epoch: o.epoch,
        media: media_from_pb(o.media),
        publisher_addr: o.publisher_addr,
        started_at_ms: o.started_at_ms.max(0) as u64,
        forwards: o
            .forwards
            .into_iter()
            .take(crate::forward::MAX_FORWARDS_PER_STREAM)
            .map(forward_status_from_pb)
            .collect(),
        hls: crate::HlsSequence {
            first_msn: o.hls_next_msn,
            discontinuity: o.hls_discontinuity,
        },
    })
}

fn source_to_pb(source: ForwardSource) -> pb::ForwardSource {
    match source {
        ForwardSource::Config => pb::ForwardSource::Config,
        ForwardSource::Webhook => pb::ForwardSource::Webhook,
        ForwardSource::Api => pb::ForwardSource::Api,
    }
}

fn source_from_pb(source: i32) -> Option<ForwardSource> {
    match pb::ForwardSource::try_from(source) {
        Ok(pb::ForwardSource::Config) => Some(ForwardSource::Config),
        Ok(pb::ForwardSource::Webhook) => Some(ForwardSource::Webhook),
        Ok(pb::ForwardSource::Api) => Some(ForwardSource::Api),
        _ => None,
    }
}

pub fn forward_status_to_pb(f: &ForwardStatus) -> pb::ForwardStatus {
    pb::ForwardStatus {
        id: f.id.clone(),
        source: f.source.map(source_to_pb).unwrap_or_default() as i32,
        destination: f.destination.clone(),
        state: f.state.as_str().to_owned(),
        bytes: f.bytes,
        reconnects: f.reconnects,
        last_error: f.last_error.clone(),
    }
}

pub fn forward_status_from_pb(f: pb::ForwardStatus) -> ForwardStatus {
    ForwardStatus {
        id: f.id,
        source: source_from_pb(f.source),
        destination: f.destination,
        state: ForwardState::parse(&f.state),
        bytes: f.bytes,
        reconnects: f.reconnects,
        last_error: f.last_error,
    }
}

pub fn forward_target_to_pb(t: &ForwardTarget) -> pb::ForwardTarget {
    pb::ForwardTarget {
        id: t.id.clone(),
        source: source_to_pb(t.source) as i32,
        url: t.url.clone(),
    }
}

/// A destination as the control plane sent it; `None` for one this build cannot use.
pub fn forward_target_from_pb(t: pb::ForwardTarget) -> Option<ForwardTarget> {
    Some(ForwardTarget {
        id: t.id,
        source: source_from_pb(t.source)?,
        url: t.url,
    })
}

pub fn event_to_pb(e: &RegistryEvent) -> pb::WatchEvent {
    use pb::watch_event::Event;
    let event = match e {
        RegistryEvent::StreamUp(s) => Event::StreamUp(stream_to_pb(s)),
        RegistryEvent::StreamDown {
            key,
            epoch,
            node_id,
        } => Event::StreamDown(pb::StreamDown {
            key: Some(key_to_pb(key)),
            epoch: *epoch,
            node_id: node_id.clone(),
        }),
        RegistryEvent::NodeUp(n) => Event::NodeUp(node_to_pb(n)),
        RegistryEvent::NodeDown(id) => Event::NodeDown(pb::NodeDown { id: id.clone() }),
    };
    pb::WatchEvent { event: Some(event) }
}

pub fn event_from_pb(e: pb::WatchEvent) -> Result<RegistryEvent, Status> {
    use pb::watch_event::Event;
    Ok(match e.event {
        Some(Event::StreamUp(s)) => RegistryEvent::StreamUp(stream_from_pb(Some(s))?),
        Some(Event::StreamDown(d)) => RegistryEvent::StreamDown {
            key: key_from_pb(d.key)?,
            epoch: d.epoch,
            node_id: d.node_id,
        },
        Some(Event::NodeUp(n)) => RegistryEvent::NodeUp(node_from_pb(Some(n))?),
        Some(Event::NodeDown(d)) => RegistryEvent::NodeDown(d.id),
        None => return Err(Status::internal("empty watch event")),
    })
}

pub fn recording_to_pb(r: &RecordingRecord) -> pb::Recording {
    pb::Recording {
        key: Some(key_to_pb(&r.stream)),
        id: r.id.clone(),
        node_id: r.node_id.clone(),
        epoch: r.epoch,
        started_at_ms: r.started_at_ms as i64,
        duration_ms: r.duration_ms,
        size: r.size,
        state: match r.state {
            RecordingState::Recording => pb::RecordingState::Recording,
            RecordingState::Complete => pb::RecordingState::Complete,
            RecordingState::Failed => pb::RecordingState::Failed,
        } as i32,
        reason: r.reason.clone(),
        etag: r.etag.clone(),
        relay_addr: r.relay_addr.clone(),
    }
}

/// Validates a recording received over gRPC (its key, and an id that is a plain file name).
pub fn recording_from_pb(r: pb::Recording) -> Result<RecordingRecord, Status> {
    if !valid_recording_id(&r.id) {
        return Err(Status::invalid_argument(format!(
            "bad recording id {:?}",
            r.id
        )));
    }
    Ok(RecordingRecord {
        stream: key_from_pb(r.key)?,
        id: r.id,
        node_id: r.node_id,
        epoch: r.epoch,
        started_at_ms: r.started_at_ms.max(0) as u64,
        duration_ms: r.duration_ms,
        size: r.size,
        state: match pb::RecordingState::try_from(r.state) {
            Ok(pb::RecordingState::Recording) => RecordingState::Recording,
            Ok(pb::RecordingState::Failed) => RecordingState::Failed,
            _ => RecordingState::Complete,
        },
        reason: r.reason,
        etag: r.etag,
        relay_addr: r.relay_addr,
    })
}

/// A recording id is a file name stem: 1 to 64 ASCII letters, digits, `-`, `_` and `.`, not
/// starting with `.` (so it can never name a path outside the stream's directory).
pub fn valid_recording_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
