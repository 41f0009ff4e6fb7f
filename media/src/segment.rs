//! Where HLS segments start, decided once for the whole cluster. Edges that pull the same
//! stream must cut the same segments and number them alike, or a player whose requests go to
//! different edges would get different playlists. An edge that joins mid-stream cannot know
//! where earlier segments started, so the origin, which sees the whole publication, marks each
//! frame that starts a segment with its media sequence number ([`Frame::segment`]), and the
//! relay carries the mark.
//!
//! A segment starts at a video keyframe once at least the target duration (less a frame's
//! worth of jitter) has passed since the last segment started — at every keyframe when they
//! are further apart —, and in an audio-only stream at the first audio frame past the target.
//! Numbers start where the registry says (`HlsSequence` in the cluster crate: past every
//! number an earlier publication of the name used, close enough to continue its playlist
//! after a failover) and grow by one per segment. The marker shares the next number with the
//! origin's heartbeat, which reports it to the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::frame::{Frame, FrameKind, FrameRole};

/// Shortest target duration.
pub const MIN_TARGET: Duration = Duration::from_secs(1);

/// Jitter allowed below the target: a keyframe this much early still starts a segment.
const EARLY_MS: u32 = 50;

/// Marks the frames of one publication that start HLS segments.
#[derive(Debug, Clone)]
pub struct SegmentMarker {
    target_ms: u32,
    next: Arc<AtomicU64>,
    last_cut: Option<u32>,
    has_video: bool,
}

impl SegmentMarker {
    /// A marker for a publication whose first segment is number `first_msn`.
    pub fn new(target: Duration, first_msn: u64) -> Self {
        Self {
            target_ms: target
                .max(MIN_TARGET)
                .as_millis()
                .min(u128::from(u32::MAX / 4)) as u32,
            next: Arc::new(AtomicU64::new(first_msn.max(1))),
            last_cut: None,
            has_video: false,
        }
    }

    /// The number the next segment will get, as it moves.
    pub fn next(&self) -> Arc<AtomicU64> {
        self.next.clone()
    }

    /// Sets `frame.segment` when the frame starts a segment.
    pub fn mark(&mut self, frame: &mut Frame) {
        let candidate = match frame.role() {
            FrameRole::VideoConfig => {
                self.has_video = true;
                false
            }
            FrameRole::Keyframe => {
                self.has_video = true;
                true
            }
            FrameRole::Audio => !self.has_video,
            _ => false,
        };
        if !candidate || (frame.kind == FrameKind::Audio && self.has_video) {
            return;
        }
        let due = self.last_cut.is_none_or(|last| {
            let since = frame.timestamp.wrapping_sub(last);
            // A timestamp going back (a publisher's glitch) starts a segment too.
            since >= self.target_ms.saturating_sub(EARLY_MS) || since > u32::MAX / 2
        });
        if due {
            frame.segment = self.next.fetch_add(1, Ordering::Relaxed);
            self.last_cut = Some(frame.timestamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn video(ts: u32, key: bool) -> Frame {
        let b0 = if key { 0x17 } else { 0x27 };
        Frame::new(
            FrameKind::Video,
            ts,
            Bytes::from(vec![b0, 1, 0, 0, 0, 0, 0, 0, 1]),
            0,
        )
    }

    fn audio(ts: u32) -> Frame {
        Frame::new(
            FrameKind::Audio,
            ts,
            Bytes::from_static(&[0xaf, 1, 0x21]),
            0,
        )
    }

    fn config() -> Frame {
        Frame::new(
            FrameKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f]),
            0,
        )
    }

    #[test]
    fn cuts_at_keyframes_past_the_target_numbered_from_the_first_number() {
        let mut m = SegmentMarker::new(Duration::from_secs(2), 17_960_000_001);
        let mut marks = Vec::new();
        let mut c = config();
        m.mark(&mut c);
        assert_eq!(c.segment, 0);
        for i in 0..150u32 {
            let ts = i * 1000 / 30;
            let mut v = video(ts, i % 30 == 0);
            m.mark(&mut v);
            let mut a = audio(ts);
            m.mark(&mut a);
            assert_eq!(a.segment, 0, "audio never cuts a stream with video");
            if v.segment != 0 {
                marks.push((ts, v.segment));
            }
        }
        // Keyframes every second, a 2 s target: every other keyframe.
        assert_eq!(
            marks,
            [
                (0, 17_960_000_001),
                (2000, 17_960_000_002),
                (4000, 17_960_000_003)
            ]
        );
        assert_eq!(m.next().load(Ordering::Relaxed), 17_960_000_004);
    }

    #[test]
    fn audio_only_streams_cut_on_audio_and_slow_keyframes_cut_every_time() {
        let mut m = SegmentMarker::new(Duration::from_secs(1), 10);
        let cuts = (0..100u32)
            .map(|i| {
                let mut a = audio(i * 23);
                m.mark(&mut a);
                a.segment
            })
            .filter(|s| *s != 0)
            .count();
        assert_eq!(cuts, 3, "2.3 s of audio, 1 s segments");
        let mut m = SegmentMarker::new(Duration::from_secs(1), 10);
        let cuts = (0..4u32)
            .map(|i| {
                let mut v = video(i * 4000, true);
                m.mark(&mut v);
                v.segment
            })
            .collect::<Vec<_>>();
        assert_eq!(cuts, [10, 11, 12, 13]);
    }
}
