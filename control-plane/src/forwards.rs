//! The restreaming admin API, served by every control-plane replica on its admin port (admin
//! actions: the admin server guards them with the admin token):
//!
//! - `GET /api/v1/streams/{app}/{name}/forwards`: the destinations set here for the stream
//!   (stream keys hidden), and, while it is live, every forward its origin runs (from the
//!   configuration and the `on_publish` webhook too) with its state and bytes;
//! - `POST /api/v1/streams/{app}/{name}/forwards` `{"url": "rtmp[s]://HOST[:PORT]/APP/KEY"}`
//!   adds a destination (live or not: it applies whenever the stream is live);
//! - `DELETE /api/v1/streams/{app}/{name}/forwards/{id}` removes one.
//!
//! The registry keeps the destinations; the stream's owner learns them with its claim and
//! every heartbeat, so a change takes effect within one heartbeat interval, and a new owner
//! after a failover forwards to the same destinations.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use bytes::Bytes;
use corriente_cluster::forward::MAX_FORWARDS_PER_STREAM;
use corriente_cluster::{ForwardSource, ForwardTarget, ForwardUrl};
use corriente_core::StreamKey;
use ring::rand::SystemRandom;
use serde::Deserialize;
use tracing::info;

use crate::api::{error, random_hex, unavailable};
use crate::registry::Registry;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddForward {
    url: String,
}

fn bad_name(e: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, e.to_string())
}

fn view(target: &ForwardTarget) -> serde_json::Value {
    serde_json::json!({
        "id": target.id,
        "source": target.source,
        "destination": target.redacted(),
    })
}

async fn list<R: Registry>(registry: &R, key: StreamKey) -> Response {
    let targets = match registry.stream_forwards(std::slice::from_ref(&key)).await {
        Ok(mut t) => t.pop().unwrap_or_default(),
        Err(e) => return unavailable(e),
    };
    let live = match registry.lookup_stream(&key).await {
        Ok(record) => record,
        Err(e) => return unavailable(e),
    };
    Json(serde_json::json!({
        "stream": key.to_string(),
        "live": live.is_some(),
        "origin": live.as_ref().map(|r| r.node_id.clone()),
        "targets": targets.iter().map(view).collect::<Vec<_>>(),
        "forwards": live.map(|r| r.forwards).unwrap_or_default(),
    }))
    .into_response()
}

async fn add<R: Registry>(registry: &R, key: StreamKey, body: &[u8]) -> Response {
    let request: AddForward = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"url\": \"rtmp://HOST/APP/STREAM-KEY\"}}: {e}"),
            );
        }
    };
    let url = match ForwardUrl::parse(&request.url) {
        Ok(url) => url,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("url: {e}")),
    };
    match registry.stream_forwards(std::slice::from_ref(&key)).await {
        Ok(existing) if existing.iter().flatten().any(|t| t.url == request.url) => {
            return error(
                StatusCode::CONFLICT,
                format!("{key} is forwarded to {} already", url.redacted()),
            );
        }
        Ok(_) => {}
        Err(e) => return unavailable(e),
    }
    let Some(id) = random_hex(&SystemRandom::new(), 6) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no randomness available");
    };
    let target = ForwardTarget {
        id: format!("api-{id}"),
        source: ForwardSource::Api,
        url: request.url,
    };
    match registry.add_stream_forward(&key, target.clone()).await {
        Ok(true) => {
            info!(stream = %key, id = %target.id, destination = %url.redacted(), "forward added");
            (StatusCode::CREATED, Json(view(&target))).into_response()
        }
        Ok(false) => error(
            StatusCode::CONFLICT,
            format!("{key} has {MAX_FORWARDS_PER_STREAM} forwards already; remove one first"),
        ),
        Err(e) => unavailable(e),
    }
}

