//! HTTP playback: `GET /APP/NAME.flv` streams the live FLV (HTTP/1.1 chunked, CORS-enabled so
//! browser players can fetch it), and `GET /APP/NAME.m3u8` with `/APP/NAME/hls/FILE` serve
//! LL-HLS ([`crate::hls`]).
//!
//! The edge reads a plain-HTTP connection's request heads itself. A playback request (the
//! usual case: players open a connection for the stream) is served on the fast path: the socket
//! is attached to the stream's direct fan-out like an RTMP viewer's, and the FLV tags shared with
//! every other HTTP-FLV viewer are written with their chunk framing, no HTTP library in the
//! loop. HLS requests (HTTP/1.1 `GET`/`HEAD` without a body: one playlist or part after another
//! on a kept-alive connection) are answered on the socket too, by the same handlers the routes
//! use, without hyper's and axum's per-request machinery. Every other request, and everything
//! after the first one that is not HLS, goes to hyper and the axum routes below, which serve the
//! same stream through a feed-backed response body.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use corriente_core::net::{
    Admission, Admitted, close_gracefully, close_shared, count_cut, write_within,
};
use corriente_media::fanout::{Sink, Wire};
use corriente_media::io::{Format, StallGuard, segment_bytes};
use corriente_media::metrics::{self as media_metrics, Protocol};
use corriente_media::output::chunk_head;
use corriente_media::{EndReason, Feed, FeedEnd, Segment, StreamKey, flv};
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info};

use crate::EdgeContext;
use crate::metrics::PLAY_REFUSED;
use crate::pulls::{PlayError, ViewerLease};
use crate::viewer::{self, Playback};

/// Largest request head read on the fast path; larger ones go to hyper, which refuses them.
const MAX_HEAD: usize = 8 << 10;

/// The edge's HTTP routes (served by hyper). With `redirect`, page requests (anything but a
/// stream, `.flv`) are answered with a permanent redirect to the HTTPS listener.
pub(crate) fn router(ctx: Arc<EdgeContext>, redirect: bool) -> Router {
    let router = Router::new()
        .route(
            "/_corriente/{asset}",
            get(|Path(asset): Path<String>| async move { crate::page::asset(&asset) }),
        )
        .route("/{app}/{file}", get(play).head(play).options(preflight))
        .route(
            "/vod/{app}/{name}/{file}",
            get(vod).head(vod).options(preflight),
        )
        .route(
            "/{app}/{name}/hls/{file}",
            get(hls_media).head(hls_media).options(preflight),
        );
    let router = match (redirect, ctx.https_local) {
        (true, Some(https)) => router.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                let path = request.uri().path();
                if path.ends_with(".flv")
                    || path.ends_with(".mp4")
                    || path.ends_with(".m3u8")
                    || path.ends_with(".m4s")
                    || request.method() == Method::OPTIONS
                {
                    return next.run(request).await;
                }
                https_redirect(&request, https.port())
            },
        )),
        _ => router,
    };
    router.with_state(ctx)
}

/// `308 Permanent Redirect` to the same path and query on the HTTPS port of the host the client
/// asked for.
fn https_redirect(request: &axum::extract::Request, https_port: u16) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    // Strip a port, keeping IPv6 brackets: `[::1]:8080` → `[::1]`, `a.b:80` → `a.b`.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    match HeaderValue::from_str(&location) {
        Ok(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "bad Host header\n").into_response(),
    }
}

