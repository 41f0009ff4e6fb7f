//! The publisher: a real RTMP client that sends an FLV file in real time, looping, with
//! timestamps that keep growing across loops, and notes when it sent each timestamp.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use corriente_media::flv::{Tag, TagReader};
use corriente_media::rtmp::handshake;
use corriente_media::rtmp::{ClientEvent, ClientMode, ClientSession};
use corriente_media::{Frame, FrameKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::stats::SendLog;

/// An FLV file loaded for publishing.
pub struct Media {
    pub tags: Vec<Tag>,
    /// Length of one loop, milliseconds.
    pub loop_ms: u32,
    /// Audio and video payload bytes per second.
    pub payload_bytes_per_sec: f64,
    pub has_video: bool,
}

impl Media {
    pub fn load(path: &Path) -> Result<Media> {
        let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let mut buf = BytesMut::from(&data[..]);
        let mut reader = TagReader::new(64 << 20);
        let mut tags = Vec::new();
        while let Some(tag) = reader.next_tag(&mut buf)? {
            if FrameKind::from_tag_type(tag.tag_type).is_some() {
                tags.push(tag);
            }
        }
        let first = tags.first().context("no tags in the file")?.timestamp;
        let last = tags.last().map_or(0, |t| t.timestamp);
        let loop_ms = last.saturating_sub(first).max(1) + 33;
        let payload: usize = tags
            .iter()
            .filter(|t| t.tag_type != corriente_media::flv::TAG_SCRIPT)
            .map(|t| t.body.len())
            .sum();
        let has_video = tags
            .iter()
            .any(|t| t.tag_type == corriente_media::flv::TAG_VIDEO);
        Ok(Media {
            has_video,
            tags,
            loop_ms,
            payload_bytes_per_sec: payload as f64 * 1000.0 / f64::from(loop_ms),
        })
    }
}

/// What a publisher did.
#[derive(Default)]
pub struct PublishStats {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    /// How late the last frame went out compared to its schedule, microseconds.
    pub lateness_us: AtomicU64,
    pub max_lateness_us: AtomicU64,
    pub running: AtomicBool,
}

/// Publishes `media` to `rtmp://addr/app/name` until `stop` is set.
pub async fn publish(
    addr: SocketAddr,
    app: &str,
    name: &str,
    media: Arc<Media>,
    log: Option<Arc<SendLog>>,
    stats: Arc<PublishStats>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut input = handshake::connect(&mut stream, Duration::from_secs(10)).await?;
    let tc_url = format!("rtmp://{addr}/{app}");
    let mut session = ClientSession::new(ClientMode::Publish, app, &tc_url, name, 4096);
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !session.is_active() {
        if session.has_output() {
            stream.write_all(&session.take_output()).await?;
        }
        input.reserve(4096);
        if tokio::time::timeout_at(deadline, stream.read_buf(&mut input))
            .await
            .context("publish setup timed out")??
            == 0
        {
            bail!("server closed the connection during publish setup");
        }
        session.feed(&mut input, 0, &mut events)?;
        for event in events.drain(..) {
            if let ClientEvent::Refused { code, description } = event {
                bail!("publish refused: {code}: {description}");
            }
        }
    }
    stats.running.store(true, Ordering::Relaxed);
    // Keep reading (acknowledgements, pings) so the server never blocks on us.
    let (mut reader, mut writer) = stream.into_split();
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 16 << 10];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });

    let started = Instant::now();
    let first = media.tags.first().map_or(0, |t| t.timestamp);
    let mut round: u32 = 0;
    'outer: loop {
        for tag in &media.tags {
            let kind = FrameKind::from_tag_type(tag.tag_type).unwrap_or(FrameKind::Script);
            let rel = tag.timestamp - first + round * media.loop_ms;
            let frame = Frame::new(kind, rel, tag.body.clone(), 0);
            if round > 0 && frame.is_config() {
                continue;
            }
            let due = started + Duration::from_millis(u64::from(rel));
            tokio::time::sleep_until(due).await;
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            if let Some(log) = &log {
                log.sent(rel);
            }
            session.send_frame(&frame);
            let out = session.take_output();
            if writer.write_all(&out).await.is_err() {
                break 'outer;
            }
            let late = due.elapsed().as_micros() as u64;
            stats.lateness_us.store(late, Ordering::Relaxed);
            stats.max_lateness_us.fetch_max(late, Ordering::Relaxed);
            stats.frames.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        round += 1;
    }
    stats.running.store(false, Ordering::Relaxed);
    session.stop();
    let _ = writer.write_all(&session.take_output()).await;
    let _ = writer.shutdown().await;
    drain.abort();
    Ok(())
}
