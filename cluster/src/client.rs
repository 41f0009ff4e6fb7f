//! The client origins and edges use to reach the control plane. Domain types in and out; every
//! call has a deadline, so a dead control plane makes callers fail fast instead of hang.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corriente_core::StreamKey;
use corriente_proto::control as pb;
use corriente_proto::trace;
use futures_util::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::auth::{ClientCredentials, ClusterAuth};
use crate::convert;
use crate::forward::ForwardTarget;
use crate::publish::{PublishCredential, PublishDecision, PublishDenial};
use crate::records::{
    NodeRecord, OwnedStream, RecordingRecord, RegistryEvent, StreamClaim, StreamRecord,
};

/// Why a control-plane call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control plane URL {0:?}: {1}")]
    BadUrl(String, String),
    #[error("control plane unreachable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    AlreadyPublished(String),
    #[error("control plane refused the request: {0}")]
    Refused(String),
}

impl From<Status> for ControlError {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::AlreadyExists => ControlError::AlreadyPublished(s.message().to_owned()),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                ControlError::Unavailable(s.message().to_owned())
            }
            _ => ControlError::Refused(s.message().to_owned()),
        }
    }
}

/// Lease parameters the control plane hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ttl: Duration,
    pub heartbeat_interval: Duration,
}

impl Lease {
    fn from_ms(ttl_ms: u32, interval_ms: u32) -> Self {
        Self {
            ttl: Duration::from_millis(u64::from(ttl_ms.max(300))),
            heartbeat_interval: Duration::from_millis(u64::from(interval_ms.clamp(100, 60_000))),
        }
    }
}

/// Result of a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// Streams the node no longer owns: stop serving them at once.
    pub lost: Vec<StreamKey>,
    pub lease: Lease,
    /// For each renewed stream, the destinations the admin API set for it (the whole set).
    pub forwards: Vec<(StreamKey, Vec<ForwardTarget>)>,
}

type Client = pb::control_client::ControlClient<InterceptedService<Channel, ClientCredentials>>;

/// A connection to the control plane: one or several replicas (lazy: connects on first use,
/// reconnects as needed). A call that cannot reach a replica moves on to the next one.
#[derive(Clone, Debug)]
pub struct ControlClient {
    replicas: Arc<[Client]>,
    current: Arc<AtomicUsize>,
    url: String,
}

/// A transport failure (rather than an answer): worth trying another replica.
fn unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

impl ControlClient {
    /// A client for `url` (`http://HOST:PORT`, or several, comma-separated), without cluster
    /// credentials. Does not connect yet.
    pub fn new(url: &str) -> Result<Self, ControlError> {
        Self::with_auth(url, &ClusterAuth::open())
    }

