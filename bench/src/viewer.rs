//! Viewers: RTMP players and HTTP-FLV readers that count what they receive, time their first
//! frame, and (with the publisher in the same process) measure each message's latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use corriente_media::flv::TagReader;
use corriente_media::rtmp::handshake;
use corriente_media::rtmp::{ClientEvent, ClientMode, ClientSession};
use corriente_media::{Frame, FrameKind, FrameRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::stats::{Histogram, SendLog};

/// What all viewers share.
#[derive(Default)]
pub struct Shared {
    /// The publisher's send log, when it runs in this process.
    pub log: Option<Arc<SendLog>>,
    /// Publish-to-receive latency of media messages, microseconds (measuring window only).
    pub latency: Histogram,
    /// Connect to first keyframe (first audio frame for audio-only streams), microseconds.
    pub ttff: Histogram,
    /// Socket bytes received by all viewers.
    pub bytes: AtomicU64,
    pub measuring: AtomicBool,
    pub stop: AtomicBool,
    /// The stream has video: time to first frame is to the first keyframe (else the first
    /// audio frame).
    pub has_video: bool,
    /// Non-probe viewers read at most this often (zero: as data arrives). Batching reads
    /// keeps the load generator cheap; probes still read at once and measure latency.
    pub lazy_read: Duration,
    /// Non-probe viewers read as data arrives and copy every byte out (as players do), instead
    /// of `lazy_read`'s batched discards; they do not parse it.
    pub player_reads: bool,
}

/// One viewer's counters.
#[derive(Default)]
pub struct ViewerStats {
    pub connected: AtomicBool,
    pub failed: AtomicBool,
    pub ended: AtomicBool,
    /// Audio and video payload bytes received.
    pub media_bytes: AtomicU64,
    /// Latency of the last media message, microseconds (u64::MAX: unknown).
    pub last_latency_us: AtomicU64,
}

struct Recorder<'a> {
    shared: &'a Shared,
    stats: &'a ViewerStats,
    started: Instant,
    first_frame: bool,
    /// Probes read eagerly and record latency.
    probe: bool,
}

impl Recorder<'_> {
    fn frame(&mut self, frame: &Frame) {
        let media = matches!(frame.kind, FrameKind::Audio | FrameKind::Video) && !frame.is_config();
        if !media {
            return;
        }
        self.stats
            .media_bytes
            .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
        let first = if self.shared.has_video {
            frame.role() == FrameRole::Keyframe
        } else {
            frame.role() == FrameRole::Audio
        };
        if first && !self.first_frame {
            self.first_frame = true;
            self.shared
                .ttff
                .record(self.started.elapsed().as_micros() as u64);
        }
        if self.probe
            && let Some(log) = &self.shared.log
            && let Some(age) = log.age_us(frame.timestamp)
        {
            self.stats.last_latency_us.store(age, Ordering::Relaxed);
            if self.shared.measuring.load(Ordering::Relaxed) {
                self.shared.latency.record(age);
            }
        }
    }
}

