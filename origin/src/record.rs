//! Recording: the origin that owns a stream writes each publication, while it is live, as a
//! fragmented MP4 file (CMAF, `media::mp4`): the initialization segment first, then one
//! fragment per GOP (per second for audio-only streams), each written and synced before the
//! next, so a crash loses at most the fragment being written.
//!
//! A file is `DIR/APP/NAME/YYYYMMDDTHHMMSSZ-EEPOCH.mp4`, written as `….mp4.part` and, when the
//! publication ends, rewritten as a progressive MP4 with `moov` first (faststart: players
//! seek at once, durations known; `media::mp4::faststart`) under its final name. Beside it,
//! `….json` says when it started, its epoch, duration, state and how it ended. At start-up the
//! origin finishes the `.part` files a crash left behind (cutting an incomplete last box) the
//! same way.
//!
//! The cluster's recordings index follows the disk: the origin syncs the list of its
//! recordings to the control plane at start-up, whenever one starts, ends or is deleted, and
//! every [`SYNC_EVERY`]; edges serve them on demand through the relay (`read_range`).
//!
//! The recorder is a hub subscriber that is never cut off: if the disk is slower than the
//! stream it skips to the next keyframe (counted) rather than holding the stream back. A disk
//! short of `--record-min-free` (checked before a file starts and every 5 s while it is
//! written) or a failed write stops that recording with a log line and a metric; the live
//! stream goes on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corriente_cluster::{ControlClient, RecordingRecord, RecordingState};
use corriente_media::metrics::Protocol;
use corriente_media::mp4::{Fragmenter, TrackKind, Tracks, sample};
use corriente_media::{Hub, LagPolicy, Segment, StreamKey};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tracing::{Instrument, info, info_span, warn};

use crate::metrics::{RECORDING_BYTES, RECORDINGS_ACTIVE, RECORDINGS_DELETED, RECORDINGS_STOPPED};

/// What is recorded, and where.
#[derive(Debug)]
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
    /// Bumped whenever a recording starts or ends or one is deleted: retention and the index
    /// sync run at once.
    changes: tokio::sync::watch::Sender<u64>,
    /// The recordings being written, by path.
    active: std::sync::Mutex<HashMap<PathBuf, Active>>,
}

/// A recording being written, as far as it got.
#[derive(Debug, Clone)]
struct Active {
    duration_ms: u64,
}

/// What the `….json` beside a recording says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Sidecar {
    started_at_ms: u64,
    epoch: u64,
    duration_ms: u64,
    state: RecordingState,
    /// How it ended or why it stopped.
    #[serde(default)]
    reason: String,
}