    /// Checks a control-plane URL (`http://HOST:PORT`, or several, comma-separated) without
    /// building a client: for validating configuration before anything runs.
    pub fn check_urls(urls: &str) -> Result<(), ControlError> {
        for url in urls.split(',').map(str::trim) {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
            if !ok {
                return Err(ControlError::BadUrl(
                    url.to_owned(),
                    "not a URL like http://HOST:PORT".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// A client for `url` presenting this node's cluster credentials on every call.
    pub fn with_auth(url: &str, auth: &ClusterAuth) -> Result<Self, ControlError> {
        let replicas = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                let endpoint = auth
                    .endpoint(u)
                    .map_err(|e| ControlError::BadUrl(u.to_owned(), e))?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(3))
                    .keep_alive_while_idle(true);
                Ok(pb::control_client::ControlClient::with_interceptor(
                    endpoint.connect_lazy(),
                    auth.client(),
                ))
            })
            .collect::<Result<Vec<_>, ControlError>>()?;
        if replicas.is_empty() {
            return Err(ControlError::BadUrl(url.to_owned(), "no URL".to_owned()));
        }
        Ok(Self {
            replicas: replicas.into(),
            current: Arc::new(AtomicUsize::new(0)),
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `call` on the current replica, moving on to the next ones while they cannot be
    /// reached.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.replicas.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..n {
            let i = (start + attempt) % n;
            match call(self.replicas[i].clone()).await {
                Err(status) if unreachable(&status) && attempt + 1 < n => {
                    last = Some(status);
                }
                result => {
                    if attempt > 0 {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return result;
                }
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no control-plane replica")))
    }

    pub async fn register_node(&self, node: &NodeRecord) -> Result<Lease, ControlError> {
        let request = pb::RegisterNodeRequest {
            node: Some(convert::node_to_pb(node)),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.register_node(trace::request(request)).await }
            })
            .await?
            .into_inner();
        Ok(Lease::from_ms(
            response.lease_ttl_ms,
            response.heartbeat_interval_ms,
        ))
    }

    pub async fn heartbeat(
        &self,
        node: &NodeRecord,
        streams: &[OwnedStream],
    ) -> Result<HeartbeatOutcome, ControlError> {
        let request = pb::HeartbeatRequest {
            node: Some(convert::node_to_pb(node)),
            streams: streams.iter().map(convert::owned_to_pb).collect(),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.heartbeat(trace::request(request)).await }
            })
            .await?
            .into_inner();
        let lost = response
            .lost
            .into_iter()
            .map(|k| convert::key_from_pb(Some(k)))
            .collect::<Result<Vec<_>, _>>()?;
        let forwards = response
            .forwards
            .into_iter()
            .filter_map(|f| {
                let key = convert::key_from_pb(f.key).ok()?;
                let targets = f
                    .targets
                    .into_iter()
                    .filter_map(convert::forward_target_from_pb)
                    .collect();
                Some((key, targets))
            })
            .collect();
        Ok(HeartbeatOutcome {
            lost,
            lease: Lease::from_ms(response.lease_ttl_ms, response.heartbeat_interval_ms),
            forwards,
        })
    }

    /// Claims a stream: its record and the destinations the admin API set for it.
    /// `ControlError::AlreadyPublished` when another node owns it.
    #[tracing::instrument(name = "control.register_stream", skip_all, fields(stream = %claim.key))]
    pub async fn register_stream(
        &self,
        claim: &StreamClaim,
    ) -> Result<(StreamRecord, Vec<ForwardTarget>), ControlError> {
        let request = convert::claim_to_pb(claim);
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.register_stream(trace::request(request)).await }
            })
            .await?
            .into_inner();
        let forwards = response
            .forwards
            .into_iter()
            .filter_map(convert::forward_target_from_pb)
            .collect();
        Ok((convert::stream_from_pb(response.stream)?, forwards))
    }

    #[tracing::instrument(name = "control.unregister_stream", skip_all, fields(stream = %key))]
    pub async fn unregister_stream(
        &self,
        key: &StreamKey,
        node_id: &str,
        epoch: u64,
    ) -> Result<bool, ControlError> {
        let request = pb::UnregisterStreamRequest {
            key: Some(convert::key_to_pb(key)),
            node_id: node_id.to_owned(),
            epoch,
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.unregister_stream(trace::request(request)).await }
            })
            .await?
            .into_inner();
        Ok(response.released)
    }

    /// The owner of a live stream; `None` when it is not live.
    #[tracing::instrument(name = "control.lookup_stream", skip_all, fields(stream = %key))]
    pub async fn lookup_stream(
        &self,
        key: &StreamKey,
    ) -> Result<Option<StreamRecord>, ControlError> {
        let request = pb::LookupStreamRequest {
            key: Some(convert::key_to_pb(key)),
        };
        match self
            .call(|mut c| {
                let request = request.clone();
                async move { c.lookup_stream(trace::request(request)).await }
            })
            .await
        {
            Ok(response) => Ok(Some(convert::stream_from_pb(response.into_inner().stream)?)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    pub async fn list_streams(&self) -> Result<Vec<StreamRecord>, ControlError> {
        let response = self
            .call(|mut c| async move {
                c.list_streams(trace::request(pb::ListStreamsRequest {}))
                    .await
            })
            .await?
            .into_inner();
        response
            .streams
            .into_iter()
            .map(|s| convert::stream_from_pb(Some(s)).map_err(ControlError::from))
            .collect()
    }

    /// Replaces this origin's entries in the recordings index with `recordings`.
    #[tracing::instrument(name = "control.sync_recordings", skip_all, fields(recordings = recordings.len()))]
    pub async fn sync_recordings(
        &self,
        node_id: &str,
        recordings: &[RecordingRecord],
    ) -> Result<(), ControlError> {
        let request = pb::SyncRecordingsRequest {
            node_id: node_id.to_owned(),
            recordings: recordings.iter().map(convert::recording_to_pb).collect(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.sync_recordings(trace::request(request)).await }
        })
        .await?;
        Ok(())
    }

    /// Recordings in the index: every stream's (`None`), one stream's, or one (`Some(id)`);
    /// newest first, each with its origin's relay address (empty while it is down).
    #[tracing::instrument(name = "control.list_recordings", skip_all)]
    pub async fn list_recordings(
        &self,
        key: Option<&StreamKey>,
        id: Option<&str>,
    ) -> Result<Vec<RecordingRecord>, ControlError> {
        let request = pb::ListRecordingsRequest {
            key: key.map(convert::key_to_pb),
            id: id.unwrap_or_default().to_owned(),
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.list_recordings(trace::request(request)).await }
            })
            .await?
            .into_inner();
        response
            .recordings
            .into_iter()
            .map(|r| convert::recording_from_pb(r).map_err(ControlError::from))
            .collect()
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, ControlError> {
        let response = self
            .call(
                |mut c| async move { c.list_nodes(trace::request(pb::ListNodesRequest {})).await },
            )
            .await?
            .into_inner();
        response
            .nodes
            .into_iter()
            .map(|n| convert::node_from_pb(Some(n)).map_err(ControlError::from))
            .collect()
    }

    /// Asks whether an encoder may publish `name` (the stream key field as sent, query
    /// included) under `app`, and under which public name. A refusal is `Ok(Refused)`.
    /// `recheck`: the publication is live already, and the origin checks its key still
    /// stands.
    #[tracing::instrument(name = "control.authorize_publish", skip_all, fields(app = %app))]
    pub async fn authorize_publish(
        &self,
        app: &str,
        name: &str,
        client_ip: &str,
        node_id: &str,
        recheck: bool,
    ) -> Result<PublishDecision, ControlError> {
        let request = pb::AuthorizePublishRequest {
            app: app.to_owned(),
            name: name.to_owned(),
            client_ip: client_ip.to_owned(),
            node_id: node_id.to_owned(),
            recheck,
        };
        let response = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.authorize_publish(trace::request(request)).await }
            })
            .await?
            .into_inner();
        if response.allowed {
            Ok(PublishDecision::Allowed {
                stream: convert::key_from_pb(response.stream)?,
                credential: PublishCredential::parse(&response.credential),
                record: match pb::RecordChoice::try_from(response.record) {
                    Ok(pb::RecordChoice::On) => Some(true),
                    Ok(pb::RecordChoice::Off) => Some(false),
                    _ => None,
                },
                forwards: response.forwards,
            })
        } else {
            Ok(PublishDecision::Refused {
                // A reason this build does not know (a newer control plane): still a
                // refusal, counted under the most generic reason.
                reason: PublishDenial::parse(&response.reason).unwrap_or(PublishDenial::NoKey),
                message: response.message,
            })
        }
    }

    /// Registry changes as they happen. The stream ends (or yields an error) when the
    /// connection breaks or the watcher fell behind; callers reconnect and re-check.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<RegistryEvent, ControlError>> + Send + use<>, ControlError>
    {
        // The endpoint's deadline covers the response head only, not the stream that follows.
        let stream = self
            .call(|mut c| async move { c.watch(trace::request(pb::WatchRequest {})).await })
            .await?
            .into_inner();
        Ok(stream.map(|item| match item {
            Ok(event) => convert::event_from_pb(event).map_err(ControlError::from),
            Err(s) => Err(s.into()),
        }))
    }
}
