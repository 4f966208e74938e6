//! Per-inode turns: one holder at a time per inode, and an inode's entry
//! only while someone holds or waits for its turn. Two kinds are kept:
//! - Reports of a file's size and mtime. A report is worked out from the
//!   cache and sent later; one worked out before a truncation or a utimes
//!   and applied after it would undo it (the MDS grows a file to any size
//!   a writer reports). So a report holds its inode's turn from reading
//!   the cache to its answer, and a size or time change holds it from its
//!   own last report to its answer.
//! - Acknowledgements of revocations. A request for a cap that reached
//!   the MDS before this client's ack of the same inode would be granted
//!   with the size from before the ack (which carries this client's
//!   writes). So a revocation holds the inode's ack turn from the cap's
//!   change to the ack's answer (from its start when it takes the cap
//!   away, as a read arriving meanwhile waits for it too), and a `Want` or
//!   `GetAttr` waits for it (other requests that grant, a lookup or an
//!   open, find the cache showing neither cap nor attributes until then:
//!   `CapCache::acked`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aspen_proto::InodeId;
use tokio::sync::OwnedMutexGuard;

use super::lock;

/// The turns in use; an inode's entry goes when nobody holds or waits
/// for its turn.
#[derive(Default)]
pub(super) struct InodeTurns(Mutex<HashMap<InodeId, Arc<tokio::sync::Mutex<()>>>>);

/// An inode's turn, held until dropped.
pub(super) struct Turn<'a> {
    turns: &'a InodeTurns,
    ino: InodeId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl InodeTurns {
    pub(super) async fn take(&self, ino: InodeId) -> Turn<'_> {
        let turn = lock(&self.0).entry(ino).or_default().clone();
        let guard = turn.lock_owned().await;
        Turn {
            turns: self,
            ino,
            guard: Some(guard),
        }
    }

    /// Waits until nobody holds `ino`'s turn.
    pub(super) async fn wait_free(&self, ino: InodeId) {
        drop(self.take(ino).await);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut turns = lock(&self.turns.0);
        // Waiters hold a clone: the map's own is the last one only when
        // nobody wants the turn.
        if turns
            .get(&self.ino)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            turns.remove(&self.ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_turn_is_one_at_a_time_and_its_entry_goes_with_the_last_holder() {
        let turns = Arc::new(InodeTurns::default());
        let ino = InodeId(7);
        let first = turns.take(ino).await;
        let waiting = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _second = turns.take(ino).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second waits for the first");
        let _other = turns.take(InodeId(8)).await;
        drop(_other);
        assert_eq!(turns.len(), 1, "another inode's turn is its own");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(turns.len(), 0, "no turn is kept once nobody wants it");
    }
}
