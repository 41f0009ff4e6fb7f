//! Corriente's edge role: serves viewers over RTMP and HTTP-FLV. On a stream's first viewer it
//! looks the stream up in the control plane, pulls it once from the owning origin over the
//! relay, and fans it out to every local viewer from one hub.
//!
//! The edge never imports the origin: they meet only through the relay and control APIs.

mod access;
mod hls;
mod http;
mod metrics;
mod page;
mod pulls;
mod rtmp;
mod viewer;
mod vod;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use corriente_cluster::auth::ClusterAuth;
use corriente_cluster::{
    ControlClient, ControlError, Health, Member, NodeLoad, NodeRecord, NodeRole, RegistryEvent,
    run_membership,
};
use corriente_core::limits::{Rate, RateLimiter};
use corriente_core::net::{AcceptLimits, Admission, accept_admitted, accept_loop};
use corriente_core::tls::{ReloadingCert, TlsError, TlsFiles};
use corriente_media::frame::unix_micros;
use corriente_media::rtmp::SessionConfig;
use corriente_media::{HubConfig, LagPolicy};
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use crate::access::PlayAuthConfig;
use crate::pulls::Pulls;
pub use crate::pulls::{PullConfig, frame_from_pb};

/// Settings of an edge.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// RTMP playback listen address.
    pub rtmp_addr: SocketAddr,
    /// HTTP playback (HTTP-FLV) listen address.
    pub http_addr: SocketAddr,
    /// RTMPS playback listen address, if any; needs `tls`.
    pub rtmps_addr: Option<SocketAddr>,
    /// HTTPS playback listen address (HTTP-FLV, the player page; HTTP/2 when the client offers
    /// it), if any; needs `tls`.
    pub https_addr: Option<SocketAddr>,
    /// Certificate and key of the TLS listeners, reloaded when the files change.
    pub tls: Option<TlsFiles>,
    /// Who may watch: IP rules, signed URLs, the `on_play` hook.
    pub play_auth: PlayAuthConfig,
    /// Answer plain-HTTP page requests with a redirect to HTTPS (stream requests, `.flv`, are
    /// still served over plain HTTP: players that asked for it want it).
    pub https_redirect: bool,
    /// Control plane URL (`http://HOST:PORT`).
    pub control_url: String,
    /// This node's id in the cluster.
    pub node_id: String,
    /// Admin address, for the node record.
    pub admin_addr: String,
    /// RTMP session settings; its chunk size is also the chunk size of the shared media.
    pub session: SessionConfig,
    /// Deadline for the RTMP handshake and the `play` request, and for HTTP request headers.
    pub handshake_timeout: Duration,
    /// A viewer whose socket accepts nothing for this long is disconnected.
    pub write_timeout: Duration,
    /// Kernel send buffer of viewer sockets (0: the kernel's default, which autotunes up to
    /// megabytes). A bounded buffer keeps slow viewers near live: they meet backpressure
    /// within a second or two of falling behind and skip to a keyframe, instead of queueing
    /// many seconds in the kernel.
    pub viewer_send_buffer: u32,
    /// Write to playing viewers (RTMP and HTTP-FLV over plain TCP) with `TCP_NODELAY`, every
    /// coalesced batch a segment of its own. Off by default: Nagle's algorithm then sends a
    /// batch at once when the viewer has acknowledged the last one, and merges it with the next
    /// while it has not, so a viewer that reads promptly gets every batch as it is written and
    /// one that reads in bursts costs one segment per burst, not one per batch. Connection setup
    /// (handshakes, requests) always runs with `TCP_NODELAY`.
    pub viewer_nodelay: bool,
    /// Most simultaneous connections per listener.
    pub max_connections: usize,
    /// Most simultaneous connections per listener from one client address (an IPv6 client
    /// is its /64); 0 for no limit.
    pub max_connections_per_ip: usize,
    /// Play requests allowed per client address (a token bucket), RTMP and HTTP together; past
    /// it a request is refused (`rate_limited`) before any authorization or lookup. `None`: no
    /// limit.
    pub play_rate_per_ip: Option<Rate>,
    /// When a viewer that keeps falling behind is disconnected.
    pub viewer_lag: LagPolicy,
    /// Relay pull settings (hub, linger, failover grace).
    pub pull: PullConfig,
    /// How long shutdown waits for viewers to be ended.
    pub drain_timeout: Duration,
    /// On shutdown, how long the edge reports not ready (refusing new viewers) before it ends
    /// the viewers still connected, so load balancers stop sending viewers here first.
    pub drain_delay: Duration,
    /// Bytes of recordings the on-demand cache keeps (blocks read from origins).
    pub vod_cache_bytes: u64,
}

