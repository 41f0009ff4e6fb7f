//! The in-memory registry, for the all-in-one mode and unit tests. Same semantics as the
//! Redis registry: leases expire, epochs only grow, events on every change.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corriente_cluster::{
    ForwardTarget, HlsSequence, NodeRecord, OwnedStream, RecordingRecord, RegistryEvent,
    StreamClaim, StreamRecord,
};

use corriente_core::StreamKey;
use tokio::sync::broadcast;
use tokio::time::Instant;

use corriente_cluster::forward::MAX_FORWARDS_PER_STREAM;

use crate::registry::{PublishKey, Registry, RegistryError};

struct Leased<T> {
    value: T,
    expires: Instant,
}

struct Retired {
    epoch: u64,
    forget_at: Instant,
}

/// How long a retired name's last epoch is remembered, at least (ten lease TTLs when longer).
pub const EPOCH_MEMORY: Duration = Duration::from_secs(600);

#[derive(Default)]
struct State {
    streams: HashMap<StreamKey, Leased<StreamRecord>>,
    /// Last epoch handed out, across all names: every claim takes the next one, so a name's
    /// epochs only grow even once the registry has forgotten the name.
    last_epoch: u64,
    /// The last epoch of names no longer live, remembered for [`EPOCH_MEMORY`] so that an owner
    /// whose lease lapsed cannot re-assert over a newer ownership that has ended since; then
    /// forgotten, so the map holds only recently ended names, not every name ever claimed.
    retired: HashMap<StreamKey, Retired>,
    nodes: HashMap<String, Leased<NodeRecord>>,
    /// Publish keys by the SHA-256 of their secret.
    publish_keys: HashMap<String, PublishKey>,
    /// Destinations the admin API set, per stream (live or not), in the order added.
    forwards: HashMap<StreamKey, Vec<ForwardTarget>>,
    /// The recordings index, per origin.
    recordings: HashMap<String, Vec<RecordingRecord>>,
    /// Per name, the HLS numbering its last publication reported (the next number it would
    /// use), remembered as long as retired epochs, for the next publication to continue.
    hls: HashMap<StreamKey, (HlsSequence, Instant)>,
}

/// A registry held in this process.
pub struct MemoryRegistry {
    ttl: Duration,
    state: Mutex<State>,
    events: broadcast::Sender<RegistryEvent>,
}

impl MemoryRegistry {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::new(State::default()),
            events: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: RegistryEvent) {
        // Nobody watching is fine.
        let _ = self.events.send(event);
    }

    /// Removes expired leases and announces them. Runs periodically; lookups also ignore
    /// expired entries, so correctness does not depend on how often.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut events = Vec::new();
        {
            let mut state = self.lock();
            let mut lapsed = Vec::new();
            state.streams.retain(|key, leased| {
                let live = leased.expires > now;
                if !live {
                    events.push(RegistryEvent::StreamDown {
                        key: key.clone(),
                        epoch: leased.value.epoch,
                        node_id: leased.value.node_id.clone(),
                    });
                    lapsed.push((key.clone(), leased.value.epoch));
                }
                live
            });
            let forget_at = now + self.epoch_memory();
            for (key, epoch) in lapsed {
                state.retire(key, epoch, forget_at);
            }
            state.retired.retain(|_, r| r.forget_at > now);
            state.hls.retain(|_, (_, forget_at)| *forget_at > now);
            state.nodes.retain(|id, leased| {
                let live = leased.expires > now;
                if !live {
                    events.push(RegistryEvent::NodeDown(id.clone()));
                }
                live
            });
        }
        for event in events {
            self.emit(event);
        }
    }
}

