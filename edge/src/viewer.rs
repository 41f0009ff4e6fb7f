//! The connection task of a playing viewer, for either protocol: it drains the sink's backlog
//! when the fan-out hands it one, reads what the viewer sends (RTMP acknowledgements, pings,
//! `deleteStream`), enforces the write-stall limit, and ends the stream properly.
//!
//! While the viewer keeps up, this task sleeps: the hub's shard tasks write to its socket
//! directly (see `corriente_media::fanout`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corriente_media::fanout::{Drain, Sink};
use corriente_media::hub::Attachment;
use corriente_media::io::{Format, StallGuard, segment_bytes};
use corriente_media::metrics as media_metrics;
use corriente_media::{EndReason, Feed, FeedEnd, Segment};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// What a protocol does with the viewer's input and at the end.
pub(crate) trait Playback {
    /// Handles bytes the viewer sent; returns bytes to send back (in order with the media), or
    /// `None` when the viewer asked to stop.
    fn input(&mut self, input: &mut BytesMut) -> io::Result<Option<Bytes>>;

    /// The protocol's end of stream (`None`: the node is shutting down).
    fn end(&mut self, reason: Option<EndReason>) -> Bytes;
}

/// How a viewer's playback ended.
pub(crate) enum Ended {
    /// The stream ended, or the node shut down, and the viewer was told.
    Clean,
    /// The viewer left.
    Left,
    /// The viewer could not keep up and was cut off.
    TooSlow,
}

/// Hands a viewer's socket over to playback, shared by the fan-out's shards and the viewer's
/// task, with `TCP_NODELAY` as [`crate::EdgeConfig::viewer_nodelay`] says (off by default, so
/// Nagle's algorithm merges batches for a viewer that reads in bursts). The setup before it
/// (handshake, request, answers) ran with `TCP_NODELAY`.
pub(crate) fn playing_socket(
    stream: tokio::net::TcpStream,
    nodelay: bool,
) -> Arc<tokio::net::TcpStream> {
    if let Err(e) = stream.set_nodelay(nodelay) {
        debug!(error = %e, "could not set TCP_NODELAY on a playing viewer's socket");
    }
    Arc::new(stream)
}

/// Runs a viewer's playback until it ends. `attachment` keeps the sink attached to its hub;
/// `input` holds the start of an unfinished message the viewer sent before playback began.
///
/// The stall rule, the same on every viewer path: a viewer whose backlog makes no write progress
/// for `write_timeout` is cut off, whatever it sends meanwhile. Its input is read only while
/// nothing waits to be written to it, so what it sends cannot queue answers it does not read.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_sink(
    sink: Arc<Sink>,
    attachment: Attachment,
    mut playback: impl Playback,
    mut input: BytesMut,
    write_timeout: Duration,
    requested: Instant,
    shutdown: &CancellationToken,
) -> io::Result<Ended> {
    let socket = sink.socket().clone();
    let protocol = sink.protocol();
    let mut first_frame_pending = true;
    let mut ending = false;
    // While blocked: when the backlog last made progress, plus `write_timeout`.
    let mut stall_deadline: Option<Instant> = None;
    let result = loop {
        let (state, written) = sink.drain_counted()?;
        if first_frame_pending && state == Drain::Idle {
            // The configuration and cached GOP are out: the viewer can show a picture.
            first_frame_pending = false;
            first_frame_written(protocol, requested);
        }
        if state != Drain::Blocked {
            stall_deadline = None;
        } else if written > 0 || stall_deadline.is_none() {
            stall_deadline = Some(Instant::now() + write_timeout);
        }
        match state {
            Drain::End(FeedEnd::TooSlow) => {
                media_metrics::VIEWERS_DROPPED
                    .with_label_values(&[protocol.as_str(), "too_slow"])
                    .inc();
                info!("viewer disconnected: it kept falling behind");
                break Ok(Ended::TooSlow);
            }
            Drain::End(FeedEnd::Ended(reason)) if !ending => {
                ending = true;
                sink.queue(playback.end(Some(reason)));
                continue;
            }
            Drain::End(_) => break Ok(Ended::Clean),
            Drain::Idle if ending => break Ok(Ended::Clean),
            Drain::Idle => {
                tokio::select! {
                    _ = sink.work() => {}
                    readable = socket.readable() => {
                        readable?;
                        if !read_input(&socket, &mut input, &sink, &mut playback)? {
                            break Ok(Ended::Left);
                        }
                    }
                    _ = shutdown.cancelled() => {
                        sink.detach();
                        sink.queue(playback.end(None));
                        ending = true;
                    }
                }
            }
            Drain::Blocked => {
                let deadline = stall_deadline.unwrap_or_else(|| Instant::now() + write_timeout);
                tokio::select! {
                    writable = tokio::time::timeout_at(deadline, socket.writable()) => match writable {
                        Ok(result) => result?,
                        Err(_) => {
                            media_metrics::VIEWERS_DROPPED
                                .with_label_values(&[protocol.as_str(), "write_stall"])
                                .inc();
                            info!(timeout = ?write_timeout, "viewer disconnected: it stopped reading");
                            break Err(io::ErrorKind::TimedOut.into());
                        }
                    },
                    _ = shutdown.cancelled(), if !ending => {
                        // Whatever the backlog holds goes first, then the end.
                        sink.detach();
                        sink.queue(playback.end(None));
                        ending = true;
                    }
                }
            }
        }
    };
    sink.detach();
    drop(attachment);
    if let Ok(Ended::Left) = &result {
        debug!("viewer left");
    }
    result
}

