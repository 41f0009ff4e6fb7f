//! The Redis registry, for clusters: any number of control-plane replicas share one Redis.
//!
//! Keys (all under one hash tag, `{PREFIX}`, so they live in one slot of a Redis Cluster and
//! several clusters can share a Redis with different prefixes):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}:streams` | sorted set | stream names, scored by lease expiry (ms, Redis clock) |
//! | `{P}:stream:NAME` | hash | owner node, relay address, epoch, media (JSON), publisher, start |
//! | `{P}:epoch:NAME` | counter | last fencing epoch handed out for NAME (kept a week) |
//! | `{P}:hls:NAME` | hash | `next`, `dsn`: HLS numbering of NAME's last publication (kept a week) |
//! | `{P}:nodes` | sorted set | node ids, scored by lease expiry |
//! | `{P}:node:ID` | string | the node record (JSON) |
//! | `{P}:events` | pub/sub channel | stream up/down and node up/down (JSON) |
//! | `{P}:publish_keys` | hash | SHA-256 of a publish key's secret → the key (JSON, no secret) |
//! | `{P}:publish_key_ids` | hash | key id → SHA-256 of its secret |
//! | `{P}:publish_keys_revoked` | hash | SHA-256 of a revoked key's secret → revocation time (ms) |
//! | `{P}:forwards:NAME` | hash | forward id → destination set by the admin API (JSON) |
//! | `{P}:recordings:NODE` | hash | `APP/NAME/ID` → a recording on origin NODE's disk (JSON) |
//! | `{P}:recording_nodes` | set | origins with entries in the recordings index |
//!
//! A lease is live while its score is in the future by Redis's own clock (`TIME`), so replicas'
//! clocks never matter. Every operation that touches more than one key is one Lua script, so
//! it is atomic. Expired leases are swept by whichever replica gets there first; the script
//! removes each entry once, so each expiry is announced once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corriente_cluster::forward::MAX_FORWARDS_PER_STREAM;
use corriente_cluster::{
    ForwardTarget, HlsSequence, NodeRecord, OwnedStream, RecordingRecord, RegistryEvent,
    StreamClaim, StreamRecord,
};
use corriente_core::{MediaInfo, StreamKey};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Client, Script};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics;
use crate::redis_primary::{Primary, SentinelUrl};
use crate::registry::{PublishKey, Registry, RegistryError};

const NOW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// KEYS: streams, stream hash, epoch key, HLS numbering key.
/// ARGV: name, node, relay, media, publisher, ttl, channel, takeover node, takeover epoch,
/// epoch floor, HLS numbering slack. Numbering as `HlsSequence::after`.
const CLAIM: &str = r#"
local exp = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
local owner = redis.call('HGET', KEYS[2], 'node_id')
local current = redis.call('HGET', KEYS[2], 'epoch')
if exp > now then
  if not (ARGV[8] ~= '' and owner == ARGV[8] and current == ARGV[9]) then
    return {'0', owner or '', current or '0', redis.call('HGET', KEYS[2], 'relay_addr') or ''}
  end
end
if owner then
  redis.call('PUBLISH', ARGV[7], cjson.encode({type='stream_down', key=ARGV[1], node_id=owner, epoch=current or '0'}))
end
-- Epochs only grow, even when Redis forgot the counter (restarted empty, a replica that
-- missed the last writes): the next epoch is past the counter, past Redis's clock in
-- microseconds-ish (ms × 1000, so up to 1000 claims a millisecond still grow by the counter),
-- and past the highest epoch this control-plane replica has seen (ARGV[10]).
local epoch = math.max((tonumber(redis.call('GET', KEYS[3]) or '0')) + 1, now * 1000, (tonumber(ARGV[10]) or 0) + 1)
redis.call('SET', KEYS[3], string.format('%d', epoch), 'PX', 604800000)
local prev = redis.call('HMGET', KEYS[4], 'next', 'dsn')
local first, dsn = math.max(math.floor(now / 100), 1), 0
if prev[1] and tonumber(prev[1]) and tonumber(prev[1]) > 0 then
  first = tonumber(prev[1]) + tonumber(ARGV[11])
  dsn = (tonumber(prev[2]) or 0) + 1
end
first, dsn = string.format('%d', first), string.format('%d', dsn)
redis.call('HSET', KEYS[4], 'next', first, 'dsn', dsn)
redis.call('PEXPIRE', KEYS[4], 604800000)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'node_id', ARGV[2], 'relay_addr', ARGV[3], 'epoch', string.format('%d', epoch), 'media', ARGV[4], 'publisher_addr', ARGV[5], 'started_at_ms', now, 'hls_first', first, 'hls_dsn', dsn)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[6]), ARGV[1])
redis.call('PUBLISH', ARGV[7], cjson.encode({type='stream_up', key=ARGV[1], node_id=ARGV[2], relay_addr=ARGV[3], epoch=string.format('%d', epoch), media=ARGV[4], publisher_addr=ARGV[5], started_at_ms=now, hls_first=first, hls_dsn=dsn}))
return {'1', string.format('%d', epoch), tostring(now), first, dsn}
"#;

