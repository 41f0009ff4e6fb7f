//! The publish key admin API, served by every control-plane replica on its admin port (admin
//! actions: the admin server guards them with the admin token):
//!
//! - `POST /api/v1/keys` `{"stream": "live/cam", "note": "...", "expires_at": UNIX_SECONDS}`
//!   creates a key and answers its secret, the only time it is ever shown;
//! - `GET /api/v1/keys` lists keys (id, stream, a short hint of the secret, note, times, state);
//! - `DELETE /api/v1/keys/{id}` revokes a key, for every replica at once.
//!
//! The registry stores the SHA-256 of the secret, never the secret.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use bytes::Bytes;
use corriente_core::StreamKey;
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::api::{error, random_hex, unavailable};
use crate::metrics;
use crate::publish_auth::secret_sha256;
use crate::registry::{PublishKey, Registry};

/// Random bytes in a secret (hex-encoded: 48 characters, URL- and stream-name-safe).
const SECRET_BYTES: usize = 24;
/// Characters of the secret kept as a hint.
const HINT_CHARS: usize = 6;
const MAX_NOTE: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// `APP/NAME`.
    stream: String,
    #[serde(default)]
    note: String,
    /// Unix seconds.
    #[serde(default)]
    expires_at: Option<u64>,
}

/// A key as listed: never the secret or its hash.
#[derive(Serialize)]
struct KeyView {
    id: String,
    stream: String,
    hint: String,
    note: String,
    created_ms: u64,
    expires_at: Option<u64>,
    revoked_ms: Option<u64>,
    /// `active`, `expired` or `revoked`.
    state: &'static str,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl KeyView {
    fn new(key: &PublishKey) -> Self {
        let state = if key.revoked_ms.is_some() {
            "revoked"
        } else if key.expires_at.is_some_and(|at| at < unix_ms() / 1000) {
            "expired"
        } else {
            "active"
        };
        Self {
            id: key.id.clone(),
            stream: key.stream.to_string(),
            hint: key.hint.clone(),
            note: key.note.clone(),
            created_ms: key.created_ms,
            expires_at: key.expires_at,
            revoked_ms: key.revoked_ms,
            state,
        }
    }
}

async fn create<R: Registry>(registry: &R, required: bool, body: &[u8]) -> Response {
    let request: CreateKey = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"stream\": \"APP/NAME\", \"note\"?, \"expires_at\"?}}: {e}"),
            );
        }
    };
    let stream = match StreamKey::parse(&request.stream) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("stream: {e}")),
    };
    if request.note.len() > MAX_NOTE {
        return error(
            StatusCode::BAD_REQUEST,
            format!("note: at most {MAX_NOTE} bytes"),
        );
    }
    let created_ms = unix_ms();
    if request.expires_at.is_some_and(|at| at <= created_ms / 1000) {
        return error(
            StatusCode::BAD_REQUEST,
            "expires_at (Unix seconds) is in the past",
        );
    }
    let rng = SystemRandom::new();
    let (Some(secret), Some(id)) = (random_hex(&rng, SECRET_BYTES), random_hex(&rng, 8)) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no randomness available");
    };
    let key = PublishKey {
        id,
        secret_sha256: secret_sha256(&secret),
        hint: secret[..HINT_CHARS].to_owned(),
        stream,
        note: request.note,
        created_ms,
        expires_at: request.expires_at,
        revoked_ms: None,
    };
    if let Err(e) = registry.create_publish_key(key.clone()).await {
        return unavailable(e);
    }
    metrics::PUBLISH_KEY_ACTIONS
        .with_label_values(&["create"])
        .inc();
    info!(id = %key.id, stream = %key.stream, "publish key created");
    let mut answer = serde_json::json!({
        "id": key.id,
        "stream": key.stream.to_string(),
        "secret": secret,
        "hint": key.hint,
        "note": key.note,
        "created_ms": key.created_ms,
        "expires_at": key.expires_at,
        "stream_key": secret,
        "stream_key_with_name": format!("{}?key={secret}", key.stream.name()),
        "server_path": format!("/{}", key.stream.app()),
        "enforced": required,
    });
    if !required {
        answer["warning"] = "publish authorization is off on this control plane: anyone may \
                             publish until it runs with --publish-auth on"
            .into();
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// The publish key routes over a registry. `required` says whether publish authorization is
/// on (a key created while it is off is accepted, with a warning in the answer).
pub fn routes<R: Registry>(registry: Arc<R>, required: bool) -> Router {
    let for_create = registry.clone();
    let for_list = registry.clone();
    Router::new()
        .route(
            "/api/v1/keys",
            get(move || async move {
                match for_list.list_publish_keys().await {
                    Ok(keys) => Json(serde_json::json!({
                        "keys": keys.iter().map(KeyView::new).collect::<Vec<_>>(),
                        "enforced": required,
                    }))
                    .into_response(),
                    Err(e) => unavailable(e),
                }
            })
            .post(move |body: Bytes| async move { create(&*for_create, required, &body).await }),
        )
        .route(
            "/api/v1/keys/{id}",
            delete(move |Path(id): Path<String>| async move {
                match registry.revoke_publish_key(&id).await {
                    Ok(Some(key)) => {
                        metrics::PUBLISH_KEY_ACTIONS
                            .with_label_values(&["revoke"])
                            .inc();
                        info!(id = %key.id, stream = %key.stream, "publish key revoked");
                        Json(KeyView::new(&key)).into_response()
                    }
                    Ok(None) => error(StatusCode::NOT_FOUND, format!("no publish key {id:?}")),
                    Err(e) => unavailable(e),
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::MemoryRegistry;
    use crate::api::answer;

    #[tokio::test]
    async fn creates_keys_storing_only_the_hash() {
        let registry = MemoryRegistry::new(Duration::from_secs(5));
        let (status, body) = answer(
            create(
                &registry,
                true,
                br#"{"stream":"live/cam","note":"studio","expires_at":99999999999}"#,
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let secret = body["secret"].as_str().unwrap();
        assert_eq!(secret.len(), 2 * SECRET_BYTES);
        assert_eq!(body["stream_key_with_name"], format!("cam?key={secret}"));
        assert_eq!(body["enforced"], true);
        let stored = registry.list_publish_keys().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].secret_sha256, secret_sha256(secret));
        assert_eq!(stored[0].hint, secret[..HINT_CHARS]);
        let listed = serde_json::to_string(&KeyView::new(&stored[0])).unwrap();
        assert!(!listed.contains(secret) && !listed.contains(&stored[0].secret_sha256));
        assert!(listed.contains("\"state\":\"active\""), "{listed}");

        let (_, open) = answer(create(&registry, false, br#"{"stream":"live/b"}"#).await).await;
        assert!(open["warning"].as_str().is_some(), "{open}");
    }

    #[tokio::test]
    async fn refuses_bad_requests_clearly() {
        let registry = MemoryRegistry::new(Duration::from_secs(5));
        let long_note = format!(r#"{{"stream":"live/a","note":"{}"}}"#, "x".repeat(300));
        for body in [
            "not json",
            r#"{"stream":"nope"}"#,
            r#"{"stream":"live/bad name"}"#,
            r#"{"stream":"live/a","expires_at":1}"#,
            r#"{"stream":"live/a","extra":1}"#,
            long_note.as_str(),
        ] {
            let (status, answer) = answer(create(&registry, true, body.as_bytes()).await).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(answer["error"].is_string(), "{body}: {answer}");
        }
        assert!(registry.list_publish_keys().await.unwrap().is_empty());
    }
}
