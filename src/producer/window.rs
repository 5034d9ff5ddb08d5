//! The window of batches awaiting an answer: whether another batch may be sent (at most
//! `--max-in-flight` batches counted from the oldest pending one, so the node still remembers
//! any batch that is retried), the oldest pending sequence (sent as `X-Producer-Pending-From`),
//! and a signal each time a batch settles, which a batch refused as out of order waits for.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

/// The pending batches of one producer, shared by the run loop and every sender task.
#[derive(Debug)]
pub struct Window {
    /// Pending batches and numbering.
    state: Mutex<State>,
    /// Counts settled batches; senders wait on it to resend in order.
    settled: watch::Sender<u64>,
    /// `--max-in-flight`.
    max: u64,
}

#[derive(Debug)]
struct State {
    /// First sequence -> position in send order, of every batch not yet settled.
    pending: BTreeMap<u64, u64>,
    /// Position the next opened batch gets.
    next_index: u64,
    /// Sequence right after the last opened batch (the oldest pending when none is).
    next_seq: u64,
}

impl Window {
    /// An empty window allowing `max_in_flight` batches, numbering from `first_seq`.
    pub fn new(max_in_flight: usize, first_seq: u64) -> Self {
        Self {
            state: Mutex::new(State {
                pending: BTreeMap::new(),
                next_index: 0,
                next_seq: first_seq,
            }),
            settled: watch::channel(0).0,
            max: max_in_flight.max(1) as u64,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one statement.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether one more batch may be sent: fewer than `max` positions separate the next batch
    /// from the oldest pending one.
    pub fn has_room(&self) -> bool {
        let state = self.state();
        match state.pending.values().next() {
            Some(&oldest) => state.next_index - oldest < self.max,
            None => true,
        }
    }

    /// Marks the batch starting at `seq` with `count` messages as pending; the returned guard
    /// settles it when dropped (also if its sender task panics).
    pub fn open(self: &Arc<Self>, seq: u64, count: usize) -> Settle {
        let mut state = self.state();
        let index = state.next_index;
        state.next_index += 1;
        state.pending.insert(seq, index);
        state.next_seq = state.next_seq.max(seq.saturating_add(count as u64));
        Settle {
            window: self.clone(),
            seq,
        }
    }

    fn settle(&self, seq: u64) {
        self.state().pending.remove(&seq);
        self.settled.send_modify(|n| *n += 1);
    }

    /// The oldest sequence still awaiting an answer: every lower one is acknowledged or given
    /// up, and never sent again.
    pub fn pending_from(&self) -> u64 {
        let state = self.state();
        state.pending.keys().next().copied().unwrap_or(state.next_seq)
    }

    /// Changes each time a batch settles.
    pub fn settled(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }
}

/// Settles one pending batch when dropped.
#[derive(Debug)]
pub struct Settle {
    window: Arc<Window>,
    seq: u64,
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.window.settle(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window counts positions from the oldest pending batch, not batches in flight: while
    /// the oldest is unanswered, no batch more than `max - 1` positions after it is sent, however
    /// many later ones have settled.
    #[test]
    fn room_is_counted_from_the_oldest_pending_batch() {
        let w = Arc::new(Window::new(3, 100));
        assert_eq!(w.pending_from(), 100);
        let a = w.open(100, 10);
        let b = w.open(110, 10);
        assert!(w.has_room());
        let c = w.open(120, 10);
        assert!(!w.has_room(), "three pending");
        drop(b);
        drop(c);
        assert!(
            !w.has_room(),
            "the oldest still pending: the next would be 3 positions on"
        );
        assert_eq!(w.pending_from(), 100);
        drop(a);
        assert!(w.has_room());
        assert_eq!(w.pending_from(), 130, "nothing pending: the next sequence");
    }

    /// Every settle is signalled, so a waiting sender wakes.
    #[test]
    fn settling_is_signalled() {
        let w = Arc::new(Window::new(8, 0));
        let mut rx = w.settled();
        rx.borrow_and_update();
        let a = w.open(0, 1);
        let _b = w.open(1, 1);
        assert_eq!(w.pending_from(), 0);
        drop(a);
        assert!(rx.has_changed().unwrap());
        assert_eq!(w.pending_from(), 1);
    }
}
