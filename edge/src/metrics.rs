//! Edge metrics: relay pulls, failovers, play refusals.

use std::sync::LazyLock;

use prometheus::{
    Histogram, IntCounter, IntCounterVec, IntGauge, exponential_buckets, register_histogram,
    register_int_counter, register_int_counter_vec, register_int_gauge,
};

pub static RELAY_PULLS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "corriente_relay_pulls_active",
        "Relay pulls from origins currently running on this edge (one per stream with viewers)"
    )
    .expect("metric registers once")
});

pub static FAILOVERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "corriente_relay_failovers_total",
        "Times a pull resumed its stream from a new upstream after losing the origin"
    )
    .expect("metric registers once")
});

pub static PLAY_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_play_refused_total",
        "Play requests refused, by protocol and reason",
        &["protocol", "reason"]
    )
    .expect("metric registers once")
});

pub static FAILOVER_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "corriente_relay_failover_duration_seconds",
        "Time from losing a stream's origin to the first frame from its next origin, viewers kept connected",
        exponential_buckets(0.01, 2.0, 12).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// Times the edge re-listed the registry's streams after (re)connecting its watch.
pub static RESYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "corriente_edge_resyncs_total",
        "Times the edge re-listed the registry after (re)connecting its watch, to make up for missed events"
    )
    .expect("metric registers once")
});

/// On-demand playback requests, by answer (`200`, `206`, `304`, `404`, `416`, `502`, ...).
pub static VOD_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_vod_requests_total",
        "On-demand playback requests (/vod/APP/NAME/ID.mp4), by HTTP status",
        &["status"]
    )
    .expect("metric registers once")
});

/// Blocks of recordings asked of the edge's cache: served from it, or fetched from the origin.
pub static VOD_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_vod_cache_requests_total",
        "Blocks of recordings the edge's on-demand cache was asked for: hit (held, or being fetched for another request) or miss (fetched from the origin over the relay)",
        &["result"]
    )
    .expect("metric registers once")
});

pub static VOD_CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "corriente_vod_cache_bytes",
        "Bytes of recordings the edge's on-demand cache holds (bounded by --vod-cache-size)"
    )
    .expect("metric registers once")
});

/// Every play refusal reason (the `reason` label of `corriente_play_refused_total`).
pub const PLAY_REFUSAL_REASONS: &[&str] = &[
    "bad_name",
    "ip_denied",
    "token_missing",
    "token_malformed",
    "token_expired",
    "token_bad_signature",
    "webhook_refused",
    "webhook_unavailable",
    "draining",
    "not_found",
    "unavailable",
    "rate_limited",
    "per_ip_limit",
    "connection_limit",
];

/// Creates the edge's series at zero (see `corriente_media::metrics::init`).
pub fn init() {
    corriente_media::metrics::init();
    LazyLock::force(&RELAY_PULLS);
    LazyLock::force(&FAILOVERS);
    LazyLock::force(&FAILOVER_SECONDS);
    LazyLock::force(&RESYNCS);
    crate::pulls::init_metrics();
    LazyLock::force(&VOD_CACHE_BYTES);
    for protocol in ["vod", "hls"] {
        corriente_media::metrics::BYTES_OUT.with_label_values(&[protocol]);
    }
    for result in ["hit", "miss"] {
        VOD_CACHE.with_label_values(&[result]);
    }
    for status in ["200", "206", "304", "404", "416"] {
        VOD_REQUESTS.with_label_values(&[status]);
    }
    for protocol in ["rtmp", "http_flv", "vod", "hls"] {
        for reason in PLAY_REFUSAL_REASONS {
            PLAY_REFUSED.with_label_values(&[protocol, reason]);
        }
    }
}
