//! Playback authorization, decided at the edge without a round trip per viewer: IP rules, then
//! signed URLs (`?token=EXPIRES.SIGNATURE`, HMAC-SHA256 over `play`, the stream and the expiry,
//! see `corriente_core::access`) for the applications that require them, then the optional
//! `on_play` webhook.

use std::net::IpAddr;
use std::sync::Arc;

use corriente_cluster::{Webhook, WebhookError};
use corriente_core::access::{self, IpRules, TokenError};
use corriente_core::secret::SecretFile;
use corriente_media::StreamKey;
use corriente_media::frame::unix_micros;

/// Who may watch.
#[derive(Debug, Clone, Default)]
pub struct PlayAuthConfig {
    /// Addresses allowed and denied.
    pub ip_rules: IpRules,
    /// Secrets that sign playback tokens; `None`: no token needed.
    pub secrets: Option<Arc<SecretFile>>,
    /// Applications whose streams need a token; empty means every application.
    pub token_apps: Vec<String>,
    /// An `on_play` hook asked for every viewer (2xx allows).
    pub webhook: Option<Webhook>,
}

impl PlayAuthConfig {}

/// Why a viewer may not watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlayDenial {
    /// A bounded label for metrics.
    pub reason: &'static str,
    /// For the viewer and the log.
    pub message: String,
    /// The authorization service could not answer (HTTP 503 rather than 403).
    pub unavailable: bool,
}

impl PlayDenial {
    fn refused(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            message,
            unavailable: false,
        }
    }
}

/// What the edge asks before a viewer plays.
pub(crate) async fn authorize(
    config: &PlayAuthConfig,
    key: &StreamKey,
    query: &str,
    peer: IpAddr,
    protocol: &str,
    node: &str,
) -> Result<(), PlayDenial> {
    if !config.ip_rules.permits(peer) {
        return Err(PlayDenial::refused(
            "ip_denied",
            format!("playback from {peer} is not allowed"),
        ));
    }
    if let Some(secrets) = &config.secrets
        && (config.token_apps.is_empty() || config.token_apps.iter().any(|a| a == key.app()))
    {
        let token = access::query_param(query, "token").unwrap_or("");
        let now = unix_micros() / 1_000_000;
        if let Err(e) = access::verify(&secrets.secrets(), "play", &key.to_string(), token, now) {
            let message = match e {
                TokenError::Missing => format!("stream {key} needs a signed URL (?token=…)"),
                TokenError::Expired => format!("the signed URL of {key} has expired"),
                TokenError::Malformed | TokenError::BadSignature => {
                    format!("the signed URL of {key} is not valid")
                }
            };
            return Err(PlayDenial::refused(e.reason(), message));
        }
    }
    if let Some(hook) = &config.webhook {
        let body = serde_json::json!({
            "action": "play",
            "app": key.app(),
            "name": key.name(),
            "stream": key.to_string(),
            "client_ip": peer.to_string(),
            "query": query,
            "protocol": protocol,
            "node": node,
        });
        match hook.ask(&body).await {
            Ok(()) => {}
            Err(WebhookError::Refused(status)) => {
                return Err(PlayDenial::refused(
                    "webhook_refused",
                    format!("playback of {key} refused by the on_play hook (HTTP {status})"),
                ));
            }
            Err(e) => {
                return Err(PlayDenial {
                    reason: "webhook_unavailable",
                    message: format!("playback authorization is unavailable: {e}"),
                    unavailable: true,
                });
            }
        }
    }
    Ok(())
}
