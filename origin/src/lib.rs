//! Corriente's origin role: accepts RTMP publishers, claims their streams through the control
//! plane (one owner per name, cluster-wide), keeps each stream's hub, and serves the relay that
//! edges pull from.
//!
//! The origin never talks to Redis and never serves viewers: edges do.

mod forward;
mod ingest;
mod metrics;
mod record;
mod relay;
mod streams;

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Json, Router};
use corriente_cluster::auth::ClusterAuth;
use corriente_cluster::serve;
use corriente_cluster::{
    ControlClient, ControlError, Health, Member, NodeLoad, NodeRecord, NodeRole, OwnedStream,
    run_membership,
};
use corriente_core::access::{AdminReader, IpRules};
use corriente_core::limits::{Rate, RateLimiter};
use corriente_core::net::{AcceptLimits, accept_loop};
use corriente_core::tls::{ReloadingCert, TlsError, TlsFiles};
use corriente_media::frame::unix_micros;
use corriente_media::rtmp::SessionConfig;
use corriente_media::{HubConfig, LagPolicy, StreamKey};
use corriente_proto::relay::relay_server::RelayServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

use crate::forward::ForwardSettings;
use crate::record::RecordSettings;
use crate::relay::RelayService;
use crate::streams::Streams;

pub use crate::forward::{AppForward, ForwardSpec};
pub use crate::relay::frame_to_pb;

