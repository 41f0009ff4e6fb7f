//! Restreaming: the origin that owns a stream publishes it to other servers (another
//! platform's RTMP or RTMPS ingest, another Corriente) as an RTMP client.
//!
//! Each destination is one task: connect, handshake, `publish`, then subscribe to the stream's
//! hub like any subscriber and write what the feed yields. The feed is the bounded queue: a
//! destination that reads too slowly falls behind the hub's ring, skips to the next keyframe,
//! and is cut off after repeated skips, so the live stream and its viewers never wait for it.
//! Every failure (unreachable, refused, stalled, too slow, closed) ends the session; the task
//! retries with a backoff from 1 s to 30 s (back to 1 s after a session that lasted 30 s),
//! until the stream ends here or the destination is removed.
//!
//! Only the owner forwards: the tasks belong to the origin's [`LiveStream`](crate::streams)
//! and stop when it ends, is fenced or self-fences, so one origin at a time forwards a stream,
//! and after a failover the new owner starts its own (the configuration and the registry's
//! destinations are the same everywhere; the webhook answers the new publish).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use corriente_cluster::{ForwardSource, ForwardState, ForwardStatus, ForwardTarget, ForwardUrl};
use corriente_core::limits::LogThrottle;
use corriente_media::frame::unix_micros;
use corriente_media::metrics::{BYTES_OUT, Protocol};
use corriente_media::rtmp::{ChunkLimits, ClientEvent, ClientMode, ClientSession, handshake};
use corriente_media::{FeedEnd, Frame, FrameRole, Hub, LagPolicy, Segment, StreamKey};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::metrics::{FORWARD_FAILURES, FORWARDS};

/// A destination for every stream of an application, from the configuration
/// (`--forward APP=URL`); `{app}` and `{name}` in the URL stand for the stream's.
#[derive(Clone, PartialEq, Eq)]
pub struct AppForward {
    /// The application, or `*` for every application.
    pub app: String,
    /// The destination URL template.
    pub url: String,
}

impl AppForward {
    /// Parses `APP=URL`. The message never repeats the text (its URL holds a stream key).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (app, url) = s
            .split_once('=')
            .ok_or("a forward is APP=rtmp://HOST/APP/STREAM ({name} is the stream's name)")?;
        let app = app.trim();
        if app != "*" && StreamKey::new(app, "name").is_err() {
            return Err("the application before = is not a valid application name (or *)".into());
        }
        corriente_cluster::forward::check_template(url.trim())?;
        Ok(Self {
            app: app.to_owned(),
            url: url.trim().to_owned(),
        })
    }
}

impl std::fmt::Debug for AppForward {
    /// The URL's stream key hidden (`--check-config` prints the configuration).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = ForwardUrl::parse(&self.url)
            .map(|u| u.redacted())
            .unwrap_or_else(|_| "(invalid)".to_owned());
        write!(f, "{}={url}", self.app)
    }
}

/// One `--forward` entry as given (`APP=URL`): text until the configuration is validated
/// (so that no parse error repeats it), shown redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardSpec(pub String);

impl std::fmt::Debug for ForwardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match AppForward::parse(&self.0) {
            Ok(forward) => write!(f, "{forward:?}"),
            Err(_) => f.write_str("(invalid forward)"),
        }
    }
}

/// How forwards run.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Destinations by application.
    pub per_app: Vec<AppForward>,
    /// Trust for `rtmps://` destinations: the system's web roots plus these.
    pub tls: Arc<rustls::ClientConfig>,
    /// When a forward falls behind for good (cut off, then reconnected).
    pub lag: LagPolicy,
    /// Deadline of a connection's TCP connect, TLS and RTMP handshakes and `publish` answer.
    pub connect_timeout: Duration,
    /// A write to a destination blocked this long ends the session.
    pub write_timeout: Duration,
}

