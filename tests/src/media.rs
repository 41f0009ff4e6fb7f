//! Test media and the real clients: media is encoded once per machine with ffmpeg and then
//! published with `ffmpeg -c copy` (cheap, so tests stay reliable on a loaded 2-core box);
//! ffprobe and ffmpeg check what viewers receive.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::work_dir;

/// Encodes `name` with ffmpeg `args` unless it exists; safe when many test processes race.
fn encode_once(name: &str, args: &[&str]) -> Result<PathBuf> {
    made_once(name, |partial| {
        let status = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(args)
            .args(["-f", "flv"])
            .arg(partial)
            .status()
            .context("run ffmpeg (is it installed? tests/run installs it)")?;
        if !status.success() {
            bail!("ffmpeg failed to encode {name}: {status}");
        }
        Ok(())
    })
}

/// `work_dir()/name`, made once by `make` (given a partial path to write, renamed when done)
/// under a file lock, so that tests running in parallel make it once between them.
fn made_once(name: &str, make: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = work_dir();
    let path = dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    let lock = File::create(dir.join(format!("{name}.lock")))?;
    lock.lock()?;
    if !path.exists() {
        let partial = dir.join(format!("{name}.partial.flv"));
        make(&partial)?;
        std::fs::rename(&partial, &path)?;
    }
    drop(lock);
    Ok(path)
}

/// 10 s of H.264 1280x720 at 30 fps (2 s GOP, about 2.5 Mbit/s) with AAC stereo 44.1 kHz:
/// the stream of a typical OBS setup.
pub fn av_720p() -> Result<PathBuf> {
    encode_once(
        "av-720p30-h264-aac.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "60",
            "-b:v",
            "2500k",
            "-maxrate",
            "2500k",
            "-bufsize",
            "2500k",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-ac",
            "2",
        ],
    )
}

/// A small H.264 + AAC stream (320x240, 1 s GOP) for tests that run many streams at once.
pub fn av_small() -> Result<PathBuf> {
    encode_once(
        "av-240p30-h264-aac.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=660:sample_rate=44100",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
            "-b:v",
            "400k",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ],
    )
}

/// A second small stream that differs from [`av_small`] in resolution and picture (480x270
/// colour bars), so a viewer can tell which publisher it is seeing.
pub fn av_small_b() -> Result<PathBuf> {
    encode_once(
        "av-270p30-bars-h264-aac.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "smptebars=size=480x270:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=880:sample_rate=44100",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
            "-b:v",
            "400k",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ],
    )
}

/// 10 s of AAC only (radio): 44.1 kHz stereo, 128 kbit/s.
pub fn audio_aac() -> Result<PathBuf> {
    encode_once(
        "audio-aac.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-ac",
            "2",
            "-t",
            "10",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
        ],
    )
}

/// 10 s of MP3 only (radio): 44.1 kHz, 128 kbit/s.
pub fn audio_mp3() -> Result<PathBuf> {
    encode_once(
        "audio-mp3.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=523:sample_rate=44100",
            "-t",
            "10",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
        ],
    )
}

/// 6 s of HEVC video: 320x240, 30 fps, 1 s GOP with B-frames, as an FLV of enhanced RTMP
/// (FourCC `hvc1`, the way OBS and ffmpeg 6.1+ publish HEVC). Debian's ffmpeg 5.1 writes no
/// HEVC to FLV, so libx265's MP4 is rewrapped here: the `hvcC` record becomes the
/// SequenceStart, each sample a CodedFrames tag with its composition time.
pub fn hevc_flv() -> Result<PathBuf> {
    made_once("hevc-enhanced.flv", |partial| {
        let mp4 = work_dir().join("hevc-enhanced.partial.mp4");
        let status = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args([
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30",
                "-t",
                "6",
            ])
            .args([
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ])
            .args([
                "-x265-params",
                "keyint=30:min-keyint=30:bframes=2:log-level=error",
            ])
            .args(["-tag:v", "hvc1", "-movflags", "+faststart"])
            .arg(&mp4)
            .status()
            .context("run ffmpeg (is it installed? tests/run installs it)")?;
        if !status.success() {
            bail!("ffmpeg failed to encode HEVC: {status}");
        }
        std::fs::write(partial, enhanced_flv_from_mp4(&std::fs::read(&mp4)?)?)?;
        Ok(())
    })
}

/// The body of the first box `kind` among the boxes in `data[range]`.
fn child(
    data: &[u8],
    range: std::ops::Range<usize>,
    kind: &[u8; 4],
) -> Option<std::ops::Range<usize>> {
    let mut at = range.start;
    while at + 8 <= range.end {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().ok()?) as usize;
        if size < 8 || at + size > range.end {
            return None;
        }
        if &data[at + 4..at + 8] == kind {
            return Some(at + 8..at + size);
        }
        at += size;
    }
    None
}