/// Serves one HTTP connection until it closes or the node shuts down.
pub(crate) async fn serve_connection(
    ctx: Arc<EdgeContext>,
    router: Router,
    mut stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut head = BytesMut::with_capacity(1024);
    let timeout = ctx.config.handshake_timeout;
    // The first request must come within the handshake deadline; a kept-alive connection's
    // next one within the same idle limit hyper applies.
    let mut served = 0u64;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(timeout, read_head(&mut stream, &mut head)) => next,
            _ = shutdown.cancelled(), if served > 0 => return,
        };
        match next {
            Ok(Ok(Head::Flv(request))) => {
                serve_flv(ctx, stream, peer, request, shutdown).await;
                return;
            }
            Ok(Ok(Head::Hls(request))) => {
                served += 1;
                let _ = head.split_to(request.len);
                if !serve_hls(&ctx, &mut stream, peer.ip(), &request).await || request.close {
                    return;
                }
            }
            Ok(Ok(Head::Other)) => break,
            Ok(Err(_)) => return,
            Err(_) => {
                if served == 0 {
                    debug!(?timeout, "no request head in time");
                }
                return;
            }
        }
    }
    let router = router
        .layer(Extension(Peer(peer.ip())))
        .layer(Extension(StreamAdmission(None)));
    serve_hyper(
        ctx,
        router,
        Rewind::new(head.freeze(), stream),
        false,
        shutdown,
    )
    .await;
}

/// The client's address, for the hyper-served routes.
#[derive(Clone, Copy)]
struct Peer(IpAddr);

/// On a connection that may carry HTTP/2 (HTTPS), the listener's admission: each HTTP/2
/// playback stream is admitted like a connection of its own (connection and per-address
/// limits), so one connection cannot open more viewers than one address may.
#[derive(Clone)]
struct StreamAdmission(Option<Admission>);

/// Most concurrent streams of one HTTP/2 connection (each playback stream also counts against
/// the per-address connection limit).
const MAX_H2_STREAMS: u32 = 16;

/// Serves one HTTPS connection: the TLS handshake (under the request-head deadline), then
/// hyper, over HTTP/2 when the client chose it (ALPN) and HTTP/1.1 otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_tls_connection(
    ctx: Arc<EdgeContext>,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    admission: Admission,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let timeout = ctx.config.handshake_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let router = router
                .layer(Extension(Peer(peer.ip())))
                .layer(Extension(StreamAdmission(Some(admission))));
            serve_hyper(ctx, router, tls, true, shutdown).await
        }
        Ok(Err(e)) => info!(error = %e, "TLS handshake failed: not an HTTPS client"),
        Err(_) => info!(?timeout, "TLS handshake timed out"),
    }
}

/// A playback request on the fast path.
struct FlvRequest {
    app: String,
    file: String,
    /// The query string (`token=…`), without `?`.
    query: String,
    head_only: bool,
    http11: bool,
}

/// An HLS request on the fast path: a playlist (`file` is `None`) or a media file.
struct HlsRequest {
    app: String,
    name: String,
    file: Option<String>,
    query: String,
    head_only: bool,
    /// The client asked to close the connection after this answer.
    close: bool,
    user_agent: String,
    if_none_match: Option<String>,
    /// Length of the request head in the buffer.
    len: usize,
}

/// What a request head asks for.
enum Head {
    Flv(FlvRequest),
    Hls(HlsRequest),
    /// Anything else: hyper reads it from the buffer again.
    Other,
}

/// Reads the next request head (parsing what `buf` already holds first). HTTP-FLV playback
/// (`GET`/`HEAD` of `/APP/NAME.flv`) and HTTP/1.1 `GET`/`HEAD` of HLS playlists and media
/// without a body are answered on the fast path; anything else goes to hyper.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Head> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(buf) {
                Ok(httparse::Status::Complete(len)) => return Ok(classify(&request, len)),
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                _ => return Ok(Head::Other),
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn classify(request: &httparse::Request<'_, '_>, len: usize) -> Head {
    let method = request.method.unwrap_or("");
    if !matches!(method, "GET" | "HEAD") {
        return Head::Other;
    }
    let target = request.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // Up to five path segments, without collecting them (this runs for every HLS request).
    let mut it = path.trim_start_matches('/').split('/');
    let segments = [it.next(), it.next(), it.next(), it.next(), it.next()];
    let head_only = method == "HEAD";
    match segments {
        [Some(app), Some(file), None, ..] if file.ends_with(".flv") => Head::Flv(FlvRequest {
            app: app.to_owned(),
            file: file.to_owned(),
            query: query.to_owned(),
            head_only,
            http11: request.version == Some(1),
        }),
        [Some(app), Some(file), None, ..] if file.ends_with(".m3u8") => {
            hls_request(request, (app, &file[..file.len() - 5], None), query, len)
        }
        [Some(app), Some(name), Some("hls"), Some(file), None] => {
            hls_request(request, (app, name, Some(file)), query, len)
        }
        _ => Head::Other,
    }
}