/// KEYS: streams, nodes, node key, then a hash, an epoch key and an HLS numbering key per
/// stream.
/// ARGV: node id, node JSON, ttl, channel, relay, then name, epoch, media, publisher, started,
/// forwards (JSON), HLS next number, HLS discontinuity per stream.
const HEARTBEAT: &str = r#"
local ttl = tonumber(ARGV[3])
local nexp = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
redis.call('SET', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
if nexp <= now then
  redis.call('PUBLISH', ARGV[4], cjson.encode({type='node_up', node=ARGV[2]}))
end
local lost = {}
local n = (#ARGV - 5) / 8
for i = 0, n - 1 do
  local name, epoch, media, publisher, started, forwards = ARGV[6 + i*8], ARGV[7 + i*8], ARGV[8 + i*8], ARGV[9 + i*8], ARGV[10 + i*8], ARGV[11 + i*8]
  local hnext, hdsn = ARGV[12 + i*8], ARGV[13 + i*8]
  local hkey, ekey, ckey = KEYS[4 + i*3], KEYS[5 + i*3], KEYS[6 + i*3]
  local exp = tonumber(redis.call('ZSCORE', KEYS[1], name) or '0')
  local owner = redis.call('HGET', hkey, 'node_id')
  local current = redis.call('HGET', hkey, 'epoch')
  if exp > now then
    if owner == ARGV[1] and current == epoch then
      redis.call('ZADD', KEYS[1], now + ttl, name)
      redis.call('HSET', hkey, 'media', media, 'forwards', forwards)
      redis.call('PEXPIRE', ekey, 604800000)
      -- The numbering only moves forward, and only for the publication the key describes.
      local c = redis.call('HMGET', ckey, 'next', 'dsn')
      if not c[1] then
        redis.call('HSET', ckey, 'next', hnext, 'dsn', hdsn)
      elseif c[2] == hdsn and tonumber(hnext) > (tonumber(c[1]) or 0) then
        redis.call('HSET', ckey, 'next', hnext)
      end
      redis.call('PEXPIRE', ckey, 604800000)
    else
      table.insert(lost, name)
    end
  else
    -- The lease lapsed, or Redis forgot it: re-assert it unless a newer owner came since.
    -- Only the newest epoch handed out for the name may come back: an older owner whose lease
    -- lapsed after a newer one's never overwrites it.
    local last = tonumber(redis.call('GET', ekey) or '0')
    if tonumber(epoch) >= last then
      redis.call('SET', ekey, epoch, 'PX', 604800000)
      redis.call('DEL', hkey)
      redis.call('HSET', hkey, 'node_id', ARGV[1], 'relay_addr', ARGV[5], 'epoch', epoch, 'media', media, 'publisher_addr', publisher, 'started_at_ms', started, 'forwards', forwards, 'hls_first', hnext, 'hls_dsn', hdsn)
      local c = tonumber(redis.call('HGET', ckey, 'next') or '0')
      if tonumber(hnext) > c then
        redis.call('HSET', ckey, 'next', hnext, 'dsn', hdsn)
      end
      redis.call('PEXPIRE', ckey, 604800000)
      redis.call('ZADD', KEYS[1], now + ttl, name)
      redis.call('PUBLISH', ARGV[4], cjson.encode({type='stream_up', key=name, node_id=ARGV[1], relay_addr=ARGV[5], epoch=epoch, media=media, publisher_addr=publisher, started_at_ms=tonumber(started), hls_first=hnext, hls_dsn=hdsn}))
    else
      table.insert(lost, name)
    end
  end
end
return lost
"#;

/// KEYS: streams, stream hash. ARGV: name, node, epoch, channel.
const RELEASE: &str = r#"
if redis.call('HGET', KEYS[2], 'node_id') == ARGV[2] and redis.call('HGET', KEYS[2], 'epoch') == ARGV[3] then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[4], cjson.encode({type='stream_down', key=ARGV[1], node_id=ARGV[2], epoch=ARGV[3]}))
  return 1
end
return 0
"#;

/// KEYS: streams, stream hash. ARGV: name.
const LOOKUP: &str = r#"
local exp = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if exp <= now then return false end
return redis.call('HGETALL', KEYS[2])
"#;

/// KEYS: streams. ARGV: prefix. Returns name, then the hash fields, per live stream.
const LIST_STREAMS: &str = r#"
local out = {}
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local fields = redis.call('HGETALL', ARGV[1] .. ':stream:' .. name)
  if #fields > 0 then
    table.insert(out, name)
    table.insert(out, cjson.encode(fields))
  end
end
return out
"#;

/// KEYS: nodes. ARGV: prefix. Returns the JSON of every live node.
const LIST_NODES: &str = r#"
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local node = redis.call('GET', ARGV[1] .. ':node:' .. id)
  if node then table.insert(out, node) end
end
return out
"#;

/// KEYS: streams, nodes. ARGV: prefix, channel. Removes and announces expired leases.
const SWEEP: &str = r#"
local n = 0
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 200)) do
  local hkey = ARGV[1] .. ':stream:' .. name
  local owner = redis.call('HGET', hkey, 'node_id') or ''
  local epoch = redis.call('HGET', hkey, 'epoch') or '0'
  redis.call('DEL', hkey)
  redis.call('ZREM', KEYS[1], name)
  redis.call('PUBLISH', ARGV[2], cjson.encode({type='stream_down', key=name, node_id=owner, epoch=epoch}))
  n = n + 1
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 200)) do
  redis.call('DEL', ARGV[1] .. ':node:' .. id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('PUBLISH', ARGV[2], cjson.encode({type='node_down', id=id}))
  n = n + 1
end
return n
"#;

/// KEYS: publish keys, key ids. ARGV: secret hash, id, key JSON. 0 when either exists.
const CREATE_PUBLISH_KEY: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"#;

/// KEYS: publish keys, key ids, revoked. ARGV: id. Returns the key JSON and its revocation
/// time (the first one, when revoked twice), or nil when there is no such key.
const REVOKE_PUBLISH_KEY: &str = r#"
local sha = redis.call('HGET', KEYS[2], ARGV[1])
if not sha then return false end
local json = redis.call('HGET', KEYS[1], sha)
if not json then return false end
redis.call('HSETNX', KEYS[3], sha, tostring(now))
return {json, redis.call('HGET', KEYS[3], sha)}
"#;

/// KEYS: the stream's forwards hash. ARGV: id, target JSON, most targets.
const ADD_FORWARD: &str = r#"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

struct Scripts {
    claim: Script,
    heartbeat: Script,
    release: Script,
    lookup: Script,
    list_streams: Script,
    list_nodes: Script,
    sweep: Script,
    create_publish_key: Script,
    revoke_publish_key: Script,
    add_forward: Script,
}

/// Settings of the Redis registry.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`, `rediss://` for TLS, `unix:///PATH`, or
    /// `redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]` (`rediss+sentinel://`
    /// for TLS) to follow the primary that Redis Sentinel names.
    pub url: String,
    /// Key prefix, so several clusters can share one Redis.
    pub prefix: String,
    /// Lease duration of streams and nodes.
    pub lease_ttl: Duration,
    /// PEM certificate authority to trust for `rediss://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Replicas that must acknowledge a claim (`WAIT`) before it is granted; `None`: 1 with
    /// Sentinel (there are replicas to fail over to), 0 for a single address.
    pub claim_replicas: Option<u32>,
}

