//! Stream identity: the `APP/NAME` pair that names a live stream everywhere in the cluster.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted application or stream name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The name of a live stream: application and stream name, as in `rtmp://HOST/APP/NAME`.
///
/// Both parts are validated once, at the edge of the system (RTMP commands, HTTP paths, gRPC
/// requests), so the rest of the code can put them in logs, URLs and Redis keys as they are.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawKey")]
pub struct StreamKey {
    app: String,
    name: String,
}

/// A key as it arrives in JSON, before validation.
#[derive(Deserialize)]
struct RawKey {
    app: String,
    name: String,
}

impl TryFrom<RawKey> for StreamKey {
    type Error = KeyError;

    fn try_from(raw: RawKey) -> Result<Self, KeyError> {
        StreamKey::new(&raw.app, &raw.name)
    }
}

/// Why a stream or application name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the {0} name is empty")]
    Empty(&'static str),
    #[error("the {0} name is longer than {MAX_NAME_LEN} bytes")]
    TooLong(&'static str),
    #[error(
        "the {what} name {value:?} has characters other than letters, digits, '-', '_', '.' and '~'"
    )]
    BadCharacters { what: &'static str, value: String },
}

impl StreamKey {
    /// Validates and builds a key.
    pub fn new(app: &str, name: &str) -> Result<Self, KeyError> {
        validate("application", app)?;
        validate("stream", name)?;
        Ok(Self {
            app: app.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Parses `APP/NAME`.
    pub fn parse(path: &str) -> Result<Self, KeyError> {
        match path.split_once('/') {
            Some((app, name)) => Self::new(app, name),
            None => Err(KeyError::Empty("stream")),
        }
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

fn validate(what: &'static str, value: &str) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty(what));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(KeyError::TooLong(what));
    }
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        && !value.starts_with('.');
    if !ok {
        return Err(KeyError::BadCharacters {
            what,
            value: value.chars().take(MAX_NAME_LEN).collect(),
        });
    }
    Ok(())
}

/// Splits an RTMP stream name such as `NAME?key=SECRET` into the name and its query string.
pub fn split_query(raw: &str) -> (&str, &str) {
    match raw.split_once('?') {
        Some((name, query)) => (name, query),
        None => (raw, ""),
    }
}

/// Returns the value of `param` in a URL query string (`a=1&b=2`), undecoded.
pub fn query_param<'a>(query: &'a str, param: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == param)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        let key = StreamKey::new("live", "cam-1_hd.v2").unwrap();
        assert_eq!(key.to_string(), "live/cam-1_hd.v2");
        assert_eq!(
            StreamKey::parse("live/test").unwrap(),
            key_of("live", "test")
        );
    }

    fn key_of(a: &str, n: &str) -> StreamKey {
        StreamKey::new(a, n).unwrap()
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(StreamKey::new("", "x"), Err(KeyError::Empty("application")));
        assert!(StreamKey::new("live", "a/b").is_err());
        assert!(StreamKey::new("live", "..").is_err());
        assert!(StreamKey::new("live", "a b").is_err());
        assert!(StreamKey::new("live", &"x".repeat(129)).is_err());
        assert!(StreamKey::parse("nolash").is_err());
    }

    #[test]
    fn splits_query_strings() {
        assert_eq!(split_query("test?key=abc&x=1"), ("test", "key=abc&x=1"));
        assert_eq!(split_query("test"), ("test", ""));
        assert_eq!(query_param("key=abc&x=1", "x"), Some("1"));
        assert_eq!(query_param("key=abc", "token"), None);
    }
}
