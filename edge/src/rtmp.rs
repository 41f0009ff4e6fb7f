//! RTMP playback: one task per viewer runs the session from handshake to `play`; then the
//! viewer's socket is attached to the stream's direct fan-out, which writes the pre-chunked
//! bytes shared with every other RTMP viewer, and the task only steps in for backlogs, the
//! viewer's own messages (acknowledgements, pings, `deleteStream`) and the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corriente_core::key::split_query;
use corriente_core::net::{close_gracefully, close_shared, count_cut, write_within};
use corriente_media::fanout::{Sink, Wire};
use corriente_media::frame::unix_micros;
use corriente_media::io::Format;
use corriente_media::metrics::Protocol;
use corriente_media::rtmp::handshake::{self, HandshakeError};
use corriente_media::rtmp::{ServerSession, SessionError, SessionEvent, SessionState};
use corriente_media::{EndReason, StreamKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info, warn};

use crate::EdgeContext;
use crate::metrics::PLAY_REFUSED;
use crate::pulls::ViewerLease;
use crate::viewer::{self, Playback};

#[derive(Debug, thiserror::Error)]
enum ViewerError {
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("no play request within {0:?}")]
    Idle(Duration),
    #[error("stopped reading during the setup: no write progress for {0:?}")]
    WriteStall(Duration),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Refused or left before playing; nothing more to say.
    #[error("no playback")]
    Refused,
}

pub(crate) async fn serve_viewer(
    ctx: Arc<EdgeContext>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut stream = Some(stream);
    let result = run(&ctx, &mut stream, peer, &shutdown).await;
    if let Ok(socket) = log_end("edge-rtmp", result) {
        close_shared(&socket, Duration::from_secs(1)).await;
    }
    if let Some(mut stream) = stream {
        close_gracefully(&mut stream, Duration::from_secs(1)).await;
    }
}