/// How long a claim waits for its replicas' acknowledgement.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// Why the Redis registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid Redis URL {0:?}: {1}")]
    Url(String, String),
    #[error("key prefix {0:?} must be 1-64 characters without braces or spaces")]
    Prefix(String),
}

/// A registry in Redis.
pub struct RedisRegistry {
    primary: Arc<Primary>,
    claim_replicas: u32,
    keys: String,
    channel: String,
    ttl: Duration,
    scripts: Scripts,
    /// Replaced (closing every watcher's receiver, so watchers reconnect and re-list) when
    /// the subscription to Redis's event channel restarts and may have missed events.
    events: std::sync::RwLock<broadcast::Sender<RegistryEvent>>,
    /// The highest epoch this replica has seen (claimed, heartbeated, looked up): new epochs
    /// start past it, whatever Redis remembers.
    epoch_floor: std::sync::atomic::AtomicU64,
}

fn unavailable(e: redis::RedisError) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

/// Runs a registry operation, counting it and its latency.
async fn observed<T>(
    op: &'static str,
    operation: impl std::future::Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    let started = Instant::now();
    observe(op, started, operation.await)
}

/// Counts a registry operation and its latency.
fn observe<T>(
    op: &'static str,
    started: Instant,
    result: Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(RegistryError::AlreadyOwned { .. }) => "conflict",
        Err(RegistryError::Unavailable(_)) => "unavailable",
    };
    metrics::REGISTRY_OPERATIONS
        .with_label_values(&[op, outcome])
        .observe(started.elapsed().as_secs_f64());
    result
}