impl EdgeConfig {
    /// What every client-facing listener of this node admits.
    pub fn accept_limits(&self) -> AcceptLimits {
        AcceptLimits {
            max_connections: self.max_connections,
            max_per_ip: self.max_connections_per_ip,
        }
    }
}

impl EdgeConfig {
    /// Checks the settings that do not need the network: what [`Edge::bind`] would refuse.
    pub fn validate(&self) -> Result<(), EdgeError> {
        ControlClient::check_urls(&self.control_url)?;
        if self.https_redirect && self.https_addr.is_none() {
            return Err(EdgeError::RedirectWithoutHttps);
        }
        if (self.rtmps_addr.is_some() || self.https_addr.is_some()) && self.tls.is_none() {
            return Err(EdgeError::TlsFilesMissing);
        }
        Ok(())
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        let session = SessionConfig::default();
        Self {
            rtmp_addr: SocketAddr::from(([0, 0, 0, 0], 1935)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            rtmps_addr: None,
            https_addr: None,
            tls: None,
            https_redirect: false,
            play_auth: PlayAuthConfig::default(),
            control_url: "http://127.0.0.1:50051".to_owned(),
            node_id: "edge".to_owned(),
            admin_addr: String::new(),
            session,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            viewer_send_buffer: 256 << 10,
            viewer_nodelay: false,
            max_connections: 20_000,
            max_connections_per_ip: 256,
            play_rate_per_ip: Some(Rate {
                count: 100,
                per: Duration::from_secs(10),
            }),
            viewer_lag: LagPolicy::default(),
            pull: PullConfig {
                hub: HubConfig {
                    coalesce_window: Duration::from_millis(10),
                    outputs: corriente_media::mux::Outputs::viewers(session.chunk_size),
                    ..HubConfig::default()
                },
                linger: Duration::from_secs(5),
                resolve_timeout: Duration::from_secs(5),
                upstream_grace: Duration::from_secs(10),
                upstream_stall: Duration::from_secs(4),
                hls: crate::hls::HlsConfig::default(),
                node_id: "edge".to_owned(),
                cluster_auth: ClusterAuth::open(),
            },
            drain_timeout: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            vod_cache_bytes: 256 << 20,
        }
    }
}

/// Why an edge could not run.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Control(#[from] ControlError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("--rtmps and --https need a certificate and key (--tls-cert, --tls-key)")]
    TlsFilesMissing,
    #[error("--https-redirect needs --https")]
    RedirectWithoutHttps,
}

/// What every connection of this edge shares.
pub(crate) struct EdgeContext {
    pub(crate) config: EdgeConfig,
    pub(crate) pulls: Arc<Pulls>,
    /// Play requests per client address, when limited.
    pub(crate) play_attempts: Option<RateLimiter>,
    /// Cancelled when the edge starts draining: new viewers are refused.
    pub(crate) draining: CancellationToken,
    /// Cancelled when viewers must be ended.
    pub(crate) shutdown: CancellationToken,
    rtmp_local: SocketAddr,
    http_local: SocketAddr,
    /// The HTTPS listener's address, for redirects.
    pub(crate) https_local: Option<SocketAddr>,
    started_at_ms: u64,
    health: Health,
    /// Bytes written to viewers at the last load report, and when: for the egress rate.
    egress: std::sync::Mutex<(u64, std::time::Instant)>,
    /// On-demand playback: the recordings cache.
    pub(crate) vod: vod::Vod,
    /// HLS viewers (sessions of requests).
    pub(crate) hls_sessions: hls::Sessions,
}

impl EdgeContext {
    /// Spends one play attempt of `ip`; `Err` says in how many seconds it may try again.
    pub(crate) fn take_play_attempt(&self, ip: std::net::IpAddr) -> Result<(), u64> {
        match &self.play_attempts {
            Some(attempts) => attempts
                .try_take(ip, tokio::time::Instant::now())
                .map_err(|wait| wait.as_secs() + 1),
            None => Ok(()),
        }
    }

