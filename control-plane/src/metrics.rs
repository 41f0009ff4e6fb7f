//! Control-plane metrics: requests by method and code, and their latency; publish
//! authorization decisions and publish key actions.

use std::sync::LazyLock;

use prometheus::{
    HistogramVec, IntCounter, IntCounterVec, exponential_buckets, register_histogram_vec,
    register_int_counter, register_int_counter_vec,
};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_control_requests_total",
        "Control-plane gRPC requests served, by method and status code",
        &["method", "code"]
    )
    .expect("metric registers once")
});

pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "corriente_control_request_duration_seconds",
        "Time to serve a control-plane gRPC request (registry work included), by method",
        &["method"],
        exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
    )
    .expect("metric registers once")
});

pub static REGISTRY_OPERATIONS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "corriente_registry_operation_duration_seconds",
        "Registry (Redis) operations and their latency, by operation and outcome",
        &["operation", "outcome"],
        exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
    )
    .expect("metric registers once")
});

pub static TAKEOVERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "corriente_stream_takeovers_total",
        "Streams claimed from an owner that no longer published them (dead or frozen origin)"
    )
    .expect("metric registers once")
});

pub static PUBLISH_AUTHORIZATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_publish_authorizations_total",
        "Publish authorization decisions, by result (allowed, refused) and reason (the credential that allowed, or why it was refused)",
        &["result", "reason"]
    )
    .expect("metric registers once")
});

pub static PUBLISH_KEY_ACTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_publish_key_actions_total",
        "Publish keys created and revoked through the admin API",
        &["action"]
    )
    .expect("metric registers once")
});

pub static REDIS_PRIMARY_SWITCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "corriente_redis_primary_switches_total",
        "Times this replica moved to another Redis primary (a Sentinel failover followed)"
    )
    .expect("metric registers once")
});

pub static CLAIMS_UNREPLICATED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "corriente_redis_claims_unreplicated_total",
        "Stream claims refused (and undone) because too few Redis replicas acknowledged them in time"
    )
    .expect("metric registers once")
});

/// The lowercase name of a gRPC status code, for the `code` label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// Creates the control plane's series at zero: every method's requests with code `ok`, the
/// takeovers, the key actions.
pub fn init() {
    for method in [
        "register_node",
        "heartbeat",
        "register_stream",
        "unregister_stream",
        "lookup_stream",
        "list_streams",
        "list_nodes",
        "watch",
        "authorize_publish",
    ] {
        REQUESTS.with_label_values(&[method, "ok"]);
        REQUEST_SECONDS.with_label_values(&[method]);
    }
    LazyLock::force(&TAKEOVERS);
    LazyLock::force(&REDIS_PRIMARY_SWITCHES);
    LazyLock::force(&CLAIMS_UNREPLICATED);
    for action in ["create", "revoke"] {
        PUBLISH_KEY_ACTIONS.with_label_values(&[action]);
    }
}
