//! Command line: one binary, a subcommand per role (`all` when none is given). Every flag has
//! a `CORRIENTE_*` environment twin; deploy files and tests rely on these names.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use corriente_cluster::Webhook;
use corriente_cluster::auth::{ClusterAuth, ClusterTlsFiles};
use corriente_control_plane::{ControlPlaneConfig, PublishAuthConfig};
use corriente_core::access::{Cidr, IpRules};
use corriente_core::limits::Rate;
use corriente_core::secret::SecretFile;
use corriente_core::tls::TlsFiles;
use corriente_edge::{EdgeConfig, PlayAuthConfig, PullConfig};
use corriente_media::rtmp::SessionConfig;
use corriente_media::rtmp::chunk::ChunkLimits;
use corriente_media::{HubConfig, LagPolicy};
use corriente_origin::{ForwardSpec, OriginConfig};

#[derive(Debug, Parser)]
#[command(
    name = "corriente",
    version,
    about = "Horizontally scalable live streaming: RTMP ingest, gRPC relay, RTMP and HTTP-FLV fan-out",
    long_about = "Horizontally scalable live streaming.\n\nWith no subcommand, runs `all`: control plane, origin and edge in one process on loopback, with an in-memory registry.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of `all`, accepted without the subcommand too.
    #[command(flatten)]
    pub all: AllArgs,
}

// Parsed once at start-up and matched once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Control plane, origin and edge in one process (binds loopback by default).
    All(AllArgs),
    /// Accepts RTMP publishers and serves the relay to edges.
    Origin(OriginArgs),
    /// Serves viewers over RTMP and HTTP-FLV, pulling streams from origins.
    Edge(EdgeArgs),
    /// Stream ownership, leases and node membership over gRPC.
    ControlPlane(ControlArgs),
    /// Asks a node's admin port whether it is alive (or ready) and exits 0 or 1: the container
    /// health check, with no shell or curl in the image.
    Healthcheck(HealthcheckArgs),
}

/// `corriente healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The node's admin address (the same variable the node reads; a wildcard address is
    /// asked on loopback).
    #[arg(
        long,
        env = "CORRIENTE_ADMIN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub admin: SocketAddr,

    /// Check /readyz instead of /healthz.
    #[arg(long)]
    pub ready: bool,

    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options every role has.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Admin HTTP address: /metrics, /healthz, /readyz and the stats API.
    #[arg(long, env = "CORRIENTE_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// Log format. Levels come from RUST_LOG (default: info).
    #[arg(long, env = "CORRIENTE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// This node's id in the cluster (default: HOSTNAME-ROLE-PID).
    #[arg(long, env = "CORRIENTE_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// How long shutdown waits for connections to end before it stops anyway.
    #[arg(long, env = "CORRIENTE_DRAIN_TIMEOUT", value_name = "DURATION", default_value = shown(Dur(OriginConfig::default().drain_timeout)), value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// File holding the admin token (one per line while rotating; re-read when it changes).
    /// Admin actions (publish keys, anything but reading) then need
    /// `Authorization: Bearer TOKEN`. Without it they are accepted from loopback clients only.
    /// /metrics, /healthz, /readyz, the dashboard and the stats stay readable either way.
    #[arg(long, env = "CORRIENTE_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// File holding the cluster token (one per line: the first is presented, any is
    /// accepted, for rotation). Every node of a cluster has the same file; control-plane and
    /// relay calls without a known token are refused. Re-read when it changes.
    #[arg(long, env = "CORRIENTE_CLUSTER_TOKEN_FILE", value_name = "PATH")]
    pub cluster_token_file: Option<std::path::PathBuf>,

    /// PEM certificate of the cluster CA: with --cluster-cert and --cluster-key, the control
    /// plane and relay APIs run over mutual TLS (callers need a certificate signed by it).
    #[arg(long, env = "CORRIENTE_CLUSTER_CA", value_name = "PATH")]
    pub cluster_ca: Option<std::path::PathBuf>,

    /// PEM certificate of this node, signed by --cluster-ca, naming --cluster-server-name.
    #[arg(long, env = "CORRIENTE_CLUSTER_CERT", value_name = "PATH")]
    pub cluster_cert: Option<std::path::PathBuf>,

    /// PEM private key of --cluster-cert.
    #[arg(long, env = "CORRIENTE_CLUSTER_KEY", value_name = "PATH")]
    pub cluster_key: Option<std::path::PathBuf>,

    /// The DNS name every node's cluster certificate carries; callers check it whatever
    /// address they dial (pod IPs change).
    #[arg(
        long,
        env = "CORRIENTE_CLUSTER_SERVER_NAME",
        value_name = "NAME",
        default_value = "corriente"
    )]
    pub cluster_server_name: String,

    /// Run without cluster credentials although the control, relay or admin port listens
    /// beyond loopback: anyone who reaches those ports can register streams, pull relays and
    /// act on the cluster. Said in the log and in /readyz.
    #[arg(long, env = "CORRIENTE_INSECURE")]
    pub insecure: bool,

    /// Parse and validate the configuration, print it, and exit without starting.
    #[arg(long)]
    pub check_config: bool,
}

impl CommonArgs {
    /// The cluster credentials, after the protected-mode check: a role whose internal ports
    /// (`internal`: control gRPC, relay, admin) listen beyond loopback needs a cluster token,
    /// unless `--insecure` says the operator wants an open cluster.
    pub fn cluster_auth(&self, internal: &[(&str, SocketAddr)]) -> Result<ClusterAuth, String> {
        let mut auth = match &self.cluster_token_file {
            Some(path) => {
                ClusterAuth::from_file(path).map_err(|e| format!("--cluster-token-file: {e}"))?
            }
            None => ClusterAuth::open(),
        };
        match (&self.cluster_ca, &self.cluster_cert, &self.cluster_key) {
            (Some(ca), Some(cert), Some(key)) => {
                auth = auth
                    .with_tls(&ClusterTlsFiles {
                        ca: ca.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                        server_name: self.cluster_server_name.clone(),
                    })
                    .map_err(|e| e.to_string())?;
            }
            (None, None, None) => {}
            _ => {
                return Err(
                    "cluster TLS needs all three of --cluster-ca, --cluster-cert and --cluster-key"
                        .to_owned(),
                );
            }
        }
        if auth.is_enabled() {
            return Ok(auth);
        }
        let exposed: Vec<String> = internal
            .iter()
            .filter(|(_, addr)| !addr.ip().is_loopback())
            .map(|(what, addr)| format!("{what} on {addr}"))
            .collect();
        if !exposed.is_empty() && !self.insecure {
            return Err(format!(
                "refusing to start without cluster credentials: {} listen(s) beyond loopback, \
                 where anyone could register streams or pull relays. Give every node the same \
                 --cluster-token-file (CORRIENTE_CLUSTER_TOKEN_FILE) or cluster certificates \
                 (--cluster-ca, --cluster-cert, --cluster-key), or run an open cluster \
                 knowingly with --insecure",
                exposed.join(", ")
            ));
        }
        Ok(ClusterAuth::open())
    }

