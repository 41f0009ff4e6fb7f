//! The answer to "may this encoder publish?", as the control plane decides it and origins act
//! on it.

use corriente_core::StreamKey;

/// Why a publish was refused. A bounded set: each is a metrics label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishDenial {
    /// No credential in the stream key field.
    NoKey,
    /// A `key=` no managed key matches (or one for another stream).
    UnknownKey,
    /// A managed key that was revoked.
    RevokedKey,
    /// A managed key or signed token past its expiry.
    Expired,
    /// A signed token whose signature does not match (or is malformed).
    BadSignature,
    /// The webhook answered something other than 2xx.
    WebhookRefused,
    /// The webhook timed out or could not be reached.
    WebhookUnavailable,
    /// The client's address is not allowed to publish (decided by the origin).
    IpDenied,
    /// The application or stream name is not a valid name.
    BadName,
}

impl PublishDenial {
    /// Every reason, for initializing metrics.
    pub const ALL: [PublishDenial; 9] = [
        PublishDenial::NoKey,
        PublishDenial::UnknownKey,
        PublishDenial::RevokedKey,
        PublishDenial::Expired,
        PublishDenial::BadSignature,
        PublishDenial::WebhookRefused,
        PublishDenial::WebhookUnavailable,
        PublishDenial::IpDenied,
        PublishDenial::BadName,
    ];

    /// The reason's name, as metrics and the RPC carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishDenial::NoKey => "no_key",
            PublishDenial::UnknownKey => "unknown_key",
            PublishDenial::RevokedKey => "revoked_key",
            PublishDenial::Expired => "expired",
            PublishDenial::BadSignature => "bad_signature",
            PublishDenial::WebhookRefused => "webhook_refused",
            PublishDenial::WebhookUnavailable => "webhook_unavailable",
            PublishDenial::IpDenied => "ip_denied",
            PublishDenial::BadName => "bad_name",
        }
    }

    /// The reason named `s`; `None` for one this build does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// What allowed a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishCredential {
    /// Publish authorization is off.
    Open,
    ManagedKey,
    SignedToken,
    Webhook,
}

impl PublishCredential {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishCredential::Open => "open",
            PublishCredential::ManagedKey => "managed_key",
            PublishCredential::SignedToken => "signed_token",
            PublishCredential::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "managed_key" => PublishCredential::ManagedKey,
            "signed_token" => PublishCredential::SignedToken,
            "webhook" => PublishCredential::Webhook,
            _ => PublishCredential::Open,
        }
    }
}

/// The answer to "may this encoder publish?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishDecision {
    /// Publish under `stream`, the public name.
    Allowed {
        stream: StreamKey,
        credential: PublishCredential,
        /// Destinations the `on_publish` webhook's answer asked to forward the stream to.
        forwards: Vec<String>,
        /// Whether the webhook's answer turned recording on or off; `None`: the origin's
        /// configuration decides.
        record: Option<bool>,
    },
    /// Refused; `message` is for the encoder's operator and never holds a secret.
    Refused {
        reason: PublishDenial,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip() {
        for d in PublishDenial::ALL {
            assert_eq!(PublishDenial::parse(d.as_str()), Some(d));
        }
        assert_eq!(PublishDenial::parse("nonsense"), None);
    }
}
