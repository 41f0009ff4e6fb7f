//! The server side of the RTMP handshake as Corriente runs it (`rtmp::handshake::accept`, on
//! rml_rtmp's `Handshake`), over a stream that delivers the input in arbitrary reads; what
//! follows the handshake goes to a server session, as the origin's ingest does.
//!
//! Input: one byte choosing the read sizes, then the client's bytes.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use corriente_fuzz::{Reads, Role, drive_session};
use corriente_media::rtmp::handshake;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a server writes during the handshake: its version byte, then two 1536-byte packets.
const S0_S1_S2: usize = 1 + 2 * 1536;

/// A client that sends `reads` one by one, then hangs up; what the server writes is counted.
struct Client<'a> {
    reads: Reads<'a>,
    current: &'a [u8],
    written: usize,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.current.is_empty() {
            self.current = self.reads.next().unwrap_or(&[]);
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current[..n]);
        self.current = &self.current[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    corriente_fuzz::bounded_memory(data.len(), || run(data));
});

fn run(data: &[u8]) {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let mut client = Client {
        reads: Reads::new(seed, rest),
        current: &[],
        written: 0,
    };
    let result = runtime().block_on(handshake::accept(&mut client, Duration::from_secs(10)));
    if let Ok(leftover) = result {
        // C0 + C1 + C2 were read; S0 + S1 + S2 written.
        assert!(client.written >= S0_S1_S2, "short server handshake");
        // What the client sent after C2, then the rest of its bytes, as ingest reads them.
        let mut after = leftover.to_vec();
        after.extend_from_slice(client.current);
        for read in client.reads.by_ref() {
            after.extend_from_slice(read);
        }
        drive_session(Role::Origin, seed, &after);
    }
}