/// An HLS request for the fast path, or [`Head::Other`] where hyper's handling is needed: not
/// HTTP/1.1, a request body, or names that need percent-decoding.
fn hls_request(
    request: &httparse::Request<'_, '_>,
    (app, name, file): (&str, &str, Option<&str>),
    query: &str,
    len: usize,
) -> Head {
    if request.version != Some(1)
        || [app, name, file.unwrap_or("")]
            .iter()
            .any(|s| s.contains('%'))
    {
        return Head::Other;
    }
    let mut close = false;
    let (mut user_agent, mut if_none_match) = (String::new(), None);
    for h in request.headers.iter() {
        let value = || std::str::from_utf8(h.value).ok();
        if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            if h.name.eq_ignore_ascii_case("transfer-encoding") || h.value != b"0" {
                return Head::Other;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value()
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        } else if h.name.eq_ignore_ascii_case("user-agent") {
            user_agent = value().unwrap_or("").to_owned();
        } else if h.name.eq_ignore_ascii_case("if-none-match") {
            if_none_match = value().map(str::to_owned);
        } else if h.name.eq_ignore_ascii_case("upgrade") || h.name.eq_ignore_ascii_case("expect") {
            return Head::Other;
        }
    }
    Head::Hls(HlsRequest {
        app: app.to_owned(),
        name: name.to_owned(),
        file: file.map(str::to_owned),
        query: query.to_owned(),
        head_only: request.method == Some("HEAD"),
        close,
        user_agent,
        if_none_match,
        len,
    })
}

/// Answers an HLS request on the socket itself, with the same handlers the hyper routes use.
/// Returns whether the connection can carry another request.
async fn serve_hls(
    ctx: &EdgeContext,
    stream: &mut TcpStream,
    peer: IpAddr,
    request: &HlsRequest,
) -> bool {
    let client = crate::hls::Client {
        peer,
        user_agent: &request.user_agent,
        if_none_match: request.if_none_match.as_deref(),
    };
    let response = match &request.file {
        None => {
            crate::hls::serve_playlist(ctx, client, &request.app, &request.name, &request.query)
                .await
        }
        Some(file) => {
            crate::hls::serve_media(
                ctx,
                client,
                (&request.app, &request.name, file),
                &request.query,
                request.head_only,
            )
            .await
        }
    };
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return false;
    };
    let mut head = String::with_capacity(512);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        let Ok(value) = value.to_str() else { continue };
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let bodiless = parts.status == StatusCode::NOT_MODIFIED;
    if !bodiless && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        let _ = write!(head, "content-length: {}\r\n", body.len());
    }
    let _ = write!(head, "date: {}\r\n", corriente_core::time::http_date_now());
    if request.close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let body = if request.head_only || bodiless {
        Bytes::new()
    } else {
        body
    };
    let written = tokio::time::timeout(
        ctx.config.write_timeout,
        write_two(stream, head.as_bytes(), &body),
    )
    .await;
    matches!(written, Ok(Ok(())))
}

/// Writes `a` then `b`, in as few system calls as the socket allows.
async fn write_two(stream: &mut TcpStream, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = stream
            .write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    stream.write_all(b).await
}

/// Why a playback request is refused, as HTTP.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

