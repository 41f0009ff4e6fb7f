//! The webhook client of `on_publish` (asked by the control plane) and `on_play` (asked by
//! edges): a small HTTP/1 client that posts JSON and takes a 2xx answer as yes, within a
//! deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// Why the webhook did not allow a publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the hook answered HTTP {0}")]
    Refused(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Unavailable(String),
}

/// An `on_publish` webhook: `POST URL` with a JSON body; 2xx allows.
#[derive(Debug, Clone)]
pub struct Webhook {
    uri: http::Uri,
    host: String,
    port: u16,
    timeout: Duration,
}

impl Webhook {
    /// How long a webhook may take, unless configured otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// The range a webhook's timeout may take: under the control plane's 5 s deadline on
    /// `AuthorizePublish`, so a slow hook refuses instead of failing the call.
    pub const TIMEOUTS: std::ops::RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(4);

    /// A webhook at `url` (`http://HOST[:PORT]/PATH`) that must answer within `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        if !Self::TIMEOUTS.contains(&timeout) {
            return Err(format!(
                "the timeout must be between {:?} and {:?}, not {timeout:?}",
                Self::TIMEOUTS.start(),
                Self::TIMEOUTS.end()
            ));
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url:?}: only http:// webhooks are supported"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self {
            uri,
            host,
            port,
            timeout,
        })
    }

    /// The URL, for logs.
    pub fn url(&self) -> String {
        self.uri.to_string()
    }

    /// Posts `body`; `Ok` on a 2xx answer (its body is not read).
    pub async fn ask(&self, body: &serde_json::Value) -> Result<(), WebhookError> {
        self.exchange(body, false).await.map(|_| ())
    }

    /// Posts `body`; on a 2xx answer, the answer's body: at most [`Self::MAX_ANSWER`] bytes,
    /// read within the same deadline. A body that is longer, or cannot be read in time, is no
    /// reason to refuse: it counts as an empty answer (logged).
    pub async fn ask_for_answer(&self, body: &serde_json::Value) -> Result<Bytes, WebhookError> {
        self.exchange(body, true).await
    }

    async fn exchange(&self, body: &serde_json::Value, read: bool) -> Result<Bytes, WebhookError> {
        let body = Bytes::from(body.to_string());
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (status, answer) = tokio::time::timeout_at(deadline, self.post(body, read, deadline))
            .await
            .map_err(|_| WebhookError::Timeout(self.timeout))?
            .map_err(WebhookError::Unavailable)?;
        if !status.is_success() {
            return Err(WebhookError::Refused(status.as_u16()));
        }
        Ok(answer.unwrap_or_else(|e| {
            tracing::warn!(hook = %self.url(), "the hook's answer was allowed but its body is ignored: {e}");
            Bytes::new()
        }))
    }

    /// The largest answer body read; a longer one is an unavailable hook.
    pub const MAX_ANSWER: usize = 64 << 10;

    /// The answer's status and, when `read`, its body (or why it could not be read before
    /// `deadline`).
    async fn post(
        &self,
        body: Bytes,
        read: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(http::StatusCode, Result<Bytes, String>), String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.uri))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| self.host.clone());
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("corriente/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        // The connection is driven here rather than spawned, so a timeout drops it with the
        // request (and with the answer's body).
        let response = sender.send_request(request);
        tokio::pin!(connection, response);
        let response = tokio::select! {
            biased;
            response = &mut response => response,
            ended = &mut connection => match ended {
                // A server that closes after answering: the answer was handed over already.
                Ok(()) => response.await,
                Err(e) => return Err(e.to_string()),
            },
        };
        let response = response.map_err(|e| format!("no answer: {e}"))?;
        let status = response.status();
        if !status.is_success() || !read {
            return Ok((status, Ok(Bytes::new())));
        }
        let limited = http_body_util::Limited::new(response.into_body(), Self::MAX_ANSWER);
        let collect = http_body_util::BodyExt::collect(limited);
        // Leave a little of the deadline for the answer's status to count.
        let body_deadline = deadline - Duration::from_millis(20).min(self.timeout / 10);
        let reading = async {
            tokio::pin!(collect);
            tokio::select! {
                biased;
                body = &mut collect => body.map_err(|e| e.to_string()),
                ended = &mut connection => match ended {
                    Ok(()) => collect.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            }
        };
        let body = match tokio::time::timeout_at(body_deadline, reading).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(e)) => Err(format!(
                "cannot read it ({e}; at most {} bytes)",
                Self::MAX_ANSWER
            )),
            Err(_) => Err("it did not arrive in time".to_owned()),
        };
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host() {
        assert!(Webhook::new("https://x/", Duration::from_secs(1)).is_err());
        assert!(Webhook::new("http:///hook", Duration::from_secs(1)).is_err());
        assert!(Webhook::new("http://127.0.0.1:9/hook", Duration::from_secs(1)).is_ok());
        assert!(Webhook::new("http://127.0.0.1:9/hook", Duration::from_secs(9)).is_err());
        assert!(Webhook::new("http://127.0.0.1:9/hook", Webhook::DEFAULT_TIMEOUT).is_ok());
    }
}
