//! What every internal gRPC server of the cluster (the control plane, an origin's relay) does
//! the same way: accepting connections, and the server builder with the cluster's TLS.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tracing::warn;

use crate::auth::ClusterAuth;

/// The connections `listener` accepts, with Nagle off (gRPC messages are small and latency
/// counts). A failed accept (out of file descriptors and the like) is logged and backed off
/// for 100 ms instead of spinning; `server` names the listener in that log line.
pub fn incoming(
    listener: TcpListener,
    server: &'static str,
) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).filter_map(move |conn| async move {
        match conn {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Some(Ok(stream))
            }
            Err(e) => {
                warn!(error = %e, server, "failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    })
}

/// A tonic server builder serving over mutual TLS when `auth` has cluster certificates.
pub fn server_builder(
    auth: &ClusterAuth,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let builder = tonic::transport::Server::builder();
    match auth.server_tls() {
        Some(tls) => builder.tls_config(tls),
        None => Ok(builder),
    }
}
