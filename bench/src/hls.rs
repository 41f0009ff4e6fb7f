//! HLS load: clients that behave like LL-HLS players, against a Corriente edge, and the same
//! requests replayed against a static file server (nginx) — the floor for serving those bytes
//! over HTTP.
//!
//! - **Live** (`--url http://EDGE/APP/NAME.m3u8`): each client reads the playlist, then loops:
//!   a blocking reload for the next part (`_HLS_msn`, `_HLS_part`), then that part. One
//!   keep-alive HTTP/1.1 connection per client.
//! - **Capture** (`--capture DIR`): one live client saves every answer it got, in order —
//!   `NNNNN.m3u8` (the blocking reload's playlist) and `NNNNN.m4s` (the part) — and the part
//!   durations (`timeline`), for a replay.
//! - **Replay** (`--replay URL-PREFIX --timeline FILE`): each client asks for the captured
//!   files in order at the pace they were made (the playlist, then the part, every part
//!   duration), from a static server: the same requests and bytes, without the blocking.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::stats::Histogram;

/// What all clients of a run count.
#[derive(Default)]
pub struct HlsShared {
    pub bytes: AtomicU64,
    pub parts: AtomicU64,
    pub playlists: AtomicU64,
    pub errors: AtomicU64,
    /// Request to last byte of each part, microseconds.
    pub part_latency: Histogram,
    /// Clients that fetched at least 90% of the parts the window held.
    pub kept_up: AtomicU64,
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl HlsShared {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    addr: SocketAddr,
    host: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            stream: None,
        }
    }

    /// GET `path`: status and body (Content-Length bodies only, as both servers answer).
    async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                self.stream = Some(BufReader::with_capacity(64 << 10, s));
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: corriente-bench\r\n\r\n",
                self.host
            );
            let result = async {
                stream.get_mut().write_all(request.as_bytes()).await?;
                read_response(stream).await
            }
            .await;
            match result {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 => {
                    // A closed keep-alive connection: once more on a new one.
                    self.stream = None;
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("no connection")
    }
}

