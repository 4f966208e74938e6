//! Namespace writes in batches. Concurrent clients' operations are gathered
//! into one [`Command::Batch`]: one log entry, one replication round, one
//! fsync per member and one state-machine transaction for all of them.
//! Nothing waits to fill a batch: a write goes out at once when fewer than
//! [`MAX_BATCHES_IN_FLIGHT`] batches are being replicated, and otherwise
//! joins the next batch, so batches grow only under load.

// The error side is the reply itself (an `MdsResponse`), not a failure to box.
#![allow(clippy::result_large_err)]
use std::sync::Arc;

use aspen_proto::mds::MdsResponse;
use tokio::sync::{Mutex, oneshot};

use super::raft_net::Raft;
use super::service::refusal;
use crate::raft::{Command, Response};

/// Batches being replicated at once.
pub const MAX_BATCHES_IN_FLIGHT: usize = 1;
/// The most commands one batch carries.
pub const MAX_BATCH_COMMANDS: usize = 256;
/// The most encoded bytes one batch carries (a log entry's size bound; an
/// xattr value alone may be 64 KiB).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

type Outcome = Result<Response, MdsResponse>;

struct Queued {
    command: Command,
    bytes: usize,
    done: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Queue {
    in_flight: usize,
    waiting: std::collections::VecDeque<Queued>,
}

/// The write batcher of one member.
pub struct WriteBatcher {
    raft: Raft,
    queue: Mutex<Queue>,
}

impl WriteBatcher {
    pub fn new(raft: Raft) -> Arc<WriteBatcher> {
        Arc::new(WriteBatcher {
            raft,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// Replicates `command` (in a batch with others) and returns its answer.
    pub async fn write(self: &Arc<Self>, command: Command) -> Outcome {
        let bytes = postcard::experimental::serialized_size(&command)
            .map_err(|e| MdsResponse::Failed(e.to_string()))?;
        let (done, outcome) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().await;
            queue.waiting.push_back(Queued {
                command,
                bytes,
                done,
            });
            let start = queue.in_flight < MAX_BATCHES_IN_FLIGHT;
            queue.in_flight += usize::from(start);
            start
        };
        if start {
            // The writer that finds the batcher idle sends the first batch
            // itself (no task hop on an idle member); a task takes over if
            // more writes arrived meanwhile.
            if self.send_next().await {
                tokio::spawn(self.clone().drive());
            }
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(MdsResponse::Failed("write batcher stopped".into())))
    }

    /// Sends batches while writes are waiting.
    async fn drive(self: Arc<Self>) {
        while self.send_next().await {}
    }

    /// Sends the next batch; whether more writes wait. When none do, this
    /// driver stops counting as in flight.
    async fn send_next(&self) -> bool {
        let batch = take_batch(&mut self.queue.lock().await.waiting);
        if !batch.is_empty() {
            self.send(batch).await;
        }
        let mut queue = self.queue.lock().await;
        if queue.waiting.is_empty() {
            queue.in_flight -= 1;
            return false;
        }
        true
    }

    async fn send(&self, mut batch: Vec<Queued>) {
        if batch.len() == 1 {
            let queued = batch.remove(0);
            let outcome = self.replicate(queued.command).await;
            let _ = queued.done.send(outcome);
            return;
        }
        let (commands, senders): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|q| (q.command, q.done)).unzip();
        match self.replicate(Command::Batch(commands)).await {
            Ok(Response::Batch(responses)) if responses.len() == senders.len() => {
                for (done, response) in senders.into_iter().zip(responses) {
                    let _ = done.send(Ok(response));
                }
            }
            Ok(other) => {
                let failure = MdsResponse::Failed(format!("unexpected batch reply {other:?}"));
                for done in senders {
                    let _ = done.send(Err(failure.clone()));
                }
            }
            Err(response) => {
                for done in senders {
                    let _ = done.send(Err(response.clone()));
                }
            }
        }
    }

    /// Replicates one command on its own, outside any batch.
    pub(super) async fn replicate(&self, command: Command) -> Outcome {
        self.raft
            .client_write(command)
            .await
            .map(|written| written.data)
            .map_err(|error| refusal(&error))
    }
}

/// The oldest waiting writes that fit in one batch (always at least one).
fn take_batch(waiting: &mut std::collections::VecDeque<Queued>) -> Vec<Queued> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(next) = waiting.front() {
        let full = batch.len() == MAX_BATCH_COMMANDS || bytes + next.bytes > MAX_BATCH_BYTES;
        if full && !batch.is_empty() {
            break;
        }
        bytes += next.bytes;
        batch.extend(waiting.pop_front());
    }
    batch
}
