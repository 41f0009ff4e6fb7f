//! Corriente's control plane: a stateless gRPC service over a registry of stream ownership
//! (leases with fencing epochs), node membership and change events.
//!
//! Origins and edges reach it through `corriente_cluster::ControlClient`, even in the all-in-one
//! mode, so there is one code path. The registry is held in memory in the all-in-one mode and in
//! Redis in a cluster; only this crate knows which, and neither origins nor edges link it.

mod api;
mod dashboard;
mod forwards;
mod keys;
pub mod memory;
mod metrics;
mod probe;
pub mod publish_auth;
mod recordings;
mod redis_primary;
pub mod redis_registry;
pub mod registry;
mod service;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use corriente_cluster::Health;
use corriente_cluster::auth::ClusterAuth;
use corriente_cluster::serve;
use corriente_proto::control::control_server::ControlServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use memory::MemoryRegistry;
pub use publish_auth::PublishAuthConfig;
pub use redis_primary::SentinelUrl;
pub use redis_registry::{RedisConfig, RedisRegistry};
pub use registry::{PublishKey, Registry, RegistryError};
pub use service::ControlService;

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// This replica's id, for the admin server and logs.
    pub node_id: String,
    /// Lease duration of streams and nodes. A dead origin's streams are released at most this
    /// long after its last heartbeat; nodes heartbeat three times per lease.
    pub lease_ttl: Duration,
    /// Redis URL (one server, or `redis+sentinel://` to follow Sentinel's primary); without it
    /// the registry lives in this process (one replica only).
    pub redis_url: Option<String>,
    /// Redis replicas that must acknowledge a stream claim before it is granted (`None`: 1
    /// with Sentinel, 0 for one server).
    pub redis_claim_replicas: Option<u32>,
    /// Key prefix in Redis, so several clusters can share one.
    pub redis_prefix: String,
    /// PEM certificate authority for `rediss://` (default: the system's roots).
    pub redis_ca_pem: Option<Vec<u8>>,
    /// How long a conflicting claim waits for the current owner to confirm it still publishes.
    pub owner_probe_timeout: Duration,
    /// Who may publish: managed keys, signed tokens, the webhook (off by default).
    pub publish_auth: PublishAuthConfig,
    /// Cluster credentials: required of every gRPC call, presented to origins' relays.
    pub cluster_auth: ClusterAuth,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            node_id: "control-plane".to_owned(),
            lease_ttl: Duration::from_secs(6),
            redis_url: None,
            redis_claim_replicas: None,
            redis_prefix: "corriente".to_owned(),
            redis_ca_pem: None,
            owner_probe_timeout: Duration::from_millis(800),
            publish_auth: PublishAuthConfig::default(),
            cluster_auth: ClusterAuth::open(),
        }
    }
}

impl ControlPlaneConfig {
    /// The lease durations accepted: long enough to survive a heartbeat lost to a hiccup, short
    /// enough that a dead origin's streams come free soon.
    pub const LEASE_TTLS: std::ops::RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(300);

    /// Checks the settings that do not need the network: what [`ControlPlane::bind`] would
    /// refuse.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !Self::LEASE_TTLS.contains(&self.lease_ttl) {
            return Err(ConfigError::LeaseTtl(self.lease_ttl));
        }
        if let Some(url) = &self.redis_url {
            if SentinelUrl::is_sentinel(url) {
                SentinelUrl::parse(url).map_err(ConfigError::SentinelUrl)?;
            } else if !["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(ConfigError::RedisUrl);
            }
        }
        Ok(())
    }
}

/// A control-plane setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--lease-ttl must be between 1s and 5m, not {0:?}")]
    LeaseTtl(Duration),
    #[error(
        "--redis must be a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// URL"
    )]
    RedisUrl,
    #[error("--redis: {0}")]
    SentinelUrl(String),
}

/// Why the control plane could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} for gRPC: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    Redis(#[from] redis_registry::RedisSetupError),
}

/// Where the registry lives.
enum Backend {
    Memory(Arc<MemoryRegistry>),
    Redis(Arc<RedisRegistry>),
}

/// A bound, not yet serving, control plane.
pub struct ControlPlane {
    listener: TcpListener,
    node_id: String,
    backend: Backend,
    probe: Arc<probe::OwnerProbe>,
    health: Health,
    publish_auth: PublishAuthConfig,
    cluster_auth: ClusterAuth,
}