/// Logs how a viewer connection ended, at the level it deserves, and counts the connections
/// cut for holding the setup; passes a success on.
fn log_end<T>(listener: &'static str, result: Result<T, ViewerError>) -> Result<T, ()> {
    match &result {
        Err(ViewerError::Idle(_)) => count_cut(listener, "setup_timeout"),
        Err(ViewerError::WriteStall(_)) => count_cut(listener, "write_stall"),
        _ => {}
    }
    match result {
        Ok(value) => {
            debug!("viewer connection closed");
            return Ok(value);
        }
        Err(ViewerError::Handshake(HandshakeError::Closed)) => {
            debug!("peer left during the handshake")
        }
        Err(ViewerError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {}
        Err(ViewerError::Io(e)) => debug!(error = %e, "viewer connection ended"),
        Err(e) => warn!(error = %e, "viewer connection closed"),
    }
    Err(())
}

/// Runs the session; returns the socket (shared with the fan-out once playing) to close.
/// Before playback the socket stays in `stream`, for the caller to close.
async fn run(
    ctx: &Arc<EdgeContext>,
    stream: &mut Option<TcpStream>,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<Arc<TcpStream>, ViewerError> {
    // The setup (handshake, connect, play) runs boxed: its state is freed once playing, so
    // what stays allocated per viewer is only the small playback loop.
    let setup = Box::pin(setup(ctx, stream, peer, shutdown)).await?;
    play(ctx, stream, setup, shutdown).await
}

/// A viewer's session once `play` is accepted.
struct Setup {
    session: ServerSession,
    lease: ViewerLease,
    /// When the viewer asked to play (for the time to first frame).
    requested: Instant,
    /// The start of an unfinished chunk the viewer sent after `play`: playback reads on from
    /// there, or the viewer's chunk stream would fall out of step.
    input: BytesMut,
}

/// From the handshake to an accepted `play`. The whole setup is under deadlines a peer cannot
/// stretch: the handshake's, then `handshake_timeout` from its end to an accepted `play` however
/// the peer trickles its messages, and `write_timeout` on every answer (a peer that sends pings
/// without reading the pongs is cut off, not waited for).
async fn setup<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<EdgeContext>,
    stream: &mut Option<S>,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<Setup, ViewerError> {
    let config = &ctx.config;
    let Some(tcp) = stream.as_mut() else {
        return Err(ViewerError::Refused);
    };
    let mut input = handshake::accept(tcp, config.handshake_timeout).await?;
    let deadline = Instant::now() + config.handshake_timeout;
    let mut session = ServerSession::new(config.session);
    let mut events = Vec::new();
    let write_timeout = config.write_timeout;
    let send = async |tcp: &mut S, session: &mut ServerSession| -> Result<(), ViewerError> {
        if !session.has_output() {
            return Ok(());
        }
        write_within(tcp, &session.take_output(), write_timeout)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => ViewerError::WriteStall(write_timeout),
                _ => e.into(),
            })
    };

    // Until `play`: request/response on the socket.
    let (lease, requested) = 'setup: loop {
        // Everything complete in the buffer first: a client may send connect, createStream and
        // play back to back without waiting for answers.
        loop {
            session.feed(&mut input, unix_micros(), &mut events)?;
            if events.is_empty() {
                break;
            }
            let mut playing = None;
            for event in events.drain(..) {
                if let Some(p) = handle_setup(ctx, &mut session, event, peer).await {
                    playing = Some(p);
                }
            }
            if let Some(playing) = playing {
                break 'setup playing;
            }
            send(tcp, &mut session).await?;
            if session.state() == &SessionState::Closed {
                return Err(ViewerError::Refused);
            }
        }
        // Answers that raise no event (createStream's result, pings) go out too.
        send(tcp, &mut session).await?;
        input.reserve(4096);
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, tcp.read_buf(&mut input)) => read,
            _ = shutdown.cancelled() => return Err(ViewerError::Refused),
        };
        match read {
            Err(_) => return Err(ViewerError::Idle(config.handshake_timeout)),
            Ok(Ok(0)) => return Err(ViewerError::Refused),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    };
    // The session stopped at `play` so that we could answer it; what came with it is handled
    // now, its answers joining the play replies. Playback goes on from what is left: at most
    // the start of an unfinished chunk.
    session.feed(&mut input, unix_micros(), &mut events)?;
    if events
        .drain(..)
        .any(|e| matches!(e, SessionEvent::PlayStopped))
    {
        return Err(ViewerError::Refused);
    }
    Ok(Setup {
        session,
        lease,
        requested,
        // Only what is left, not the setup's read buffer: it lives as long as the viewer.
        input: BytesMut::from(&input[..]),
    })
}

/// Playing: the socket now belongs to the fan-out and this task together.
async fn play(
    ctx: &Arc<EdgeContext>,
    stream: &mut Option<TcpStream>,
    setup: Setup,
    shutdown: &CancellationToken,
) -> Result<Arc<TcpStream>, ViewerError> {
    let Setup {
        mut session,
        lease,
        requested,
        input,
    } = setup;
    let config = &ctx.config;
    let socket = viewer::playing_socket(
        stream.take().ok_or(ViewerError::Refused)?,
        config.viewer_nodelay,
    );
    let sink = Sink::new(
        socket.clone(),
        Wire::Rtmp,
        Protocol::Rtmp,
        config.viewer_lag,
    );
    sink.queue(session.take_output());
    let mut playback = RtmpPlayback { session };
    let attachment = match lease.hub().attach(&sink) {
        Ok(attachment) => attachment,
        Err(e) => {
            sink.queue(playback.end(Some(e.0)));
            viewer::drain_within(&sink, config.write_timeout).await?;
            return Ok(socket);
        }
    };
    viewer::serve_sink(
        sink,
        attachment,
        playback,
        input,
        config.write_timeout,
        requested,
        shutdown,
    )
    .await?;
    drop(lease);
    Ok(socket)
}