impl RedisRegistry {
    /// Connects lazily: the control plane starts (and answers `unavailable`) while Redis is
    /// down, and the connection manager reconnects with backoff.
    pub fn connect(config: &RedisConfig) -> Result<Self, RedisSetupError> {
        let prefix = &config.prefix;
        if prefix.is_empty() || prefix.len() > 64 || prefix.contains(['{', '}', ' ']) {
            return Err(RedisSetupError::Prefix(prefix.clone()));
        }
        let bad_url = |e: String| RedisSetupError::Url(redact(&config.url), e);
        let sentinel = SentinelUrl::is_sentinel(&config.url);
        let primary = if sentinel {
            let url = SentinelUrl::parse(&config.url).map_err(bad_url)?;
            Primary::sentinel(&url, config.ca_pem.as_deref())
        } else {
            match &config.ca_pem {
                Some(ca) => Client::build_with_tls(
                    config.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    },
                ),
                None => Client::open(config.url.as_str()),
            }
            .and_then(Primary::fixed)
        }
        .map_err(|e| bad_url(e.to_string()))?;
        let keys = format!("{{{prefix}}}");
        Ok(Self {
            primary: Arc::new(primary),
            claim_replicas: config
                .claim_replicas
                .unwrap_or(if sentinel { 1 } else { 0 }),
            channel: format!("{keys}:events"),
            keys,
            ttl: config.lease_ttl,
            scripts: Scripts {
                claim: script(CLAIM),
                heartbeat: script(HEARTBEAT),
                release: script(RELEASE),
                lookup: script(LOOKUP),
                list_streams: script(LIST_STREAMS),
                list_nodes: script(LIST_NODES),
                sweep: script(SWEEP),
                create_publish_key: script(CREATE_PUBLISH_KEY),
                revoke_publish_key: script(REVOKE_PUBLISH_KEY),
                add_forward: Script::new(ADD_FORWARD),
            },
            events: std::sync::RwLock::new(broadcast::channel(1024).0),
            epoch_floor: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The general connection to the current primary.
    async fn conn(&self) -> Result<ConnectionManager, RegistryError> {
        self.primary
            .link()
            .await
            .map(|link| link.conn.clone())
            .map_err(RegistryError::Unavailable)
    }

    /// A failed request: tells the primary's follower, then reports it.
    fn failed(&self, e: redis::RedisError) -> RegistryError {
        self.primary.failed(&e);
        unavailable(e)
    }

    fn publish(&self, event: RegistryEvent) {
        if let Ok(events) = self.events.read() {
            let _ = events.send(event);
        }
    }

    /// Closes every watcher's feed: they reconnect and re-list what they may have missed.
    fn restart_feed(&self) {
        if let Ok(mut events) = self.events.write() {
            *events = broadcast::channel(1024).0;
        }
    }

    fn streams_key(&self) -> String {
        format!("{}:streams", self.keys)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.keys)
    }

    fn stream_key(&self, key: &StreamKey) -> String {
        format!("{}:stream:{key}", self.keys)
    }

    fn epoch_key(&self, key: &StreamKey) -> String {
        format!("{}:epoch:{key}", self.keys)
    }

    fn hls_key(&self, key: &StreamKey) -> String {
        format!("{}:hls:{key}", self.keys)
    }

    fn publish_keys_key(&self) -> String {
        format!("{}:publish_keys", self.keys)
    }

    fn publish_key_ids_key(&self) -> String {
        format!("{}:publish_key_ids", self.keys)
    }

    fn forwards_key(&self, key: &StreamKey) -> String {
        format!("{}:forwards:{key}", self.keys)
    }

    fn recordings_key(&self, node_id: &str) -> String {
        format!("{}:recordings:{node_id}", self.keys)
    }

    fn recording_nodes_key(&self) -> String {
        format!("{}:recording_nodes", self.keys)
    }

    fn publish_keys_revoked_key(&self) -> String {
        format!("{}:publish_keys_revoked", self.keys)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Removes and announces expired leases. Any replica may run it at any time. Also keeps
    /// the claims' connection checked, so that a broken one is replaced before a claim needs
    /// it rather than failing that claim.
    pub async fn sweep(&self) -> Result<u64, RegistryError> {
        observed("sweep", async {
            if self.claim_replicas > 0
                && let Ok(link) = self.primary.link().await
            {
                let mut claims = link.claims.clone();
                if let Err(e) = redis::cmd("PING").query_async::<String>(&mut claims).await {
                    self.primary.failed(&e);
                }
            }
            let mut conn = self.conn().await?;
            self.scripts
                .sweep
                .key(self.streams_key())
                .key(self.nodes_key())
                .arg(&self.keys)
                .arg(&self.channel)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))
        })
        .await
    }

    /// Relays the Redis event channel to this replica's watchers until `shutdown`, and sweeps
    /// expired leases every `sweep_every`. Reconnects with backoff; says so in the log once.
    pub async fn run(
        self: Arc<Self>,
        sweep_every: Duration,
        health: crate::Health,
        shutdown: CancellationToken,
    ) {
        let sweeper = {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(sweep_every);
                let mut failing = false;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.cancelled() => return,
                    }
                    match this.sweep().await {
                        Ok(_) => {
                            health.mark_ok(sweep_every * 3 + Duration::from_secs(1));
                            if failing {
                                info!("Redis is reachable again");
                                failing = false;
                            }
                        }
                        Err(e) => {
                            health.mark_failed(format!("Redis: {e}"));
                            if !failing {
                                warn!(error = %e, "Redis unreachable: registry requests fail until it is back");
                                failing = true;
                            }
                        }
                    }
                }
            })
        };
        tokio::spawn(self.primary.clone().follow(shutdown.clone()));
        let mut changes = self.primary.changes();
        let mut backoff = Duration::from_millis(100);
        let mut subscribed_before = false;
        loop {
            // Any failure (no primary known, a refused connection) just means "try again".
            let subscribed = async {
                let link = self.primary.link().await.ok()?;
                let mut pubsub = link.client.get_async_pubsub().await.ok()?;
                pubsub.subscribe(&self.channel).await.ok()?;
                Some(pubsub)
            };
            let pubsub = tokio::select! {
                result = tokio::time::timeout(Duration::from_secs(3), subscribed) => result,
                _ = shutdown.cancelled() => break,
            };
            if let Ok(Some(pubsub)) = pubsub {
                backoff = Duration::from_millis(100);
                if std::mem::replace(&mut subscribed_before, true) {
                    // Events published while there was no subscription are lost: watchers
                    // reconnect and re-list.
                    self.restart_feed();
                }
                changes.borrow_and_update();
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        // Another primary: its events are published there.
                        _ = changes.changed() => break,
                        _ = shutdown.cancelled() => {
                            sweeper.abort();
                            return;
                        }
                    };
                    let Some(message) = message else { break };
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    match parse_event(&payload) {
                        Some(event) => self.publish(event),
                        None => warn!(payload, "unreadable registry event"),
                    }
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        sweeper.abort();
    }
}

