//! Relay pulls: the first viewer of a stream on this edge triggers one lookup and one relay
//! pull into a local hub; every later viewer shares it. When the last viewer leaves, the pull
//! lingers briefly, then stops.
//!
//! A pull outlives its upstream: when the origin goes away without ending the stream (it died,
//! was drained, or lost the stream to another origin), the pull looks the stream up again and
//! resumes from wherever it now lives, for up to a grace period, while viewers stay connected.
//! Timestamps are rebased across such a switch so players see them keep growing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use corriente_cluster::auth::ClusterAuth;
use corriente_cluster::{ControlClient, StreamRecord};
use corriente_media::frame::unix_micros;
use corriente_media::{
    EndReason, Frame, FrameKind, Hub, HubConfig, HubWriter, StreamKey, spawn_hub,
};
use corriente_proto::relay::relay_client::RelayClient;
use corriente_proto::relay::relay_message::Body;
use corriente_proto::relay::{self as pb, SubscribeRequest};
use prometheus::{Histogram, exponential_buckets, register_histogram};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics;

/// Registers the pulls' series (see `crate::metrics::init`).
pub(crate) fn init_metrics() {
    LazyLock::force(&RELAY_LAG);
}

static RELAY_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "corriente_relay_lag_seconds",
        "Time from a frame's arrival at the origin to its arrival at this edge",
        exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// Settings of relay pulls.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Hub settings of pulled streams (coalescing window, outputs, caches).
    pub hub: HubConfig,
    /// How long a pull stays up after its last viewer left.
    pub linger: Duration,
    /// How long a viewer waits for the stream to be found and its pull to start.
    pub resolve_timeout: Duration,
    /// How long a pull keeps looking for its stream after losing the origin, viewers still
    /// connected, before it ends the stream for them.
    pub upstream_grace: Duration,
    /// No frame from the origin for this long means the upstream is lost.
    pub upstream_stall: Duration,
    /// HLS packaging of pulled streams.
    pub hls: crate::hls::HlsConfig,
    /// This edge's node id, sent to origins for their logs.
    pub node_id: String,
    /// Cluster credentials presented to origins' relays.
    pub cluster_auth: ClusterAuth,
}

/// Where a pull is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    Resolving,
    Live,
    NotFound,
    Failed(String),
}

/// Why a viewer cannot play.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlayError {
    #[error("stream {0} is not live")]
    NotFound(StreamKey),
    #[error("stream {key} is unavailable: {reason}")]
    Unavailable { key: StreamKey, reason: String },
}

impl PlayError {
    pub fn reason(&self) -> &'static str {
        match self {
            PlayError::NotFound(_) => "not_found",
            PlayError::Unavailable { .. } => "unavailable",
        }
    }
}

struct PullEntry {
    id: u64,
    key: StreamKey,
    hub: Hub,
    state: watch::Receiver<PullState>,
    viewers: AtomicUsize,
    idle: Notify,
    /// Newest epoch the registry announced for this stream: a newer one than the pull's means
    /// the stream moved to another origin.
    moved: watch::Sender<u64>,
    /// Its HLS output (on from the first HLS request).
    hls: Arc<crate::hls::Packager>,
}

/// How long a stream the registry did not know is answered "not found" without asking again
/// (unless the registry announces it meanwhile, which clears it at once).
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(2);

/// Most streams remembered as not found; past it, expired ones are forgotten, and while all are
/// recent, new ones are not remembered (the per-address play rate still bounds lookups).
const MAX_NOT_FOUND: usize = 4096;

/// The pulls of this edge.
pub struct Pulls {
    map: Mutex<HashMap<StreamKey, Arc<PullEntry>>>,
    /// Streams the registry recently did not know, until when: requests for them are answered
    /// without a lookup (a client looping on unknown names costs no registry call).
    not_found: Mutex<HashMap<StreamKey, Instant>>,
    channels: Mutex<HashMap<String, Channel>>,
    control: ControlClient,
    config: PullConfig,
    shutdown: CancellationToken,
    next_id: AtomicU64,
}

/// A viewer's hold on a pull: keeps it alive, gives access to its hub.
pub struct ViewerLease {
    entry: Arc<PullEntry>,
    pulls: Arc<Pulls>,
}

