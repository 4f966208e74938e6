//! Size and mtime reports to the MDS, sent together. Closes that finish
//! their write-back at about the same time each have a report to make;
//! one `CapOp::FlushMany` carries those of one writer (up to
//! `MAX_FLUSH_REPORTS`), so the MDS answers and commits them once. A
//! report waits in the queue only while another batch is on its way.

use std::collections::VecDeque;

use aspen_proto::caps::{CapOp, Flushed, MAX_FLUSH_REPORTS};
use aspen_proto::mds::NsReply;
use aspen_proto::{Errno, InodeId};
use tokio::sync::oneshot;

use super::Vfs;
use super::send_queue::SendQueue;
use crate::caps::Unreported;

/// The reports waiting for the batch on its way to finish.
#[derive(Default)]
pub(super) struct ReportQueue(SendQueue<Queued>);

struct Queued {
    ino: InodeId,
    written: Unreported,
    answered: oneshot::Sender<Result<(), Errno>>,
}

impl ReportQueue {
    /// Queues a report; true when the caller must start the sender.
    fn push(&self, queued: Queued) -> bool {
        self.0.push(queued)
    }

    /// The next batch: the oldest report's writer's reports, oldest first
    /// (none when the queue is empty, and then the sender stops).
    fn next_batch(&self) -> Vec<Queued> {
        self.0.next_batch(|waiting| {
            let writer = waiting[0].written.writer.clone();
            let (mut batch, mut rest) = (Vec::new(), VecDeque::new());
            for queued in waiting.drain(..) {
                if batch.len() < MAX_FLUSH_REPORTS && queued.written.writer == writer {
                    batch.push(queued);
                } else {
                    rest.push_back(queued);
                }
            }
            *waiting = rest;
            batch
        })
    }
}

/// The sending task's hold on the queue. Should the task end before it
/// emptied the queue (a panic), the queue is freed for the next report and
/// the reports waiting fail with EIO rather than wait for a sender that
/// will not come.
struct Sender<'a> {
    queue: &'a ReportQueue,
    emptied: bool,
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        if !self.emptied {
            // Dropping them answers their callers (EIO).
            self.queue.0.abandon();
        }
    }
}

impl Vfs {
    /// Tells the MDS the size and mtime this client's writes to `ino`
    /// produced (nothing when they are reported already). The caller holds
    /// the inode's report turn.
    pub(super) async fn report_in_turn(&self, ino: InodeId) -> Result<(), Errno> {
        let Some(written) = self.cache().unreported(ino) else {
            return Ok(());
        };
        let Some(vfs) = self.me.upgrade() else {
            return Err(Errno::EIO);
        };
        let (answered, answer) = oneshot::channel();
        let queued = Queued {
            ino,
            written,
            answered,
        };
        if self.reports.push(queued) {
            tokio::spawn(async move { vfs.send_reports().await });
        }
        answer.await.unwrap_or(Err(Errno::EIO))
    }

    /// Sends batches until no report waits.
    async fn send_reports(&self) {
        let mut sender = Sender {
            queue: &self.reports,
            emptied: false,
        };
        loop {
            let batch = self.reports.next_batch();
            if batch.is_empty() {
                sender.emptied = true;
                return;
            }
            self.send_report_batch(batch).await;
        }
    }

    async fn send_report_batch(&self, batch: Vec<Queued>) {
        let writer = batch[0].written.writer.clone();
        let reports = batch
            .iter()
            .map(|q| {
                let flushed = Flushed {
                    size: q.written.size,
                    mtime: q.written.mtime,
                };
                (q.ino, flushed)
            })
            .collect();
        tracing::debug!(?reports, "reporting");
        let results = match self.cap_call(&writer, CapOp::FlushMany { reports }).await {
            Ok(reply) => match reply.result {
                Ok(NsReply::Reported(results)) if results.len() == batch.len() => results,
                Ok(_) => vec![Err(Errno::EIO); batch.len()],
                Err(errno) => vec![Err(errno); batch.len()],
            },
            Err(errno) => vec![Err(errno); batch.len()],
        };
        tracing::debug!(?results, "reported");
        for (queued, result) in batch.into_iter().zip(results) {
            let outcome = match result {
                Ok(()) => {
                    self.cache().reported(queued.ino, &queued.written);
                    Ok(())
                }
                // The cap went: a revocation reported it, or the file is gone.
                Err(Errno::EBADF) => Ok(()),
                Err(errno) => Err(errno),
            };
            let _ = queued.answered.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_proto::fs::{Caller, Timestamp};

    fn queued(ino: u64, writer: &Caller) -> Queued {
        Queued {
            ino: InodeId(ino),
            written: Unreported {
                size: ino,
                mtime: Timestamp::new(1, 0),
                writer: writer.clone(),
            },
            answered: oneshot::channel().0,
        }
    }

    fn inodes(batch: &[Queued]) -> Vec<u64> {
        batch.iter().map(|q| q.ino.0).collect()
    }

    #[test]
    fn a_batch_is_one_writers_oldest_reports_up_to_the_limit() {
        let (root, user) = (Caller::root(), Caller::new(1000, 1000, vec![]));
        let queue = ReportQueue::default();
        assert!(
            queue.push(queued(1, &root)),
            "the first report starts a sender"
        );
        assert!(!queue.push(queued(2, &user)), "one sender at a time");
        let many = MAX_FLUSH_REPORTS as u64 + 1;
        for ino in 3..3 + many {
            queue.push(queued(ino, &root));
        }
        let first = queue.next_batch();
        assert_eq!(first.len(), MAX_FLUSH_REPORTS);
        assert_eq!(inodes(&first)[..3], [1, 3, 4]);
        assert_eq!(
            inodes(&queue.next_batch()),
            vec![2],
            "then the next writer's"
        );
        let left_over = vec![3 + many - 2, 3 + many - 1];
        assert_eq!(
            inodes(&queue.next_batch()),
            left_over,
            "the first writer's rest"
        );
        assert!(queue.next_batch().is_empty());
        assert!(
            queue.push(queued(9, &root)),
            "an emptied queue needs a new sender"
        );
    }

    #[test]
    fn a_sender_gone_before_the_queue_emptied_fails_the_waiting_reports() {
        let root = Caller::root();
        let queue = ReportQueue::default();
        let (answered, mut answer) = oneshot::channel();
        let waiting = Queued {
            answered,
            ..queued(1, &root)
        };
        assert!(queue.push(waiting));
        drop(Sender {
            queue: &queue,
            emptied: false,
        });
        assert!(
            matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "the waiting report is answered (EIO), not left waiting"
        );
        assert!(
            queue.push(queued(2, &root)),
            "the next report starts a new sender"
        );
    }
}