    /// The admin address of a role: every interface, port 9090, unless told otherwise.
    pub fn role_admin(&self) -> SocketAddr {
        self.admin
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9090)))
    }

    /// Whether this node runs exposed without credentials (`--insecure` and no token).
    pub fn is_insecure(&self) -> bool {
        self.insecure && self.cluster_token_file.is_none() && self.cluster_cert.is_none()
    }

    /// The admin token file, read once now so a mistake shows at start-up.
    pub fn admin_tokens(&self) -> Result<Option<SecretFile>, String> {
        self.admin_token_file
            .as_ref()
            .map(|path| SecretFile::open(path).map_err(|e| format!("--admin-token-file: {e}")))
            .transpose()
    }
}

/// Whether publishing needs a credential (`--publish-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishAuthMode {
    /// Anyone who reaches an origin may publish (the origins' IP rules still apply).
    Off,
    /// A managed key, a signed token or the webhook's approval is needed.
    On,
}

/// Publish authorization, decided by the control plane (control plane and `all`).
#[derive(Debug, Clone, Args)]
pub struct PublishAuthArgs {
    /// Whether publishing needs a credential. Default: on when --publish-secret-file or
    /// --on-publish is given, off otherwise. With it on, a publish needs, in this order, a
    /// managed key (POST /api/v1/keys), a signed token, or the webhook's 2xx.
    #[arg(long, env = "CORRIENTE_PUBLISH_AUTH", value_enum, value_name = "MODE")]
    pub publish_auth: Option<PublishAuthMode>,

    /// File of HMAC secrets for signed publish tokens (NAME?token=EXPIRES.HEXSIG), one per
    /// line: several while rotating. Re-read when it changes.
    #[arg(long, env = "CORRIENTE_PUBLISH_SECRET_FILE", value_name = "PATH")]
    pub publish_secret_file: Option<std::path::PathBuf>,

    /// on_publish webhook: http:// URL POSTed a JSON description of each publish that no
    /// managed key or signed token decided; 2xx allows, anything else refuses.
    #[arg(long, env = "CORRIENTE_ON_PUBLISH", value_name = "URL")]
    pub on_publish: Option<String>,

    /// How long the webhook may take before the publish is refused (at most 4s).
    #[arg(long, env = "CORRIENTE_ON_PUBLISH_TIMEOUT", value_name = "DURATION", default_value = shown(Dur(Webhook::DEFAULT_TIMEOUT)), value_parser = parse_duration)]
    pub on_publish_timeout: Duration,
}

impl PublishAuthArgs {
    pub fn config(&self) -> Result<PublishAuthConfig, String> {
        let configured = self.publish_secret_file.is_some() || self.on_publish.is_some();
        if self.publish_auth == Some(PublishAuthMode::Off) && configured {
            return Err(
                "--publish-auth off contradicts --publish-secret-file or --on-publish".to_owned(),
            );
        }
        let secrets = match &self.publish_secret_file {
            Some(path) => Some(std::sync::Arc::new(
                SecretFile::open(path).map_err(|e| format!("--publish-secret-file: {e}"))?,
            )),
            None => None,
        };
        let webhook = match &self.on_publish {
            Some(url) => Some(
                Webhook::new(url, self.on_publish_timeout)
                    .map_err(|e| format!("--on-publish (--on-publish-timeout): {e}"))?,
            ),
            None => None,
        };
        Ok(PublishAuthConfig {
            required: self.publish_auth == Some(PublishAuthMode::On) || configured,
            secrets,
            webhook,
        })
    }
}

/// Playback authorization at the edge (edge and `all`).
#[derive(Debug, Clone, Args)]
pub struct PlayAuthArgs {
    /// File of HMAC secrets that sign playback URLs (`?token=EXPIRES.HEXSIG`), one per line:
    /// several while rotating. Re-read when it changes. With it, streams of --play-token-apps
    /// (default: every application) play only with a valid, unexpired token.
    #[arg(long, env = "CORRIENTE_PLAY_SECRET_FILE", value_name = "PATH")]
    pub play_secret_file: Option<std::path::PathBuf>,

    /// Applications whose streams need a signed URL (comma-separated). Default: all of them.
    #[arg(
        long,
        env = "CORRIENTE_PLAY_TOKEN_APPS",
        value_name = "APP,...",
        value_delimiter = ',',
        requires = "play_secret_file"
    )]
    pub play_token_apps: Vec<String>,

    /// on_play webhook: http:// URL POSTed a JSON description of each viewer (action, app,
    /// name, stream, client_ip, query, protocol, node); 2xx allows, anything else refuses.
    #[arg(long, env = "CORRIENTE_ON_PLAY", value_name = "URL")]
    pub on_play: Option<String>,

    /// How long the on_play webhook may take before the viewer is refused (at most 4s).
    #[arg(long, env = "CORRIENTE_ON_PLAY_TIMEOUT", value_name = "DURATION", default_value = shown(Dur(Webhook::DEFAULT_TIMEOUT)), value_parser = parse_duration)]
    pub on_play_timeout: Duration,

    /// Networks allowed to watch (comma-separated CIDRs or addresses). Default: everyone.
    #[arg(
        long,
        env = "CORRIENTE_PLAY_ALLOW",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub play_allow: Vec<Cidr>,

    /// Networks refused playback, even when an allow rule matches.
    #[arg(
        long,
        env = "CORRIENTE_PLAY_DENY",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub play_deny: Vec<Cidr>,
}

impl PlayAuthArgs {
    pub fn config(&self) -> Result<PlayAuthConfig, String> {
        for app in &self.play_token_apps {
            corriente_media::StreamKey::new(app, "x")
                .map_err(|e| format!("--play-token-apps {app:?}: {e}"))?;
        }
        Ok(PlayAuthConfig {
            ip_rules: IpRules {
                allow: self.play_allow.clone(),
                deny: self.play_deny.clone(),
            },
            secrets: match &self.play_secret_file {
                Some(path) => Some(std::sync::Arc::new(
                    SecretFile::open(path).map_err(|e| format!("--play-secret-file: {e}"))?,
                )),
                None => None,
            },
            token_apps: self.play_token_apps.clone(),
            webhook: match &self.on_play {
                Some(url) => Some(
                    Webhook::new(url, self.on_play_timeout)
                        .map_err(|e| format!("--on-play (--on-play-timeout): {e}"))?,
                ),
                None => None,
            },
        })
    }
}

