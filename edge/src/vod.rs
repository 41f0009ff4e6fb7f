//! On-demand playback of recordings from any edge: `GET /vod/APP/NAME/ID.mp4` (and `HEAD`)
//! with HTTP ranges (`206`, `Accept-Ranges`, `Content-Range`, `416`), `ETag` and
//! `If-None-Match`/`If-Range`, so `<video>` seeks and downloads resume; and
//! `GET /vod/APP/NAME/index.json`, the stream's recordings (for the player page).
//!
//! The edge finds a recording in the cluster's index (through the control plane: the origin
//! holding it, its size and etag) and reads it from that origin over the relay
//! (`ReadRecording`, authenticated like every internal call) in blocks of [`BLOCK`] bytes,
//! which it keeps in a cache bounded by `--vod-cache-size` (least recently used out first).
//! Requests for a block being fetched wait for that fetch rather than start another. Blocks
//! are keyed by the file's etag, so a changed file is never served from stale blocks.
//!
//! Playback is authorized as live playback is (IP rules, signed URLs — the stream's `play`
//! token —, the `on_play` hook); a viewer's authorization is remembered for a minute, so a
//! seeking player's range requests do not each ask the hook.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use corriente_cluster::{ControlClient, RecordingRecord, RecordingState};
use corriente_media::StreamKey;
use corriente_media::metrics::BYTES_OUT;
use corriente_proto::relay::ReadRecordingRequest;
use corriente_proto::relay::relay_client::RelayClient;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::EdgeContext;
use crate::metrics::{PLAY_REFUSED, VOD_CACHE, VOD_CACHE_BYTES, VOD_REQUESTS};

/// The unit the edge reads recordings in and caches them by.
pub const BLOCK: u64 = 1 << 20;

/// How long a recording's lookup (origin, size, etag) is reused.
const LOOKUP_TTL: Duration = Duration::from_secs(5);
/// How long a viewer's authorization for a stream's recordings is reused.
const AUTH_TTL: Duration = Duration::from_secs(60);
/// Most remembered lookups and authorizations (each map is cleared when full).
const MAX_REMEMBERED: usize = 4096;
/// Deadline of one block read from the origin.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The edge's on-demand state: the block cache and recent lookups and authorizations.
pub(crate) struct Vod {
    cache: BlockCache,
    lookups: Mutex<HashMap<(StreamKey, String), (RecordingRecord, Instant)>>,
    authorized: Mutex<HashMap<(IpAddr, StreamKey, String), Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vod {
    pub(crate) fn new(cache_bytes: u64) -> Self {
        Self {
            cache: BlockCache::new(cache_bytes),
            lookups: Mutex::new(HashMap::new()),
            authorized: Mutex::new(HashMap::new()),
        }
    }
}

/// A cached block: the recording, the version of its bytes, the block's index.
type BlockKey = (StreamKey, String, String, u64);

/// Blocks of recordings, least recently used out first once they hold more than `max_bytes`.
struct BlockCache {
    max_bytes: u64,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<BlockKey, Slot>,
    /// Use order: tick → block.
    order: BTreeMap<u64, BlockKey>,
    tick: u64,
    bytes: u64,
}

struct Slot {
    cell: Arc<OnceCell<Bytes>>,
    tick: u64,
    size: u64,
}

impl CacheInner {
    fn touch(&mut self, key: &BlockKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) = self.map.get_mut(key) {
            self.order.remove(&slot.tick);
            slot.tick = tick;
            self.order.insert(tick, key.clone());
        }
    }

    fn remove(&mut self, key: &BlockKey) {
        if let Some(slot) = self.map.remove(key) {
            self.order.remove(&slot.tick);
            self.bytes -= slot.size;
        }
    }
}