/// Hides a password in a Redis URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// An epoch in an event: the scripts send it as a decimal string (cjson would print a large
/// number with 14 significant digits), older ones as a number.
fn epoch_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Epoch {
        Number(u64),
        Text(String),
    }
    match Epoch::deserialize(d)? {
        Epoch::Number(n) => Ok(n),
        Epoch::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    StreamUp {
        key: String,
        node_id: String,
        relay_addr: String,
        #[serde(deserialize_with = "epoch_field")]
        epoch: u64,
        media: String,
        publisher_addr: String,
        started_at_ms: u64,
        #[serde(default, deserialize_with = "epoch_field")]
        hls_first: u64,
        #[serde(default, deserialize_with = "epoch_field")]
        hls_dsn: u64,
    },
    StreamDown {
        key: String,
        node_id: String,
        #[serde(deserialize_with = "epoch_field")]
        epoch: u64,
    },
    NodeUp {
        node: String,
    },
    NodeDown {
        id: String,
    },
}

fn parse_event(payload: &str) -> Option<RegistryEvent> {
    Some(match serde_json::from_str::<WireEvent>(payload).ok()? {
        WireEvent::StreamUp {
            key,
            node_id,
            relay_addr,
            epoch,
            media,
            publisher_addr,
            started_at_ms,
            hls_first,
            hls_dsn,
        } => RegistryEvent::StreamUp(StreamRecord {
            key: StreamKey::parse(&key).ok()?,
            node_id,
            relay_addr,
            epoch,
            media: serde_json::from_str(&media).unwrap_or_default(),
            publisher_addr,
            started_at_ms,
            forwards: Vec::new(),
            hls: HlsSequence {
                first_msn: hls_first,
                discontinuity: hls_dsn,
            },
        }),
        WireEvent::StreamDown {
            key,
            node_id,
            epoch,
        } => RegistryEvent::StreamDown {
            key: StreamKey::parse(&key).ok()?,
            epoch,
            node_id,
        },
        WireEvent::NodeUp { node } => RegistryEvent::NodeUp(serde_json::from_str(&node).ok()?),
        WireEvent::NodeDown { id } => RegistryEvent::NodeDown(id),
    })
}

/// A stream hash (as flat field/value pairs) as a record.
fn record_from_fields(key: StreamKey, fields: &[String]) -> Option<StreamRecord> {
    let get = |name: &str| {
        fields
            .chunks(2)
            .find(|pair| pair.len() == 2 && pair[0] == name)
            .map(|pair| pair[1].as_str())
    };
    Some(StreamRecord {
        key,
        node_id: get("node_id")?.to_owned(),
        relay_addr: get("relay_addr").unwrap_or("").to_owned(),
        epoch: get("epoch")?.parse().ok()?,
        media: get("media")
            .and_then(|m| serde_json::from_str::<MediaInfo>(m).ok())
            .unwrap_or_default(),
        publisher_addr: get("publisher_addr").unwrap_or("").to_owned(),
        started_at_ms: get("started_at_ms")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        forwards: get("forwards")
            .and_then(|f| serde_json::from_str(f).ok())
            .unwrap_or_default(),
        hls: HlsSequence {
            first_msn: get("hls_first").and_then(|s| s.parse().ok()).unwrap_or(0),
            discontinuity: get("hls_dsn").and_then(|s| s.parse().ok()).unwrap_or(0),
        },
    })
}

/// A stored publish key and its revocation time (`None` or an unreadable one: not revoked).
fn publish_key_from(json: &str, revoked: Option<&str>) -> Option<PublishKey> {
    let mut key: PublishKey = serde_json::from_str(json).ok()?;
    key.revoked_ms = revoked.and_then(|r| r.parse().ok());
    Some(key)
}

fn media_json(media: &MediaInfo) -> String {
    serde_json::to_string(media).unwrap_or_else(|_| "{}".to_owned())
}

