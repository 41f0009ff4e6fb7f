//! The recordings index as the cluster sees it: each origin syncs the recordings its disk
//! holds (`SyncRecordings`), and the control plane lists them with the relay address of the
//! origin holding each, for edges (`ListRecordings`: on-demand playback) and for operators:
//!
//! - `GET /api/v1/recordings[?stream=APP/NAME]`: recordings, newest first;
//! - `GET /api/v1/recordings/{app}/{name}/{id}`: one;
//! - `DELETE /api/v1/recordings/{app}/{name}/{id}` (an admin action: the admin token): the
//!   origin holding it deletes the file, and the entry leaves the index.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use corriente_cluster::{NodeRole, RecordingRecord};
use corriente_core::StreamKey;
use tracing::info;

use crate::api::{error, unavailable};
use crate::probe::OwnerProbe;
use crate::registry::{Registry, RegistryError};

/// The index's recordings of `key` (every stream's when `None`), only `id` when given, newest
/// first, each with its origin's relay address while that origin is live.
pub(crate) async fn list<R: Registry>(
    registry: &R,
    key: Option<&StreamKey>,
    id: Option<&str>,
) -> Result<Vec<RecordingRecord>, RegistryError> {
    let mut recordings = registry.list_recordings().await?;
    recordings.retain(|r| {
        key.is_none_or(|k| r.stream == *k) && id.is_none_or(|id| id.is_empty() || r.id == id)
    });
    let origins: HashMap<String, String> = registry
        .list_nodes()
        .await?
        .into_iter()
        .filter(|n| n.role == NodeRole::Origin)
        .map(|n| (n.id, n.relay_addr))
        .collect();
    for r in &mut recordings {
        r.relay_addr = origins.get(&r.node_id).cloned().unwrap_or_default();
    }
    recordings.sort_by(|a, b| {
        (b.started_at_ms, &a.stream, &a.id).cmp(&(a.started_at_ms, &b.stream, &b.id))
    });
    Ok(recordings)
}

fn view(r: &RecordingRecord) -> serde_json::Value {
    serde_json::json!({
        "stream": r.stream.to_string(),
        "id": r.id,
        "origin": r.node_id,
        "origin_up": !r.relay_addr.is_empty(),
        "epoch": r.epoch,
        "started_at_ms": r.started_at_ms,
        "duration_ms": r.duration_ms,
        "size": r.size,
        "state": r.state,
        "reason": r.reason,
        "url": format!("/vod/{}/{}.mp4", r.stream, r.id),
    })
}

#[derive(serde::Deserialize)]
struct ListQuery {
    stream: Option<String>,
}

fn parse_stream(stream: &str) -> Result<StreamKey, String> {
    let (app, name) = stream.split_once('/').unwrap_or((stream, ""));
    StreamKey::new(app, name).map_err(|e| e.to_string())
}

/// The read routes (listing, one recording).
pub fn routes<R: Registry>(registry: Arc<R>) -> Router {
    let for_one = registry.clone();
    Router::new()
        .route(
            "/api/v1/recordings",
            get(move |Query(q): Query<ListQuery>| async move {
                let key = match q.stream.as_deref().map(parse_stream).transpose() {
                    Ok(key) => key,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                match list(&*registry, key.as_ref(), None).await {
                    Ok(recordings) => Json(serde_json::json!({
                        "recordings": recordings.iter().map(view).collect::<Vec<_>>(),
                    }))
                    .into_response(),
                    Err(e) => unavailable(e),
                }
            }),
        )
        .route(
            "/api/v1/recordings/{app}/{name}/{id}",
            get(
                move |Path((app, name, id)): Path<(String, String, String)>| async move {
                    let key = match StreamKey::new(&app, &name) {
                        Ok(key) => key,
                        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
                    };
                    match list(&*for_one, Some(&key), Some(&id)).await {
                        Ok(found) => match found.first() {
                            Some(r) => Json(view(r)).into_response(),
                            None => not_found(&key, &id),
                        },
                        Err(e) => unavailable(e),
                    }
                },
            ),
        )
}

fn not_found(key: &StreamKey, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no recording {id} of stream {key}"),
    )
}

/// The admin action: deleting a recording (the admin server guards it).
pub fn actions<R: Registry>(registry: Arc<R>, probe: Arc<OwnerProbe>) -> Router {
    Router::new().route(
        "/api/v1/recordings/{app}/{name}/{id}",
        delete(
            move |Path((app, name, id)): Path<(String, String, String)>| async move {
                let key = match StreamKey::new(&app, &name) {
                    Ok(key) => key,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
                };
                remove(&*registry, &probe, &key, &id).await
            },
        ),
    )
}

async fn remove<R: Registry>(
    registry: &R,
    probe: &OwnerProbe,
    key: &StreamKey,
    id: &str,
) -> Response {
    let found = match list(registry, Some(key), Some(id)).await {
        Ok(found) => found,
        Err(e) => return unavailable(e),
    };
    let Some(recording) = found.into_iter().next() else {
        return not_found(key, id);
    };
    if recording.state == corriente_cluster::RecordingState::Recording {
        return error(
            StatusCode::CONFLICT,
            format!("recording {id} of {key} is still being written; stop the stream first"),
        );
    }
    if recording.relay_addr.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "origin {} holding recording {id} is down; retry when it is back",
                recording.node_id
            ),
        );
    }
    match probe.delete_recording(&recording.relay_addr, key, id).await {
        // Gone from the disk (or already gone): the entry leaves the index too.
        Ok(_) => {
            if let Err(e) = registry.remove_recording(&recording.node_id, key, id).await {
                return unavailable(e);
            }
            info!(stream = %key, id, origin = %recording.node_id, "recording deleted through the admin API");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => error(StatusCode::BAD_GATEWAY, message),
    }
}
