//! RTMP playback: one task per viewer. After `play`, the task writes the stream's pre-chunked
//! bytes (shared with every other RTMP viewer) with vectored writes, while still reading the
//! viewer's acknowledgements, pings and `deleteStream` on the same socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use corriente_media::frame::unix_micros;
use corriente_media::io::{Format, OutQueue, StallGuard, segment_bytes};
use corriente_media::key::split_query;
use corriente_media::metrics::{self as media_metrics, Protocol};
use corriente_media::net::close_gracefully;
use corriente_media::rtmp::handshake::{self, HandshakeError};
use corriente_media::rtmp::{ServerSession, SessionError, SessionEvent, SessionState};
use corriente_media::{Feed, FeedEnd, Segment, StreamKey};
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info, warn};

use crate::EdgeContext;
use crate::metrics::PLAY_REFUSED;
use crate::pulls::ViewerLease;

/// Bytes queued for one viewer before the task stops taking more from the feed: beyond this
/// the viewer is slow, and the feed's lag policy takes over. The queue only references shared
/// buffers, but a stalled viewer keeps what it references alive after the hub moved on, so it
/// stays small: the kernel's send buffer does the real buffering.
pub(crate) const MAX_QUEUED: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
enum ViewerError {
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("no play request within {0:?}")]
    Idle(Duration),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub(crate) async fn serve_viewer(
    ctx: Arc<EdgeContext>,
    mut stream: TcpStream,
    _peer: SocketAddr,
    shutdown: CancellationToken,
) {
    match run(&ctx, &mut stream, &shutdown).await {
        Ok(()) => debug!("viewer connection closed"),
        Err(ViewerError::Handshake(HandshakeError::Closed)) => {
            debug!("peer left during the handshake")
        }
        Err(ViewerError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            media_metrics::VIEWERS_DROPPED
                .with_label_values(&["rtmp", "write_stall"])
                .inc();
            info!(error = %e, "viewer disconnected: it stopped reading");
        }
        Err(ViewerError::Io(e)) => debug!(error = %e, "viewer connection ended"),
        Err(e) => warn!(error = %e, "viewer connection closed"),
    }
    close_gracefully(&mut stream, Duration::from_secs(1)).await;
}