impl ForwardSettings {
    /// The configured destinations of `key`.
    pub fn configured(&self, key: &StreamKey) -> Vec<ForwardTarget> {
        self.per_app
            .iter()
            .filter(|f| f.app == "*" || f.app == key.app())
            .map(|f| {
                ForwardTarget::derived(
                    ForwardSource::Config,
                    corriente_cluster::forward::expand(&f.url, key),
                )
            })
            .collect()
    }
}

/// A TLS client configuration trusting the web's roots and, if given, the PEM certificates in
/// the file `ca_file`.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the forward CA file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("forward CA file: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("forward CA file: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("forward CA file: no PEM certificate in it".to_owned());
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// What one forward reports, shared by its task and the heartbeat.
struct Report {
    target: ForwardTarget,
    destination: String,
    state: Mutex<(ForwardState, String)>,
    bytes: AtomicU64,
    reconnects: AtomicU32,
}

impl Report {
    fn lock(&self) -> MutexGuard<'_, (ForwardState, String)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, state: ForwardState) {
        let mut current = self.lock();
        if current.0 != state {
            FORWARDS.with_label_values(&[current.0.as_str()]).dec();
            FORWARDS.with_label_values(&[state.as_str()]).inc();
            current.0 = state;
        }
    }

    /// Notes why the last session ended; what a destination said is cut to 200 characters.
    fn failed(&self, error: &str) {
        self.lock().1 = error.chars().take(200).collect();
    }

    fn status(&self) -> ForwardStatus {
        let (state, last_error) = self.lock().clone();
        ForwardStatus {
            id: self.target.id.clone(),
            source: Some(self.target.source),
            destination: self.destination.clone(),
            state,
            bytes: self.bytes.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error,
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        FORWARDS.with_label_values(&[self.lock().0.as_str()]).dec();
    }
}

struct Running {
    report: Arc<Report>,
    stop: CancellationToken,
}

/// The forwards of one live stream. Dropping it stops them all.
pub struct StreamForwards {
    key: StreamKey,
    hub: Hub,
    settings: Arc<ForwardSettings>,
    /// Stops every forward: the stream ended or is no longer this origin's.
    stop: CancellationToken,
    running: Mutex<HashMap<String, Running>>,
}

/// How long forwards of a stream that ended get to tell their destinations (`FCUnpublish`,
/// `deleteStream`) before they are stopped.
const UNPUBLISH_GRACE: Duration = Duration::from_secs(2);

impl Drop for StreamForwards {
    fn drop(&mut self) {
        // Fenced streams were stopped at once already; an ended one ends its sessions itself
        // (its feed ends), and is stopped after a grace for sessions that cannot.
        let stop = self.stop.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !stop.is_cancelled() => {
                runtime.spawn(async move {
                    tokio::time::sleep(UNPUBLISH_GRACE).await;
                    stop.cancel();
                });
            }
            _ => stop.cancel(),
        }
    }
}