impl ControlPlane {
    /// Binds the gRPC port.
    pub async fn bind(config: ControlPlaneConfig) -> Result<Self, ControlPlaneError> {
        metrics::init();
        config.validate()?;
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| ControlPlaneError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let backend = match &config.redis_url {
            Some(url) => Backend::Redis(Arc::new(RedisRegistry::connect(&RedisConfig {
                url: url.clone(),
                prefix: config.redis_prefix.clone(),
                lease_ttl: config.lease_ttl,
                ca_pem: config.redis_ca_pem.clone(),
                claim_replicas: config.redis_claim_replicas,
            })?)),
            None => Backend::Memory(Arc::new(MemoryRegistry::new(config.lease_ttl))),
        };
        Ok(Self {
            listener,
            node_id: config.node_id,
            backend,
            probe: Arc::new(probe::OwnerProbe::new(
                config.owner_probe_timeout,
                config.cluster_auth.clone(),
            )),
            health: Health::default(),
            publish_auth: config.publish_auth,
            cluster_auth: config.cluster_auth,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// This replica's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Readiness: the registry answers (always, in memory; Redis reachable otherwise).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Admin routes: the cluster as the registry sees it.
    pub fn admin_routes(&self) -> Router {
        let stats = match &self.backend {
            Backend::Memory(r) => stats::routes(r.clone()),
            Backend::Redis(r) => stats::routes(r.clone()),
        };
        let recordings = match &self.backend {
            Backend::Memory(r) => recordings::routes(r.clone()),
            Backend::Redis(r) => recordings::routes(r.clone()),
        };
        stats.merge(recordings).merge(dashboard::routes())
    }

    /// Admin actions: publish key management (`/api/v1/keys`), restreaming destinations
    /// (`/api/v1/streams/{app}/{name}/forwards`) and deleting recordings
    /// (`/api/v1/recordings/{app}/{name}/{id}`). The admin server must guard
    /// them (admin token, or loopback clients only).
    pub fn admin_actions(&self) -> Router {
        let required = self.publish_auth.required;
        match &self.backend {
            Backend::Memory(r) => keys::routes(r.clone(), required)
                .merge(forwards::routes(r.clone()))
                .merge(recordings::actions(r.clone(), self.probe.clone())),
            Backend::Redis(r) => keys::routes(r.clone(), required)
                .merge(forwards::routes(r.clone()))
                .merge(recordings::actions(r.clone(), self.probe.clone())),
        }
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ControlPlaneError> {
        let addr = self.local_addr();
        match self.backend {
            Backend::Memory(registry) => {
                info!(listener = "control-grpc", %addr, registry = "memory", "listening");
                let sweep_every = sweep_interval(registry.lease_ttl());
                let sweeper = registry.clone();
                let sweeper_shutdown = shutdown.clone();
                let health = self.health.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(sweep_every);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                sweeper.sweep();
                                health.mark_ok(sweep_every * 3 + Duration::from_secs(1));
                            }
                            _ = sweeper_shutdown.cancelled() => return,
                        }
                    }
                });
                serve_grpc(
                    self.listener,
                    registry,
                    self.probe,
                    self.publish_auth,
                    self.cluster_auth,
                    shutdown,
                )
                .await
            }
            Backend::Redis(registry) => {
                info!(listener = "control-grpc", %addr, registry = "redis", "listening");
                tokio::spawn(registry.clone().run(
                    sweep_interval(registry.lease_ttl()),
                    self.health.clone(),
                    shutdown.clone(),
                ));
                serve_grpc(
                    self.listener,
                    registry,
                    self.probe,
                    self.publish_auth,
                    self.cluster_auth,
                    shutdown,
                )
                .await
            }
        }
    }
}

/// Binds and serves the control plane until `shutdown`.
pub async fn run(
    config: ControlPlaneConfig,
    shutdown: CancellationToken,
) -> Result<(), ControlPlaneError> {
    ControlPlane::bind(config).await?.serve(shutdown).await
}

/// How often expired leases are swept: a few times per lease, so a dead node's streams are
/// announced gone soon after their lease ends.
fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 6).max(Duration::from_millis(100))
}

async fn serve_grpc<R: Registry>(
    listener: TcpListener,
    registry: Arc<R>,
    probe: Arc<probe::OwnerProbe>,
    publish_auth: PublishAuthConfig,
    cluster_auth: ClusterAuth,
    shutdown: CancellationToken,
) -> Result<(), ControlPlaneError> {
    let incoming = serve::incoming(listener, "control");
    serve::server_builder(&cluster_auth)?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(ControlServer::with_interceptor(
            ControlService::new(registry, probe).with_publish_auth(publish_auth),
            cluster_auth.server("control"),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}
