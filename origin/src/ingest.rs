//! RTMP ingest: one task per publisher connection, driving the server session state machine
//! from handshake to publishing, and pushing the publisher's frames into its stream's hub.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use corriente_cluster::{PublishCredential, PublishDecision, PublishDenial};
use corriente_core::limits::ByteRateCap;
use corriente_core::net::{close_gracefully, count_cut};
use corriente_media::frame::unix_micros;
use corriente_media::metrics::BYTES_IN;
use corriente_media::rtmp::handshake::{self, HandshakeError};
use corriente_media::rtmp::{ServerSession, SessionError, SessionEvent, SessionState};
use corriente_media::{EndReason, StreamKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{Instrument, Span, debug, info, warn};

use crate::metrics::{PUBLISH_REFUSED, PUBLISH_STOPPED};
use crate::streams::Publication;
use crate::{OriginContext, PUBLISH_BITRATE_WINDOW};

/// How a publisher connection ended badly.
#[derive(Debug, thiserror::Error)]
enum IngestError {
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("no publish request within {0:?}")]
    NoPublish(Duration),
    #[error("write to the publisher timed out after {0:?}")]
    WriteTimeout(Duration),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("ingest over the {0} bit/s cap")]
    BitrateExceeded(u64),
}

/// Serves one publisher connection to its end, logging how it ended.
pub(crate) async fn serve_publisher<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Arc<OriginContext>,
    mut stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    serve_on("origin-rtmp", ctx, &mut stream, peer, shutdown).await
}

/// [`serve_publisher`] for the connections of `listener` (its name, for the counters).
async fn serve_on<S: AsyncRead + AsyncWrite + Unpin>(
    listener: &'static str,
    ctx: Arc<OriginContext>,
    stream: &mut S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut publication = None;
    let result = run(&ctx, stream, peer, &shutdown, &mut publication).await;
    match &result {
        Err(IngestError::NoPublish(_)) => count_cut(listener, "setup_timeout"),
        Err(IngestError::WriteTimeout(_)) => count_cut(listener, "write_stall"),
        _ => {}
    }
    let reason = match &result {
        Ok(reason) => *reason,
        Err(_) => EndReason::Unpublished,
    };
    if let Some(publication) = publication.take() {
        publication.end(reason).await;
    }
    match result {
        Ok(_) => debug!("publisher connection closed"),
        Err(IngestError::Handshake(HandshakeError::Closed)) => {
            debug!("peer left during the handshake")
        }
        Err(IngestError::Io(e)) if is_hangup(&e) => debug!(error = %e, "publisher hung up"),
        Err(e @ IngestError::BitrateExceeded(_)) => info!(error = %e, "publisher disconnected"),
        Err(e) => warn!(error = %e, "publisher connection closed"),
    }
    close_gracefully(stream, Duration::from_secs(2)).await;
}

