//! A hub's broadcast ring: the recent batches of one stream, shared by every subscriber (feeds
//! and fan-out shards), bounded by count **and by bytes**. A bound by count alone lets a
//! stream of huge frames (8 MiB messages are legal RTMP) pin `count × 8 MiB` per stream; here
//! the oldest batches go as soon as either bound is passed, and a subscriber that was still
//! behind them learns it lagged, exactly as with a count-bounded ring.
//!
//! Subscribers wait on a `watch` of the last sequence number, so a batch costs one lock and one
//! wake-up per waiting subscriber, like `tokio::sync::broadcast`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::output::Batch;

/// Why a receive returned no batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// This many batches went out of the ring before the subscriber read them; the next
    /// receive returns the oldest one still there.
    Lagged(u64),
    /// The stream ended and everything was read.
    Closed,
}

struct State {
    /// Each batch with the bytes it is counted for.
    batches: VecDeque<(Arc<Batch>, usize)>,
    bytes: usize,
    /// Version of the newest batch's configuration: a batch bringing a new one is also counted
    /// for that configuration block (distinct metadata on every frame would otherwise pin a
    /// block per batch unseen).
    init_version: Option<u64>,
    max_count: usize,
    max_bytes: usize,
    /// Sequence number the next batch gets when the ring is empty (the receivers' start).
    next_seq: u64,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the ring consistent; a poisoned lock still holds it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The hub's end of the ring.
pub(crate) struct RingSender {
    shared: Arc<Shared>,
    seq: watch::Sender<u64>,
}

/// A subscriber's place in the ring.
pub(crate) struct RingReceiver {
    shared: Arc<Shared>,
    seq: watch::Receiver<u64>,
    next: u64,
}

/// A ring keeping at most `max_count` batches and, past the newest one, at most `max_bytes`.
pub(crate) fn ring(max_count: usize, max_bytes: usize) -> RingSender {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            batches: VecDeque::new(),
            bytes: 0,
            init_version: None,
            max_count: max_count.max(1),
            max_bytes,
            next_seq: 1,
            closed: false,
        }),
    });
    RingSender {
        shared,
        seq: watch::Sender::new(0),
    }
}

impl RingSender {
    /// Adds a batch (its `seq` one past the previous one) and drops the oldest past the bounds.
    pub(crate) fn send(&self, batch: Arc<Batch>) {
        let seq = batch.seq;
        {
            let mut state = self.shared.lock();
            let mut bytes = batch.memory_bytes();
            if state.init_version != Some(batch.init.version) {
                state.init_version = Some(batch.init.version);
                bytes += batch.init.flv.len() + batch.init.rtmp.len();
                bytes += batch.init.frames().map(|f| f.payload.len()).sum::<usize>();
            }
            state.bytes += bytes;
            state.next_seq = seq + 1;
            state.batches.push_back((batch, bytes));
            while state.batches.len() > state.max_count
                || (state.bytes > state.max_bytes && state.batches.len() > 1)
            {
                if let Some((_, old)) = state.batches.pop_front() {
                    state.bytes -= old;
                }
            }
        }
        self.seq.send_replace(seq);
    }

    /// A receiver that starts with the next batch sent.
    pub(crate) fn subscribe(&self) -> RingReceiver {
        let next = self.shared.lock().next_seq;
        RingReceiver {
            shared: self.shared.clone(),
            seq: self.seq.subscribe(),
            next,
        }
    }

    /// Bytes the ring holds (by [`Batch::memory_bytes`]).
    pub(crate) fn bytes(&self) -> usize {
        self.shared.lock().bytes
    }
}

impl Drop for RingSender {
    fn drop(&mut self) {
        // Receivers read what is left, then see `Closed`.
        self.shared.lock().closed = true;
    }
}

impl RingReceiver {
    /// The next batch, waiting for it if need be.
    pub(crate) async fn recv(&mut self) -> Result<Arc<Batch>, RecvError> {
        loop {
            self.seq.borrow_and_update();
            if let Some(result) = self.try_recv() {
                return result;
            }
            if self.seq.changed().await.is_err() {
                // The sender is gone: what is left, then the end.
                return self.try_recv().unwrap_or(Err(RecvError::Closed));
            }
        }
    }

    /// The next batch if there is one; `None` when the subscriber is caught up.
    fn try_recv(&mut self) -> Option<Result<Arc<Batch>, RecvError>> {
        let state = self.shared.lock();
        if let Some(first) = state.batches.front().map(|(b, _)| b.seq) {
            if self.next < first {
                let missed = first - self.next;
                self.next = first;
                return Some(Err(RecvError::Lagged(missed)));
            }
            if let Some((batch, _)) = state.batches.get((self.next - first) as usize) {
                self.next += 1;
                return Some(Ok(batch.clone()));
            }
        } else if self.next < state.next_seq {
            // Everything it had not read was dropped (one huge batch replaced another).
            let missed = state.next_seq - self.next;
            self.next = state.next_seq;
            return Some(Err(RecvError::Lagged(missed)));
        }
        state.closed.then_some(Err(RecvError::Closed))
    }

    /// A receiver at the live tail: it starts with the next batch sent.
    pub(crate) fn resubscribe(&self) -> RingReceiver {
        let next = self.shared.lock().next_seq;
        RingReceiver {
            shared: self.shared.clone(),
            seq: self.seq.clone(),
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::FutureExt;

    use super::*;
    use crate::frame::{Frame, FrameKind};

    fn batch(seq: u64, size: usize) -> Arc<Batch> {
        let frame = Frame::new(FrameKind::Video, 0, Bytes::from(vec![0x17; size]), 0);
        Arc::new(Batch::for_test(seq, vec![frame]))
    }

    #[tokio::test]
    async fn receivers_get_every_batch_in_order_then_the_end() {
        let tx = ring(8, 1 << 20);
        let mut rx = tx.subscribe();
        for seq in 1..=3 {
            tx.send(batch(seq, 10));
        }
        for seq in 1..=3 {
            assert_eq!(rx.recv().await.unwrap().seq, seq);
        }
        assert!(rx.recv().now_or_never().is_none(), "waits when caught up");
        drop(tx);
        assert_eq!(rx.recv().await.unwrap_err(), RecvError::Closed);
    }

    #[tokio::test]
    async fn the_ring_is_bounded_by_count_and_by_bytes() {
        let tx = ring(4, 1 << 20);
        let mut rx = tx.subscribe();
        for seq in 1..=6 {
            tx.send(batch(seq, 10));
        }
        assert_eq!(rx.recv().await.unwrap_err(), RecvError::Lagged(2));
        assert_eq!(rx.recv().await.unwrap().seq, 3);

        // 8 batches of 512 KiB in a 1 MiB ring: at most two stay (the newest always does).
        let tx = ring(128, 1 << 20);
        let mut rx = tx.subscribe();
        for seq in 1..=8 {
            tx.send(batch(seq, 512 << 10));
            assert!(tx.bytes() <= 2 * batch(0, 512 << 10).memory_bytes());
        }
        assert!(matches!(rx.recv().await, Err(RecvError::Lagged(n)) if n >= 6));
        // One batch larger than the whole bound still goes through.
        tx.send(batch(9, 2 << 20));
        let mut late = tx.subscribe();
        assert!(late.recv().now_or_never().is_none());
        let mut caught_up = tx.subscribe();
        tx.send(batch(10, 2 << 20));
        assert_eq!(caught_up.recv().await.unwrap().seq, 10);
        assert_eq!(late.resubscribe().next, 11);
    }
}