/// The forward routes over a registry.
pub fn routes<R: Registry>(registry: Arc<R>) -> Router {
    let for_list = registry.clone();
    let for_add = registry.clone();
    Router::new()
        .route(
            "/api/v1/streams/{app}/{name}/forwards",
            get(
                move |Path((app, name)): Path<(String, String)>| async move {
                    match StreamKey::new(&app, &name) {
                        Ok(key) => list(&*for_list, key).await,
                        Err(e) => bad_name(e),
                    }
                },
            )
            .post(
                move |Path((app, name)): Path<(String, String)>, body: Bytes| async move {
                    match StreamKey::new(&app, &name) {
                        Ok(key) => add(&*for_add, key, &body).await,
                        Err(e) => bad_name(e),
                    }
                },
            ),
        )
        .route(
            "/api/v1/streams/{app}/{name}/forwards/{id}",
            delete(
                move |Path((app, name, id)): Path<(String, String, String)>| async move {
                    let key = match StreamKey::new(&app, &name) {
                        Ok(key) => key,
                        Err(e) => return bad_name(e),
                    };
                    match registry.remove_stream_forward(&key, &id).await {
                        Ok(true) => {
                            info!(stream = %key, %id, "forward removed");
                            StatusCode::NO_CONTENT.into_response()
                        }
                        Ok(false) => error(
                            StatusCode::NOT_FOUND,
                            format!("{key} has no forward {id:?}"),
                        ),
                        Err(e) => unavailable(e),
                    }
                },
            ),
        )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::MemoryRegistry;
    use crate::api::answer;

    #[tokio::test]
    async fn adds_lists_and_removes_hiding_the_key() {
        let registry = MemoryRegistry::new(Duration::from_secs(5));
        let key = StreamKey::new("live", "cam").unwrap();
        let (status, added) = answer(
            add(
                &registry,
                key.clone(),
                br#"{"url":"rtmp://a.rtmp.youtube.com/live2/abcd-SECRET"}"#,
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{added}");
        assert_eq!(
            added["destination"],
            "rtmp://a.rtmp.youtube.com:1935/live2/abcd…"
        );
        let (_, listed) = answer(list(&registry, key.clone()).await).await;
        assert!(!listed.to_string().contains("SECRET"), "{listed}");
        assert_eq!(listed["targets"].as_array().map(Vec::len), Some(1));
        assert_eq!(listed["live"], false);
        let stored = registry
            .stream_forwards(std::slice::from_ref(&key))
            .await
            .unwrap();
        assert_eq!(
            stored[0][0].url,
            "rtmp://a.rtmp.youtube.com/live2/abcd-SECRET"
        );
        let id = added["id"].as_str().unwrap();
        assert!(registry.remove_stream_forward(&key, id).await.unwrap());
        assert!(!registry.remove_stream_forward(&key, id).await.unwrap());
    }

    #[tokio::test]
    async fn refuses_bad_destinations_and_too_many() {
        let registry = MemoryRegistry::new(Duration::from_secs(5));
        let key = StreamKey::new("live", "cam").unwrap();
        for body in [
            &br#"{"url":"http://x/a/b"}"#[..],
            br#"{"url":"rtmp://x/onlyapp"}"#,
            br#"{"nope":1}"#,
            b"not json",
        ] {
            let (status, e) = answer(add(&registry, key.clone(), body).await).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
            assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()));
        }
        for i in 0..MAX_FORWARDS_PER_STREAM {
            let body = format!(r#"{{"url":"rtmp://x/a/b{i}"}}"#);
            let (status, _) = answer(add(&registry, key.clone(), body.as_bytes()).await).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (status, e) =
            answer(add(&registry, key.clone(), br#"{"url":"rtmp://x/a/b"}"#).await).await;
        assert_eq!(status, StatusCode::CONFLICT, "{e}");
        assert!(
            e["error"]
                .as_str()
                .is_some_and(|m| m.contains("16 forwards")),
            "{e}"
        );
        let (status, e) =
            answer(add(&registry, key.clone(), br#"{"url":"rtmp://x/a/b3"}"#).await).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            e["error"]
                .as_str()
                .is_some_and(|m| m.contains("is forwarded to")),
            "{e}"
        );
    }
}
