//! Accepting connections the same way on every listener: one task per socket, spawned with a
//! permit (over the limit a connection is refused at once and counted), inside a span that
//! carries the listener, a connection id and the peer address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{IntCounterVec, register_int_counter_vec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_connections_refused_total",
        "Connections refused at accept, by listener and reason",
        &["listener", "reason"]
    )
    .expect("metric registers once")
});

/// Identifies a connection in logs.
pub fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// Accepts connections on `listener` until `shutdown`, running `handler` for each in its own
/// task tracked by `tracker`. At most `max_connections` run at once.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    max_connections: usize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
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
            CONNECTIONS_REFUSED
                .with_label_values(&[name, "connection_limit"])
                .inc();
            debug!(listener = name, %peer, limit = max_connections, "connection refused: node is at its connection limit");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = next_connection_id();
        let span = info_span!("conn", listener = name, conn = id, peer = %peer, stream = tracing::field::Empty);
        let task = handler(stream, peer);
        tracker.spawn(
            async move {
                task.await;
                drop(permit);
            }
            .instrument(span),
        );
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
