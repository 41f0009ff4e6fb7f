//! Fan-out metrics shared by every role: what the hub, feeds and viewer connections count.
//!
//! Labels are bounded (protocol, reason): never a stream name or a client address.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramVec, IntCounterVec, IntGaugeVec, exponential_buckets,
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
};

/// How a subscriber receives a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Rtmp,
    HttpFlv,
    /// An edge pulling from an origin.
    Relay,
    /// An origin forwarding (restreaming) a stream to another server.
    Forward,
    /// An origin recording a stream to disk.
    Record,
    /// HLS viewers (sessions of requests, counted by the edge).
    Hls,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rtmp => "rtmp",
            Protocol::HttpFlv => "http_flv",
            Protocol::Relay => "relay",
            Protocol::Forward => "forward",
            Protocol::Record => "record",
            Protocol::Hls => "hls",
        }
    }
}

/// Frames a subscriber never received, by reason (`lagging`: skipped while waiting for a
/// keyframe after falling behind).
pub static FRAMES_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_frames_dropped_total",
        "Frames a subscriber skipped because it fell behind, by protocol and reason",
        &["protocol", "reason"]
    )
    .expect("metric registers once")
});

/// Frames a stream's hub did not take, by reason (`oversized_config`: a configuration frame
/// over the limit).
pub static STREAM_FRAMES_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_stream_frames_dropped_total",
        "Frames a stream's hub refused to take, by reason",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Times a subscriber lost its place in the broadcast ring and skipped to a keyframe.
pub static LAG_SKIPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_lag_skips_total",
        "Times a subscriber fell behind the broadcast ring and skipped to the next keyframe",
        &["protocol"]
    )
    .expect("metric registers once")
});

/// Subscribers disconnected by the node, by reason (`too_slow`, `write_stall`).
pub static VIEWERS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_viewers_dropped_total",
        "Viewers and relay subscribers the node disconnected, by protocol and reason",
        &["protocol", "reason"]
    )
    .expect("metric registers once")
});

/// Open subscribers by protocol.
pub static VIEWERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "corriente_viewers",
        "Viewers currently connected (relay: edges pulling from this origin), by protocol",
        &["protocol"]
    )
    .expect("metric registers once")
});

/// Bytes written to subscribers.
pub static BYTES_OUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_bytes_out_total",
        "Bytes written to viewers and relay subscribers, by protocol",
        &["protocol"]
    )
    .expect("metric registers once")
});

/// Bytes received from publishers and upstream relays.
pub static BYTES_IN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_bytes_in_total",
        "Bytes received from publishers (rtmp) and origins (relay), by protocol",
        &["protocol"]
    )
    .expect("metric registers once")
});

/// Time from a viewer's request to the first keyframe written to it.
pub static TIME_TO_FIRST_FRAME: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "corriente_time_to_first_frame_seconds",
        "Time from a viewer's play request to its first video keyframe (or first audio frame of an audio-only stream) being written",
        &["protocol"],
        exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// Shorthand for the time-to-first-frame histogram of one protocol.
pub fn time_to_first_frame(protocol: Protocol) -> Histogram {
    TIME_TO_FIRST_FRAME.with_label_values(&[protocol.as_str()])
}

/// Batches hubs sent to their subscribers (one write per caught-up viewer each).
pub static BATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_hub_batches_total",
        "Batches of frames hubs sent to subscribers (at edges: one write per caught-up viewer each)",
        &["outputs"]
    )
    .expect("metric registers once")
});

/// Direct writes that could not take a whole batch, handing the rest to the viewer's task.
pub static FANOUT_BACKLOGS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_fanout_backlogs_total",
        "Times a viewer's socket could not take a whole batch and its connection task took over writing",
        &["protocol"]
    )
    .expect("metric registers once")
});

/// Streams live on this node: published here (origin) or pulled here (edge).
pub static STREAMS_ACTIVE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "corriente_streams_active",
        "Streams live on this node: published to it (role origin) or pulled by it (role edge)",
        &["role"]
    )
    .expect("metric registers once")
});

/// Creates every series of this module whose label values are known (protocols, reasons), at
/// zero, so that dashboards and alerts see 0 rather than "no data" before the first event.
pub fn init() {
    let viewers = [Protocol::Rtmp, Protocol::HttpFlv, Protocol::Hls];
    let all = [
        Protocol::Rtmp,
        Protocol::HttpFlv,
        Protocol::Relay,
        Protocol::Forward,
        Protocol::Record,
        Protocol::Hls,
    ];
    for p in all.map(Protocol::as_str) {
        FRAMES_DROPPED.with_label_values(&[p, "lagging"]);
        LAG_SKIPS.with_label_values(&[p]);
        for reason in ["too_slow", "write_stall"] {
            VIEWERS_DROPPED.with_label_values(&[p, reason]);
        }
        VIEWERS.with_label_values(&[p]);
        BYTES_OUT.with_label_values(&[p]);
        FANOUT_BACKLOGS.with_label_values(&[p]);
    }
    for p in viewers.map(Protocol::as_str) {
        TIME_TO_FIRST_FRAME.with_label_values(&[p]);
    }
    for p in ["rtmp", "relay"] {
        BYTES_IN.with_label_values(&[p]);
    }
    for outputs in ["raw", "muxed"] {
        BATCHES.with_label_values(&[outputs]);
    }
    for role in ["origin", "edge"] {
        STREAMS_ACTIVE.with_label_values(&[role]);
    }
    STREAM_FRAMES_DROPPED.with_label_values(&["oversized_config"]);
}
