//! Publish authorization: who may publish, and under which public name. Origins ask through
//! the `AuthorizePublish` RPC before claiming a stream; every replica gives the same answer
//! because managed keys live in the registry and the rest is configuration.
//!
//! When publish authorization is required, the encoder's stream key field is checked in this
//! order, and the first credential that applies decides:
//!
//! 1. **Managed key** (`POST /api/v1/keys`): `NAME?key=SECRET`, or the bare `SECRET` as the
//!    stream key. The key publishes its own stream: a bare key needs only the right
//!    application. A revoked or expired key is refused for good; a `key=` the registry does
//!    not know goes on to the webhook when there is one.
//! 2. **Signed token**: `NAME?token=EXPIRES.HEXSIG`, an HMAC minted elsewhere with a secret
//!    of `--publish-secret-file` (see [`corriente_core::access`]).
//! 3. **Webhook** (`--on-publish URL`): a JSON POST; a 2xx answer allows, anything else, a
//!    timeout or a connection error refuses.
//!
//! With nothing that applies, the publish is refused with `no_key`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use corriente_cluster::forward::{ForwardUrl, MAX_FORWARDS_PER_STREAM};
use corriente_cluster::{PublishCredential, PublishDecision, PublishDenial, Webhook, WebhookError};
use corriente_core::StreamKey;
use corriente_core::access::{self, TokenError};
use corriente_core::key::split_query;
use corriente_core::secret::SecretFile;
use ring::digest;
use tracing::{debug, info, warn};

use crate::metrics;
use crate::registry::{Registry, RegistryError};

/// How the control plane decides who may publish.
#[derive(Debug, Clone, Default)]
pub struct PublishAuthConfig {
    /// Whether publishing needs a credential at all. Off, anyone who reaches an origin may
    /// publish any name (the origins' IP rules still apply).
    pub required: bool,
    /// HMAC secrets of signed publish tokens, one per line (several while rotating).
    pub secrets: Option<Arc<SecretFile>>,
    /// The `on_publish` webhook.
    pub webhook: Option<Webhook>,
}

/// A publish request as the origin saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// The RTMP application.
    pub app: String,
    /// The stream key field as sent, query included (it may hold a secret: never log it).
    pub name: String,
    /// The encoder's address.
    pub client_ip: String,
    /// The origin asking.
    pub node_id: String,
    /// A periodic re-check of a live publication: not logged or counted as a new decision.
    pub recheck: bool,
}