impl RecordSettings {
    pub fn new(
        dir: PathBuf,
        apps: Vec<String>,
        min_free: u64,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Self {
        Self {
            dir,
            apps,
            min_free,
            max_age,
            max_bytes,
            changes: tokio::sync::watch::channel(0).0,
            active: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn records(&self, key: &StreamKey) -> bool {
        self.apps.iter().any(|a| a == "*" || a == key.app())
    }
}

/// Where a publication's recording goes: `DIR/APP/NAME/START-EEPOCH.mp4`.
pub fn recording_path(dir: &Path, key: &StreamKey, started_ms: u64, epoch: u64) -> PathBuf {
    dir.join(key.app()).join(key.name()).join(format!(
        "{}-e{epoch}.mp4",
        corriente_core::time::compact_utc(started_ms / 1000)
    ))
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
            settings
                .active()
                .insert(path.clone(), Active { duration_ms: 0 });
            let mut sidecar = Sidecar {
                started_at_ms: started_ms,
                epoch,
                duration_ms: 0,
                state: RecordingState::Recording,
                reason: String::new(),
            };
            let result = record(&settings, &path, &hub, &sidecar).await;
            RECORDINGS_ACTIVE.dec();
            sidecar.duration_ms = settings
                .active()
                .remove(&path)
                .map_or(0, |a| a.duration_ms);
            match result {
                Ok(()) => {
                    sidecar.state = RecordingState::Complete;
                    sidecar.reason = "unpublished".to_owned();
                }
                Err((reason, message)) => {
                    RECORDINGS_STOPPED.with_label_values(&[reason]).inc();
                    warn!(reason, path = %path.display(), "recording stopped: {message}; the live stream goes on");
                    sidecar.state = if reason == "ended" {
                        RecordingState::Complete
                    } else {
                        RecordingState::Failed
                    };
                    sidecar.reason = reason.to_owned();
                }
            }
            // Whatever was written is a playable file: finish it.
            finalize(&path, sidecar).await;
            settings.changed();
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

async fn record(
    settings: &RecordSettings,
    path: &Path,
    hub: &Hub,
    sidecar: &Sidecar,
) -> Result<(), Failure> {
    let part = part_path(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        (
            "write_error",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    check_space(settings, dir)?;
    // Said first, so a crash leaves the file's start and epoch known.
    write_sidecar(path, sidecar).await.map_err(|e| {
        (
            "write_error",
            format!("cannot write {}: {e}", sidecar_path(path).display()),
        )
    })?;
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
                // The index lists it from now on, as being written.
                settings.changed();
                file = Some(Recording {
                    file: f,
                    has_video: tracks.track_id(TrackKind::Video).is_some(),
                    fragmenter: Fragmenter::new(tracks),
                    config: config_of(&init),
                    sequence: 1,
                    last_cut: 0,
                    first_dts: 0,
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
                r.first_dts = s.dts_ms;
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
                    let duration_ms = u64::from(s.dts_ms.wrapping_sub(r.first_dts));
                    if let Some(a) = settings.active().get_mut(path) {
                        a.duration_ms = duration_ms;
                    }
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
    /// Decode time of the first sample written.
    first_dts: u32,
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

fn sidecar_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

async fn write_sidecar(path: &Path, sidecar: &Sidecar) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(sidecar).map_err(std::io::Error::other)?;
    let side = sidecar_path(path);
    let tmp = side.with_extension("json.tmp");
    tokio::fs::write(&tmp, json).await?;
    tokio::fs::rename(&tmp, &side).await
}

fn read_sidecar(path: &Path) -> Option<Sidecar> {
    serde_json::from_slice(&std::fs::read(sidecar_path(path)).ok()?).ok()
}

/// Finishes `PATH.part`: cuts an incomplete last box, rewrites it as a progressive MP4 under
/// `PATH` (faststart) when the disk has room for the copy (else renames it as it is, still a
/// playable fragmented MP4), and writes the sidecar.
async fn finalize(path: &Path, mut sidecar: Sidecar) {
    let path = path.to_path_buf();
    let done = tokio::task::spawn_blocking(move || {
        let result = finish_file(&path);
        (path, result)
    })
    .await;
    let (path, result) = match done {
        Ok(done) => done,
        Err(e) => {
            warn!(error = %e, "finishing a recording failed");
            return;
        }
    };
    match result {
        Ok(None) => info!(path = %path.display(), "empty recording removed"),
        Ok(Some(duration_ms)) => {
            if duration_ms > 0 {
                sidecar.duration_ms = duration_ms;
            }
            if let Err(e) = write_sidecar(&path, &sidecar).await {
                warn!(path = %path.display(), error = %e, "cannot write the recording's sidecar");
            }
            info!(path = %path.display(), duration_ms = sidecar.duration_ms, state = sidecar.state.as_str(), "recording finished");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), error = %e, "cannot finish the recording"),
    }
}

/// The blocking part of [`finalize`]: `None` when nothing playable was written (the files
/// are removed), else the duration faststart measured (0 when the file was kept as written).
fn finish_file(path: &Path) -> std::io::Result<Option<u64>> {
    let part = part_path(path);
    let len = complete_boxes(&part)?;
    if len == 0 {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(sidecar_path(path));
        return Ok(None);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let room = free_bytes(dir).is_none_or(|free| free > len + (64 << 20));
    let tmp = path.with_extension("mp4.tmp");
    let converted = room
        .then(|| -> Result<u64, String> {
            let mut input = std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(&part).map_err(|e| e.to_string())?,
            );
            let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
            let mut output = std::io::BufWriter::with_capacity(1 << 20, file);
            let done = corriente_media::mp4::faststart(&mut input, &mut output)
                .map_err(|e| e.to_string())?;
            let file = output.into_inner().map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            Ok(done.duration_ms)
        })
        .transpose();
    match converted {
        Ok(Some(duration_ms)) => {
            std::fs::rename(&tmp, path)?;
            std::fs::remove_file(&part)?;
            Ok(Some(duration_ms))
        }
        Ok(None) | Err(_) => {
            if let Err(e) = &converted {
                warn!(path = %part.display(), error = %e, "cannot rewrite the recording with its index first; it is kept as a fragmented MP4");
            } else {
                warn!(path = %part.display(), "no room for the faststart copy; the recording is kept as a fragmented MP4");
            }
            let _ = std::fs::remove_file(&tmp);
            std::fs::rename(&part, path)?;
            Ok(Some(0))
        }
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

/// The recordings under `dir` (finished and being written), newest first, as the index
/// keeps them.
pub fn list(settings: &RecordSettings, node_id: &str) -> Vec<RecordingRecord> {
    let dir = &settings.dir;
    let mut out: Vec<RecordingRecord> = walk(dir)
        .into_iter()
        .filter_map(|(p, meta)| {
            let name = p.file_name()?.to_str()?;
            let (id, part) = match name.strip_suffix(".mp4.part") {
                Some(id) => (id, true),
                None => (name.strip_suffix(".mp4")?, false),
            };
            // DIR/APP/NAME/ID.mp4
            let stream = p.parent()?.strip_prefix(dir).ok()?.to_str()?;
            let stream = StreamKey::parse(stream).ok()?;
            let path = p.with_file_name(format!("{id}.mp4"));
            let modified_ms = modified_ms(&meta);
            let sidecar = read_sidecar(&path).unwrap_or(Sidecar {
                started_at_ms: modified_ms,
                epoch: 0,
                duration_ms: 0,
                state: RecordingState::Complete,
                reason: String::new(),
            });
            let (state, duration_ms) = if part {
                let active = settings.active().get(&path).map(|a| a.duration_ms);
                (RecordingState::Recording, active.unwrap_or(0))
            } else {
                (sidecar.state, sidecar.duration_ms)
            };
            Some(RecordingRecord {
                stream,
                id: id.to_owned(),
                node_id: node_id.to_owned(),
                epoch: sidecar.epoch,
                started_at_ms: sidecar.started_at_ms,
                duration_ms,
                size: meta.len(),
                state,
                reason: sidecar.reason,
                etag: etag(&meta),
                relay_addr: String::new(),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (b.started_at_ms, &a.stream, &a.id).cmp(&(a.started_at_ms, &b.stream, &b.id))
    });
    out
}

fn modified_ms(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// A file's entity tag: its size and modification time, so it changes whenever the bytes may
/// have.
fn etag(meta: &std::fs::Metadata) -> String {
    format!("\"{:x}-{:x}\"", meta.len(), modified_ms(meta))
}

/// The finished recording `id` of `key`, if there is one (ids are checked: a file name, never
/// a path).
fn finished_path(dir: &Path, key: &StreamKey, id: &str) -> Option<PathBuf> {
    corriente_cluster::convert::valid_recording_id(id).then(|| {
        dir.join(key.app())
            .join(key.name())
            .join(format!("{id}.mp4"))
    })
}

/// Why a range of a recording cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no finished recording {id} of {key} on this origin")]
    NotFound { key: StreamKey, id: String },
    #[error("recording {0} changed since it was looked up")]
    Changed(String),
    #[error("reading the recording failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Largest range one read returns.
pub const MAX_READ: u32 = 4 << 20;

/// Reads up to `length` bytes (at most [`MAX_READ`]) of a finished recording from `offset`:
/// the bytes, the file's size and its etag. `expected`: the etag the caller knows (empty:
/// any).
pub fn read_range(
    dir: &Path,
    key: &StreamKey,
    id: &str,
    offset: u64,
    length: u32,
    expected: &str,
) -> Result<(Vec<u8>, u64, String), ReadError> {
    use std::os::unix::fs::FileExt;
    let not_found = || ReadError::NotFound {
        key: key.clone(),
        id: id.to_owned(),
    };
    let path = finished_path(dir, key, id).ok_or_else(not_found)?;
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    let tag = etag(&meta);
    if !expected.is_empty() && expected != tag {
        return Err(ReadError::Changed(id.to_owned()));
    }
    let size = meta.len();
    let want = u64::from(length.min(MAX_READ)).min(size.saturating_sub(offset)) as usize;
    let mut data = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut data[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    data.truncate(got);
    Ok((data, size, tag))
}

/// Deletes the finished recording `id` of `key` and its sidecar. `false`: there was none.
pub fn delete(settings: &RecordSettings, key: &StreamKey, id: &str) -> std::io::Result<bool> {
    let Some(path) = finished_path(&settings.dir, key, id) else {
        return Ok(false);
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let _ = std::fs::remove_file(sidecar_path(&path));
    RECORDINGS_DELETED.inc();
    info!(path = %path.display(), "recording deleted through the admin API");
    settings.changed();
    Ok(true)
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
                let _ = std::fs::remove_file(sidecar_path(&path));
                total -= size;
                RECORDINGS_DELETED.inc();
                info!(path = %path.display(), size, reason = if too_old { "max_age" } else { "max_bytes" }, "recording deleted by retention");
                deleted.push(path);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot delete a recording"),
        }
    }
    if !deleted.is_empty() {
        settings.changed();
    }
    deleted
}

/// How often retention runs (also after every recording ends).
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Runs retention every [`RETENTION_EVERY`] and whenever a recording starts or ends.
pub async fn run_retention(settings: Arc<RecordSettings>) {
    if settings.max_age.is_none() && settings.max_bytes.is_none() {
        return;
    }
    let mut changes = settings.changes.subscribe();
    loop {
        let s = settings.clone();
        let _ = tokio::task::spawn_blocking(move || apply_retention(&s)).await;
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
            _ = changes.changed() => {}
        }
    }
}

/// How often the origin syncs its recordings to the index when nothing changes (live
/// recordings' durations and sizes move on).
pub const SYNC_EVERY: Duration = Duration::from_secs(30);

/// Keeps the cluster's recordings index equal to this origin's disk: a sync at start, on every
/// change, every [`SYNC_EVERY`], and again after 2 s while the control plane cannot be
/// reached.
pub async fn run_sync(settings: Arc<RecordSettings>, control: ControlClient, node_id: String) {
    let mut changes = settings.changes.subscribe();
    loop {
        changes.mark_unchanged();
        let listed = {
            let s = settings.clone();
            let node = node_id.clone();
            tokio::task::spawn_blocking(move || list(&s, &node))
                .await
                .unwrap_or_default()
        };
        let wait = match control.sync_recordings(&node_id, &listed).await {
            Ok(()) => SYNC_EVERY,
            Err(e) => {
                tracing::debug!(error = %e, "recordings index sync failed; retrying");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
        }
    }
}

/// Finishes what a crash left under `dir` (at start-up): `.part` files are cut to their last
/// complete box and rewritten like any finished recording (state `complete`, reason
/// `recovered`); a faststart copy cut short is removed.
pub async fn recover(dir: &Path) {
    let dir = dir.to_path_buf();
    let interrupted = match tokio::task::spawn_blocking(move || interrupted(&dir)).await {
        Ok(found) => found,
        Err(e) => {
            warn!(error = %e, "scanning for interrupted recordings failed");
            return;
        }
    };
    for (done, sidecar) in interrupted {
        finalize(&done, sidecar).await;
    }
}

/// The recordings under `dir` a crash interrupted (their final path and sidecar, marked
/// `recovered`), after removing leftover temporary files and `.part`s already finished.
/// Blocking: file system walks.
fn interrupted(dir: &Path) -> Vec<(PathBuf, Sidecar)> {
    let mut parts = Vec::new();
    for (p, _) in walk(dir) {
        let Some(name) = p.to_str() else { continue };
        if name.ends_with(".mp4.tmp") || name.ends_with(".json.tmp") {
            let _ = std::fs::remove_file(&p);
        } else if let Some(done) = name.strip_suffix(".part") {
            parts.push((p.clone(), PathBuf::from(done)));
        }
    }
    let mut out = Vec::new();
    for (part, done) in parts {
        if done.exists() {
            // Finished, and the crash came before the `.part` was removed.
            let _ = std::fs::remove_file(&part);
            continue;
        }
        info!(path = %part.display(), "finishing a recording interrupted by a crash");
        let mut sidecar = read_sidecar(&done).unwrap_or(Sidecar {
            started_at_ms: std::fs::metadata(&part)
                .map(|m| modified_ms(&m))
                .unwrap_or(0),
            epoch: 0,
            duration_ms: 0,
            state: RecordingState::Complete,
            reason: String::new(),
        });
        sidecar.state = RecordingState::Complete;
        sidecar.reason = "recovered".to_owned();
        out.push((done, sidecar));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_recordings_by_stream_start_and_epoch() {
        let key = StreamKey::new("live", "cam").unwrap();
        let p = recording_path(Path::new("/rec"), &key, 1_796_000_000_123, 7);
        assert_eq!(p, Path::new("/rec/live/cam/20261130T005320Z-e7.mp4"));
        assert_eq!(corriente_core::time::compact_utc(0), "19700101T000000Z");
        assert_eq!(
            corriente_core::time::compact_utc(951_782_400),
            "20000229T000000Z"
        );
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