impl RedisRegistry {
    fn epoch_floor(&self) -> u64 {
        self.epoch_floor.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes an epoch seen anywhere (a claim, a heartbeat, a record read).
    fn saw_epoch(&self, epoch: u64) {
        self.epoch_floor
            .fetch_max(epoch, std::sync::atomic::Ordering::Relaxed);
    }

    async fn claim(
        &self,
        claim: StreamClaim,
        takeover: Option<(&str, u64)>,
    ) -> Result<StreamRecord, RegistryError> {
        let link = self
            .primary
            .link()
            .await
            .map_err(RegistryError::Unavailable)?;
        // A claim that waits for replicas has a connection of its own (`WAIT` blocks it).
        let mut conn = if self.claim_replicas > 0 {
            link.claims.clone()
        } else {
            link.conn.clone()
        };
        let (from_node, from_epoch) = takeover.unwrap_or(("", 0));
        let reply: Vec<String> = self
            .scripts
            .claim
            .key(self.streams_key())
            .key(self.stream_key(&claim.key))
            .key(self.epoch_key(&claim.key))
            .key(self.hls_key(&claim.key))
            .arg(claim.key.to_string())
            .arg(&claim.node_id)
            .arg(&claim.relay_addr)
            .arg(media_json(&claim.media))
            .arg(&claim.publisher_addr)
            .arg(self.ttl_ms())
            .arg(&self.channel)
            .arg(from_node)
            .arg(from_epoch.to_string())
            .arg(self.epoch_floor().to_string())
            .arg(HlsSequence::slack(self.ttl).to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        if let Some(epoch) = reply
            .get(if reply.first().map(String::as_str) == Some("1") {
                1
            } else {
                2
            })
            .and_then(|e| e.parse().ok())
        {
            self.saw_epoch(epoch);
        }
        let record = match reply.first().map(String::as_str) {
            Some("1") => StreamRecord {
                epoch: reply.get(1).and_then(|e| e.parse().ok()).unwrap_or(0),
                started_at_ms: reply.get(2).and_then(|e| e.parse().ok()).unwrap_or(0),
                key: claim.key,
                node_id: claim.node_id,
                relay_addr: claim.relay_addr,
                media: claim.media,
                publisher_addr: claim.publisher_addr,
                forwards: Vec::new(),
                hls: HlsSequence {
                    first_msn: reply.get(3).and_then(|e| e.parse().ok()).unwrap_or(0),
                    discontinuity: reply.get(4).and_then(|e| e.parse().ok()).unwrap_or(0),
                },
            },
            _ => {
                return Err(RegistryError::AlreadyOwned {
                    owner: reply.get(1).cloned().unwrap_or_default(),
                    owner_epoch: reply.get(2).and_then(|e| e.parse().ok()).unwrap_or(0),
                    owner_relay: reply.get(3).cloned().unwrap_or_default(),
                    key: claim.key,
                });
            }
        };
        if self.claim_replicas > 0 {
            self.replicated(&mut conn, &record).await?;
        }
        Ok(record)
    }

    /// Waits until `claim_replicas` replicas hold the claim just written on `conn` (`WAIT`
    /// covers every earlier write of the connection). Short of that, undoes the claim and
    /// refuses it: a failover to a replica without it would hand the stream out again while
    /// its owner publishes.
    async fn replicated(
        &self,
        conn: &mut ConnectionManager,
        record: &StreamRecord,
    ) -> Result<(), RegistryError> {
        let acked = redis::cmd("WAIT")
            .arg(self.claim_replicas)
            .arg(CLAIM_WAIT.as_millis() as u64)
            .query_async::<i64>(conn)
            .await
            .map_err(|e| self.failed(e))?;
        if acked >= i64::from(self.claim_replicas) {
            return Ok(());
        }
        metrics::CLAIMS_UNREPLICATED.inc();
        let _ = self
            .release_stream(&record.key, &record.node_id, record.epoch)
            .await;
        warn!(
            stream = %record.key,
            acked,
            wanted = self.claim_replicas,
            "claim refused: too few Redis replicas acknowledged it"
        );
        Err(RegistryError::Unavailable(format!(
            "the claim of {} reached {acked} of {} Redis replicas within {CLAIM_WAIT:?}; refused, so a failover cannot lose it",
            record.key, self.claim_replicas
        )))
    }
}

impl Registry for RedisRegistry {
    fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    async fn register_node(&self, node: NodeRecord) -> Result<(), RegistryError> {
        self.heartbeat(node, Vec::new()).await.map(|_| ())
    }

    async fn heartbeat(
        &self,
        node: NodeRecord,
        streams: Vec<OwnedStream>,
    ) -> Result<Vec<StreamKey>, RegistryError> {
        observed("heartbeat", async {
            let mut conn = self.conn().await?;
            let node_json = serde_json::to_string(&node).unwrap_or_default();
            let mut invocation = self.scripts.heartbeat.prepare_invoke();
            invocation
                .key(self.streams_key())
                .key(self.nodes_key())
                .key(format!("{}:node:{}", self.keys, node.id))
                .arg(&node.id)
                .arg(&node_json)
                .arg(self.ttl_ms())
                .arg(&self.channel)
                .arg(&node.relay_addr);
            for s in &streams {
                self.saw_epoch(s.epoch);
                invocation
                    .key(self.stream_key(&s.key))
                    .key(self.epoch_key(&s.key))
                    .key(self.hls_key(&s.key))
                    .arg(s.key.to_string())
                    .arg(s.epoch.to_string())
                    .arg(media_json(&s.media))
                    .arg(&s.publisher_addr)
                    .arg(s.started_at_ms.to_string())
                    .arg(serde_json::to_string(&s.forwards).unwrap_or_else(|_| "[]".to_owned()))
                    .arg(s.hls.first_msn.to_string())
                    .arg(s.hls.discontinuity.to_string());
            }
            invocation
                .invoke_async::<Vec<String>>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|lost| {
                    lost.iter()
                        .filter_map(|name| StreamKey::parse(name).ok())
                        .collect()
                })
        })
        .await
    }

    async fn claim_stream(&self, claim: StreamClaim) -> Result<StreamRecord, RegistryError> {
        observed("claim", self.claim(claim, None)).await
    }

    async fn takeover_stream(
        &self,
        claim: StreamClaim,
        from_node: &str,
        from_epoch: u64,
    ) -> Result<StreamRecord, RegistryError> {
        observed("takeover", self.claim(claim, Some((from_node, from_epoch)))).await
    }

    async fn release_stream(
        &self,
        key: &StreamKey,
        node_id: &str,
        epoch: u64,
    ) -> Result<bool, RegistryError> {
        observed("release", async {
            let mut conn = self.conn().await?;
            self.scripts
                .release
                .key(self.streams_key())
                .key(self.stream_key(key))
                .arg(key.to_string())
                .arg(node_id)
                .arg(epoch.to_string())
                .arg(&self.channel)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|n| n == 1)
                .map_err(|e| self.failed(e))
        })
        .await
    }