impl OriginConfig {
    /// Checks the settings that do not need the network: what [`Origin::bind`] would refuse.
    pub fn validate(&self) -> Result<(), OriginError> {
        ControlClient::check_urls(&self.control_url)?;
        if self.rtmps_addr.is_some() && self.tls.is_none() {
            return Err(OriginError::TlsFilesMissing);
        }
        if self.hls_segment < corriente_media::segment::MIN_TARGET {
            return Err(OriginError::HlsSegment(self.hls_segment));
        }
        for (i, spec) in self.forwards.iter().enumerate() {
            AppForward::parse(&spec.0)
                .map_err(|e| OriginError::Forward(format!("--forward entry {}: {e}", i + 1)))?;
        }
        forward::tls_config(self.forward_ca_file.as_deref()).map_err(OriginError::Forward)?;
        for app in &self.record_apps {
            if app != "*" {
                StreamKey::new(app, "name")
                    .map_err(|e| OriginError::Record(format!("--record-apps {app:?}: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Settings of an origin.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// RTMP ingest listen address.
    pub rtmp_addr: SocketAddr,
    /// RTMPS (RTMP over TLS) ingest listen address, if any; needs `tls`.
    pub rtmps_addr: Option<SocketAddr>,
    /// Certificate and key of the TLS listeners, reloaded when the files change.
    pub tls: Option<TlsFiles>,
    /// Relay (gRPC) listen address.
    pub relay_addr: SocketAddr,
    /// Address edges dial for the relay (`HOST:PORT`). Defaults to the relay listen address,
    /// or, when that is a wildcard, to this host's address towards the control plane.
    pub advertise_relay: Option<String>,
    /// Control plane URL (`http://HOST:PORT`).
    pub control_url: String,
    /// This node's id in the cluster.
    pub node_id: String,
    /// Admin address, for the node record.
    pub admin_addr: String,
    /// RTMP session settings (chunk size, limits).
    pub session: SessionConfig,
    /// Deadline for the RTMP handshake.
    pub handshake_timeout: Duration,
    /// A publisher connection silent this long is closed.
    pub idle_timeout: Duration,
    /// A write to a publisher blocked this long closes the connection.
    pub write_timeout: Duration,
    /// Most simultaneous RTMP connections.
    pub max_connections: usize,
    /// Who may publish, by address: checked when an encoder connects, before anything else.
    pub publish_ip_rules: IpRules,
    /// How often a publication made with a managed key asks whether the key was revoked
    /// (a revoked key stops its live publication within this long).
    pub key_recheck_interval: Duration,
    /// Most simultaneous connections per listener from one client address (an IPv6 client
    /// is its /64); 0 for no limit.
    pub max_connections_per_ip: usize,
    /// Publish attempts allowed per client address (a token bucket), if limited.
    pub publish_rate_per_ip: Option<Rate>,
    /// Highest ingest bitrate of a publisher connection in bits per second, averaged over
    /// [`PUBLISH_BITRATE_WINDOW`]; 0 for no cap.
    pub max_publish_bitrate: u64,
    /// Hub settings of published streams.
    pub hub: HubConfig,
    /// HLS segment target: segments start at the first keyframe this long after the last
    /// (the origin marks them for every edge).
    pub hls_segment: Duration,
    /// When an edge pulling a stream falls behind for good.
    pub relay_lag: LagPolicy,
    /// How long shutdown waits for connections to end.
    pub drain_timeout: Duration,
    /// Cluster credentials: presented to the control plane, required of relay callers.
    pub cluster_auth: ClusterAuth,
    /// Destinations every stream of an application is forwarded to (`--forward APP=URL`).
    pub forwards: Vec<ForwardSpec>,
    /// A PEM file of certificates trusted for `rtmps://` destinations besides the web's roots.
    pub forward_ca_file: Option<std::path::PathBuf>,
    /// Deadline of a forward's connection, handshakes and `publish` answer.
    pub forward_connect_timeout: Duration,
    /// Where recordings are written (`--record-dir`); none: nothing is recorded.
    pub record_dir: Option<std::path::PathBuf>,
    /// Applications whose streams are recorded (`*`: all).
    pub record_apps: Vec<String>,
    /// Free space a recording disk must keep (bytes); below it recording stops.
    pub record_min_free: u64,
    /// Finished recordings older than this are deleted.
    pub record_max_age: Option<Duration>,
    /// Finished recordings are deleted, oldest first, while they take more than this (bytes).
    pub record_max_bytes: Option<u64>,
}

impl OriginConfig {
    /// What every client-facing listener of this node admits.
    pub fn accept_limits(&self) -> AcceptLimits {
        AcceptLimits {
            max_connections: self.max_connections,
            max_per_ip: self.max_connections_per_ip,
        }
    }
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            rtmp_addr: SocketAddr::from(([0, 0, 0, 0], 1935)),
            rtmps_addr: None,
            tls: None,
            relay_addr: SocketAddr::from(([0, 0, 0, 0], 50052)),
            advertise_relay: None,
            control_url: "http://127.0.0.1:50051".to_owned(),
            node_id: "origin".to_owned(),
            admin_addr: String::new(),
            session: SessionConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            publish_ip_rules: IpRules::default(),
            key_recheck_interval: Duration::from_secs(5),
            max_connections_per_ip: 256,
            publish_rate_per_ip: Some(Rate {
                count: 30,
                per: Duration::from_secs(60),
            }),
            max_publish_bitrate: 100_000_000,
            hub: HubConfig::default(),
            hls_segment: Duration::from_secs(2),
            relay_lag: LagPolicy::default(),
            drain_timeout: Duration::from_secs(10),
            cluster_auth: ClusterAuth::open(),
            forwards: Vec::new(),
            forward_ca_file: None,
            forward_connect_timeout: Duration::from_secs(5),
            record_dir: None,
            record_apps: vec!["*".to_owned()],
            record_min_free: 1 << 30,
            record_max_age: None,
            record_max_bytes: None,
        }
    }
}

/// The window over which a publisher's bitrate is averaged against
/// [`OriginConfig::max_publish_bitrate`]: long enough for keyframes and an encoder catching up.
pub const PUBLISH_BITRATE_WINDOW: Duration = Duration::from_secs(5);

/// Why an origin could not run.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("--hls-segment {0:?} is too short: at least 1s")]
    HlsSegment(Duration),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Control(#[from] ControlError),
    #[error("relay server failed: {0}")]
    Relay(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("--rtmps needs a certificate and key (--tls-cert, --tls-key)")]
    TlsFilesMissing,
    #[error("forward: {0}")]
    Forward(String),
    #[error("recording: {0}")]
    Record(String),
}

/// What every connection of this origin shares.
pub(crate) struct OriginContext {
    pub(crate) config: OriginConfig,
    /// Publish attempts per client address, when limited.
    pub(crate) publish_attempts: Option<RateLimiter>,
    pub(crate) streams: Arc<Streams>,
    pub(crate) node_id: String,
    relay_advertised: String,
    rtmp_local: SocketAddr,
    started_at_ms: u64,
    health: Health,
}

impl Member for OriginContext {
    fn node(&self) -> NodeRecord {
        let live = self.streams.live();
        let load = NodeLoad {
            streams: live.len() as u32,
            viewers: live
                .iter()
                .map(|(hub, _, _)| hub.subscribers() as u32)
                .sum(),
            ingress_bps: live.iter().map(|(hub, _, _)| hub.media().bitrate_bps).sum(),
            egress_bps: 0,
        };
        NodeRecord {
            id: self.node_id.clone(),
            role: NodeRole::Origin,
            relay_addr: self.relay_advertised.clone(),
            rtmp_addr: self.rtmp_local.to_string(),
            http_addr: String::new(),
            admin_addr: self.config.admin_addr.clone(),
            load,
            viewers: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms: self.started_at_ms,
            ready: !self.health.is_draining(),
        }
    }

    fn owned_streams(&self) -> Vec<OwnedStream> {
        self.streams.owned()
    }

    fn lost(&self, keys: Vec<StreamKey>) {
        self.streams.fence(&keys);
    }

    fn renewed(&self, keys: &[StreamKey], sent_at: tokio::time::Instant, ttl: Duration) {
        self.streams.renewed(keys, sent_at, ttl);
    }

    fn api_forwards(&self, forwards: Vec<(StreamKey, Vec<corriente_cluster::ForwardTarget>)>) {
        self.streams.api_forwards(forwards);
    }
}

/// A bound, not yet serving, origin.
pub struct Origin {
    rtmp: TcpListener,
    /// The RTMPS listener and its certificate.
    rtmps: Option<(TcpListener, Arc<ReloadingCert>)>,
    relay: TcpListener,
    ctx: Arc<OriginContext>,
    control: ControlClient,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, OriginError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| OriginError::Bind { what, addr, source })
}

impl Origin {
    /// Binds the RTMP and relay ports.
    pub async fn bind(config: OriginConfig) -> Result<Self, OriginError> {
        metrics::init();
        config.validate()?;
        let control = ControlClient::with_auth(&config.control_url, &config.cluster_auth)?;
        let rtmp = bind("RTMP ingest", config.rtmp_addr).await?;
        let rtmps = match (config.rtmps_addr, &config.tls) {
            (Some(addr), Some(files)) => {
                let cert = ReloadingCert::load(files.clone())?;
                Some((bind("RTMPS ingest", addr).await?, cert))
            }
            (Some(_), None) => return Err(OriginError::TlsFilesMissing),
            (None, _) => None,
        };
        let relay = bind("relay", config.relay_addr).await?;
        let relay_local = relay.local_addr().unwrap_or(config.relay_addr);
        let relay_advertised = advertised_relay(&config, relay_local);
        let forward = ForwardSettings {
            per_app: config
                .forwards
                .iter()
                .filter_map(|spec| AppForward::parse(&spec.0).ok())
                .collect(),
            tls: Arc::new(
                forward::tls_config(config.forward_ca_file.as_deref())
                    .map_err(OriginError::Forward)?,
            ),
            lag: config.relay_lag,
            connect_timeout: config.forward_connect_timeout,
            write_timeout: config.write_timeout,
        };
        let record = config.record_dir.as_ref().map(|dir| {
            Arc::new(RecordSettings::new(
                dir.clone(),
                config.record_apps.clone(),
                config.record_min_free,
                config.record_max_age,
                config.record_max_bytes,
            ))
        });
        if let Some(settings) = &record {
            std::fs::create_dir_all(&settings.dir).map_err(|e| {
                OriginError::Record(format!(
                    "cannot create the recording directory {}: {e}",
                    settings.dir.display()
                ))
            })?;
            record::recover(&settings.dir).await;
            tokio::spawn(record::run_retention(settings.clone()));
            tokio::spawn(record::run_sync(
                settings.clone(),
                control.clone(),
                config.node_id.clone(),
            ));
        }
        let streams = Streams::new(
            control.clone(),
            config.node_id.clone(),
            relay_advertised.clone(),
            config.hub,
            config.hls_segment,
            Arc::new(forward),
            record,
        );
        let ctx = Arc::new(OriginContext {
            node_id: config.node_id.clone(),
            rtmp_local: rtmp.local_addr().unwrap_or(config.rtmp_addr),
            relay_advertised,
            streams,
            started_at_ms: unix_micros() / 1000,
            health: Health::default(),
            publish_attempts: config.publish_rate_per_ip.map(RateLimiter::new),
            config,
        });
        Ok(Self {
            rtmp,
            rtmps,
            relay,
            ctx,
            control,
        })
    }

    pub fn rtmp_addr(&self) -> SocketAddr {
        self.ctx.rtmp_local
    }

    pub fn relay_addr(&self) -> SocketAddr {
        self.relay
            .local_addr()
            .unwrap_or(self.ctx.config.relay_addr)
    }

    /// Readiness of this origin (control plane reachable, lease held, not draining).
    pub fn health(&self) -> Health {
        self.ctx.health.clone()
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.ctx.config.node_id
    }

    /// Admin routes: the streams published here, and the recordings on this origin's disk.
    pub fn admin_routes(&self) -> Router {
        let ctx = self.ctx.clone();
        let record = self.ctx.streams.record_settings();
        let node_id = self.ctx.node_id.clone();
        Router::new()
            .route(
                "/api/v1/origin/recordings",
                get(move || async move {
                    let Some(settings) = record else {
                        return Json(serde_json::json!({ "recording": false, "recordings": [] }));
                    };
                    let listed =
                        tokio::task::spawn_blocking(move || record::list(&settings, &node_id))
                            .await
                            .unwrap_or_default();
                    let listed: Vec<serde_json::Value> = listed
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "stream": r.stream.to_string(),
                                "id": r.id,
                                "state": r.state,
                                "reason": r.reason,
                                "epoch": r.epoch,
                                "started_at_ms": r.started_at_ms,
                                "duration_ms": r.duration_ms,
                                "size": r.size,
                            })
                        })
                        .collect();
                    Json(serde_json::json!({ "recording": true, "recordings": listed }))
                }),
            )
            .route(
                "/api/v1/origin/streams",
                get(move |reader: Option<Extension<AdminReader>>| async move {
                    let trusted = reader.is_some_and(|Extension(r)| r.trusted);
                    let streams: Vec<serde_json::Value> = ctx
                        .streams
                        .live()
                        .into_iter()
                        .map(|(hub, epoch, publisher)| {
                            let stats = hub.stats();
                            let mut stream = serde_json::json!({
                                "key": stats.key.to_string(),
                                "app": stats.key.app(),
                                "name": stats.key.name(),
                                "epoch": epoch,
                                "media": stats.media,
                                "relay_subscribers": stats.subscribers,
                                "frames_in": stats.frames_in,
                                "bytes_in": stats.bytes_in,
                                "retained_bytes": stats.retained_bytes,
                                "gop_frames": stats.gop_frames,
                                "started_at_ms": stats.started_at_ms,
                                // Within its lease: relay pulls are served.
                                "serving": ctx.streams.serving(&stats.key),
                                "forwards": ctx.streams.forwards(&stats.key),
                            });
                            // Personal data: for trusted readers only (the admin token).
                            if trusted {
                                stream["publisher_addr"] = publisher.into();
                            }
                            stream
                        })
                        .collect();
                    Json(serde_json::json!({ "node": ctx.node_id, "streams": streams }))
                }),
            )
    }

    /// Serves until `shutdown`, then drains: publishers are told to go, their streams end
    /// (edges see a clean end) and are released, and the relay stops last.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), OriginError> {
        let Origin {
            rtmp,
            rtmps,
            relay,
            ctx,
            control,
        } = self;
        info!(listener = "origin-rtmp", addr = %ctx.rtmp_local, "listening");
        info!(listener = "origin-relay", addr = %relay.local_addr().unwrap_or(ctx.config.relay_addr), advertised = %ctx.relay_advertised, "listening");

        let membership_stop = CancellationToken::new();
        tokio::spawn(run_membership(
            control,
            ctx.clone(),
            ctx.health.clone(),
            membership_stop.clone(),
        ));

        // Self-fencing: streams whose lease this origin could not renew in time stop here.
        tokio::spawn({
            let streams = ctx.streams.clone();
            let stop = membership_stop.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            streams.fence_expired();
                        }
                        _ = stop.cancelled() => return,
                    }
                }
            }
        });

        let relay_stop = CancellationToken::new();
        let relay_server = tokio::spawn(serve_relay(relay, ctx.clone(), relay_stop.clone()));

        let tracker = TaskTracker::new();
        let accept_ctx = ctx.clone();
        let conn_shutdown = shutdown.clone();
        let plain = accept_loop(
            "origin-rtmp",
            rtmp,
            ctx.config.accept_limits(),
            shutdown.clone(),
            tracker.clone(),
            move |stream, peer| {
                ingest::serve_publisher(accept_ctx.clone(), stream, peer, conn_shutdown.clone())
            },
        );
        let tls = async {
            let Some((listener, cert)) = rtmps else {
                return;
            };
            info!(listener = "origin-rtmps", addr = %listener.local_addr().unwrap_or(ctx.rtmp_local), "listening");
            tokio::spawn(cert.clone().watch(TLS_RELOAD_EVERY, shutdown.child_token()));
            let acceptor = corriente_core::tls::acceptor(cert, &[]);
            let accept_ctx = ctx.clone();
            let conn_shutdown = shutdown.clone();
            accept_loop(
                "origin-rtmps",
                listener,
                ctx.config.accept_limits(),
                shutdown.clone(),
                tracker.clone(),
                move |stream, peer| {
                    ingest::serve_tls_publisher(
                        accept_ctx.clone(),
                        acceptor.clone(),
                        stream,
                        peer,
                        conn_shutdown.clone(),
                    )
                },
            )
            .await;
        };
        tokio::join!(plain, tls);

        // Draining: refuse new publishes, let connections end their streams.
        ctx.health.start_draining();
        ctx.streams.start_draining();
        tracker.close();
        if tokio::time::timeout(ctx.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(deadline = ?ctx.config.drain_timeout, "publisher connections did not end in time; stopping anyway");
        }
        membership_stop.cancel();
        relay_stop.cancel();
        match relay_server.await {
            Ok(result) => result?,
            Err(e) => warn!(error = %e, "relay server task failed"),
        }
        info!("origin stopped");
        Ok(())
    }
}

