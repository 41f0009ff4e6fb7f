//! Asking a stream's owner whether it still publishes it. A claim that conflicts with a live
//! lease takes the stream over before the lease runs out only on a definitive answer: the
//! owner says it no longer has the stream, or nothing listens on its relay address any more
//! (connection refused: the process is gone, and a restarted one holds no stream). An owner
//! that does not answer in time — frozen, overloaded or cut off by a partition — keeps the
//! stream until its lease runs out, by which time it has stopped serving it itself
//! (self-fencing, `origin::streams::FENCE_FRACTION`): at no instant do two origins serve it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use corriente_cluster::auth::ClusterAuth;
use corriente_core::StreamKey;
use corriente_proto::relay::OwnsRequest;
use corriente_proto::relay::relay_client::RelayClient;
use tonic::Code;
use tonic::transport::Channel;

/// Probes owners over their relay address.
pub struct OwnerProbe {
    channels: Mutex<HashMap<String, Channel>>,
    timeout: Duration,
    auth: ClusterAuth,
}

impl OwnerProbe {
    pub fn new(timeout: Duration, auth: ClusterAuth) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            timeout,
            auth,
        }
    }

    fn channel(&self, relay_addr: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(relay_addr) {
            return Some(c.clone());
        }
        if channels.len() > 4096 {
            channels.clear();
        }
        let channel = self
            .auth
            .endpoint(relay_addr)
            .ok()?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(relay_addr.to_owned(), channel.clone());
        Some(channel)
    }

    /// False when the owner at `relay_addr` denies publishing `key` under `epoch`, or nothing
    /// listens there; true otherwise (it confirms, or gives no definitive answer in time).
    pub async fn owner_alive(&self, relay_addr: &str, key: &StreamKey, epoch: u64) -> bool {
        let Some(channel) = self.channel(relay_addr) else {
            return false;
        };
        let request = OwnsRequest {
            app: key.app().to_owned(),
            name: key.name().to_owned(),
            epoch,
        };
        match tokio::time::timeout(
            self.timeout,
            RelayClient::with_interceptor(channel, self.auth.client()).owns(request),
        )
        .await
        {
            Ok(Ok(response)) => response.into_inner().owns,
            // An origin too old to answer: assume it is alive rather than take its stream.
            Ok(Err(status)) if status.code() == Code::Unimplemented => true,
            // The owner refuses our credentials: it is alive, and a cluster misconfiguration
            // must not hand its stream to someone else.
            Ok(Err(status)) if status.code() == Code::Unauthenticated => {
                tracing::warn!(
                    relay = relay_addr,
                    "owner probe refused: cluster tokens differ between the control plane and this origin"
                );
                true
            }
            Ok(Err(status)) => {
                self.channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(relay_addr);
                let refused = refused(&status);
                if !refused {
                    tracing::info!(relay = relay_addr, stream = %key, error = %status.message(), "owner probe gave no answer: the owner keeps the stream until its lease runs out");
                }
                !refused
            }
            Err(_) => {
                self.channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(relay_addr);
                tracing::info!(relay = relay_addr, stream = %key, timeout = ?self.timeout, "owner probe timed out: the owner keeps the stream until its lease runs out");
                true
            }
        }
    }
}

/// True when the call failed because nothing listens at the address (connection refused).
fn refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    // Some transports only keep the message.
    status.message().contains("Connection refused")
}

impl OwnerProbe {
    /// Asks the origin at `relay_addr` to delete a recording from its disk. `Ok(false)`: it
    /// has no such recording.
    pub async fn delete_recording(
        &self,
        relay_addr: &str,
        key: &StreamKey,
        id: &str,
    ) -> Result<bool, String> {
        let channel = self
            .channel(relay_addr)
            .ok_or_else(|| format!("bad relay address {relay_addr:?}"))?;
        let request = corriente_proto::relay::DeleteRecordingRequest {
            app: key.app().to_owned(),
            name: key.name().to_owned(),
            id: id.to_owned(),
        };
        match tokio::time::timeout(
            self.timeout.max(Duration::from_secs(2)),
            RelayClient::with_interceptor(channel, self.auth.client()).delete_recording(request),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response.into_inner().deleted),
            Ok(Err(status)) => Err(format!(
                "the origin at {relay_addr} could not delete it: {}",
                status.message()
            )),
            Err(_) => Err(format!("the origin at {relay_addr} did not answer in time")),
        }
    }
}
