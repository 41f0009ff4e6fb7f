//! Origin metrics: publishers and publish refusals.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGauge, register_int_counter_vec, register_int_gauge};

pub static PUBLISHERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "corriente_publishers",
        "Publishers currently streaming into this origin"
    )
    .expect("metric registers once")
});

pub static PUBLISH_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_publish_refused_total",
        "Publish requests refused, by reason",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Publications the origin ended because their credential stopped being valid while live
/// (`revoked_key`, `expired`).
pub static PUBLISH_STOPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_publishers_stopped_total",
        "Live publications stopped because their stream key was revoked or expired, by reason",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Streams an origin stopped itself because it could not renew their lease in time.
pub static SELF_FENCED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "corriente_streams_self_fenced_total",
        "Streams this origin stopped because it could not renew their lease within the TTL"
    )
    .expect("metric registers once")
});

/// Forwards (restreaming) running on this origin, by state.
pub static FORWARDS: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "corriente_forwards",
        "Forwards (restreaming to other servers) of streams owned here, by state: connecting, publishing, retrying",
        &["state"]
    )
    .expect("metric registers once")
});

/// Forward sessions that failed, by reason.
pub static FORWARD_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_forward_failures_total",
        "Forward sessions that failed or could not start, by reason (each is retried with backoff)",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Recordings being written on this origin.
pub static RECORDINGS_ACTIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "corriente_recordings_active",
        "Recordings being written on this origin"
    )
    .expect("metric registers once")
});

/// Bytes written to recordings.
pub static RECORDING_BYTES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "corriente_recording_bytes_total",
        "Bytes written to recordings on this origin"
    )
    .expect("metric registers once")
});

/// Recordings stopped before their stream ended, by reason.
pub static RECORDINGS_STOPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_recordings_stopped_total",
        "Recordings stopped while their stream went on, by reason: disk_full, write_error, unsupported",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Recordings deleted by retention.
pub static RECORDINGS_DELETED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "corriente_recordings_deleted_total",
        "Finished recordings this origin deleted by retention (--record-max-age, --record-max-bytes)"
    )
    .expect("metric registers once")
});

/// Every reason of [`FORWARD_FAILURES`].
pub const FORWARD_FAILURE_REASONS: [&str; 8] = [
    "unreachable",
    "tls",
    "handshake",
    "refused",
    "closed",
    "protocol",
    "write_timeout",
    "too_slow",
];

/// Creates the origin's series at zero (see `corriente_media::metrics::init`).
pub fn init() {
    corriente_media::metrics::init();
    LazyLock::force(&PUBLISHERS);
    LazyLock::force(&SELF_FENCED);
    let denials = corriente_cluster::PublishDenial::ALL.map(|d| d.as_str());
    let local = [
        "rate_limited",
        "bitrate_exceeded",
        "already_publishing",
        "control_plane_unavailable",
        "draining",
    ];
    for reason in denials.iter().chain(local.iter()) {
        PUBLISH_REFUSED.with_label_values(&[reason]);
    }
    for reason in ["revoked_key", "expired"] {
        PUBLISH_STOPPED.with_label_values(&[reason]);
    }
    for state in corriente_cluster::ForwardState::ALL {
        FORWARDS.with_label_values(&[state.as_str()]);
    }
    for reason in FORWARD_FAILURE_REASONS {
        FORWARD_FAILURES.with_label_values(&[reason]);
    }
    LazyLock::force(&RECORDINGS_ACTIVE);
    LazyLock::force(&RECORDING_BYTES);
    LazyLock::force(&RECORDINGS_DELETED);
    for reason in ["disk_full", "write_error", "unsupported", "ended"] {
        RECORDINGS_STOPPED.with_label_values(&[reason]);
    }
}