impl BlockCache {
    fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    /// The block `key`, from the cache or from `fetch` (which at most one caller runs at a
    /// time for a block; the others wait for its answer).
    async fn get<F, Fut>(&self, key: BlockKey, fetch: F) -> Result<Bytes, Response>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, Response>>,
    {
        let cell = {
            let mut inner = lock(&self.inner);
            match inner.map.get(&key).map(|s| s.cell.clone()) {
                Some(cell) => {
                    inner.touch(&key);
                    VOD_CACHE.with_label_values(&["hit"]).inc();
                    cell
                }
                None => {
                    let cell = Arc::new(OnceCell::new());
                    inner.tick += 1;
                    let tick = inner.tick;
                    inner.map.insert(
                        key.clone(),
                        Slot {
                            cell: cell.clone(),
                            tick,
                            size: 0,
                        },
                    );
                    inner.order.insert(tick, key.clone());
                    VOD_CACHE.with_label_values(&["miss"]).inc();
                    cell
                }
            }
        };
        let mut fetched = false;
        let result = cell
            .get_or_try_init(|| {
                fetched = true;
                fetch()
            })
            .await
            .cloned();
        let mut inner = lock(&self.inner);
        let ours = inner
            .map
            .get(&key)
            .is_some_and(|s| Arc::ptr_eq(&s.cell, &cell));
        match &result {
            Err(_) if ours => inner.remove(&key),
            Ok(block) if ours && fetched => {
                let size = block.len() as u64;
                if let Some(slot) = inner.map.get_mut(&key) {
                    slot.size = size;
                }
                inner.bytes += size;
                while inner.bytes > self.max_bytes {
                    let Some((_, oldest)) = inner.order.pop_first() else {
                        break;
                    };
                    if let Some(slot) = inner.map.remove(&oldest) {
                        inner.bytes -= slot.size;
                    }
                }
            }
            _ => {}
        }
        VOD_CACHE_BYTES.set(inner.bytes as i64);
        result
    }
}

/// A plain-text answer, counted.
fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    VOD_REQUESTS.with_label_values(&[status.as_str()]).inc();
    plain(status, message)
}

/// A plain-text answer (errors: CORS, never cached; `Retry-After` with a 503).
pub(crate) fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        message.into() + "\n",
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// `GET`/`HEAD /vod/{app}/{name}/{file}`.
pub(crate) async fn serve(
    ctx: &Arc<EdgeContext>,
    peer: IpAddr,
    method: &Method,
    headers: &HeaderMap,
    (app, name, file): (&str, &str, &str),
    query: &str,
) -> Response {
    let key = match StreamKey::new(app, name) {
        Ok(key) => key,
        Err(e) => return answer(StatusCode::NOT_FOUND, e.to_string()),
    };
    if let Err(response) = authorize(ctx, &key, query, peer, "vod").await {
        VOD_REQUESTS
            .with_label_values(&[response.status().as_str()])
            .inc();
        return response;
    }
    if file == "index.json" {
        return index(ctx, &key).await;
    }
    let Some(id) = file
        .strip_suffix(".mp4")
        .filter(|id| corriente_cluster::convert::valid_recording_id(id))
    else {
        return answer(
            StatusCode::NOT_FOUND,
            format!("no such recording: /vod/{key}/{file} (recordings are ID.mp4)"),
        );
    };
    let recording = match lookup(ctx, &key, id).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    respond(ctx, method, headers, &recording).await
}

/// The viewer may watch `key` (its recordings, or its HLS: many requests per viewer): as for
/// live playback, remembered for [`AUTH_TTL`] per address, stream and token.
pub(crate) async fn authorize(
    ctx: &EdgeContext,
    key: &StreamKey,
    query: &str,
    peer: IpAddr,
    protocol: &'static str,
) -> Result<(), Response> {
    let token = corriente_core::access::query_param(query, "token")
        .unwrap_or("")
        .to_owned();
    let remembered = (peer, key.clone(), token);
    if lock(&ctx.vod.authorized)
        .get(&remembered)
        .is_some_and(|until| *until > Instant::now())
    {
        return Ok(());
    }
    if let Err(wait) = ctx.take_play_attempt(peer) {
        PLAY_REFUSED
            .with_label_values(&[protocol, "rate_limited"])
            .inc();
        let mut response = plain(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many play requests from this address; retry in {wait} s"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Err(response);
    }
    match crate::access::authorize(
        &ctx.config.play_auth,
        key,
        query,
        peer,
        protocol,
        &ctx.config.node_id,
    )
    .await
    {
        Ok(()) => {
            let mut authorized = lock(&ctx.vod.authorized);
            if authorized.len() >= MAX_REMEMBERED {
                authorized.clear();
            }
            authorized.insert(remembered, Instant::now() + AUTH_TTL);
            Ok(())
        }
        Err(denial) => {
            PLAY_REFUSED
                .with_label_values(&[protocol, denial.reason])
                .inc();
            info!(stream = %key, protocol, reason = denial.reason, "playback refused: {}", denial.message);
            let status = if denial.unavailable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            };
            Err(plain(status, denial.message))
        }
    }
}

