//! Corriente's control plane: a stateless gRPC service over a registry of stream ownership
//! (leases with fencing epochs), node membership and change events.
//!
//! Origins and edges reach it through [`ControlClient`], even in the all-in-one mode, so there
//! is one code path. The registry is held in memory in the all-in-one mode and in Redis in a
//! cluster; only this crate knows which.

pub mod client;
mod convert;
pub mod membership;
pub mod memory;
mod metrics;
pub mod registry;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use corriente_proto::control::control_server::ControlServer;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use client::{ControlClient, ControlError, HeartbeatOutcome, Lease};
pub use membership::{Health, Member, Readiness, run_membership};
pub use memory::MemoryRegistry;
pub use registry::{
    NodeLoad, NodeRecord, NodeRole, OwnedStream, Registry, RegistryError, RegistryEvent,
    StreamClaim, StreamRecord,
};
pub use service::ControlService;

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Lease duration of streams and nodes. A dead origin's streams are released at most this
    /// long after its last heartbeat; nodes heartbeat three times per lease.
    pub lease_ttl: Duration,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            lease_ttl: Duration::from_secs(6),
        }
    }
}

/// Why the control plane could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("cannot listen on {addr} for gRPC: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A bound, not yet serving, control plane.
pub struct ControlPlane {
    listener: TcpListener,
    registry: Arc<MemoryRegistry>,
}

impl ControlPlane {
    /// Binds the gRPC port.
    pub async fn bind(config: ControlPlaneConfig) -> Result<Self, ControlPlaneError> {
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| ControlPlaneError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        Ok(Self {
            listener,
            registry: Arc::new(MemoryRegistry::new(config.lease_ttl)),
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Admin routes: the cluster as the registry sees it.
    pub fn admin_routes(&self) -> Router {
        cluster_routes(self.registry.clone())
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ControlPlaneError> {
        let addr = self.local_addr();
        info!(listener = "control-grpc", %addr, registry = "memory", "listening");
        let registry = self.registry.clone();
        let sweep_every = (registry.lease_ttl() / 6).max(Duration::from_millis(100));
        let sweeper_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            loop {
                tokio::select! {
                    _ = tick.tick() => registry.sweep(),
                    _ = sweeper_shutdown.cancelled() => return,
                }
            }
        });
        serve_grpc(self.listener, self.registry, shutdown).await
    }
}

/// Binds and serves the control plane until `shutdown`.
pub async fn run(
    config: ControlPlaneConfig,
    shutdown: CancellationToken,
) -> Result<(), ControlPlaneError> {
    ControlPlane::bind(config).await?.serve(shutdown).await
}

async fn serve_grpc<R: Registry>(
    listener: TcpListener,
    registry: Arc<R>,
    shutdown: CancellationToken,
) -> Result<(), ControlPlaneError> {
    let incoming = TcpListenerStream::new(listener).filter_map(|conn| async move {
        match conn {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Some(Ok::<_, std::io::Error>(stream))
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "control plane failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(ControlServer::new(ControlService::new(registry)))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

fn cluster_routes<R: Registry>(registry: Arc<R>) -> Router {
    let streams = registry.clone();
    Router::new()
        .route(
            "/api/v1/cluster/streams",
            get(move || async move {
                match streams.list_streams().await {
                    Ok(list) => Json(serde_json::json!({ "streams": list })).into_response(),
                    Err(e) => unavailable(e),
                }
            }),
        )
        .route(
            "/api/v1/cluster/nodes",
            get(move || async move {
                match registry.list_nodes().await {
                    Ok(list) => Json(serde_json::json!({ "nodes": list })).into_response(),
                    Err(e) => unavailable(e),
                }
            }),
        )
}

fn unavailable(e: RegistryError) -> axum::response::Response {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}
