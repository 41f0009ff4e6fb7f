//! Accepting connections the same way on every listener: one task per socket, spawned with a
//! permit, inside a span that carries the listener, a connection id and the peer address. Over
//! the listener's connection limit, or over the per-client limit, a connection is refused at
//! once and counted.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use prometheus::{IntCounterVec, register_int_counter_vec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub use crate::limits::AcceptLimits;
use crate::limits::{ClientKey, ConnectionsPerIp, IpSlot, LogThrottle};

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

static CONNECTIONS_CUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_connections_cut_total",
        "Connections closed because the peer held them without progress, by listener and reason",
        &["listener", "reason"]
    )
    .expect("metric registers once")
});

static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_connections_refused_total",
        "Connections refused at accept, by listener and reason",
        &["listener", "reason"]
    )
    .expect("metric registers once")
});

/// At most one log line per listener this often about refused connections (a flood of them
/// is in the counter, not in the log).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Identifies a connection in logs.
pub fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// What a listener admits, shared by its accept loop and by anything that admits more than one
/// viewer per connection (the streams of an HTTP/2 connection): connection permits and the
/// per-client table. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    name: &'static str,
    limits: AcceptLimits,
    permits: Arc<Semaphore>,
    per_ip: Option<Arc<ConnectionsPerIp>>,
}

/// One admitted connection (or stream): dropping it gives its permit and client slot back.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _slot: Option<IpSlot>,
}

impl Admission {
    pub fn new(name: &'static str, limits: AcceptLimits) -> Admission {
        Admission {
            name,
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: (limits.max_per_ip > 0).then(|| ConnectionsPerIp::new(limits.max_per_ip)),
        }
    }

    /// Admits one more connection from `ip`, or names the limit it is over
    /// (`connection_limit`, `per_ip_limit`).
    pub fn try_admit(&self, ip: IpAddr) -> Result<Admitted, &'static str> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| "connection_limit")?;
        let slot = match &self.per_ip {
            Some(table) => Some(table.try_open(ip).ok_or("per_ip_limit")?),
            None => None,
        };
        Ok(Admitted {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// Accepts connections on `listener` until `shutdown`, running `handler` for each in its own
/// task tracked by `tracker`. At most `limits.max_connections` run at once, and at most
/// `limits.max_per_ip` from one client address; a connection over either is closed at once
/// and counted in `corriente_connections_refused_total` (`connection_limit`, `per_ip_limit`).
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: AcceptLimits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_admitted(
        Admission::new(name, limits),
        listener,
        shutdown,
        tracker,
        handler,
    )
    .await
}

/// [`accept_loop`] with an [`Admission`] the caller shares with its handlers.
pub async fn accept_admitted<F, Fut>(
    admission: Admission,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = admission.name;
    let limits = admission.limits;
    // This listener's series exist from its start, at zero.
    for reason in ["connection_limit", "per_ip_limit"] {
        CONNECTIONS_REFUSED.with_label_values(&[name, reason]);
    }
    for reason in CUT_REASONS {
        CONNECTIONS_CUT.with_label_values(&[name, reason]);
    }
    let mut refusal_log = LogThrottle::new(REFUSAL_LOG_EVERY);
    let mut refuse = |reason: &'static str, peer: SocketAddr| {
        CONNECTIONS_REFUSED.with_label_values(&[name, reason]).inc();
        if let Some(held_back) = refusal_log.allow(Instant::now()) {
            info!(
                listener = name,
                reason,
                client = %ClientKey::of(peer.ip()),
                max_connections = limits.max_connections,
                max_per_ip = limits.max_per_ip,
                refusals_not_logged = held_back,
                "connection refused"
            );
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match admission.try_admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(reason) => {
                refuse(reason, peer);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = next_connection_id();
        let span = info_span!("conn", listener = name, conn = id, peer = %peer, stream = tracing::field::Empty);
        // `map`, not an async block awaiting the handler's future: a block would hold that
        // future twice (captured, and in its await state), doubling every connection's task.
        let task = handler(stream, peer).map(move |()| drop(admitted));
        tracker.spawn(task.instrument(span));
    }
}

/// Counts a connection the node closed because the peer held it without making progress
/// (`corriente_connections_cut_total{listener, reason}`), with the reasons in [`CUT_REASONS`].
pub fn count_cut(listener: &'static str, reason: &'static str) {
    CONNECTIONS_CUT.with_label_values(&[listener, reason]).inc();
}

/// Why a connection is cut: a write made no progress within its deadline (`write_stall`),
/// the session did not reach playback within its deadline (`setup_timeout`), an HTTP/2
/// connection had no request in flight for the idle deadline (`idle`).
pub const CUT_REASONS: &[&str] = &["write_stall", "setup_timeout", "idle"];

/// Writes all of `bytes` within `timeout`: a peer that stops reading cannot hold the task (and
/// its connection slot) by making a write wait forever. `TimedOut` past the deadline.
pub async fn write_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("peer stopped reading: no write progress for {timeout:?}"),
        )),
    }
}

/// Closes a connection so the peer reads everything written before the close: shut down the
/// write side, then drain what the peer still sends until it closes or `linger` passes.
/// Closing with unread input would reset the connection and could discard our last words
/// (an error status, say) before the peer reads them.
///
/// The whole close, TLS `close_notify` included, happens within `linger`: a peer that stopped
/// reading cannot hold the task by never taking the shutdown.
pub async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, linger: Duration) {
    let close = async {
        let _ = stream.shutdown().await;
        let mut sink = vec![0u8; 4096];
        let mut total = 0usize;
        while total < (1 << 20) {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(linger, close).await;
}

/// [`close_gracefully`] for a socket shared with other tasks (a viewer's socket that the
/// fan-out also writes to): shut down the write side, then drain until the peer closes or
/// `linger` passes.
pub async fn close_shared(socket: &TcpStream, linger: Duration) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut sink = vec![0u8; 4096];
        let mut total = 0usize;
        while total < (1 << 20) {
            if socket.readable().await.is_err() {
                return;
            }
            match socket.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(linger, drain).await;
}
