//! A subscriber's view of a hub: a stream of segments (configuration, then batches), with the
//! slow-subscriber policy.
//!
//! A feed that falls further behind than the hub's broadcast ring has lost frames it cannot
//! get back. It then jumps to the live tail and skips everything up to the next keyframe (or
//! the next audio frame of an audio-only stream), re-sending the configuration first when it
//! changed meanwhile, so what the viewer receives stays decodable. A feed that has to skip too
//! often is cut off: it is not keeping up, and serving it only wastes the node.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio_util::sync::ReusableBoxFuture;

use crate::metrics::{self, Protocol};
use crate::output::{
    Batch, EndReason, FeedEnd, LagPolicy, Segment, SkipCounter, Source, TrackFlags,
};
use crate::ring::{RecvError, RingReceiver};

type Recv = (Result<Arc<Batch>, RecvError>, RingReceiver);

async fn recv(mut rx: RingReceiver) -> Recv {
    let result = rx.recv().await;
    (result, rx)
}

/// A subscription to a hub. Yields [`Segment`]s; after the last, [`Feed::end`] says why.
pub struct Feed {
    source: Arc<dyn Source>,
    recv: ReusableBoxFuture<'static, Recv>,
    ready: VecDeque<Segment>,
    init_version: u64,
    skipping: bool,
    skips: SkipCounter,
    tracks: TrackFlags,
    end: Option<FeedEnd>,
    protocol: Protocol,
}

impl Feed {
    pub(crate) fn new(
        source: Arc<dyn Source>,
        rx: RingReceiver,
        prelude: Vec<Segment>,
        init_version: u64,
        tracks: TrackFlags,
        policy: LagPolicy,
        protocol: Protocol,
    ) -> Self {
        metrics::VIEWERS
            .with_label_values(&[protocol.as_str()])
            .inc();
        Self {
            source,
            recv: ReusableBoxFuture::new(recv(rx)),
            ready: prelude.into(),
            init_version,
            skipping: false,
            skips: SkipCounter::new(policy),
            tracks,
            end: None,
            protocol,
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Tracks the stream had when the feed started (for the FLV header).
    pub fn tracks(&self) -> TrackFlags {
        self.tracks
    }

    /// Why the feed ended, once it has.
    pub fn end(&self) -> Option<FeedEnd> {
        self.end
    }

    fn accept(&mut self, batch: Arc<Batch>) {
        if !self.skipping {
            self.init_version = batch.init.version;
            self.ready.push_back(Segment::Batch { batch, from: 0 });
            return;
        }
        let Some(from) = batch.first_sync_point() else {
            metrics::FRAMES_DROPPED
                .with_label_values(&[self.protocol.as_str(), "lagging"])
                .inc_by(batch.frames.len() as u64);
            return;
        };
        metrics::FRAMES_DROPPED
            .with_label_values(&[self.protocol.as_str(), "lagging"])
            .inc_by(from as u64);
        self.skipping = false;
        if batch.init.version != self.init_version && !batch.init.is_empty() {
            self.ready.push_back(Segment::Init(batch.init.clone()));
        }
        self.init_version = batch.init.version;
        self.ready.push_back(Segment::Batch { batch, from });
    }
}

impl Stream for Feed {
    type Item = Segment;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Segment>> {
        let this = &mut *self;
        loop {
            if let Some(segment) = this.ready.pop_front() {
                return Poll::Ready(Some(segment));
            }
            if this.end.is_some() {
                return Poll::Ready(None);
            }
            let (result, rx) = std::task::ready!(this.recv.poll(cx));
            match result {
                Ok(batch) => {
                    this.recv.set(recv(rx));
                    this.accept(batch);
                }
                Err(RecvError::Lagged(_)) => {
                    if this.skips.skipped(this.protocol) {
                        this.end = Some(FeedEnd::TooSlow);
                        continue;
                    }
                    // Jump to the live tail: what is still in the ring is already late.
                    this.recv.set(recv(rx.resubscribe()));
                    this.skipping = true;
                }
                Err(RecvError::Closed) => {
                    let reason = this.source.end_reason().unwrap_or(EndReason::Unpublished);
                    this.end = Some(FeedEnd::Ended(reason));
                }
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.source.subscriber_left();
        metrics::VIEWERS
            .with_label_values(&[self.protocol.as_str()])
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::{FutureExt, StreamExt};

    use super::*;
    use crate::frame::{Frame, FrameKind};
    use crate::hub::{HubConfig, spawn_hub};
    use corriente_core::StreamKey;

    fn video(ts: u32, key: bool) -> Frame {
        let first = if key { 0x17 } else { 0x27 };
        Frame::new(
            FrameKind::Video,
            ts,
            Bytes::from(vec![first, 1, 0, 0, 0, 9]),
            0,
        )
    }

    fn drain(feed: &mut Feed) -> Vec<Segment> {
        let mut out = Vec::new();
        while let Some(Some(s)) = feed.next().now_or_never() {
            out.push(s);
        }
        out
    }

    #[tokio::test]
    async fn a_lagging_feed_skips_to_the_next_keyframe() {
        let config = HubConfig {
            ring_capacity: 4,
            ..HubConfig::default()
        };
        let (hub, mut writer) = spawn_hub(StreamKey::new("live", "a").unwrap(), config);
        writer.push(Frame::new(
            FrameKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0]),
            0,
        ));
        writer.push(video(0, true));
        let mut feed = hub.subscribe(LagPolicy::default(), Protocol::Rtmp).unwrap();
        assert_eq!(drain(&mut feed).len(), 2, "init and the keyframe");
        // Ten frames while the feed is not reading: the ring of four overflows.
        for i in 1..=10 {
            writer.push(video(i * 33, false));
        }
        // Nothing decodable arrives until the next keyframe.
        assert!(drain(&mut feed).is_empty());
        writer.push(video(400, false));
        assert!(drain(&mut feed).is_empty());
        writer.push(video(433, true));
        writer.push(video(466, false));
        let segments = drain(&mut feed);
        let ts: Vec<u32> = segments
            .iter()
            .flat_map(|s| match s {
                Segment::Batch { batch, from } => {
                    batch.frames[*from..].iter().map(|f| f.timestamp).collect()
                }
                Segment::Init(_) => vec![],
            })
            .collect();
        assert_eq!(ts, vec![433, 466]);
        assert!(feed.end().is_none());
    }

    #[tokio::test]
    async fn a_feed_that_keeps_lagging_is_cut_off() {
        let config = HubConfig {
            ring_capacity: 2,
            ..HubConfig::default()
        };
        let (hub, mut writer) = spawn_hub(StreamKey::new("live", "a").unwrap(), config);
        let policy = LagPolicy {
            max_skips: 2,
            window: Duration::from_secs(60),
        };
        let mut feed = hub.subscribe(policy, Protocol::Rtmp).unwrap();
        for round in 0..3 {
            for i in 0..5 {
                writer.push(video(round * 1000 + i * 33, i == 0));
            }
            drain(&mut feed);
        }
        assert_eq!(feed.end(), Some(FeedEnd::TooSlow));
        assert!(feed.next().await.is_none());
        drop(feed);
        assert_eq!(hub.subscribers(), 0);
    }
}
