//! What the background senders to the MDS share (size reports,
//! [`reports`](super::reports); local namespace changes,
//! [`behind`](super::behind)): a queue that one sender task at a time
//! empties in batches. The item queued while no sender runs starts one;
//! the sender takes batches until nothing waits, and stops there.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::lock;

/// Items waiting for the batch on its way to finish.
pub(super) struct SendQueue<T>(Mutex<Queue<T>>);

struct Queue<T> {
    waiting: VecDeque<T>,
    /// A task is sending batches (and will take what waits).
    sending: bool,
}

impl<T> Default for SendQueue<T> {
    fn default() -> Self {
        SendQueue(Mutex::new(Queue {
            waiting: VecDeque::new(),
            sending: false,
        }))
    }
}

impl<T> SendQueue<T> {
    /// Queues `item`; true when the caller must start the sender.
    pub(super) fn push(&self, item: T) -> bool {
        let mut queue = lock(&self.0);
        queue.waiting.push_back(item);
        !std::mem::replace(&mut queue.sending, true)
    }

    /// The next batch, which `take` picks from what waits (oldest first);
    /// none when nothing waits, and then the sender stops.
    pub(super) fn next_batch(&self, take: impl FnOnce(&mut VecDeque<T>) -> Vec<T>) -> Vec<T> {
        let mut queue = lock(&self.0);
        if queue.waiting.is_empty() {
            queue.sending = false;
            return Vec::new();
        }
        take(&mut queue.waiting)
    }

    /// Puts `items` back before everything waiting, in their order.
    pub(super) fn requeue(&self, items: Vec<T>) {
        let mut queue = lock(&self.0);
        for item in items.into_iter().rev() {
            queue.waiting.push_front(item);
        }
    }

    /// Frees the queue for the next item's sender and returns what waited
    /// (a sender that ends before emptying it, on a panic, hands it back).
    pub(super) fn abandon(&self) -> Vec<T> {
        let mut queue = lock(&self.0);
        queue.sending = false;
        std::mem::take(&mut queue.waiting).into()
    }
}
