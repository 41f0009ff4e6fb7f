//! Per-client limits shared by the listeners and the ingest: connections open per client
//! address, attempts per client address over time (a token bucket), a byte-rate cap averaged
//! over a window, and a log throttle so a flood of refusals does not become a flood of logs.
//!
//! Every table here is bounded: entries exist only for clients with something open or
//! something recently spent, and the attempt table has a hard size.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// A client as the limits see it: an IPv4 address, or the /64 prefix of an IPv6 address (a
/// subscriber's network: a host picks any address inside its /64 at will, so counting single
/// IPv6 addresses would limit nothing). An IPv4-mapped IPv6 address counts as the IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// What a listener admits at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Most connections open at once on the listener.
    pub max_connections: usize,
    /// Most connections open at once on the listener from one client (a [`ClientKey`]);
    /// 0 for no per-client limit.
    pub max_per_ip: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_per_ip: 256,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections below cannot panic half-way; a poisoned lock still holds a
    // consistent table.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Connections open per client, against a limit. Entries exist only while a client has a
/// connection open, so the table is bounded by the listener's connection limit.
#[derive(Debug)]
pub struct ConnectionsPerIp {
    limit: usize,
    open: Mutex<HashMap<ClientKey, usize>>,
}

impl ConnectionsPerIp {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `ip`, or `None` when the client already has `limit` open.
    /// The count goes down when the returned slot is dropped.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = ClientKey::of(ip);
        let mut open = lock(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s client.
    pub fn open(&self, ip: IpAddr) -> usize {
        lock(&self.open)
            .get(&ClientKey::of(ip))
            .copied()
            .unwrap_or(0)
    }
}

/// One open connection of a client; dropping it gives the slot back.
#[derive(Debug)]
pub struct IpSlot {
    table: Arc<ConnectionsPerIp>,
    key: ClientKey,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.table.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// `count` events per `per`: a client may spend `count` at once and gets them back at that
/// rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.count, self.per)
    }
}

/// Clients whose buckets the limiter keeps at most. Past it, buckets that are full again are
/// forgotten (a full bucket is the same as none); if all are still in use, newcomers are
/// refused until some refill, so a spread-out flood cannot grow the table.
const MAX_CLIENTS_TRACKED: usize = 65_536;

/// Attempts per client over time: a token bucket per [`ClientKey`].
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
    max_clients: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        Self::with_capacity(rate, MAX_CLIENTS_TRACKED)
    }

    fn with_capacity(rate: Rate, max_clients: usize) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
            max_clients,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn per_second(&self) -> f64 {
        f64::from(self.rate.count) / self.rate.per.as_secs_f64().max(1e-3)
    }

    fn refill(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second()).min(f64::from(self.rate.count))
    }

    /// Spends one attempt of `ip`'s client at `now`. `Err` carries how long until the client
    /// has one again.
    pub fn try_take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = ClientKey::of(ip);
        let full = f64::from(self.rate.count);
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(&key) && buckets.len() >= self.max_clients {
            buckets.retain(|_, b| self.refill(b, now) < full);
            if buckets.len() >= self.max_clients {
                return Err(self.rate.per / self.rate.count.max(1));
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: full,
            at: now,
        });
        let tokens = self.refill(bucket, now);
        *bucket = Bucket { tokens, at: now };
        if tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - tokens) / self.per_second().max(1e-9),
            ))
        }
    }
}

