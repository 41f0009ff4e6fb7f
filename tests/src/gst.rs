//! GStreamer as a peer: publishing pre-encoded test media with `flvmux ! rtmp2sink` (this
//! machine's GStreamer has no H.264 or AAC encoder, so it remuxes what ffmpeg encoded) and
//! playing with `rtmp2src ! flvdemux`, reporting the caps and buffers its pads saw.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::media::av_small;
use crate::work_dir;

/// 120 s of [`av_small`] (320x240 H.264 + AAC), looped with `ffmpeg -c copy`: `gst-launch`
/// cannot loop a file, so the publisher gets one long enough for any test.
pub fn av_small_long() -> Result<PathBuf> {
    let source = av_small()?;
    let dir = work_dir();
    let path = dir.join("av-240p30-h264-aac-120s.flv");
    if path.exists() {
        return Ok(path);
    }
    let lock = File::create(dir.join("av-240p30-h264-aac-120s.flv.lock"))?;
    lock.lock()?;
    if !path.exists() {
        let partial = dir.join("av-240p30-h264-aac-120s.partial.flv");
        let status = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(["-stream_loop", "11", "-i"])
            .arg(&source)
            .args(["-c", "copy", "-f", "flv"])
            .arg(&partial)
            .status()
            .context("run ffmpeg")?;
        if !status.success() {
            bail!("ffmpeg failed to loop {}: {status}", source.display());
        }
        std::fs::rename(&partial, &path)?;
    }
    drop(lock);
    Ok(path)
}

/// `gst-launch-1.0` publishing an H.264 + AAC FLV file in real time through GStreamer's own
/// muxer and RTMP client (`flvdemux ! h264parse/aacparse ! flvmux streamable=true !
/// rtmp2sink`). Killed on drop.
pub struct GstPublisher {
    child: Child,
}

impl GstPublisher {
    pub fn start(file: &Path, url: &str) -> Result<GstPublisher> {
        let pipeline = format!(
            "filesrc location={} ! flvdemux name=d \
             d.video ! queue ! h264parse ! mux.video \
             d.audio ! queue ! aacparse ! mux.audio \
             flvmux name=mux streamable=true ! rtmp2sink location={url}",
            file.display()
        );
        let child = Command::new("gst-launch-1.0")
            .arg("-q")
            .args(pipeline.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Errors only (`-q`); the test harness captures them.
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn gst-launch-1.0 (is gstreamer1.0-tools installed?)")?;
        Ok(GstPublisher { child })
    }

    /// True while gst-launch runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// What `rtmp2src ! flvdemux` saw.
#[derive(Debug, Default)]
pub struct GstPlayback {
    /// Caps negotiated on the demuxer's video branch (`video/x-h264, ..., width=(int)320, ...`).
    pub video_caps: Option<String>,
    /// Caps negotiated on the demuxer's audio branch (`audio/mpeg, mpegversion=(int)4, ...`).
    pub audio_caps: Option<String>,
    /// Buffers that reached the video and audio sinks.
    pub video_buffers: usize,
    pub audio_buffers: usize,
    /// gst-launch's output, for failure messages.
    pub log: String,
}

/// Plays `url` with `rtmp2src num-buffers=TAGS` (one buffer per FLV tag), teeing the FLV
/// stream into `capture` and through `flvdemux` into two fakesinks whose pads' caps and
/// buffers `gst-launch -v` reports. Ends by itself after `tags` tags.
pub async fn play(url: &str, tags: u32, capture: &Path) -> Result<GstPlayback> {
    // Sinks are `async=false`: with a tee, a sink waiting to preroll would stall the branch
    // that feeds the demuxer's other pad.
    let pipeline = format!(
        "rtmp2src location={url} num-buffers={tags} ! tee name=t \
         t. ! queue ! filesink async=false location={} \
         t. ! queue ! flvdemux name=d \
         d.video ! queue ! fakesink name=vsink silent=false async=false \
         d.audio ! queue ! fakesink name=asink silent=false async=false",
        capture.display()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("gst-launch-1.0")
            .arg("-v")
            .args(pipeline.split_whitespace())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("gst-launch rtmp2src timed out")??;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!(
            "gst-launch rtmp2src {url} failed ({}):\n{log}",
            output.status
        );
    }
    let caps = |sink: &str| {
        let prefix = format!("GstFakeSink:{sink}.GstPad:sink: caps = ");
        log.lines()
            .find_map(|l| l.split_once(&prefix).map(|(_, caps)| caps.to_owned()))
    };
    let buffers = |sink: &str| {
        let needle = format!("GstFakeSink:{sink}: last-message = chain");
        log.lines().filter(|l| l.contains(&needle)).count()
    };
    Ok(GstPlayback {
        video_caps: caps("vsink"),
        audio_caps: caps("asink"),
        video_buffers: buffers("vsink"),
        audio_buffers: buffers("asink"),
        log,
    })
}
