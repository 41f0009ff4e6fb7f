//! Recording: the origin that owns a stream writes each publication, while it is live, as a
//! fragmented MP4 file (CMAF, `media::mp4`): the initialization segment first, then one
//! fragment per GOP (per second for audio-only streams), each written and synced before the
//! next, so a crash loses at most the fragment being written.
//!
//! A file is `DIR/APP/NAME/YYYYMMDDTHHMMSSZ-EEPOCH.mp4`, written as `….mp4.part` and renamed
//! when the publication ends; at start-up the origin finishes `.part` files a crash left behind
//! (cutting an incomplete last box) and renames them too.
//!
//! The recorder is a hub subscriber that is never cut off: if the disk is slower than the
//! stream it skips to the next keyframe (counted) rather than holding the stream back. A disk
//! short of `--record-min-free` (checked before a file starts and every 5 s while it is
//! written) or a failed write stops that recording with a log line and a metric; the live
//! stream goes on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corriente_media::metrics::Protocol;
use corriente_media::mp4::{Fragmenter, TrackKind, Tracks, sample};
use corriente_media::{Hub, LagPolicy, Segment, StreamKey};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tracing::{Instrument, info, info_span, warn};

use crate::metrics::{RECORDING_BYTES, RECORDINGS_ACTIVE, RECORDINGS_DELETED, RECORDINGS_STOPPED};

/// What is recorded, and where.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    /// The directory recordings go under.
    pub dir: PathBuf,
    /// Applications whose streams are recorded (`*`: all).
    pub apps: Vec<String>,
    /// Free space the disk must keep; below it recording stops.
    pub min_free: u64,
    /// Finished recordings older than this are deleted.
    pub max_age: Option<Duration>,
    /// Finished recordings are deleted, oldest first, while all of them together take more.
    pub max_bytes: Option<u64>,
    /// Notified when a recording ends, so retention runs at once.
    pub ended: Arc<tokio::sync::Notify>,
}

impl RecordSettings {
    pub fn records(&self, key: &StreamKey) -> bool {
        self.apps.iter().any(|a| a == "*" || a == key.app())
    }
}

/// Where a publication's recording goes: `DIR/APP/NAME/START-EEPOCH.mp4`.
pub fn recording_path(dir: &Path, key: &StreamKey, started_ms: u64, epoch: u64) -> PathBuf {
    dir.join(key.app())
        .join(key.name())
        .join(format!("{}-e{epoch}.mp4", utc_stamp(started_ms / 1000)))
}

