//! Restreaming: the destinations a stream is forwarded to (another platform's RTMP or RTMPS
//! ingest, another Corriente), where each comes from, and what its owner reports about it.
//!
//! A destination is a URL `rtmp[s]://HOST[:PORT]/APP/STREAM`: the first path segment is the
//! application, the rest (query included) is the stream key field, as OBS's "server" and
//! "stream key" fields split them (ffmpeg splits `rtmp://h/a/b/c` as `a/b` and `c`; write such
//! a destination as the platform documents it for OBS). The stream key is a secret on every
//! platform, so a destination is only ever shown [`redacted`](ForwardUrl::redacted).

use std::fmt;

use corriente_core::StreamKey;
use serde::{Deserialize, Serialize};

/// Longest destination URL accepted.
pub const MAX_FORWARD_URL: usize = 2048;

/// Most destinations one stream is forwarded to, all sources together.
pub const MAX_FORWARDS_PER_STREAM: usize = 16;

/// A parsed destination.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardUrl {
    /// RTMP over TLS.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The application (`live2` in `rtmp://a.rtmp.youtube.com/live2/KEY`).
    pub app: String,
    /// The stream key field, query included: the secret part.
    pub name: String,
}

impl ForwardUrl {
    /// Parses `rtmp[s]://HOST[:PORT]/APP/STREAM`. The message says what is wrong without
    /// repeating the URL (it holds a stream key).
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.len() > MAX_FORWARD_URL {
            return Err(format!(
                "a forward URL is at most {MAX_FORWARD_URL} bytes long"
            ));
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("a forward URL has no spaces or control characters".to_owned());
        }
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rtmp://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rtmps://") {
            (true, rest)
        } else {
            return Err("a forward URL starts with rtmp:// or rtmps://".to_owned());
        };
        let (authority, path) = rest
            .split_once('/')
            .ok_or("a forward URL needs /APP/STREAM after the host")?;
        let (host, port) = split_host_port(authority)?;
        let port = port.unwrap_or(if tls { 443 } else { 1935 });
        let (app, name) = path
            .split_once('/')
            .ok_or("a forward URL needs /APP/STREAM after the host")?;
        if app.is_empty() || app.contains('?') {
            return Err("a forward URL needs an application: /APP/STREAM".to_owned());
        }
        if name.is_empty() || name.starts_with('?') {
            return Err("a forward URL needs a stream key: /APP/STREAM".to_owned());
        }
        Ok(Self {
            tls,
            host,
            port,
            app: app.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `tcUrl` of the `connect` command: `rtmp[s]://HOST:PORT/APP`.
    pub fn tc_url(&self) -> String {
        format!("{}/{}", self.base(), self.app)
    }

    fn base(&self) -> String {
        let scheme = if self.tls { "rtmps" } else { "rtmp" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// The URL with its stream key hidden: at most the first four characters of the stream
    /// key field (before any query), then `…` (`live2/abcd…`, `app/live…`).
    pub fn redacted(&self) -> String {
        let name: String = self
            .name
            .split('?')
            .next()
            .unwrap_or_default()
            .chars()
            .take(4)
            .collect();
        format!("{}/{}/{name}…", self.base(), self.app)
    }
}

impl fmt::Debug for ForwardUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = || "a forward URL's port is a number from 1 to 65535".to_owned();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("a forward URL's IPv6 address needs its closing ]")?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err("unexpected text after a forward URL's IPv6 address".to_owned()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(['@', '/', '?', '#']) {
        return Err("a forward URL needs a host (no user name or password in it)".to_owned());
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad_port)?,
        ),
        None => None,
    };
    Ok((host.to_owned(), port))
}

/// A destination of a configured application: `{app}` and `{name}` in it stand for the
/// published stream's application and name (`rtmp://backup/live/{name}`), so one line serves
/// every stream of the application.
pub fn expand(template: &str, key: &StreamKey) -> String {
    template
        .replace("{app}", key.app())
        .replace("{name}", key.name())
}

/// Checks a configured destination template (placeholders filled with a sample name).
pub fn check_template(template: &str) -> Result<(), String> {
    let sample = StreamKey::new("app", "name").map_err(|e| e.to_string())?;
    ForwardUrl::parse(&expand(template, &sample)).map(|_| ())
}

/// Where a destination came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardSource {
    /// The origin's configuration (`--forward APP=URL`).
    Config,
    /// The `on_publish` webhook's answer.
    Webhook,
    /// The control plane's admin API (kept in the registry, per stream).
    Api,
}

impl ForwardSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardSource::Config => "config",
            ForwardSource::Webhook => "webhook",
            ForwardSource::Api => "api",
        }
    }
}