impl StreamForwards {
    pub fn new(key: StreamKey, hub: Hub, settings: Arc<ForwardSettings>) -> Self {
        Self {
            key,
            hub,
            settings,
            stop: CancellationToken::new(),
            running: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every forward now.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Makes the forwards of `source` exactly `targets`: starts the new ones, stops those no
    /// longer listed, leaves the others running. Invalid or surplus destinations are logged
    /// and left out.
    pub fn set(&self, source: ForwardSource, targets: Vec<ForwardTarget>) {
        if self.stop.is_cancelled() {
            return;
        }
        let mut running = self.lock();
        let wanted: HashMap<String, ForwardTarget> = targets
            .into_iter()
            .filter(|t| t.source == source)
            .map(|t| (t.id.clone(), t))
            .collect();
        running.retain(|id, r| {
            let keep = r.report.target.source != source
                || wanted.get(id).is_some_and(|t| *t == r.report.target);
            if !keep {
                info!(stream = %self.key, id, destination = %r.report.destination, "forward removed");
                r.stop.cancel();
            }
            keep
        });
        let mut wanted: Vec<(String, ForwardTarget)> = wanted.into_iter().collect();
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, target) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            if running.values().any(|r| r.report.target.url == target.url) {
                warn!(stream = %self.key, %id, source = source.as_str(), destination = %target.redacted(), "forward not started: the stream is forwarded to this destination already");
                continue;
            }
            let url = match ForwardUrl::parse(&target.url) {
                Ok(url) => url,
                Err(e) => {
                    warn!(stream = %self.key, %id, source = source.as_str(), "forward not started: {e}");
                    continue;
                }
            };
            if running.len() >= corriente_cluster::forward::MAX_FORWARDS_PER_STREAM {
                warn!(stream = %self.key, %id, destination = %url.redacted(), "forward not started: the stream has the most forwards already");
                continue;
            }
            FORWARDS
                .with_label_values(&[ForwardState::Connecting.as_str()])
                .inc();
            let report = Arc::new(Report {
                destination: url.redacted(),
                target,
                state: Mutex::new((ForwardState::Connecting, String::new())),
                bytes: AtomicU64::new(0),
                reconnects: AtomicU32::new(0),
            });
            let stop = self.stop.child_token();
            info!(stream = %self.key, %id, source = source.as_str(), destination = %report.destination, "forward started");
            let span = info_span!(parent: None, "forward", stream = %self.key, %id, destination = %report.destination);
            tokio::spawn(
                run(
                    url,
                    self.hub.clone(),
                    self.settings.clone(),
                    report.clone(),
                    stop.clone(),
                )
                .instrument(span),
            );
            running.insert(id, Running { report, stop });
        }
    }

    /// What the heartbeat reports.
    pub fn statuses(&self) -> Vec<ForwardStatus> {
        let mut statuses: Vec<ForwardStatus> =
            self.lock().values().map(|r| r.report.status()).collect();
        statuses.sort_by(|a, b| a.id.cmp(&b.id));
        statuses
    }
}

/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// How a session ended.
enum Ended {
    /// The stream ended here: nothing more to forward.
    StreamOver,
    /// The session failed (metrics reason, message).
    Failed(&'static str, String),
}

async fn run(
    url: ForwardUrl,
    hub: Hub,
    settings: Arc<ForwardSettings>,
    report: Arc<Report>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    let mut attempts = 0u32;
    let mut throttle = LogThrottle::new(Duration::from_secs(30));
    loop {
        if attempts > 0 {
            report.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        attempts += 1;
        report.set(ForwardState::Connecting);
        let started = Instant::now();
        let ended = tokio::select! {
            ended = session(&url, &hub, &settings, &report) => ended,
            _ = stop.cancelled() => return,
        };
        match ended {
            Ended::StreamOver => return,
            Ended::Failed(reason, message) => {
                FORWARD_FAILURES.with_label_values(&[reason]).inc();
                report.failed(&message);
                if started.elapsed() >= STABLE_SESSION {
                    backoff = Duration::from_secs(1);
                }
                if let Some(suppressed) = throttle.allow(Instant::now()) {
                    warn!(reason, retry_in = ?backoff, attempts, suppressed, "forward failed: {message}");
                }
            }
        }
        report.set(ForwardState::Retrying);
        // Up to a quarter more, so forwards of many streams to one destination that restarted
        // do not all come back at the same instant.
        let jitter = backoff.mul_f64(f64::from(unix_micros() as u32 % 1000) / 4000.0);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if hub.end_reason().is_some() {
            return;
        }
    }
}

async fn session(
    url: &ForwardUrl,
    hub: &Hub,
    settings: &ForwardSettings,
    report: &Report,
) -> Ended {
    let deadline = settings.connect_timeout;
    let tcp = match tokio::time::timeout(deadline, connect(&url.host, url.port)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Ended::Failed("unreachable", format!("cannot connect: {e}")),
        Err(_) => {
            return Ended::Failed("unreachable", format!("no connection within {deadline:?}"));
        }
    };
    let _ = tcp.set_nodelay(true);
    if !url.tls {
        return publish(tcp, url, hub, settings, report).await;
    }
    let name = match rustls::pki_types::ServerName::try_from(url.host.clone()) {
        Ok(name) => name,
        Err(e) => return Ended::Failed("tls", format!("not a TLS server name: {e}")),
    };
    let connector = tokio_rustls::TlsConnector::from(settings.tls.clone());
    match tokio::time::timeout(deadline, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => publish(tls, url, hub, settings, report).await,
        Ok(Err(e)) => Ended::Failed("tls", format!("TLS handshake failed: {e}")),
        Err(_) => Ended::Failed("tls", format!("no TLS handshake within {deadline:?}")),
    }
}

/// What a forward's socket may hold unsent in the kernel (Linux doubles it): enough for
/// 20 Mbit/s over a 100 ms path, and small enough that a destination that stops reading shows
/// up here within seconds (a write stalls, or the feed falls behind the hub's ring) instead of
/// after megabytes of autotuned buffer.
const SEND_BUFFER: u32 = 256 << 10;

/// Connects to the first address of `host` that answers, with a bounded send buffer.
async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_send_buffer_size(SEND_BUFFER)?;
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address")
    }))
}