/// How often the TLS certificate files are checked for a change.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Binds and serves an origin until `shutdown`.
pub async fn run(config: OriginConfig, shutdown: CancellationToken) -> Result<(), OriginError> {
    Origin::bind(config).await?.serve(shutdown).await
}

async fn serve_relay(
    listener: TcpListener,
    ctx: Arc<OriginContext>,
    stop: CancellationToken,
) -> Result<(), OriginError> {
    let incoming = serve::incoming(listener, "relay");
    serve::server_builder(&ctx.config.cluster_auth)?
        // Room for a few seconds of a high-bitrate stream in flight per pull.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(InterceptedService::new(
            RelayServer::new(RelayService { ctx: ctx.clone() })
                .max_encoding_message_size(corriente_proto::MAX_RELAY_MESSAGE),
            ctx.config.cluster_auth.server("relay"),
        ))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await?;
    Ok(())
}

/// The relay address edges should dial.
fn advertised_relay(config: &OriginConfig, local: SocketAddr) -> String {
    if let Some(addr) = &config.advertise_relay {
        return addr.clone();
    }
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    // Listening on every interface: advertise the address this host uses to reach the
    // control plane, which is the one other nodes can reach it on in most networks.
    let ip = control_host_port(&config.control_url)
        .and_then(|target| {
            let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
            let addr = target.to_socket_addrs().ok()?.next()?;
            socket.connect(addr).ok()?;
            socket.local_addr().ok()
        })
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    match ip {
        Some(ip) => SocketAddr::new(ip, local.port()).to_string(),
        None => format!("127.0.0.1:{}", local.port()),
    }
}

fn control_host_port(url: &str) -> Option<(String, u16)> {
    let uri: tonic::transport::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_matches(['[', ']']).to_owned();
    Some((host, uri.port_u16().unwrap_or(80)))
}
