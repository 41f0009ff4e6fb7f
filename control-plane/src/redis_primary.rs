//! The registry's way to its Redis primary: one fixed address (`redis://`, `rediss://`,
//! `unix://`), or whichever primary Redis Sentinel names (`redis+sentinel://`), followed
//! across failovers.
//!
//! With Sentinel, a [`Link`] (the client and connections of one primary) is replaced when the
//! sentinels name another primary. The follower asks them every second, and at once when a
//! request fails in a way that says the primary is gone or demoted: a dropped or refused
//! connection, a timeout, `READONLY`, `MASTERDOWN`. Redis's own connection manager only
//! reconnects to the address it was given, so it would keep talking to a demoted primary.
//! Each switch is logged and counted (`corriente_redis_primary_switches_total`), and
//! [`Primary::changes`] tells the event relay to resubscribe.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr, RedisError, TlsCertificates, TlsMode};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics;

/// How long one resolution through the sentinels may take (they are asked in turn, and the
/// primary they name is checked with `ROLE`).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the follower asks the sentinels when nothing went wrong.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// The least time between two resolutions, however many requests fail.
const RESOLVE_GAP: Duration = Duration::from_millis(100);

/// The client and connections of one primary.
pub(crate) struct Link {
    /// Counts the primaries this replica has used; a switch makes a new one.
    pub generation: u64,
    /// `HOST:PORT` of the primary, for logs.
    pub addr: String,
    /// For new connections (the event subscription).
    pub client: Client,
    /// Every request but claims.
    pub conn: ConnectionManager,
    /// Claims, each followed by `WAIT`: a `WAIT` blocks its connection until the replicas
    /// answer, so it gets a connection of its own.
    pub claims: ConnectionManager,
}

impl Link {
    fn new(generation: u64, client: Client) -> Result<Self, RedisError> {
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2))
            // Fail a request fast (the caller retries); the manager keeps reconnecting.
            .set_number_of_retries(1);
        Ok(Self {
            generation,
            addr: client.get_connection_info().addr().to_string(),
            conn: ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())?,
            claims: ConnectionManager::new_lazy_with_config(client.clone(), manager)?,
            client,
        })
    }
}

/// Where the primary comes from.
enum Source {
    Fixed,
    Sentinel {
        client: Box<tokio::sync::Mutex<SentinelClient>>,
        service: String,
    },
}

/// The current primary of the registry's Redis.
pub(crate) struct Primary {
    source: Source,
    current: RwLock<Option<Arc<Link>>>,
    changes: watch::Sender<u64>,
    nudge: Notify,
}

impl Primary {
    /// One fixed address: the connection manager reconnects to it.
    pub fn fixed(client: Client) -> Result<Self, RedisError> {
        Ok(Self {
            source: Source::Fixed,
            current: RwLock::new(Some(Arc::new(Link::new(1, client)?))),
            changes: watch::channel(1).0,
            nudge: Notify::new(),
        })
    }

    /// Whatever primary the sentinels of `url` name; found on first use and by the follower.
    pub fn sentinel(url: &SentinelUrl, ca_pem: Option<&[u8]>) -> Result<Self, RedisError> {
        let certificates = || TlsCertificates {
            client_tls: None,
            root_cert: ca_pem.map(<[u8]>::to_vec),
        };
        let sentinels = url.sentinels.iter().map(|(host, port)| {
            if url.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(sentinels, &url.service, SentinelServerType::Master)?
                .set_client_to_redis_db(url.db);
        if let Some(user) = &url.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &url.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(password) = &url.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if url.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if ca_pem.is_some() {
                builder = builder
                    .set_client_to_redis_certificates(certificates())
                    .set_client_to_sentinel_certificates(certificates());
            }
        }
        Ok(Self {
            source: Source::Sentinel {
                client: Box::new(tokio::sync::Mutex::new(builder.build()?)),
                service: url.service.clone(),
            },
            current: RwLock::new(None),
            changes: watch::channel(0).0,
            nudge: Notify::new(),
        })
    }

    fn current(&self) -> Option<Arc<Link>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// The current primary's link, asking the sentinels first if none is known yet.
    pub async fn link(&self) -> Result<Arc<Link>, String> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        self.resolve().await
    }

    /// Generations of the primary: changes when this replica moves to another one.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A request failed with `error`: when that says the primary is gone or no longer a
    /// primary, asks the sentinels again now rather than at the next poll.
    pub fn failed(&self, error: &RedisError) {
        if matches!(self.source, Source::Sentinel { .. }) && points_elsewhere(error) {
            self.nudge.notify_one();
        }
    }