/// `@setDataFrame`, AMF0-encoded: what an encoder puts before metadata it wants the server to
/// keep for later viewers (the hub keeps it without the wrapper).
const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";

async fn publish<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    url: &ForwardUrl,
    hub: &Hub,
    settings: &ForwardSettings,
    report: &Report,
) -> Ended {
    let deadline = settings.connect_timeout;
    let mut input = match handshake::connect(&mut io, deadline).await {
        Ok(rest) => rest,
        Err(e) => return Ended::Failed("handshake", format!("RTMP handshake: {e}")),
    };
    // A destination sends acknowledgements, pings and status messages: small bounds.
    let limits = ChunkLimits {
        max_chunk_size: 1 << 20,
        max_message_size: 64 << 10,
        max_buffered: 256 << 10,
        max_chunk_streams: 16,
    };
    let mut session = ClientSession::with_limits(
        ClientMode::Publish,
        &url.app,
        &url.tc_url(),
        &url.name,
        CHUNK_SIZE,
        limits,
    );
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    // connect, createStream, publish: until the destination says it started.
    let accepted = tokio::time::timeout(deadline, async {
        loop {
            if let Some(ended) = drain(&mut session, &mut input, &mut events) {
                return Err(ended);
            }
            if let Err(e) = flush(&mut io, &mut session, settings.write_timeout).await {
                return Err(Ended::Failed("closed", format!("write: {e}")));
            }
            if session.is_active() {
                return Ok(());
            }
            match io.read(&mut buf).await {
                Ok(0) => {
                    return Err(Ended::Failed(
                        "closed",
                        "the destination closed the connection before the publish started"
                            .to_owned(),
                    ));
                }
                Ok(n) => input.extend_from_slice(&buf[..n]),
                Err(e) => return Err(Ended::Failed("closed", format!("read: {e}"))),
            }
        }
    })
    .await;
    match accepted {
        Ok(Ok(())) => {}
        Ok(Err(ended)) => return ended,
        Err(_) => {
            return Ended::Failed(
                "handshake",
                format!("the destination did not start the publish within {deadline:?}"),
            );
        }
    }
    let mut feed = match hub.subscribe(settings.lag, Protocol::Forward) {
        Ok(feed) => feed,
        Err(_) => return Ended::StreamOver,
    };
    report.set(ForwardState::Publishing);
    info!("forwarding");
    let mut clock = Rebase::default();
    loop {
        tokio::select! {
            segment = feed.next() => {
                let Some(segment) = segment else {
                    return match feed.end() {
                        Some(FeedEnd::TooSlow) => Ended::Failed(
                            "too_slow",
                            "the destination could not keep up with the stream".to_owned(),
                        ),
                        _ => {
                            session.stop();
                            let _ = flush(&mut io, &mut session, settings.write_timeout).await;
                            Ended::StreamOver
                        }
                    };
                };
                let mut bytes = 0u64;
                let mut send = |frame: &Frame| {
                    bytes += frame.payload.len() as u64;
                    session.send_frame(&clock.frame(frame));
                };
                match &segment {
                    Segment::Init(init) => init.frames().for_each(&mut send),
                    Segment::Batch { batch, from } => batch.frames[*from..].iter().for_each(&mut send),
                }
                if let Err(e) = flush(&mut io, &mut session, settings.write_timeout).await {
                    let reason = if e.kind() == std::io::ErrorKind::TimedOut { "write_timeout" } else { "closed" };
                    return Ended::Failed(reason, format!("write: {e}"));
                }
                report.bytes.fetch_add(bytes, Ordering::Relaxed);
                BYTES_OUT.with_label_values(&[Protocol::Forward.as_str()]).inc_by(bytes);
            }
            read = io.read(&mut buf) => {
                match read {
                    Ok(0) => return Ended::Failed("closed", "the destination closed the connection".to_owned()),
                    Ok(n) => input.extend_from_slice(&buf[..n]),
                    Err(e) => return Ended::Failed("closed", format!("read: {e}")),
                }
                if let Some(ended) = drain(&mut session, &mut input, &mut events) {
                    return ended;
                }
                // Acknowledgements and ping answers.
                if let Err(e) = flush(&mut io, &mut session, settings.write_timeout).await {
                    return Ended::Failed("closed", format!("write: {e}"));
                }
            }
        }
    }
}