impl ViewerLease {
    pub fn hub(&self) -> &Hub {
        &self.entry.hub
    }

    /// The stream's HLS output.
    pub fn hls(&self) -> &Arc<crate::hls::Packager> {
        &self.entry.hls
    }
}

impl Drop for ViewerLease {
    fn drop(&mut self) {
        let _map = self.pulls.lock();
        if self.entry.viewers.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.entry.idle.notify_one();
        }
    }
}

impl Pulls {
    pub fn new(
        control: ControlClient,
        config: PullConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            not_found: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            control,
            config,
            shutdown,
            next_id: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StreamKey, Arc<PullEntry>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the pull of `key`, starting it if this is the stream's first viewer here, and
    /// waits until the stream is found and flowing.
    pub async fn acquire(self: &Arc<Self>, key: &StreamKey) -> Result<ViewerLease, PlayError> {
        self.acquire_for(key, false).await
    }

    /// [`Self::acquire`] for an HLS request: the pull's packager is on (from its first frame
    /// when the pull starts now).
    pub async fn acquire_hls(self: &Arc<Self>, key: &StreamKey) -> Result<ViewerLease, PlayError> {
        self.acquire_for(key, true).await
    }

    async fn acquire_for(
        self: &Arc<Self>,
        key: &StreamKey,
        hls: bool,
    ) -> Result<ViewerLease, PlayError> {
        if self.recently_not_found(key) {
            return Err(PlayError::NotFound(key.clone()));
        }
        let entry = {
            let mut map = self.lock();
            let entry = match map.get(key) {
                Some(entry) => {
                    if hls {
                        entry.hls.enable();
                    }
                    entry.clone()
                }
                None => {
                    let entry = self.start(key.clone(), hls);
                    map.insert(key.clone(), entry.clone());
                    entry
                }
            };
            entry.viewers.fetch_add(1, Ordering::Relaxed);
            entry
        };
        let lease = ViewerLease {
            entry: entry.clone(),
            pulls: self.clone(),
        };
        let mut state = entry.state.clone();
        let settled = tokio::time::timeout(
            self.config.resolve_timeout,
            state.wait_for(|s| *s != PullState::Resolving),
        )
        .await;
        let unavailable = |reason: String| PlayError::Unavailable {
            key: key.clone(),
            reason,
        };
        match settled {
            Err(_) => Err(unavailable("timed out waiting for the origin".to_owned())),
            Ok(Err(_)) => Err(PlayError::NotFound(key.clone())),
            Ok(Ok(s)) => match &*s {
                PullState::Live => Ok(lease),
                PullState::NotFound | PullState::Resolving => Err(PlayError::NotFound(key.clone())),
                PullState::Failed(reason) => Err(unavailable(reason.clone())),
            },
        }
    }

    fn not_found_map(&self) -> MutexGuard<'_, HashMap<StreamKey, Instant>> {
        self.not_found.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recently_not_found(&self, key: &StreamKey) -> bool {
        let mut map = self.not_found_map();
        match map.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers that the registry does not know `key`, for [`NOT_FOUND_TTL`].
    fn remember_not_found(&self, key: &StreamKey) {
        let now = Instant::now();
        let mut map = self.not_found_map();
        if map.len() >= MAX_NOT_FOUND {
            map.retain(|_, until| *until > now);
        }
        if map.len() < MAX_NOT_FOUND {
            map.insert(key.clone(), now + NOT_FOUND_TTL);
        }
    }

    /// The registry announced `key` under `epoch` (a new owner): a pull of an older epoch
    /// switches to it at once. True when a pull here was behind.
    pub fn stream_moved(&self, key: &StreamKey, epoch: u64) -> bool {
        self.not_found_map().remove(key);
        match self.lock().get(key) {
            Some(entry) => entry.moved.send_if_modified(|known| {
                let newer = epoch > *known;
                if newer {
                    *known = epoch;
                }
                newer
            }),
            None => false,
        }
    }

    /// Streams pulled here with their hubs, for stats and load reports.
    pub fn active(&self) -> Vec<Hub> {
        self.lock()
            .values()
            .filter(|e| *e.state.borrow() == PullState::Live)
            .map(|e| e.hub.clone())
            .collect()
    }

    fn start(self: &Arc<Self>, key: StreamKey, hls: bool) -> Arc<PullEntry> {
        let (hub, writer) = spawn_hub(key.clone(), self.config.hub);
        let (state_tx, state_rx) = watch::channel(PullState::Resolving);
        let entry = Arc::new(PullEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key: key.clone(),
            hub,
            state: state_rx,
            viewers: AtomicUsize::new(0),
            idle: Notify::new(),
            moved: watch::Sender::new(0),
            hls: Arc::new(crate::hls::Packager::new(self.config.hls)),
        });
        if hls {
            entry.hls.enable();
        }
        let span = info_span!("pull", stream = %key);
        tokio::spawn(run_pull(self.clone(), entry.clone(), writer, state_tx).instrument(span));
        entry
    }

    fn remove(&self, entry: &PullEntry) {
        let mut map = self.lock();
        if map.get(&entry.key).is_some_and(|e| e.id == entry.id) {
            map.remove(&entry.key);
        }
    }

    /// Removes the pull if it still has no viewer; false when one arrived meanwhile.
    fn remove_if_idle(&self, entry: &PullEntry) -> bool {
        let mut map = self.lock();
        if entry.viewers.load(Ordering::Relaxed) > 0 {
            return false;
        }
        if map.get(&entry.key).is_some_and(|e| e.id == entry.id) {
            map.remove(&entry.key);
        }
        true
    }

    /// The control plane client this edge looks streams up with.
    pub(crate) fn control(&self) -> &ControlClient {
        &self.control
    }

    /// The relay channel to the origin at `relay_addr` (shared by every call to it).
    pub(crate) fn channel(&self, relay_addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(relay_addr) {
            return Ok(channel.clone());
        }
        let channel = self
            .config
            .cluster_auth
            .endpoint(relay_addr)
            .map_err(|e| format!("bad relay address {relay_addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(relay_addr.to_owned(), channel.clone());
        Ok(channel)
    }

    fn forget_channel(&self, relay_addr: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(relay_addr);
    }

    /// Opens the relay stream for `record`.
    async fn subscribe(
        &self,
        record: &StreamRecord,
    ) -> Result<Streaming<pb::RelayMessage>, Upstream> {
        let channel = self.channel(&record.relay_addr).map_err(Upstream::Failed)?;
        let request = SubscribeRequest {
            app: record.key.app().to_owned(),
            name: record.key.name().to_owned(),
            epoch: record.epoch,
            edge_node: self.config.node_id.clone(),
        };
        // A frozen origin accepts the connection but never answers: do not wait on it.
        let span = info_span!("relay.subscribe", origin = %record.node_id, epoch = record.epoch);
        let request = span.in_scope(|| corriente_proto::trace::request(request));
        let subscribed = tokio::time::timeout(
            Duration::from_secs(2),
            RelayClient::with_interceptor(channel, self.config.cluster_auth.client())
                .max_decoding_message_size(corriente_proto::MAX_RELAY_MESSAGE)
                .subscribe(request)
                .instrument(span),
        )
        .await
        .map_err(|_| {
            Upstream::Failed(format!(
                "origin at {} did not answer in time",
                record.relay_addr
            ))
        })?;
        match subscribed {
            Ok(response) => Ok(response.into_inner()),
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                Err(Upstream::Moved(s.message().to_owned()))
            }
            Err(s) => {
                self.forget_channel(&record.relay_addr);
                Err(Upstream::Failed(format!(
                    "relay pull from {} failed: {}",
                    record.relay_addr,
                    s.message()
                )))
            }
        }
    }
}

/// What happened upstream.
#[derive(Debug)]
enum Upstream {
    /// The origin does not (or no longer) have the stream under that epoch.
    Moved(String),
    /// The origin could not be reached or broke off.
    Failed(String),
}

/// Keeps timestamps growing across upstream switches: the first media frame from a new
/// upstream is placed just after the last frame sent, and the rest follow at the same offset.
#[derive(Debug, Default)]
struct Timeline {
    offset: u32,
    last: Option<u32>,
    rebase: bool,
}

/// Gap between the last frame of the old upstream and the first of the new.
const SWITCH_GAP_MS: u32 = 100;

impl Timeline {
    fn switch_upstream(&mut self) {
        self.rebase = self.last.is_some();
    }

    fn map(&mut self, frame: &Frame) -> u32 {
        if self.rebase {
            if frame.is_config() {
                return self.last.unwrap_or(0);
            }
            if let Some(last) = self.last {
                self.offset = last
                    .wrapping_add(SWITCH_GAP_MS)
                    .wrapping_sub(frame.timestamp);
            }
            self.rebase = false;
        }
        let out = frame.timestamp.wrapping_add(self.offset);
        if !frame.is_config() {
            self.last = Some(self.last.map_or(out, |l| {
                if out.wrapping_sub(l) < u32::MAX / 2 {
                    out
                } else {
                    l
                }
            }));
        }
        out
    }
}

/// A relay session that ends sooner than this after it started counts as a quick loss.
const QUICK_LOSS: Duration = Duration::from_secs(1);
/// Pause before retrying after the first quick loss; it doubles with each further one.
const QUICK_LOSS_RETRY: Duration = Duration::from_millis(100);
/// Longest pause between retries after quick losses.
const QUICK_LOSS_RETRY_MAX: Duration = Duration::from_secs(5);

/// How one upstream session ended.
enum SessionEnd {
    /// The stream ended for good.
    Ended(EndReason),
    /// The upstream went away; the stream may be elsewhere.
    Lost(String),
    /// No viewers for the linger period, or the node is shutting down.
    Stopped(EndReason),
}

async fn run_pull(
    pulls: Arc<Pulls>,
    entry: Arc<PullEntry>,
    mut writer: HubWriter,
    state: watch::Sender<PullState>,
) {
    let reason = pull(&pulls, &entry, &mut writer, &state).await;
    if *state.borrow() == PullState::Live {
        corriente_media::metrics::STREAMS_ACTIVE
            .with_label_values(&["edge"])
            .dec();
    }
    pulls.remove(&entry);
    entry.hls.end();
    debug!(reason = reason.as_str(), "pull ended");
    writer.finish(reason);
}

async fn pull(
    pulls: &Arc<Pulls>,
    entry: &Arc<PullEntry>,
    writer: &mut HubWriter,
    state: &watch::Sender<PullState>,
) -> EndReason {
    let mut timeline = Timeline::default();
    let mut lost_since: Option<Instant> = None;
    let mut linger: Option<Instant> = None;
    let mut last_problem = String::new();
    let mut current_epoch = 0;
    // Sessions in a row that broke within `QUICK_LOSS` of starting (an origin that accepts
    // the pull and then fails it at once): retried with a growing pause, not in a hot loop.
    let mut quick_losses: u32 = 0;
    loop {
        if quick_losses > 0 {
            let pause = QUICK_LOSS_RETRY
                .saturating_mul(1 << (quick_losses - 1).min(6))
                .min(QUICK_LOSS_RETRY_MAX);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = pulls.shutdown.cancelled() => return EndReason::Shutdown,
            }
        }
        // Find the stream.
        let lookup = pulls.control.lookup_stream(&entry.key).await;
        let record = match lookup {
            Ok(Some(record)) if record.epoch >= current_epoch => Some(record),
            Ok(_) => None,
            Err(e) => {
                last_problem = e.to_string();
                None
            }
        };
        let upstream = match &record {
            Some(record) => match pulls.subscribe(record).await {
                Ok(stream) => Some(stream),
                Err(Upstream::Moved(why)) | Err(Upstream::Failed(why)) => {
                    last_problem = why;
                    None
                }
            },
            None => None,
        };
        let (Some(record), Some(upstream)) = (record, upstream) else {
            if lost_since.is_none() {
                // First attempt: answer the waiting viewers now.
                let problem = if last_problem.is_empty() {
                    PullState::NotFound
                } else {
                    PullState::Failed(last_problem.clone())
                };
                if *state.borrow() == PullState::Resolving {
                    if problem == PullState::NotFound {
                        pulls.remember_not_found(&entry.key);
                    }
                    let _ = state.send(problem);
                    return EndReason::Unpublished;
                }
            }
            let since = *lost_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= pulls.config.upstream_grace {
                warn!(grace = ?pulls.config.upstream_grace, problem = %last_problem, "stream did not come back; ending it for its viewers");
                return EndReason::UpstreamLost;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = pulls.shutdown.cancelled() => return EndReason::Shutdown,
            }
        };

        let failover_from = lost_since.take();
        if failover_from.is_some() || current_epoch != 0 {
            timeline.switch_upstream();
            metrics::FAILOVERS.inc();
        }
        current_epoch = record.epoch;
        info!(origin = %record.node_id, relay = %record.relay_addr, epoch = record.epoch, "pulling from origin");
        metrics::RELAY_PULLS.inc();
        let session_started = Instant::now();
        let end = relay_session(
            pulls,
            entry,
            state,
            writer,
            upstream,
            crate::hls::Publication {
                epoch: record.epoch,
                started_at_ms: record.started_at_ms,
                discontinuity: record.hls.discontinuity,
            },
            failover_from,
            &mut timeline,
            &mut linger,
        )
        .await;
        metrics::RELAY_PULLS.dec();
        match end {
            SessionEnd::Ended(reason) | SessionEnd::Stopped(reason) => return reason,
            SessionEnd::Lost(why) => {
                if session_started.elapsed() < QUICK_LOSS {
                    quick_losses = quick_losses.saturating_add(1);
                } else {
                    quick_losses = 0;
                }
                info!(origin = %record.node_id, reason = %why, quick_losses, "lost the origin; looking for the stream again");
                last_problem = why;
                lost_since = Some(Instant::now());
            }
        }
    }
}

/// Moves frames from one relay stream into the hub until it ends.
#[allow(clippy::too_many_arguments)]
async fn relay_session(
    pulls: &Arc<Pulls>,
    entry: &Arc<PullEntry>,
    state: &watch::Sender<PullState>,
    writer: &mut HubWriter,
    mut upstream: Streaming<pb::RelayMessage>,
    publication: crate::hls::Publication,
    mut failover_from: Option<Instant>,
    timeline: &mut Timeline,
    linger: &mut Option<Instant>,
) -> SessionEnd {
    let stall = pulls.config.upstream_stall;
    let mut moved = entry.moved.subscribe();
    loop {
        let linger_at = *linger;
        tokio::select! {
            _ = moved.changed() => {
                let newest = *moved.borrow_and_update();
                if newest > publication.epoch {
                    return SessionEnd::Lost(format!("the stream moved to another origin (epoch {newest})"));
                }
            }
            message = tokio::time::timeout(stall, upstream.message()) => match message {
                Ok(Ok(Some(pb::RelayMessage { body: Some(Body::Frame(f)) }))) => {
                    let Some(frame) = frame_from_pb(f) else { continue };
                    if let Some(lost) = failover_from.take() {
                        metrics::FAILOVER_SECONDS.observe(lost.elapsed().as_secs_f64());
                    }
                    if frame.ingest_us > 0 {
                        let lag = unix_micros().saturating_sub(frame.ingest_us);
                        RELAY_LAG.observe(lag as f64 / 1e6);
                    }
                    corriente_media::metrics::BYTES_IN
                        .with_label_values(&["relay"])
                        .inc_by(frame.payload.len() as u64);
                    // HLS takes the origin's timestamps, the same on every edge.
                    entry.hls.push(publication, &frame);
                    let ts = timeline.map(&frame);
                    writer.push(frame.with_timestamp(ts));
                    if *state.borrow() != PullState::Live {
                        // Viewers join once the stream's first frames (metadata, sequence
                        // headers) are in the hub, so their FLV header names the right tracks.
                        corriente_media::metrics::STREAMS_ACTIVE
                            .with_label_values(&["edge"])
                            .inc();
                        let _ = state.send(PullState::Live);
                    }
                }
                Ok(Ok(Some(pb::RelayMessage { body: Some(Body::End(end)) }))) => {
                    return match pb::EndReason::try_from(end.reason) {
                        Ok(pb::EndReason::Unpublished) => SessionEnd::Ended(EndReason::Unpublished),
                        Ok(other) => SessionEnd::Lost(format!("origin ended the pull: {}", other.as_str_name())),
                        Err(_) => SessionEnd::Lost("origin ended the pull".to_owned()),
                    };
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return SessionEnd::Lost("relay stream closed without an end".to_owned()),
                Ok(Err(status)) => return SessionEnd::Lost(format!("relay stream broke: {}", status.message())),
                Err(_) => return SessionEnd::Lost(format!("no frame from the origin for {stall:?}")),
            },
            _ = writer.flush_due() => {}
            _ = entry.idle.notified() => {
                if entry.viewers.load(Ordering::Relaxed) == 0 {
                    *linger = Some(Instant::now() + pulls.config.linger);
                }
            }
            _ = sleep_until_some(linger_at) => {
                if pulls.remove_if_idle(entry) {
                    debug!("no viewers left; stopping the pull");
                    return SessionEnd::Stopped(EndReason::Unpublished);
                }
                *linger = None;
            }
            _ = pulls.shutdown.cancelled() => return SessionEnd::Stopped(EndReason::Shutdown),
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A relay frame as a media frame (its payload a slice of the message, not a copy); `None` for a
/// frame kind this build does not know (a newer origin): skip it. Prost types stop at the gRPC
/// boundary: the rest of the edge handles [`Frame`]s.
pub fn frame_from_pb(frame: pb::RelayFrame) -> Option<Frame> {
    let kind = match pb::FrameKind::try_from(frame.kind).ok()? {
        pb::FrameKind::Audio => FrameKind::Audio,
        pb::FrameKind::Video => FrameKind::Video,
        pb::FrameKind::Script => FrameKind::Script,
        pb::FrameKind::Unspecified => return None,
    };
    let mut out = Frame::new(kind, frame.timestamp, frame.payload, frame.ingest_time_us);
    out.segment = frame.segment;
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn relay_frames_decode_to_the_frames_sent() {
        let payload = bytes::Bytes::from_static(&[0x17, 1, 0, 0, 0, 7]);
        let frame = frame_from_pb(pb::RelayFrame {
            kind: pb::FrameKind::Video as i32,
            timestamp: 1234,
            payload: payload.clone(),
            ingest_time_us: 99,
            segment: 42,
        })
        .unwrap();
        assert_eq!(
            frame.segment, 42,
            "the origin's segment mark survives the relay"
        );
        assert_eq!(
            (frame.kind, frame.timestamp, frame.ingest_us),
            (FrameKind::Video, 1234, 99)
        );
        assert!(frame.is_keyframe());
        assert_eq!(frame.payload, payload);
        let unknown = pb::RelayFrame {
            kind: 99,
            ..pb::RelayFrame::default()
        };
        assert!(frame_from_pb(unknown).is_none());
    }

    use bytes::Bytes;
    use corriente_media::FrameKind;

    use super::*;

    fn frame(kind: FrameKind, ts: u32, key: bool) -> Frame {
        let payload = match (kind, key) {
            (FrameKind::Video, true) => vec![0x17, 1, 0, 0, 0],
            (FrameKind::Video, false) => vec![0x27, 1, 0, 0, 0],
            _ => vec![0xaf, 1, 0],
        };
        Frame::new(kind, ts, Bytes::from(payload), 0)
    }

    #[test]
    fn timestamps_keep_growing_across_an_upstream_switch() {
        let mut t = Timeline::default();
        assert_eq!(
            t.map(&frame(FrameKind::Video, 5000, true)),
            5000,
            "first upstream passes through"
        );
        assert_eq!(t.map(&frame(FrameKind::Audio, 5020, false)), 5020);
        t.switch_upstream();
        // The new origin's stream starts near zero; config frames come first.
        let config = Frame::new(
            FrameKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0]),
            0,
        );
        assert_eq!(t.map(&config), 5020);
        assert_eq!(t.map(&frame(FrameKind::Video, 40, true)), 5120);
        assert_eq!(t.map(&frame(FrameKind::Audio, 45, false)), 5125);
        assert_eq!(t.map(&frame(FrameKind::Video, 73, false)), 5153);
    }
}