/// Finds the stream of `/APP/FILE` and joins its pull.
async fn resolve(
    ctx: &EdgeContext,
    app: &str,
    file: &str,
    query: &str,
    peer: IpAddr,
) -> Result<(StreamKey, ViewerLease), Refusal> {
    let refuse = |status, reason, message: String| Refusal {
        status,
        reason,
        message,
        retry_after: None,
    };
    // Before any name, token, hook or registry work: a client retrying in a loop (or looping
    // on one kept-alive connection) costs a bucket lookup and nothing else.
    if let Err(wait) = ctx.take_play_attempt(peer) {
        return Err(Refusal {
            retry_after: Some(wait),
            ..refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many play requests from this address; retry in {wait} s"),
            )
        });
    }
    let Some(name) = file.strip_suffix(".flv") else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such page: /{app}/{file}"),
        ));
    };
    let key = StreamKey::new(app, name)
        .map_err(|e| refuse(StatusCode::NOT_FOUND, "bad_name", e.to_string()))?;
    crate::access::authorize(
        &ctx.config.play_auth,
        &key,
        query,
        peer,
        "http_flv",
        &ctx.config.node_id,
    )
    .await
    .map_err(|denial| {
        let status = if denial.unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::FORBIDDEN
        };
        refuse(status, denial.reason, denial.message)
    })?;
    if ctx.draining.is_cancelled() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this edge is shutting down; retry".to_owned(),
        ));
    }
    match ctx.pulls.acquire(&key).await {
        Ok(lease) => Ok((key, lease)),
        Err(e @ PlayError::NotFound(_)) => {
            Err(refuse(StatusCode::NOT_FOUND, e.reason(), e.to_string()))
        }
        Err(e @ PlayError::Unavailable { .. }) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            e.reason(),
            e.to_string(),
        )),
    }
}

impl Refusal {
    fn count(&self) {
        PLAY_REFUSED
            .with_label_values(&["http_flv", self.reason])
            .inc();
        if self.status == StatusCode::FORBIDDEN || self.status == StatusCode::SERVICE_UNAVAILABLE {
            info!(reason = self.reason, "play refused: {}", self.message);
        } else {
            debug!(reason = self.reason, "play refused: {}", self.message);
        }
    }
}

/// Response headers of a playback response.
const FLV_HEADERS: &str = "Content-Type: video/x-flv\r\nCache-Control: no-cache, no-store\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Content-Type\r\n";

/// The fast path: answers a playback request on the socket itself.
async fn serve_flv(
    ctx: Arc<EdgeContext>,
    mut stream: TcpStream,
    peer: SocketAddr,
    request: FlvRequest,
    shutdown: CancellationToken,
) {
    let requested = Instant::now();
    let version = if request.http11 { "1.1" } else { "1.0" };
    let (key, lease) = match resolve(&ctx, &request.app, &request.file, &request.query, peer.ip())
        .await
    {
        Ok(found) => found,
        Err(refusal) => {
            refusal.count();
            let body = format!("{}\n", refusal.message);
            let retry = refusal
                .retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let response = format!(
                "HTTP/{version} {status}\r\nContent-Type: text/plain; charset=utf-8\r\nAccess-Control-Allow-Origin: *\r\nCache-Control: no-store\r\n{retry}Content-Length: {len}\r\nConnection: close\r\n\r\n{body}",
                status = refusal.status,
                len = body.len(),
            );
            let _ = write_within(&mut stream, response.as_bytes(), ctx.config.write_timeout).await;
            close_gracefully(&mut stream, Duration::from_secs(1)).await;
            return;
        }
    };
    tracing::Span::current().record("stream", tracing::field::display(&key));
    let chunked = request.http11;
    let head = format!(
        "HTTP/{version} 200 OK\r\n{FLV_HEADERS}{}Connection: close\r\n\r\n",
        if chunked {
            "Transfer-Encoding: chunked\r\n"
        } else {
            ""
        }
    );
    if request.head_only {
        let _ = write_within(&mut stream, head.as_bytes(), ctx.config.write_timeout).await;
        close_gracefully(&mut stream, Duration::from_secs(1)).await;
        return;
    }
    debug!(stream = %key, "playing over HTTP-FLV");
    let socket = viewer::playing_socket(stream, ctx.config.viewer_nodelay);
    let wire = if chunked { Wire::FlvChunked } else { Wire::Flv };
    let sink = Sink::new(
        socket.clone(),
        wire,
        Protocol::HttpFlv,
        ctx.config.viewer_lag,
    );
    sink.queue(Bytes::from(head));
    let tracks = lease.hub().tracks();
    let file_header = Bytes::copy_from_slice(&flv::file_header(tracks.has_audio, tracks.has_video));
    if chunked {
        sink.queue(chunk_head(file_header.len()));
        sink.queue(file_header);
        sink.queue(Bytes::from_static(b"\r\n"));
    } else {
        sink.queue(file_header);
    }
    let mut playback = HttpPlayback { chunked };
    match lease.hub().attach(&sink) {
        Ok(attachment) => {
            let result = viewer::serve_sink(
                sink,
                attachment,
                playback,
                BytesMut::new(),
                ctx.config.write_timeout,
                requested,
                &shutdown,
            )
            .await;
            if let Err(e) = result
                && e.kind() != std::io::ErrorKind::TimedOut
            {
                debug!(error = %e, "HTTP-FLV viewer connection ended");
            }
        }
        Err(e) => {
            sink.queue(playback.end(Some(e.0)));
            let _ = viewer::drain_within(&sink, ctx.config.write_timeout).await;
        }
    }
    drop(lease);
    close_shared(&socket, Duration::from_secs(1)).await;
}