/// RTMP protocol settings (origin and edge).
#[derive(Debug, Clone, Args)]
pub struct RtmpArgs {
    /// Chunk size Corriente sends with.
    #[arg(long, env = "CORRIENTE_CHUNK_SIZE", value_name = "BYTES", default_value_t = SessionConfig::default().chunk_size, value_parser = clap::value_parser!(u32).range(128..=65536))]
    pub chunk_size: u32,

    /// Largest RTMP message accepted from a peer.
    #[arg(long, env = "CORRIENTE_MAX_MESSAGE_SIZE", value_name = "BYTES", default_value_t = ChunkLimits::default().max_message_size, value_parser = clap::value_parser!(u32).range(4096..=16_777_215))]
    pub max_message_size: u32,

    /// Deadline for the RTMP handshake (and for the play request, and HTTP request headers).
    #[arg(long, env = "CORRIENTE_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = shown(Dur(EdgeConfig::default().handshake_timeout)), value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Most simultaneous connections per listener.
    #[arg(
        long,
        env = "CORRIENTE_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = EdgeConfig::default().max_connections
    )]
    pub max_connections: usize,

    /// Most simultaneous connections per listener from one client address (an IPv6 client is
    /// its /64); more are closed at once. 0: no limit. Viewers behind one NAT, CGNAT or proxy
    /// share an address: raise it for large audiences behind carrier NAT, and set 0 when
    /// every client arrives from a proxy's address (Swarm's routing mesh, an L4 proxy without
    /// the client's address).
    #[arg(
        long,
        env = "CORRIENTE_MAX_CONNECTIONS_PER_IP",
        value_name = "N",
        default_value_t = EdgeConfig::default().max_connections_per_ip
    )]
    pub max_connections_per_ip: usize,

    /// Largest chunk size a peer may set (SetChunkSize); above it the connection is closed.
    /// Sizes over 16777215 are legal RTMP but mean nothing more, since no message is larger.
    #[arg(long, env = "CORRIENTE_MAX_CHUNK_SIZE", value_name = "BYTES", default_value_t = ChunkLimits::default().max_chunk_size, value_parser = clap::value_parser!(u32).range(128..=2_147_483_647))]
    pub max_chunk_size: u32,
}

impl RtmpArgs {
    fn session(&self) -> SessionConfig {
        SessionConfig {
            chunk_size: self.chunk_size,
            limits: ChunkLimits {
                max_chunk_size: self.max_chunk_size,
                max_message_size: self.max_message_size,
                max_buffered: 2 * self.max_message_size as usize,
                ..ChunkLimits::default()
            },
            ..SessionConfig::default()
        }
    }
}

/// The certificate of the TLS listeners (RTMPS, HTTPS).
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) of the TLS listeners, e.g. Let's Encrypt's
    /// fullchain.pem. Checked every 2 s and reloaded when it changes: new connections get the
    /// new certificate, established ones keep theirs.
    #[arg(
        long,
        env = "CORRIENTE_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1), e.g. privkey.pem.
    #[arg(
        long,
        env = "CORRIENTE_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The files, when given; an error when a TLS listener needs them and they are missing.
    fn files(&self, needed_by: &[(&str, bool)]) -> Result<Option<TlsFiles>, String> {
        let files = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let listeners: Vec<&str> = needed_by
            .iter()
            .filter(|(_, on)| *on)
            .map(|(flag, _)| *flag)
            .collect();
        match (&files, listeners.is_empty()) {
            (None, false) => Err(format!(
                "{} needs a certificate: give --tls-cert and --tls-key",
                listeners.join(" and ")
            )),
            (Some(_), true) => Err(
                "--tls-cert and --tls-key are given but no TLS listener is (--rtmps, --https)"
                    .to_owned(),
            ),
            _ => Ok(files),
        }
    }
}

/// Origin tuning.
#[derive(Debug, Clone, Args)]
pub struct OriginTuning {
    /// A publisher silent this long is disconnected.
    #[arg(long, env = "CORRIENTE_PUBLISH_IDLE_TIMEOUT", value_name = "DURATION", default_value = shown(Dur(OriginConfig::default().idle_timeout)), value_parser = parse_duration)]
    pub publish_idle_timeout: Duration,

    /// Networks allowed to publish (comma-separated CIDRs or addresses); others are refused
    /// when they connect (reason `ip_denied`). Default: everyone.
    #[arg(
        long,
        env = "CORRIENTE_PUBLISH_ALLOW",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub publish_allow: Vec<Cidr>,

    /// Networks refused publishing (comma-separated CIDRs or addresses), even when an allow
    /// rule matches.
    #[arg(
        long,
        env = "CORRIENTE_PUBLISH_DENY",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub publish_deny: Vec<Cidr>,

    /// Publish attempts allowed per client address: N/DURATION (e.g. 30/1m), a bucket of N
    /// attempts refilled over DURATION. Past it a publish is refused (reason `rate_limited`)
    /// before any authorization or registry work. 0: no limit.
    #[arg(long, env = "CORRIENTE_PUBLISH_RATE_PER_IP", value_name = "N/DURATION", default_value = shown(RateLimit(OriginConfig::default().publish_rate_per_ip)), value_parser = parse_rate)]
    pub publish_rate_per_ip: RateLimit,

    /// Highest ingest bitrate of a publisher connection, averaged over 5 s (bursts such as
    /// keyframes pass): bits per second with an optional k, M or G suffix. A publisher over it
    /// is disconnected and counted (reason `bitrate_exceeded`). 0: no cap.
    #[arg(long, env = "CORRIENTE_MAX_PUBLISH_BITRATE", value_name = "BITS/S", default_value = shown(Bitrate(OriginConfig::default().max_publish_bitrate)), value_parser = parse_bitrate)]
    pub max_publish_bitrate: u64,

    /// Restreaming: forward every stream of application APP (`*`: every application) to
    /// URL, `rtmp://HOST[:PORT]/APP/STREAM-KEY` or `rtmps://…`; `{name}` and `{app}` in URL
    /// stand for the stream's. Repeat the flag (or separate with spaces in the variable) for
    /// several destinations. The origin owning the stream forwards it, reconnecting with
    /// backoff; a slow or dead destination never holds the live stream back.
    #[arg(long = "forward", env = "CORRIENTE_FORWARD", hide_env_values = true, value_name = "APP=URL", value_parser = parse_forwards)]
    pub forwards: Vec<Forwards>,

    /// PEM file of certificate authorities trusted for `rtmps://` forward destinations, besides
    /// the web's public roots.
    #[arg(long, env = "CORRIENTE_FORWARD_CA_FILE", value_name = "PATH")]
    pub forward_ca_file: Option<std::path::PathBuf>,

