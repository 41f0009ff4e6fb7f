//! The streams this origin owns: claimed through the control plane, held in a local table for
//! the relay, renewed by the membership heartbeat, and released when the publisher stops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corriente_cluster::{
    ControlClient, ControlError, ForwardSource, ForwardTarget, HlsSequence, OwnedStream,
    PublishDecision, StreamClaim,
};
use corriente_media::frame::unix_micros;
use corriente_media::segment::SegmentMarker;
use corriente_media::{EndReason, Frame, Hub, HubConfig, HubWriter, StreamKey, spawn_hub};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::forward::{ForwardSettings, StreamForwards};
use crate::metrics;
use crate::record::{self, RecordSettings};

/// What fraction of the lease TTL after sending its last successful renewal an origin keeps
/// serving a stream. The registry's lease runs a whole TTL from when that renewal *arrived*,
/// so the origin has stopped before anyone else can claim the name as long as its clock runs
/// no more than 25% slower than Redis's (real clocks differ by parts per million).
pub const FENCE_FRACTION: f64 = 0.8;

/// A stream's lease as this origin sees it: when it was last renewed (the send time of the
/// renewing heartbeat, or of the claim), on a monotonic clock. Shared with the relay streams
/// serving it, which check it before every segment.
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    renewed_ms: AtomicU64,
    ttl_ms: AtomicU64,
    fenced: AtomicBool,
}

impl Lease {
    fn new(renewed: Instant, ttl: Duration) -> Arc<Lease> {
        Arc::new(Lease {
            base: renewed,
            renewed_ms: AtomicU64::new(0),
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            fenced: AtomicBool::new(false),
        })
    }

    fn renew(&self, sent_at: Instant, ttl: Duration) {
        if self.fenced.load(Ordering::Relaxed) {
            return;
        }
        let at = sent_at.saturating_duration_since(self.base).as_millis() as u64;
        self.renewed_ms.fetch_max(at, Ordering::Relaxed);
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    /// How long after its last renewal the stream is served.
    pub fn serve_for(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed)).mul_f64(FENCE_FRACTION)
    }

    /// True while this origin may serve the stream: renewed within [`Self::serve_for`], and
    /// not fenced.
    pub fn valid(&self) -> bool {
        if self.fenced.load(Ordering::Relaxed) {
            return false;
        }
        let renewed = self.base + Duration::from_millis(self.renewed_ms.load(Ordering::Relaxed));
        Instant::now() < renewed + self.serve_for()
    }

    fn fence(&self) -> bool {
        !self.fenced.swap(true, Ordering::Relaxed)
    }
}

/// A stream published here.
struct LiveStream {
    hub: Hub,
    epoch: u64,
    publisher_addr: String,
    started_at_ms: u64,
    lease: Arc<Lease>,
    /// Cancelled when the stream must stop here: another origin owns it now, or this origin
    /// could not renew its lease in time (`self_fenced` says which).
    fenced: CancellationToken,
    self_fenced: Arc<AtomicBool>,
    /// Its forwards (restreaming); they stop when this is dropped or the stream is fenced.
    forwards: StreamForwards,
    /// Its HLS numbering: the next number the marker will use, shared with it, and the
    /// publication's discontinuity sequence number, for heartbeats.
    hls_next: Arc<std::sync::atomic::AtomicU64>,
    hls_discontinuity: u64,
}

enum Slot {
    /// A publisher asked for the name and the claim is in flight.
    Claiming,
    Live(Box<LiveStream>),
}

/// Why a publish was refused. Each maps to an RTMP status and a metrics reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishRefusal {
    #[error("stream {0} is already being published")]
    AlreadyPublishing(StreamKey),
    #[error("cannot register stream {key}: {reason}; try again shortly")]
    ControlPlane { key: StreamKey, reason: String },
    #[error("this origin is shutting down; reconnect to publish elsewhere")]
    Draining,
}

impl PublishRefusal {
    /// RTMP status code sent to the encoder.
    pub fn code(&self) -> &'static str {
        match self {
            PublishRefusal::AlreadyPublishing(_) => "NetStream.Publish.BadName",
            PublishRefusal::ControlPlane { .. } | PublishRefusal::Draining => {
                "NetStream.Publish.Failed"
            }
        }
    }

    /// Bounded reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishRefusal::AlreadyPublishing(_) => "already_publishing",
            PublishRefusal::ControlPlane { .. } => "control_plane_unavailable",
            PublishRefusal::Draining => "draining",
        }
    }
}

