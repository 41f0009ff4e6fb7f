//! The streaming core, end to end: ffmpeg publishes to the origin of a real `corriente all`
//! process; ffprobe, ffmpeg and protocol clients watch from its edge over RTMP and HTTP-FLV.

use std::time::Duration;

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use corriente_media::FrameRole;
use corriente_media::frame::unix_micros;
use corriente_media::rtmp::{ClientEvent, ClientMode, ClientSession, handshake};
use corriente_tests::clients::{Playback, play_flv, play_rtmp};
use corriente_tests::media::{
    Publisher, Viewer, av_720p, av_small, decode, ffprobe, video_large_frames, video_packet_sizes,
};
use corriente_tests::{Node, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Waits until the control plane lists `name` as live.
#[tokio::test(flavor = "multi_thread")]
async fn ffprobe_and_ffmpeg_play_over_rtmp_and_http_flv() -> Result<()> {
    let node = Node::all(&[])?;
    let _publisher = Publisher::start(&av_720p()?, &node.ingest_url("cam"))?;
    node.wait_live("cam").await?;

    let probed = node.on_rtmp_and_flv("cam", |url| async move { ffprobe(&url).await });
    for (what, streams) in probed.await? {
        let video: Vec<_> = streams.iter().filter(|s| s.codec_type == "video").collect();
        let audio: Vec<_> = streams.iter().filter(|s| s.codec_type == "audio").collect();
        assert_eq!(video.len(), 1, "{what}: one video stream in {streams:?}");
        assert_eq!(
            (
                video[0].codec_name.as_str(),
                video[0].width,
                video[0].height
            ),
            ("h264", 1280, 720),
            "{what}"
        );
        assert_eq!(audio.len(), 1, "{what}: one audio stream in {streams:?}");
        assert_eq!(audio[0].codec_name, "aac", "{what}");
        assert_eq!(
            streams.len(),
            2,
            "{what}: no extra data streams in {streams:?}"
        );
    }

    // 5 s at 30 fps: at least 90% of 150 frames decoded from each.
    let decoded = node.on_rtmp_and_flv("cam", |url| async move { decode(&url, 5).await });
    for (what, decoded) in decoded.await? {
        assert!(decoded.exit_ok, "{what}: ffmpeg failed");
        assert!(
            decoded.video_frames >= 135,
            "{what}: decoded {} video frames of 150",
            decoded.video_frames
        );
    }
    Ok(())
}

/// Frames larger than gRPC's default 4 MiB message limit (4K or high-quality intra encoders)
/// cross the relay and reach viewers over RTMP and HTTP-FLV.
#[tokio::test(flavor = "multi_thread")]
async fn frames_larger_than_4_mib_cross_the_relay() -> Result<()> {
    let file = video_large_frames()?;
    let sizes = video_packet_sizes(&file).await?;
    assert!(
        !sizes.is_empty() && sizes.iter().all(|&size| size > 4 << 20),
        "the test media must have only frames over 4 MiB: {sizes:?}"
    );

    let node = Node::all(&[])?;
    let _publisher = Publisher::start(&file, &node.ingest_url("big"))?;
    node.wait_live("big").await?;

    let probed = node.on_rtmp_and_flv("big", |url| async move { ffprobe(&url).await });
    for (what, streams) in probed.await? {
        let video: Vec<_> = streams
            .iter()
            .map(|s| (s.codec_name.as_str(), s.width, s.height))
            .collect();
        assert_eq!(video, [("h264", 2560, 1440)], "{what}");
    }
    // 4 s at 2 fps: 8 frames, of which the first may be waited for.
    let decoded = node.on_rtmp_and_flv("big", |url| async move { decode(&url, 4).await });
    for (what, decoded) in decoded.await? {
        assert!(decoded.exit_ok, "{what}: ffmpeg failed");
        assert!(
            decoded.video_frames >= 6,
            "{what}: decoded {} video frames of 8",
            decoded.video_frames
        );
    }
    assert!(
        !node.log_text().contains("message length too large"),
        "the relay refused a frame"
    );
    Ok(())
}

/// A client message split around the start of playback (its first half in the same packet as
/// `play`, the rest once media flows) is read whole: the edge keeps the viewer's chunk stream in
/// step and answers it, and playback goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_split_across_the_start_of_playback_is_read_whole() -> Result<()> {
    let node = Node::all(&[])?;
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("split"))?;
    node.wait_live("split").await?;

    let addr = node.addr("edge-rtmp");
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut input = handshake::connect(&mut stream, Duration::from_secs(5)).await?;
    let tc_url = format!("rtmp://{addr}/live");
    let mut session = ClientSession::new(ClientMode::Play, "live", &tc_url, "split", 4096);
    let mut events = Vec::new();
    // The ping's second half, held back until media flows.
    let mut rest: Option<Bytes> = None;
    let (mut frames, mut frames_after_answer, mut answered) = (0u32, 0u32, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        session.feed(&mut input, unix_micros(), &mut events)?;
        for event in events.drain(..) {
            match event {
                ClientEvent::Frame(_) => {
                    frames += 1;
                    frames_after_answer += u32::from(answered);
                }
                ClientEvent::PingResponse(4242) => answered = true,
                ClientEvent::Refused { code, description } => bail!("{code}: {description}"),
                ClientEvent::Ended => bail!("the edge ended the stream"),
                _ => {}
            }
        }
        if answered && frames_after_answer >= 10 {
            return Ok(());
        }
        if session.has_output() {
            let mut out = BytesMut::from(&session.take_output()[..]);
            if out.windows(7).any(|w| w == b"\x02\x00\x04play") && rest.is_none() {
                session.ping(4242);
                let ping = session.take_output();
                let half = ping.len() / 2;
                out.extend_from_slice(&ping[..half]);
                rest = Some(ping.slice(half..));
            }
            stream.write_all(&out).await?;
        }
        if frames >= 10
            && let Some(rest) = rest.as_mut().filter(|r| !r.is_empty())
        {
            stream.write_all(rest).await?;
            rest.clear();
        }
        input.reserve(64 << 10);
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut input)).await;
        match read {
            Ok(Ok(0)) => {
                bail!("the edge closed the connection ({frames} frames, answered {answered})")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("the connection broke ({frames} frames, answered {answered}): {e}"),
            Err(_) => bail!(
                "no answer to the split ping ({frames} frames, answered {answered}, {frames_after_answer} frames after)"
            ),
        }
    }
}