/// The big-endian `u32`s of a full box's table after its version, flags and entry count,
/// `width` of them per entry.
fn table(data: &[u8], body: std::ops::Range<usize>, width: usize) -> Vec<Vec<u32>> {
    let u32_at =
        |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    let count = u32_at(body.start + 4) as usize;
    (0..count)
        .map(|i| {
            (0..width)
                .map(|k| u32_at(body.start + 8 + (i * width + k) * 4))
                .collect()
        })
        .collect()
}

/// The video track of a (non-fragmented, single-track) MP4 with an `hvcC` record, as
/// enhanced-RTMP FLV.
fn enhanced_flv_from_mp4(data: &[u8]) -> Result<Vec<u8>> {
    let path = |kinds: &[&[u8; 4]]| {
        kinds
            .iter()
            .try_fold(0..data.len(), |range, kind| child(data, range, kind))
    };
    let stbl = path(&[b"moov", b"trak", b"mdia", b"minf", b"stbl"]).context("no stbl")?;
    let mdhd = path(&[b"moov", b"trak", b"mdia", b"mdhd"]).context("no mdhd")?;
    // Version 0: creation, modification (4 bytes each), then the timescale.
    let timescale = i64::from(u32::from_be_bytes(
        data[mdhd.start + 12..mdhd.start + 16].try_into()?,
    ))
    .max(1);
    let box_in = |kind: &[u8; 4]| child(data, stbl.clone(), kind);
    // The hvcC box's body, as it is in the file.
    let at = data
        .windows(4)
        .position(|w| w == b"hvcC")
        .context("no hvcC box")?;
    let size = u32::from_be_bytes(data[at - 4..at].try_into()?) as usize;
    let record = &data[at + 4..at - 4 + size];
    let stsz = box_in(b"stsz").context("no stsz")?;
    let fixed = u32::from_be_bytes(data[stsz.start + 4..stsz.start + 8].try_into()?);
    let count = u32::from_be_bytes(data[stsz.start + 8..stsz.start + 12].try_into()?) as usize;
    let sizes: Vec<u32> = if fixed != 0 {
        vec![fixed; count]
    } else {
        (0..count)
            .map(|i| {
                let at = stsz.start + 12 + i * 4;
                u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
            })
            .collect()
    };
    let chunks: Vec<u64> = table(data, box_in(b"stco").context("no stco")?, 1)
        .iter()
        .map(|e| u64::from(e[0]))
        .collect();
    let stsc = table(data, box_in(b"stsc").context("no stsc")?, 3);
    let mut offsets = Vec::with_capacity(sizes.len());
    for (i, &chunk) in chunks.iter().enumerate() {
        let number = i as u32 + 1;
        let per = stsc
            .iter()
            .rev()
            .find(|e| e[0] <= number)
            .map_or(0, |e| e[1]);
        let mut off = chunk;
        for _ in 0..per {
            let Some(size) = sizes.get(offsets.len()) else {
                break;
            };
            offsets.push(off);
            off += u64::from(*size);
        }
    }
    let mut dts = Vec::with_capacity(sizes.len());
    let mut t = 0i64;
    for e in table(data, box_in(b"stts").context("no stts")?, 2) {
        for _ in 0..e[0] {
            dts.push(t);
            t += i64::from(e[1]);
        }
    }
    let mut cts = vec![0i64; sizes.len()];
    if let Some(ctts) = box_in(b"ctts") {
        let mut i = 0;
        for e in table(data, ctts, 2) {
            for _ in 0..e[0] {
                if let Some(c) = cts.get_mut(i) {
                    // Version 1 offsets are signed.
                    *c = i64::from(e[1] as i32);
                }
                i += 1;
            }
        }
    }
    let sync: Option<Vec<u32>> =
        box_in(b"stss").map(|b| table(data, b, 1).into_iter().map(|e| e[0]).collect());
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&corriente_media::flv::file_header(false, true));
    // SequenceStart (packet type 0), keyframe.
    let mut body = vec![0x80 | (1 << 4)];
    body.extend_from_slice(b"hvc1");
    body.extend_from_slice(record);
    corriente_media::flv::write_tag(&mut out, 9, 0, &body);
    for i in 0..sizes.len().min(offsets.len()).min(dts.len()) {
        let key = sync.as_ref().is_none_or(|s| s.contains(&(i as u32 + 1)));
        let ms = |v: i64| v * 1000 / timescale;
        let frame_type: u8 = if key { 1 } else { 2 };
        // CodedFrames (packet type 1): SI24 composition time, then the length-prefixed NALUs.
        let mut body = vec![0x80 | (frame_type << 4) | 1];
        body.extend_from_slice(b"hvc1");
        body.extend_from_slice(&(ms(cts[i]) as i32).to_be_bytes()[1..]);
        let start = offsets[i] as usize;
        body.extend_from_slice(
            data.get(start..start + sizes[i] as usize)
                .context("a sample past the file")?,
        );
        corriente_media::flv::write_tag(&mut out, 9, ms(dts[i]) as u32, &body);
    }
    Ok(out.to_vec())
}

