//! The registry: what the control plane knows about the cluster, behind one trait with an
//! in-memory implementation (all-in-one mode, unit tests) and a Redis one (clusters).
//!
//! Data model:
//! - **Stream ownership.** One owner per stream name, cluster-wide. A claim gives the owner a
//!   lease (renewed by its heartbeat) and a **fencing epoch** taken from a per-name counter that
//!   only grows: every new ownership gets a larger epoch, so a stale owner (paused,
//!   partitioned) presenting an old epoch learns it lost the stream.
//! - **Node membership.** Origins and edges with their addresses and load, leased the same way.
//! - **Events.** Stream up/down and node up/down, for the control plane's watch stream.
//! - **Recordings.** The index of recordings: each origin's entries are the recordings its
//!   disk holds, replaced whole by its sync (so an origin's view never drifts from its disk).
//! - **Publish keys.** Managed stream keys, each mapping a secret to the public stream it
//!   publishes. Only the SHA-256 of a secret is stored, so a registry dump leaks no key.

use std::future::Future;
use std::time::Duration;

use corriente_cluster::{
    ForwardTarget, NodeRecord, OwnedStream, RecordingRecord, RegistryEvent, StreamClaim,
    StreamRecord,
};
use corriente_core::StreamKey;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// A managed publish key. The secret itself is never stored: only its SHA-256, and a few
/// leading characters so operators can tell keys apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishKey {
    /// Public identifier, for listing and revoking.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// The first characters of the secret.
    pub hint: String,
    /// The stream this key publishes (its public name).
    pub stream: StreamKey,
    /// Free text from whoever created the key.
    pub note: String,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Unix seconds after which the key no longer publishes.
    pub expires_at: Option<u64>,
    /// When the key was revoked, Unix milliseconds. Revoked keys are kept so an encoder
    /// still using one is told so.
    pub revoked_ms: Option<u64>,
}

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("stream {key} is already published on node {owner}")]
    AlreadyOwned {
        key: StreamKey,
        /// The current owner, its epoch and relay address (to check whether it is alive).
        owner: String,
        owner_epoch: u64,
        owner_relay: String,
    },
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

/// What the control plane needs from its storage. Every operation is atomic.
pub trait Registry: Send + Sync + 'static {
    /// Lease duration of nodes and streams.
    fn lease_ttl(&self) -> Duration;

    /// Adds or refreshes a node.
    fn register_node(
        &self,
        node: NodeRecord,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Renews the node's lease and the leases of its streams. A stream whose record vanished
    /// (expired, or the registry restarted empty) is re-asserted if no newer owner claimed it
    /// since. Returns the streams the node no longer owns.
    fn heartbeat(
        &self,
        node: NodeRecord,
        streams: Vec<OwnedStream>,
    ) -> impl Future<Output = Result<Vec<StreamKey>, RegistryError>> + Send;

    /// Claims a stream: fails when another node holds a live lease on it; otherwise records the
    /// claimant as owner under a new, larger epoch.
    fn claim_stream(
        &self,
        claim: StreamClaim,
    ) -> impl Future<Output = Result<StreamRecord, RegistryError>> + Send;

    /// Claims a stream from its current owner, if that is still `from_node` with `from_epoch`
    /// (the control plane checked it is gone): the claimant becomes owner under a new epoch.
    /// Fails with `AlreadyOwned` when the owner changed meanwhile.
    fn takeover_stream(
        &self,
        claim: StreamClaim,
        from_node: &str,
        from_epoch: u64,
    ) -> impl Future<Output = Result<StreamRecord, RegistryError>> + Send;

    /// Releases a stream if `node_id` owns it with `epoch`. Returns whether it did.
    fn release_stream(
        &self,
        key: &StreamKey,
        node_id: &str,
        epoch: u64,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;

    /// The live owner of a stream.
    fn lookup_stream(
        &self,
        key: &StreamKey,
    ) -> impl Future<Output = Result<Option<StreamRecord>, RegistryError>> + Send;

    fn list_streams(&self)
    -> impl Future<Output = Result<Vec<StreamRecord>, RegistryError>> + Send;

    fn list_nodes(&self) -> impl Future<Output = Result<Vec<NodeRecord>, RegistryError>> + Send;

    /// Changes from now on. A receiver that lags loses events and should re-list.
    fn watch(&self) -> broadcast::Receiver<RegistryEvent>;

    /// Stores a new publish key.
    fn create_publish_key(
        &self,
        key: PublishKey,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// The publish key whose secret hashes to `secret_sha256` (revoked ones included).
    fn publish_key(
        &self,
        secret_sha256: &str,
    ) -> impl Future<Output = Result<Option<PublishKey>, RegistryError>> + Send;

    /// Every publish key, revoked ones included, oldest first.
    fn list_publish_keys(
        &self,
    ) -> impl Future<Output = Result<Vec<PublishKey>, RegistryError>> + Send;

    /// Revokes the key `id` (at once, for every replica). Returns the key, or `None` when
    /// there is no such key. Revoking twice keeps the first revocation time.
    fn revoke_publish_key(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<PublishKey>, RegistryError>> + Send;

    /// The destinations the admin API set for each of `keys` (in order; empty when none).
    fn stream_forwards(
        &self,
        keys: &[StreamKey],
    ) -> impl Future<Output = Result<Vec<Vec<ForwardTarget>>, RegistryError>> + Send;

    /// Adds a destination for `key` (live or not: it applies whenever the stream is live).
    /// `false` when the stream has [`MAX_FORWARDS_PER_STREAM`] already.
    ///
    /// [`MAX_FORWARDS_PER_STREAM`]: corriente_cluster::forward::MAX_FORWARDS_PER_STREAM
    fn add_stream_forward(
        &self,
        key: &StreamKey,
        target: ForwardTarget,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;

    /// Removes the destination `id` of `key`. Returns whether there was one.
    fn remove_stream_forward(
        &self,
        key: &StreamKey,
        id: &str,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;

    /// Replaces every index entry of `node_id` with `recordings` (what its disk holds).
    fn sync_recordings(
        &self,
        node_id: &str,
        recordings: Vec<RecordingRecord>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Every recording in the index, every origin's, in no particular order.
    fn list_recordings(
        &self,
    ) -> impl Future<Output = Result<Vec<RecordingRecord>, RegistryError>> + Send;

    /// Removes one entry of `node_id`. Returns whether there was one.
    fn remove_recording(
        &self,
        node_id: &str,
        key: &StreamKey,
        id: &str,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;
}