/// A cap on a byte rate averaged over a window: a token bucket holding `window` worth of bytes
/// at the cap. A burst (a keyframe, an encoder catching up after a stall) passes; a rate over
/// the cap sustained for about a window does not.
#[derive(Debug, Clone)]
pub struct ByteRateCap {
    bytes_per_second: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl ByteRateCap {
    pub fn new(bits_per_second: u64, window: Duration, now: Instant) -> Self {
        let bytes_per_second = bits_per_second as f64 / 8.0;
        let capacity = bytes_per_second * window.as_secs_f64();
        Self {
            bytes_per_second,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    /// Counts `bytes` received at `now`; false once the average is over the cap.
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_second).min(self.capacity);
        self.at = now;
        self.tokens -= bytes as f64;
        self.tokens >= 0.0
    }
}

/// Lets a log line through at most once per period and counts the ones it held back, for
/// events a peer can repeat at will (refusals under a flood).
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the
    /// last one; `None` when this one should be skipped.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.every)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff:1:2:3"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.7")),
            ClientKey::of(ip("192.0.2.7"))
        );
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn connections_per_ip_are_counted_and_given_back() {
        let table = ConnectionsPerIp::new(2);
        let a = table.try_open(ip("192.0.2.1")).unwrap();
        let b = table.try_open(ip("192.0.2.1")).unwrap();
        assert!(table.try_open(ip("192.0.2.1")).is_none());
        let other = table.try_open(ip("192.0.2.2")).unwrap();
        drop(a);
        let c = table.try_open(ip("192.0.2.1")).unwrap();
        drop((b, c, other));
        assert_eq!(table.open(ip("192.0.2.1")), 0);
        assert!(lock(&table.open).is_empty(), "closed clients are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_refill_at_the_rate() {
        let limiter = RateLimiter::new(Rate {
            count: 3,
            per: Duration::from_secs(60),
        });
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(limiter.try_take(a, now).is_ok());
        }
        let wait = limiter.try_take(a, now).unwrap_err();
        assert!((19..=20).contains(&wait.as_secs()), "{wait:?}");
        assert!(limiter.try_take(ip("192.0.2.2"), now).is_ok(), "per client");
        assert!(limiter.try_take(a, now + Duration::from_secs(19)).is_err());
        assert!(limiter.try_take(a, now + Duration::from_secs(21)).is_ok());
        assert!(limiter.try_take(a, now + Duration::from_secs(22)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_attempt_table_stays_bounded() {
        let rate = Rate {
            count: 1,
            per: Duration::from_secs(10),
        };
        let limiter = RateLimiter::with_capacity(rate, 4);
        let now = Instant::now();
        for i in 1..=4 {
            assert!(limiter.try_take(ip(&format!("192.0.2.{i}")), now).is_ok());
        }
        // Full of clients that still owe: a fifth is refused rather than tracked.
        assert!(limiter.try_take(ip("192.0.2.5"), now).is_err());
        assert_eq!(lock(&limiter.buckets).len(), 4);
        // Once their buckets are full again they are forgotten and there is room.
        let later = now + Duration::from_secs(11);
        assert!(limiter.try_take(ip("192.0.2.5"), later).is_ok());
        assert_eq!(lock(&limiter.buckets).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn byte_rate_allows_bursts_but_not_a_sustained_excess() {
        let now = Instant::now();
        // 8 Mbit/s = 1 MB/s over a 2 s window.
        let mut cap = ByteRateCap::new(8_000_000, Duration::from_secs(2), now);
        assert!(cap.take(1_500_000, now), "a burst within the window");
        // At the cap for a long time: fine.
        let mut t = now;
        for _ in 0..100 {
            t += Duration::from_millis(100);
            assert!(cap.take(100_000, t));
        }
        // Twice the cap: refused within about a window.
        let mut refused_after = None;
        for i in 1..=100 {
            t += Duration::from_millis(100);
            if !cap.take(200_000, t) {
                refused_after = Some(i);
                break;
            }
        }
        let i = refused_after.expect("twice the cap is refused");
        assert!((3..=30).contains(&i), "refused after {i} steps");
    }

    #[tokio::test(start_paused = true)]
    async fn log_throttle_counts_what_it_holds_back() {
        let mut throttle = LogThrottle::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(throttle.allow(now), Some(0));
        assert_eq!(throttle.allow(now + Duration::from_secs(1)), None);
        assert_eq!(throttle.allow(now + Duration::from_secs(2)), None);
        assert_eq!(throttle.allow(now + Duration::from_secs(10)), Some(2));
    }
}
