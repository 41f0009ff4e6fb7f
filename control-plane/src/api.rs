//! What the admin API's routes share: JSON error answers and random identifiers.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ring::rand::{SecureRandom, SystemRandom};
use tracing::warn;

use crate::publish_auth::hex;
use crate::registry::RegistryError;

/// `status` with `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// 503 for a registry that could not answer (logged).
pub(crate) fn unavailable(e: RegistryError) -> Response {
    warn!(error = %e, "admin API request failed: the registry did not answer");
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// `n` random bytes, hex-encoded.
pub(crate) fn random_hex(rng: &SystemRandom, n: usize) -> Option<String> {
    let mut bytes = vec![0u8; n];
    rng.fill(&mut bytes).ok()?;
    Some(hex(&bytes))
}

/// A route's answer as a test reads it: status and JSON body.
#[cfg(test)]
pub(crate) async fn answer(response: Response) -> (StatusCode, serde_json::Value) {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}
