//! Local namespace changes on their way to the MDS, sent together. The
//! changes this client answered itself ([`local`](super::local)) queue
//! here in the order they were made; one `CapOp::MutateMany` carries the
//! oldest ones of one caller (up to `MAX_MUTATIONS`), so the MDS
//! replicates and answers them once. A change waits in the queue only
//! while another batch is on its way.
//!
//! The MDS applies a batch's changes in order and may stop before one that
//! would have to wait for another session's caps: the rest go back to the
//! front of the queue and are sent again.

use aspen_proto::caps::{CapOp, CapReply, MAX_MUTATIONS};
use aspen_proto::fs::{Caller, Timestamp};
use aspen_proto::mds::{NsOp, NsReply};
use aspen_proto::{Errno, InodeId};

use super::Vfs;
use super::send_queue::SendQueue;

/// What the sender does once the MDS answered a change: gets the batch's
/// answer when the change was applied, or why it was not.
pub(super) type Settle = Box<dyn FnOnce(&Vfs, Result<&CapReply, Errno>) + Send>;

/// A change answered here, waiting to be sent.
pub(super) struct Behind {
    pub(super) caller: Caller,
    pub(super) ticket: u64,
    pub(super) op: NsOp,
    pub(super) parent: InodeId,
    pub(super) now: Timestamp,
    pub(super) settle: Settle,
}

/// The changes waiting for the batch on its way to finish.
#[derive(Default)]
pub(super) struct BehindQueue(SendQueue<Behind>);

impl BehindQueue {
    /// Queues a change; true when the caller must start the sender.
    fn push(&self, behind: Behind) -> bool {
        self.0.push(behind)
    }

    /// The next batch: the oldest changes, as long as they are one
    /// caller's, up to the limit (none when the queue is empty, and then
    /// the sender stops).
    fn next_batch(&self) -> Vec<Behind> {
        self.0.next_batch(|waiting| {
            let caller = &waiting[0].caller;
            let run = waiting
                .iter()
                .take(MAX_MUTATIONS)
                .take_while(|b| b.caller == *caller)
                .count();
            waiting.drain(..run).collect()
        })
    }

    /// Frees the queue for the next change's sender and returns what
    /// waited.
    fn abandon(&self) -> Vec<Behind> {
        self.0.abandon()
    }

    /// Puts changes the MDS left unapplied back at the front, in order.
    fn requeue(&self, unapplied: Vec<Behind>) {
        self.0.requeue(unapplied)
    }
}

/// The sending task's hold on the queue. Should the task end before it
/// emptied the queue (a panic), the queue is freed for the next change
/// and the changes waiting are settled as failed (their tickets end)
/// rather than wait for a sender that will not come.
struct Sender<'a> {
    vfs: &'a Vfs,
    emptied: bool,
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        if self.emptied {
            return;
        }
        for behind in self.vfs.behind.abandon() {
            self.vfs.settle_behind(behind, Err(Errno::EIO));
        }
    }
}

impl Vfs {
    /// Queues `behind` for the MDS (see the module doc).
    pub(super) fn queue_behind(&self, behind: Behind) {
        let Some(vfs) = self.me.upgrade() else {
            self.settle_behind(behind, Err(Errno::EIO));
            return;
        };
        if self.behind.push(behind) {
            tokio::spawn(async move { vfs.send_behind_batches().await });
        }
    }

    /// Sends batches until no change waits.
    async fn send_behind_batches(&self) {
        let mut sender = Sender {
            vfs: self,
            emptied: false,
        };
        loop {
            let batch = self.behind.next_batch();
            if batch.is_empty() {
                sender.emptied = true;
                return;
            }
            self.send_behind_batch(batch).await;
        }
    }