/// An HTTP-FLV response while playing: the viewer has nothing to say; the end is the last chunk.
struct HttpPlayback {
    chunked: bool,
}

impl Playback for HttpPlayback {
    fn input(&mut self, input: &mut BytesMut) -> std::io::Result<Option<Bytes>> {
        // Pipelined requests and the like: ignored, the response is endless.
        input.clear();
        Ok(Some(Bytes::new()))
    }

    fn end(&mut self, _reason: Option<EndReason>) -> Bytes {
        if self.chunked {
            Bytes::from_static(b"0\r\n\r\n")
        } else {
            Bytes::new()
        }
    }
}

/// Hyper serves the connection: every request but a first playback request.
async fn serve_hyper<S>(
    ctx: Arc<EdgeContext>,
    router: Router,
    io: S,
    h2: bool,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(StallGuard::new(io, ctx.config.write_timeout));
    let builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/2 only where the client chose it by ALPN (HTTPS): playback has no use for it on the
    // plain port, where it would be one connection carrying any number of viewers.
    let mut builder = if h2 { builder } else { builder.http1_only() };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.handshake_timeout)
        // What hyper buffers per connection (body chunks queued for the socket): as small as a
        // fast-path viewer's backlog, for the same reason.
        .max_buf_size(corriente_media::fanout::MAX_BACKLOG)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        // A peer that stops answering pings is gone: the same deadline as a stalled write.
        .keep_alive_interval(ctx.config.handshake_timeout)
        .keep_alive_timeout(ctx.config.write_timeout)
        .max_send_buf_size(corriente_media::fanout::MAX_BACKLOG)
        .max_pending_accept_reset_streams(MAX_H2_STREAMS as usize)
        .max_local_error_reset_streams(MAX_H2_STREAMS as usize);
    // Requests in flight, for the idle deadline: HTTP/1.1's idle keep-alive is bounded by
    // hyper's header timeout, HTTP/2's by this watch (its pings only prove the peer is alive).
    let activity = Activity::default();
    let service = {
        let activity = activity.clone();
        let router = TowerToHyperService::new(router);
        hyper::service::service_fn(move |request| {
            let guard = activity.begin();
            let response = hyper::service::Service::call(&router, request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Guarded {
                        body,
                        _guard: guard,
                    })
                }))
            }
        })
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let idle_limit = ctx.config.handshake_timeout;
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = activity.idle_for(idle_limit), if h2 => {
            count_cut("edge-https", "idle");
            debug!(timeout = ?idle_limit, "closing an idle HTTP/2 connection");
            // GOAWAY; HTTP/2's graceful close then waits for a ping answer, which a peer that
            // went quiet may never give: nothing is in flight, so it gets a second at most.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(Duration::from_secs(1), conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        if is_write_stall(e.as_ref()) {
            media_metrics::VIEWERS_DROPPED
                .with_label_values(&["http_flv", "write_stall"])
                .inc();
            info!(error = %e, "viewer disconnected: it stopped reading");
        } else {
            debug!(error = %e, "HTTP connection ended");
        }
    }
}

