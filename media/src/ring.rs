//! A hub's broadcast ring: the recent batches of one stream, shared by every subscriber (feeds
//! and fan-out shards). A batch is kept only until every subscriber has read it, as with
//! `tokio::sync::broadcast`, and what subscribers have not read yet is bounded by count **and by
//! bytes**: a bound by count alone lets one stalled subscriber of a stream of huge frames (8 MiB
//! messages are legal RTMP) pin `count × 8 MiB`. Past either bound the oldest batches go, and a
//! subscriber that was still behind them learns it lagged.
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

/// One sent batch: held until every receiver that existed when it was sent has read it.
struct Slot {
    seq: u64,
    batch: Option<Arc<Batch>>,
    /// Receivers that have not read it yet.
    unread: usize,
    /// What it is counted for in the byte bound.
    bytes: usize,
}

struct State {
    /// Slots in sequence order, without gaps.
    slots: VecDeque<Slot>,
    /// Bytes of the batches still held.
    bytes: usize,
    receivers: usize,
    /// Version of the newest batch's configuration: a batch bringing a new one is also counted
    /// for that configuration block (distinct metadata on every frame would otherwise pin a
    /// block per batch unseen).
    init_version: Option<u64>,
    max_count: usize,
    max_bytes: usize,
    /// Sequence number of the next batch (where a new receiver starts).
    next_seq: u64,
    closed: bool,
}

impl State {
    /// Frees a slot's batch (read by all, or pushed out by the bounds).
    fn free(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index)
            && slot.batch.take().is_some()
        {
            self.bytes -= slot.bytes;
        }
    }

    /// Drops freed slots from the front, and the oldest held ones past the bounds.
    fn trim(&mut self) {
        while let Some(front) = self.slots.front() {
            let held = self.slots.len();
            let over = held > self.max_count || (self.bytes > self.max_bytes && held > 1);
            if front.batch.is_some() && !over {
                break;
            }
            self.free(0);
            self.slots.pop_front();
        }
    }

    /// One receiver read (or, leaving, gave up) the slot at `index`.
    fn read(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.unread = slot.unread.saturating_sub(1);
            if slot.unread == 0 {
                self.free(index);
            }
        }
    }
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

/// A ring holding at most `max_count` unread batches and, past the newest one, at most
/// `max_bytes` of them.
pub(crate) fn ring(max_count: usize, max_bytes: usize) -> RingSender {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            slots: VecDeque::new(),
            bytes: 0,
            receivers: 0,
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
    /// Adds a batch (its `seq` one past the previous one) for the receivers there are now.
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
            state.next_seq = seq + 1;
            let unread = state.receivers;
            let held = (unread > 0).then_some(batch);
            if held.is_some() {
                state.bytes += bytes;
            }
            state.slots.push_back(Slot {
                seq,
                batch: held,
                unread,
                bytes,
            });
            state.trim();
        }
        self.seq.send_replace(seq);
    }

    /// A receiver that starts with the next batch sent.
    pub(crate) fn subscribe(&self) -> RingReceiver {
        RingReceiver::at_tail(&self.shared, self.seq.subscribe())
    }

    /// Bytes of the batches the ring holds (by [`Batch::memory_bytes`]): what subscribers have
    /// not read yet.
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
        let mut state = self.shared.lock();
        let first = state.slots.front().map_or(state.next_seq, |s| s.seq);
        if self.next < first {
            // What it had not read was pushed out by the bounds.
            let missed = first - self.next;
            self.next = first;
            return Some(Err(RecvError::Lagged(missed)));
        }
        let index = (self.next - first) as usize;
        if let Some(slot) = state.slots.get(index) {
            let batch = slot.batch.clone();
            state.read(index);
            state.trim();
            self.next += 1;
            return Some(match batch {
                Some(batch) => Ok(batch),
                // Only a slot it was not counted in (it subscribed later) can be empty, and a
                // receiver never starts before its subscription: unreachable, but a lag is the
                // safe answer.
                None => Err(RecvError::Lagged(1)),
            });
        }
        state.closed.then_some(Err(RecvError::Closed))
    }

    /// A receiver at the live tail: it starts with the next batch sent.
    pub(crate) fn resubscribe(&self) -> RingReceiver {
        RingReceiver::at_tail(&self.shared, self.seq.clone())
    }

    /// A new receiver, counted in every batch sent from now on.
    fn at_tail(shared: &Arc<Shared>, seq: watch::Receiver<u64>) -> RingReceiver {
        let mut state = shared.lock();
        state.receivers += 1;
        RingReceiver {
            shared: shared.clone(),
            seq,
            next: state.next_seq,
        }
    }
}

impl Drop for RingReceiver {
    fn drop(&mut self) {
        // What it has not read no longer waits for it.
        let mut state = self.shared.lock();
        state.receivers = state.receivers.saturating_sub(1);
        let first = state.slots.front().map_or(state.next_seq, |s| s.seq);
        let from = self.next.max(first);
        for seq in from..state.next_seq {
            state.read((seq - first) as usize);
        }
        state.trim();
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
    async fn a_batch_is_held_only_until_every_receiver_read_it() {
        let tx = ring(128, 32 << 20);
        // Nobody listening: nothing held.
        tx.send(batch(1, 1000));
        assert_eq!(tx.bytes(), 0);
        let mut a = tx.subscribe();
        let mut b = tx.subscribe();
        tx.send(batch(2, 1000));
        tx.send(batch(3, 1000));
        let one = batch(0, 1000).memory_bytes();
        assert_eq!(tx.bytes(), 2 * one);
        assert_eq!(a.recv().await.unwrap().seq, 2);
        assert_eq!(tx.bytes(), 2 * one, "b has not read it");
        assert_eq!(b.recv().await.unwrap().seq, 2);
        assert_eq!(tx.bytes(), one);
        // A receiver leaving gives up what it had not read.
        assert_eq!(a.recv().await.unwrap().seq, 3);
        drop(b);
        assert_eq!(tx.bytes(), 0);
        // A late subscriber starts at the tail.
        let mut late = tx.subscribe();
        tx.send(batch(4, 10));
        assert_eq!(late.recv().await.unwrap().seq, 4);
        assert_eq!(a.recv().await.unwrap().seq, 4);
        assert_eq!(tx.bytes(), 0);
    }

    #[tokio::test]
    async fn what_a_laggard_pins_is_bounded_by_count_and_by_bytes() {
        let tx = ring(4, 1 << 20);
        let mut rx = tx.subscribe();
        for seq in 1..=6 {
            tx.send(batch(seq, 10));
        }
        assert_eq!(rx.recv().await.unwrap_err(), RecvError::Lagged(2));
        assert_eq!(rx.recv().await.unwrap().seq, 3);

        // 8 batches of 512 KiB in a 1 MiB ring for a receiver that reads nothing: at most
        // two stay (the newest always does).
        let tx = ring(128, 1 << 20);
        let mut stalled = tx.subscribe();
        for seq in 1..=8 {
            tx.send(batch(seq, 512 << 10));
            assert!(tx.bytes() <= 2 * batch(0, 512 << 10).memory_bytes());
        }
        assert!(matches!(stalled.recv().await, Err(RecvError::Lagged(n)) if n >= 6));
        // One batch larger than the whole bound still goes through.
        let mut caught_up = stalled.resubscribe();
        drop(stalled);
        tx.send(batch(9, 2 << 20));
        assert_eq!(caught_up.recv().await.unwrap().seq, 9);
        assert_eq!(tx.bytes(), 0);
        assert_eq!(caught_up.resubscribe().next, 10);
    }
}