/// `YYYYMMDDTHHMMSSZ` of Unix seconds.
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Free bytes on the filesystem holding `path`, if it can be asked.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Records one publication until its hub ends (the publication ended, was fenced or the
/// origin shut down: the last fragment is written either way). Spawned by the stream table.
pub fn spawn(settings: Arc<RecordSettings>, key: StreamKey, epoch: u64, started_ms: u64, hub: Hub) {
    let path = recording_path(&settings.dir, &key, started_ms, epoch);
    let span = info_span!(parent: None, "record", stream = %key, epoch);
    tokio::spawn(
        async move {
            RECORDINGS_ACTIVE.inc();
            let result = record(&settings, &path, &hub).await;
            RECORDINGS_ACTIVE.dec();
            if let Err((reason, message)) = result {
                RECORDINGS_STOPPED.with_label_values(&[reason]).inc();
                warn!(reason, path = %path.display(), "recording stopped: {message}; the live stream goes on");
            }
            // Whatever was written is a playable file: finish its name.
            finalize(&path).await;
            settings.ended.notify_one();
        }
        .instrument(span),
    );
}

type Failure = (&'static str, String);

/// Longest fragment, in media time, when keyframes are further apart.
const MAX_FRAGMENT_MS: u32 = 10_000;
/// Largest fragment, in sample bytes.
const MAX_FRAGMENT_BYTES: usize = 32 << 20;

/// How often free space is checked while recording.
const SPACE_CHECK: Duration = Duration::from_secs(5);

async fn record(settings: &RecordSettings, path: &Path, hub: &Hub) -> Result<(), Failure> {
    let part = part_path(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        (
            "write_error",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    check_space(settings, dir)?;
    let policy = LagPolicy {
        max_skips: u32::MAX,
        window: LagPolicy::WINDOW,
    };
    let mut feed = hub
        .subscribe(policy, Protocol::Record)
        .map_err(|e| ("ended", e.to_string()))?;
    let mut file: Option<Recording> = None;
    let io = |e: std::io::Error| ("write_error", format!("writing {}: {e}", part.display()));
    while let Some(segment) = feed.next().await {
        // Configuration comes with every batch (the feed also repeats it after a skip).
        let (init, frames) = match &segment {
            Segment::Init(init) => (init.clone(), &[][..]),
            Segment::Batch { batch, from } => (batch.init.clone(), &batch.frames[*from..]),
        };
        if init.is_empty() {
            continue;
        }
        match &file {
            Some(r) if r.config != config_of(&init) => {
                // New decoder configuration mid-publication: this file ends here.
                info!("the stream's configuration changed: the recording ends with it");
                break;
            }
            Some(_) => {}
            None => {
                let media = hub.media();
                let tracks = Tracks::new(
                    init.video_config.as_ref(),
                    init.audio_config.as_ref(),
                    media.width,
                    media.height,
                )
                .map_err(|e| ("unsupported", e.to_string()))?;
                let mut f = tokio::fs::File::create(&part).await.map_err(io)?;
                let head = tracks
                    .init_segment()
                    .map_err(|e| ("unsupported", e.to_string()))?;
                write(&mut f, head).await.map_err(io)?;
                info!(path = %path.display(), codecs = ?tracks.codecs(), "recording");
                file = Some(Recording {
                    file: f,
                    has_video: tracks.track_id(TrackKind::Video).is_some(),
                    fragmenter: Fragmenter::new(tracks),
                    config: config_of(&init),
                    sequence: 1,
                    last_cut: 0,
                    started: false,
                    last_check: tokio::time::Instant::now(),
                });
            }
        }
        let Some(r) = file.as_mut() else { continue };
        for frame in frames {
            let Some(s) = sample(frame) else { continue };
            // A file starts with a picture that decodes alone.
            if !r.started {
                if r.has_video && !(s.track == TrackKind::Video && s.keyframe) {
                    continue;
                }
                r.started = true;
                r.last_cut = s.dts_ms;
            }
            // A fragment per GOP (per second of audio-only streams), and never more than
            // MAX_FRAGMENT of media or bytes whatever the publisher's keyframe interval: what
            // the recorder holds is bounded, and so is what a crash can lose.
            let since_cut = s.dts_ms.wrapping_sub(r.last_cut);
            let cut = match s.track {
                TrackKind::Video => s.keyframe,
                TrackKind::Audio => !r.has_video && since_cut >= 1000,
            } || since_cut >= MAX_FRAGMENT_MS
                || r.fragmenter.pending_bytes() >= MAX_FRAGMENT_BYTES;
            if cut && r.fragmenter.pending() {
                if let Some(bytes) = r
                    .fragmenter
                    .flush(r.sequence)
                    .map_err(|e| ("write_error", e.to_string()))?
                {
                    write(&mut r.file, bytes).await.map_err(io)?;
                    r.sequence += 1;
                }
                r.last_cut = s.dts_ms;
                if r.last_check.elapsed() >= SPACE_CHECK {
                    r.last_check = tokio::time::Instant::now();
                    check_space(settings, dir)?;
                }
            }
            r.fragmenter.push(s);
        }
    }
    if let Some(mut r) = file
        && let Ok(Some(bytes)) = r.fragmenter.finish(r.sequence)
    {
        write(&mut r.file, bytes).await.map_err(io)?;
    }
    Ok(())
}

fn config_of(init: &corriente_media::Init) -> (Option<bytes::Bytes>, Option<bytes::Bytes>) {
    (
        init.video_config.as_ref().map(|f| f.payload.clone()),
        init.audio_config.as_ref().map(|f| f.payload.clone()),
    )
}

/// A recording being written.
struct Recording {
    file: tokio::fs::File,
    fragmenter: Fragmenter,
    has_video: bool,
    /// The sequence headers it was started with (metadata may change; these may not).
    config: (Option<bytes::Bytes>, Option<bytes::Bytes>),
    sequence: u32,
    last_cut: u32,
    /// The first sample (a keyframe, when there is video) was written.
    started: bool,
    last_check: tokio::time::Instant,
}

/// Appends `bytes` and syncs them to the disk: a crash loses nothing written before.
async fn write(file: &mut tokio::fs::File, bytes: Vec<u8>) -> std::io::Result<()> {
    file.write_all(&bytes).await?;
    file.sync_data().await?;
    RECORDING_BYTES.inc_by(bytes.len() as u64);
    Ok(())
}

fn check_space(settings: &RecordSettings, dir: &Path) -> Result<(), Failure> {
    match free_bytes(dir) {
        Some(free) if free < settings.min_free => Err((
            "disk_full",
            format!(
                "{} MB free on {}, under the {} MB --record-min-free",
                free >> 20,
                dir.display(),
                settings.min_free >> 20
            ),
        )),
        _ => Ok(()),
    }
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Renames `PATH.part` to `PATH` once its last box is complete (cutting an incomplete one).
async fn finalize(path: &Path) {
    let part = part_path(path);
    match tokio::task::spawn_blocking({
        let part = part.clone();
        move || complete_boxes(&part)
    })
    .await
    {
        Ok(Ok(0)) => {
            let _ = tokio::fs::remove_file(&part).await;
            return;
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
        Ok(Err(e)) => warn!(path = %part.display(), error = %e, "cannot check the recording"),
        Err(e) => warn!(error = %e, "recording check failed"),
    }
    match tokio::fs::rename(&part, path).await {
        Ok(()) => info!(path = %path.display(), "recording complete"),
        Err(e) => warn!(path = %part.display(), error = %e, "cannot rename the recording"),
    }
}

/// Truncates the file after its last complete top-level box; returns its new length.
fn complete_boxes(path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = file.metadata()?.len();
    let mut at = 0u64;
    let mut header = [0u8; 8];
    while at + 8 <= len {
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut header)?;
        let size = u64::from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        if size < 8 || at + size > len {
            break;
        }
        at += size;
    }
    if at < len {
        file.set_len(at)?;
        file.sync_all()?;
    }
    Ok(at)
}

/// A recording on this origin's disk, as its admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordingFile {
    /// `APP/NAME`.
    pub stream: String,
    /// The file's name without `.mp4`: `START-eEPOCH`, unique for the stream.
    pub id: String,
    /// `recording` (being written) or `complete`.
    pub state: &'static str,
    pub size: u64,
    /// When it was last written, Unix milliseconds.
    pub modified_ms: u64,
}

/// Every file under `dir`, with its metadata.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta));
            }
        }
    }
    out
}