/// 10 s of H.264 video only: 640x360, 30 fps, 1 s GOP.
pub fn video_only() -> Result<PathBuf> {
    encode_once(
        "video-only-h264.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
            "-b:v",
            "800k",
        ],
    )
}

/// 2 s of H.264 2560x1440 at 2 fps whose every frame is larger than 4 MiB (nearly lossless
/// noise, a keyframe every second frame): the frames of a 4K or high-quality intra encoder,
/// larger than gRPC's default message limit.
pub fn video_large_frames() -> Result<PathBuf> {
    encode_once(
        "video-1440p2-large-frames.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "nullsrc=size=2560x1440:rate=2,geq=lum='random(1)*255':cb=128:cr=128",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-qp",
            "10",
            "-g",
            "2",
            "-pix_fmt",
            "yuv420p",
        ],
    )
}

/// The sizes in bytes of the video packets of a media file, as ffprobe reads them.
pub async fn video_packet_sizes(path: &std::path::Path) -> Result<Vec<u64>> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v"])
        .args(["-show_entries", "packet=size", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .await
        .context("run ffprobe")?;
    if !output.status.success() {
        bail!(
            "ffprobe failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| Ok(line.trim().parse()?))
        .collect()
}

/// An ffmpeg publishing a file in a loop, in real time, with `-c copy`. Killed on drop.
pub struct Publisher {
    child: Child,
    url: String,
}

/// An encoder that reconnects, as OBS does: ffmpeg publishing `file` in a loop, started
/// again half a second after each time it stops (refused, disconnected). Stops when dropped.
pub struct RetryingPublisher {
    task: tokio::task::JoinHandle<()>,
    /// How many times ffmpeg was started.
    pub starts: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl RetryingPublisher {
    pub fn start(file: &std::path::Path, url: &str) -> Result<RetryingPublisher> {
        let (file, url) = (file.to_owned(), url.to_owned());
        let starts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = starts.clone();
        let task = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(publisher) = Publisher::start(&file, &url) {
                    // Until it exits; the child is killed if this task is aborted.
                    let _ = publisher.wait(Duration::from_secs(24 * 3600)).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(RetryingPublisher { task, starts })
    }
}

impl Drop for RetryingPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    pub fn start(file: &std::path::Path, url: &str) -> Result<Publisher> {
        Publisher::start_with(file, url, &[])
    }

    /// [`Publisher::start`] with extra output options (`-tls_verify 1 -ca_file CA`, say).
    pub fn start_with(file: &std::path::Path, url: &str, output: &[&str]) -> Result<Publisher> {
        let child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
            ])
            .arg(file)
            .args(["-c", "copy"])
            .args(output)
            .args(["-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn ffmpeg publisher")?;
        Ok(Publisher {
            child,
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops publishing abruptly (SIGKILL of the encoder).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the publisher to exit and returns its exit code and error output.
    pub async fn wait(mut self, timeout: Duration) -> Result<(Option<i32>, String)> {
        let mut stderr = self.child.stderr.take().context("stderr")?;
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("publisher still running")??;
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await?;
        Ok((status.code(), text))
    }

    /// True while ffmpeg runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// One stream as ffprobe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedStream {
    pub codec_type: String,
    pub codec_name: String,
    pub width: u32,
    pub height: u32,
}

/// Runs ffprobe on `url` and returns its streams.
pub async fn ffprobe(url: &str) -> Result<Vec<ProbedStream>> {
    ffprobe_with(url, &[]).await
}

/// [`ffprobe`] with extra input options (`-tls_verify 1 -ca_file CA`, say).
pub async fn ffprobe_with(url: &str, input: &[&str]) -> Result<Vec<ProbedStream>> {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("ffprobe")
            .args(["-v", "error", "-rw_timeout", "15000000"])
            .args(input)
            .args([
                "-show_entries",
                "stream=codec_type,codec_name,width,height",
                "-of",
                "json",
                url,
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("ffprobe timed out")??;
    if !output.status.success() {
        bail!(
            "ffprobe {url} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(json["streams"]
        .as_array()
        .map(|streams| {
            streams
                .iter()
                .map(|s| ProbedStream {
                    codec_type: s["codec_type"].as_str().unwrap_or("").to_owned(),
                    codec_name: s["codec_name"].as_str().unwrap_or("").to_owned(),
                    width: s["width"].as_u64().unwrap_or(0) as u32,
                    height: s["height"].as_u64().unwrap_or(0) as u32,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// What `ffmpeg -i URL -t SECONDS -f null -` decoded.
#[derive(Debug, Clone, Copy)]
pub struct Decoded {
    pub video_frames: u64,
    pub exit_ok: bool,
}

/// Decodes `seconds` of `url` with ffmpeg and counts the video frames.
pub async fn decode(url: &str, seconds: u32) -> Result<Decoded> {
    let output = tokio::time::timeout(
        Duration::from_secs(u64::from(seconds) + 40),
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-nostats",
                "-rw_timeout",
                "15000000",
                "-i",
                url,
            ])
            .args(["-t", &seconds.to_string(), "-f", "null", "-"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("ffmpeg decode timed out")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    Ok(Decoded {
        video_frames: last_frame_count(&stderr),
        exit_ok: output.status.success(),
    })
}

/// The last `frame=N` ffmpeg printed.
pub fn last_frame_count(stderr: &str) -> u64 {
    stderr
        .rsplit("frame=")
        .next()
        .filter(|_| stderr.contains("frame="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A long-running ffmpeg viewer that decodes and reports progress. Killed on drop.
pub struct Viewer {
    child: Child,
    progress: std::sync::Arc<std::sync::Mutex<(u64, std::time::Instant)>>,
    /// The longest wait between two progress reports that counted new frames.
    gap: std::sync::Arc<std::sync::Mutex<Duration>>,
}

impl Viewer {
    /// Starts `ffmpeg -i URL -f null -` with progress reporting.
    pub fn start(url: &str) -> Result<Viewer> {
        Viewer::start_with(url, &[])
    }

    /// [`Viewer::start`] with extra input options (`-tls_verify 1 -ca_file CA`, say).
    pub fn start_with(url: &str, input: &[&str]) -> Result<Viewer> {
        let mut child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-rw_timeout",
                "30000000",
            ])
            .args(input)
            .args(["-i", url])
            .args([
                "-f",
                "null",
                "-",
                "-progress",
                "pipe:1",
                "-stats_period",
                "0.1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn ffmpeg viewer")?;
        let stdout = child.stdout.take().context("stdout")?;
        let progress =
            std::sync::Arc::new(std::sync::Mutex::new((0u64, std::time::Instant::now())));
        let sink = progress.clone();
        let gap = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let longest = gap.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line
                    .strip_prefix("frame=")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                {
                    let mut p = sink.lock().unwrap();
                    if n > p.0 {
                        let now = std::time::Instant::now();
                        if p.0 > 0 {
                            let mut longest = longest.lock().unwrap();
                            *longest = (*longest).max(now - p.1);
                        }
                        *p = (n, now);
                    }
                }
            }
        });
        Ok(Viewer {
            child,
            progress,
            gap,
        })
    }

    /// The longest pause between decoded frames so far (to about 0.1 s: ffmpeg reports
    /// progress ten times a second).
    pub fn longest_gap(&self) -> Duration {
        *self.gap.lock().unwrap()
    }

    /// Video frames decoded so far, and when the count last grew.
    pub fn frames(&self) -> (u64, std::time::Instant) {
        *self.progress.lock().unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Exit code once it exited.
    pub async fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(|s| s.ok())
            .and_then(|s| s.code())
    }
}

/// The frames of an FLV byte stream, in order (a capture may end mid-tag: the partial tag is
/// left out).
pub fn flv_frames(bytes: &[u8]) -> Result<Vec<corriente_media::Frame>> {
    use corriente_media::{Frame, FrameKind};
    let mut buf = bytes::BytesMut::from(bytes);
    let mut reader = corriente_media::flv::TagReader::new(16 << 20);
    let mut frames = Vec::new();
    while let Some(tag) = reader.next_tag(&mut buf)? {
        if let Some(kind) = FrameKind::from_tag_type(tag.tag_type) {
            frames.push(Frame::new(kind, tag.timestamp, tag.body, 0));
        }
    }
    Ok(frames)
}

/// The video frames ffprobe decodes from a file (`-count_frames`) and the duration it reports.
pub async fn count_frames(path: &std::path::Path) -> Result<(u64, f64)> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames:format=duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .await
        .context("run ffprobe")?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let frames = json["streams"][0]["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let duration = json["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    Ok((frames, duration))
}
