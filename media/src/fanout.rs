//! Direct fan-out: each batch is written straight to the sockets of caught-up viewers by a few
//! shard tasks per stream, so a viewer costs one vectored write per batch and nothing else: no
//! task wake-up, no channel, no copy, no reference count touched (the write borrows the
//! batch's buffers), no readiness bookkeeping (the shard never waits on a socket). This is the
//! hot path of an edge.
//!
//! A viewer whose socket cannot take a batch right away gets the rest queued in its backlog
//! (references to the shared buffers) and its own connection task is woken to drain it with
//! awaited writes; while the backlog is non-empty the shard only appends to it, and once it is
//! empty the shard writes directly again. The backlog is bounded: past it the viewer skips to
//! the next keyframe (re-sent configuration first, when it changed), and one that keeps
//! skipping is cut off — the same policy as [`crate::feed`], counted by the same [`crate::output::SkipCounter`].
//!
//! Writes never interleave: the shard writes only when the backlog is empty and the connection
//! task only when it is not, both under the sink's lock.

use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::io::{Format, OutQueue, segment_bytes};
use crate::metrics::{self, Protocol};
use crate::output::{Batch, FeedEnd, LagPolicy, Segment, SkipCounter, chunk_head};
use crate::ring::{RecvError, RingReceiver};

/// Most bytes a viewer's backlog may reference before it skips to the next keyframe. Small:
/// the kernel's send buffer does the real buffering, and a stalled viewer keeps what its
/// backlog references alive after the hub moved on.
pub const MAX_BACKLOG: usize = 64 << 10;

/// How a sink frames what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Pre-chunked RTMP messages.
    Rtmp,
    /// FLV tags in HTTP/1.1 chunked transfer encoding.
    FlvChunked,
    /// FLV tags as they are (HTTP/1.0, close-delimited).
    Flv,
}

static CRLF: Bytes = Bytes::from_static(b"\r\n");
static EMPTY: Bytes = Bytes::new();

/// Up to six buffers for one write, without allocating.
struct Parts {
    bufs: [Bytes; 6],
    len: usize,
}

impl Parts {
    fn new() -> Self {
        Self {
            bufs: Default::default(),
            len: 0,
        }
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() && self.len < self.bufs.len() {
            self.bufs[self.len] = b;
            self.len += 1;
        }
    }

    fn bytes(&self) -> usize {
        self.bufs[..self.len].iter().map(Bytes::len).sum()
    }

    /// Adds the bytes of `segment` framed for `wire`.
    fn add(&mut self, segment: &Segment, wire: Wire) {
        match wire {
            Wire::Rtmp => self.push(segment_bytes(segment, Format::Rtmp)),
            Wire::Flv => self.push(segment_bytes(segment, Format::Flv)),
            Wire::FlvChunked => {
                let data = segment_bytes(segment, Format::Flv);
                if data.is_empty() {
                    return;
                }
                let head = match segment {
                    Segment::Batch { batch, from: 0 } => batch.flv_chunk_head.clone(),
                    _ => chunk_head(data.len()),
                };
                self.push(head);
                self.push(data);
                self.push(CRLF.clone());
            }
        }
    }
}

/// What a sink's connection task should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Nothing left to write: wait for [`Sink::work`].
    Idle,
    /// The socket is full: wait until it is writable, then drain again.
    Blocked,
    /// The stream is over for this viewer (ended, or the viewer was too slow); the backlog is
    /// written.
    End(FeedEnd),
}

struct SinkInner {
    backlog: OutQueue,
    /// Bytes the backlog may reach before the viewer skips: the joining burst (configuration
    /// and cached GOP) plus [`MAX_BACKLOG`], down to [`MAX_BACKLOG`] once it drained.
    limit: usize,
    /// Batches before this one are already in the backlog or were written.
    next_seq: u64,
    skipping: bool,
    init_version: u64,
    skips: SkipCounter,
    end: Option<FeedEnd>,
    /// The viewer left or its socket failed: the shard drops the sink.
    detached: bool,
}

/// A viewer's socket as the fan-out sees it.
pub struct Sink {
    socket: Arc<TcpStream>,
    wire: Wire,
    protocol: Protocol,
    /// This protocol's bytes-out counter, looked up once rather than per write.
    bytes_out: prometheus::IntCounter,
    inner: Mutex<SinkInner>,
    wake: Notify,
}

