//! Accepting connections the same way on every listener: one task per socket, spawned with a
//! permit, inside a span that carries the listener, a connection id and the peer address. Over
//! the listener's connection limit, or over the per-client limit, a connection is refused at
//! once and counted.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use prometheus::{IntCounterVec, register_int_counter_vec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub use crate::limits::AcceptLimits;
use crate::limits::{ClientKey, ConnectionsPerIp, LogThrottle};

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

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
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = (limits.max_per_ip > 0).then(|| ConnectionsPerIp::new(limits.max_per_ip));
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse("connection_limit", peer);
            continue;
        };
        let slot = match &per_ip {
            Some(table) => match table.try_open(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    refuse("per_ip_limit", peer);
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let id = next_connection_id();
        let span = info_span!("conn", listener = name, conn = id, peer = %peer, stream = tracing::field::Empty);
        // `map`, not an async block awaiting the handler's future: a block would hold that
        // future twice (captured, and in its await state), doubling every connection's task.
        let task = handler(stream, peer).map(move |()| drop((permit, slot)));
        tracker.spawn(task.instrument(span));
    }
}

/// Closes a connection so the peer reads everything written before the close: shut down the
/// write side, then drain what the peer still sends until it closes or `linger` passes.
/// Closing with unread input would reset the connection and could discard our last words
/// (an error status, say) before the peer reads them.
pub async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, linger: Duration) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = vec![0u8; 4096];
        let mut total = 0usize;
        while total < (1 << 20) {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(linger, drain).await;
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