/// Plays `rtmp://addr/app/name` until `shared.stop`.
pub async fn run_rtmp(
    addr: SocketAddr,
    app: String,
    name: String,
    shared: Arc<Shared>,
    stats: Arc<ViewerStats>,
    probe: bool,
) -> Result<()> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut input = handshake::connect(&mut stream, Duration::from_secs(10)).await?;
    let tc_url = format!("rtmp://{addr}/{app}");
    let mut session = ClientSession::new(ClientMode::Play, &app, &tc_url, &name, 4096);
    let mut recorder = Recorder {
        shared: &shared,
        stats: &stats,
        started,
        first_frame: false,
        probe,
    };
    let mut events = Vec::new();
    loop {
        session.feed(&mut input, 0, &mut events)?;
        for event in events.drain(..) {
            match event {
                ClientEvent::Frame(frame) => recorder.frame(&frame),
                ClientEvent::Started => stats.connected.store(true, Ordering::Relaxed),
                ClientEvent::Refused { code, description } => {
                    bail!("play refused: {code}: {description}")
                }
                ClientEvent::Ended => {
                    stats.ended.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                ClientEvent::Status { .. } | ClientEvent::PingResponse(_) => {}
            }
        }
        if session.has_output() {
            stream.write_all(&session.take_output()).await?;
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !probe && recorder.first_frame {
            if shared.player_reads {
                return read_as_player(&mut stream, &shared, &stats).await;
            }
            if !shared.lazy_read.is_zero() {
                return discard(&stream, &shared, &stats).await;
            }
        }
        input.reserve(64 << 10);
        lazy_pause(&shared, probe, recorder.first_frame).await;
        let n = tokio::time::timeout(Duration::from_secs(1), stream.read_buf(&mut input)).await;
        match n {
            Err(_) => continue,
            Ok(Ok(0)) => {
                stats.ended.store(true, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Ok(n)) => {
                shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Reads `http://addr/path` (HTTP/1.1, chunked or not) as FLV until `shared.stop`.
pub async fn run_flv(
    addr: SocketAddr,
    path: String,
    shared: Arc<Shared>,
    stats: Arc<ViewerStats>,
    probe: bool,
) -> Result<()> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: corriente-bench\r\nAccept: */*\r\n\r\n").as_bytes())
        .await?;
    let mut input = BytesMut::with_capacity(64 << 10);
    let chunked = loop {
        if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&input[..end]).to_ascii_lowercase();
            let _ = input.split_to(end + 4);
            if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
                bail!("HTTP: {}", head.lines().next().unwrap_or(""));
            }
            break head.contains("transfer-encoding: chunked");
        }
        if stream.read_buf(&mut input).await? == 0 {
            bail!("closed before the response head");
        }
    };
    stats.connected.store(true, Ordering::Relaxed);
    let mut recorder = Recorder {
        shared: &shared,
        stats: &stats,
        started,
        first_frame: false,
        probe,
    };
    let mut dechunker = Dechunker::default();
    let mut flv = BytesMut::with_capacity(64 << 10);
    let mut reader = TagReader::new(64 << 20);
    loop {
        if chunked {
            if dechunker.feed(&mut input, &mut flv)? {
                stats.ended.store(true, Ordering::Relaxed);
                return Ok(());
            }
        } else {
            flv.extend_from_slice(&input);
            input.clear();
        }
        while let Some(tag) = reader.next_tag(&mut flv)? {
            if let Some(kind) = FrameKind::from_tag_type(tag.tag_type) {
                recorder.frame(&Frame::new(kind, tag.timestamp, tag.body, 0));
            }
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !probe && recorder.first_frame {
            if shared.player_reads {
                return read_as_player(&mut stream, &shared, &stats).await;
            }
            if !shared.lazy_read.is_zero() {
                return discard(&stream, &shared, &stats).await;
            }
        }
        input.reserve(64 << 10);
        lazy_pause(&shared, probe, recorder.first_frame).await;
        match tokio::time::timeout(Duration::from_secs(1), stream.read_buf(&mut input)).await {
            Err(_) => continue,
            Ok(Ok(0)) => {
                stats.ended.store(true, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Ok(n)) => {
                shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Non-probe viewers, once playing, pause between reads so that several of the server's writes
/// are read at once.
async fn lazy_pause(shared: &Shared, probe: bool, playing: bool) {
    if !probe && playing && !shared.player_reads && !shared.lazy_read.is_zero() {
        tokio::time::sleep(shared.lazy_read).await;
    }
}

/// What non-probe viewers do once they have their first frame: every `lazy_read`, take what
/// the socket holds and discard it in the kernel (`MSG_TRUNC` on TCP does not copy), counting
/// the bytes. The server cannot tell the difference; the load generator stays cheap enough not
/// to be the bottleneck with thousands of viewers.
async fn discard(stream: &TcpStream, shared: &Shared, stats: &ViewerStats) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        tokio::time::sleep(shared.lazy_read).await;
        if tokio::time::timeout(Duration::from_secs(1), stream.readable())
            .await
            .is_err()
        {
            continue;
        }
        loop {
            let result = stream.try_io(tokio::io::Interest::READABLE, || {
                // SAFETY: recv with a null buffer and MSG_TRUNC discards up to `len` bytes of a
                // TCP socket's receive queue without writing anywhere.
                let n = unsafe {
                    libc::recv(
                        fd,
                        std::ptr::null_mut(),
                        1 << 22,
                        libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(0) => {
                    stats.ended.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(n) => {
                    shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    stats.media_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// What non-probe viewers do once playing in `player` mode: wait for the socket, then read
/// everything it holds into a buffer (a copy per byte, one wake-up per arrival, as a player's
/// reads are), counting the bytes; the bytes are not parsed.
async fn read_as_player(
    stream: &mut TcpStream,
    shared: &Shared,
    stats: &ViewerStats,
) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) => {
                stats.ended.store(true, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Ok(n)) => {
                shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
                stats.media_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// HTTP/1.1 chunked transfer decoding, incremental.
#[derive(Default)]
struct Dechunker {
    /// Bytes left in the current chunk; `None` while reading a size line.
    remaining: Option<usize>,
    /// After a chunk's data: the CRLF still to skip.
    skip_crlf: bool,
    line: Vec<u8>,
}

impl Dechunker {
    /// Moves the data of complete or partial chunks from `input` to `out`. True at the end of
    /// the body.
    fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool> {
        let mut pos = 0;
        while pos < input.len() {
            if self.skip_crlf {
                if input[pos] == b'\n' {
                    self.skip_crlf = false;
                }
                pos += 1;
                continue;
            }
            match self.remaining {
                Some(n) => {
                    let take = n.min(input.len() - pos);
                    out.extend_from_slice(&input[pos..pos + take]);
                    pos += take;
                    if take == n {
                        self.remaining = None;
                        self.skip_crlf = true;
                    } else {
                        self.remaining = Some(n - take);
                    }
                }
                None => {
                    let byte = input[pos];
                    pos += 1;
                    if byte != b'\n' {
                        if self.line.len() > 64 {
                            bail!("chunk size line too long");
                        }
                        self.line.push(byte);
                        continue;
                    }
                    let text = String::from_utf8_lossy(&self.line);
                    let size = text.trim().split(';').next().unwrap_or("");
                    let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
                    self.line.clear();
                    if size == 0 {
                        let _ = input.split_to(pos);
                        return Ok(true);
                    }
                    self.remaining = Some(size);
                }
            }
        }
        input.clear();
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_reads() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        let mut out = BytesMut::new();
        let mut d = Dechunker::default();
        let mut done = false;
        for piece in body.chunks(3) {
            let mut input = BytesMut::from(piece);
            done = d.feed(&mut input, &mut out).unwrap();
            if done {
                break;
            }
        }
        assert!(done);
        assert_eq!(&out[..], b"hello world");
    }
}
