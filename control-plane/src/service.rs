//! The control plane's gRPC service: a stateless translation of the control API onto a
//! [`Registry`]. Any number of replicas over one registry give the same answers.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use corriente_cluster::{PublishDecision, StreamClaim, StreamRecord, convert};
use corriente_core::StreamKey;
use corriente_proto::control as pb;
use corriente_proto::trace;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics;
use crate::probe::OwnerProbe;
use crate::publish_auth::{PublishAuthConfig, PublishAuthorizer, PublishRequest};
use crate::registry::{Registry, RegistryError};

/// Most recordings one origin may sync (a sync message is about 200 bytes per recording).
const MAX_SYNCED_RECORDINGS: usize = 10_000;

/// The control API over a registry.
pub struct ControlService<R> {
    registry: Arc<R>,
    probe: Arc<OwnerProbe>,
    publish_auth: PublishAuthorizer<R>,
}

impl<R: Registry> ControlService<R> {
    /// The service with publish authorization off.
    pub fn new(registry: Arc<R>, probe: Arc<OwnerProbe>) -> Self {
        let publish_auth = PublishAuthorizer::new(registry.clone(), PublishAuthConfig::default());
        Self {
            registry,
            probe,
            publish_auth,
        }
    }

    /// Decides publish requests with `config`.
    pub fn with_publish_auth(mut self, config: PublishAuthConfig) -> Self {
        self.publish_auth = PublishAuthorizer::new(self.registry.clone(), config);
        self
    }

    /// Claims a stream; when another node holds it, asks that node whether it still
    /// publishes it, and takes the stream over if it definitively does not (it denies, or its
    /// process is gone); otherwise the claim waits for the lease to run out.
    async fn claim(&self, claim: StreamClaim) -> Result<StreamRecord, RegistryError> {
        match self.registry.claim_stream(claim.clone()).await {
            Err(RegistryError::AlreadyOwned {
                owner,
                owner_epoch,
                owner_relay,
                ..
            }) if !self
                .probe
                .owner_alive(&owner_relay, &claim.key, owner_epoch)
                .await =>
            {
                let record = self
                    .registry
                    .takeover_stream(claim, &owner, owner_epoch)
                    .await?;
                metrics::TAKEOVERS.inc();
                warn!(stream = %record.key, from = %owner, from_epoch = owner_epoch, to = %record.node_id, epoch = record.epoch, "took the stream over: its owner no longer publishes it");
                Ok(record)
            }
            other => other,
        }
    }

    fn lease(&self) -> (u32, u32) {
        let ttl = self.registry.lease_ttl().as_millis() as u32;
        (ttl, (ttl / 3).max(100))
    }
}

