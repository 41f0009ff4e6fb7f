//! Shared media plumbing of Corriente: frames and their FLV/AMF0 encodings, the RTMP protocol
//! (chunk stream, messages, server and client sessions), the per-stream hub with its GOP cache
//! and batching, subscriber feeds with the slow-viewer policy, and socket helpers for fan-out.
//!
//! Nothing here knows about the cluster: origins and edges build on it. Stream names and media
//! descriptions come from `corriente-core`, and are re-exported here.

pub mod amf0;
pub mod fanout;
pub mod feed;
pub mod flv;
pub mod frame;
pub mod hub;
pub mod info;
pub mod io;
pub mod metrics;
pub mod mp4;
pub mod mux;
pub mod output;
mod ring;
pub mod rtmp;
pub mod segment;

pub use corriente_core::StreamKey;
pub use feed::Feed;
pub use frame::{Frame, FrameKind, FrameRole};
pub use hub::{Hub, HubConfig, HubWriter, spawn_hub};
pub use info::MediaInfo;
pub use metrics::Protocol;
pub use output::{Batch, EndReason, FeedEnd, Init, LagPolicy, Segment, TrackFlags};

#[cfg(test)]
mod layering {
    /// The modules below the hub form no circle: the output vocabulary uses none of them, the
    /// write queues only it, feeds and the fan-out neither the hub nor each other. (Their unit
    /// tests, after `#[cfg(test)]`, may build a hub.)
    #[test]
    fn the_output_modules_form_no_circle() {
        let code = |src: &'static str| src.split("#[cfg(test)]").next().unwrap_or(src);
        let rules: [(&str, &str, &[&str]); 4] = [
            (
                "output",
                include_str!("output.rs"),
                &["hub", "feed", "fanout", "io"],
            ),
            ("io", include_str!("io.rs"), &["hub", "feed", "fanout"]),
            ("feed", include_str!("feed.rs"), &["hub", "fanout"]),
            ("fanout", include_str!("fanout.rs"), &["hub", "feed"]),
        ];
        for (module, src, forbidden) in rules {
            for other in forbidden {
                assert!(
                    !code(src).contains(&format!("crate::{other}::")),
                    "media::{module} must not use media::{other}"
                );
            }
        }
    }
}