/// Every recording under `dir` (finished and being written), newest first.
pub fn list(dir: &Path) -> Vec<RecordingFile> {
    let mut out: Vec<RecordingFile> = walk(dir)
        .into_iter()
        .filter_map(|(p, meta)| {
            let name = p.file_name()?.to_str()?;
            let (id, state) = match name.strip_suffix(".mp4.part") {
                Some(id) => (id, "recording"),
                None => (name.strip_suffix(".mp4")?, "complete"),
            };
            // DIR/APP/NAME/ID.mp4
            let stream = p.parent()?.strip_prefix(dir).ok()?.to_str()?.to_owned();
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            Some(RecordingFile {
                stream,
                id: id.to_owned(),
                state,
                size: meta.len(),
                modified_ms,
            })
        })
        .collect();
    out.sort_by(|a, b| b.modified_ms.cmp(&a.modified_ms).then(a.id.cmp(&b.id)));
    out
}

/// Every finished recording under `dir`: path, size, modification time.
fn finished(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    walk(dir)
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "mp4"))
        .map(|(p, meta)| {
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            (p, meta.len(), modified)
        })
        .collect()
}

/// Applies the retention limits: deletes finished recordings past `max_age`, then the oldest
/// while they take more than `max_bytes`. Returns the paths deleted. Recordings still being
/// written (`.part`) are never touched.
pub fn apply_retention(settings: &RecordSettings) -> Vec<PathBuf> {
    let mut files = finished(&settings.dir);
    // Oldest first: by modification time (when the file was last written), then name.
    files.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
    let now = std::time::SystemTime::now();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut deleted = Vec::new();
    for (path, size, modified) in files {
        let too_old = settings
            .max_age
            .is_some_and(|age| now.duration_since(modified).unwrap_or_default() > age);
        let too_big = settings.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= size;
                RECORDINGS_DELETED.inc();
                info!(path = %path.display(), size, reason = if too_old { "max_age" } else { "max_bytes" }, "recording deleted by retention");
                deleted.push(path);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot delete a recording"),
        }
    }
    deleted
}

/// How often retention runs (also after every recording ends).
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Runs retention every [`RETENTION_EVERY`] and whenever a recording ends.
pub async fn run_retention(settings: Arc<RecordSettings>) {
    if settings.max_age.is_none() && settings.max_bytes.is_none() {
        return;
    }
    loop {
        let s = settings.clone();
        let _ = tokio::task::spawn_blocking(move || apply_retention(&s)).await;
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
            _ = settings.ended.notified() => {}
        }
    }
}

/// Finishes the `.part` files a crash left under `dir` (at start-up).
pub async fn recover(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(mut entries) = tokio::fs::read_dir(&d).await else {
            continue;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let p = entry.path();
            if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Some(done) = p
                .to_str()
                .and_then(|s| s.strip_suffix(".part"))
                .map(PathBuf::from)
            {
                info!(path = %p.display(), "finishing a recording interrupted by a crash");
                finalize(&done).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_recordings_by_stream_start_and_epoch() {
        let key = StreamKey::new("live", "cam").unwrap();
        let p = recording_path(Path::new("/rec"), &key, 1_796_000_000_123, 7);
        assert_eq!(p, Path::new("/rec/live/cam/20261130T005320Z-e7.mp4"));
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn cuts_an_incomplete_last_box() {
        let path = std::env::temp_dir().join(format!("corriente-rec-{}.part", std::process::id()));
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&16u32.to_be_bytes());
        bytes.extend_from_slice(b"ftypiso6\0\0\0\0");
        bytes.extend_from_slice(&100u32.to_be_bytes());
        bytes.extend_from_slice(b"moofshort");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(complete_boxes(&path).unwrap(), 16);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        let _ = std::fs::remove_file(&path);
    }
}