    async fn lookup_stream(&self, key: &StreamKey) -> Result<Option<StreamRecord>, RegistryError> {
        observed("lookup", async {
            let mut conn = self.conn().await?;
            let result = self
                .scripts
                .lookup
                .key(self.streams_key())
                .key(self.stream_key(key))
                .arg(key.to_string())
                .invoke_async::<Option<Vec<String>>>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|fields| fields.and_then(|f| record_from_fields(key.clone(), &f)));
            if let Ok(Some(record)) = &result {
                self.saw_epoch(record.epoch);
            }
            result
        })
        .await
    }

    async fn list_streams(&self) -> Result<Vec<StreamRecord>, RegistryError> {
        observed("list_streams", async {
            let mut conn = self.conn().await?;
            let result = self
                .scripts
                .list_streams
                .key(self.streams_key())
                .arg(&self.keys)
                .invoke_async::<Vec<String>>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|flat| {
                    let mut out: Vec<StreamRecord> = flat
                        .chunks(2)
                        .filter_map(|pair| {
                            let key = StreamKey::parse(pair.first()?).ok()?;
                            let fields: Vec<String> = serde_json::from_str(pair.get(1)?).ok()?;
                            record_from_fields(key, &fields)
                        })
                        .collect();
                    out.sort_by(|a, b| a.key.cmp(&b.key));
                    out
                });
            if let Ok(records) = &result {
                for record in records {
                    self.saw_epoch(record.epoch);
                }
            }
            result
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        observed("list_nodes", async {
            let mut conn = self.conn().await?;
            self.scripts
                .list_nodes
                .key(self.nodes_key())
                .arg(&self.keys)
                .invoke_async::<Vec<String>>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|jsons| {
                    let mut nodes: Vec<NodeRecord> = jsons
                        .iter()
                        .filter_map(|j| serde_json::from_str(j).ok())
                        .collect();
                    nodes.sort_by(|a, b| a.id.cmp(&b.id));
                    nodes
                })
        })
        .await
    }

    fn watch(&self) -> broadcast::Receiver<RegistryEvent> {
        match self.events.read() {
            Ok(events) => events.subscribe(),
            // Never poisoned (nothing panics while holding it); a closed feed makes the
            // watcher reconnect.
            Err(_) => broadcast::channel(1).1,
        }
    }

    async fn create_publish_key(&self, key: PublishKey) -> Result<(), RegistryError> {
        observed("create_publish_key", async {
            let mut conn = self.conn().await?;
            let json = serde_json::to_string(&PublishKey {
                revoked_ms: None,
                ..key.clone()
            })
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            self.scripts
                .create_publish_key
                .key(self.publish_keys_key())
                .key(self.publish_key_ids_key())
                .arg(&key.secret_sha256)
                .arg(&key.id)
                .arg(json)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .and_then(|created| match created {
                    1 => Ok(()),
                    // 192 random bits collided: the caller's randomness is broken.
                    _ => Err(RegistryError::Unavailable(
                        "a publish key with this id or secret exists".to_owned(),
                    )),
                })
        })
        .await
    }

    async fn publish_key(&self, secret_sha256: &str) -> Result<Option<PublishKey>, RegistryError> {
        observed("publish_key", async {
            let mut conn = self.conn().await?;
            redis::pipe()
                .atomic()
                .hget(self.publish_keys_key(), secret_sha256)
                .hget(self.publish_keys_revoked_key(), secret_sha256)
                .query_async::<(Option<String>, Option<String>)>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|(json, revoked)| {
                    json.and_then(|json| publish_key_from(&json, revoked.as_deref()))
                })
        })
        .await
    }

    async fn list_publish_keys(&self) -> Result<Vec<PublishKey>, RegistryError> {
        observed("list_publish_keys", async {
            let mut conn = self.conn().await?;
            redis::pipe()
                .atomic()
                .hgetall(self.publish_keys_key())
                .hgetall(self.publish_keys_revoked_key())
                .query_async::<(
                    std::collections::HashMap<String, String>,
                    std::collections::HashMap<String, String>,
                )>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|(keys, revoked)| {
                    let mut keys: Vec<PublishKey> = keys
                        .iter()
                        .filter_map(|(sha, json)| {
                            publish_key_from(json, revoked.get(sha).map(String::as_str))
                        })
                        .collect();
                    keys.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
                    keys
                })
        })
        .await
    }

    async fn revoke_publish_key(&self, id: &str) -> Result<Option<PublishKey>, RegistryError> {
        observed("revoke_publish_key", async {
            let mut conn = self.conn().await?;
            self.scripts
                .revoke_publish_key
                .key(self.publish_keys_key())
                .key(self.publish_key_ids_key())
                .key(self.publish_keys_revoked_key())
                .arg(id)
                .invoke_async::<Option<(String, String)>>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|reply| {
                    reply.and_then(|(json, revoked)| publish_key_from(&json, Some(&revoked)))
                })
        })
        .await
    }

    async fn stream_forwards(
        &self,
        keys: &[StreamKey],
    ) -> Result<Vec<Vec<ForwardTarget>>, RegistryError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        observed("stream_forwards", async {
            let mut conn = self.conn().await?;
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.hgetall(self.forwards_key(key));
            }
            let replies: Vec<Vec<(String, String)>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(replies
                .into_iter()
                .map(|pairs| {
                    let mut targets: Vec<(u64, ForwardTarget)> = pairs
                        .iter()
                        .filter_map(|(_, json)| serde_json::from_str::<StoredForward>(json).ok())
                        .map(|s| (s.added_ms, s.target))
                        .collect();
                    targets.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
                    targets.into_iter().map(|(_, t)| t).collect()
                })
                .collect())
        })
        .await
    }

    async fn add_stream_forward(
        &self,
        key: &StreamKey,
        target: ForwardTarget,
    ) -> Result<bool, RegistryError> {
        observed("add_stream_forward", async {
            let mut conn = self.conn().await?;
            let id = target.id.clone();
            let stored = StoredForward {
                target,
                added_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            self.scripts
                .add_forward
                .key(self.forwards_key(key))
                .arg(id)
                .arg(serde_json::to_string(&stored).unwrap_or_default())
                .arg(MAX_FORWARDS_PER_STREAM)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|added| added == 1)
        })
        .await
    }

    async fn remove_stream_forward(
        &self,
        key: &StreamKey,
        id: &str,
    ) -> Result<bool, RegistryError> {
        observed("remove_stream_forward", async {
            let mut conn = self.conn().await?;
            redis::cmd("HDEL")
                .arg(self.forwards_key(key))
                .arg(id)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|removed| removed > 0)
        })
        .await
    }

    async fn sync_recordings(
        &self,
        node_id: &str,
        recordings: Vec<RecordingRecord>,
    ) -> Result<(), RegistryError> {
        observed("sync_recordings", async {
            let mut conn = self.conn().await?;
            let key = self.recordings_key(node_id);
            let mut pipe = redis::pipe();
            pipe.atomic().del(&key).ignore();
            if recordings.is_empty() {
                pipe.srem(self.recording_nodes_key(), node_id).ignore();
            } else {
                let fields: Vec<(String, String)> = recordings
                    .iter()
                    .map(|r| {
                        (
                            format!("{}/{}", r.stream, r.id),
                            serde_json::to_string(r).unwrap_or_default(),
                        )
                    })
                    .collect();
                pipe.hset_multiple(&key, &fields).ignore();
                pipe.sadd(self.recording_nodes_key(), node_id).ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
        })
        .await
    }

    async fn list_recordings(&self) -> Result<Vec<RecordingRecord>, RegistryError> {
        observed("list_recordings", async {
            let mut conn = self.conn().await?;
            let nodes: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.recording_nodes_key())
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            if nodes.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            for node in &nodes {
                pipe.hvals(self.recordings_key(node));
            }
            let replies: Vec<Vec<String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(replies
                .iter()
                .flatten()
                .filter_map(|json| serde_json::from_str::<RecordingRecord>(json).ok())
                .collect())
        })
        .await
    }

    async fn remove_recording(
        &self,
        node_id: &str,
        key: &StreamKey,
        id: &str,
    ) -> Result<bool, RegistryError> {
        observed("remove_recording", async {
            let mut conn = self.conn().await?;
            redis::cmd("HDEL")
                .arg(self.recordings_key(node_id))
                .arg(format!("{key}/{id}"))
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| self.failed(e))
                .map(|removed| removed > 0)
        })
        .await
    }
}