/// The requests in flight on one connection (a response counts until its body ends) and when
/// the last one ended.
#[derive(Clone)]
struct Activity(Arc<std::sync::Mutex<(usize, Instant)>>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(std::sync::Mutex::new((0, Instant::now()))))
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self) -> ActiveGuard {
        self.lock().0 += 1;
        ActiveGuard(self.clone())
    }

    /// Completes once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let (active, since) = *self.lock();
            let due = since + limit;
            if active == 0 && Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(if active == 0 {
                due
            } else {
                Instant::now() + limit
            })
            .await;
        }
    }
}

/// One request in flight; dropping it (when the response body ends) ends it.
struct ActiveGuard(Activity);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.0 = state.0.saturating_sub(1);
        state.1 = Instant::now();
    }
}

/// A response body that holds its request's [`ActiveGuard`] until it ends.
struct Guarded {
    body: Body,
    _guard: ActiveGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket whose first bytes were already read: they are read again first.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// True when the error (or one it wraps) is the stall guard's timeout.
fn is_write_stall(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        current = e.source();
    }
    false
}

async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, OPTIONS"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
        .into_response()
}

fn refusal_response(refusal: Refusal) -> Response {
    refusal.count();
    let retry_after = refusal.retry_after;
    let mut response = (
        refusal.status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        refusal.message + "\n",
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// On-demand playback of a recording (`/vod/APP/NAME/ID.mp4`) or a stream's list of them.
async fn vod(
    State(ctx): State<Arc<EdgeContext>>,
    Extension(Peer(peer)): Extension<Peer>,
    method: Method,
    headers: axum::http::HeaderMap,
    Path((app, name, file)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    crate::vod::serve(
        &ctx,
        peer,
        &method,
        &headers,
        (&app, &name, &file),
        query.as_deref().unwrap_or(""),
    )
    .await
}

/// What an HLS answer needs of its request: the client's address, `User-Agent` (part of what
/// tells HLS viewers apart) and `If-None-Match`.
fn hls_client(peer: IpAddr, headers: &axum::http::HeaderMap) -> crate::hls::Client<'_> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    crate::hls::Client {
        peer,
        user_agent: text(header::USER_AGENT).unwrap_or(""),
        if_none_match: text(header::IF_NONE_MATCH),
    }
}

/// HLS media: an initialization segment, a segment or a part.
async fn hls_media(
    State(ctx): State<Arc<EdgeContext>>,
    Extension(Peer(peer)): Extension<Peer>,
    method: Method,
    headers: axum::http::HeaderMap,
    Path((app, name, file)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    crate::hls::serve_media(
        &ctx,
        hls_client(peer, &headers),
        (&app, &name, &file),
        query.as_deref().unwrap_or(""),
        method == Method::HEAD,
    )
    .await
}

/// Playback through hyper (a kept-alive connection's later requests).
async fn play(
    State(ctx): State<Arc<EdgeContext>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(StreamAdmission(admission)): Extension<StreamAdmission>,
    request: axum::http::request::Parts,
    Path((app, file)): Path<(String, String)>,
) -> Response {
    let requested = Instant::now();
    let (method, version) = (request.method.clone(), request.version);
    let query = request.uri.query().map(str::to_owned);
    if let Some(name) = file.strip_suffix(".m3u8") {
        return crate::hls::serve_playlist(
            &ctx,
            hls_client(peer, &request.headers),
            &app,
            name,
            query.as_deref().unwrap_or(""),
        )
        .await;
    }
    if !file.ends_with(".flv") {
        // `/APP/NAME`: the player page (it fetches `/APP/NAME.flv` itself).
        return match StreamKey::new(&app, &file) {
            Ok(_) => crate::page::player(),
            Err(e) => refusal_response(Refusal {
                status: StatusCode::NOT_FOUND,
                reason: "bad_name",
                message: e.to_string(),
                retry_after: None,
            }),
        };
    }
    let query = query.unwrap_or_default();
    // An HTTP/2 stream is a viewer like a connection is: admitted by the listener's limits.
    let admitted = match (&admission, version) {
        (Some(admission), axum::http::Version::HTTP_2) => match admission.try_admit(peer) {
            Ok(admitted) => Some(admitted),
            Err(reason) => {
                return refusal_response(Refusal {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    reason,
                    message: format!(
                        "too many viewers from your address on this connection's listener ({reason})"
                    ),
                    retry_after: None,
                });
            }
        },
        _ => None,
    };
    let (key, lease) = match resolve(&ctx, &app, &file, &query, peer).await {
        Ok(found) => found,
        Err(refusal) => return refusal_response(refusal),
    };
    let feed = match lease
        .hub()
        .subscribe(ctx.config.viewer_lag, Protocol::HttpFlv)
    {
        Ok(feed) => feed,
        Err(e) => {
            return refusal_response(Refusal {
                status: StatusCode::NOT_FOUND,
                reason: "not_found",
                message: format!("stream {key}: {e}"),
                retry_after: None,
            });
        }
    };
    debug!(stream = %key, "playing over HTTP-FLV (hyper)");
    let tracks = feed.tracks();
    let mut response = Response::new(if method == Method::HEAD {
        Body::empty()
    } else {
        Body::new(FlvBody {
            header: Some(Bytes::copy_from_slice(&flv::file_header(
                tracks.has_audio,
                tracks.has_video,
            ))),
            feed,
            _lease: lease,
            _admitted: admitted,
            shutdown: Box::pin(ctx.shutdown.clone().cancelled_owned()),
            requested,
            first_frame_pending: true,
            done: false,
        })
    });
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("video/x-flv"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    response
}

/// The body of an HTTP-FLV response through hyper: the FLV header, then the hub's FLV bytes.
struct FlvBody {
    header: Option<Bytes>,
    feed: Feed,
    /// Keeps the pull alive while this viewer watches.
    _lease: ViewerLease,
    /// An HTTP/2 stream's admission (its place in the listener's limits).
    _admitted: Option<Admitted>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    requested: Instant,
    first_frame_pending: bool,
    done: bool,
}

impl http_body::Body for FlvBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(header) = this.header.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(header))));
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.shutdown.as_mut().poll(cx).is_ready() {
                this.done = true;
                continue;
            }
            match Pin::new(&mut this.feed).poll_next(cx) {
                Poll::Ready(Some(segment)) => {
                    let bytes = segment_bytes(&segment, Format::Flv);
                    if bytes.is_empty() {
                        continue;
                    }
                    if this.first_frame_pending && matches!(segment, Segment::Batch { .. }) {
                        this.first_frame_pending = false;
                        media_metrics::time_to_first_frame(Protocol::HttpFlv)
                            .observe(this.requested.elapsed().as_secs_f64());
                    }
                    media_metrics::BYTES_OUT
                        .with_label_values(&["http_flv"])
                        .inc_by(bytes.len() as u64);
                    return Poll::Ready(Some(Ok(http_body::Frame::data(bytes))));
                }
                Poll::Ready(None) => {
                    if this.feed.end() == Some(FeedEnd::TooSlow) {
                        media_metrics::VIEWERS_DROPPED
                            .with_label_values(&["http_flv", "too_slow"])
                            .inc();
                        info!("viewer disconnected: it kept falling behind");
                    }
                    this.done = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