    /// HLS segment target: a segment starts at the first keyframe this long after the last
    /// one started (at every keyframe when they are further apart). The origin marks segments
    /// once, so every edge serves the same ones. At least 1s.
    #[arg(long, env = "CORRIENTE_HLS_SEGMENT", value_name = "DURATION", default_value = shown(Dur(OriginConfig::default().hls_segment)), value_parser = parse_duration)]
    pub hls_segment: Duration,

    /// Recording: write every publication of the recorded applications as a fragmented MP4
    /// file under this directory (DIR/APP/NAME/START-EEPOCH.mp4), while it is live. Default:
    /// nothing is recorded.
    #[arg(long, env = "CORRIENTE_RECORD_DIR", value_name = "PATH", value_parser = parse_path_or_empty)]
    pub record_dir: Option<std::path::PathBuf>,

    /// Applications whose streams are recorded when --record-dir is set (comma-separated; `*`:
    /// all).
    #[arg(long, env = "CORRIENTE_RECORD_APPS", value_name = "APP,...", value_delimiter = ',', default_value = shown(OriginConfig::default().record_apps.join(",")))]
    pub record_apps: Vec<String>,

    /// Free space the recording disk must keep (bytes, with an optional K, M or G suffix, powers
    /// of 1024): below it a recording stops (logged and counted); the live stream goes on.
    #[arg(long, env = "CORRIENTE_RECORD_MIN_FREE", value_name = "BYTES", default_value = shown(Bytes(OriginConfig::default().record_min_free)), value_parser = parse_bytes)]
    pub record_min_free: u64,

    /// Retention: finished recordings older than this are deleted (checked every minute and
    /// whenever a recording ends). Default: kept.
    #[arg(long, env = "CORRIENTE_RECORD_MAX_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub record_max_age: Option<Duration>,

    /// Retention: finished recordings are deleted, oldest first, while together they take more
    /// than this on this origin (K, M, G: powers of 1024). Default: no limit.
    #[arg(long, env = "CORRIENTE_RECORD_MAX_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub record_max_bytes: Option<u64>,
}

/// A path, where an empty value (an unset compose variable) stands for none.
fn parse_path_or_empty(s: &str) -> Result<std::path::PathBuf, String> {
    Ok(std::path::PathBuf::from(s))
}

/// Parses a size in bytes: `1048576`, `512K`, `100M`, `1G` (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes (examples: 512M, 1G, 0)"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// A size as `--help` shows it.
struct Bytes(u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => f.write_str("0"),
            b if b.is_multiple_of(1 << 30) => write!(f, "{}G", b >> 30),
            b if b.is_multiple_of(1 << 20) => write!(f, "{}M", b >> 20),
            b if b.is_multiple_of(1 << 10) => write!(f, "{}K", b >> 10),
            b => write!(f, "{b}"),
        }
    }
}

/// One `--forward` value: `APP=URL`, or several separated by spaces (the environment's form);
/// empty for none. Checked by the origin's validation, whose messages never repeat a URL
/// (clap's would: it quotes the value).
#[derive(Debug, Clone)]
pub struct Forwards(Vec<ForwardSpec>);

fn parse_forwards(s: &str) -> Result<Forwards, String> {
    Ok(Forwards(
        s.split_whitespace()
            .map(|spec| ForwardSpec(spec.to_owned()))
            .collect(),
    ))
}

/// Edge tuning.
#[derive(Debug, Clone, Args)]
pub struct EdgeTuning {
    /// Coalescing window: the longest a frame waits for others to go to viewers with it. A
    /// frame is held only while another one is due within it (each track's next frame is
    /// expected a frame duration after its last), so most go out at once. The dial between
    /// latency and viewers per core: 10ms is low-latency mode, 100ms throughput mode, 0 writes
    /// every frame on its own.
    #[arg(long, env = "CORRIENTE_COALESCE_WINDOW", value_name = "DURATION", default_value = shown(Dur(EdgeConfig::default().pull.hub.coalesce_window)), value_parser = parse_duration)]
    pub coalesce_window: Duration,

    /// A coalesced batch is written early once it holds this many bytes.
    #[arg(long, env = "CORRIENTE_COALESCE_MAX_BYTES", value_name = "BYTES", default_value_t = EdgeConfig::default().pull.hub.coalesce_max_bytes)]
    pub coalesce_max_bytes: usize,

    /// A viewer whose socket takes nothing for this long is disconnected.
    #[arg(long, env = "CORRIENTE_VIEWER_WRITE_TIMEOUT", value_name = "DURATION", default_value = shown(Dur(EdgeConfig::default().write_timeout)), value_parser = parse_duration)]
    pub viewer_write_timeout: Duration,

    /// Play requests allowed per client address, RTMP and HTTP together: N/DURATION (e.g.
    /// 100/10s), a bucket of N requests refilled over DURATION. Past it a request is refused
    /// (reason `rate_limited`, HTTP 429 with `Retry-After`) before any authorization or lookup.
    /// 0: no limit.
    #[arg(long, env = "CORRIENTE_PLAY_RATE_PER_IP", value_name = "N/DURATION", default_value = shown(RateLimit(EdgeConfig::default().play_rate_per_ip)), value_parser = parse_rate)]
    pub play_rate_per_ip: RateLimit,

    /// Kernel send buffer per viewer socket (0: kernel default). Bounds how far behind live a
    /// slow viewer can queue before it meets backpressure and skips to a keyframe.
    #[arg(long, env = "CORRIENTE_VIEWER_SEND_BUFFER", value_name = "BYTES", default_value_t = EdgeConfig::default().viewer_send_buffer)]
    pub viewer_send_buffer: u32,

    /// Write to playing viewers with TCP_NODELAY, each coalesced batch a segment of its own.
    /// Without it, Nagle's algorithm sends a batch at once when the viewer has acknowledged the last
    /// one and merges it with the next while it has not, so viewers that read in bursts cost
    /// one segment per burst.
    #[arg(long, env = "CORRIENTE_VIEWER_NODELAY")]
    pub viewer_nodelay: bool,

