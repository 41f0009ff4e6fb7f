//! HTTP playback: `GET /APP/NAME.flv` streams the live FLV (chunked, CORS-enabled so browser
//! players can fetch it). The response body is the stream's FLV tags, shared with every other
//! HTTP-FLV viewer; per viewer there is only the socket write.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use corriente_media::io::{Format, StallGuard, segment_bytes};
use corriente_media::metrics::{self as media_metrics, Protocol};
use corriente_media::{Feed, FeedEnd, Segment, StreamKey, flv};
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info};

use crate::EdgeContext;
use crate::metrics::PLAY_REFUSED;
use crate::pulls::{PlayError, ViewerLease};

/// The edge's HTTP routes.
pub(crate) fn router(ctx: Arc<EdgeContext>) -> Router {
    Router::new()
        .route("/{app}/{file}", get(play).head(play).options(preflight))
        .with_state(ctx)
}

/// Serves one HTTP connection (HTTP/1.1, or HTTP/2 with prior knowledge) until it closes or
/// the node shuts down.
pub(crate) async fn serve_connection(
    ctx: Arc<EdgeContext>,
    router: Router,
    stream: TcpStream,
    _peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let io = TokioIo::new(StallGuard::new(stream, ctx.config.write_timeout));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.handshake_timeout)
        // What hyper buffers per connection (body chunks queued for the socket): as small as
        // the RTMP viewer's queue, for the same reason.
        .max_buf_size(crate::rtmp::MAX_QUEUED)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
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

fn refuse(status: StatusCode, reason: &str, message: String) -> Response {
    PLAY_REFUSED.with_label_values(&["http_flv", reason]).inc();
    debug!(reason, "play refused: {message}");
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        message + "\n",
    )
        .into_response()
}

async fn play(
    State(ctx): State<Arc<EdgeContext>>,
    method: Method,
    Path((app, file)): Path<(String, String)>,
) -> Response {
    let requested = Instant::now();
    let Some(name) = file.strip_suffix(".flv") else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such page: /{app}/{file}"),
        );
    };
    let key = match StreamKey::new(&app, name) {
        Ok(key) => key,
        Err(e) => return refuse(StatusCode::NOT_FOUND, "bad_name", e.to_string()),
    };
    if ctx.draining.is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this edge is shutting down; retry".to_owned(),
        );
    }
    let lease = match ctx.pulls.acquire(&key).await {
        Ok(lease) => lease,
        Err(e @ PlayError::NotFound(_)) => {
            return refuse(StatusCode::NOT_FOUND, e.reason(), e.to_string());
        }
        Err(e @ PlayError::Unavailable { .. }) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, e.reason(), e.to_string());
        }
    };
    let feed = match lease
        .hub()
        .subscribe(ctx.config.viewer_lag, Protocol::HttpFlv)
    {
        Ok(feed) => feed,
        Err(e) => {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("stream {key}: {e}"),
            );
        }
    };
    debug!(stream = %key, "playing over HTTP-FLV");
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

/// The body of an HTTP-FLV response: the FLV header, then the hub's FLV bytes as they come.
struct FlvBody {
    header: Option<Bytes>,
    feed: Feed,
    /// Keeps the pull alive while this viewer watches.
    _lease: ViewerLease,
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
