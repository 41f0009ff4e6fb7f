//! Interoperability with other RTMP software: a stream GStreamer publishes (`flvmux !
//! rtmp2sink`, H.264 + AAC) reaches rtmpdump, GStreamer's `rtmp2src ! flvdemux`, and ffprobe and
//! ffmpeg over RTMP and HTTP-FLV as exactly one H.264 and one AAC stream that decodes; and every
//! viewer starts with `onMetaData` at timestamp 0, both sequence headers, then a keyframe.
//!
//! GStreamer's `flvmux` sends `onMetaData` again while it runs (whenever upstream tags change,
//! many times in its first seconds), so the media a viewer gets is also checked tag by tag:
//! ffmpeg's FLV demuxer skips `onMetaData` only at timestamp 0 and turns any other script tag
//! into a stream of its own (the phantom `text` subtitle track players show), which ffprobe
//! reports only when it happens to arrive while ffprobe is still probing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use corriente_media::{FrameKind, FrameRole};
use corriente_tests::clients::{Playback, play_flv, play_rtmp};
use corriente_tests::gst::{self, GstPublisher, av_small_long};
use corriente_tests::media::{
    ProbedStream, Publisher, Viewer, av_small, decode, ffprobe, flv_frames,
};
use corriente_tests::{Node, wait_for, work_dir};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How long each client records the stream.
const WINDOW: Duration = Duration::from_secs(6);

/// What [`av_small`] is, as ffprobe lists it: (type, codec, width, height), sorted.
const EXPECTED: [(&str, &str, u32, u32); 2] = [("audio", "aac", 0, 0), ("video", "h264", 320, 240)];

/// `NAME.flv` in the test media directory, unique to this test process.
fn capture_path(name: &str) -> PathBuf {
    work_dir().join(format!("interop-{}-{name}.flv", std::process::id()))
}

/// Starts GStreamer publishing `name` and waits until the cluster lists it.
async fn gst_publish(node: &Node, name: &str) -> Result<GstPublisher> {
    let mut publisher = GstPublisher::start(&av_small_long()?, &node.ingest_url(name))?;
    node.wait_live(name).await?;
    assert!(publisher.is_running(), "gst-launch exited");
    Ok(publisher)
}

/// The probed streams, sorted, as (type, codec, width, height); a mismatch becomes a problem.
fn check_streams(what: &str, streams: &[ProbedStream], problems: &mut Vec<String>) {
    let mut got: Vec<_> = streams
        .iter()
        .map(|s| {
            (
                s.codec_type.as_str(),
                s.codec_name.as_str(),
                s.width,
                s.height,
            )
        })
        .collect();
    got.sort();
    eprintln!("{what}: ffprobe streams {got:?}");
    if got != EXPECTED {
        problems.push(format!(
            "{what}: ffprobe lists {got:?}, expected exactly {EXPECTED:?}"
        ));
    }
}

/// The AMF0 name a script tag starts with (`onMetaData`, `|RtmpSampleAccess`, ...).
fn script_name(payload: &[u8]) -> String {
    match payload {
        [0x02, hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
            String::from_utf8_lossy(&rest[..len]).into_owned()
        }
        _ => format!("{:02x?}", &payload[..payload.len().min(8)]),
    }
}

/// Script tags that ffmpeg's FLV demuxer would make into a stream: all but `onMetaData` at
/// timestamp 0.
fn stray_script_tags<'a>(
    what: &str,
    tags: impl IntoIterator<Item = (FrameKind, FrameRole, u32, &'a [u8])>,
    problems: &mut Vec<String>,
) {
    let stray: Vec<String> = tags
        .into_iter()
        .filter(|(kind, role, ts, _)| {
            *kind == FrameKind::Script && !(*role == FrameRole::Metadata && *ts == 0)
        })
        .map(|(_, _, ts, payload)| format!("{} at {ts} ms", script_name(payload)))
        .collect();
    if !stray.is_empty() {
        problems.push(format!(
            "{what}: {} script tag(s) that ffmpeg reads as a data/subtitle stream \
             (only onMetaData at timestamp 0 is metadata to it): {stray:?}",
            stray.len()
        ));
    }
}

fn playback_tags(playback: &Playback) -> impl Iterator<Item = (FrameKind, FrameRole, u32, &[u8])> {
    playback
        .frames
        .iter()
        .map(|f| (f.kind, f.role, f.timestamp, &f.payload[..]))
}