    /// Bits per second written to viewers since the last call.
    fn egress_bps(&self) -> u64 {
        let out = &corriente_media::metrics::BYTES_OUT;
        let total = ["rtmp", "http_flv", "vod", "hls"]
            .iter()
            .map(|p| out.with_label_values(&[p]).get())
            .sum::<u64>();
        let mut last = self.egress.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = last.1.elapsed().as_secs_f64();
        let bps = if elapsed > 0.0 {
            (total.saturating_sub(last.0) as f64 * 8.0 / elapsed) as u64
        } else {
            0
        };
        *last = (total, std::time::Instant::now());
        bps
    }
}

impl Member for EdgeContext {
    fn node(&self) -> NodeRecord {
        let hubs = self.pulls.active();
        let hls = self.hls_sessions.per_stream();
        let viewers: Vec<_> = hubs
            .iter()
            .map(|hub| {
                let key = hub.key().clone();
                let n = hub.subscribers() as u32 + hls.get(&key).copied().unwrap_or(0);
                (key, n)
            })
            .collect();
        NodeRecord {
            id: self.config.node_id.clone(),
            role: NodeRole::Edge,
            relay_addr: String::new(),
            rtmp_addr: self.rtmp_local.to_string(),
            http_addr: self.http_local.to_string(),
            admin_addr: self.config.admin_addr.clone(),
            load: NodeLoad {
                streams: hubs.len() as u32,
                viewers: viewers.iter().map(|(_, v)| v).sum(),
                ingress_bps: hubs.iter().map(|h| h.media().bitrate_bps).sum(),
                egress_bps: self.egress_bps(),
            },
            viewers,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms: self.started_at_ms,
            ready: !self.health.is_draining(),
        }
    }
}

/// A bound, not yet serving, edge.
pub struct Edge {
    rtmp: TcpListener,
    http: TcpListener,
    /// The TLS listeners (RTMPS, HTTPS) and their certificate.
    tls: TlsListeners,
    ctx: Arc<EdgeContext>,
    control: ControlClient,
}

/// The TLS listeners of an edge, sharing one certificate.
struct TlsListeners {
    rtmps: Option<TcpListener>,
    https: Option<TcpListener>,
    cert: Option<Arc<ReloadingCert>>,
}

/// How often the TLS certificate files are checked for a change.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Binds a listener whose accepted sockets inherit `send_buffer` (when non-zero).
fn bind(what: &'static str, addr: SocketAddr, send_buffer: u32) -> Result<TcpListener, EdgeError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if send_buffer > 0 {
            socket.set_send_buffer_size(send_buffer)?;
        }
        socket.bind(addr)?;
        socket.listen(1024)
    };
    bind().map_err(|source| EdgeError::Bind { what, addr, source })
}

impl Edge {
    /// Binds the RTMP and HTTP ports.
    pub async fn bind(mut config: EdgeConfig) -> Result<Self, EdgeError> {
        metrics::init();
        config.validate()?;
        let control = ControlClient::with_auth(&config.control_url, &config.pull.cluster_auth)?;
        let rtmp = bind("RTMP playback", config.rtmp_addr, config.viewer_send_buffer)?;
        let http = bind("HTTP playback", config.http_addr, config.viewer_send_buffer)?;
        let tls = if config.rtmps_addr.is_none() && config.https_addr.is_none() {
            TlsListeners {
                rtmps: None,
                https: None,
                cert: None,
            }
        } else {
            let files = config.tls.clone().ok_or(EdgeError::TlsFilesMissing)?;
            let cert = ReloadingCert::load(files)?;
            let send_buffer = config.viewer_send_buffer;
            TlsListeners {
                rtmps: config
                    .rtmps_addr
                    .map(|addr| bind("RTMPS playback", addr, send_buffer))
                    .transpose()?,
                https: config
                    .https_addr
                    .map(|addr| bind("HTTPS playback", addr, send_buffer))
                    .transpose()?,
                cert: Some(cert),
            }
        };
        config.pull.node_id = config.node_id.clone();
        config.pull.hub.outputs.rtmp_chunk_size = config.session.chunk_size;
        let shutdown = CancellationToken::new();
        let pulls = Pulls::new(control.clone(), config.pull.clone(), shutdown.clone());
        let vod = vod::Vod::new(config.vod_cache_bytes);
        let ctx = Arc::new(EdgeContext {
            vod,
            hls_sessions: hls::Sessions::new(),
            rtmp_local: rtmp.local_addr().unwrap_or(config.rtmp_addr),
            http_local: http.local_addr().unwrap_or(config.http_addr),
            https_local: tls.https.as_ref().and_then(|l| l.local_addr().ok()),
            play_attempts: config.play_rate_per_ip.map(RateLimiter::new),
            config,
            pulls,
            draining: CancellationToken::new(),
            shutdown,
            started_at_ms: unix_micros() / 1000,
            health: Health::default(),
            egress: std::sync::Mutex::new((0, std::time::Instant::now())),
        });
        Ok(Self {
            rtmp,
            http,
            tls,
            ctx,
            control,
        })
    }