/// Writes what is queued on `sink` (a refusal or the end of a stream that ended before the
/// viewer was attached) under the same stall rule as playback.
pub(crate) async fn drain_within(sink: &Sink, write_timeout: Duration) -> io::Result<()> {
    let mut deadline = Instant::now() + write_timeout;
    loop {
        match sink.drain_counted()? {
            (Drain::Blocked, written) => {
                if written > 0 {
                    deadline = Instant::now() + write_timeout;
                }
                tokio::time::timeout_at(deadline, sink.socket().writable())
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            _ => return Ok(()),
        }
    }
}

/// Runs a viewer's playback from a feed, on any byte stream (a TLS connection, say): the
/// per-viewer path, for connections the direct fan-out cannot write to. `first` (the answers to
/// the viewer's requests) goes out before the media; `input` holds the start of an unfinished
/// message the viewer sent before playback began.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_feed<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    mut feed: Feed,
    format: Format,
    first: Bytes,
    mut playback: impl Playback,
    mut input: BytesMut,
    write_timeout: Duration,
    requested: Instant,
    shutdown: &CancellationToken,
) -> io::Result<Ended> {
    let protocol = feed.protocol();
    let bytes_out = media_metrics::BYTES_OUT.with_label_values(&[protocol.as_str()]);
    input.reserve(512);
    let mut first_frame_pending = true;
    // The stall rule: no write progress for `write_timeout` and the viewer is cut off. Writes
    // are awaited before anything more is read, so a viewer that does not read cannot queue
    // answers either.
    let mut guarded = StallGuard::new(io, write_timeout);
    let io = &mut guarded;
    let write = async |io: &mut StallGuard<&mut S>, bytes: Bytes| -> io::Result<()> {
        write_out(io, &bytes, write_timeout, protocol).await?;
        bytes_out.inc_by(bytes.len() as u64);
        Ok(())
    };
    write(io, first).await?;
    loop {
        tokio::select! {
            segment = feed.next() => match segment {
                Some(segment) => {
                    let batch = matches!(segment, Segment::Batch { .. });
                    write(io, segment_bytes(&segment, format)).await?;
                    io.flush().await?;
                    if first_frame_pending && batch {
                        first_frame_pending = false;
                        first_frame_written(protocol, requested);
                    }
                }
                None => {
                    return match feed.end() {
                        Some(FeedEnd::TooSlow) => {
                            media_metrics::VIEWERS_DROPPED
                                .with_label_values(&[protocol.as_str(), "too_slow"])
                                .inc();
                            info!("viewer disconnected: it kept falling behind");
                            Ok(Ended::TooSlow)
                        }
                        Some(FeedEnd::Ended(reason)) => {
                            write(io, playback.end(Some(reason))).await?;
                            io.flush().await?;
                            Ok(Ended::Clean)
                        }
                        None => Ok(Ended::Clean),
                    };
                }
            },
            read = io.read_buf(&mut input) => {
                if read? == 0 {
                    debug!("viewer left");
                    return Ok(Ended::Left);
                }
                match playback.input(&mut input)? {
                    Some(reply) => write(io, reply).await?,
                    None => return Ok(Ended::Left),
                }
                if input.capacity() - input.len() < 256 {
                    input.reserve(512);
                }
            }
            _ = shutdown.cancelled() => {
                write(io, playback.end(None)).await?;
                io.flush().await?;
                return Ok(Ended::Clean);
            }
        }
    }
}

/// Records a viewer's time to first frame (metric and log line).
fn first_frame_written(protocol: media_metrics::Protocol, requested: Instant) {
    let ttff = requested.elapsed();
    media_metrics::time_to_first_frame(protocol).observe(ttff.as_secs_f64());
    info!(
        protocol = protocol.as_str(),
        ttff_ms = ttff.as_secs_f64() * 1000.0,
        "viewer started: first frame written"
    );
}

/// Writes `bytes` through the stall guard; a viewer that accepts nothing for `write_timeout` is
/// cut off and counted.
async fn write_out<S: AsyncWrite + Unpin>(
    io: &mut StallGuard<S>,
    bytes: &[u8],
    write_timeout: Duration,
    protocol: media_metrics::Protocol,
) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let result = io.write_all(bytes).await;
    if let Err(e) = &result
        && e.kind() == io::ErrorKind::TimedOut
    {
        media_metrics::VIEWERS_DROPPED
            .with_label_values(&[protocol.as_str(), "write_stall"])
            .inc();
        info!(timeout = ?write_timeout, "viewer disconnected: it stopped reading");
    }
    result
}

/// Reads what the viewer sent. False when it left or asked to stop.
fn read_input(
    socket: &tokio::net::TcpStream,
    input: &mut BytesMut,
    sink: &Sink,
    playback: &mut impl Playback,
) -> io::Result<bool> {
    if input.capacity() - input.len() < 256 {
        input.reserve(512);
    }
    match socket.try_read_buf(input) {
        Ok(0) => Ok(false),
        Ok(_) => match playback.input(input)? {
            Some(reply) => {
                if !reply.is_empty() {
                    sink.queue(reply);
                }
                Ok(true)
            }
            None => Ok(false),
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    }
}