    /// Keyframe skips a lagging viewer may need within a minute before it is disconnected.
    #[arg(
        long,
        env = "CORRIENTE_VIEWER_MAX_SKIPS",
        value_name = "N",
        default_value_t = LagPolicy::default().max_skips
    )]
    pub viewer_max_skips: u32,

    /// How long a relay pull stays up after its last viewer left.
    #[arg(long, env = "CORRIENTE_PULL_LINGER", value_name = "DURATION", default_value = shown(Dur(EdgeConfig::default().pull.linger)), value_parser = parse_duration)]
    pub pull_linger: Duration,

    /// On SIGTERM, how long the edge stays up reporting not ready (new viewers refused) before
    /// it ends the viewers still connected: time for load balancers to stop sending viewers.
    #[arg(long, env = "CORRIENTE_DRAIN_DELAY", value_name = "DURATION", default_value = shown(Dur(EdgeConfig::default().drain_delay)), value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// After losing a stream's origin, how long viewers are kept while the stream is looked for
    /// elsewhere, before they get a clean end.
    #[arg(long, env = "CORRIENTE_UPSTREAM_GRACE", value_name = "DURATION", default_value = shown(Dur(EdgeConfig::default().pull.upstream_grace)), value_parser = parse_duration)]
    pub upstream_grace: Duration,

    /// Bytes of recordings the edge keeps in memory for on-demand playback (`/vod/...`, read
    /// from origins in 1 MiB blocks; least recently used out first).
    #[arg(long, env = "CORRIENTE_VOD_CACHE_SIZE", value_name = "BYTES", default_value = shown(Bytes(EdgeConfig::default().vod_cache_bytes)), value_parser = parse_bytes)]
    pub vod_cache_size: u64,
}

/// `corriente all`.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// Origin RTMP ingest address.
    #[arg(
        long,
        env = "CORRIENTE_ORIGIN_RTMP",
        value_name = "ADDR",
        default_value = "127.0.0.1:1935"
    )]
    pub origin_rtmp: SocketAddr,

    /// Origin relay (gRPC) address.
    #[arg(
        long,
        env = "CORRIENTE_ORIGIN_RELAY",
        value_name = "ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub origin_relay: SocketAddr,

    /// Edge RTMP playback address.
    #[arg(
        long,
        env = "CORRIENTE_EDGE_RTMP",
        value_name = "ADDR",
        default_value = "127.0.0.1:1936"
    )]
    pub edge_rtmp: SocketAddr,

    /// Edge HTTP playback address.
    #[arg(
        long,
        env = "CORRIENTE_EDGE_HTTP",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub edge_http: SocketAddr,

    /// Origin RTMPS ingest address; off unless given. Needs --tls-cert and --tls-key.
    #[arg(long, env = "CORRIENTE_ORIGIN_RTMPS", value_name = "ADDR")]
    pub origin_rtmps: Option<SocketAddr>,

    /// Edge RTMPS playback address; off unless given. Needs --tls-cert and --tls-key.
    #[arg(long, env = "CORRIENTE_EDGE_RTMPS", value_name = "ADDR")]
    pub edge_rtmps: Option<SocketAddr>,

    /// Edge HTTPS playback address; off unless given. Needs --tls-cert and --tls-key.
    #[arg(long, env = "CORRIENTE_EDGE_HTTPS", value_name = "ADDR")]
    pub edge_https: Option<SocketAddr>,

    /// Redirect plain-HTTP page requests (308) to --edge-https.
    #[arg(long, env = "CORRIENTE_HTTPS_REDIRECT", requires = "edge_https")]
    pub https_redirect: bool,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub play_auth: PlayAuthArgs,

    /// Control plane gRPC address.
    #[arg(
        long,
        env = "CORRIENTE_CONTROL_GRPC",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub control_grpc: SocketAddr,

    /// Lease duration of streams and nodes.
    #[arg(long, env = "CORRIENTE_LEASE_TTL", value_name = "DURATION", default_value = shown(Dur(ControlPlaneConfig::default().lease_ttl)), value_parser = parse_duration)]
    pub lease_ttl: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rtmp: RtmpArgs,
    #[command(flatten)]
    pub origin: OriginTuning,
    #[command(flatten)]
    pub edge: EdgeTuning,
    #[command(flatten)]
    pub publish_auth: PublishAuthArgs,
}

/// `corriente origin`.
#[derive(Debug, Clone, Args)]
pub struct OriginArgs {
    /// RTMP ingest address.
    #[arg(
        long,
        env = "CORRIENTE_RTMP",
        value_name = "ADDR",
        default_value = shown(OriginConfig::default().rtmp_addr)
    )]
    pub rtmp: SocketAddr,

    /// RTMPS (RTMP over TLS) ingest address, e.g. 0.0.0.0:443; off unless given. Needs
    /// --tls-cert and --tls-key.
    #[arg(long, env = "CORRIENTE_RTMPS", value_name = "ADDR")]
    pub rtmps: Option<SocketAddr>,

    /// Relay (gRPC) address edges pull from.
    #[arg(
        long,
        env = "CORRIENTE_RELAY",
        value_name = "ADDR",
        default_value = shown(OriginConfig::default().relay_addr)
    )]
    pub relay: SocketAddr,

    /// Relay address to register for edges to dial (HOST:PORT), when it differs from the bind
    /// address (containers, NAT). Default: this host's address towards the control plane.
    #[arg(long, env = "CORRIENTE_ADVERTISE_RELAY", value_name = "HOST:PORT")]
    pub advertise_relay: Option<String>,

    /// Control plane URL; several, comma-separated, for several replicas.
    #[arg(
        long,
        env = "CORRIENTE_CONTROL",
        value_name = "URL",
        default_value = shown(OriginConfig::default().control_url)
    )]
    pub control: String,

    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rtmp_tuning: RtmpArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub tuning: OriginTuning,
}

/// `corriente edge`.
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// RTMP playback address.
    #[arg(
        long,
        env = "CORRIENTE_RTMP",
        value_name = "ADDR",
        default_value = shown(EdgeConfig::default().rtmp_addr)
    )]
    pub rtmp: SocketAddr,

    /// HTTP playback address (HTTP-FLV).
    #[arg(
        long,
        env = "CORRIENTE_HTTP",
        value_name = "ADDR",
        default_value = shown(EdgeConfig::default().http_addr)
    )]
    pub http: SocketAddr,

    /// RTMPS playback address, e.g. 0.0.0.0:443; off unless given. Needs --tls-cert and
    /// --tls-key.
    #[arg(long, env = "CORRIENTE_RTMPS", value_name = "ADDR")]
    pub rtmps: Option<SocketAddr>,

    /// HTTPS playback address (HTTP-FLV, the player page; HTTP/2 when the client offers it),
    /// e.g. 0.0.0.0:443; off unless given. Needs --tls-cert and --tls-key.
    #[arg(long, env = "CORRIENTE_HTTPS", value_name = "ADDR")]
    pub https: Option<SocketAddr>,

    /// Redirect plain-HTTP page requests (308) to the --https listener; streams (.flv) are
    /// still served over HTTP.
    #[arg(long, env = "CORRIENTE_HTTPS_REDIRECT", requires = "https")]
    pub https_redirect: bool,

    /// Control plane URL; several, comma-separated, for several replicas.
    #[arg(
        long,
        env = "CORRIENTE_CONTROL",
        value_name = "URL",
        default_value = shown(EdgeConfig::default().control_url)
    )]
    pub control: String,

    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rtmp_tuning: RtmpArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub play_auth: PlayAuthArgs,
    #[command(flatten)]
    pub tuning: EdgeTuning,
}