fn is_hangup(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<OriginContext>,
    stream: &mut S,
    peer: SocketAddr,
    shutdown: &CancellationToken,
    publication: &mut Option<Publication>,
) -> Result<EndReason, IngestError> {
    let config = &ctx.config;
    let mut input = handshake::accept(stream, config.handshake_timeout).await?;
    let mut session = ServerSession::new(config.session);
    let mut events = Vec::new();
    // Set while the publication rests on a managed key: cancelled if the key is revoked.
    let mut key_watch: Option<KeyWatch> = None;
    // The futures waiting for shutdown, fencing and revocation are made once (the last two
    // when a publication starts), not per read: making and dropping them takes their tokens'
    // locks, which showed in the profile with one frame per read.
    let shutdown_signal = shutdown.cancelled();
    tokio::pin!(shutdown_signal);
    let mut fenced: Option<Signal> = None;
    let mut revoked: Option<Signal> = None;
    let bytes_in = BYTES_IN.with_label_values(&["rtmp"]);
    // One timer for the idle limit, pushed back only when it fires: re-arming a timer on every
    // read would cost more than the read.
    let mut last_read = tokio::time::Instant::now();
    // Until a publish is accepted (from the handshake's end, or from an unpublish on a
    // connection that stays), the connection has `handshake_timeout` to ask for one: a client
    // that only trickles pings cannot hold it.
    let mut setup_deadline = Some(last_read + config.handshake_timeout);
    let mut was_publishing = false;
    let idle =
        tokio::time::sleep_until(last_read + config.handshake_timeout.min(config.idle_timeout));
    tokio::pin!(idle);
    let mut bitrate = (config.max_publish_bitrate > 0).then(|| {
        ByteRateCap::new(
            config.max_publish_bitrate,
            PUBLISH_BITRATE_WINDOW,
            last_read,
        )
    });
    loop {
        // Process everything complete in the buffer, answering requests as they come.
        loop {
            session.feed(&mut input, unix_micros(), &mut events)?;
            if events.is_empty() {
                break;
            }
            // The frames of one read (several messages, an aggregate's sub-messages) go out
            // to viewers as one batch.
            if let Some(p) = publication {
                p.hold();
            }
            for event in events.drain(..) {
                handle(ctx, &mut session, event, peer, publication, &mut key_watch).await;
            }
            if let Some(p) = publication {
                p.release();
            }
            Signal::follow(&mut fenced, publication.as_ref().map(Publication::fenced));
            Signal::follow(&mut revoked, key_watch.as_ref().map(|w| &w.revoked));
            flush(stream, &mut session, config.write_timeout).await?;
            if session.state() == &SessionState::Closed {
                return Ok(EndReason::Unpublished);
            }
            let publishing = publication.is_some();
            if publishing != was_publishing {
                was_publishing = publishing;
                setup_deadline =
                    (!publishing).then(|| tokio::time::Instant::now() + config.handshake_timeout);
                if let Some(deadline) = setup_deadline {
                    idle.as_mut()
                        .reset(deadline.min(last_read + config.idle_timeout));
                }
            }
        }
        flush(stream, &mut session, config.write_timeout).await?;

        input.reserve(16 << 10);
        // Input first: while it keeps coming, the other branches are not polled at all (they
        // are whenever the socket is drained, and at least every 128 reads, when Tokio's
        // budget makes the read yield).
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut input) => read,
            _ = &mut idle => {
                let now = tokio::time::Instant::now();
                if setup_deadline.is_some_and(|deadline| now >= deadline) {
                    return Err(IngestError::NoPublish(config.handshake_timeout));
                }
                if last_read.elapsed() >= config.idle_timeout {
                    return Err(IngestError::Idle(config.idle_timeout));
                }
                let next = last_read + config.idle_timeout;
                idle.as_mut().reset(setup_deadline.map_or(next, |d| d.min(next)));
                continue;
            }
            _ = Signal::fired(&mut revoked) => {
                let name = publication.as_ref().map(|p| p.key().to_string()).unwrap_or_default();
                let (reason, why) = match key_watch.as_ref().map(KeyWatch::reason) {
                    Some(PublishDenial::Expired) => ("expired", "its stream key has expired"),
                    _ => ("revoked_key", "its stream key was revoked"),
                };
                PUBLISH_STOPPED.with_label_values(&[reason]).inc();
                info!(stream = %name, reason, "publisher stopped: {why}");
                session.stop_publish("NetStream.Publish.Unauthorized", &format!("publish of {name} stopped ({reason}): {why}"));
                flush(stream, &mut session, config.write_timeout).await?;
                return Ok(EndReason::Unpublished);
            }
            _ = Signal::fired(&mut fenced) => {
                let name = publication.as_ref().map(|p| p.key().to_string()).unwrap_or_default();
                if publication.as_ref().is_some_and(Publication::self_fenced) {
                    session.stop_publish("NetStream.Publish.Failed", &format!("stream {name} stopped: this origin lost contact with the cluster (its lease was not renewed in time); reconnect to publish through another origin"));
                } else {
                    session.stop_publish("NetStream.Publish.BadName", &format!("stream {name} is now published on another origin"));
                }
                flush(stream, &mut session, config.write_timeout).await?;
                return Ok(EndReason::Fenced);
            }
            _ = &mut shutdown_signal => {
                session.stop_publish("NetStream.Publish.Failed", "server shutting down; reconnect to publish elsewhere");
                flush(stream, &mut session, config.write_timeout).await?;
                return Ok(EndReason::Shutdown);
            }
        };
        match read {
            Ok(0) => return Ok(EndReason::Unpublished),
            Ok(n) => {
                bytes_in.inc_by(n as u64);
                last_read = tokio::time::Instant::now();
                if let Some(cap) = bitrate.as_mut()
                    && !cap.take(n, last_read)
                {
                    PUBLISH_REFUSED
                        .with_label_values(&["bitrate_exceeded"])
                        .inc();
                    let limit = config.max_publish_bitrate;
                    session.stop_publish(
                        "NetStream.Publish.Failed",
                        &format!("ingest bitrate over this server's cap of {limit} bit/s"),
                    );
                    flush(stream, &mut session, config.write_timeout).await?;
                    return Err(IngestError::BitrateExceeded(limit));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A cancellation token of the current publication (fencing, a revoked key) and the future
/// waiting on it.
struct Signal {
    token: CancellationToken,
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Signal {
    /// Follows `token`: a new future only when the token changes.
    fn follow(slot: &mut Option<Signal>, token: Option<&CancellationToken>) {
        if token != slot.as_ref().map(|s| &s.token) {
            *slot = token.map(|token| Signal {
                token: token.clone(),
                wait: Box::pin(token.clone().cancelled_owned()),
            });
        }
    }

    /// Completes when the followed token is cancelled; never while there is none.
    async fn fired(slot: &mut Option<Signal>) {
        match slot {
            Some(signal) => signal.wait.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut ServerSession,
    timeout: Duration,
) -> Result<(), IngestError> {
    if session.has_output() {
        let out = session.take_output();
        tokio::time::timeout(timeout, stream.write_all(&out))
            .await
            .map_err(|_| IngestError::WriteTimeout(timeout))??;
    }
    Ok(())
}

/// Why a publish was refused before any claim: the RTMP status sent to the encoder, the
/// metrics reason and the description.
struct AuthRefusal {
    code: &'static str,
    reason: &'static str,
    message: String,
}

/// Asks the control plane whether this publisher may publish `name` (the stream key field
/// as sent, query included: it may hold a secret, so it is never logged) under `app`, and
/// under which public name. Publish authorization itself is configured on the control plane;
/// with it off the answer is the name without its query.
async fn authorize(
    ctx: &OriginContext,
    app: &str,
    name: &str,
    peer: SocketAddr,
) -> Result<(StreamKey, PublishCredential, Vec<String>, Option<bool>), AuthRefusal> {
    match ctx
        .streams
        .authorize_publish(app, name, peer.ip(), false)
        .await
    {
        Ok(PublishDecision::Allowed {
            stream,
            credential,
            forwards,
            record,
        }) => {
            debug!(%stream, credential = credential.as_str(), "publish authorized");
            Ok((stream, credential, forwards, record))
        }
        Ok(PublishDecision::Refused { reason, message }) => {
            info!(%app, client_ip = %peer.ip(), reason = reason.as_str(), "publish refused: {message}");
            Err(AuthRefusal {
                code: match reason {
                    PublishDenial::BadName => "NetStream.Publish.BadName",
                    _ => "NetStream.Publish.Unauthorized",
                },
                reason: reason.as_str(),
                message: format!("publish refused ({}): {message}", reason.as_str()),
            })
        }
        Err(e) => {
            warn!(%app, error = %e, "publish refused: cannot ask the control plane");
            Err(AuthRefusal {
                code: "NetStream.Publish.Failed",
                reason: "control_plane_unavailable",
                message: format!("cannot authorize the publish ({e}); try again shortly"),
            })
        }
    }
}

/// A live publication's managed key, asked about every `key_recheck_interval`: `revoked` is
/// cancelled when the control plane says the key was revoked or has expired (so a key stops
/// working within one interval of its expiry, mid-publication too). Any other answer, or none
/// (the control plane unreachable), lets the publication go on. Stops when dropped.
struct KeyWatch {
    revoked: CancellationToken,
    /// Why it was cancelled.
    reason: Arc<std::sync::OnceLock<PublishDenial>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyWatch {
    fn start(ctx: Arc<OriginContext>, app: String, name: String, client_ip: IpAddr) -> Self {
        let revoked = CancellationToken::new();
        let signal = revoked.clone();
        let reason = Arc::new(std::sync::OnceLock::new());
        let why = reason.clone();
        let every = ctx.config.key_recheck_interval;
        let task = tokio::spawn(
            async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Ok(PublishDecision::Refused {
                        reason: denial @ (PublishDenial::RevokedKey | PublishDenial::Expired),
                        ..
                    }) = ctx
                        .streams
                        .authorize_publish(&app, &name, client_ip, true)
                        .await
                    {
                        let _ = why.set(denial);
                        signal.cancel();
                        return;
                    }
                }
            }
            .instrument(Span::current()),
        );
        Self {
            revoked,
            reason,
            task,
        }
    }

    fn reason(&self) -> PublishDenial {
        self.reason
            .get()
            .copied()
            .unwrap_or(PublishDenial::RevokedKey)
    }
}

async fn handle(
    ctx: &Arc<OriginContext>,
    session: &mut ServerSession,
    event: SessionEvent,
    peer: SocketAddr,
    publication: &mut Option<Publication>,
    key_watch: &mut Option<KeyWatch>,
) {
    match event {
        // The publish IP rules come first, decided here without asking anyone.
        SessionEvent::ConnectRequested { app, .. }
            if !ctx.config.publish_ip_rules.permits(peer.ip()) =>
        {
            PUBLISH_REFUSED
                .with_label_values(&[PublishDenial::IpDenied.as_str()])
                .inc();
            info!(%app, client_ip = %peer.ip(), reason = "ip_denied", "publish refused: address not allowed to publish");
            session
                .reject_connect("publish refused (ip_denied): this address may not publish here");
        }
        SessionEvent::ConnectRequested { app, tc_url } => match StreamKey::new(&app, "probe") {
            Ok(_) => {
                debug!(%app, %tc_url, "connect");
                session.accept_connect();
            }
            Err(e) => {
                PUBLISH_REFUSED.with_label_values(&["bad_name"]).inc();
                info!(%app, error = %e, "connect refused");
                session.reject_connect(&e.to_string());
            }
        },
        SessionEvent::PublishRequested { name, publish_type } => {
            // Before any name, key or registry work: a client retrying in a loop costs a
            // bucket lookup and nothing else.
            if let Some(attempts) = &ctx.publish_attempts
                && let Err(wait) = attempts.try_take(peer.ip(), tokio::time::Instant::now())
            {
                PUBLISH_REFUSED.with_label_values(&["rate_limited"]).inc();
                let wait = wait.as_secs() + 1;
                info!(rate = %attempts.rate(), retry_in_s = wait, "publish refused: too many attempts from this address");
                session.reject_publish(
                    "NetStream.Publish.Rejected",
                    &format!("too many publish attempts from this address; retry in {wait} s"),
                );
                return;
            }
            if publication.is_some() {
                PUBLISH_REFUSED
                    .with_label_values(&["already_publishing"])
                    .inc();
                session.reject_publish(
                    "NetStream.Publish.BadName",
                    "this connection is already publishing",
                );
                return;
            }
            let (key, credential, forwards, record) =
                match authorize(ctx, session.app(), &name, peer).await {
                    Ok(allowed) => allowed,
                    Err(refusal) => {
                        PUBLISH_REFUSED.with_label_values(&[refusal.reason]).inc();
                        session.reject_publish(refusal.code, &refusal.message);
                        return;
                    }
                };
            Span::current().record("stream", tracing::field::display(&key));
            match ctx
                .streams
                .start_publish(key.clone(), peer.to_string(), forwards, record)
                .await
            {
                Ok(p) => {
                    info!(stream = %key, epoch = p.epoch(), %publish_type, credential = credential.as_str(), "publishing");
                    *publication = Some(p);
                    if credential == PublishCredential::ManagedKey {
                        *key_watch = Some(KeyWatch::start(
                            ctx.clone(),
                            session.app().to_owned(),
                            name,
                            peer.ip(),
                        ));
                    }
                    session.accept_publish();
                }
                Err(refusal) => {
                    PUBLISH_REFUSED.with_label_values(&[refusal.reason()]).inc();
                    info!(stream = %key, reason = refusal.reason(), "publish refused: {refusal}");
                    session.reject_publish(refusal.code(), &refusal.to_string());
                }
            }
        }
        SessionEvent::PlayRequested { name } => {
            debug!(%name, "play refused on an origin");
            session.reject_play(
                "NetStream.Play.Failed",
                "this is an ingest (origin) node; play from an edge",
            );
        }
        SessionEvent::Frame(frame) => {
            if let Some(p) = publication {
                p.push(frame);
            }
        }
        SessionEvent::PublishStopped => {
            *key_watch = None;
            if let Some(p) = publication.take() {
                p.end(EndReason::Unpublished).await;
            }
        }
        SessionEvent::PlayStopped => {}
        SessionEvent::Ignored(what) => debug!(%what, "ignored"),
    }
}

/// An RTMPS publisher: the TLS handshake (under the RTMP handshake deadline), then RTMP.
pub(crate) async fn serve_tls_publisher(
    ctx: Arc<OriginContext>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    match tokio::time::timeout(ctx.config.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(mut tls)) => serve_on("origin-rtmps", ctx, &mut tls, peer, shutdown).await,
        Ok(Err(e)) => info!(error = %e, "TLS handshake failed: not an RTMPS client"),
        Err(_) => info!("TLS handshake timed out"),
    }
}