fn control(ctx: &EdgeContext) -> &ControlClient {
    ctx.pulls.control()
}

/// The stream's recordings, for the player page.
async fn index(ctx: &EdgeContext, key: &StreamKey) -> Response {
    match control(ctx).list_recordings(Some(key), None).await {
        Ok(recordings) => {
            VOD_REQUESTS.with_label_values(&["200"]).inc();
            let list: Vec<serde_json::Value> = recordings
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id,
                        "started_at_ms": r.started_at_ms,
                        "duration_ms": r.duration_ms,
                        "size": r.size,
                        "state": r.state,
                        "available": r.state != RecordingState::Recording && !r.relay_addr.is_empty(),
                        "url": format!("/vod/{key}/{}.mp4", r.id),
                    })
                })
                .collect();
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                serde_json::json!({ "stream": key.to_string(), "recordings": list }).to_string(),
            )
                .into_response()
        }
        Err(e) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the recordings index is unavailable: {e}"),
        ),
    }
}

/// The recording `id` of `key`, from a recent lookup or the index.
async fn lookup(ctx: &EdgeContext, key: &StreamKey, id: &str) -> Result<RecordingRecord, Response> {
    let remembered = (key.clone(), id.to_owned());
    if let Some((r, at)) = lock(&ctx.vod.lookups).get(&remembered)
        && at.elapsed() < LOOKUP_TTL
    {
        return Ok(r.clone());
    }
    let found = control(ctx)
        .list_recordings(Some(key), Some(id))
        .await
        .map_err(|e| {
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the recordings index is unavailable: {e}"),
            )
        })?;
    let Some(recording) = found.into_iter().find(|r| r.id == id) else {
        return Err(answer(
            StatusCode::NOT_FOUND,
            format!("no recording {id} of stream {key}"),
        ));
    };
    if recording.state == RecordingState::Recording {
        return Err(answer(
            StatusCode::CONFLICT,
            format!(
                "recording {id} of {key} is still being written; it plays once the stream ends"
            ),
        ));
    }
    if recording.relay_addr.is_empty() {
        return Err(answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "origin {} holding recording {id} of {key} is down; retry later",
                recording.node_id
            ),
        ));
    }
    let mut lookups = lock(&ctx.vod.lookups);
    if lookups.len() >= MAX_REMEMBERED {
        lookups.clear();
    }
    lookups.insert(remembered, (recording.clone(), Instant::now()));
    Ok(recording)
}

fn forget(ctx: &EdgeContext, r: &RecordingRecord) {
    lock(&ctx.vod.lookups).remove(&(r.stream.clone(), r.id.clone()));
}

/// The bytes a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// The whole file.
    All,
    /// `first..=last`.
    Range(u64, u64),
    /// Nothing of it exists.
    Unsatisfiable,
}

/// Reads a `Range` header against a file of `size` bytes. One range of `bytes` is served
/// (`N-M`, `N-`, `-SUFFIX`); anything else (several ranges, other units, bad syntax) is
/// answered with the whole file, as RFC 9110 allows.
fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // -SUFFIX: the last SUFFIX bytes.
        (true, false) => match parse(last) {
            Some(0) => Wanted::Unsatisfiable,
            Some(n) if size > 0 => Wanted::Range(size.saturating_sub(n), size - 1),
            Some(_) => Wanted::Unsatisfiable,
            None => Wanted::All,
        },
        (false, _) => {
            let Some(first) = parse(first) else {
                return Wanted::All;
            };
            let last = if last.is_empty() {
                Some(u64::MAX)
            } else {
                parse(last)
            };
            match last {
                Some(last) if last < first => Wanted::All,
                Some(_) if first >= size => Wanted::Unsatisfiable,
                Some(last) => Wanted::Range(first, last.min(size - 1)),
                None => Wanted::All,
            }
        }
        (true, true) => Wanted::All,
    }
}