    /// Asks the sentinels for the primary and moves to it when it is another one.
    async fn resolve(&self) -> Result<Arc<Link>, String> {
        let Source::Sentinel { client, service } = &self.source else {
            return self
                .current()
                .ok_or_else(|| "no Redis connection".to_owned());
        };
        let mut sentinel = client.lock().await;
        let found = match tokio::time::timeout(RESOLVE_TIMEOUT, sentinel.async_get_client()).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                return Err(format!(
                    "no Redis primary for service {service:?}: the sentinels answered: {e}"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "no Redis primary for service {service:?}: the sentinels did not answer within {RESOLVE_TIMEOUT:?}"
                ));
            }
        };
        let addr = found.get_connection_info().addr().to_string();
        let previous = self.current();
        if let Some(link) = &previous
            && link.addr == addr
        {
            return Ok(link.clone());
        }
        let generation = previous.as_ref().map_or(1, |l| l.generation + 1);
        let link = Arc::new(Link::new(generation, found).map_err(|e| e.to_string())?);
        if let Ok(mut current) = self.current.write() {
            *current = Some(link.clone());
        }
        match &previous {
            Some(old) => {
                metrics::REDIS_PRIMARY_SWITCHES.inc();
                info!(service, from = %old.addr, to = %addr, "Redis primary switched (Sentinel failover followed)");
            }
            None => info!(service, primary = %addr, "Redis primary found through Sentinel"),
        }
        self.changes.send_replace(generation);
        Ok(link)
    }

    /// Follows the sentinels until `shutdown`: every second, and at once after a request
    /// failed in a way that points elsewhere. Nothing to do for a fixed address.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        if matches!(self.source, Source::Fixed) {
            return;
        }
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = self.nudge.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            match self.resolve().await {
                Ok(_) if failing => {
                    failing = false;
                    info!("the sentinels name a Redis primary again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %e, "no Redis primary: registry requests fail until the sentinels name one");
                }
                Err(_) => {}
            }
            tokio::time::sleep(RESOLVE_GAP).await;
        }
    }
}

/// Whether a failed request says the primary moved: the connection is gone, or the server
/// is a replica now (`READONLY`, also inside a script's error) or cut off (`MASTERDOWN`).
fn points_elsewhere(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
        || error.to_string().contains("READONLY")
}

/// A `redis+sentinel://` URL, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `rediss+sentinel://`: TLS to the sentinels and the data nodes.
    pub tls: bool,
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub db: i64,
    pub username: Option<String>,
    /// The data nodes' password (`requirepass`).
    pub password: Option<String>,
    /// The sentinels' own password, when they have one (`?sentinel_password=`).
    pub sentinel_password: Option<String>,
}

impl SentinelUrl {
    /// Whether `url` names sentinels rather than a Redis server.
    pub fn is_sentinel(url: &str) -> bool {
        url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
    }

    /// Reads `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]
    /// [?sentinel_password=…]`, or `rediss+sentinel://` for TLS.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Err(
                "a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://".into(),
            );
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest
            .split_once('/')
            .ok_or("a Sentinel URL needs /SERVICE after the sentinels' addresses")?;
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, authority),
        };
        let (username, password) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let (user, password) = credentials.split_once(':').unwrap_or(("", credentials));
                (
                    Some(percent_decode(user)?).filter(|u| !u.is_empty()),
                    Some(percent_decode(password)?),
                )
            }
        };
        let sentinels = hosts
            .split(',')
            .map(|host| {
                let (name, port) = host
                    .rsplit_once(':')
                    .ok_or_else(|| format!("sentinel address {host:?} needs a :PORT"))?;
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("sentinel address {host:?} has no valid port"))?;
                let name = name.trim_start_matches('[').trim_end_matches(']');
                if name.is_empty() {
                    return Err(format!("sentinel address {host:?} has no host"));
                }
                Ok((name.to_owned(), port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut parts = path.split('/');
        let service = parts.next().unwrap_or_default();
        if service.is_empty() {
            return Err(
                "a Sentinel URL needs the service (master) name after the addresses".into(),
            );
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| format!("database {db:?} is not a number"))?,
        };
        if parts.next().is_some() {
            return Err("a Sentinel URL ends after /SERVICE/DB".into());
        }
        let mut sentinel_password = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sentinel_password", value)) => {
                    sentinel_password = Some(percent_decode(value)?);
                }
                _ => return Err(format!("unknown Sentinel URL parameter {pair:?}")),
            }
        }
        Ok(Self {
            tls,
            sentinels,
            service: percent_decode(service)?,
            db,
            username,
            password,
            sentinel_password,
        })
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a % in the URL is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL decodes to invalid UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sentinel_urls() {
        let url = SentinelUrl::parse(
            "redis+sentinel://:p%40ss@10.0.0.1:26379,[::1]:26380,s3:26381/mymaster/2",
        )
        .unwrap();
        assert_eq!(
            url,
            SentinelUrl {
                tls: false,
                sentinels: vec![
                    ("10.0.0.1".into(), 26379),
                    ("::1".into(), 26380),
                    ("s3".into(), 26381)
                ],
                service: "mymaster".into(),
                db: 2,
                username: None,
                password: Some("p@ss".into()),
                sentinel_password: None,
            }
        );
        let url = SentinelUrl::parse("rediss+sentinel://s1:1/svc?sentinel_password=x").unwrap();
        assert!(url.tls && url.db == 0 && url.sentinel_password.as_deref() == Some("x"));
        for bad in [
            "redis://h:1/svc",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h/svc",
            "redis+sentinel://h:0/svc",
            "redis+sentinel://h:1/svc/x",
            "redis+sentinel://h:1/svc?what=1",
            "redis+sentinel://:%zz@h:1/svc",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
