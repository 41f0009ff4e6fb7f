//! Audio-only (radio, AAC and MP3) and video-only streams, end to end through origin, relay and
//! edge, over RTMP and HTTP-FLV: nothing waits for a keyframe that never comes.

use std::time::Duration;

use anyhow::Result;
use corriente_media::FrameRole;
use corriente_tests::Node;
use corriente_tests::clients::{Playback, play_flv, play_rtmp};
use corriente_tests::media::{
    ProbedStream, Publisher, Viewer, audio_aac, audio_mp3, ffprobe, video_only,
};

fn only(streams: &[ProbedStream], kind: &str, codec: &str, what: &str) {
    let matching: Vec<_> = streams
        .iter()
        .filter(|s| s.codec_type == kind && s.codec_name == codec)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{what}: one {kind} {codec} stream in {streams:?}"
    );
    assert_eq!(
        streams
            .iter()
            .filter(|s| s.codec_type == "audio" || s.codec_type == "video")
            .count(),
        1,
        "{what}: nothing else in {streams:?}"
    );
}

fn first_audio_within(what: &str, playback: &Playback, limit: Duration) {
    assert!(
        playback.refused.is_none(),
        "{what}: refused {:?}",
        playback.refused
    );
    let first = playback
        .audio()
        .next()
        .unwrap_or_else(|| panic!("{what}: no audio"));
    eprintln!(
        "{what}: first audio frame {:?} after connecting",
        first.after
    );
    assert!(
        first.after < limit,
        "{what}: first audio frame after {:?}",
        first.after
    );
    assert!(
        playback.video().next().is_none(),
        "{what}: no video in a radio stream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn radio_streams_play_at_once_over_rtmp_and_http_flv() -> Result<()> {
    let node = Node::all(&[])?;
    let _aac = Publisher::start(&audio_aac()?, &node.ingest_url("radio-aac"))?;
    let _mp3 = Publisher::start(&audio_mp3()?, &node.ingest_url("radio-mp3"))?;
    node.wait_live("radio-aac").await?;
    node.wait_live("radio-mp3").await?;
    // A first listener starts each pull; later ones join a flowing stream.
    let _listeners = [
        Viewer::start(&node.flv_url("radio-aac"))?,
        Viewer::start(&node.flv_url("radio-mp3"))?,
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;

    for (name, codec) in [("radio-aac", "aac"), ("radio-mp3", "mp3")] {
        let probed = node.on_rtmp_and_flv(name, |url| async move { ffprobe(&url).await });
        for (what, streams) in probed.await? {
            only(&streams, "audio", codec, &format!("{name} over {what}"));
        }
        let window = Duration::from_millis(1500);
        let path = format!("/live/{name}.flv");
        let (rtmp, http) = tokio::join!(
            play_rtmp(node.addr("edge-rtmp"), "live", name, window),
            play_flv(node.addr("edge-http"), &path, window)
        );
        let (rtmp, http) = (rtmp?, http?);
        first_audio_within(&format!("{name} RTMP"), &rtmp, Duration::from_millis(500));
        first_audio_within(
            &format!("{name} HTTP-FLV"),
            &http,
            Duration::from_millis(500),
        );
        // A steady flow, not just a burst: about 43 AAC or 38 MP3 frames a second.
        assert!(
            http.audio().count() > 40,
            "{name}: {} audio frames in 1.5 s",
            http.audio().count()
        );
        if codec == "aac" {
            assert!(
                http.frames.iter().any(|f| f.role == FrameRole::AudioConfig),
                "AAC sequence header sent"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_video_only_stream_plays_likewise() -> Result<()> {
    let node = Node::all(&[])?;
    let _publisher = Publisher::start(&video_only()?, &node.ingest_url("silent"))?;
    node.wait_live("silent").await?;
    let _first = Viewer::start(&node.flv_url("silent"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probed = node.on_rtmp_and_flv("silent", |url| async move { ffprobe(&url).await });
    for (what, streams) in probed.await? {
        only(&streams, "video", "h264", what);
    }
    let playback = play_flv(
        node.addr("edge-http"),
        "/live/silent.flv",
        Duration::from_secs(2),
    )
    .await?;
    let first = playback.video().next().expect("video");
    assert_eq!(first.role, FrameRole::Keyframe);
    assert!(
        first.after < Duration::from_millis(500),
        "first keyframe after {:?}",
        first.after
    );
    assert!(playback.audio().next().is_none());
    Ok(())
}
