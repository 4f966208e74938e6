//! Linearizable reads in batches. A read must see every write acknowledged
//! before it arrived, so it waits for a Raft read-index round (a heartbeat
//! to a quorum) that starts after it arrived. Rounds are shared: every
//! reader that arrives while a round is running waits for the next one, so
//! one round serves all of them.

// The error side is the reply itself (an `MdsResponse`), not a failure to box.
#![allow(clippy::result_large_err)]
use std::sync::Arc;

use aspen_proto::mds::MdsResponse;
use tokio::sync::{Mutex, oneshot};

use super::raft_net::Raft;

type Outcome = Result<(), MdsResponse>;

#[derive(Default)]
struct Waiting {
    round_running: bool,
    readers: Vec<oneshot::Sender<Outcome>>,
}

/// The read barrier of one member.
pub struct ReadBarrier {
    raft: Raft,
    waiting: Mutex<Waiting>,
    /// Turns a failed round into the reply readers get (e.g. `NotLeader`).
    refusal: fn(
        &openraft::error::RaftError<
            u64,
            openraft::error::CheckIsLeaderError<u64, crate::raft::MdsNode>,
        >,
    ) -> MdsResponse,
}

impl ReadBarrier {
    pub fn new(
        raft: Raft,
        refusal: fn(
            &openraft::error::RaftError<
                u64,
                openraft::error::CheckIsLeaderError<u64, crate::raft::MdsNode>,
            >,
        ) -> MdsResponse,
    ) -> Arc<ReadBarrier> {
        Arc::new(ReadBarrier {
            raft,
            waiting: Mutex::new(Waiting::default()),
            refusal,
        })
    }

    /// Returns once the local state includes every write acknowledged
    /// before this call (or the reply to give instead).
    pub async fn wait(self: &Arc<Self>) -> Outcome {
        let (done, outcome) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock().await;
            waiting.readers.push(done);
            !std::mem::replace(&mut waiting.round_running, true)
        };
        if start {
            tokio::spawn(self.clone().drive());
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(MdsResponse::Failed("read barrier stopped".into())))
    }

    /// Runs rounds while readers are waiting.
    async fn drive(self: Arc<Self>) {
        loop {
            let readers = {
                let mut waiting = self.waiting.lock().await;
                if waiting.readers.is_empty() {
                    waiting.round_running = false;
                    return;
                }
                std::mem::take(&mut waiting.readers)
            };
            let outcome = match self.raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(error) => Err((self.refusal)(&error)),
            };
            for reader in readers {
                let _ = reader.send(outcome.clone());
            }
        }
    }
}