/// RTMP chunk size of forwards: large chunks, few headers.
const CHUNK_SIZE: u32 = 4096;

/// Bytes a destination may send us before we act on them: acknowledgements, pings and
/// status messages are small.
const MAX_INPUT: usize = 64 << 10;

/// Processes what the destination sent; `Some` when the session is over.
fn drain(
    session: &mut ClientSession,
    input: &mut BytesMut,
    events: &mut Vec<ClientEvent>,
) -> Option<Ended> {
    if let Err(e) = session.feed(input, unix_micros(), events) {
        return Some(Ended::Failed(
            "protocol",
            format!("the destination sent bad RTMP: {e}"),
        ));
    }
    if input.len() > MAX_INPUT {
        return Some(Ended::Failed(
            "protocol",
            "the destination sent too much without completing a message".to_owned(),
        ));
    }
    for event in events.drain(..) {
        match event {
            ClientEvent::Refused { code, description } => {
                return Some(Ended::Failed(
                    "refused",
                    format!("the destination refused the publish: {code} {description}"),
                ));
            }
            ClientEvent::Ended => {
                return Some(Ended::Failed(
                    "closed",
                    "the destination ended the publish".to_owned(),
                ));
            }
            _ => {}
        }
    }
    None
}

async fn flush<S: AsyncWrite + Unpin>(
    io: &mut S,
    session: &mut ClientSession,
    timeout: Duration,
) -> std::io::Result<()> {
    if session.has_output() {
        let out = session.take_output();
        // One deadline for both: over TLS the write is done once rustls holds the bytes, and
        // it is the flush that waits for the destination to take them.
        let written = async {
            tokio::io::AsyncWriteExt::write_all(io, &out).await?;
            tokio::io::AsyncWriteExt::flush(io).await
        };
        match tokio::time::timeout(timeout, written).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the destination took nothing for {timeout:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// Timestamps as the destination sees them: its session starts at 0 (the hub's timestamps
/// are the publisher's, seconds or hours in), configuration frames at 0, and metadata wrapped
/// in `@setDataFrame` so the destination keeps it for its own viewers.
#[derive(Default)]
struct Rebase {
    base: Option<u32>,
    /// The last timestamp sent: configuration that comes again mid-session (a new sequence
    /// header, or the feed's resend after a skip) goes out at it, never back at 0.
    last: u32,
}

impl Rebase {
    fn frame(&mut self, frame: &Frame) -> Frame {
        let mut out = frame.clone();
        match frame.role() {
            FrameRole::Metadata => {
                let mut wrapped =
                    BytesMut::with_capacity(SET_DATA_FRAME.len() + frame.payload.len());
                wrapped.put_slice(SET_DATA_FRAME);
                wrapped.put_slice(&frame.payload);
                out.payload = Bytes::from(wrapped);
                out.timestamp = self.last;
            }
            FrameRole::VideoConfig | FrameRole::AudioConfig => out.timestamp = self.last,
            _ => {
                let base = *self.base.get_or_insert(frame.timestamp);
                let t = frame.timestamp.wrapping_sub(base);
                // A frame a little before the first (audio interleaved ahead of the keyframe).
                out.timestamp = if t > u32::MAX / 2 { 0 } else { t };
                self.last = self.last.max(out.timestamp);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use corriente_media::FrameKind;

    use super::*;

    #[test]
    fn app_forwards_parse_and_expand() {
        let f = AppForward::parse("live=rtmp://backup:1936/live/{name}").unwrap();
        assert_eq!(f.app, "live");
        assert!(AppForward::parse("*=rtmp://b/{app}/{name}").is_ok());
        assert!(AppForward::parse("live").is_err());
        assert!(AppForward::parse("live=http://b/x/y").is_err());
        assert!(AppForward::parse("bad app=rtmp://b/x/y").is_err());
        let secret = AppForward::parse("live=rtmp://yt/live2/abcd-SECRET").unwrap();
        assert_eq!(format!("{secret:?}"), "live=rtmp://yt:1935/live2/abcd…");
        let spec = ForwardSpec("live=rtmp://h/live/{name}?token=SECRET".into());
        assert!(!format!("{spec:?}").contains("SECRET"));
        let err = AppForward::parse("rtmp://h/app/SECRET").unwrap_err();
        assert!(!err.contains("SECRET"), "{err}");
        let err = AppForward::parse("live=rtmp://h/SECRET").unwrap_err();
        assert!(!err.contains("SECRET"), "{err}");
        let settings = ForwardSettings {
            per_app: vec![
                f,
                AppForward::parse("other=rtmp://x/a/b").unwrap(),
                AppForward::parse("*=rtmps://y/{app}/{name}").unwrap(),
            ],
            tls: Arc::new(tls_config(None).unwrap()),
            lag: LagPolicy::default(),
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
        };
        let key = StreamKey::new("live", "cam").unwrap();
        let urls: Vec<String> = settings
            .configured(&key)
            .into_iter()
            .map(|t| t.url)
            .collect();
        assert_eq!(urls, ["rtmp://backup:1936/live/cam", "rtmps://y/live/cam"]);
    }

    #[test]
    fn rebases_timestamps_and_wraps_metadata() {
        let mut clock = Rebase::default();
        let meta = Frame::new(
            FrameKind::Script,
            5000,
            Bytes::from_static(b"\x02\x00\x0aonMetaData"),
            0,
        );
        let out = clock.frame(&meta);
        assert_eq!(out.timestamp, 0);
        assert!(out.payload.starts_with(SET_DATA_FRAME));
        let config = Frame::new(
            FrameKind::Video,
            5000,
            Bytes::from_static(&[0x17, 0, 0, 0, 0]),
            0,
        );
        assert_eq!(clock.frame(&config).timestamp, 0);
        let key = Frame::new(
            FrameKind::Video,
            5040,
            Bytes::from_static(&[0x17, 1, 0, 0, 0]),
            0,
        );
        assert_eq!(clock.frame(&key).timestamp, 0);
        let audio = Frame::new(FrameKind::Audio, 5020, Bytes::from_static(&[0xaf, 1, 0]), 0);
        assert_eq!(
            clock.frame(&audio).timestamp,
            0,
            "before the first frame: 0"
        );
        let next = Frame::new(
            FrameKind::Video,
            5073,
            Bytes::from_static(&[0x27, 1, 0, 0, 0]),
            0,
        );
        assert_eq!(clock.frame(&next).timestamp, 33);
        // A sequence header again mid-session: at the last timestamp, not back at 0.
        assert_eq!(clock.frame(&config).timestamp, 33);
    }
}