/// An RTMPS viewer: the TLS handshake (under the RTMP handshake deadline), then the RTMP
/// session, then playback through a feed (the direct fan-out writes plain sockets only; each
/// TLS viewer encrypts its own copy).
pub(crate) async fn serve_tls_viewer(
    ctx: Arc<EdgeContext>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let timeout = ctx.config.handshake_timeout;
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake failed: not an RTMPS client");
            return;
        }
        Err(_) => {
            info!(?timeout, "TLS handshake timed out");
            return;
        }
    };
    let mut stream = Some(tls);
    let result = async {
        let Setup {
            mut session,
            lease,
            requested,
            input,
        } = Box::pin(setup(&ctx, &mut stream, peer, &shutdown)).await?;
        let io = stream.as_mut().ok_or(ViewerError::Refused)?;
        let feed = match lease.hub().subscribe(ctx.config.viewer_lag, Protocol::Rtmp) {
            Ok(feed) => feed,
            Err(e) => {
                session.end_play(&format!("stream ended ({})", e.0.as_str()));
                write_within(io, &session.take_output(), ctx.config.write_timeout).await?;
                return Ok(());
            }
        };
        let first = session.take_output();
        let playback = RtmpPlayback { session };
        viewer::serve_feed(
            io,
            feed,
            Format::Rtmp,
            first,
            playback,
            input,
            ctx.config.write_timeout,
            requested,
            &shutdown,
        )
        .await?;
        drop(lease);
        Ok::<_, ViewerError>(())
    }
    .await;
    let _ = log_end("edge-rtmps", result);
    if let Some(mut stream) = stream {
        close_gracefully(&mut stream, Duration::from_secs(1)).await;
    }
}

/// An RTMP session while playing.
struct RtmpPlayback {
    session: ServerSession,
}

impl Playback for RtmpPlayback {
    fn input(&mut self, input: &mut BytesMut) -> std::io::Result<Option<Bytes>> {
        let mut events = Vec::new();
        self.session
            .feed(input, unix_micros(), &mut events)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        if events
            .iter()
            .any(|e| matches!(e, SessionEvent::PlayStopped))
        {
            return Ok(None);
        }
        Ok(Some(self.session.take_output()))
    }

    fn end(&mut self, reason: Option<EndReason>) -> Bytes {
        match reason {
            Some(reason) => self
                .session
                .end_play(&format!("stream ended ({})", reason.as_str())),
            None => self
                .session
                .end_play("server shutting down; reconnect to keep watching"),
        }
        self.session.take_output()
    }
}

/// Handles an event before playback; returns the viewer's pull and feed once `play` is
/// accepted.
async fn handle_setup(
    ctx: &Arc<EdgeContext>,
    session: &mut ServerSession,
    event: SessionEvent,
    peer: SocketAddr,
) -> Option<(ViewerLease, Instant)> {
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
            // Before any name, token, hook or registry work: a client retrying in a loop costs
            // a bucket lookup and nothing else (counted, logged at debug: it repeats by nature).
            if let Err(wait) = ctx.take_play_attempt(peer.ip()) {
                PLAY_REFUSED
                    .with_label_values(&["rtmp", "rate_limited"])
                    .inc();
                debug!(
                    retry_in_s = wait,
                    "play refused: too many play requests from this address"
                );
                session.reject_play(
                    "NetStream.Play.Failed",
                    &format!("too many play requests from this address; retry in {wait} s"),
                );
                return None;
            }
            let (name, query) = split_query(&name);
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
            if let Err(denial) = crate::access::authorize(
                &ctx.config.play_auth,
                &key,
                query,
                peer.ip(),
                "rtmp",
                &ctx.config.node_id,
            )
            .await
            {
                let code = if denial.unavailable {
                    "NetStream.Play.Failed"
                } else {
                    "NetStream.Play.Forbidden"
                };
                refuse(session, denial.reason, code, &denial.message);
                return None;
            }
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
            debug!(stream = %key, "playing");
            session.accept_play();
            return Some((lease, requested));
        }
        SessionEvent::Ignored(what) => debug!(%what, "ignored"),
        SessionEvent::Frame(_) | SessionEvent::PublishStopped | SessionEvent::PlayStopped => {}
    }
    None
}