async fn run(
    ctx: &Arc<EdgeContext>,
    stream: &mut TcpStream,
    shutdown: &CancellationToken,
) -> Result<(), ViewerError> {
    let config = &ctx.config;
    let mut input = handshake::accept(stream, config.handshake_timeout).await?;
    let mut session = ServerSession::new(config.session);
    let mut events = Vec::new();

    // Until `play`: request/response on the socket.
    let (lease, feed, requested) = 'setup: loop {
        // Everything complete in the buffer first: a client may send connect, createStream and
        // play back to back without waiting for answers.
        loop {
            session.feed(&mut input, unix_micros(), &mut events)?;
            if events.is_empty() {
                break;
            }
            let mut playing = None;
            for event in events.drain(..) {
                if let Some(p) = handle_setup(ctx, &mut session, event).await {
                    playing = Some(p);
                }
            }
            if session.has_output() {
                stream.write_all(&session.take_output()).await?;
            }
            if session.state() == &SessionState::Closed {
                return Ok(());
            }
            if let Some(playing) = playing {
                break 'setup playing;
            }
        }
        // Answers that raise no event (createStream's result, pings) go out too.
        if session.has_output() {
            stream.write_all(&session.take_output()).await?;
        }
        input.reserve(4096);
        let read = tokio::select! {
            read = tokio::time::timeout(config.handshake_timeout, stream.read_buf(&mut input)) => read,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match read {
            Err(_) => return Err(ViewerError::Idle(config.handshake_timeout)),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    };
    play(
        ctx, stream, session, input, lease, feed, requested, shutdown,
    )
    .await
}

/// Handles an event before playback; returns the viewer's pull and feed once `play` is
/// accepted.
async fn handle_setup(
    ctx: &Arc<EdgeContext>,
    session: &mut ServerSession,
    event: SessionEvent,
) -> Option<(ViewerLease, Feed, Instant)> {
    match event {
        SessionEvent::ConnectRequested { app, .. } => match StreamKey::new(&app, "probe") {
            Ok(_) => session.accept_connect(),
            Err(e) => session.reject_connect(&e.to_string()),
        },
        SessionEvent::PublishRequested { .. } => {
            session.reject_publish(
                "NetStream.Publish.Denied",
                "this is a playback (edge) node; publish to the ingest address",
            );
        }
        SessionEvent::PlayRequested { name } => {
            let requested = Instant::now();
            let refuse = |session: &mut ServerSession, reason: &str, code: &str, text: &str| {
                PLAY_REFUSED.with_label_values(&["rtmp", reason]).inc();
                info!(reason, "play refused: {text}");
                session.reject_play(code, text);
            };
            let (name, _query) = split_query(&name);
            let key = match StreamKey::new(session.app(), name) {
                Ok(key) => key,
                Err(e) => {
                    refuse(
                        session,
                        "bad_name",
                        "NetStream.Play.StreamNotFound",
                        &e.to_string(),
                    );
                    return None;
                }
            };
            Span::current().record("stream", tracing::field::display(&key));
            if ctx.draining.is_cancelled() {
                refuse(
                    session,
                    "draining",
                    "NetStream.Play.Failed",
                    "this edge is shutting down; reconnect",
                );
                return None;
            }
            let lease = match ctx.pulls.acquire(&key).await {
                Ok(lease) => lease,
                Err(e) => {
                    let code = match e {
                        crate::pulls::PlayError::NotFound(_) => "NetStream.Play.StreamNotFound",
                        crate::pulls::PlayError::Unavailable { .. } => "NetStream.Play.Failed",
                    };
                    refuse(session, e.reason(), code, &e.to_string());
                    return None;
                }
            };
            match lease.hub().subscribe(ctx.config.viewer_lag, Protocol::Rtmp) {
                Ok(feed) => {
                    debug!(stream = %key, "playing");
                    session.accept_play();
                    return Some((lease, feed, requested));
                }
                Err(e) => refuse(
                    session,
                    "not_found",
                    "NetStream.Play.StreamNotFound",
                    &format!("stream {key}: {e}"),
                ),
            }
        }
        SessionEvent::Ignored(what) => debug!(%what, "ignored"),
        SessionEvent::Frame(_) | SessionEvent::PublishStopped | SessionEvent::PlayStopped => {}
    }
    None
}

/// The playback loop: feed → queue → socket, and socket → session, in one task.
#[allow(clippy::too_many_arguments)]
async fn play(
    ctx: &Arc<EdgeContext>,
    stream: &mut TcpStream,
    mut session: ServerSession,
    mut input: BytesMut,
    _lease: ViewerLease,
    mut feed: Feed,
    requested: Instant,
    shutdown: &CancellationToken,
) -> Result<(), ViewerError> {
    let (mut reader, writer) = stream.split();
    let mut writer = StallGuard::new(writer, ctx.config.write_timeout);
    let mut out = OutQueue::default();
    out.push(session.take_output());
    let bytes_out = media_metrics::BYTES_OUT.with_label_values(&["rtmp"]);
    // Time to first frame: measured when the bytes of the first media segment are written.
    let mut queued_total = out.len() as u64;
    let mut written_total = 0u64;
    let mut first_frame_at: Option<u64> = None;
    let mut first_frame_seen = false;
    let mut ending = false;
    loop {
        if ending && out.is_empty() {
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !ending => {
                session.end_play("server shutting down; reconnect to keep watching");
                out.push(session.take_output());
                ending = true;
            }
            read = reader.read_buf(&mut input), if !ending => {
                if read? == 0 {
                    return Ok(());
                }
                let mut events = Vec::new();
                session.feed(&mut input, unix_micros(), &mut events)?;
                if events.iter().any(|e| matches!(e, SessionEvent::PlayStopped)) {
                    return Ok(());
                }
                let control = session.take_output();
                queued_total += control.len() as u64;
                out.push(control);
                if input.capacity() - input.len() < 1024 {
                    input.reserve(4096);
                }
            }
            segment = feed.next(), if !ending && out.len() < MAX_QUEUED => {
                let Some(segment) = segment else {
                    match feed.end() {
                        Some(FeedEnd::TooSlow) => {
                            media_metrics::VIEWERS_DROPPED.with_label_values(&["rtmp", "too_slow"]).inc();
                            info!("viewer disconnected: it kept falling behind");
                            return Ok(());
                        }
                        Some(FeedEnd::Ended(reason)) => {
                            session.end_play(&format!("stream ended ({})", reason.as_str()));
                        }
                        None => session.end_play("stream ended"),
                    }
                    out.push(session.take_output());
                    ending = true;
                    continue;
                };
                let mut push = |segment: &Segment, out: &mut OutQueue| {
                    let bytes = segment_bytes(segment, Format::Rtmp);
                    queued_total += bytes.len() as u64;
                    if first_frame_at.is_none() && !first_frame_seen && matches!(segment, Segment::Batch { .. }) {
                        first_frame_at = Some(queued_total);
                    }
                    out.push(bytes);
                };
                push(&segment, &mut out);
                // Take whatever else is ready, so it goes out in the same write.
                while out.len() < MAX_QUEUED {
                    match feed.next().now_or_never() {
                        Some(Some(segment)) => push(&segment, &mut out),
                        _ => break,
                    }
                }
            }
            written = out.write_some(&mut writer), if !out.is_empty() => {
                let n = written?;
                out.advance(n);
                bytes_out.inc_by(n as u64);
                written_total += n as u64;
                if let Some(mark) = first_frame_at
                    && written_total >= mark
                {
                    media_metrics::time_to_first_frame(Protocol::Rtmp).observe(requested.elapsed().as_secs_f64());
                    first_frame_at = None;
                    first_frame_seen = true;
                }
            }
        }
    }
}
