//! The relay edges pull from: gRPC server streaming of one stream's frames, starting with its
//! configuration frames and cached GOP, then live. A pull is refused unless this origin owns
//! the stream under the epoch the edge asked for, so an edge never takes frames from an origin
//! that lost the stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use corriente_media::metrics::{BYTES_OUT, Protocol};
use corriente_media::{EndReason, Feed, FeedEnd, Frame, FrameKind, Segment, StreamKey};
use corriente_proto::relay::{self as pb, relay_message::Body};
use futures_util::Stream;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::OriginContext;
use crate::record::{self, ReadError};

pub(crate) struct RelayService {
    pub(crate) ctx: Arc<OriginContext>,
}

#[tonic::async_trait]
impl pb::relay_server::Relay for RelayService {
    type SubscribeStream = RelayStream;

    async fn owns(
        &self,
        request: Request<pb::OwnsRequest>,
    ) -> Result<Response<pb::OwnsResponse>, Status> {
        let request = request.into_inner();
        let key = StreamKey::new(&request.app, &request.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let owns = self
            .ctx
            .streams
            .lookup(&key)
            .is_some_and(|(_, epoch, _)| epoch == request.epoch);
        Ok(Response::new(pb::OwnsResponse { owns }))
    }

    async fn read_recording(
        &self,
        request: Request<pb::ReadRecordingRequest>,
    ) -> Result<Response<pb::ReadRecordingResponse>, Status> {
        let r = request.into_inner();
        let key =
            StreamKey::new(&r.app, &r.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let settings = self
            .ctx
            .streams
            .record_settings()
            .ok_or_else(|| Status::not_found("this origin records nothing"))?;
        let read = tokio::task::spawn_blocking(move || {
            record::read_range(&settings.dir, &key, &r.id, r.offset, r.length, &r.etag)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match read {
            Ok((data, size, etag)) => {
                BYTES_OUT
                    .with_label_values(&["relay"])
                    .inc_by(data.len() as u64);
                Ok(Response::new(pb::ReadRecordingResponse {
                    data: data.into(),
                    size,
                    etag,
                }))
            }
            Err(e @ ReadError::NotFound { .. }) => Err(Status::not_found(e.to_string())),
            Err(e @ ReadError::Changed(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ ReadError::Io(_)) => {
                warn!(error = %e, "a recording could not be read for an edge");
                Err(Status::internal(e.to_string()))
            }
        }
    }

    async fn delete_recording(
        &self,
        request: Request<pb::DeleteRecordingRequest>,
    ) -> Result<Response<pb::DeleteRecordingResponse>, Status> {
        let r = request.into_inner();
        let key =
            StreamKey::new(&r.app, &r.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(settings) = self.ctx.streams.record_settings() else {
            return Ok(Response::new(pb::DeleteRecordingResponse {
                deleted: false,
            }));
        };
        let deleted = tokio::task::spawn_blocking(move || record::delete(&settings, &key, &r.id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("deleting the recording failed: {e}")))?;
        Ok(Response::new(pb::DeleteRecordingResponse { deleted }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<RelayStream>, Status> {
        let span =
            corriente_proto::trace::server_span(&request, tracing::info_span!("relay.subscribe"));
        let _entered = span.enter();
        let request = request.into_inner();
        let key = StreamKey::new(&request.app, &request.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (hub, epoch, lease) = self.ctx.streams.lookup(&key).ok_or_else(|| {
            Status::not_found(format!("stream {key} is not published on this origin"))
        })?;
        if request.epoch != 0 && request.epoch != epoch {
            return Err(Status::failed_precondition(format!(
                "this origin holds {key} at epoch {epoch}, not {}",
                request.epoch
            )));
        }
        let feed = hub
            .subscribe(self.ctx.config.relay_lag, Protocol::Relay)
            .map_err(|e| Status::not_found(format!("stream {key}: {e}")))?;
        info!(stream = %key, epoch, edge = %request.edge_node, "relay pull started");
        Ok(Response::new(RelayStream {
            feed,
            queue: VecDeque::from([pb::RelayMessage {
                body: Some(Body::Start(pb::RelayStart {
                    epoch,
                    origin_node: self.ctx.node_id.clone(),
                })),
            }]),
            done: false,
            key,
            since: Instant::now(),
            lease,
        }))
    }
}

/// The response stream of one relay pull.
pub struct RelayStream {
    feed: Feed,
    queue: VecDeque<pb::RelayMessage>,
    done: bool,
    key: StreamKey,
    /// When the pull started: frames sent before are replayed from the cache, and carry no
    /// ingest time, so the edge's relay lag only measures live frames.
    since: Instant,
    /// The stream's lease here: once this origin may no longer serve it, the pull ends (as
    /// fenced) before another frame goes out, whatever the hub still holds.
    lease: std::sync::Arc<crate::streams::Lease>,
}

impl RelayStream {
    fn enqueue(&mut self, segment: Segment) {
        let replayed = match &segment {
            Segment::Init(_) => true,
            Segment::Batch { batch, .. } => batch.sent_at < self.since,
        };
        let mut bytes = 0u64;
        let mut push = |frame: &corriente_media::Frame| {
            bytes += frame.payload.len() as u64;
            let mut message = frame_to_pb(frame);
            if replayed {
                message.ingest_time_us = 0;
            }
            self.queue.push_back(pb::RelayMessage {
                body: Some(Body::Frame(message)),
            });
        };
        match &segment {
            Segment::Init(init) => init.frames().for_each(&mut push),
            Segment::Batch { batch, from } => batch.frames[*from..].iter().for_each(&mut push),
        }
        BYTES_OUT.with_label_values(&["relay"]).inc_by(bytes);
    }
}

impl Stream for RelayStream {
    type Item = Result<pb::RelayMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(message) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(message)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.feed).poll_next(cx) {
                Poll::Ready(Some(_)) if !this.lease.valid() => {
                    this.done = true;
                    info!(stream = %this.key, "relay pull ended: this origin no longer holds the stream's lease");
                    this.queue.push_back(pb::RelayMessage {
                        body: Some(Body::End(pb::RelayEnd {
                            reason: pb::EndReason::Fenced as i32,
                        })),
                    });
                }
                Poll::Ready(Some(segment)) => this.enqueue(segment),
                Poll::Ready(None) => {
                    this.done = true;
                    let reason = match this.feed.end() {
                        Some(FeedEnd::Ended(reason)) => end_reason_to_pb(reason),
                        Some(FeedEnd::TooSlow) => pb::EndReason::TooSlow,
                        None => end_reason_to_pb(EndReason::Unpublished),
                    };
                    info!(stream = %this.key, reason = reason.as_str_name(), "relay pull ended");
                    this.queue.push_back(pb::RelayMessage {
                        body: Some(Body::End(pb::RelayEnd {
                            reason: reason as i32,
                        })),
                    });
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A frame as the relay carries it. Prost types stop at the gRPC boundary: the rest of the
/// origin handles [`Frame`]s.
pub fn frame_to_pb(frame: &Frame) -> pb::RelayFrame {
    pb::RelayFrame {
        kind: match frame.kind {
            FrameKind::Audio => pb::FrameKind::Audio,
            FrameKind::Video => pb::FrameKind::Video,
            FrameKind::Script => pb::FrameKind::Script,
        } as i32,
        timestamp: frame.timestamp,
        payload: frame.payload.clone(),
        ingest_time_us: frame.ingest_us,
        segment: frame.segment,
    }
}

fn end_reason_to_pb(reason: EndReason) -> pb::EndReason {
    match reason {
        EndReason::Unpublished => pb::EndReason::Unpublished,
        EndReason::Fenced => pb::EndReason::Fenced,
        EndReason::Shutdown => pb::EndReason::Shutdown,
        EndReason::UpstreamLost => pb::EndReason::Unspecified,
    }
}