    async fn send_behind_batch(&self, mut batch: Vec<Behind>) {
        let caller = batch[0].caller.clone();
        let ops = batch.iter().map(|b| b.op.clone()).collect();
        let sent = self.session.cap(&caller, CapOp::MutateMany(ops)).await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(errno) => return self.settle_all(batch, errno),
        };
        let results = match &reply.result {
            Ok(NsReply::Mutated(results))
                if !results.is_empty() && results.len() <= batch.len() =>
            {
                results.clone()
            }
            Ok(_) => return self.settle_all(batch, Errno::EIO),
            Err(errno) => return self.settle_all(batch, *errno),
        };
        self.objects.require_epoch(reply.barrier);
        {
            let mut cache = self.cache();
            cache.absorb(&reply);
            for behind in &batch[..results.len()] {
                cache.touch_at_least(behind.parent, behind.now);
            }
        }
        let unapplied = batch.split_off(results.len());
        for (behind, result) in batch.into_iter().zip(results) {
            let outcome = result.map(|_| &reply);
            self.settle_behind(behind, outcome);
        }
        if !unapplied.is_empty() {
            self.behind.requeue(unapplied);
        }
    }

    fn settle_all(&self, batch: Vec<Behind>, errno: Errno) {
        for behind in batch {
            self.settle_behind(behind, Err(errno));
        }
    }

    fn settle_behind(&self, behind: Behind, outcome: Result<&CapReply, Errno>) {
        (behind.settle)(self, outcome);
        self.local.end(behind.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(uid: u32, ticket: u64) -> Behind {
        Behind {
            caller: Caller {
                uid,
                gid: 0,
                groups: Vec::new(),
            },
            ticket,
            op: NsOp::Unlink {
                parent: InodeId(1),
                name: format!("f{ticket}").into_bytes(),
            },
            parent: InodeId(1),
            now: Timestamp::default(),
            settle: Box::new(|_, _| {}),
        }
    }

    fn tickets(batch: &[Behind]) -> Vec<u64> {
        batch.iter().map(|b| b.ticket).collect()
    }

    #[test]
    fn a_batch_is_the_oldest_run_of_one_callers_changes_up_to_the_limit() {
        let queue = BehindQueue::default();
        assert!(
            queue.push(change(0, 0)),
            "the first change starts the sender"
        );
        assert!(!queue.push(change(0, 1)), "later ones join its queue");
        queue.push(change(5, 2));
        queue.push(change(0, 3));
        assert_eq!(tickets(&queue.next_batch()), [0, 1]);
        assert_eq!(
            tickets(&queue.next_batch()),
            [2],
            "another caller's change is not sent before an older one"
        );
        assert_eq!(tickets(&queue.next_batch()), [3]);
        assert!(queue.next_batch().is_empty());
        assert!(
            queue.push(change(0, 4)),
            "an emptied queue needs a sender again"
        );

        let queue = BehindQueue::default();
        for ticket in 0..(MAX_MUTATIONS as u64 + 3) {
            queue.push(change(0, ticket));
        }
        assert_eq!(queue.next_batch().len(), MAX_MUTATIONS);
        let limit = MAX_MUTATIONS as u64;
        assert_eq!(tickets(&queue.next_batch()), [limit, limit + 1, limit + 2]);
    }

    #[test]
    fn an_abandoned_queue_hands_back_its_changes_and_takes_a_new_sender() {
        let queue = BehindQueue::default();
        queue.push(change(0, 0));
        queue.push(change(5, 1));
        assert_eq!(tickets(&queue.abandon()), [0, 1]);
        assert!(queue.next_batch().is_empty());
        assert!(queue.push(change(0, 2)), "the next change starts a sender");
    }

    #[test]
    fn changes_left_unapplied_go_back_before_newer_ones() {
        let queue = BehindQueue::default();
        for ticket in 0..4 {
            queue.push(change(0, ticket));
        }
        let mut batch = queue.next_batch();
        queue.push(change(0, 4));
        let unapplied = batch.split_off(2);
        queue.requeue(unapplied);
        assert_eq!(tickets(&queue.next_batch()), [2, 3, 4]);
    }
}