async fn read_response(stream: &mut BufReader<TcpStream>) -> Result<(u16, Vec<u8>)> {
    let mut head = Vec::with_capacity(512);
    loop {
        let b = stream.read_u8().await?;
        head.push(b);
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
        if head.len() > 16 << 10 {
            bail!("response head too long");
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let len: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok((status, body))
}

/// The newest part a playlist lists (segment number, index) and the URI prefix of parts.
fn last_part(playlist: &str) -> Option<(u64, usize, String)> {
    playlist
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .filter_map(|uri| {
            let (dir, name) = uri.rsplit_once('/')?;
            let (msn, part) = name.strip_suffix(".m4s")?.split_once('.')?;
            Some((msn.parse().ok()?, part.parse().ok()?, dir.to_owned()))
        })
        .next_back()
}

/// The next part's URI in a playlist answering a blocking request for (msn, part): that part,
/// or the next segment's first.
fn next_part(playlist: &str, msn: u64, part: usize) -> Option<(u64, usize, String)> {
    let uris: Vec<&str> = playlist
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .collect();
    let find = |m: u64, p: usize| {
        let name = format!("/{m}.{p}.m4s");
        uris.iter()
            .find(|u| u.ends_with(&name))
            .map(|u| u.to_string())
    };
    find(msn, part)
        .map(|u| (msn, part, u))
        .or_else(|| find(msn + 1, 0).map(|u| (msn + 1, 0, u)))
}

/// Splits `http://HOST:PORT/PATH` into the address and the path.
pub fn http_target(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://").context("expected http://")?;
    let (host, path) = rest.split_once('/').context("expected http://HOST/PATH")?;
    Ok((crate::resolve(host, 80)?, format!("/{path}")))
}

/// One live LL-HLS client until `until`; with `capture`, it saves what it got.
pub async fn live_client(
    url: String,
    shared: Arc<HlsShared>,
    measure_from: Instant,
    until: Instant,
    capture: Option<PathBuf>,
) {
    if let Err(e) = live(&url, &shared, measure_from, until, capture.as_deref()).await {
        shared.error(e);
    }
}

async fn live(
    url: &str,
    shared: &HlsShared,
    measure_from: Instant,
    until: Instant,
    capture: Option<&Path>,
) -> Result<()> {
    let (addr, path) = http_target(url)?;
    let base = path.rsplit_once('/').map_or("/", |(d, _)| d).to_owned();
    let mut conn = Conn::new(addr);
    let (status, body) = conn.get(&path).await?;
    if status != 200 {
        bail!("{path}: HTTP {status}");
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let (mut msn, mut part, _) = last_part(&text).context("no part in the playlist")?;
    let mut timeline = String::new();
    let mut step = 0u64;
    let mut fetched_in_window = 0u64;
    let mut last_part_at: Option<Instant> = None;
    while Instant::now() < until {
        part += 1;
        let reload = format!("{path}?_HLS_msn={msn}&_HLS_part={part}");
        let (status, body) = conn.get(&reload).await?;
        if status != 200 {
            bail!("{reload}: HTTP {status}");
        }
        let measuring = Instant::now() >= measure_from;
        if measuring {
            shared.playlists.fetch_add(1, Ordering::Relaxed);
            shared.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let (m, p, uri) =
            next_part(&text, msn, part).context("the part asked for is not listed")?;
        (msn, part) = (m, p);
        let asked = Instant::now();
        let (status, data) = conn.get(&format!("{base}/{uri}")).await?;
        if status != 200 {
            bail!("{uri}: HTTP {status}");
        }
        if measuring {
            shared.parts.fetch_add(1, Ordering::Relaxed);
            shared.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            shared
                .part_latency
                .record(asked.elapsed().as_micros() as u64);
            fetched_in_window += 1;
        }
        if let Some(dir) = capture {
            std::fs::write(dir.join(format!("{step:05}.m3u8")), &body)?;
            std::fs::write(dir.join(format!("{step:05}.m4s")), &data)?;
            let gap = last_part_at.map_or(200, |t| t.elapsed().as_millis() as u64);
            timeline.push_str(&format!("{step:05} {gap}\n"));
            last_part_at = Some(Instant::now());
            step += 1;
        }
    }
    if let Some(dir) = capture {
        std::fs::write(dir.join("timeline"), timeline)?;
    }
    let window = until.saturating_duration_since(measure_from).as_secs_f64();
    if fetched_in_window as f64 >= window / 0.2 * 0.9 {
        shared.kept_up.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One replaying client: the captured playlist and part of each step, every part duration.
pub async fn replay_client(
    prefix: String,
    steps: Arc<Vec<(String, u64)>>,
    shared: Arc<HlsShared>,
    offset: usize,
    measure_from: Instant,
    until: Instant,
) {
    if let Err(e) = replay(&prefix, &steps, &shared, offset, measure_from, until).await {
        shared.error(e);
    }
}

async fn replay(
    prefix: &str,
    steps: &[(String, u64)],
    shared: &HlsShared,
    offset: usize,
    measure_from: Instant,
    until: Instant,
) -> Result<()> {
    let (addr, base) = http_target(prefix)?;
    let mut conn = Conn::new(addr);
    let mut next = Instant::now();
    let mut fetched_in_window = 0u64;
    let mut i = offset;
    while Instant::now() < until {
        let (name, gap_ms) = &steps[i % steps.len()];
        i += 1;
        next += Duration::from_millis((*gap_ms).clamp(1, 1000));
        tokio::time::sleep_until(next).await;
        let (status, playlist) = conn.get(&format!("{base}/{name}.m3u8")).await?;
        if status != 200 {
            bail!("{name}.m3u8: HTTP {status}");
        }
        let asked = Instant::now();
        let (status, data) = conn.get(&format!("{base}/{name}.m4s")).await?;
        if status != 200 {
            bail!("{name}.m4s: HTTP {status}");
        }
        if Instant::now() >= measure_from {
            shared.playlists.fetch_add(1, Ordering::Relaxed);
            shared.parts.fetch_add(1, Ordering::Relaxed);
            shared
                .bytes
                .fetch_add((playlist.len() + data.len()) as u64, Ordering::Relaxed);
            shared
                .part_latency
                .record(asked.elapsed().as_micros() as u64);
            fetched_in_window += 1;
        }
    }
    let window = until.saturating_duration_since(measure_from).as_secs_f64();
    if fetched_in_window as f64 >= window / 0.2 * 0.9 {
        shared.kept_up.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The captured steps: (file stem, milliseconds since the previous part).
pub fn read_timeline(path: &Path) -> Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let steps: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let (name, gap) = l.split_once(' ')?;
            Some((name.to_owned(), gap.parse().ok()?))
        })
        .collect();
    if steps.is_empty() {
        bail!("{} lists no step", path.display());
    }
    Ok(steps)
}