/// Whether an `If-None-Match` list names `etag` (weak comparison, `*` included).
fn none_match(header: &str, etag: &str) -> bool {
    header.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/") == etag
    })
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn respond(
    ctx: &Arc<EdgeContext>,
    method: &Method,
    headers: &HeaderMap,
    recording: &RecordingRecord,
) -> Response {
    let size = recording.size;
    let etag = recording.etag.as_str();
    let common = |response: &mut Response| {
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Range, Content-Length, Accept-Ranges, ETag"),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        // A recording's bytes never change under one etag; deleted ones go away within this.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        if let Ok(v) = HeaderValue::from_str(etag) {
            h.insert(header::ETAG, v);
        }
    };
    if header_str(headers, header::IF_NONE_MATCH).is_some_and(|h| none_match(h, etag)) {
        VOD_REQUESTS.with_label_values(&["304"]).inc();
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        common(&mut response);
        return response;
    }
    // A range of another version of the file is no range of this one: the whole file.
    let range = match header_str(headers, header::IF_RANGE) {
        Some(tag) if tag.trim() != etag => None,
        _ => header_str(headers, header::RANGE),
    };
    let (status, first, last) = match wanted(range, size) {
        Wanted::All => (StatusCode::OK, 0, size.saturating_sub(1)),
        Wanted::Range(first, last) => (StatusCode::PARTIAL_CONTENT, first, last),
        Wanted::Unsatisfiable => {
            let mut response = answer(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the recording has {size} bytes"),
            );
            common(&mut response);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return response;
        }
    };
    let length = if size == 0 { 0 } else { last - first + 1 };
    // The first block before the answer: an origin that cannot serve it gets an error status,
    // not a cut-off body.
    let body = if *method == Method::HEAD || length == 0 {
        Body::empty()
    } else {
        let first_block = match block(ctx, recording, first / BLOCK).await {
            Ok(b) => b,
            Err(response) => return response,
        };
        Body::from_stream(body_stream(
            ctx.clone(),
            recording.clone(),
            first,
            last,
            first_block,
        ))
    };
    VOD_REQUESTS.with_label_values(&[status.as_str()]).inc();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    common(&mut response);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    debug!(stream = %recording.stream, id = %recording.id, first, last, "on-demand playback");
    response
}

/// The bytes `first..=last`, block by block; the first block is already fetched.
fn body_stream(
    ctx: Arc<EdgeContext>,
    recording: RecordingRecord,
    first: u64,
    last: u64,
    first_block: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let state = (ctx, recording, first, Some(first_block));
    futures_util::stream::unfold(state, move |(ctx, recording, at, fetched)| async move {
        if at > last {
            return None;
        }
        let index = at / BLOCK;
        let block = match fetched {
            Some(b) => b,
            None => match block(&ctx, &recording, index).await {
                Ok(b) => b,
                Err(_) => {
                    return Some((
                        Err(std::io::Error::other(
                            "the origin stopped serving the recording",
                        )),
                        (ctx, recording, last + 1, None),
                    ));
                }
            },
        };
        let start = (at - index * BLOCK) as usize;
        let end = ((last + 1 - index * BLOCK) as usize).min(block.len());
        if start >= end {
            return Some((
                Err(std::io::Error::other(
                    "the recording is shorter than its index says",
                )),
                (ctx, recording, last + 1, None),
            ));
        }
        let chunk = block.slice(start..end);
        BYTES_OUT
            .with_label_values(&["vod"])
            .inc_by(chunk.len() as u64);
        let next = index * BLOCK + end as u64;
        Some((Ok(chunk), (ctx, recording, next, None)))
    })
}

