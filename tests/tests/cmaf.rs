//! The CMAF (fragmented MP4) muxer that HLS and recordings build on, checked with real
//! decoders: the test media (FLV, as publishers send it) muxed GOP by GOP into an
//! initialization segment and fragments; ffprobe must see the same codecs, size and length,
//! and ffmpeg must decode every video frame. A recording made progressive (`faststart`) must
//! play the same.

use std::path::Path;

use anyhow::{Context, Result};
use corriente_media::mp4::{Fragmenter, TrackKind, Tracks, faststart, sample};
use corriente_media::{Frame, FrameRole, MediaInfo};
use corriente_tests::media::{
    audio_aac, av_720p, av_small, count_frames, ffprobe, flv_frames, video_only,
};
use tokio::process::Command;

/// Frames of an FLV file.
fn frames(path: &Path) -> Result<Vec<Frame>> {
    flv_frames(&std::fs::read(path)?)
}

/// Muxes `frames` into `out` with one fragment per GOP (per second for audio only); returns
/// the video samples written.
fn mux(frames: &[Frame], out: &Path) -> Result<(usize, Vec<String>)> {
    let mut info = MediaInfo::default();
    for f in frames {
        corriente_media::info::observe(&mut info, f);
    }
    let config = |role| frames.iter().find(|f| f.role() == role);
    let tracks = Tracks::new(
        config(FrameRole::VideoConfig),
        config(FrameRole::AudioConfig),
        info.width,
        info.height,
    )?;
    let codecs = tracks.codecs();
    let mut file = tracks.init_segment()?;
    let mut fragmenter = Fragmenter::new(tracks);
    let (mut sequence, mut video, mut last_cut) = (1, 0, 0);
    for frame in frames {
        let Some(s) = sample(frame) else { continue };
        let cut = match s.track {
            TrackKind::Video => s.keyframe,
            TrackKind::Audio => {
                fragmenter.tracks().track_id(TrackKind::Video).is_none()
                    && s.dts_ms >= last_cut + 1000
            }
        };
        if cut && fragmenter.pending() {
            file.extend(fragmenter.flush(sequence)?.context("a fragment")?);
            sequence += 1;
            last_cut = s.dts_ms;
        }
        if s.track == TrackKind::Video {
            video += 1;
        }
        fragmenter.push(s);
    }
    if let Some(last) = fragmenter.finish(sequence)? {
        file.extend(last);
    }
    std::fs::write(out, file)?;
    Ok((video, codecs))
}

async fn decodes_cleanly(path: &Path) -> Result<String> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .await?;
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

fn out(name: &str) -> std::path::PathBuf {
    corriente_tests::work_dir().join(format!("cmaf-{}-{name}.mp4", std::process::id()))
}

#[tokio::test(flavor = "multi_thread")]
async fn h264_and_aac_mux_into_fragments_ffmpeg_decodes_whole() -> Result<()> {
    for (media, width, height) in [(av_small()?, 320, 240), (av_720p()?, 1280, 720)] {
        let path = out(&format!("{width}p"));
        let (video, codecs) = mux(&frames(&media)?, &path)?;
        let streams = ffprobe(path.to_str().context("path")?).await?;
        eprintln!("{width}x{height}: {codecs:?}, {video} video samples, ffprobe {streams:?}");
        assert_eq!(streams.len(), 2, "{streams:?}");
        assert!(
            streams
                .iter()
                .any(|s| s.codec_name == "h264" && (s.width, s.height) == (width, height))
        );
        assert!(streams.iter().any(|s| s.codec_name == "aac"));
        let (decoded, duration) = count_frames(&path).await?;
        eprintln!("{width}x{height}: decoded {decoded} of {video} frames, {duration} s");
        assert_eq!(decoded, video as u64, "every video frame decodes");
        assert!((9.5..=10.5).contains(&duration), "duration {duration}");
        let errors = decodes_cleanly(&path).await?;
        assert!(errors.trim().is_empty(), "ffmpeg: {errors}");
        assert!(
            codecs[0].starts_with("avc1.") && codecs[1] == "mp4a.40.2",
            "{codecs:?}"
        );
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_only_and_video_only_streams_mux_too() -> Result<()> {
    let radio = out("radio");
    let (video, codecs) = mux(&frames(&audio_aac()?)?, &radio)?;
    assert_eq!(
        (video, codecs.as_slice()),
        (0, &["mp4a.40.2".to_owned()][..])
    );
    let streams = ffprobe(radio.to_str().context("path")?).await?;
    assert!(
        streams.len() == 1 && streams[0].codec_name == "aac",
        "{streams:?}"
    );
    let errors = decodes_cleanly(&radio).await?;
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");

    let silent = out("video-only");
    let (video, _) = mux(&frames(&video_only()?)?, &silent)?;
    let streams = ffprobe(silent.to_str().context("path")?).await?;
    assert!(
        streams.len() == 1 && streams[0].codec_name == "h264",
        "{streams:?}"
    );
    let (decoded, _) = count_frames(&silent).await?;
    assert_eq!(decoded, video as u64);
    let _ = std::fs::remove_file(&radio);
    let _ = std::fs::remove_file(&silent);
    Ok(())
}

/// Each stream's `start_time` as ffprobe reads it (seconds), by codec type (`video`, `audio`).
async fn start_times(path: &Path) -> Result<Vec<(String, f64)>> {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,start_time",
        ])
        .args(["-of", "json"])
        .arg(path)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut starts: Vec<(String, f64)> = json["streams"]
        .as_array()
        .context("streams")?
        .iter()
        .map(|s| {
            let kind = s["codec_type"].as_str().context("codec_type")?.to_owned();
            let start = s["start_time"].as_str().context("start_time")?.parse()?;
            Ok((kind, start))
        })
        .collect::<Result<_>>()?;
    starts.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(starts)
}

