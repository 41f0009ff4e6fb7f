//! Asking a stream's owner whether it still publishes it. A claim that conflicts with a live
//! lease is only refused when the owner confirms; a dead origin (connection refused) or a
//! frozen one (no answer in time) loses the stream at once, so a streamer reconnecting to
//! another origin does not wait out the lease.

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

    /// True when the owner at `relay_addr` confirms it publishes `key` under `epoch`. False when
    /// it denies, cannot be reached, or does not answer within the timeout.
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
            Ok(Err(_)) | Err(_) => {
                self.channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(relay_addr);
                false
            }
        }
    }
}
