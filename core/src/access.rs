//! Access-control building blocks shared by every role: signed tokens (HMAC-SHA256 over a
//! purpose, a stream and an expiry) and CIDR allow/deny rules.
//!
//! A token reads `EXPIRES.SIGNATURE`: `EXPIRES` is a Unix time in seconds, `SIGNATURE` the
//! lowercase hex HMAC-SHA256, under a shared secret, of `PURPOSE\nAPP/NAME\nEXPIRES`. The
//! purpose (`play`, `publish`) keeps a playback token from being replayed as a publish key.
//! Anyone holding the secret can mint tokens elsewhere (a CMS, a shell script):
//!
//! ```text
//! printf 'play\nlive/cam\n1767225600' | openssl dgst -sha256 -hmac "$SECRET"
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ring::hmac;

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("token signature does not match")]
    BadSignature,
}

impl TokenError {
    /// A bounded label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed => "token_malformed",
            TokenError::Expired => "token_expired",
            TokenError::BadSignature => "token_bad_signature",
        }
    }
}

fn message(purpose: &str, stream: &str, expires: u64) -> String {
    format!("{purpose}\n{stream}\n{expires}")
}

/// Mints a token for `stream` (`APP/NAME`) valid until `expires` (Unix seconds).
pub fn sign(secret: &[u8], purpose: &str, stream: &str, expires: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, message(purpose, stream, expires).as_bytes());
    let mut out = format!("{expires}.");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Checks a token for `stream` at `now` (Unix seconds), against any of `secrets` (several
/// while a secret is being rotated). The signature check is constant-time.
pub fn verify(
    secrets: &[Vec<u8>],
    purpose: &str,
    stream: &str,
    token: &str,
    now: u64,
) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let (expires, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let signature = unhex(signature).ok_or(TokenError::Malformed)?;
    let msg = message(purpose, stream, expires);
    let valid = secrets.iter().any(|secret| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        hmac::verify(&key, msg.as_bytes(), &signature).is_ok()
    });
    if !valid {
        return Err(TokenError::BadSignature);
    }
    if expires < now {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// The value of `name` in a URL query string (`a=1&token=x`), percent-decoding nothing
/// (tokens and keys are URL-safe by construction).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Set by the admin server on every read of its routes: whether the reader presented the admin
/// token (or, when no token is configured, is on loopback). Read-only routes show personal data
/// (publisher addresses) only to trusted readers; everyone else gets the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdminReader {
    pub trusted: bool,
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or a bare address (a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {0:?}: expected ADDRESS or ADDRESS/PREFIX, e.g. 10.0.0.0/8 or ::1")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        // `::ffff:a.b.c.d/p` is the IPv4 network `a.b.c.d/(p-96)`: clients are matched as IPv4.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Ok(Cidr {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Cidr {
    /// Whether `ip` is inside this network. IPv4-mapped IPv6 addresses count as IPv4, on both
    /// sides: `::ffff:10.0.0.0/104` is `10.0.0.0/8`, and an IPv6 network that spans the mapped
    /// range (`::/0`, `::ffff:0:0/96`) contains IPv4 clients.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, canonical(ip)) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (_, ip) => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Allow and deny lists: an address is refused when it matches a deny rule, or when allow
/// rules exist and it matches none. Empty lists permit everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl IpRules {
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire() {
        let secrets = vec![b"s3cret".to_vec()];
        let t = sign(b"s3cret", "play", "live/cam", 2000);
        assert_eq!(verify(&secrets, "play", "live/cam", &t, 1999), Ok(()));
        assert_eq!(
            verify(&secrets, "play", "live/cam", &t, 2001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&secrets, "publish", "live/cam", &t, 1999),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&secrets, "play", "live/other", &t, 1999),
            Err(TokenError::BadSignature)
        );
        let tampered = t.replacen("2000", "3000", 1);
        assert_eq!(
            verify(&secrets, "play", "live/cam", &tampered, 1999),
            Err(TokenError::BadSignature)
        );
        for bad in ["x", "12.zz", ".", "99999999999999999999999.00", "1.abc"] {
            assert_eq!(
                verify(&secrets, "play", "live/cam", bad, 0),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verify(&secrets, "play", "live/cam", "", 0),
            Err(TokenError::Missing)
        );
        // A second secret during rotation.
        let both = vec![b"new".to_vec(), b"s3cret".to_vec()];
        assert_eq!(verify(&both, "play", "live/cam", &t, 0), Ok(()));
    }

    #[test]
    fn matches_openssl_dgst() {
        // printf 'play\nlive/cam\n1767225600' | openssl dgst -sha256 -hmac s3cret
        let t = sign(b"s3cret", "play", "live/cam", 1_767_225_600);
        assert!(t.starts_with("1767225600."));
        assert_eq!(t.len(), "1767225600.".len() + 64);
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("?a=1&token=x.y", "token"), Some("x.y"));
        assert_eq!(query_param("token", "token"), Some(""));
        assert_eq!(query_param("a=1", "token"), None);
    }

    #[test]
    fn cidr_rules() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.2.3.4".parse().unwrap()));
        assert!(c.contains("::ffff:10.2.3.4".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        // Rules written in IPv4-mapped form match IPv4 clients (which is how mapped clients
        // are seen), and IPv6 networks spanning the mapped range contain them.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains("10.2.3.4".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.2.3.4".parse().unwrap()));
        let host: Cidr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(host.contains("192.0.2.7".parse().unwrap()));
        assert!(!host.contains("192.0.2.8".parse().unwrap()));
        let any: Cidr = "::/0".parse().unwrap();
        assert!(any.contains("192.0.2.7".parse().unwrap()));
        let mapped_range: Cidr = "::ffff:0:0/96".parse().unwrap();
        assert!(mapped_range.contains("192.0.2.7".parse().unwrap()));
        assert!(!mapped_range.contains("2001:db8::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let rules = IpRules {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
        };
        assert!(rules.permits("10.1.1.1".parse().unwrap()));
        assert!(!rules.permits("10.9.1.1".parse().unwrap()));
        assert!(!rules.permits("192.168.1.1".parse().unwrap()));
        assert!(IpRules::default().permits("192.168.1.1".parse().unwrap()));
    }
}