/// `corriente control-plane`.
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// gRPC address.
    #[arg(
        long,
        env = "CORRIENTE_GRPC",
        value_name = "ADDR",
        default_value = shown(ControlPlaneConfig::default().grpc_addr)
    )]
    pub grpc: SocketAddr,

    /// Lease duration of streams and nodes: a dead origin's streams are free again at most
    /// this long after its last heartbeat.
    #[arg(long, env = "CORRIENTE_LEASE_TTL", value_name = "DURATION", default_value = shown(Dur(ControlPlaneConfig::default().lease_ttl)), value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// Redis holding the registry, shared by every control-plane replica:
    /// redis://[:PASSWORD@]HOST:PORT[/DB], rediss:// for TLS, unix:///PATH, or
    /// redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB] to follow the primary
    /// Redis Sentinel names (rediss+sentinel:// for TLS; ?sentinel_password=... when the
    /// sentinels have a password of their own). Without it the registry lives in this process
    /// (a single replica).
    #[arg(long, env = "CORRIENTE_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// Redis replicas that must acknowledge a stream claim (WAIT) before it is granted, so a
    /// failover cannot lose it: default 1 with Sentinel, 0 with one Redis server.
    #[arg(long, env = "CORRIENTE_REDIS_CLAIM_REPLICAS", value_name = "N")]
    pub redis_claim_replicas: Option<u32>,

    /// File holding the Redis password (a Kubernetes or Swarm secret), added to --redis.
    #[arg(long, env = "CORRIENTE_REDIS_PASSWORD_FILE", value_name = "PATH")]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// PEM file of the certificate authority that signed Redis's TLS certificate (rediss://),
    /// when it is not one the system trusts.
    #[arg(long, env = "CORRIENTE_REDIS_CA_FILE", value_name = "PATH")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Prefix of every Redis key, so several clusters can share one Redis.
    #[arg(
        long,
        env = "CORRIENTE_REDIS_PREFIX",
        value_name = "PREFIX",
        default_value = shown(ControlPlaneConfig::default().redis_prefix)
    )]
    pub redis_prefix: String,

    #[command(flatten)]
    pub publish_auth: PublishAuthArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// Parses `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 250ms, 10s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A rate limit flag's value: `None` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(pub Option<Rate>);

/// Parses `N/DURATION` (`30/1m`, `5/10s`; `30/m` is `30/1m`), or `0` for no limit.
pub fn parse_rate(s: &str) -> Result<RateLimit, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(RateLimit(None));
    }
    let (count, per) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a rate like 30/1m (or 0 for no limit)"))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {count:?} is not a count"))?;
    let per = per.trim();
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(per)?
    } else {
        parse_duration(&format!("1{per}"))?
    };
    if count == 0 || per.is_zero() {
        return Ok(RateLimit(None));
    }
    Ok(RateLimit(Some(Rate { count, per })))
}

/// Parses a bitrate in bits per second: `2500000`, `2500k`, `100M`, `1G`; `0` for none.
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, scale) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'M')) => (&s[..i], 1e6),
        Some((i, 'G' | 'g')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a bitrate (examples: 2500k, 100M, 0)"))?;
    let bits = value * scale;
    if !bits.is_finite() || !(0.0..=1e12).contains(&bits) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bits as u64)
}

/// A default as `--help` shows it and clap parses it back: the value of the crate that owns the
/// setting, written the way the flag takes it. Defaults live in the crates' `Default`s only.
/// (Leaked: clap keeps defaults as `&'static str`, and a command is built once per process.)
fn shown(value: impl std::fmt::Display) -> &'static str {
    Box::leak(value.to_string().into_boxed_str())
}

/// A duration written as [`parse_duration`] reads it: `20ms`, `10s`, `2m`.
struct Dur(Duration);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            write!(f, "{}ms", d.as_millis())
        } else if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
            write!(f, "{}m", d.as_secs() / 60)
        } else {
            write!(f, "{}s", d.as_secs())
        }
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(rate) => write!(f, "{}/{}", rate.count, Dur(rate.per)),
            None => f.write_str("0"),
        }
    }
}

/// A bitrate written as [`parse_bitrate`] reads it: `100M`, `2500k`.
struct Bitrate(u64);

impl std::fmt::Display for Bitrate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = self.0;
        match bits {
            0 => f.write_str("0"),
            b if b.is_multiple_of(1_000_000_000) => write!(f, "{}G", b / 1_000_000_000),
            b if b.is_multiple_of(1_000_000) => write!(f, "{}M", b / 1_000_000),
            b if b.is_multiple_of(1_000) => write!(f, "{}k", b / 1_000),
            b => write!(f, "{b}"),
        }
    }
}

/// The default node id: `HOSTNAME-ROLE-PID`.
pub fn default_node_id(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{role}-{}", std::process::id())
}

fn admin_string(admin: Option<SocketAddr>) -> String {
    admin.map(|a| a.to_string()).unwrap_or_default()
}

