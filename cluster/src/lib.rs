//! What a Corriente node needs to be a member of the cluster, and nothing of how the registry
//! is kept: the client of the control plane ([`ControlClient`], deadlines on every call), the
//! membership loop that registers a node and renews its leases ([`run_membership`]) with the
//! [`Health`] that `/readyz` reports, the cluster's records ([`StreamRecord`], [`NodeRecord`],
//! ...) and their prost conversions, the publish decision types, the cluster credentials of
//! internal gRPC ([`auth::ClusterAuth`]) and the webhook client ([`Webhook`]).
//!
//! Origins, edges and the control plane all depend on this crate; only `corriente-control-plane`
//! knows where the registry lives.

pub mod auth;
pub mod client;
pub mod convert;
pub mod forward;
pub mod membership;
pub mod publish;
pub mod records;
pub mod serve;
pub mod webhook;

pub use client::{ControlClient, ControlError, HeartbeatOutcome, Lease};
pub use forward::{ForwardSource, ForwardState, ForwardStatus, ForwardTarget, ForwardUrl};
pub use membership::{Health, Member, Readiness, run_membership};
pub use publish::{PublishCredential, PublishDecision, PublishDenial};
pub use records::{
    HlsSequence, NodeLoad, NodeRecord, NodeRole, OwnedStream, RecordingRecord, RecordingState,
    RegistryEvent, StreamClaim, StreamRecord,
};
pub use webhook::{Webhook, WebhookError};