fn assert_starts_on_a_keyframe_at_once(what: &str, playback: &Playback) {
    assert!(
        playback.refused.is_none(),
        "{what}: refused: {:?}",
        playback.refused
    );
    let first = playback
        .first_media()
        .unwrap_or_else(|| panic!("{what}: no media received"));
    let first_video = playback
        .video()
        .next()
        .unwrap_or_else(|| panic!("{what}: no video"));
    assert_eq!(
        first_video.role,
        FrameRole::Keyframe,
        "{what}: first video frame is not a keyframe"
    );
    // Decoder configuration arrives before any media.
    let config_before = |role| {
        playback
            .frames
            .iter()
            .take_while(|f| f.after <= first.after && !std::ptr::eq(*f, first))
            .any(|f| f.role == role)
    };
    assert!(
        config_before(FrameRole::VideoConfig),
        "{what}: no AVC sequence header before media"
    );
    assert!(
        config_before(FrameRole::AudioConfig),
        "{what}: no AAC sequence header before media"
    );
    assert!(
        first_video.after < Duration::from_millis(500),
        "{what}: first decodable video frame after {:?}",
        first_video.after
    );
    eprintln!(
        "{what}: first keyframe {:?} after connecting",
        first_video.after
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_joining_mid_stream_gets_a_keyframe_first_within_500ms() -> Result<()> {
    let node = Node::all(&[])?;
    let _publisher = Publisher::start(&av_720p()?, &node.ingest_url("cam"))?;
    node.wait_live("cam").await?;
    // The pull starts with the first viewer; keep one watching so later joiners find the
    // stream already flowing on the edge, as on a busy edge.
    let _watcher = Viewer::start(&node.flv_url("cam"))?;
    // Join at different points of the 2 s GOP.
    for pause in [2300, 700, 1100] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let window = Duration::from_millis(1500);
        let (http, rtmp) = tokio::join!(
            play_flv(node.addr("edge-http"), "/live/cam.flv", window),
            play_rtmp(node.addr("edge-rtmp"), "live", "cam", window)
        );
        assert_starts_on_a_keyframe_at_once("HTTP-FLV", &http?);
        assert_starts_on_a_keyframe_at_once("RTMP", &rtmp?);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_viewers_share_one_relay_pull() -> Result<()> {
    let node = Node::all(&[])?;
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("crowd"))?;
    node.wait_live("crowd").await?;

    // Long enough that all fifty are still watching once the last has connected, on a loaded
    // two-core machine too.
    let watch = Duration::from_secs(10);
    let mut viewers = Vec::new();
    for i in 0..50 {
        let (http, rtmp) = (node.addr("edge-http"), node.addr("edge-rtmp"));
        viewers.push(tokio::spawn(async move {
            if i % 2 == 0 {
                ("HTTP-FLV", play_flv(http, "/live/crowd.flv", watch).await)
            } else {
                ("RTMP", play_rtmp(rtmp, "live", "crowd", watch).await)
            }
        }));
    }
    // While all fifty watch: one relay pull, fifty viewers.
    let metrics = wait_for(Duration::from_secs(9), "50 viewers connected", || async {
        let m = node.metrics().await.ok()?;
        let viewers = m.value("corriente_viewers", &[("protocol", "rtmp")])?
            + m.value("corriente_viewers", &[("protocol", "http_flv")])?;
        (viewers == 50.0).then_some(m)
    })
    .await?;
    assert_eq!(
        metrics.value("corriente_relay_pulls_active", &[]),
        Some(1.0),
        "edge pulls the stream once"
    );
    assert_eq!(
        metrics.value("corriente_viewers", &[("protocol", "relay")]),
        Some(1.0),
        "origin serves one relay subscriber"
    );
    assert_eq!(
        metrics.value("corriente_viewers", &[("protocol", "rtmp")]),
        Some(25.0)
    );
    assert_eq!(
        metrics.value("corriente_viewers", &[("protocol", "http_flv")]),
        Some(25.0)
    );

    for viewer in viewers {
        let (what, playback) = viewer.await?;
        let playback = playback?;
        assert!(playback.refused.is_none(), "{what}: refused");
        let video = playback.video().count();
        // 10 s at 30 fps, less what it takes all fifty to connect.
        assert!(video >= 150, "{what}: only {video} video frames in 10 s");
        assert_eq!(
            playback.video().next().map(|f| f.role),
            Some(FrameRole::Keyframe),
            "{what}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_streams_stay_isolated_when_one_ends() -> Result<()> {
    let node = Node::all(&[])?;
    let media = av_small()?;
    let publisher_a = Publisher::start(&media, &node.ingest_url("a"))?;
    let _publisher_b = Publisher::start(&media, &node.ingest_url("b"))?;
    node.wait_live("a").await?;
    node.wait_live("b").await?;

    let mut viewer_b = Viewer::start(&node.rtmp_url("b"))?;
    let viewer_a = tokio::spawn({
        let addr = node.addr("edge-http");
        async move { play_flv(addr, "/live/a.flv", Duration::from_secs(30)).await }
    });
    wait_for(Duration::from_secs(10), "stream b decoding", || async {
        (viewer_b.frames().0 > 30).then_some(())
    })
    .await?;
    let before = viewer_b.frames().0;

    // End stream a abruptly; its viewer gets a clean end, b's viewer carries on.
    publisher_a.kill().await;
    let a = tokio::time::timeout(Duration::from_secs(10), viewer_a).await???;
    assert!(a.ended, "viewer of a got a proper end");
    assert!(a.video().count() > 10, "viewer of a played before the end");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, last_growth) = viewer_b.frames();
    assert!(viewer_b.is_running(), "viewer of b still running");
    assert!(
        after >= before + 45,
        "b kept playing: {before} -> {after} frames"
    );
    assert!(
        last_growth.elapsed() < Duration::from_secs(1),
        "b is still decoding"
    );
    // a can come back under the same name.
    let _publisher_a = Publisher::start(&media, &node.ingest_url("a"))?;
    node.wait_live("a").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_streams_and_duplicate_publishers_get_clear_errors() -> Result<()> {
    let node = Node::all(&[])?;
    let rtmp = play_rtmp(
        node.addr("edge-rtmp"),
        "live",
        "nobody",
        Duration::from_secs(5),
    )
    .await?;
    let refused = rtmp.refused.unwrap_or_default();
    assert!(
        refused.starts_with("NetStream.Play.StreamNotFound"),
        "{refused}"
    );
    let http = play_flv(
        node.addr("edge-http"),
        "/live/nobody.flv",
        Duration::from_secs(5),
    )
    .await?;
    assert!(http.refused.unwrap_or_default().contains("404"));

    let media = av_small()?;
    let _first = Publisher::start(&media, &node.ingest_url("once"))?;
    node.wait_live("once").await?;
    let second = Publisher::start(&media, &node.ingest_url("once"))?;
    let (code, stderr) = second.wait(Duration::from_secs(15)).await?;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("already being published"),
        "ffmpeg said: {stderr}"
    );
    let metrics = node.metrics().await?;
    assert_eq!(
        metrics.value(
            "corriente_publish_refused_total",
            &[("reason", "already_publishing")]
        ),
        Some(1.0)
    );
    assert!(
        metrics
            .value("corriente_play_refused_total", &[("reason", "not_found")])
            .unwrap_or(0.0)
            >= 2.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_viewers_cleanly_and_exits() -> Result<()> {
    let mut node = Node::all(&["--drain-timeout", "5s"])?;
    let publisher = Publisher::start(&av_small()?, &node.ingest_url("bye"))?;
    node.wait_live("bye").await?;
    let mut viewer = Viewer::start(&node.rtmp_url("bye"))?;
    let http = tokio::spawn({
        let addr = node.addr("edge-http");
        async move { play_flv(addr, "/live/bye.flv", Duration::from_secs(30)).await }
    });
    wait_for(Duration::from_secs(10), "viewer decoding", || async {
        (viewer.frames().0 > 15).then_some(())
    })
    .await?;
    let status = node.terminate(Duration::from_secs(10))?;
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        viewer.exit_code(Duration::from_secs(5)).await,
        Some(0),
        "RTMP viewer saw a clean end"
    );
    let http = tokio::time::timeout(Duration::from_secs(5), http).await???;
    assert!(http.ended, "HTTP-FLV response ended");
    let (code, stderr) = publisher.wait(Duration::from_secs(5)).await?;
    assert_ne!(
        code,
        Some(0),
        "the encoder was told the server is going away"
    );
    assert!(stderr.contains("shutting down"), "ffmpeg said: {stderr}");
    Ok(())
}

/// A publisher whose clock starts late (GStreamer's `flvmux` stamps the first tags 5 s and
/// more in, metadata included): a viewer joining on the edge gets the metadata at timestamp
/// 0, as nginx-rtmp sends it, so ffprobe sees exactly the two streams, H.264 and AAC, over
/// HTTP-FLV and RTMP, and no phantom data ("text") stream that ffmpeg's FLV demuxer makes of
/// a script tag with a later timestamp.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_reaches_joining_viewers_at_timestamp_zero() -> Result<()> {
    let node = Node::all(&[])?;
    let media = av_small()?;
    let addr = node.addr("origin-rtmp");
    let publisher = tokio::spawn(async move {
        corriente_tests::clients::publish_flv_file(
            addr,
            "live",
            "late",
            &media,
            corriente_tests::clients::Wire::Offset(5740),
            Duration::from_secs(20),
        )
        .await
    });
    node.wait_live("late").await?;
    for url in [node.flv_url("late"), node.rtmp_url("late")] {
        let streams = ffprobe(&url).await?;
        let kinds: Vec<(&str, &str)> = streams
            .iter()
            .map(|s| (s.codec_type.as_str(), s.codec_name.as_str()))
            .collect();
        assert_eq!(streams.len(), 2, "{url}: {kinds:?}");
        assert!(kinds.contains(&("video", "h264")), "{url}: {kinds:?}");
        assert!(kinds.contains(&("audio", "aac")), "{url}: {kinds:?}");
    }
    publisher.abort();
    Ok(())
}

/// The fan-out's sockets leave Nagle's algorithm on: a viewer that reads in bursts gets the
/// batches written meanwhile merged into fewer segments (a segment is what a write costs: its
/// receive work and the reader's wake-up), while one that reads as data arrives, and so
/// acknowledges each batch, gets every batch at once. With `--viewer-nodelay` every batch is a
/// segment of its own whatever the viewer does.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_reading_in_bursts_gets_batches_merged_into_fewer_segments() -> Result<()> {
    use corriente_tests::clients::flv_segment_rate;
    for (args, merged) in [(&[][..], true), (&["--viewer-nodelay"][..], false)] {
        let node = Node::all(args)?;
        let _publisher = Publisher::start(&av_720p()?, &node.ingest_url("cam"))?;
        node.wait_live("cam").await?;
        let (warm, window) = (Duration::from_secs(1), Duration::from_secs(4));
        let addr = node.addr("edge-http");
        let (prompt, bursty) = tokio::join!(
            flv_segment_rate(addr, "/live/cam.flv", Duration::ZERO, warm, window),
            flv_segment_rate(
                addr,
                "/live/cam.flv",
                Duration::from_millis(150),
                warm,
                window
            ),
        );
        let ((prompt, prompt_bits), (bursty, bursty_bits)) = (prompt?, bursty?);
        eprintln!(
            "{args:?}: prompt {prompt:.1} segments/s ({:.2} Mbit/s), bursty {bursty:.1} segments/s ({:.2} Mbit/s)",
            prompt_bits / 1e6,
            bursty_bits / 1e6
        );
        // Both keep up with the stream (about 2.7 Mbit/s of FLV).
        for (what, bits) in [("prompt", prompt_bits), ("bursty", bursty_bits)] {
            assert!(
                bits > 2.0e6,
                "{args:?}: the {what} reader fell behind: {bits} bit/s"
            );
        }
        if merged {
            assert!(
                bursty < 0.8 * prompt,
                "the bursty reader's batches were not merged: {bursty:.1} segments/s against {prompt:.1}"
            );
        } else {
            assert!(
                bursty > 0.85 * prompt,
                "--viewer-nodelay: the bursty reader got batches merged: {bursty:.1} segments/s against {prompt:.1}"
            );
        }
    }
    Ok(())
}
