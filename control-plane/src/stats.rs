//! The cluster stats API, served by every control-plane replica on its admin port:
//!
//! - `GET /api/v1/streams`: live streams with their origin, epoch, codecs, resolution, frame
//!   rate, bitrate, publisher address, uptime, and viewers per edge;
//! - `GET /api/v1/nodes`: origins and edges with addresses, load and readiness.
//!
//! A per-stream breakdown belongs here, not in Prometheus labels.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use corriente_cluster::{ForwardStatus, NodeRecord, NodeRole, StreamRecord};
use corriente_core::access::AdminReader;
use corriente_core::{MediaInfo, StreamKey};
use serde::Serialize;

use crate::api::unavailable;
use crate::registry::Registry;

#[derive(Serialize)]
struct EdgeViewers {
    edge: String,
    viewers: u32,
}

#[derive(Serialize)]
struct StreamView {
    key: StreamKey,
    /// `APP/NAME`.
    path: String,
    origin: String,
    relay_addr: String,
    epoch: u64,
    /// Only for trusted readers (see [`AdminReader`]): a publisher's address is personal data.
    #[serde(skip_serializing_if = "Option::is_none")]
    publisher_addr: Option<String>,
    started_at_ms: u64,
    uptime_seconds: u64,
    media: MediaInfo,
    viewers: u32,
    viewers_by_edge: Vec<EdgeViewers>,
    /// Restreaming: each forward's destination (stream key hidden), state and bytes, as the
    /// owning origin last reported them.
    forwards: Vec<ForwardStatus>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn streams_view(
    streams: Vec<StreamRecord>,
    nodes: &[NodeRecord],
    reader: AdminReader,
) -> Vec<StreamView> {
    let mut by_stream: BTreeMap<&StreamKey, Vec<EdgeViewers>> = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.role == NodeRole::Edge) {
        for (key, viewers) in &node.viewers {
            by_stream.entry(key).or_default().push(EdgeViewers {
                edge: node.id.clone(),
                viewers: *viewers,
            });
        }
    }
    let now = now_ms();
    streams
        .into_iter()
        .map(|s| {
            let viewers_by_edge = by_stream.remove(&s.key).unwrap_or_default();
            StreamView {
                path: s.key.to_string(),
                viewers: viewers_by_edge.iter().map(|e| e.viewers).sum(),
                viewers_by_edge,
                uptime_seconds: now.saturating_sub(s.started_at_ms) / 1000,
                key: s.key,
                origin: s.node_id,
                relay_addr: s.relay_addr,
                epoch: s.epoch,
                publisher_addr: reader.trusted.then_some(s.publisher_addr),
                started_at_ms: s.started_at_ms,
                media: s.media,
                forwards: s.forwards,
            }
        })
        .collect()
}

/// The stats routes over a registry.
pub fn routes<R: Registry>(registry: Arc<R>) -> Router {
    let for_streams = registry.clone();
    Router::new()
        .route(
            "/api/v1/streams",
            get(move |reader: Option<Extension<AdminReader>>| async move {
                let reader = reader.map(|Extension(r)| r).unwrap_or_default();
                let streams = match for_streams.list_streams().await {
                    Ok(s) => s,
                    Err(e) => return unavailable(e),
                };
                let nodes = for_streams.list_nodes().await.unwrap_or_default();
                Json(serde_json::json!({ "streams": streams_view(streams, &nodes, reader) }))
                    .into_response()
            }),
        )
        .route(
            "/api/v1/nodes",
            get(move || async move {
                match registry.list_nodes().await {
                    Ok(nodes) => Json(serde_json::json!({ "nodes": nodes })).into_response(),
                    Err(e) => unavailable(e),
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use corriente_cluster::NodeLoad;

    #[test]
    fn counts_viewers_per_edge() {
        let key = StreamKey::new("live", "a").unwrap();
        let stream = StreamRecord {
            key: key.clone(),
            node_id: "o1".into(),
            relay_addr: "o1:50052".into(),
            epoch: 2,
            media: MediaInfo::default(),
            publisher_addr: "203.0.113.1:4000".into(),
            started_at_ms: now_ms() - 5000,
            forwards: Vec::new(),
            hls: Default::default(),
        };
        let edge = |id: &str, n: u32| NodeRecord {
            id: id.into(),
            role: NodeRole::Edge,
            relay_addr: String::new(),
            rtmp_addr: String::new(),
            http_addr: String::new(),
            admin_addr: String::new(),
            load: NodeLoad::default(),
            viewers: vec![(key.clone(), n)],
            version: String::new(),
            started_at_ms: 0,
            ready: true,
        };
        let view = streams_view(
            vec![stream.clone()],
            &[edge("e1", 3), edge("e2", 4)],
            AdminReader { trusted: true },
        );
        assert_eq!(view[0].viewers, 7);
        assert_eq!(view[0].viewers_by_edge.len(), 2);
        assert!(view[0].uptime_seconds >= 4);
        assert_eq!(view[0].path, "live/a");
        assert_eq!(view[0].publisher_addr.as_deref(), Some("203.0.113.1:4000"));
        // An untrusted reader does not see the publisher's address.
        let view = streams_view(vec![stream], &[], AdminReader::default());
        assert_eq!(view[0].publisher_addr, None);
    }
}