/// Checks a captured FLV file: ffprobe's streams, its script tags, and that ffmpeg decodes
/// video frames from it.
async fn check_capture(what: &str, path: &Path, problems: &mut Vec<String>) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let frames = flv_frames(&bytes)?;
    let media = frames
        .iter()
        .filter(|f| f.kind != FrameKind::Script)
        .count();
    eprintln!(
        "{what}: captured {} bytes, {media} audio/video tags",
        bytes.len()
    );
    if media == 0 {
        problems.push(format!("{what}: captured no media ({} bytes)", bytes.len()));
        return Ok(());
    }
    let file = path.to_str().context("capture path")?;
    check_streams(what, &ffprobe(file).await?, problems);
    stray_script_tags(
        what,
        frames
            .iter()
            .map(|f| (f.kind, f.role(), f.timestamp, &f.payload[..])),
        problems,
    );
    let decoded = decode(file, 60).await?;
    eprintln!(
        "{what}: ffmpeg decoded {} video frames",
        decoded.video_frames
    );
    if decoded.video_frames == 0 {
        problems.push(format!("{what}: ffmpeg decoded no video frame"));
    }
    Ok(())
}

/// `rtmpdump -v -r URL -o -` (live) for `window`: the FLV it wrote.
async fn rtmpdump(url: &str, window: Duration) -> Result<Vec<u8>> {
    let mut child = Command::new("rtmpdump")
        .args(["-q", "-v", "-r", url, "-o", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn rtmpdump (is it installed?)")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout_at(deadline, stdout.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    let _ = child.kill().await;
    Ok(out)
}

/// Fails with every problem found, so one run tells all that differs.
fn verdict(problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gstreamer_stream_plays_as_h264_and_aac_in_every_client() -> Result<()> {
    let node = Node::all(&[])?;
    let _publisher = gst_publish(&node, "gst").await?;
    let (rtmp_url, flv_url) = (node.rtmp_url("gst"), node.flv_url("gst"));
    let (dump_file, gst_file) = (capture_path("rtmpdump"), capture_path("rtmp2src"));

    // All clients at once, from the first seconds of the publish (when flvmux is busiest
    // re-sending metadata).
    let rtmpdump_run = async {
        let bytes = rtmpdump(&rtmp_url, WINDOW).await?;
        std::fs::write(&dump_file, &bytes)?;
        anyhow::Ok(())
    };
    // About 6 s of tags: 30 video and 43 audio a second.
    let gst_run = gst::play(&rtmp_url, 450, &gst_file);
    let flv_run = async {
        let (probe, decoded, playback) = tokio::join!(
            ffprobe(&flv_url),
            decode(&flv_url, 3),
            play_flv(node.addr("edge-http"), "/live/gst.flv", WINDOW)
        );
        anyhow::Ok((probe?, decoded?, playback?))
    };
    let rtmp_run = async {
        let (probe, decoded, playback) = tokio::join!(
            ffprobe(&rtmp_url),
            decode(&rtmp_url, 3),
            play_rtmp(node.addr("edge-rtmp"), "live", "gst", WINDOW)
        );
        anyhow::Ok((probe?, decoded?, playback?))
    };
    let (dumped, gst_played, flv, rtmp) = tokio::join!(rtmpdump_run, gst_run, flv_run, rtmp_run);
    let mut problems = Vec::new();

    // (a) rtmpdump.
    dumped?;
    check_capture("rtmpdump", &dump_file, &mut problems).await?;

    // (b) GStreamer's rtmp2src ! flvdemux: both pads, their caps, buffers through each.
    let gst_played = gst_played?;
    eprintln!(
        "rtmp2src: video caps {:?}, audio caps {:?}, {} video and {} audio buffers",
        gst_played.video_caps,
        gst_played.audio_caps,
        gst_played.video_buffers,
        gst_played.audio_buffers
    );
    match &gst_played.video_caps {
        Some(caps)
            if caps.starts_with("video/x-h264,")
                && caps.contains("width=(int)320")
                && caps.contains("height=(int)240") => {}
        other => problems.push(format!(
            "rtmp2src: flvdemux video pad caps {other:?}, expected video/x-h264 320x240"
        )),
    }
    match &gst_played.audio_caps {
        Some(caps) if caps.starts_with("audio/mpeg,") && caps.contains("mpegversion=(int)4") => {}
        other => problems.push(format!(
            "rtmp2src: flvdemux audio pad caps {other:?}, expected audio/mpeg mpegversion 4"
        )),
    }
    if gst_played.video_buffers == 0 || gst_played.audio_buffers == 0 {
        problems.push(format!(
            "rtmp2src: {} video and {} audio buffers left flvdemux",
            gst_played.video_buffers, gst_played.audio_buffers
        ));
    }
    check_capture("rtmp2src", &gst_file, &mut problems).await?;

    // (c) HTTP-FLV and (d) RTMP with ffprobe and ffmpeg, and tag by tag.
    for (what, run) in [("HTTP-FLV", flv), ("RTMP", rtmp)] {
        let (probe, decoded, playback) = run?;
        check_streams(what, &probe, &mut problems);
        eprintln!(
            "{what}: ffmpeg decoded {} video frames",
            decoded.video_frames
        );
        if decoded.video_frames == 0 {
            problems.push(format!("{what}: ffmpeg decoded no video frame"));
        }
        stray_script_tags(what, playback_tags(&playback), &mut problems);
    }
    for file in [&dump_file, &gst_file] {
        let _ = std::fs::remove_file(file);
    }
    verdict(problems)
}

/// The first tags of `playback`: `onMetaData` at timestamp 0, then the AVC and AAC sequence
/// headers (either order) before any coded frame, then a keyframe first among pictures; and
/// any later `onMetaData` at timestamp 0 too.
fn check_start(what: &str, playback: &Playback, problems: &mut Vec<String>) {
    let head: Vec<_> = playback
        .frames
        .iter()
        .take(6)
        .map(|f| (f.role, f.timestamp))
        .collect();
    eprintln!("{what}: first tags {head:?}");
    if let Some(refused) = &playback.refused {
        problems.push(format!("{what}: refused: {refused}"));
        return;
    }
    let frames = &playback.frames;
    match frames.first() {
        Some(f) if f.role == FrameRole::Metadata && f.timestamp == 0 => {}
        other => problems.push(format!(
            "{what}: first tag {:?}, expected onMetaData at timestamp 0 (first tags {head:?})",
            other.map(|f| (f.role, f.timestamp))
        )),
    }
    // FLV video tag: frame type and codec id, then AVCPacketType; audio tag: format, rate,
    // size and channels, then AACPacketType.
    let avc_header = frames.iter().position(|f| {
        f.role == FrameRole::VideoConfig
            && f.payload.len() > 1
            && f.payload[0] & 0x0f == 7
            && f.payload[1] == 0
    });
    let aac_header = frames.iter().position(|f| {
        f.role == FrameRole::AudioConfig
            && f.payload.len() > 1
            && f.payload[0] >> 4 == 10
            && f.payload[1] == 0
    });
    let first_coded = frames.iter().position(|f| {
        matches!(
            f.role,
            FrameRole::Keyframe | FrameRole::Inter | FrameRole::Audio
        )
    });
    for (name, at) in [
        ("AVC sequence header", avc_header),
        ("AAC sequence header", aac_header),
    ] {
        match (at, first_coded) {
            (Some(at), _) if at == 1 || at == 2 => {}
            (Some(at), Some(coded)) if at < coded => problems.push(format!(
                "{what}: {name} is tag {at}, not right after onMetaData (first tags {head:?})"
            )),
            (Some(at), coded) => problems.push(format!(
                "{what}: {name} is tag {at}, after the first coded frame (tag {coded:?})"
            )),
            (None, _) => problems.push(format!("{what}: no {name} (first tags {head:?})")),
        }
    }
    match playback.video().next() {
        Some(f) if f.role == FrameRole::Keyframe => {}
        Some(f) => problems.push(format!(
            "{what}: first picture is {:?} at {} ms, not a keyframe",
            f.role, f.timestamp
        )),
        None => problems.push(format!("{what}: no video frame")),
    }
    stray_script_tags(what, playback_tags(playback), problems);
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_start_with_metadata_at_zero_then_sequence_headers_then_a_keyframe() -> Result<()> {
    let node = Node::all(&[])?;
    // GStreamer's muxer, and ffmpeg's for comparison.
    let _gst = gst_publish(&node, "gst").await?;
    let _ffmpeg = Publisher::start(&av_small()?, &node.ingest_url("ffmpeg"))?;
    node.wait_live("ffmpeg").await?;
    let window = Duration::from_secs(3);
    let mut problems = Vec::new();
    for name in ["gst", "ffmpeg"] {
        let path = format!("/live/{name}.flv");
        // The first viewers start the edge's pull.
        let (rtmp, flv) = tokio::join!(
            play_rtmp(node.addr("edge-rtmp"), "live", name, window),
            play_flv(node.addr("edge-http"), &path, window)
        );
        check_start(&format!("{name}: first RTMP viewer"), &rtmp?, &mut problems);
        check_start(
            &format!("{name}: first HTTP-FLV viewer"),
            &flv?,
            &mut problems,
        );

        // Later viewers join a flowing stream, mid-GOP, from the edge's cache.
        let holder = Viewer::start(&node.flv_url(name))?;
        wait_for(
            Duration::from_secs(30),
            &format!("a viewer of {name} to decode 45 frames"),
            || async { (holder.frames().0 > 45).then_some(()) },
        )
        .await?;
        let (rtmp, flv) = tokio::join!(
            play_rtmp(node.addr("edge-rtmp"), "live", name, window),
            play_flv(node.addr("edge-http"), &path, window)
        );
        check_start(
            &format!("{name}: joining RTMP viewer"),
            &rtmp?,
            &mut problems,
        );
        check_start(
            &format!("{name}: joining HTTP-FLV viewer"),
            &flv?,
            &mut problems,
        );
    }
    verdict(problems)
}