fn live<T>(leased: Option<&Leased<T>>, now: Instant) -> Option<&T> {
    leased.filter(|l| l.expires > now).map(|l| &l.value)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl State {
    /// The last epoch `key` had, live, lapsed or recently retired.
    fn last_epoch_of(&self, key: &StreamKey) -> u64 {
        let leased = self.streams.get(key).map_or(0, |l| l.value.epoch);
        let retired = self.retired.get(key).map_or(0, |r| r.epoch);
        leased.max(retired)
    }

    fn retire(&mut self, key: StreamKey, epoch: u64, forget_at: Instant) {
        let entry = self
            .retired
            .entry(key)
            .or_insert(Retired { epoch, forget_at });
        entry.epoch = entry.epoch.max(epoch);
        entry.forget_at = forget_at;
    }
}

impl MemoryRegistry {
    /// How long a retired name's last epoch is remembered.
    fn epoch_memory(&self) -> Duration {
        EPOCH_MEMORY.max(self.ttl * 10)
    }

    fn claim(
        &self,
        claim: StreamClaim,
        takeover: Option<(&str, u64)>,
    ) -> Result<StreamRecord, RegistryError> {
        let now = Instant::now();
        let mut events = Vec::new();
        let record = {
            let mut state = self.lock();
            if let Some(owner) = live(state.streams.get(&claim.key), now) {
                let replaceable = takeover
                    .is_some_and(|(node, epoch)| owner.node_id == node && owner.epoch == epoch);
                if !replaceable {
                    return Err(RegistryError::AlreadyOwned {
                        owner: owner.node_id.clone(),
                        owner_epoch: owner.epoch,
                        owner_relay: owner.relay_addr.clone(),
                        key: claim.key,
                    });
                }
                events.push(RegistryEvent::StreamDown {
                    key: claim.key.clone(),
                    epoch: owner.epoch,
                    node_id: owner.node_id.clone(),
                });
            }
            state.last_epoch = state.last_epoch.max(state.last_epoch_of(&claim.key)) + 1;
            let epoch = state.last_epoch;
            // The live record carries the name's latest epoch from now on.
            state.retired.remove(&claim.key);
            let previous = state
                .hls
                .get(&claim.key)
                .filter(|(_, forget_at)| *forget_at > now)
                .map(|(seq, _)| *seq);
            let hls = HlsSequence::after(previous, unix_ms(), self.ttl);
            let forget_at = now + self.epoch_memory();
            state.hls.insert(claim.key.clone(), (hls, forget_at));
            let record = StreamRecord {
                key: claim.key.clone(),
                node_id: claim.node_id,
                relay_addr: claim.relay_addr,
                epoch,
                media: claim.media,
                publisher_addr: claim.publisher_addr,
                started_at_ms: unix_ms(),
                forwards: Vec::new(),
                hls,
            };
            state.streams.insert(
                claim.key,
                Leased {
                    value: record.clone(),
                    expires: now + self.ttl,
                },
            );
            record
        };
        events.push(RegistryEvent::StreamUp(record.clone()));
        for event in events {
            self.emit(event);
        }
        Ok(record)
    }
}

impl Registry for MemoryRegistry {
    fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    async fn register_node(&self, node: NodeRecord) -> Result<(), RegistryError> {
        let now = Instant::now();
        let fresh = {
            let mut state = self.lock();
            let fresh = live(state.nodes.get(&node.id), now).is_none();
            state.nodes.insert(
                node.id.clone(),
                Leased {
                    value: node.clone(),
                    expires: now + self.ttl,
                },
            );
            fresh
        };
        if fresh {
            self.emit(RegistryEvent::NodeUp(node));
        }
        Ok(())
    }

    async fn heartbeat(
        &self,
        node: NodeRecord,
        streams: Vec<OwnedStream>,
    ) -> Result<Vec<StreamKey>, RegistryError> {
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut lost = Vec::new();
        let mut events = Vec::new();
        {
            let mut state = self.lock();
            if live(state.nodes.get(&node.id), now).is_none() {
                events.push(RegistryEvent::NodeUp(node.clone()));
            }
            state.nodes.insert(
                node.id.clone(),
                Leased {
                    value: node.clone(),
                    expires,
                },
            );
            for owned in streams {
                let current = live(state.streams.get(&owned.key), now).cloned();
                match current {
                    Some(record) if record.node_id == node.id && record.epoch == owned.epoch => {
                        let mut record = record;
                        record.media = owned.media;
                        record.forwards = owned.forwards;
                        let forget_at = now + self.epoch_memory();
                        let seq = state
                            .hls
                            .entry(owned.key.clone())
                            .or_insert((record.hls, forget_at));
                        if seq.0.discontinuity == owned.hls.discontinuity {
                            seq.0.first_msn = seq.0.first_msn.max(owned.hls.first_msn);
                        }
                        seq.1 = forget_at;
                        state.streams.insert(
                            owned.key,
                            Leased {
                                value: record,
                                expires,
                            },
                        );
                    }
                    Some(_) => lost.push(owned.key),
                    None => {
                        let last = state.last_epoch_of(&owned.key);
                        if owned.epoch >= last {
                            // Re-assert: the lease lapsed (or the registry forgot it) and
                            // nobody newer claimed the name meanwhile.
                            let record = StreamRecord {
                                key: owned.key.clone(),
                                node_id: node.id.clone(),
                                relay_addr: node.relay_addr.clone(),
                                epoch: owned.epoch,
                                media: owned.media,
                                publisher_addr: owned.publisher_addr,
                                started_at_ms: owned.started_at_ms,
                                forwards: owned.forwards,
                                hls: owned.hls,
                            };
                            let forget_at = now + self.epoch_memory();
                            state.hls.insert(owned.key.clone(), (owned.hls, forget_at));
                            state.last_epoch = state.last_epoch.max(owned.epoch);
                            state.retired.remove(&owned.key);
                            events.push(RegistryEvent::StreamUp(record.clone()));
                            state.streams.insert(
                                owned.key,
                                Leased {
                                    value: record,
                                    expires,
                                },
                            );
                        } else {
                            lost.push(owned.key);
                        }
                    }
                }
            }
        }
        for event in events {
            self.emit(event);
        }
        Ok(lost)
    }

    async fn claim_stream(&self, claim: StreamClaim) -> Result<StreamRecord, RegistryError> {
        self.claim(claim, None)
    }

    async fn takeover_stream(
        &self,
        claim: StreamClaim,
        from_node: &str,
        from_epoch: u64,
    ) -> Result<StreamRecord, RegistryError> {
        self.claim(claim, Some((from_node, from_epoch)))
    }

    async fn release_stream(
        &self,
        key: &StreamKey,
        node_id: &str,
        epoch: u64,
    ) -> Result<bool, RegistryError> {
        let released = {
            let mut state = self.lock();
            let owned = state
                .streams
                .get(key)
                .is_some_and(|l| l.value.node_id == node_id && l.value.epoch == epoch);
            if owned {
                state.streams.remove(key);
                let forget_at = Instant::now() + self.epoch_memory();
                state.retire(key.clone(), epoch, forget_at);
            }
            owned
        };
        if released {
            self.emit(RegistryEvent::StreamDown {
                key: key.clone(),
                epoch,
                node_id: node_id.to_owned(),
            });
        }
        Ok(released)
    }

    async fn lookup_stream(&self, key: &StreamKey) -> Result<Option<StreamRecord>, RegistryError> {
        Ok(live(self.lock().streams.get(key), Instant::now()).cloned())
    }

    async fn list_streams(&self) -> Result<Vec<StreamRecord>, RegistryError> {
        let now = Instant::now();
        let mut streams: Vec<StreamRecord> = self
            .lock()
            .streams
            .values()
            .filter_map(|l| live(Some(l), now).cloned())
            .collect();
        streams.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(streams)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        let now = Instant::now();
        let mut nodes: Vec<NodeRecord> = self
            .lock()
            .nodes
            .values()
            .filter_map(|l| live(Some(l), now).cloned())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    fn watch(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    async fn create_publish_key(&self, key: PublishKey) -> Result<(), RegistryError> {
        self.lock()
            .publish_keys
            .insert(key.secret_sha256.clone(), key);
        Ok(())
    }

    async fn publish_key(&self, secret_sha256: &str) -> Result<Option<PublishKey>, RegistryError> {
        Ok(self.lock().publish_keys.get(secret_sha256).cloned())
    }

    async fn list_publish_keys(&self) -> Result<Vec<PublishKey>, RegistryError> {
        let mut keys: Vec<PublishKey> = self.lock().publish_keys.values().cloned().collect();
        keys.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(keys)
    }

    async fn revoke_publish_key(&self, id: &str) -> Result<Option<PublishKey>, RegistryError> {
        let mut state = self.lock();
        let key = state.publish_keys.values_mut().find(|k| k.id == id);
        Ok(key.map(|k| {
            k.revoked_ms.get_or_insert_with(unix_ms);
            k.clone()
        }))
    }

    async fn stream_forwards(
        &self,
        keys: &[StreamKey],
    ) -> Result<Vec<Vec<ForwardTarget>>, RegistryError> {
        let state = self.lock();
        Ok(keys
            .iter()
            .map(|k| state.forwards.get(k).cloned().unwrap_or_default())
            .collect())
    }

    async fn add_stream_forward(
        &self,
        key: &StreamKey,
        target: ForwardTarget,
    ) -> Result<bool, RegistryError> {
        let mut state = self.lock();
        let targets = state.forwards.entry(key.clone()).or_default();
        if targets.len() >= MAX_FORWARDS_PER_STREAM {
            return Ok(false);
        }
        targets.push(target);
        Ok(true)
    }

    async fn remove_stream_forward(
        &self,
        key: &StreamKey,
        id: &str,
    ) -> Result<bool, RegistryError> {
        let mut state = self.lock();
        let Some(targets) = state.forwards.get_mut(key) else {
            return Ok(false);
        };
        let before = targets.len();
        targets.retain(|t| t.id != id);
        let removed = targets.len() < before;
        if targets.is_empty() {
            state.forwards.remove(key);
        }
        Ok(removed)
    }

    async fn sync_recordings(
        &self,
        node_id: &str,
        recordings: Vec<RecordingRecord>,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        if recordings.is_empty() {
            state.recordings.remove(node_id);
        } else {
            state.recordings.insert(node_id.to_owned(), recordings);
        }
        Ok(())
    }

    async fn list_recordings(&self) -> Result<Vec<RecordingRecord>, RegistryError> {
        Ok(self.lock().recordings.values().flatten().cloned().collect())
    }

    async fn remove_recording(
        &self,
        node_id: &str,
        key: &StreamKey,
        id: &str,
    ) -> Result<bool, RegistryError> {
        let mut state = self.lock();
        let Some(list) = state.recordings.get_mut(node_id) else {
            return Ok(false);
        };
        let before = list.len();
        list.retain(|r| !(r.stream == *key && r.id == id));
        Ok(list.len() < before)
    }
}

#[cfg(test)]
mod tests {
    use corriente_core::MediaInfo;

    use super::*;
    use corriente_cluster::{NodeLoad, NodeRole};

    fn key() -> StreamKey {
        StreamKey::new("live", "a").unwrap()
    }

    fn claim(node: &str) -> StreamClaim {
        StreamClaim {
            key: key(),
            node_id: node.to_owned(),
            relay_addr: format!("{node}:50052"),
            media: MediaInfo::default(),
            publisher_addr: "203.0.113.9:5000".to_owned(),
        }
    }

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.to_owned(),
            role: NodeRole::Origin,
            relay_addr: format!("{id}:50052"),
            rtmp_addr: String::new(),
            http_addr: String::new(),
            admin_addr: String::new(),
            load: NodeLoad::default(),
            viewers: vec![],
            version: "test".to_owned(),
            started_at_ms: 0,
            ready: true,
        }
    }

    fn owned(epoch: u64) -> OwnedStream {
        OwnedStream {
            key: key(),
            epoch,
            media: MediaInfo::default(),
            publisher_addr: String::new(),
            started_at_ms: 0,
            forwards: Vec::new(),
            hls: HlsSequence::default(),
        }
    }

    fn recording(node: &str, name: &str, id: &str, started: u64) -> RecordingRecord {
        RecordingRecord {
            stream: StreamKey::new("live", name).unwrap(),
            id: id.to_owned(),
            node_id: node.to_owned(),
            epoch: 1,
            started_at_ms: started,
            duration_ms: 1000,
            size: 10,
            state: corriente_cluster::RecordingState::Complete,
            reason: String::new(),
            etag: String::new(),
            relay_addr: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_recordings_sync_replaces_that_origins_entries_only() {
        let registry = MemoryRegistry::new(Duration::from_secs(6));
        registry.register_node(node("o1")).await.unwrap();
        registry
            .sync_recordings(
                "o1",
                vec![recording("o1", "a", "r1", 1), recording("o1", "b", "r2", 3)],
            )
            .await
            .unwrap();
        registry
            .sync_recordings("o2", vec![recording("o2", "a", "r3", 2)])
            .await
            .unwrap();
        // o1 deleted r2 (retention): its next sync says so; o2's entry stays.
        registry
            .sync_recordings("o1", vec![recording("o1", "a", "r1", 1)])
            .await
            .unwrap();
        let a = StreamKey::new("live", "a").unwrap();
        let listed = crate::recordings::list(&registry, Some(&a), None)
            .await
            .unwrap();
        let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r3", "r1"], "newest first");
        // Only a live origin's entries carry its relay address (o2 never registered).
        assert_eq!(listed[1].relay_addr, "o1:50052");
        assert_eq!(listed[0].relay_addr, "");
        let one = crate::recordings::list(&registry, Some(&a), Some("r1"))
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        assert!(registry.remove_recording("o1", &a, "r1").await.unwrap());
        assert!(!registry.remove_recording("o1", &a, "r1").await.unwrap());
        let all = crate::recordings::list(&registry, None, None)
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_publication_continues_the_hls_numbering_of_the_last_one() {
        let ttl = Duration::from_secs(3);
        let registry = MemoryRegistry::new(ttl);
        let first = registry.claim_stream(claim("o1")).await.unwrap();
        assert_eq!(first.hls.discontinuity, 0);
        assert!(
            first.hls.first_msn >= unix_ms() / 100 - 10,
            "a name never seen starts at the time's number"
        );
        // The owner reports its progress, then dies.
        let mut report = owned(first.epoch);
        report.hls = HlsSequence {
            first_msn: first.hls.first_msn + 40,
            discontinuity: 0,
        };
        registry.heartbeat(node("o1"), vec![report]).await.unwrap();
        tokio::time::advance(ttl * 2).await;
        registry.sweep();
        let second = registry.claim_stream(claim("o2")).await.unwrap();
        assert_eq!(
            second.hls,
            HlsSequence {
                first_msn: first.hls.first_msn + 40 + HlsSequence::slack(ttl),
                discontinuity: 1,
            }
        );
        // A stale report (the old owner, fenced) never moves the numbering.
        let mut stale = owned(first.epoch);
        stale.hls = HlsSequence {
            first_msn: first.hls.first_msn + 99,
            discontinuity: 0,
        };
        let lost = registry.heartbeat(node("o1"), vec![stale]).await.unwrap();
        assert_eq!(lost, [key()]);
        registry
            .release_stream(&key(), "o2", second.epoch)
            .await
            .unwrap();
        let third = registry.claim_stream(claim("o1")).await.unwrap();
        assert_eq!(third.hls.discontinuity, 2);
        assert_eq!(
            third.hls.first_msn,
            second.hls.first_msn + HlsSequence::slack(ttl)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_owner_per_stream_and_epochs_only_grow() {
        let registry = MemoryRegistry::new(Duration::from_secs(6));
        let mut events = registry.watch();
        let first = registry.claim_stream(claim("o1")).await.unwrap();
        assert_eq!(first.epoch, 1);
        assert!(matches!(events.try_recv(), Ok(RegistryEvent::StreamUp(r)) if r.epoch == 1));
        let refused = registry.claim_stream(claim("o2")).await.unwrap_err();
        assert!(matches!(
            refused,
            RegistryError::AlreadyOwned { ref owner, owner_epoch: 1, .. } if owner == "o1"
        ));
        // A takeover from a stale owner id is refused too; from the right one it succeeds.
        assert!(
            registry
                .takeover_stream(claim("o2"), "o3", 1)
                .await
                .is_err()
        );
        let taken = registry
            .takeover_stream(claim("o2"), "o1", 1)
            .await
            .unwrap();
        assert_eq!((taken.node_id.as_str(), taken.epoch), ("o2", 2));
        registry.release_stream(&key(), "o2", 2).await.unwrap();
        let first = registry.claim_stream(claim("o1")).await.unwrap();
        assert_eq!(first.epoch, 3);
        assert!(
            !registry.release_stream(&key(), "o2", 3).await.unwrap(),
            "not the owner"
        );
        assert!(registry.release_stream(&key(), "o1", 3).await.unwrap());
        assert!(registry.lookup_stream(&key()).await.unwrap().is_none());
        let second = registry.claim_stream(claim("o2")).await.unwrap();
        assert_eq!(second.epoch, 4, "a new ownership gets a larger epoch");
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_and_a_stale_owner_learns_it_lost() {
        let registry = MemoryRegistry::new(Duration::from_secs(6));
        let first = registry.claim_stream(claim("o1")).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            registry
                .heartbeat(node("o1"), vec![owned(first.epoch)])
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            registry.lookup_stream(&key()).await.unwrap().is_some(),
            "renewed"
        );
        // o1 pauses past its lease; o2 takes over.
        tokio::time::advance(Duration::from_secs(7)).await;
        let mut events = registry.watch();
        registry.sweep();
        assert!(matches!(
            events.try_recv(),
            Ok(RegistryEvent::StreamDown { epoch: 1, .. })
        ));
        let second = registry.claim_stream(claim("o2")).await.unwrap();
        assert_eq!(second.epoch, 2);
        // o1 comes back and heartbeats its old epoch: fenced.
        let lost = registry
            .heartbeat(node("o1"), vec![owned(1)])
            .await
            .unwrap();
        assert_eq!(lost, vec![key()]);
        assert_eq!(
            registry
                .lookup_stream(&key())
                .await
                .unwrap()
                .unwrap()
                .node_id,
            "o2"
        );
        // Even after o2 releases, epoch 1 stays stale.
        registry.release_stream(&key(), "o2", 2).await.unwrap();
        assert_eq!(
            registry
                .heartbeat(node("o1"), vec![owned(1)])
                .await
                .unwrap(),
            vec![key()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_stream_is_reasserted_by_its_owner() {
        let registry = MemoryRegistry::new(Duration::from_secs(6));
        // A fresh registry (as after a Redis restart) that never saw the claim.
        let lost = registry
            .heartbeat(node("o1"), vec![owned(5)])
            .await
            .unwrap();
        assert!(lost.is_empty());
        let record = registry.lookup_stream(&key()).await.unwrap().unwrap();
        assert_eq!((record.node_id.as_str(), record.epoch), ("o1", 5));
        registry.release_stream(&key(), "o1", 5).await.unwrap();
        assert_eq!(registry.claim_stream(claim("o2")).await.unwrap().epoch, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn ended_names_are_forgotten_but_epochs_still_grow() {
        let registry = MemoryRegistry::new(Duration::from_secs(6));
        let mut last = 0;
        for i in 0..10_000 {
            let mut c = claim("o1");
            c.key = StreamKey::new("live", &format!("s{i}")).unwrap();
            let record = registry.claim_stream(c).await.unwrap();
            assert!(record.epoch > last);
            last = record.epoch;
            assert!(
                registry
                    .release_stream(&record.key, "o1", record.epoch)
                    .await
                    .unwrap()
            );
        }
        assert_eq!(registry.lock().retired.len(), 10_000);
        // Past the epoch memory the names are forgotten: the registry holds nothing of them.
        tokio::time::advance(EPOCH_MEMORY + Duration::from_secs(1)).await;
        registry.sweep();
        assert!(registry.lock().retired.is_empty());
        assert!(registry.lock().streams.is_empty());
        // A forgotten name claimed again still gets a larger epoch than it ever had.
        let mut c = claim("o2");
        c.key = StreamKey::new("live", "s0").unwrap();
        assert!(registry.claim_stream(c).await.unwrap().epoch > last);
    }
}