/// Lowercase hex SHA-256 of a publish key's secret: what the registry stores.
pub fn secret_sha256(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn refused(reason: PublishDenial, message: impl Into<String>) -> PublishDecision {
    PublishDecision::Refused {
        reason,
        message: message.into(),
    }
}

/// Decides publish requests over a registry (for managed keys) and the configuration.
pub struct PublishAuthorizer<R> {
    registry: Arc<R>,
    config: PublishAuthConfig,
}

impl<R: Registry> PublishAuthorizer<R> {
    pub fn new(registry: Arc<R>, config: PublishAuthConfig) -> Self {
        Self { registry, config }
    }

    /// Decides, logs and counts one request. Fails only when the registry cannot answer.
    pub async fn authorize(
        &self,
        request: &PublishRequest,
    ) -> Result<PublishDecision, RegistryError> {
        let decision = self.decide(request).await?;
        if request.recheck {
            if let PublishDecision::Refused { reason, .. } = &decision {
                debug!(app = %request.app, reason = reason.as_str(), node = %request.node_id, "live publication no longer authorized");
            }
            return Ok(decision);
        }
        match &decision {
            PublishDecision::Allowed {
                stream, credential, ..
            } => {
                metrics::PUBLISH_AUTHORIZATIONS
                    .with_label_values(&["allowed", credential.as_str()])
                    .inc();
                if *credential != PublishCredential::Open {
                    info!(%stream, credential = credential.as_str(), client_ip = %request.client_ip, node = %request.node_id, "publish authorized");
                }
            }
            PublishDecision::Refused { reason, message } => {
                metrics::PUBLISH_AUTHORIZATIONS
                    .with_label_values(&["refused", reason.as_str()])
                    .inc();
                info!(app = %request.app, reason = reason.as_str(), client_ip = %request.client_ip, node = %request.node_id, "publish refused: {message}");
            }
        }
        Ok(decision)
    }

    async fn decide(&self, request: &PublishRequest) -> Result<PublishDecision, RegistryError> {
        let app = request.app.as_str();
        let (name, query) = split_query(&request.name);
        let public = |credential| match StreamKey::new(app, name) {
            Ok(stream) => PublishDecision::Allowed {
                stream,
                credential,
                forwards: Vec::new(),
                record: None,
            },
            Err(e) => refused(PublishDenial::BadName, e.to_string()),
        };
        if !self.config.required {
            return Ok(public(PublishCredential::Open));
        }
        let now = unix_now();
        let key_param = access::query_param(query, "key").filter(|k| !k.is_empty());
        let token_param = access::query_param(query, "token").filter(|t| !t.is_empty());
        let bare = key_param.is_none() && token_param.is_none();

        // 1. A managed key: `?key=SECRET`, or the whole stream key field.
        let candidate = key_param.or(bare.then_some(name)).filter(|c| !c.is_empty());
        if let Some(secret) = candidate
            && let Some(key) = self.registry.publish_key(&secret_sha256(secret)).await?
            && key.stream.app() == app
            && (bare || key.stream.name() == name)
        {
            if key.revoked_ms.is_some() {
                return Ok(refused(
                    PublishDenial::RevokedKey,
                    format!("stream key {}… was revoked", key.hint),
                ));
            }
            if key.expires_at.is_some_and(|at| at < now) {
                return Ok(refused(
                    PublishDenial::Expired,
                    format!("stream key {}… has expired", key.hint),
                ));
            }
            return Ok(PublishDecision::Allowed {
                stream: key.stream,
                credential: PublishCredential::ManagedKey,
                forwards: Vec::new(),
                record: None,
            });
        }

        // 2. A signed token.
        if let (Some(token), Some(secrets)) = (token_param, &self.config.secrets) {
            let stream = match StreamKey::new(app, name) {
                Ok(stream) => stream,
                Err(e) => return Ok(refused(PublishDenial::BadName, e.to_string())),
            };
            let verdict = access::verify(
                &secrets.secrets(),
                "publish",
                &stream.to_string(),
                token,
                now,
            );
            return Ok(match verdict {
                Ok(()) => PublishDecision::Allowed {
                    stream,
                    credential: PublishCredential::SignedToken,
                    forwards: Vec::new(),
                    record: None,
                },
                Err(TokenError::Expired) => refused(
                    PublishDenial::Expired,
                    format!("the publish token for {stream} has expired"),
                ),
                Err(_) => refused(
                    PublishDenial::BadSignature,
                    format!("the publish token is not valid for {stream}"),
                ),
            });
        }

        // 3. The webhook.
        if let Some(webhook) = &self.config.webhook {
            let stream = match StreamKey::new(app, name) {
                Ok(stream) => stream,
                Err(e) => return Ok(refused(PublishDenial::BadName, e.to_string())),
            };
            let body = serde_json::json!({
                "action": "publish",
                "app": app,
                "name": name,
                "stream": stream.to_string(),
                "client_ip": request.client_ip,
                "query": query,
                "node": request.node_id,
            });
            return Ok(match webhook.ask_for_answer(&body).await {
                Ok(answer) => {
                    let (forwards, record) = hook_answer(&stream, &answer);
                    PublishDecision::Allowed {
                        stream,
                        credential: PublishCredential::Webhook,
                        forwards,
                        record,
                    }
                }
                Err(WebhookError::Refused(status)) => refused(
                    PublishDenial::WebhookRefused,
                    format!("the publish hook refused {stream} (HTTP {status})"),
                ),
                Err(e) => {
                    warn!(error = %e, "publish hook unavailable: refusing");
                    refused(
                        PublishDenial::WebhookUnavailable,
                        "the publish hook could not be reached; try again shortly",
                    )
                }
            });
        }

        Ok(if key_param.is_some() {
            refused(PublishDenial::UnknownKey, "unknown stream key")
        } else if token_param.is_some() {
            refused(
                PublishDenial::BadSignature,
                "signed publish tokens are not accepted here",
            )
        } else {
            refused(
                PublishDenial::NoKey,
                "a stream key is required: use your key as the stream key, or NAME?key=KEY",
            )
        })
    }
}

/// What an `on_publish` answer asks for: `{"forward": ["rtmp://…", …], "record": true}`, both
/// optional. An empty or non-JSON answer asks for nothing; a destination that is not a valid
/// RTMP(S) URL is left out with a log line (the publish itself was allowed), and so is any past
/// [`MAX_FORWARDS_PER_STREAM`].
fn hook_answer(stream: &StreamKey, answer: &[u8]) -> (Vec<String>, Option<bool>) {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        forward: Vec<String>,
        #[serde(default)]
        record: Option<bool>,
    }
    if answer.iter().all(u8::is_ascii_whitespace) {
        return (Vec::new(), None);
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(answer) else {
        debug!(%stream, "the publish hook's answer is not {{\"forward\": [URL, ...], \"record\": BOOL}}; nothing asked");
        return (Vec::new(), None);
    };
    let mut forwards = Vec::new();
    for url in answer.forward {
        match ForwardUrl::parse(&url) {
            Ok(_) if forwards.len() < MAX_FORWARDS_PER_STREAM => forwards.push(url),
            Ok(parsed) => {
                warn!(%stream, destination = %parsed.redacted(), limit = MAX_FORWARDS_PER_STREAM, "the publish hook asked for too many forwards; ignoring the rest")
            }
            Err(e) => {
                warn!(%stream, "the publish hook asked for a forward that is not valid, ignoring it: {e}")
            }
        }
    }
    (forwards, answer.record)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::MemoryRegistry;
    use crate::registry::PublishKey;

    fn request(app: &str, name: &str) -> PublishRequest {
        PublishRequest {
            app: app.into(),
            name: name.into(),
            client_ip: "203.0.113.7".into(),
            node_id: "o1".into(),
            recheck: false,
        }
    }

    async fn registry_with_keys() -> Arc<MemoryRegistry> {
        let registry = Arc::new(MemoryRegistry::new(Duration::from_secs(5)));
        for (id, secret, expires_at, revoked) in [
            ("k1", "good-secret", None, false),
            ("k2", "old-secret", Some(1), false),
            ("k3", "gone-secret", None, true),
        ] {
            registry
                .create_publish_key(PublishKey {
                    id: id.into(),
                    secret_sha256: secret_sha256(secret),
                    hint: secret[..4].into(),
                    stream: StreamKey::new("live", "cam").unwrap(),
                    note: String::new(),
                    created_ms: 1,
                    expires_at,
                    revoked_ms: None,
                })
                .await
                .unwrap();
            if revoked {
                registry.revoke_publish_key(id).await.unwrap().unwrap();
            }
        }
        registry
    }

    fn reason(d: PublishDecision) -> &'static str {
        match d {
            PublishDecision::Allowed { .. } => "allowed",
            PublishDecision::Refused { reason, .. } => reason.as_str(),
        }
    }

    #[tokio::test]
    async fn decides_in_order_key_token_nothing() {
        let registry = registry_with_keys().await;
        let dir = std::env::temp_dir().join(format!("corriente-pa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "tok-secret\n").unwrap();
        let auth = PublishAuthorizer::new(
            registry,
            PublishAuthConfig {
                required: true,
                secrets: Some(Arc::new(SecretFile::open(dir.join("s")).unwrap())),
                webhook: None,
            },
        );
        let cam = StreamKey::new("live", "cam").unwrap();
        for name in ["good-secret", "cam?key=good-secret"] {
            assert_eq!(
                auth.authorize(&request("live", name)).await.unwrap(),
                PublishDecision::Allowed {
                    stream: cam.clone(),
                    credential: PublishCredential::ManagedKey,
                    forwards: Vec::new(),
                    record: None,
                },
                "{name}"
            );
        }
        let cases = [
            ("live", "cam", "no_key"),
            ("live", "cam?key=nope", "unknown_key"),
            ("live", "other?key=good-secret", "unknown_key"),
            ("other", "good-secret", "no_key"),
            ("live", "gone-secret", "revoked_key"),
            ("live", "cam?key=old-secret", "expired"),
            ("live", "cam?token=123.abc", "bad_signature"),
            ("live", "bad name?token=1.00", "bad_name"),
        ];
        for (app, name, want) in cases {
            assert_eq!(
                reason(auth.authorize(&request(app, name)).await.unwrap()),
                want,
                "{app}/{name}"
            );
        }
        let token = access::sign(b"tok-secret", "publish", "live/cam", unix_now() + 60);
        assert_eq!(
            reason(
                auth.authorize(&request("live", &format!("cam?token={token}")))
                    .await
                    .unwrap()
            ),
            "allowed"
        );
        let stale = access::sign(b"tok-secret", "publish", "live/cam", 10);
        assert_eq!(
            reason(
                auth.authorize(&request("live", &format!("cam?token={stale}")))
                    .await
                    .unwrap()
            ),
            "expired"
        );
        let play = access::sign(b"tok-secret", "play", "live/cam", unix_now() + 60);
        assert_eq!(
            reason(
                auth.authorize(&request("live", &format!("cam?token={play}")))
                    .await
                    .unwrap()
            ),
            "bad_signature",
            "a playback token is no publish key"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn open_mode_strips_the_query() {
        let auth = PublishAuthorizer::new(
            Arc::new(MemoryRegistry::new(Duration::from_secs(5))),
            PublishAuthConfig::default(),
        );
        assert_eq!(
            auth.authorize(&request("live", "test?x=1")).await.unwrap(),
            PublishDecision::Allowed {
                stream: StreamKey::new("live", "test").unwrap(),
                credential: PublishCredential::Open,
                forwards: Vec::new(),
                record: None,
            }
        );
    }
}