/// The local stream table.
pub struct Streams {
    map: Mutex<HashMap<StreamKey, Slot>>,
    control: ControlClient,
    node_id: String,
    relay_addr: String,
    hub_config: HubConfig,
    /// HLS segment target: where the origin marks segments for every edge.
    hls_segment: Duration,
    forward: Arc<ForwardSettings>,
    record: Option<Arc<RecordSettings>>,
    draining: CancellationToken,
    /// The lease TTL the control plane last granted.
    lease_ttl_ms: AtomicU64,
}

impl Streams {
    pub fn new(
        control: ControlClient,
        node_id: String,
        relay_addr: String,
        hub_config: HubConfig,
        hls_segment: Duration,
        forward: Arc<ForwardSettings>,
        record: Option<Arc<RecordSettings>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            control,
            node_id,
            relay_addr,
            hub_config,
            hls_segment,
            forward,
            record,
            draining: CancellationToken::new(),
            lease_ttl_ms: AtomicU64::new(6000),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StreamKey, Slot>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses new publishes from now on.
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    /// What this origin records, and where; `None` without `--record-dir`.
    pub(crate) fn record_settings(&self) -> Option<Arc<RecordSettings>> {
        self.record.clone()
    }

    /// Asks the control plane whether a publisher at `client_ip` may publish `name` (the
    /// stream key field as sent) under `app`, and under which public name; `recheck` when
    /// the publication is live already.
    pub async fn authorize_publish(
        &self,
        app: &str,
        name: &str,
        client_ip: std::net::IpAddr,
        recheck: bool,
    ) -> Result<PublishDecision, ControlError> {
        self.control
            .authorize_publish(app, name, &client_ip.to_string(), &self.node_id, recheck)
            .await
    }

    /// Claims `key` for a publisher at `peer`: locally first (one publisher per name on this
    /// node), then cluster-wide through the control plane. Once it is ours, its forwards start:
    /// the configured ones, `hook_forwards` (the `on_publish` answer's) and the admin API's;
    /// and its recording, when its application is recorded or `hook_record` says so.
    pub async fn start_publish(
        self: &Arc<Self>,
        key: StreamKey,
        peer: String,
        hook_forwards: Vec<String>,
        hook_record: Option<bool>,
    ) -> Result<Publication, PublishRefusal> {
        if self.draining.is_cancelled() {
            return Err(PublishRefusal::Draining);
        }
        {
            let mut map = self.lock();
            if map.contains_key(&key) {
                return Err(PublishRefusal::AlreadyPublishing(key));
            }
            map.insert(key.clone(), Slot::Claiming);
        }
        let claim = StreamClaim {
            key: key.clone(),
            node_id: self.node_id.clone(),
            relay_addr: self.relay_addr.clone(),
            media: Default::default(),
            publisher_addr: peer.clone(),
        };
        // The claim starts the lease when the registry receives it: after this.
        let claimed_at = Instant::now();
        let (record, api_forwards) = match self.control.register_stream(&claim).await {
            Ok(claimed) => claimed,
            Err(e) => {
                self.lock().remove(&key);
                return Err(match e {
                    ControlError::AlreadyPublished(_) => PublishRefusal::AlreadyPublishing(key),
                    other => PublishRefusal::ControlPlane {
                        key,
                        reason: other.to_string(),
                    },
                });
            }
        };
        let (hub, writer) = spawn_hub(key.clone(), self.hub_config);
        let forwards = StreamForwards::new(key.clone(), hub.clone(), self.forward.clone());
        forwards.set(ForwardSource::Config, self.forward.configured(&key));
        forwards.set(
            ForwardSource::Webhook,
            hook_forwards
                .into_iter()
                .map(|url| ForwardTarget::derived(ForwardSource::Webhook, url))
                .collect(),
        );
        forwards.set(ForwardSource::Api, api_forwards);
        let started_at_ms = unix_micros() / 1000;
        let recorded = match (&self.record, hook_record) {
            (Some(settings), choice) => choice.unwrap_or_else(|| settings.records(&key)),
            (None, Some(true)) => {
                warn!(stream = %key, "the publish hook asked to record this stream, but this origin has no --record-dir");
                false
            }
            (None, _) => false,
        };
        if let Some(settings) = self.record.as_ref().filter(|_| recorded) {
            record::spawn(
                settings.clone(),
                key.clone(),
                record.epoch,
                started_at_ms,
                hub.clone(),
            );
        }
        let fenced = CancellationToken::new();
        let self_fenced = Arc::new(AtomicBool::new(false));
        let ttl = Duration::from_millis(self.lease_ttl_ms.load(Ordering::Relaxed));
        let first_msn = if record.hls.first_msn > 0 {
            record.hls.first_msn
        } else {
            // A control plane that does not number HLS (an older one): a fresh numbering.
            HlsSequence::after(None, started_at_ms, ttl).first_msn
        };
        let marker = SegmentMarker::new(self.hls_segment, first_msn);
        self.lock().insert(
            key.clone(),
            Slot::Live(Box::new(LiveStream {
                hub,
                epoch: record.epoch,
                publisher_addr: peer,
                started_at_ms,
                lease: Lease::new(claimed_at, ttl),
                fenced: fenced.clone(),
                self_fenced: self_fenced.clone(),
                forwards,
                hls_next: marker.next(),
                hls_discontinuity: record.hls.discontinuity,
            })),
        );
        metrics::PUBLISHERS.inc();
        corriente_media::metrics::STREAMS_ACTIVE
            .with_label_values(&["origin"])
            .inc();
        Ok(Publication {
            key,
            epoch: record.epoch,
            marker,
            writer: Some(writer),
            fenced,
            self_fenced,
            streams: self.clone(),
        })
    }

    /// The hub, epoch and lease of a stream this origin may serve now (its lease renewed in
    /// time), for the relay.
    pub fn lookup(&self, key: &StreamKey) -> Option<(Hub, u64, Arc<Lease>)> {
        match self.lock().get(key) {
            Some(Slot::Live(s)) if s.lease.valid() => {
                Some((s.hub.clone(), s.epoch, s.lease.clone()))
            }
            _ => None,
        }
    }

    /// Heartbeats sent at `sent_at` renewed `keys` for `ttl`.
    pub fn renewed(&self, keys: &[StreamKey], sent_at: Instant, ttl: Duration) {
        self.lease_ttl_ms
            .store(ttl.as_millis() as u64, Ordering::Relaxed);
        let map = self.lock();
        for key in keys {
            if let Some(Slot::Live(s)) = map.get(key) {
                s.lease.renew(sent_at, ttl);
            }
        }
    }

    /// Stops every stream whose lease this origin could not renew in time: it is no longer
    /// served to edges (the relay checks the lease too), its publisher is told to reconnect
    /// (through the load balancer, to a healthy origin), and it is no longer renewed. Returns
    /// how many it stopped.
    pub fn fence_expired(&self) -> usize {
        let map = self.lock();
        let mut stopped = 0;
        for (key, slot) in map.iter() {
            if let Slot::Live(s) = slot
                && !s.lease.valid()
                && s.lease.fence()
            {
                warn!(stream = %key, epoch = s.epoch, serve_for = ?s.lease.serve_for(), "self-fenced: the lease was not renewed in time (no contact with the control plane); stopping the stream here so that another origin can take it");
                metrics::SELF_FENCED.inc();
                s.self_fenced.store(true, Ordering::Relaxed);
                s.fenced.cancel();
                s.forwards.stop();
                stopped += 1;
            }
        }
        stopped
    }

    /// Live streams with their hubs, for stats.
    pub fn live(&self) -> Vec<(Hub, u64, String)> {
        self.lock()
            .values()
            .filter_map(|slot| match slot {
                Slot::Live(s) => Some((s.hub.clone(), s.epoch, s.publisher_addr.clone())),
                Slot::Claiming => None,
            })
            .collect()
    }

    /// The forwards of a stream published here, as they run now.
    pub fn forwards(&self, key: &StreamKey) -> Vec<corriente_cluster::ForwardStatus> {
        match self.lock().get(key) {
            Some(Slot::Live(s)) => s.forwards.statuses(),
            _ => Vec::new(),
        }
    }

    /// Whether this origin may serve `key` to edges now (its lease renewed in time).
    pub fn serving(&self, key: &StreamKey) -> bool {
        matches!(self.lock().get(key), Some(Slot::Live(s)) if s.lease.valid())
    }

    /// What the heartbeat renews.
    pub fn owned(&self) -> Vec<OwnedStream> {
        self.lock()
            .iter()
            .filter_map(|(key, slot)| match slot {
                // A fenced stream is not ours any more: never renewed again.
                Slot::Live(s) if s.fenced.is_cancelled() => None,
                Slot::Live(s) => Some(OwnedStream {
                    key: key.clone(),
                    epoch: s.epoch,
                    media: s.hub.media(),
                    publisher_addr: s.publisher_addr.clone(),
                    started_at_ms: s.started_at_ms,
                    forwards: s.forwards.statuses(),
                    hls: HlsSequence {
                        first_msn: s.hls_next.load(Ordering::Relaxed),
                        discontinuity: s.hls_discontinuity,
                    },
                }),
                Slot::Claiming => None,
            })
            .collect()
    }

    /// The destinations the admin API set for streams this origin owns (each list whole).
    pub fn api_forwards(&self, forwards: Vec<(StreamKey, Vec<ForwardTarget>)>) {
        let map = self.lock();
        for (key, targets) in forwards {
            if let Some(Slot::Live(s)) = map.get(&key)
                && !s.fenced.is_cancelled()
            {
                s.forwards.set(ForwardSource::Api, targets);
            }
        }
    }

    /// The control plane says these streams belong to another origin now.
    pub fn fence(&self, keys: &[StreamKey]) {
        let map = self.lock();
        for key in keys {
            if let Some(Slot::Live(s)) = map.get(key) {
                warn!(stream = %key, epoch = s.epoch, "fenced: another origin owns this stream now; stopping it here");
                s.lease.fence();
                s.fenced.cancel();
                s.forwards.stop();
            }
        }
    }

    fn remove(&self, key: &StreamKey, epoch: u64) {
        let mut map = self.lock();
        if matches!(map.get(key), Some(Slot::Live(s)) if s.epoch == epoch) {
            map.remove(key);
        }
    }
}

/// A publisher's hold on its stream. Ending it (or dropping it) ends the stream for every
/// subscriber and releases the name.
pub struct Publication {
    key: StreamKey,
    epoch: u64,
    /// Marks the frames that start HLS segments, for every edge alike.
    marker: SegmentMarker,
    writer: Option<HubWriter>,
    fenced: CancellationToken,
    self_fenced: Arc<AtomicBool>,
    streams: Arc<Streams>,
}

impl Publication {
    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Cancelled when the stream must stop here: taken over elsewhere, or its lease not
    /// renewed in time.
    pub fn fenced(&self) -> &CancellationToken {
        &self.fenced
    }