/// A destination to forward one stream to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardTarget {
    /// Stable within the stream: the same destination from the same source keeps its id on
    /// every origin (config and webhook ids derive from the URL; API ids are handed out).
    pub id: String,
    pub source: ForwardSource,
    /// The full URL, stream key included.
    pub url: String,
}

impl ForwardTarget {
    /// A destination whose id derives from its source and URL.
    pub fn derived(source: ForwardSource, url: String) -> Self {
        let id = format!(
            "{}-{:08x}",
            source.as_str(),
            corriente_core::digest::fnv1a(url.as_bytes()) as u32
        );
        Self { id, source, url }
    }

    /// The URL with its stream key hidden (or a note that it is invalid).
    pub fn redacted(&self) -> String {
        ForwardUrl::parse(&self.url)
            .map(|u| u.redacted())
            .unwrap_or_else(|_| "(invalid URL)".to_owned())
    }
}

impl fmt::Debug for ForwardTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardTarget")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("url", &self.redacted())
            .finish()
    }
}

/// Where a forward is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardState {
    /// Connecting, handshaking, or waiting for the destination to accept the publish.
    #[default]
    Connecting,
    /// Publishing to the destination.
    Publishing,
    /// The last attempt failed; waiting before the next (backoff).
    Retrying,
}

impl ForwardState {
    pub const ALL: [ForwardState; 3] = [
        ForwardState::Connecting,
        ForwardState::Publishing,
        ForwardState::Retrying,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ForwardState::Connecting => "connecting",
            ForwardState::Publishing => "publishing",
            ForwardState::Retrying => "retrying",
        }
    }

    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .unwrap_or_default()
    }
}

/// A forward as the owning origin reports it (in its heartbeat, then in the stream's record).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub id: String,
    pub source: Option<ForwardSource>,
    /// The destination, redacted.
    pub destination: String,
    pub state: ForwardState,
    /// Media bytes delivered to the destination over every session.
    pub bytes: u64,
    /// Sessions started after the first (each a reconnection).
    pub reconnects: u32,
    /// Why the last session ended or the last attempt failed; empty if none did.
    pub last_error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_platform_urls_and_hides_their_keys() {
        let yt = ForwardUrl::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl").unwrap();
        assert_eq!(
            (yt.host.as_str(), yt.port, yt.app.as_str(), yt.name.as_str()),
            ("a.rtmp.youtube.com", 1935, "live2", "abcd-efgh-ijkl")
        );
        assert_eq!(yt.tc_url(), "rtmp://a.rtmp.youtube.com:1935/live2");
        assert_eq!(yt.redacted(), "rtmp://a.rtmp.youtube.com:1935/live2/abcd…");
        let ours = ForwardUrl::parse("rtmps://[::1]:8443/live/cam?key=SECRET").unwrap();
        assert!(ours.tls);
        assert_eq!((ours.host.as_str(), ours.port), ("::1", 8443));
        assert_eq!(ours.name, "cam?key=SECRET");
        assert_eq!(ours.redacted(), "rtmps://[::1]:8443/live/cam…");
        let twitch = ForwardUrl::parse("rtmp://h/app/live_123_SECRET?bandwidthtest=true").unwrap();
        assert_eq!(twitch.redacted(), "rtmp://h:1935/app/live…");
        assert!(!format!("{ours:?}").contains("SECRET"));
        assert_eq!(ForwardUrl::parse("rtmps://h/a/b").unwrap().port, 443);
        assert_eq!(ForwardUrl::parse("rtmp://h/a/b/c").unwrap().name, "b/c");
    }

    #[test]
    fn refuses_what_is_not_a_destination() {
        for bad in [
            "http://h/a/b",
            "rtmp://h",
            "rtmp://h/app",
            "rtmp://h/app/",
            "rtmp:///a/b",
            "rtmp://h:0/a/b",
            "rtmp://h:x/a/b",
            "rtmp://user:pw@h/a/b",
            "rtmp://h//b",
            "rtmp://h/a/ b",
            "rtmp://[::1/a/b",
        ] {
            assert!(ForwardUrl::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(ForwardUrl::parse(&format!("rtmp://h/a/{}", "k".repeat(3000))).is_err());
    }

    #[test]
    fn templates_and_ids() {
        let key = StreamKey::new("live", "cam").unwrap();
        assert_eq!(
            expand("rtmp://b/{app}-copy/{name}", &key),
            "rtmp://b/live-copy/cam"
        );
        assert!(check_template("rtmp://b/live/{name}").is_ok());
        assert!(check_template("rtmp://b/{name}").is_err());
        let a = ForwardTarget::derived(ForwardSource::Config, "rtmp://b/live/cam".into());
        let b = ForwardTarget::derived(ForwardSource::Config, "rtmp://b/live/cam".into());
        let c = ForwardTarget::derived(ForwardSource::Webhook, "rtmp://b/live/cam".into());
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert!(a.id.starts_with("config-"));
    }
}
