//! Socket plumbing for viewers: a queue of shared buffers written with vectored writes, and a
//! guard that fails a write that makes no progress for too long (a peer that stopped reading).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::output::Segment;

/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Output format of a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Flv,
    Rtmp,
}

/// The bytes of a segment in `format`; shared with every other viewer, never copied.
pub fn segment_bytes(segment: &Segment, format: Format) -> Bytes {
    match (segment, format) {
        (Segment::Init(init), Format::Flv) => init.flv.clone(),
        (Segment::Init(init), Format::Rtmp) => init.rtmp.clone(),
        (Segment::Batch { batch, from }, Format::Flv) => batch.flv_from(*from),
        (Segment::Batch { batch, from }, Format::Rtmp) => batch.rtmp_from(*from),
    }
}

/// An emptied queue with room for more buffers than this frees it (per-viewer memory).
const SHRINK_ABOVE: usize = 16;

/// Buffers waiting to be written to one socket, in order.
#[derive(Debug, Default)]
pub struct OutQueue {
    bufs: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, buf: Bytes) {
        if !buf.is_empty() {
            self.bytes += buf.len();
            self.bufs.push_back(buf);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Buffers waiting.
    pub fn buffers(&self) -> usize {
        self.bufs.len()
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.bufs.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.bufs.pop_front();
                if self.bufs.is_empty() && self.bufs.capacity() > SHRINK_ABOVE {
                    // A joining viewer's burst (the cached GOP) grew it: give that back.
                    self.bufs = VecDeque::new();
                }
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Fills `slices` with the front of the queue; returns how many it filled.
    pub fn fill_slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, buf) in slices.iter_mut().zip(self.bufs.iter()) {
            *slot = IoSlice::new(buf);
            n += 1;
        }
        n
    }

    /// One vectored write of as much as the socket takes. Cancel-safe: nothing is written
    /// unless it completes, so it can sit in a `select!`. Returns the bytes written; the
    /// caller advances the queue.
    pub async fn write_some<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = self.bufs.len().min(MAX_IOVECS);
        for (slot, buf) in slices.iter_mut().zip(self.bufs.iter()) {
            *slot = IoSlice::new(buf);
        }
        let n = writer.write_vectored(&slices[..count]).await?;
        if n == 0 && self.bytes > 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }

    /// Writes everything queued.
    pub async fn write_all<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> io::Result<()> {
        while !self.is_empty() {
            let n = self.write_some(writer).await?;
            self.advance(n);
        }
        Ok(())
    }
}

/// Wraps a socket so that a write blocked for longer than `limit` fails with `TimedOut`,
/// instead of holding the connection (and whatever it references) forever.
#[derive(Debug)]
pub struct StallGuard<T> {
    inner: T,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl<T> StallGuard<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    fn on_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.armed {
                    self.armed = true;
                    let deadline = Instant::now() + self.limit;
                    self.timer.as_mut().reset(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "peer stopped reading: no write progress for {:?}",
                            self.limit
                        ),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn writes_queues_across_partial_writes() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"world"));
        assert_eq!((q.len(), q.buffers()), (11, 2));
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            b.read_to_string(&mut s).await.unwrap();
            s
        });
        q.write_all(&mut a).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), "hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_times_out() {
        let (a, _b) = tokio::io::duplex(4);
        let mut guarded = StallGuard::new(a, Duration::from_secs(5));
        guarded.write_all(b"1234").await.unwrap();
        let err = guarded.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