/// Block `index` of a recording: from the cache, or read from its origin over the relay.
async fn block(ctx: &EdgeContext, r: &RecordingRecord, index: u64) -> Result<Bytes, Response> {
    let key = (r.stream.clone(), r.id.clone(), r.etag.clone(), index);
    ctx.vod
        .cache
        .get(key, || async {
            let channel = ctx.pulls.channel(&r.relay_addr).map_err(|e| {
                answer(StatusCode::BAD_GATEWAY, format!("cannot reach the origin: {e}"))
            })?;
            let request = ReadRecordingRequest {
                app: r.stream.app().to_owned(),
                name: r.stream.name().to_owned(),
                id: r.id.clone(),
                offset: index * BLOCK,
                length: BLOCK as u32,
                etag: r.etag.clone(),
            };
            let read = tokio::time::timeout(
                READ_TIMEOUT,
                RelayClient::with_interceptor(channel, ctx.config.pull.cluster_auth.client())
                    .max_decoding_message_size(corriente_proto::MAX_RELAY_MESSAGE)
                    .read_recording(request),
            )
            .await;
            match read {
                Ok(Ok(response)) => Ok(response.into_inner().data),
                Ok(Err(status)) => {
                    // Moved, changed or deleted: look it up afresh next time.
                    forget(ctx, r);
                    Err(match status.code() {
                        Code::NotFound => answer(
                            StatusCode::NOT_FOUND,
                            format!("recording {} of {} is gone", r.id, r.stream),
                        ),
                        Code::FailedPrecondition => answer(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("recording {} of {} changed; retry", r.id, r.stream),
                        ),
                        _ => {
                            warn!(origin = %r.node_id, error = %status.message(), "reading a recording from its origin failed");
                            answer(
                                StatusCode::BAD_GATEWAY,
                                format!("the origin holding the recording failed: {}", status.message()),
                            )
                        }
                    })
                }
                Err(_) => {
                    forget(ctx, r);
                    warn!(origin = %r.node_id, "reading a recording from its origin timed out");
                    Err(answer(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the origin holding the recording did not answer in time",
                    ))
                }
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ranges_like_rfc_9110() {
        assert_eq!(wanted(None, 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-9"), 100), Wanted::Range(0, 9));
        assert_eq!(wanted(Some("bytes=90-"), 100), Wanted::Range(90, 99));
        assert_eq!(wanted(Some("bytes=90-500"), 100), Wanted::Range(90, 99));
        assert_eq!(wanted(Some("bytes=-10"), 100), Wanted::Range(90, 99));
        assert_eq!(wanted(Some("bytes=-500"), 100), Wanted::Range(0, 99));
        assert_eq!(wanted(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=5-1"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-1,5-6"), 100), Wanted::All);
        assert_eq!(wanted(Some("items=0-1"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=x-1"), 100), Wanted::All);
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(none_match("\"a-1\"", "\"a-1\""));
        assert!(none_match("W/\"a-1\", \"b\"", "\"a-1\""));
        assert!(none_match("*", "\"a-1\""));
        assert!(!none_match("\"a-2\"", "\"a-1\""));
    }

    #[tokio::test]
    async fn the_cache_fetches_a_block_once_and_stays_bounded() {
        let cache = BlockCache::new(3 * 10);
        let key = |i| {
            (
                StreamKey::new("live", "cam").unwrap(),
                "r".to_owned(),
                "e".to_owned(),
                i,
            )
        };
        let fetches = std::sync::atomic::AtomicU32::new(0);
        let fetch = || async {
            fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Bytes::from_static(&[7; 10]))
        };
        for i in 0..5 {
            assert_eq!(cache.get(key(i), fetch).await.unwrap().len(), 10);
        }
        assert_eq!(cache.get(key(4), fetch).await.unwrap().len(), 10);
        assert_eq!(fetches.load(std::sync::atomic::Ordering::Relaxed), 5);
        let inner = lock(&cache.inner);
        assert_eq!(inner.bytes, 30);
        assert_eq!(inner.map.len(), 3);
        assert!(
            !inner.map.contains_key(&key(0)),
            "the least recently used left first"
        );
    }
}
