//! The primary's side of replication. Entries bound for one replica OSD
//! queue while a message to it is in flight and then go together as the
//! next [`OsdRequest::Replicate`]: for many small writes that is one
//! message, one commit and one log sync at the replica instead of one
//! each. An idle queue sends at once, so a lone write waits for nothing.
//! An entry with a large body goes alone, at once, its bytes not copied
//! into a batch.
//!
//! A PG's entries reach each replica in log order: the queue is first in,
//! first out with one message in flight, and the primary sends a large
//! entry (outside the queue) only while nothing else of its PG is in
//! flight (`gate`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use aspen_placement::{OsdId, PgId};
use aspen_proto::osd::{
    LogEntry, MAX_REPLICATE_BATCH, OsdError, OsdRequest, OsdResponse, ReplicaEntry,
};
use aspen_proto::transport::{Bytes, RpcClient};
use tokio::sync::oneshot;

use super::service::REPLICATE_TIMEOUT;

/// An entry with a body larger than this goes in a message of its own.
pub const BATCHED_BODY_MAX: usize = 256 << 10;
/// The most body bytes one batched message carries.
pub const BATCH_BYTES_MAX: usize = 4 << 20;

/// Whether a replica made an entry durable.
pub(super) type Replicated = oneshot::Receiver<Result<(), OsdError>>;

struct Pending {
    client: Arc<RpcClient>,
    entry: ReplicaEntry,
    body: Bytes,
    done: oneshot::Sender<Result<(), OsdError>>,
}

#[derive(Default)]
struct QueueState {
    pending: Vec<Pending>,
    /// Whether a task is sending this queue's messages.
    sending: bool,
}

#[derive(Default)]
struct Queue(Mutex<QueueState>);

impl Queue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One queue per replica OSD.
#[derive(Default)]
pub(super) struct Replicators {
    queues: Mutex<HashMap<OsdId, Arc<Queue>>>,
}

impl Replicators {
    /// Sends `entry` of `pg` (with its write's `body` and the `trees` of its
    /// chunks) to replica `osd` through `client`; the answer comes once the
    /// replica has it durable.
    pub(super) fn send(
        &self,
        osd: OsdId,
        client: Arc<RpcClient>,
        pg: PgId,
        entry: LogEntry,
        body: Bytes,
        trees: Vec<u8>,
    ) -> Replicated {
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            client,
            entry: ReplicaEntry {
                pg,
                epoch: entry.at.epoch,
                entry,
                body_len: body.len() as u64,
                trees,
            },
            body,
            done,
        };
        if pending.body.len() > BATCHED_BODY_MAX {
            tokio::spawn(async move {
                let _ = send_batch(vec![pending]).await;
            });
            return answer;
        }
        let queue = self.queue(osd);
        let start = {
            let mut state = queue.state();
            state.pending.push(pending);
            !std::mem::replace(&mut state.sending, true)
        };
        if start {
            tokio::spawn(drain(queue));
        }
        answer
    }

    fn queue(&self, osd: OsdId) -> Arc<Queue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(osd).or_default().clone()
    }
}

/// Sends the queue's entries, a batch at a time, until it is empty.
async fn drain(queue: Arc<Queue>) {
    loop {
        let batch = {
            let mut state = queue.state();
            if state.pending.is_empty() {
                state.sending = false;
                return;
            }
            let count = batch_len(state.pending.iter().map(|p| p.body.len()));
            state.pending.drain(..count).collect::<Vec<_>>()
        };
        for same_link in split_by_client(batch) {
            if let Err(error) = send_batch(same_link).await {
                // What waits would go down the same dead link: it fails
                // now, as the message did, rather than one message after
                // another each waiting out its time limit.
                let stranded = std::mem::take(&mut queue.state().pending);
                for pending in stranded {
                    let _ = pending.done.send(Err(error.clone()));
                }
            }
        }
    }
}

/// How many of the oldest entries (with bodies of `body_lens`) one
/// message takes: at least one, within the count and byte limits.
fn batch_len(body_lens: impl IntoIterator<Item = usize>) -> usize {
    let mut bytes = 0;
    let mut count = 0;
    for len in body_lens {
        if count == MAX_REPLICATE_BATCH || (count > 0 && bytes + len > BATCH_BYTES_MAX) {
            break;
        }
        bytes += len;
        count += 1;
    }
    count
}

/// Runs of entries for the same link (a map change may have replaced the
/// replica's client between two of them).
fn split_by_client(batch: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut runs: Vec<Vec<Pending>> = Vec::new();
    for pending in batch {
        match runs.last_mut() {
            Some(run) if Arc::ptr_eq(&run[0].client, &pending.client) => run.push(pending),
            _ => runs.push(vec![pending]),
        }
    }
    runs
}

/// Sends one message with `batch` (all for one link) and hands each entry
/// its answer; the error if the message itself failed.
async fn send_batch(batch: Vec<Pending>) -> Result<(), OsdError> {
    let client = batch[0].client.clone();
    let body = if let [only] = &batch[..] {
        only.body.clone()
    } else {
        let mut all = Vec::with_capacity(batch.iter().map(|p| p.body.len()).sum());
        for pending in &batch {
            all.extend_from_slice(&pending.body);
        }
        Bytes::from(all)
    };
    let request = OsdRequest::Replicate {
        entries: batch.iter().map(|p| p.entry.clone()).collect(),
    };
    let answer = client
        .call_within::<_, OsdResponse>(REPLICATE_TIMEOUT, &request, body)
        .await;
    let each = match answer {
        Ok((OsdResponse::ReplicatedEach(each), _)) if each.len() == batch.len() => each,
        Ok((OsdResponse::Failed(error), _)) => vec![Err(error); batch.len()],
        Ok((other, _)) => {
            vec![Err(OsdError::Unavailable(format!("unexpected {other:?}"))); batch.len()]
        }
        Err(error) => {
            let error = OsdError::Unavailable(error.to_string());
            for pending in batch {
                let _ = pending.done.send(Err(error.clone()));
            }
            return Err(error);
        }
    };
    for (pending, result) in batch.into_iter().zip(each) {
        let _ = pending.done.send(result);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_to_the_count_and_byte_limits_and_takes_at_least_one() {
        assert_eq!(batch_len([4096; 10]), 10);
        assert_eq!(
            batch_len(vec![1; MAX_REPLICATE_BATCH + 5]),
            MAX_REPLICATE_BATCH
        );
        let quarter = BATCH_BYTES_MAX / 4;
        assert_eq!(batch_len([quarter; 6]), 4);
        assert_eq!(
            batch_len([BATCH_BYTES_MAX * 2, 1]),
            1,
            "a big one still goes"
        );
        assert_eq!(batch_len([1, BATCH_BYTES_MAX]), 1);
        assert_eq!(batch_len([]), 0);
    }
}