/// The kinds of a file's top-level boxes, in order.
fn top_level_boxes(bytes: &[u8]) -> Result<Vec<String>> {
    let mut kinds = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into()?) as usize;
        let size = match size {
            1 => u64::from_be_bytes(bytes[at + 8..at + 16].try_into()?) as usize,
            0 => bytes.len() - at,
            n => n,
        };
        kinds.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        anyhow::ensure!(size >= 8, "a box of {size} bytes at {at}");
        at += size;
    }
    anyhow::ensure!(
        at == bytes.len(),
        "the last box ends at {at} of {}",
        bytes.len()
    );
    Ok(kinds)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_made_progressive_has_its_moov_first_and_plays_the_same() -> Result<()> {
    let fragmented = out("faststart-fmp4");
    let (video, _) = mux(&frames(&av_small()?)?, &fragmented)?;
    let progressive = out("faststart");
    let report = {
        let mut input = std::fs::File::open(&fragmented)?;
        let mut output = std::io::BufWriter::new(std::fs::File::create(&progressive)?);
        faststart(&mut input, &mut output)?
    };
    let bytes = std::fs::read(&progressive)?;
    eprintln!(
        "{report:?}: {} bytes of fragments became {}",
        std::fs::metadata(&fragmented)?.len(),
        bytes.len()
    );
    assert_eq!(report.bytes, bytes.len() as u64);
    assert_eq!(report.video_samples, video as u64);
    assert_eq!(&bytes[4..8], b"ftyp");
    let second = u32::from_be_bytes(bytes[0..4].try_into()?) as usize;
    assert_eq!(&bytes[second + 4..second + 8], b"moov");
    assert_eq!(
        top_level_boxes(&bytes)?,
        ["ftyp", "moov", "mdat"],
        "no moof"
    );

    let streams = ffprobe(progressive.to_str().context("path")?).await?;
    let mut codecs: Vec<&str> = streams.iter().map(|s| s.codec_name.as_str()).collect();
    codecs.sort_unstable();
    assert_eq!(codecs, ["aac", "h264"], "{streams:?}");
    let (_, fragmented_duration) = count_frames(&fragmented).await?;
    let (decoded, duration) = count_frames(&progressive).await?;
    eprintln!(
        "decoded {decoded} of {video} frames, {duration} s (fragmented: {fragmented_duration} s)"
    );
    assert_eq!(decoded, 300, "every video frame decodes");
    assert_eq!(decoded, video as u64);
    assert!(
        (duration - fragmented_duration).abs() <= 0.1,
        "{duration} s, fragmented {fragmented_duration} s"
    );
    assert!(
        (report.duration_ms as f64 / 1000.0 - duration).abs() <= 0.1,
        "{report:?}, ffprobe {duration} s"
    );
    let errors = decodes_cleanly(&progressive).await?;
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");

    // The tracks keep their start times (the edit lists), so audio and video stay in sync.
    let (before, after) = (
        start_times(&fragmented).await?,
        start_times(&progressive).await?,
    );
    eprintln!("start times: fragmented {before:?}, progressive {after:?}");
    assert_eq!(
        after.iter().map(|s| &s.0).collect::<Vec<_>>(),
        ["audio", "video"],
        "{after:?}"
    );
    for ((kind, was), (_, is)) in before.iter().zip(&after) {
        assert!(
            (was - is).abs() <= 0.001,
            "{kind} starts at {is} s, at {was} s in the recording"
        );
    }
    let _ = std::fs::remove_file(&fragmented);
    let _ = std::fs::remove_file(&progressive);
    Ok(())
}
