//! The ideal fan-out floor: what serving N viewers must cost at least. One shared buffer per
//! FLV tag, and every window one vectored write per viewer of the tags that came due; nothing
//! else (no protocol, no per-viewer state beyond a partial write). Benchmarks report servers'
//! costs as a ratio to this.

use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::{Buf, Bytes, BytesMut};
use corriente_media::{Frame, FrameKind, flv};

use crate::publisher::Media;

struct Viewer {
    stream: TcpStream,
    /// What a partial write left over.
    pending: Vec<Bytes>,
}

/// Serves `media` as raw FLV over HTTP/1.0 on `listen`, writing every `window`.
pub fn run_floor(listen: SocketAddr, media: Media, window: Duration) -> Result<()> {
    let listener = TcpListener::bind(listen)?;
    eprintln!(
        "floor: listening on {} (window {window:?})",
        listener.local_addr()?
    );
    let viewers: Arc<Mutex<Vec<Viewer>>> = Arc::default();
    let config: Vec<Bytes> = media
        .tags
        .iter()
        .filter(|t| is_config(t))
        .map(|t| {
            let mut out = BytesMut::new();
            flv::write_tag(&mut out, t.tag_type, 0, &t.body);
            out.freeze()
        })
        .collect();
    {
        let viewers = viewers.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let viewers = viewers.clone();
                let config = config.clone();
                std::thread::spawn(move || {
                    if let Ok(viewer) = accept(stream, &config) {
                        viewers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(viewer);
                    }
                });
            }
        });
    }

    let started = Instant::now();
    let first = media.tags.first().map_or(0, |t| t.timestamp);
    let mut next = 0usize;
    let mut round = 0u32;
    let mut tick = started;
    loop {
        tick += window;
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now_ms = started.elapsed().as_millis() as u32;
        let mut due = Vec::new();
        loop {
            let tag = &media.tags[next];
            let ts = tag.timestamp - first + round * media.loop_ms;
            if ts > now_ms {
                break;
            }
            if !is_config(tag) || round == 0 {
                let mut out = BytesMut::with_capacity(tag.body.len() + 15);
                flv::write_tag(&mut out, tag.tag_type, ts, &tag.body);
                due.push(out.freeze());
            }
            next += 1;
            if next == media.tags.len() {
                next = 0;
                round += 1;
            }
        }
        if due.is_empty() {
            continue;
        }
        let mut viewers = viewers.lock().unwrap_or_else(|p| p.into_inner());
        viewers.retain_mut(|v| {
            v.pending.extend(due.iter().cloned());
            write_some(v)
        });
    }
}

fn is_config(tag: &flv::Tag) -> bool {
    FrameKind::from_tag_type(tag.tag_type)
        .is_some_and(|kind| Frame::new(kind, 0, tag.body.clone(), 0).is_config())
}

fn accept(mut stream: TcpStream, config: &[Bytes]) -> std::io::Result<Viewer> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    stream
        .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: video/x-flv\r\nConnection: close\r\n\r\n")?;
    stream.write_all(&flv::file_header(true, true))?;
    for tag in config {
        stream.write_all(tag)?;
    }
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(Viewer {
        stream,
        pending: Vec::new(),
    })
}

/// One vectored write; false when the viewer is gone.
fn write_some(v: &mut Viewer) -> bool {
    let slices: Vec<IoSlice<'_>> = v.pending.iter().map(|b| IoSlice::new(b)).collect();
    match v.stream.write_vectored(&slices) {
        Ok(0) => false,
        Ok(mut n) => {
            while n > 0 {
                let front = &mut v.pending[0];
                if n >= front.len() {
                    n -= front.len();
                    v.pending.remove(0);
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
            // A viewer more than a few seconds behind is dropped, as a real server would.
            v.pending.len() < 4096
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => v.pending.len() < 4096,
        Err(_) => false,
    }
}
