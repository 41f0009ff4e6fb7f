//! Protocol clients for tests: an HTTP-FLV reader, an RTMP player and an RTMP publisher built on
//! Corriente's own RTMP client session, recording what arrives and when. Lighter than ffmpeg,
//! so a test can run fifty of them, and exact about timing (first frame, keyframe first).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, BytesMut};
use corriente_media::flv::{self, TagReader};
use corriente_media::frame::unix_micros;
use corriente_media::rtmp::chunk::encode_message;
use corriente_media::rtmp::handshake;
use corriente_media::rtmp::message::{csid, type_id};
use corriente_media::rtmp::{ClientEvent, ClientMode, ClientSession};
use corriente_media::{Frame, FrameKind, FrameRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Minimal HTTP/1.0 GET: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, "").await
}

/// Minimal HTTP/1.0 request with a JSON body (none when empty): status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let head = if body.is_empty() {
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
    } else {
        format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    stream.write_all(head.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

/// An HTTP response read whole: status, headers (names lowercase) and body bytes.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 request with extra headers (`Connection: close`), its response read whole and
/// kept as bytes.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<RawResponse> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = response[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// The payload of an HTTP/1.1 chunked body.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(body.len() >= size + 2, "chunk cut short");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// One frame a test client received.
#[derive(Debug, Clone)]
pub struct Received {
    pub kind: FrameKind,
    pub role: FrameRole,
    pub timestamp: u32,
    pub len: usize,
    /// When it arrived, since the client connected.
    pub after: Duration,
    pub payload: bytes::Bytes,
}

/// What a viewer got.
#[derive(Debug, Clone, Default)]
pub struct Playback {
    pub frames: Vec<Received>,
    /// The server ended the stream (end of HTTP body, or RTMP UnpublishNotify/StreamEOF).
    pub ended: bool,
    /// The server refused the request (HTTP status or RTMP error status).
    pub refused: Option<String>,
}

impl Playback {
    pub fn video(&self) -> impl Iterator<Item = &Received> {
        self.frames
            .iter()
            .filter(|f| matches!(f.role, FrameRole::Keyframe | FrameRole::Inter))
    }

    pub fn audio(&self) -> impl Iterator<Item = &Received> {
        self.frames.iter().filter(|f| f.role == FrameRole::Audio)
    }

    /// The first media frame (not metadata or a sequence header).
    pub fn first_media(&self) -> Option<&Received> {
        self.frames.iter().find(|f| {
            !matches!(
                f.role,
                FrameRole::Metadata
                    | FrameRole::VideoConfig
                    | FrameRole::AudioConfig
                    | FrameRole::Data
            )
        })
    }
}

fn received(frame: &Frame, started: Instant) -> Received {
    Received {
        kind: frame.kind,
        role: frame.role(),
        timestamp: frame.timestamp,
        len: frame.payload.len(),
        after: started.elapsed(),
        payload: frame.payload.clone(),
    }
}

/// Reads `http://ADDR/PATH` as HTTP-FLV for `duration` (or until the body ends).
pub async fn play_flv(addr: SocketAddr, path: &str, duration: Duration) -> Result<Playback> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut playback = Playback::default();
    let deadline = started + duration;
    // Response head.
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let _ = buf.split_to(end + 4);
            let status = head.split_whitespace().nth(1).unwrap_or("");
            if status != "200" {
                playback.refused = Some(head.lines().next().unwrap_or("").to_owned());
                return Ok(playback);
            }
            break;
        }
        if tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await?? == 0 {
            bail!("connection closed before the response head");
        }
    }
    let mut reader = TagReader::new(16 << 20);
    loop {
        while let Some(tag) = reader.next_tag(&mut buf)? {
            if let Some(kind) = FrameKind::from_tag_type(tag.tag_type) {
                let frame = Frame::new(kind, tag.timestamp, tag.body, 0);
                playback.frames.push(received(&frame, started));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Ok(playback),
            Ok(Ok(0)) => {
                playback.ended = true;
                return Ok(playback);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Plays `rtmp://ADDR/APP/NAME` for `duration` (or until the server ends the stream).
pub async fn play_rtmp(
    addr: SocketAddr,
    app: &str,
    name: &str,
    duration: Duration,
) -> Result<Playback> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut input = handshake::connect(&mut stream, Duration::from_secs(5)).await?;
    let tc_url = format!("rtmp://{addr}/{app}");
    let mut session = ClientSession::new(ClientMode::Play, app, &tc_url, name, 4096);
    let mut playback = Playback::default();
    let mut events = Vec::new();
    loop {
        session.feed(&mut input, unix_micros(), &mut events)?;
        for event in events.drain(..) {
            match event {
                ClientEvent::Frame(frame) => playback.frames.push(received(&frame, started)),
                ClientEvent::Refused { code, description } => {
                    playback.refused = Some(format!("{code}: {description}"));
                    return Ok(playback);
                }
                ClientEvent::Ended => {
                    playback.ended = true;
                    return Ok(playback);
                }
                _ => {}
            }
        }
        if session.has_output() {
            stream.write_all(&session.take_output()).await?;
        }
        input.reserve(64 << 10);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut input)).await {
            Err(_) => return Ok(playback),
            Ok(Ok(0)) => {
                playback.ended = true;
                return Ok(playback);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// How [`publish_flv_file`] puts frames on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// One message per frame, as encoders do.
    Plain,
    /// Frames grouped into aggregate messages (type 22) of about 100 ms.
    Aggregate,
    /// Chunks of audio messages interleaved between the chunks of video messages, with a
    /// 128-byte chunk size (legal RTMP that rml_rtmp's deserializer mishandles).
    Interleaved,
    /// One message per frame, every timestamp (metadata and sequence headers included) this
    /// many milliseconds late, as encoders that start their clock early do (GStreamer's
    /// `flvmux`, a publisher that reconnects mid-session).
    Offset(u32),
}

/// Publishes an FLV file to `rtmp://ADDR/APP/NAME` in real time, looping, for `duration`.
/// Returns the number of frames sent.
pub async fn publish_flv_file(
    addr: SocketAddr,
    app: &str,
    name: &str,
    file: &Path,
    wire: Wire,
    duration: Duration,
) -> Result<u64> {
    let data = std::fs::read(file)?;
    let mut buf = BytesMut::from(&data[..]);
    let mut reader = TagReader::new(16 << 20);
    let mut tags = Vec::new();
    while let Some(tag) = reader.next_tag(&mut buf)? {
        tags.push(tag);
    }
    let file_duration = tags.last().map_or(0, |t| t.timestamp) + 33;

    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut input = handshake::connect(&mut stream, Duration::from_secs(5)).await?;
    let chunk_size = if wire == Wire::Interleaved { 128 } else { 4096 };
    let mut session = ClientSession::new(
        ClientMode::Publish,
        app,
        &format!("rtmp://{addr}/{app}"),
        name,
        chunk_size,
    );
    let mut events = Vec::new();
    // Set up the publish.
    let setup_deadline = Instant::now() + Duration::from_secs(10);
    while !session.is_active() {
        if session.has_output() {
            stream.write_all(&session.take_output()).await?;
        }
        input.reserve(4096);
        if tokio::time::timeout_at(setup_deadline, stream.read_buf(&mut input)).await?? == 0 {
            bail!("server closed the connection during publish setup");
        }
        session.feed(&mut input, 0, &mut events)?;
        for e in events.drain(..) {
            if let ClientEvent::Refused { code, description } = e {
                bail!("publish refused: {code}: {description}");
            }
        }
    }

    let started = Instant::now();
    let mut sent = 0u64;
    let mut round = 0u32;
    let mut pending_audio: Vec<(u32, bytes::Bytes)> = Vec::new();
    'outer: loop {
        let mut aggregate = BytesMut::new();
        let mut aggregate_ts = None;
        for tag in &tags {
            let Some(kind) = FrameKind::from_tag_type(tag.tag_type) else {
                continue;
            };
            let offset = match wire {
                Wire::Offset(ms) => ms,
                _ => 0,
            };
            let ts = tag.timestamp + round * file_duration + offset;
            let config = Frame::new(kind, ts, tag.body.clone(), 0).is_config();
            if round > 0 && config {
                continue;
            }
            let due = started + Duration::from_millis(u64::from(ts - offset));
            if started.elapsed() >= duration {
                break 'outer;
            }
            tokio::time::sleep_until(due).await;
            let mut out = BytesMut::new();
            match wire {
                Wire::Plain | Wire::Offset(_) => {
                    session.send_frame(&Frame::new(kind, ts, tag.body.clone(), 0));
                }
                Wire::Aggregate if config => {
                    session.send_frame(&Frame::new(kind, ts, tag.body.clone(), 0));
                }
                Wire::Aggregate => {
                    let base = *aggregate_ts.get_or_insert(ts);
                    flv::write_tag(&mut aggregate, tag.tag_type, ts, &tag.body);
                    if ts.saturating_sub(base) >= 100 {
                        encode_message(
                            &mut out,
                            csid::VIDEO,
                            base,
                            type_id::AGGREGATE,
                            1,
                            &aggregate,
                            4096,
                        );
                        aggregate.clear();
                        aggregate_ts = None;
                    }
                }
                Wire::Interleaved => {
                    if kind == FrameKind::Audio && !config {
                        pending_audio.push((ts, tag.body.clone()));
                    } else if kind == FrameKind::Video
                        && tag.body.len() > 128
                        && !pending_audio.is_empty()
                    {
                        // First chunk of the video message, then whole audio messages, then the
                        // rest of the video message's chunks.
                        let mut video = BytesMut::new();
                        encode_message(
                            &mut video,
                            csid::VIDEO,
                            ts,
                            type_id::VIDEO,
                            1,
                            &tag.body,
                            128,
                        );
                        let first = 12 + 128;
                        out.put_slice(&video[..first]);
                        for (ats, body) in pending_audio.drain(..) {
                            encode_message(
                                &mut out,
                                csid::AUDIO,
                                ats,
                                type_id::AUDIO,
                                1,
                                &body,
                                128,
                            );
                        }
                        out.put_slice(&video[first..]);
                    } else {
                        session.send_frame(&Frame::new(kind, ts, tag.body.clone(), 0));
                    }
                }
            }
            if session.has_output() {
                stream.write_all(&session.take_output()).await?;
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
            }
            sent += 1;
        }
        round += 1;
    }
    session.stop();
    stream.write_all(&session.take_output()).await?;
    let _ = stream.shutdown().await;
    Ok(sent)
}

/// A TCP connection with the RTMP handshake done, for sending hand-made chunks.
pub async fn rtmp_handshaken(addr: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    handshake::connect(&mut stream, Duration::from_secs(5)).await?;
    Ok(stream)
}

/// Reads until the server closes the connection; true when it did within `timeout`.
pub async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// TCP segments carrying data or not that this socket has received so far (`tcpi_segs_in` of
/// Linux's `TCP_INFO`, which glibc's `struct tcp_info` does not reach, so read at its offset).
pub fn segments_received(stream: &TcpStream) -> Result<u32> {
    use std::os::fd::AsRawFd;
    const TCPI_SEGS_IN: usize = 140;
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the buffer and its length are valid for the call, which writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(TCP_INFO)");
    }
    if (len as usize) < TCPI_SEGS_IN + 4 {
        bail!("TCP_INFO of {len} bytes has no tcpi_segs_in (Linux before 4.2)");
    }
    let mut segs = [0u8; 4];
    segs.copy_from_slice(&info[TCPI_SEGS_IN..TCPI_SEGS_IN + 4]);
    Ok(u32::from_ne_bytes(segs))
}

/// Plays `path` over HTTP-FLV, reading everything there is every `pause` (zero: as data
/// arrives, as a player does), and returns the TCP segments per second and the bits per second
/// it received over `window`, counted after `warm` (which takes the joining burst).
pub async fn flv_segment_rate(
    addr: SocketAddr,
    path: &str,
    pause: Duration,
    warm: Duration,
    window: Duration,
) -> Result<(f64, f64)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut read_for = async |stream: &mut TcpStream, span: Duration| -> Result<u64> {
        let end = Instant::now() + span;
        let mut bytes = 0u64;
        while Instant::now() < end {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) => bail!("the stream ended"),
                Ok(Ok(n)) => bytes += n as u64,
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        Ok(bytes)
    };
    read_for(&mut stream, warm).await?;
    let (segments, started) = (segments_received(&stream)?, Instant::now());
    let bytes = read_for(&mut stream, window).await?;
    let secs = started.elapsed().as_secs_f64();
    let segments = segments_received(&stream)?.wrapping_sub(segments);
    Ok((f64::from(segments) / secs, bytes as f64 * 8.0 / secs))
}