impl OriginArgs {
    pub fn config(&self) -> Result<OriginConfig, String> {
        let tls = self.tls.files(&[("--rtmps", self.rtmps.is_some())])?;
        let cluster_auth = self.common.cluster_auth(&[
            ("the relay", self.relay),
            ("the admin port", self.common.role_admin()),
        ])?;
        let config = OriginConfig {
            rtmps_addr: self.rtmps,
            tls,
            cluster_auth,
            ..origin_config(
                self.rtmp,
                self.relay,
                self.advertise_relay.clone(),
                self.control.clone(),
                self.common
                    .node_id
                    .clone()
                    .unwrap_or_else(|| default_node_id("origin")),
                admin_string(self.common.admin),
                &self.rtmp_tuning,
                &self.tuning,
                self.common.drain_timeout,
            )
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

#[allow(clippy::too_many_arguments)]
fn origin_config(
    rtmp: SocketAddr,
    relay: SocketAddr,
    advertise_relay: Option<String>,
    control_url: String,
    node_id: String,
    admin_addr: String,
    rtmp_args: &RtmpArgs,
    tuning: &OriginTuning,
    drain_timeout: Duration,
) -> OriginConfig {
    OriginConfig {
        rtmp_addr: rtmp,
        relay_addr: relay,
        advertise_relay,
        control_url,
        node_id,
        admin_addr,
        session: rtmp_args.session(),
        handshake_timeout: rtmp_args.handshake_timeout,
        idle_timeout: tuning.publish_idle_timeout,
        publish_ip_rules: IpRules {
            allow: tuning.publish_allow.clone(),
            deny: tuning.publish_deny.clone(),
        },
        max_connections: rtmp_args.max_connections,
        max_connections_per_ip: rtmp_args.max_connections_per_ip,
        publish_rate_per_ip: tuning.publish_rate_per_ip.0,
        max_publish_bitrate: tuning.max_publish_bitrate,
        forwards: tuning
            .forwards
            .iter()
            .flat_map(|f| f.0.iter().cloned())
            .collect(),
        forward_ca_file: tuning.forward_ca_file.clone(),
        // An empty variable (compose's `${CORRIENTE_RECORD_DIR:-}`) records nothing.
        record_dir: tuning
            .record_dir
            .clone()
            .filter(|d| !d.as_os_str().is_empty()),
        record_apps: tuning.record_apps.clone(),
        record_min_free: tuning.record_min_free,
        record_max_age: tuning.record_max_age,
        record_max_bytes: tuning.record_max_bytes,
        hls_segment: tuning.hls_segment,
        drain_timeout,
        ..OriginConfig::default()
    }
}

impl EdgeArgs {
    pub fn config(&self) -> Result<EdgeConfig, String> {
        let tls = self.tls.files(&[
            ("--rtmps", self.rtmps.is_some()),
            ("--https", self.https.is_some()),
        ])?;
        let cluster_auth = self
            .common
            .cluster_auth(&[("the admin port", self.common.role_admin())])?;
        let mut config = EdgeConfig {
            rtmps_addr: self.rtmps,
            https_addr: self.https,
            tls,
            https_redirect: self.https_redirect,
            ..edge_config(
                self.rtmp,
                self.http,
                self.control.clone(),
                self.common
                    .node_id
                    .clone()
                    .unwrap_or_else(|| default_node_id("edge")),
                admin_string(self.common.admin),
                &self.rtmp_tuning,
                &self.tuning,
                self.common.drain_timeout,
            )
        };
        config.pull.cluster_auth = cluster_auth;
        config.play_auth = self.play_auth.config()?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

#[allow(clippy::too_many_arguments)]
fn edge_config(
    rtmp: SocketAddr,
    http: SocketAddr,
    control_url: String,
    node_id: String,
    admin_addr: String,
    rtmp_args: &RtmpArgs,
    tuning: &EdgeTuning,
    drain_timeout: Duration,
) -> EdgeConfig {
    let defaults = EdgeConfig::default();
    EdgeConfig {
        rtmp_addr: rtmp,
        http_addr: http,
        control_url,
        node_id,
        admin_addr,
        session: rtmp_args.session(),
        handshake_timeout: rtmp_args.handshake_timeout,
        write_timeout: tuning.viewer_write_timeout,
        viewer_send_buffer: tuning.viewer_send_buffer,
        viewer_nodelay: tuning.viewer_nodelay,
        max_connections: rtmp_args.max_connections,
        max_connections_per_ip: rtmp_args.max_connections_per_ip,
        play_rate_per_ip: tuning.play_rate_per_ip.0,
        viewer_lag: LagPolicy {
            max_skips: tuning.viewer_max_skips,
            ..LagPolicy::default()
        },
        pull: PullConfig {
            hub: HubConfig {
                coalesce_window: tuning.coalesce_window,
                coalesce_max_bytes: tuning.coalesce_max_bytes,
                ..defaults.pull.hub
            },
            linger: tuning.pull_linger,
            upstream_grace: tuning.upstream_grace,
            ..defaults.pull
        },
        drain_timeout,
        drain_delay: tuning.drain_delay,
        vod_cache_bytes: tuning.vod_cache_size,
        ..defaults
    }
}

impl ControlArgs {
    pub fn config(&self) -> Result<ControlPlaneConfig, String> {
        let redis_url = match (&self.redis, &self.redis_password_file) {
            (Some(url), Some(file)) => {
                let password = std::fs::read_to_string(file)
                    .map_err(|e| format!("--redis-password-file {}: {e}", file.display()))?;
                Some(with_password(url, password.trim())?)
            }
            (Some(url), None) => Some(url.clone()),
            (None, Some(_)) => return Err("--redis-password-file needs --redis".to_owned()),
            (None, None) => None,
        };
        let redis_ca_pem = match &self.redis_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("--redis-ca-file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let config = ControlPlaneConfig {
            grpc_addr: self.grpc,
            lease_ttl: self.lease_ttl,
            redis_url,
            redis_claim_replicas: self.redis_claim_replicas,
            redis_prefix: self.redis_prefix.clone(),
            redis_ca_pem,
            node_id: self
                .common
                .node_id
                .clone()
                .unwrap_or_else(|| default_node_id("control-plane")),
            publish_auth: self.publish_auth.config()?,
            cluster_auth: self.common.cluster_auth(&[
                ("gRPC", self.grpc),
                ("the admin port", self.common.role_admin()),
            ])?,
            ..ControlPlaneConfig::default()
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Puts `password` into a redis:// or rediss:// URL (`redis://:PASSWORD@HOST`).
fn with_password(url: &str, password: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "--redis is not a URL".to_owned())?;
    if !scheme.starts_with("redis") || scheme.contains("unix") {
        return Err("--redis-password-file needs a redis:// or rediss:// URL".to_owned());
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    Ok(format!("{scheme}://:{encoded}@{host}"))
}

/// The three parts of `all`, wired to each other through the control plane's address (known
/// once it is bound).
#[derive(Debug)]
pub struct AllConfig {
    pub control: ControlPlaneConfig,
    pub origin: OriginConfig,
    pub edge: EdgeConfig,
    /// The process's node id (its roles are `ID-origin` and `ID-edge`).
    pub node_id: String,
}

impl AllArgs {
    pub fn config(&self) -> Result<AllConfig, String> {
        let node = self
            .common
            .node_id
            .clone()
            .unwrap_or_else(|| default_node_id("all"));
        let control_url = format!("http://{}", self.control_grpc);
        let admin = admin_string(Some(self.admin()));
        let tls = self.tls.files(&[
            ("--origin-rtmps", self.origin_rtmps.is_some()),
            ("--edge-rtmps", self.edge_rtmps.is_some()),
            ("--edge-https", self.edge_https.is_some()),
        ])?;
        let cluster_auth = self.common.cluster_auth(&[
            ("control gRPC", self.control_grpc),
            ("the relay", self.origin_relay),
            ("the admin port", self.admin()),
        ])?;
        let mut edge = EdgeConfig {
            rtmps_addr: self.edge_rtmps,
            https_addr: self.edge_https,
            tls: tls.clone(),
            https_redirect: self.https_redirect,
            ..edge_config(
                self.edge_rtmp,
                self.edge_http,
                control_url.clone(),
                format!("{node}-edge"),
                admin.clone(),
                &self.rtmp,
                &self.edge,
                self.common.drain_timeout,
            )
        };
        edge.pull.cluster_auth = cluster_auth.clone();
        edge.play_auth = self.play_auth.config()?;
        let config = AllConfig {
            control: ControlPlaneConfig {
                grpc_addr: self.control_grpc,
                lease_ttl: self.lease_ttl,
                publish_auth: self.publish_auth.config()?,
                cluster_auth: cluster_auth.clone(),
                ..ControlPlaneConfig::default()
            },
            origin: OriginConfig {
                rtmps_addr: self.origin_rtmps,
                cluster_auth,
                tls: tls.clone().filter(|_| self.origin_rtmps.is_some()),
                ..origin_config(
                    self.origin_rtmp,
                    self.origin_relay,
                    None,
                    control_url.clone(),
                    format!("{node}-origin"),
                    admin.clone(),
                    &self.rtmp,
                    &self.origin,
                    self.common.drain_timeout,
                )
            },
            edge,
            node_id: node,
        };
        // The roles are told the control plane's bound address later; it is valid already.
        config.control.validate().map_err(|e| e.to_string())?;
        config.origin.validate().map_err(|e| e.to_string())?;
        config.edge.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The admin address of `all`: loopback 9090 unless told otherwise.
    pub fn admin(&self) -> SocketAddr {
        self.common
            .admin
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn no_subcommand_means_all() {
        let cli = Cli::try_parse_from(["corriente", "--edge-http", "127.0.0.1:8081"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.all.edge_http, "127.0.0.1:8081".parse().unwrap());
        let cli = Cli::try_parse_from(["corriente", "origin", "--rtmp", "0.0.0.0:1936"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Origin(_))));
    }

    #[test]
    fn defaults_are_the_crates_own() {
        // Written out for --help, then parsed back, each default is the crate's value.
        for d in [0, 20, 1000, 6000, 60_000, 90_000, 1500] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&Dur(d).to_string()), Ok(d));
        }
        for bits in [0, 2_500_000, 100_000_000, 1_000_000_000, 1234] {
            assert_eq!(parse_bitrate(&Bitrate(bits).to_string()), Ok(bits));
        }
        let limit = RateLimit(OriginConfig::default().publish_rate_per_ip);
        assert_eq!(parse_rate(&limit.to_string()), Ok(limit));

        // The role subcommand `args` parse to.
        let command = |args: &[&str]| {
            let argv = std::iter::once("corriente").chain(args.iter().copied());
            Cli::try_parse_from(argv).unwrap().command
        };
        let Some(Command::Edge(edge)) = command(&["edge", "--insecure"]) else {
            unreachable!()
        };
        let edge = edge.config().unwrap();
        let defaults = EdgeConfig::default();
        assert_eq!(
            edge.pull.hub.coalesce_window,
            defaults.pull.hub.coalesce_window
        );
        assert_eq!(edge.viewer_lag, LagPolicy::default());
        assert_eq!(edge.write_timeout, defaults.write_timeout);
        assert_eq!(edge.pull.linger, defaults.pull.linger);
        assert_eq!(edge.session.limits, defaults.session.limits);
        assert_eq!(edge.play_rate_per_ip, defaults.play_rate_per_ip);
        let Some(Command::Origin(origin)) = command(&["origin", "--insecure"]) else {
            unreachable!()
        };
        let origin = origin.config().unwrap();
        let defaults = OriginConfig::default();
        assert_eq!(origin.publish_rate_per_ip, defaults.publish_rate_per_ip);
        assert_eq!(origin.max_publish_bitrate, defaults.max_publish_bitrate);
        assert_eq!(origin.max_connections, defaults.max_connections);
        assert_eq!(origin.relay_lag, LagPolicy::default());
        let all = Cli::try_parse_from(["corriente"])
            .unwrap()
            .all
            .config()
            .unwrap();
        assert_eq!(
            all.control.lease_ttl,
            ControlPlaneConfig::default().lease_ttl
        );
    }

    #[test]
    fn parses_rates_and_bitrates() {
        let rate = |count, secs| {
            RateLimit(Some(Rate {
                count,
                per: Duration::from_secs(secs),
            }))
        };
        assert_eq!(parse_rate("30/1m"), Ok(rate(30, 60)));
        assert_eq!(parse_rate("30/m"), Ok(rate(30, 60)));
        assert_eq!(parse_rate("5/10s"), Ok(rate(5, 10)));
        assert_eq!(parse_rate("0"), Ok(RateLimit(None)));
        assert!(parse_rate("30").is_err());
        assert!(parse_rate("x/1m").is_err());
        assert_eq!(parse_bitrate("100M"), Ok(100_000_000));
        assert_eq!(parse_bitrate("2500k"), Ok(2_500_000));
        assert_eq!(parse_bitrate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bitrate("0"), Ok(0));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("-1M").is_err());
    }

    #[test]
    fn adds_a_password_to_a_redis_url() {
        assert_eq!(
            with_password("redis://redis:6379/0", "s3cr:t").unwrap(),
            "redis://:s3cr%3At@redis:6379/0"
        );
        assert_eq!(
            with_password("rediss://old@h:1", "p").unwrap(),
            "rediss://:p@h:1"
        );
        assert!(with_password("unix:///tmp/r.sock", "p").is_err());
    }

    #[test]
    fn publish_auth_is_on_when_a_credential_source_is_given() {
        let control = |extra: &[&str]| {
            let mut args = vec!["corriente", "control-plane"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).unwrap().command {
                Some(Command::ControlPlane(c)) => c.publish_auth.config(),
                _ => unreachable!(),
            }
        };
        assert!(!control(&[]).unwrap().required);
        assert!(control(&["--publish-auth", "on"]).unwrap().required);
        let hook = control(&["--on-publish", "http://127.0.0.1:9/hook"]).unwrap();
        assert!(hook.required && hook.webhook.is_some());
        assert!(control(&["--publish-auth", "off", "--on-publish", "http://h/"]).is_err());
        assert!(control(&["--on-publish", "http://h/", "--on-publish-timeout", "9s"]).is_err());
        let cli = Cli::try_parse_from(["corriente", "--publish-deny", "10.0.0.0/8,::1"]).unwrap();
        let rules = cli.all.config().unwrap().origin.publish_ip_rules;
        assert_eq!(rules.deny.len(), 2);
        assert!(!rules.permits("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn refuses_bad_values_clearly() {
        assert!(Cli::try_parse_from(["corriente", "edge", "--rtmp", "nope"]).is_err());
        assert!(Cli::try_parse_from(["corriente", "--chunk-size", "1"]).is_err());
        let cli = Cli::try_parse_from([
            "corriente",
            "edge",
            "--insecure",
            "--control",
            "localhost:50051",
        ])
        .unwrap();
        let Some(Command::Edge(edge)) = cli.command else {
            unreachable!()
        };
        assert!(edge.config().unwrap_err().contains("not a URL"));
    }
}
