//! A node's membership in the cluster: it registers with the control plane, then heartbeats,
//! which renews the lease of the node and of every stream it owns, reports its load, and
//! learns which streams it lost. [`Health`] records how that goes, for readiness probes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use corriente_core::StreamKey;
use prometheus::{IntCounter, register_int_counter};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{ControlClient, ControlError};
use crate::records::{NodeRecord, OwnedStream};

static RENEW_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "corriente_lease_renew_failures_total",
        "Heartbeats (lease renewals of the node and its streams) that failed"
    )
    .expect("metric registers once")
});

/// What the membership loop needs from a node.
pub trait Member: Send + Sync + 'static {
    /// The node as it should be registered now: addresses, load, readiness.
    fn node(&self) -> NodeRecord;

    /// Streams this node owns (origins).
    fn owned_streams(&self) -> Vec<OwnedStream> {
        Vec::new()
    }

    /// The control plane says these streams are no longer this node's: stop serving them.
    fn lost(&self, _keys: Vec<StreamKey>) {}

    /// A heartbeat sent at `sent_at` renewed the leases of `keys` (those it carried and the
    /// control plane did not report lost) for `ttl` from when it arrived: what the node's
    /// self-fencing measures from.
    fn renewed(&self, _keys: &[StreamKey], _sent_at: tokio::time::Instant, _ttl: Duration) {}

    /// The destinations the admin API set for each renewed stream (the whole set, per stream).
    fn api_forwards(&self, _forwards: Vec<(StreamKey, Vec<crate::ForwardTarget>)>) {}
}

/// Readiness of a node, as `/readyz` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub control_plane_reachable: bool,
    pub lease_held: bool,
    pub draining: bool,
    /// Why the node is not ready, for humans.
    pub reason: String,
}

#[derive(Debug)]
struct HealthInner {
    /// Last successful registration or heartbeat.
    last_ok: Mutex<Option<Instant>>,
    last_error: Mutex<String>,
    lease_ttl_ms: AtomicU64,
    draining: AtomicBool,
}

/// Shared health of a node's membership.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            inner: Arc::new(HealthInner {
                last_ok: Mutex::new(None),
                last_error: Mutex::new("not registered with the control plane yet".to_owned()),
                lease_ttl_ms: AtomicU64::new(6000),
                draining: AtomicBool::new(false),
            }),
        }
    }
}

impl Health {
    /// Records a successful contact with what the node depends on; it stays ready for `ttl`.
    pub fn mark_ok(&self, ttl: Duration) {
        self.succeeded(ttl);
    }

    /// Records a failure, with the reason `/readyz` reports once the last success is too old.
    pub fn mark_failed(&self, reason: String) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = reason;
    }

    fn succeeded(&self, ttl: Duration) {
        *self.inner.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.inner
            .lease_ttl_ms
            .store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    fn failed(&self, error: &ControlError) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = error.to_string();
    }

    /// Marks the node as draining: not ready from now on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Ready when the last heartbeat succeeded within the lease and the node is not draining.
    pub fn readiness(&self) -> Readiness {
        let ttl = Duration::from_millis(self.inner.lease_ttl_ms.load(Ordering::Relaxed));
        let last_ok = *self.inner.last_ok.lock().unwrap_or_else(|p| p.into_inner());
        let lease_held = last_ok.is_some_and(|t| t.elapsed() < ttl);
        let reachable = last_ok.is_some_and(|t| t.elapsed() < ttl / 2 + Duration::from_secs(1));
        let draining = self.is_draining();
        let ready = lease_held && !draining;
        let reason = if draining {
            "draining".to_owned()
        } else if !lease_held {
            format!(
                "not confirmed within the lease: {}",
                self.inner
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            )
        } else {
            String::new()
        };
        Readiness {
            ready,
            control_plane_reachable: reachable,
            lease_held,
            draining,
            reason,
        }
    }
}

/// Registers the node and heartbeats until `shutdown`. Failures are logged when the state
/// changes (not on every attempt), counted, and retried at the heartbeat interval.
pub async fn run_membership(
    client: ControlClient,
    member: Arc<dyn Member>,
    health: Health,
    shutdown: CancellationToken,
) {
    LazyLock::force(&RENEW_FAILURES);
    let mut registered = false;
    let mut failing = false;
    let mut interval = Duration::from_secs(1);
    loop {
        let node = member.node();
        let sent_at = tokio::time::Instant::now();
        let mut renewed = Vec::new();
        let result = if registered {
            let streams = member.owned_streams();
            client.heartbeat(&node, &streams).await.map(|outcome| {
                renewed = streams
                    .into_iter()
                    .map(|s| s.key)
                    .filter(|k| !outcome.lost.contains(k))
                    .collect();
                if !outcome.lost.is_empty() {
                    member.lost(outcome.lost);
                }
                member.api_forwards(outcome.forwards);
                outcome.lease
            })
        } else {
            client.register_node(&node).await
        };
        match result {
            Ok(lease) => {
                member.renewed(&renewed, sent_at, lease.ttl);
                if failing || !registered {
                    info!(node = %node.id, control = client.url(), lease_ttl = ?lease.ttl, "registered with the control plane");
                }
                registered = true;
                failing = false;
                interval = lease.heartbeat_interval;
                health.succeeded(lease.ttl);
            }
            Err(e) => {
                if registered {
                    RENEW_FAILURES.inc();
                }
                if !failing {
                    warn!(node = %node.id, control = client.url(), error = %e, "cannot reach the control plane; streams keep flowing within their leases, retrying");
                }
                failing = true;
                health.failed(&e);
                // Retry soon, but no faster than every half second.
                interval = interval.clamp(Duration::from_millis(500), Duration::from_secs(2));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