/// A destination as the forwards hash keeps it: when it was added orders the list.
#[derive(serde::Serialize, Deserialize)]
struct StoredForward {
    #[serde(flatten)]
    target: ForwardTarget,
    added_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_the_scripts_publish() {
        let up = r#"{"type":"stream_up","key":"live/a","node_id":"o1","relay_addr":"10.0.0.1:50052","epoch":3,"media":"{\"video_codec\":\"h264\",\"audio_codec\":\"aac\",\"width\":1280,\"height\":720,\"frame_rate\":30.0,\"bitrate_bps\":0,\"audio_sample_rate\":0,\"audio_channels\":0}","publisher_addr":"1.2.3.4:5","started_at_ms":17}"#;
        match parse_event(up) {
            Some(RegistryEvent::StreamUp(r)) => {
                assert_eq!(
                    (r.key.to_string().as_str(), r.epoch, r.media.width),
                    ("live/a", 3, 1280)
                );
            }
            other => panic!("{other:?}"),
        }
        // Epochs as the scripts send them now: decimal strings, exact past 2^53 / 14 digits.
        let big =
            r#"{"type":"stream_down","key":"live/a","node_id":"o1","epoch":"1765000000000123"}"#;
        assert!(matches!(
            parse_event(big),
            Some(RegistryEvent::StreamDown {
                epoch: 1_765_000_000_000_123,
                ..
            })
        ));
        let down = r#"{"type":"stream_down","key":"live/a","node_id":"o1","epoch":3}"#;
        assert!(matches!(
            parse_event(down),
            Some(RegistryEvent::StreamDown { epoch: 3, .. })
        ));
        assert!(
            matches!(parse_event(r#"{"type":"node_down","id":"e1"}"#), Some(RegistryEvent::NodeDown(id)) if id == "e1")
        );
        assert!(parse_event("garbage").is_none());
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("rediss://user:pw@h:1"), "rediss://***@h:1");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