    pub fn rtmp_addr(&self) -> SocketAddr {
        self.ctx.rtmp_local
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.ctx.http_local
    }

    /// Readiness of this edge (control plane reachable, not draining).
    pub fn health(&self) -> Health {
        self.ctx.health.clone()
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.ctx.config.node_id
    }

    /// Admin routes: the streams pulled here and their viewers.
    pub fn admin_routes(&self) -> Router {
        let ctx = self.ctx.clone();
        Router::new().route(
            "/api/v1/edge/streams",
            get(move || async move { Json(edge_streams_json(&ctx)) }),
        )
    }

    /// Serves until `shutdown`, then drains: new viewers are refused, the node reports not
    /// ready, and the viewers still connected get a clean end within the drain deadline.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), EdgeError> {
        let Edge {
            rtmp,
            http,
            tls,
            ctx,
            control,
        } = self;
        info!(listener = "edge-rtmp", addr = %ctx.rtmp_local, "listening");
        info!(listener = "edge-http", addr = %ctx.http_local, "listening");
        let membership_stop = CancellationToken::new();
        tokio::spawn(follow_registry(
            control.clone(),
            ctx.pulls.clone(),
            membership_stop.clone(),
        ));
        tokio::spawn(run_membership(
            control,
            ctx.clone(),
            ctx.health.clone(),
            membership_stop.clone(),
        ));
        {
            // HLS sessions that stopped asking end (and leave the viewer count).
            let ctx = ctx.clone();
            let stop = membership_stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                loop {
                    tokio::select! {
                        _ = tick.tick() => ctx.hls_sessions.sweep(),
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }

        let tracker = TaskTracker::new();
        let rtmp_ctx = ctx.clone();
        let rtmp_loop = accept_loop(
            "edge-rtmp",
            rtmp,
            ctx.config.accept_limits(),
            shutdown.clone(),
            tracker.clone(),
            move |stream, peer| {
                rtmp::serve_viewer(rtmp_ctx.clone(), stream, peer, rtmp_ctx.shutdown.clone())
            },
        );
        let http_ctx = ctx.clone();
        let router = http::router(ctx.clone(), ctx.config.https_redirect);
        let http_loop = accept_loop(
            "edge-http",
            http,
            ctx.config.accept_limits(),
            shutdown.clone(),
            tracker.clone(),
            move |stream, peer| {
                http::serve_connection(
                    http_ctx.clone(),
                    router.clone(),
                    stream,
                    peer,
                    http_ctx.shutdown.clone(),
                )
            },
        );
        let tls_loops = serve_tls(&ctx, tls, &shutdown, &tracker);
        tokio::join!(rtmp_loop, http_loop, tls_loops);

        // Draining: not ready, refuse newcomers; give load balancers the drain delay to stop
        // sending viewers here while the ones connected keep watching; then end them.
        ctx.health.start_draining();
        ctx.draining.cancel();
        if !ctx.config.drain_delay.is_zero() {
            info!(delay = ?ctx.config.drain_delay, "draining: not ready, new viewers refused; ending viewers after the delay");
            tokio::time::sleep(ctx.config.drain_delay).await;
        }
        ctx.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(ctx.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(deadline = ?ctx.config.drain_timeout, "viewers did not end in time; stopping anyway");
        }
        membership_stop.cancel();
        info!("edge stopped");
        Ok(())
    }
}

/// The streams an edge serves and their viewers, for the stats endpoints.
pub(crate) fn edge_streams_json(ctx: &EdgeContext) -> serde_json::Value {
    let streams: Vec<serde_json::Value> = ctx
        .pulls
        .active()
        .into_iter()
        .map(|hub| {
            let stats = hub.stats();
            serde_json::json!({
                "key": stats.key.to_string(),
                "app": stats.key.app(),
                "name": stats.key.name(),
                "media": stats.media,
                "viewers": stats.subscribers,
                "frames_in": stats.frames_in,
                "bytes_in": stats.bytes_in,
                "retained_bytes": stats.retained_bytes,
                "gop_frames": stats.gop_frames,
            })
        })
        .collect();
    serde_json::json!({ "node": ctx.config.node_id, "streams": streams })
}

/// Accepts on the RTMPS and HTTPS listeners until `shutdown`, and reloads their certificate
/// when its files change.
async fn serve_tls(
    ctx: &Arc<EdgeContext>,
    tls: TlsListeners,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let Some(cert) = tls.cert else {
        return;
    };
    tokio::spawn(cert.clone().watch(TLS_RELOAD_EVERY, shutdown.child_token()));
    let rtmps = async {
        let Some(listener) = tls.rtmps else {
            return;
        };
        info!(listener = "edge-rtmps", addr = %listener.local_addr().unwrap_or(ctx.rtmp_local), "listening");
        let acceptor = corriente_core::tls::acceptor(cert.clone(), &[]);
        let conn_ctx = ctx.clone();
        accept_loop(
            "edge-rtmps",
            listener,
            ctx.config.accept_limits(),
            shutdown.clone(),
            tracker.clone(),
            move |stream, peer| {
                rtmp::serve_tls_viewer(
                    conn_ctx.clone(),
                    acceptor.clone(),
                    stream,
                    peer,
                    conn_ctx.shutdown.clone(),
                )
            },
        )
        .await;
    };
    let https = async {
        let Some(listener) = tls.https else {
            return;
        };
        info!(listener = "edge-https", addr = %listener.local_addr().unwrap_or(ctx.http_local), "listening");
        let acceptor = corriente_core::tls::acceptor(cert.clone(), &[b"h2", b"http/1.1"]);
        let router = http::router(ctx.clone(), false);
        let conn_ctx = ctx.clone();
        let admission = Admission::new("edge-https", ctx.config.accept_limits());
        accept_admitted(
            admission.clone(),
            listener,
            shutdown.clone(),
            tracker.clone(),
            move |stream, peer| {
                http::serve_tls_connection(
                    conn_ctx.clone(),
                    router.clone(),
                    acceptor.clone(),
                    admission.clone(),
                    stream,
                    peer,
                    conn_ctx.shutdown.clone(),
                )
            },
        )
        .await;
    };
    tokio::join!(rtmps, https);
}

/// Follows the registry's watch stream so a pull switches to a stream's new origin the moment
/// it is registered there, not when the old relay connection finally breaks.
///
/// Events lost while the watch was down (a control-plane restart, a replica failover, a Redis
/// pub/sub reconnect, `data_loss` when this edge fell behind) are made up for: on every
/// (re)connect, once the watch is open (so nothing after the listing is missed), the edge
/// re-lists the streams and corrects every pull that missed a move.
async fn follow_registry(control: ControlClient, pulls: Arc<Pulls>, stop: CancellationToken) {
    let mut connects = 0u64;
    loop {
        if let Ok(mut events) = control.watch().await {
            connects += 1;
            match control.list_streams().await {
                Ok(streams) => {
                    let mut moved = 0;
                    for record in &streams {
                        moved += usize::from(pulls.stream_moved(&record.key, record.epoch));
                    }
                    metrics::RESYNCS.inc();
                    if moved > 0 || connects > 1 {
                        info!(
                            streams = streams.len(),
                            moved, "resynced with the registry after (re)connecting its watch"
                        );
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot re-list the streams after (re)connecting the registry watch")
                }
            }
            loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    _ = stop.cancelled() => return,
                };
                match event {
                    Some(Ok(RegistryEvent::StreamUp(record))) => {
                        pulls.stream_moved(&record.key, record.epoch);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Binds and serves an edge until `shutdown`.
pub async fn run(config: EdgeConfig, shutdown: CancellationToken) -> Result<(), EdgeError> {
    Edge::bind(config).await?.serve(shutdown).await
}