fn status(e: RegistryError) -> Status {
    match e {
        RegistryError::AlreadyOwned { .. } => Status::already_exists(e.to_string()),
        RegistryError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

/// Counts a request and its outcome.
fn observe<T>(
    method: &'static str,
    started: Instant,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => "ok",
        Err(s) => metrics::code_name(s.code()),
    };
    metrics::REQUESTS.with_label_values(&[method, code]).inc();
    metrics::REQUEST_SECONDS
        .with_label_values(&[method])
        .observe(started.elapsed().as_secs_f64());
    result
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<R: Registry> pb::control_server::Control for ControlService<R> {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let node = convert::node_from_pb(request.into_inner().node)?;
            info!(node = %node.id, role = node.role.as_str(), relay = %node.relay_addr, "node registered");
            self.registry.register_node(node).await.map_err(status)?;
            let (lease_ttl_ms, heartbeat_interval_ms) = self.lease();
            Ok(Response::new(pb::RegisterNodeResponse {
                lease_ttl_ms,
                heartbeat_interval_ms,
            }))
        }
        .await;
        observe("register_node", started, result)
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let request = request.into_inner();
            let node = convert::node_from_pb(request.node)?;
            let streams = request
                .streams
                .into_iter()
                .map(convert::owned_from_pb)
                .collect::<Result<Vec<_>, _>>()?;
            let node_id = node.id.clone();
            let keys: Vec<StreamKey> = streams.iter().map(|s| s.key.clone()).collect();
            let lost = self
                .registry
                .heartbeat(node, streams)
                .await
                .map_err(status)?;
            for key in &lost {
                warn!(node = %node_id, stream = %key, "node lost a stream it still claims: fenced");
            }
            let renewed: Vec<StreamKey> = keys.into_iter().filter(|k| !lost.contains(k)).collect();
            // The heartbeat renewed the leases; destinations it cannot read now are sent with
            // the next one (the origin keeps what it runs meanwhile).
            let forwards = match self.registry.stream_forwards(&renewed).await {
                Ok(forwards) => renewed
                    .iter()
                    .zip(forwards)
                    .map(|(key, targets)| pb::StreamForwards {
                        key: Some(convert::key_to_pb(key)),
                        targets: targets.iter().map(convert::forward_target_to_pb).collect(),
                    })
                    .collect(),
                Err(e) => {
                    debug!(node = %node_id, error = %e, "cannot read the streams' forwards for this heartbeat");
                    Vec::new()
                }
            };
            let (lease_ttl_ms, heartbeat_interval_ms) = self.lease();
            Ok(Response::new(pb::HeartbeatResponse {
                lost: lost.iter().map(convert::key_to_pb).collect(),
                lease_ttl_ms,
                heartbeat_interval_ms,
                forwards,
            }))
        }
        .await;
        observe("heartbeat", started, result)
    }

    async fn register_stream(
        &self,
        request: Request<pb::RegisterStreamRequest>,
    ) -> Result<Response<pb::RegisterStreamResponse>, Status> {
        let started = Instant::now();
        let span = trace::server_span(&request, info_span!("control.register_stream"));
        let result = async {
            let claim = convert::claim_from_pb(request.into_inner())?;
            match self.claim(claim.clone()).await {
                Ok(record) => {
                    info!(stream = %record.key, node = %record.node_id, epoch = record.epoch, "stream registered");
                    // The claim stands; its destinations also come with every heartbeat.
                    let forwards = self
                        .registry
                        .stream_forwards(std::slice::from_ref(&record.key))
                        .await
                        .ok()
                        .and_then(|mut f| f.pop())
                        .unwrap_or_default();
                    Ok(Response::new(pb::RegisterStreamResponse {
                        stream: Some(convert::stream_to_pb(&record)),
                        lease_ttl_ms: self.lease().0,
                        forwards: forwards.iter().map(convert::forward_target_to_pb).collect(),
                    }))
                }
                Err(e) => {
                    info!(stream = %claim.key, node = %claim.node_id, error = %e, "stream registration refused");
                    Err(status(e))
                }
            }
        }
        .instrument(span)
        .await;
        observe("register_stream", started, result)
    }

    async fn unregister_stream(
        &self,
        request: Request<pb::UnregisterStreamRequest>,
    ) -> Result<Response<pb::UnregisterStreamResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let request = request.into_inner();
            let key = convert::key_from_pb(request.key)?;
            let released = self
                .registry
                .release_stream(&key, &request.node_id, request.epoch)
                .await
                .map_err(status)?;
            info!(stream = %key, node = %request.node_id, epoch = request.epoch, released, "stream unregistered");
            Ok(Response::new(pb::UnregisterStreamResponse { released }))
        }
        .await;
        observe("unregister_stream", started, result)
    }

    async fn lookup_stream(
        &self,
        request: Request<pb::LookupStreamRequest>,
    ) -> Result<Response<pb::LookupStreamResponse>, Status> {
        let started = Instant::now();
        let span = trace::server_span(&request, info_span!("control.lookup_stream"));
        let result = async {
            let key = convert::key_from_pb(request.into_inner().key)?;
            match self.registry.lookup_stream(&key).await.map_err(status)? {
                Some(record) => {
                    debug!(stream = %key, node = %record.node_id, "lookup");
                    Ok(Response::new(pb::LookupStreamResponse {
                        stream: Some(convert::stream_to_pb(&record)),
                    }))
                }
                None => Err(Status::not_found(format!("stream {key} is not live"))),
            }
        }
        .instrument(span)
        .await;
        observe("lookup_stream", started, result)
    }

    async fn list_streams(
        &self,
        _request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let streams = self.registry.list_streams().await.map_err(status)?;
            Ok(Response::new(pb::ListStreamsResponse {
                streams: streams.iter().map(convert::stream_to_pb).collect(),
            }))
        }
        .await;
        observe("list_streams", started, result)
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let nodes = self.registry.list_nodes().await.map_err(status)?;
            Ok(Response::new(pb::ListNodesResponse {
                nodes: nodes.iter().map(convert::node_to_pb).collect(),
            }))
        }
        .await;
        observe("list_nodes", started, result)
    }

    async fn authorize_publish(
        &self,
        request: Request<pb::AuthorizePublishRequest>,
    ) -> Result<Response<pb::AuthorizePublishResponse>, Status> {
        let started = Instant::now();
        let span = trace::server_span(&request, info_span!("control.authorize_publish"));
        let result = async {
            let r = request.into_inner();
            let decision = self
                .publish_auth
                .authorize(&PublishRequest {
                    app: r.app,
                    name: r.name,
                    client_ip: r.client_ip,
                    node_id: r.node_id,
                    recheck: r.recheck,
                })
                .await
                .map_err(status)?;
            Ok(Response::new(match decision {
                PublishDecision::Allowed {
                    stream,
                    credential,
                    forwards,
                    record,
                } => pb::AuthorizePublishResponse {
                    allowed: true,
                    stream: Some(convert::key_to_pb(&stream)),
                    credential: credential.as_str().to_owned(),
                    forwards,
                    record: match record {
                        Some(true) => pb::RecordChoice::On,
                        Some(false) => pb::RecordChoice::Off,
                        None => pb::RecordChoice::Unspecified,
                    } as i32,
                    ..Default::default()
                },
                PublishDecision::Refused { reason, message } => pb::AuthorizePublishResponse {
                    allowed: false,
                    reason: reason.as_str().to_owned(),
                    message,
                    ..Default::default()
                },
            }))
        }
        .instrument(span)
        .await;
        observe("authorize_publish", started, result)
    }

    async fn sync_recordings(
        &self,
        request: Request<pb::SyncRecordingsRequest>,
    ) -> Result<Response<pb::SyncRecordingsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let r = request.into_inner();
            if r.node_id.is_empty() {
                return Err(Status::invalid_argument("node id missing"));
            }
            if r.recordings.len() > MAX_SYNCED_RECORDINGS {
                return Err(Status::invalid_argument(format!(
                    "{} recordings in one sync; at most {MAX_SYNCED_RECORDINGS}",
                    r.recordings.len()
                )));
            }
            let recordings = r
                .recordings
                .into_iter()
                .map(|rec| {
                    convert::recording_from_pb(rec).map(|mut rec| {
                        // Entries are the sender's, whatever they say; addresses are never
                        // stored.
                        rec.node_id = r.node_id.clone();
                        rec.relay_addr.clear();
                        rec
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            debug!(node = %r.node_id, recordings = recordings.len(), "recordings synced");
            self.registry
                .sync_recordings(&r.node_id, recordings)
                .await
                .map_err(status)?;
            Ok(Response::new(pb::SyncRecordingsResponse {}))
        }
        .await;
        observe("sync_recordings", started, result)
    }

    async fn list_recordings(
        &self,
        request: Request<pb::ListRecordingsRequest>,
    ) -> Result<Response<pb::ListRecordingsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let r = request.into_inner();
            let key = r.key.map(|k| convert::key_from_pb(Some(k))).transpose()?;
            let id = (!r.id.is_empty()).then_some(r.id.as_str());
            let recordings = crate::recordings::list(&*self.registry, key.as_ref(), id)
                .await
                .map_err(status)?;
            Ok(Response::new(pb::ListRecordingsResponse {
                recordings: recordings.iter().map(convert::recording_to_pb).collect(),
            }))
        }
        .await;
        observe("list_recordings", started, result)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let started = Instant::now();
        let mut events = self.registry.watch();
        let stream = async_stream(move |tx| async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if tx.send(Ok(convert::event_to_pb(&event))).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        // The watcher missed events: make it reconnect and re-list.
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "watch fell {n} events behind; reconnect"
                            ))))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => {
                        // The registry restarted its event feed (a new Redis subscription,
                        // perhaps on a new primary): events may be missing.
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "registry event feed restarted; reconnect and re-list",
                            )))
                            .await;
                        return;
                    }
                }
            }
        });
        observe("watch", started, Ok(Response::new(stream)))
    }
}

/// A boxed stream fed by a task through a small channel; the task stops when the receiver
/// (the gRPC response) is dropped.
fn async_stream<F, Fut>(produce: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