impl Sink {
    pub fn new(
        socket: Arc<TcpStream>,
        wire: Wire,
        protocol: Protocol,
        policy: LagPolicy,
    ) -> Arc<Sink> {
        Arc::new(Sink {
            socket,
            wire,
            protocol,
            bytes_out: metrics::BYTES_OUT.with_label_values(&[protocol.as_str()]),
            inner: Mutex::new(SinkInner {
                backlog: OutQueue::default(),
                limit: MAX_BACKLOG,
                next_seq: 0,
                skipping: false,
                init_version: 0,
                skips: SkipCounter::new(policy),
                end: None,
                detached: false,
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SinkInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn socket(&self) -> &Arc<TcpStream> {
        &self.socket
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Queues bytes of the connection's own (RTMP answers, an HTTP response head) in order
    /// with the media. The caller drains.
    pub fn queue(&self, bytes: Bytes) {
        self.lock().backlog.push(bytes);
    }

    /// Waits until the fan-out handed work to the connection task (a backlog, or the end).
    pub async fn work(&self) {
        self.wake.notified().await;
    }

    /// Writes the backlog until it is empty or the socket is full. Call from the connection
    /// task only.
    pub fn drain(&self) -> io::Result<Drain> {
        self.drain_counted().map(|(drain, _)| drain)
    }

    /// [`Self::drain`], also returning how many bytes it wrote (whether a blocked viewer makes
    /// any progress at all).
    pub fn drain_counted(&self) -> io::Result<(Drain, usize)> {
        let mut inner = self.lock();
        let mut total = 0;
        loop {
            if inner.backlog.is_empty() {
                let drain = match inner.end {
                    Some(end) => Drain::End(end),
                    None => Drain::Idle,
                };
                return Ok((drain, total));
            }
            let written = {
                let mut slices = [IoSlice::new(&[]); 64];
                let n = inner.backlog.fill_slices(&mut slices);
                self.socket.try_write_vectored(&slices[..n])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    inner.backlog.advance(n);
                    if inner.backlog.len() <= MAX_BACKLOG {
                        inner.limit = MAX_BACKLOG;
                    }
                    self.bytes_out.inc_by(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Drain::Blocked, total));
                }
                Err(e) => {
                    inner.detached = true;
                    return Err(e);
                }
            }
        }
    }

    /// The connection is going away: the fan-out stops writing to it.
    pub fn detach(&self) {
        self.lock().detached = true;
    }

    /// Ends the stream for this viewer (after what is queued).
    fn finish(&self, end: FeedEnd) {
        let mut inner = self.lock();
        if inner.end.is_none() {
            inner.end = Some(end);
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Starts the sink with the hub's configuration and cached GOP.
    pub(crate) fn start(&self, prelude: &[Segment], init_version: u64, next_seq: u64) {
        let mut inner = self.lock();
        for segment in prelude {
            let mut parts = Parts::new();
            parts.add(segment, self.wire);
            for b in &parts.bufs[..parts.len] {
                inner.backlog.push(b.clone());
            }
        }
        inner.init_version = init_version;
        inner.next_seq = next_seq;
        inner.limit = inner.backlog.len() + MAX_BACKLOG;
        let work = !inner.backlog.is_empty();
        drop(inner);
        if work {
            self.wake.notify_one();
        }
    }

    /// Hands one batch to this viewer. False when the sink should be dropped.
    fn deliver(&self, batch: &Arc<Batch>) -> bool {
        let mut inner = self.lock();
        if inner.detached || inner.end.is_some() {
            return false;
        }
        if batch.seq < inner.next_seq {
            return true;
        }
        inner.next_seq = batch.seq + 1;
        if !inner.skipping && inner.backlog.is_empty() {
            inner.init_version = batch.init.version;
            return self.write_batch(inner, batch);
        }
        let mut parts = Parts::new();
        if inner.skipping {
            let Some(from) = batch.first_sync_point() else {
                metrics::FRAMES_DROPPED
                    .with_label_values(&[self.protocol.as_str(), "lagging"])
                    .inc_by(batch.frames.len() as u64);
                return true;
            };
            metrics::FRAMES_DROPPED
                .with_label_values(&[self.protocol.as_str(), "lagging"])
                .inc_by(from as u64);
            inner.skipping = false;
            if batch.init.version != inner.init_version && !batch.init.is_empty() {
                parts.add(&Segment::Init(batch.init.clone()), self.wire);
            }
            parts.add(
                &Segment::Batch {
                    batch: batch.clone(),
                    from,
                },
                self.wire,
            );
        } else {
            parts.add(
                &Segment::Batch {
                    batch: batch.clone(),
                    from: 0,
                },
                self.wire,
            );
        }
        inner.init_version = batch.init.version;
        let total = parts.bytes();
        if total == 0 {
            return true;
        }
        if !inner.backlog.is_empty() {
            if inner.backlog.len() + total > inner.limit {
                // Behind: stop appending; resume at the next keyframe.
                if inner.skips.skipped(self.protocol) {
                    inner.end = Some(FeedEnd::TooSlow);
                    drop(inner);
                    self.wake.notify_one();
                    return false;
                }
                inner.skipping = true;
                return true;
            }
            for b in &parts.bufs[..parts.len] {
                inner.backlog.push(b.clone());
            }
            return true;
        }
        let slices: [IoSlice<'_>; 6] = std::array::from_fn(|i| IoSlice::new(&parts.bufs[i]));
        let Ok(written) = self.send(&slices[..parts.len]) else {
            return self.failed(inner);
        };
        self.bytes_out.inc_by(written as u64);
        if written < total {
            self.queue_rest(inner, &parts.bufs[..parts.len], written);
        }
        true
    }

    /// One write from a shard: straight to the socket, not through Tokio's readiness
    /// (`try_write_vectored` checks it and clears it on a full socket, which showed at 5-6% of
    /// the edge in `perf`), as the shard never waits on readiness. After a full socket the
    /// connection task's first `writable` may see stale readiness and try once more before it
    /// waits. A full socket is zero bytes written.
    fn send(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match socket2::SockRef::from(&*self.socket).send_vectored(slices) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// A write failed: the shard drops the sink, and the connection task finds out on its next
    /// read or write.
    fn failed(&self, mut inner: MutexGuard<'_, SinkInner>) -> bool {
        inner.detached = true;
        drop(inner);
        self.wake.notify_one();
        false
    }

    /// The socket took only `written` bytes of `bufs` (what was written, in order): the rest
    /// goes to the backlog, as shared buffers, and the connection task drains it.
    fn queue_rest<'a>(
        &self,
        mut inner: MutexGuard<'_, SinkInner>,
        bufs: impl IntoIterator<Item = &'a Bytes>,
        written: usize,
    ) {
        metrics::FANOUT_BACKLOGS
            .with_label_values(&[self.protocol.as_str()])
            .inc();
        let mut skip = written;
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            inner.backlog.push(b.slice(skip..));
            skip = 0;
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Writes a whole batch to a caught-up viewer, the hot path: straight from the batch's
    /// buffers, borrowed (cloning them would touch their reference counts, shared with every
    /// other viewer and shard, twice per viewer per batch). What the socket does not take is
    /// queued as shared buffers (cut from the same ones) for the connection task.
    fn write_batch(&self, inner: MutexGuard<'_, SinkInner>, batch: &Batch) -> bool {
        let bufs: [&Bytes; 3] = match self.wire {
            Wire::Rtmp => [&batch.rtmp, &EMPTY, &EMPTY],
            Wire::Flv => [&batch.flv, &EMPTY, &EMPTY],
            Wire::FlvChunked if batch.flv.is_empty() => return true,
            Wire::FlvChunked => [&batch.flv_chunk_head, &batch.flv, &CRLF],
        };
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return true;
        }
        let Ok(written) = self.send(&bufs.map(|b| IoSlice::new(b))) else {
            return self.failed(inner);
        };
        self.bytes_out.inc_by(written as u64);
        if written < total {
            self.queue_rest(inner, bufs, written);
        }
        true
    }

    fn lagged(&self) {
        let mut inner = self.lock();
        if inner.end.is_some() || inner.skipping {
            return;
        }
        if inner.skips.skipped(self.protocol) {
            inner.end = Some(FeedEnd::TooSlow);
            drop(inner);
            self.wake.notify_one();
            return;
        }
        inner.skipping = true;
    }
}

/// Viewers per shard before another shard (task) is started, up to one per core.
const SINKS_PER_SHARD: usize = 128;

/// The shards of one hub: sinks spread over up to one task per core, so a popular stream's
/// writes use every core.
pub(crate) struct Fanout {
    shards: Vec<Arc<Mutex<Vec<Arc<Sink>>>>>,
    next: usize,
    sinks: usize,
    max_shards: usize,
    end_reason: Arc<dyn Fn() -> FeedEnd + Send + Sync>,
}

impl Fanout {
    pub(crate) fn new(end_reason: Arc<dyn Fn() -> FeedEnd + Send + Sync>) -> Fanout {
        Fanout {
            shards: Vec::new(),
            next: 0,
            sinks: 0,
            max_shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            end_reason,
        }
    }

    /// Adds a sink, starting a shard task (with a receiver from `subscribe`) when the current
    /// ones are full.
    pub(crate) fn add(&mut self, sink: Arc<Sink>, subscribe: impl FnOnce() -> RingReceiver) {
        self.sinks += 1;
        let wanted = (1 + self.sinks / SINKS_PER_SHARD).min(self.max_shards);
        if self.shards.len() < wanted {
            let sinks: Arc<Mutex<Vec<Arc<Sink>>>> = Arc::default();
            tokio::spawn(run_shard(
                sinks.clone(),
                subscribe(),
                self.end_reason.clone(),
            ));
            self.shards.push(sinks);
        }
        self.next = (self.next + 1) % self.shards.len();
        self.shards[self.next]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sink);
    }

    pub(crate) fn removed(&mut self) {
        self.sinks = self.sinks.saturating_sub(1);
    }
}

async fn run_shard(
    sinks: Arc<Mutex<Vec<Arc<Sink>>>>,
    mut rx: RingReceiver,
    end_reason: Arc<dyn Fn() -> FeedEnd + Send + Sync>,
) {
    loop {
        match rx.recv().await {
            Ok(batch) => {
                let mut sinks = sinks.lock().unwrap_or_else(|p| p.into_inner());
                sinks.retain(|sink| sink.deliver(&batch));
            }
            Err(RecvError::Lagged(_)) => {
                // This shard fell behind the ring (the node is overloaded): its viewers
                // missed batches and resume at the next keyframe.
                let sinks = sinks.lock().unwrap_or_else(|p| p.into_inner());
                for sink in sinks.iter() {
                    sink.lagged();
                }
            }
            Err(RecvError::Closed) => {
                let end = end_reason();
                let sinks = std::mem::take(&mut *sinks.lock().unwrap_or_else(|p| p.into_inner()));
                for sink in sinks {
                    sink.finish(end);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::frame::{Frame, FrameKind};
    use crate::hub::{HubConfig, spawn_hub};
    use crate::mux::Outputs;
    use corriente_core::StreamKey;

    fn frame(ts: u32, key: bool, size: usize) -> Frame {
        let mut payload = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        payload.resize(size, 7);
        Frame::new(FrameKind::Video, ts, Bytes::from(payload), 0)
    }

    /// A connected pair: the server side shared as a sink's socket, the client side to read.
    async fn pair(client_rcvbuf: Option<u32>) -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = client_rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    fn hub_config() -> HubConfig {
        HubConfig {
            outputs: Outputs::viewers(4096),
            ..HubConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caught_up_viewers_are_written_by_the_shards() {
        let (hub, mut writer) = spawn_hub(StreamKey::new("live", "a").unwrap(), hub_config());
        writer.push(frame(0, true, 100));
        let (server, mut client) = pair(None).await;
        let sink = Sink::new(server, Wire::Flv, Protocol::HttpFlv, LagPolicy::default());
        let attachment = hub.attach(&sink).unwrap();
        // The cached GOP is the connection task's to write.
        assert_eq!(sink.drain().unwrap(), Drain::Idle);
        let mut got = vec![0u8; 11 + 100 + 4];
        client.read_exact(&mut got).await.unwrap();
        // Live frames go out without the connection task.
        writer.push(frame(33, false, 50));
        let mut live = vec![0u8; 11 + 50 + 4];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut live))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&live[4..7], &[0, 0, 33], "timestamp of the live tag");
        assert_eq!(hub.subscribers(), 1);
        drop(attachment);
        assert_eq!(hub.subscribers(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_viewer_that_stops_reading_skips_then_is_cut_off() {
        let (hub, mut writer) = spawn_hub(StreamKey::new("live", "a").unwrap(), hub_config());
        let (server, _client) = pair(Some(4096)).await;
        let _ = socket2::SockRef::from(&*server).set_send_buffer_size(4096);
        let policy = LagPolicy {
            max_skips: 2,
            window: Duration::from_secs(60),
        };
        let sink = Sink::new(server, Wire::Rtmp, Protocol::Rtmp, policy);
        let _attachment = hub.attach(&sink).unwrap();
        // Far more than the socket buffers and the backlog take, in GOPs of ten frames.
        for i in 0..400u32 {
            writer.push(frame(i * 33, i % 10 == 0, 16 << 10));
            tokio::task::yield_now().await;
        }
        // The shards stop taking batches for it and finally cut it off (the connection task
        // would see the end once its backlog is written, which it never is here).
        for _ in 0..100 {
            if sink.lock().end.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inner = sink.lock();
        assert!(
            inner.backlog.len() <= inner.limit + (16 << 10) + 64,
            "backlog stays bounded"
        );
        assert_eq!(inner.end, Some(FeedEnd::TooSlow));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_end_of_the_stream_reaches_the_connection_task() {
        let (hub, mut writer) = spawn_hub(StreamKey::new("live", "a").unwrap(), hub_config());
        writer.push(frame(0, true, 10));
        let (server, _client) = pair(None).await;
        let sink = Sink::new(server, Wire::Rtmp, Protocol::Rtmp, LagPolicy::default());
        let _attachment = hub.attach(&sink).unwrap();
        assert_eq!(sink.drain().unwrap(), Drain::Idle);
        writer.finish(crate::EndReason::Unpublished);
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                sink.work().await;
                if let Drain::End(end) = sink.drain().unwrap() {
                    return end;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(end, FeedEnd::Ended(crate::EndReason::Unpublished));
    }
}