    /// True when this origin stopped the stream itself because it could not renew the lease.
    pub fn self_fenced(&self) -> bool {
        self.self_fenced.load(Ordering::Relaxed)
    }

    pub fn push(&mut self, mut frame: Frame) {
        self.marker.mark(&mut frame);
        if let Some(writer) = &mut self.writer {
            writer.push(frame);
        }
    }

    /// Frames pushed until [`Self::release`] arrived together: one batch (see
    /// [`HubWriter::hold`]).
    pub fn hold(&mut self) {
        if let Some(writer) = &mut self.writer {
            writer.hold();
        }
    }

    pub fn release(&mut self) {
        if let Some(writer) = &mut self.writer {
            writer.release();
        }
    }

    /// Ends the stream for its subscribers with `reason` and releases the name (unless it was
    /// fenced: then it is not ours to release).
    pub async fn end(mut self, reason: EndReason) {
        self.finish(reason);
        if reason != EndReason::Fenced {
            release(
                &self.streams.control,
                &self.key,
                &self.streams.node_id,
                self.epoch,
            )
            .await;
        }
    }

    fn finish(&mut self, reason: EndReason) {
        if let Some(writer) = self.writer.take() {
            writer.finish(reason);
            self.streams.remove(&self.key, self.epoch);
            metrics::PUBLISHERS.dec();
            corriente_media::metrics::STREAMS_ACTIVE
                .with_label_values(&["origin"])
                .dec();
            info!(stream = %self.key, epoch = self.epoch, reason = reason.as_str(), "stream ended");
        }
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.finish(EndReason::Unpublished);
            let (control, key, node, epoch) = (
                self.streams.control.clone(),
                self.key.clone(),
                self.streams.node_id.clone(),
                self.epoch,
            );
            tokio::spawn(async move { release(&control, &key, &node, epoch).await });
        }
    }
}

async fn release(control: &ControlClient, key: &StreamKey, node: &str, epoch: u64) {
    if let Err(e) = control.unregister_stream(key, node, epoch).await {
        // The lease expires by itself; this only makes the name free sooner.
        warn!(stream = %key, error = %e, "could not release the stream; its lease will expire");
    }
}
