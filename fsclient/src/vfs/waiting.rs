//! This client's reads and writes that wait for a cap while the kernel
//! holds pages for them, by inode, and the order in which a revocation has
//! the kernel drop a file's pages while they wait.
//!
//! A write through the page cache (FUSE without its write-back cache)
//! copies its bytes into the cached pages and keeps the last page it fills
//! only in part locked until the daemon answers, when that page was not
//! cached before (a page that was is unlocked at once); the write-back of
//! a shared mapping's dirty pages keeps all of them under write-back; a
//! read keeps the pages it fills locked. Dropping a range of pages waits
//! for each such page. So a revocation that dropped all of a file's pages
//! waited for this client's own write, and that write waits for a cap the
//! MDS grants only once the revocation is answered: two mounts that held
//! Shared and wrote one file at once each waited for the other until both
//! were evicted. A revocation therefore drops every page but those of the
//! waiting requests first, and then those, on threads of their own and
//! without waiting long: a page held for a request holds no cached data
//! the request does not replace (a write's locked page was not cached and
//! is filled only in part; a read's is being filled, under the new cap).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_proto::InodeId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::lock;

/// How long a revocation waits, once the kernel has begun, for it to drop
/// pages that a write of this client waiting for a cap may hold.
pub const PAGE_DROP_PATIENCE: Duration = Duration::from_millis(10);
/// How long a revocation waits for the kernel to drop a file's other pages
/// while a write of this client waits for a cap on it (far longer than
/// dropping any file's pages takes, unless the kernel holds more of a
/// write's pages than [`HeldPages`] says).
pub const STUCK_PAGE_DROP: Duration = Duration::from_secs(1);

/// Which pages of a write the kernel holds until the write is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldPages {
    /// None: `O_DIRECT`, a write the client makes itself (the copy of
    /// `copy_file_range`), a seek.
    None,
    /// A `write(2)` through the page cache: at most its last page.
    Last,
    /// A read, or the write-back of a shared mapping's dirty pages: all it
    /// covers.
    All,
}

/// Has the kernel drop its pages of one file over a range of bytes (to the
/// end of the file when the range ends at `u64::MAX`), and its attributes.
/// Blocks while the kernel waits for locked pages.
pub(super) type DropRange = Arc<dyn Fn(Range<u64>) + Send + Sync>;

/// The bytes of a file whose pages a revocation drops: first `others`
/// (the last range runs to `u64::MAX`, so there is always one), then
/// `written`, the pages waiting writes may hold.
pub(super) struct DropPlan {
    pub(super) others: Vec<Range<u64>>,
    pub(super) written: Vec<Range<u64>>,
    /// The first id of a write that began after the plan was made.
    pub(super) later_requests: u64,
}

/// The writes waiting for a cap; an inode's entry only while one waits.
pub(super) struct WaitingRequests {
    page_size: u64,
    writes: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    next_id: u64,
    by_inode: HashMap<InodeId, Vec<Registered>>,
}

struct Registered {
    id: u64,
    /// The indexes of the pages the kernel may hold for it.
    pages: Range<u64>,
}

/// A write noted in [`WaitingRequests`], until dropped.
pub(super) struct WaitingRequest<'a> {
    writes: &'a WaitingRequests,
    ino: InodeId,
    id: u64,
}

impl Drop for WaitingRequest<'_> {
    fn drop(&mut self) {
        let mut writes = lock(&self.writes.writes);
        let Some(waiting) = writes.by_inode.get_mut(&self.ino) else {
            return;
        };
        waiting.retain(|write| write.id != self.id);
        if waiting.is_empty() {
            writes.by_inode.remove(&self.ino);
        }
    }
}

/// The kernel's page size (the unit its page cache drops).
pub(super) fn page_size() -> u64 {
    const USUAL: u64 = 4096;
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(USUAL)
}

impl WaitingRequests {
    pub(super) fn new(page_size: u64) -> WaitingRequests {
        WaitingRequests {
            page_size: page_size.max(1),
            writes: Mutex::new(Waiting::default()),
        }
    }

    /// Notes a write of `len` bytes at `offset` to `ino` until it is
    /// answered (the guard dropped); nothing for one that holds no page.
    pub(super) fn begin(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
        held: HeldPages,
    ) -> Option<WaitingRequest<'_>> {
        let last_page = offset.saturating_add(len.max(1) - 1) / self.page_size;
        let first_page = match held {
            HeldPages::None => return None,
            HeldPages::Last => last_page,
            HeldPages::All => offset / self.page_size,
        };
        let mut writes = lock(&self.writes);
        let id = writes.next_id;
        writes.next_id += 1;
        writes.by_inode.entry(ino).or_default().push(Registered {
            id,
            pages: first_page..last_page.saturating_add(1),
        });
        Some(WaitingRequest {
            writes: self,
            ino,
            id,
        })
    }

    /// Whether a write to `ino` that began at or after `first_id` waits.
    pub(super) fn waits_since(&self, ino: InodeId, first_id: u64) -> bool {
        lock(&self.writes)
            .by_inode
            .get(&ino)
            .is_some_and(|waiting| waiting.iter().any(|write| write.id >= first_id))
    }

    /// How a revocation drops the pages of `ino` now.
    pub(super) fn drop_plan(&self, ino: InodeId) -> DropPlan {
        let writes = lock(&self.writes);
        let mut held: Vec<Range<u64>> =
            writes.by_inode.get(&ino).map_or_else(Vec::new, |waiting| {
                waiting.iter().map(|write| write.pages.clone()).collect()
            });
        held.sort_unstable_by_key(|pages| pages.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(held.len());
        for pages in held {
            match merged.last_mut() {
                Some(last) if pages.start <= last.end => last.end = last.end.max(pages.end),
                _ => merged.push(pages),
            }
        }
        let written: Vec<Range<u64>> = merged.into_iter().map(|pages| self.bytes(pages)).collect();
        let mut others = Vec::with_capacity(written.len() + 1);
        let mut start = 0;
        for skipped in &written {
            if skipped.start > start {
                others.push(start..skipped.start);
            }
            start = skipped.end;
        }
        others.push(start..u64::MAX);
        DropPlan {
            others,
            written,
            later_requests: writes.next_id,
        }
    }

    fn bytes(&self, pages: Range<u64>) -> Range<u64> {
        pages.start.saturating_mul(self.page_size)..pages.end.saturating_mul(self.page_size)
    }
}

/// Has the kernel drop the pages of `ino` for a revocation, and returns
/// once it may be acknowledged: the pages outside the waiting writes'
/// first, then each waiting write's on a thread of its own, waiting for
/// these only [`PAGE_DROP_PATIENCE`] (one a write holds holds no cached
/// data, and goes once the write is answered). A write that begins
/// waiting while the other pages go may hold one of them: they are
/// dropped again around its pages. After [`STUCK_PAGE_DROP`] with a write
/// waiting, the revocation goes on and the kernel drops the rest later.
pub(super) async fn drop_pages(writes: &WaitingRequests, ino: InodeId, drop_range: &DropRange) {
    let began = Instant::now();
    let mut plan = writes.drop_plan(ino);
    let mut others = Dropping::start(drop_range, plan.others.clone());
    while !others.finish_within(PAGE_DROP_PATIENCE).await {
        if writes.waits_since(ino, plan.later_requests) {
            tracing::debug!(
                ino = ino.0,
                "a write began waiting: dropping the pages around it"
            );
            plan = writes.drop_plan(ino);
            others = Dropping::start(drop_range, plan.others.clone());
        } else if began.elapsed() >= STUCK_PAGE_DROP && writes.waits_since(ino, 0) {
            tracing::warn!(
                ino = ino.0,
                "the kernel holds pages a revocation drops: going on"
            );
            break;
        }
    }
    let mut written: Vec<Dropping> = plan
        .written
        .into_iter()
        .map(|pages| Dropping::start(drop_range, vec![pages]))
        .collect();
    for pages in &mut written {
        if !pages.finish_within(PAGE_DROP_PATIENCE).await {
            tracing::debug!(ino = ino.0, "a waiting write holds its page");
        }
    }
}

/// Pages being dropped on a thread of their own.
struct Dropping {
    began: Option<oneshot::Receiver<()>>,
    done: JoinHandle<()>,
}

impl Dropping {
    fn start(drop_range: &DropRange, ranges: Vec<Range<u64>>) -> Dropping {
        let (began, begins) = oneshot::channel();
        let drop_range = drop_range.clone();
        let done = tokio::task::spawn_blocking(move || {
            let _ = began.send(());
            for range in ranges {
                drop_range(range);
            }
        });
        Dropping {
            began: Some(begins),
            done,
        }
    }

    /// Whether the pages are gone within `patience` of the thread's start.
    async fn finish_within(&mut self, patience: Duration) -> bool {
        if let Some(began) = self.began.take() {
            let _ = began.await;
        }
        tokio::time::timeout(patience, &mut self.done).await.is_ok()
    }
}

#[cfg(test)]
// A plan's ranges are ranges of bytes, one of them often alone.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Condvar;

    const PAGE: u64 = 4096;
    const INO: InodeId = InodeId(7);

    fn plan(writes: &WaitingRequests) -> (Vec<Range<u64>>, Vec<Range<u64>>) {
        let plan = writes.drop_plan(INO);
        (plan.others, plan.written)
    }

    #[test]
    fn with_no_write_waiting_every_page_goes_at_once() {
        let writes = WaitingRequests::new(PAGE);
        assert_eq!(plan(&writes), (vec![0..u64::MAX], vec![]));
        assert!(writes.begin(INO, 0, 10, HeldPages::None).is_none());
        assert_eq!(plan(&writes), (vec![0..u64::MAX], vec![]));
    }

    #[test]
    fn the_last_page_of_each_waiting_write_goes_after_the_others() {
        let writes = WaitingRequests::new(PAGE);
        // Bytes 100..612 (page 0), 8192..12300 (pages 2 and 3: the last
        // is 3), another write ending on page 3, and one to another file.
        let first = writes.begin(INO, 100, 512, HeldPages::Last);
        let second = writes.begin(INO, 2 * PAGE, PAGE + 12, HeldPages::Last);
        let third = writes.begin(INO, 3 * PAGE + 500, 10, HeldPages::Last);
        let other_file = writes.begin(InodeId(8), 0, 10, HeldPages::Last);
        assert_eq!(
            plan(&writes),
            (
                vec![PAGE..3 * PAGE, 4 * PAGE..u64::MAX],
                vec![0..PAGE, 3 * PAGE..4 * PAGE]
            )
        );
        drop((first, third));
        assert_eq!(
            plan(&writes),
            (
                vec![0..3 * PAGE, 4 * PAGE..u64::MAX],
                vec![3 * PAGE..4 * PAGE]
            )
        );
        drop(second);
        assert_eq!(plan(&writes), (vec![0..u64::MAX], vec![]));
        drop(other_file);
        assert!(!writes.waits_since(InodeId(8), 0));
    }

    #[test]
    fn a_mappings_write_back_keeps_every_page_it_covers_for_last() {
        let writes = WaitingRequests::new(PAGE);
        // Pages 1 to 3, and then page 4 (the last of a write from page 2),
        // next to them; then page 6 on its own.
        let _mapped = writes.begin(INO, PAGE, 3 * PAGE, HeldPages::All);
        let _next = writes.begin(INO, 2 * PAGE + 1, 2 * PAGE, HeldPages::Last);
        let _apart = writes.begin(INO, 6 * PAGE, 10, HeldPages::Last);
        assert_eq!(
            plan(&writes),
            (
                vec![0..PAGE, 5 * PAGE..6 * PAGE, 7 * PAGE..u64::MAX],
                vec![PAGE..5 * PAGE, 6 * PAGE..7 * PAGE]
            )
        );
    }

    #[test]
    fn only_writes_begun_after_a_plan_count_as_later() {
        let writes = WaitingRequests::new(PAGE);
        let _before = writes.begin(INO, 0, 10, HeldPages::Last);
        let plan = writes.drop_plan(INO);
        assert!(!writes.waits_since(INO, plan.later_requests));
        let after = writes.begin(INO, PAGE, 10, HeldPages::Last);
        assert!(writes.waits_since(INO, plan.later_requests));
        assert!(!writes.waits_since(InodeId(8), plan.later_requests));
        drop(after);
        assert!(!writes.waits_since(INO, plan.later_requests));
    }

    #[test]
    fn an_empty_write_and_one_at_the_end_of_the_offsets_do_not_overflow() {
        let writes = WaitingRequests::new(PAGE);
        let _empty = writes.begin(INO, 5 * PAGE, 0, HeldPages::Last);
        let _last = writes.begin(INO, u64::MAX - 1, 100, HeldPages::All);
        let (others, written) = plan(&writes);
        assert_eq!(others.first(), Some(&(0..5 * PAGE)));
        assert_eq!(written.first(), Some(&(5 * PAGE..6 * PAGE)));
    }

    /// A file's page cache as the kernel keeps it, for [`drop_pages`]:
    /// dropping a range waits for each locked page in it, in order.
    #[derive(Default)]
    struct FakeCache {
        state: Mutex<CacheState>,
        unlocked: Condvar,
    }

    #[derive(Default)]
    struct CacheState {
        locked: HashSet<u64>,
        dropped: HashSet<u64>,
    }

    /// Pages in the fake file.
    const FILE_PAGES: u64 = 16;

    impl FakeCache {
        fn locking(pages: &[u64]) -> Arc<FakeCache> {
            let cache = Arc::new(FakeCache::default());
            cache.state.lock().unwrap().locked.extend(pages);
            cache
        }

        fn drop_range(self: &Arc<FakeCache>) -> DropRange {
            let cache = self.clone();
            Arc::new(move |range: Range<u64>| {
                let end = range.end.min(FILE_PAGES * PAGE);
                for page in range.start / PAGE..end.div_ceil(PAGE) {
                    let state = cache.state.lock().unwrap();
                    let mut state = cache
                        .unlocked
                        .wait_while(state, |state| state.locked.contains(&page))
                        .unwrap();
                    state.dropped.insert(page);
                }
            })
        }

        fn unlock(&self, page: u64) {
            self.state.lock().unwrap().locked.remove(&page);
            self.unlocked.notify_all();
        }

        /// Unlocks every page once dropped, so no dropping thread is left
        /// waiting when a test fails (the runtime waits for them).
        fn unlocked_at_end(self: &Arc<FakeCache>) -> UnlockAll {
            UnlockAll(self.clone())
        }

        /// The pages not dropped (yet).
        fn cached(&self) -> Vec<u64> {
            let state = self.state.lock().unwrap();
            (0..FILE_PAGES)
                .filter(|page| !state.dropped.contains(page))
                .collect()
        }
    }

    struct UnlockAll(Arc<FakeCache>);

    impl Drop for UnlockAll {
        fn drop(&mut self) {
            self.0.state.lock().unwrap().locked.clear();
            self.0.unlocked.notify_all();
        }
    }

    #[tokio::test]
    async fn with_nothing_locked_every_page_goes_before_the_revocation_goes_on() {
        let writes = WaitingRequests::new(PAGE);
        let cache = FakeCache::locking(&[]);
        drop_pages(&writes, INO, &cache.drop_range()).await;
        assert_eq!(cache.cached(), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn a_waiting_requests_locked_page_does_not_hold_back_the_revocation() {
        let writes = WaitingRequests::new(PAGE);
        // Page 3 locked for its write; page 9 of another waiting write is
        // not (it was cached before), so it goes before the ack.
        let _locking = writes.begin(INO, 3 * PAGE + 10, 100, HeldPages::Last);
        let _unlocked = writes.begin(INO, 9 * PAGE, 100, HeldPages::Last);
        let cache = FakeCache::locking(&[3]);
        let _unlock = cache.unlocked_at_end();
        promptly(drop_pages(&writes, INO, &cache.drop_range())).await;
        assert_eq!(cache.cached(), vec![3]);
        cache.unlock(3);
        wait_until_cached(&cache, &[]).await;
    }

    #[tokio::test]
    async fn pages_past_a_write_that_began_meanwhile_go_before_the_revocation_goes_on() {
        let writes = Arc::new(WaitingRequests::new(PAGE));
        // Page 5 is locked by a write the client has not noted yet.
        let cache = FakeCache::locking(&[5]);
        let _unlock = cache.unlocked_at_end();
        let later = writes.clone();
        let noted = tokio::spawn(async move {
            tokio::time::sleep(3 * PAGE_DROP_PATIENCE).await;
            let write = later.begin(INO, 5 * PAGE, 1, HeldPages::Last);
            tokio::time::sleep(STUCK_PAGE_DROP).await;
            drop(write);
        });
        promptly(drop_pages(&writes, INO, &cache.drop_range())).await;
        assert_eq!(cache.cached(), vec![5]);
        noted.abort();
        cache.unlock(5);
    }

    #[tokio::test]
    async fn a_page_locked_by_no_waiting_write_is_waited_for() {
        let writes = WaitingRequests::new(PAGE);
        let cache = FakeCache::locking(&[2]);
        let _unlock = cache.unlocked_at_end();
        let unlocker = cache.clone();
        tokio::spawn(async move {
            tokio::time::sleep(5 * PAGE_DROP_PATIENCE).await;
            unlocker.unlock(2);
        });
        drop_pages(&writes, INO, &cache.drop_range()).await;
        assert_eq!(cache.cached(), Vec::<u64>::new());
    }

    /// Runs `dropping` to its end, which must come well before the
    /// revocation would give up on stuck pages.
    async fn promptly(dropping: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(STUCK_PAGE_DROP / 2, dropping)
            .await
            .expect("the revocation waited for a page a waiting write holds");
    }

    async fn wait_until_cached(cache: &FakeCache, pages: &[u64]) {
        let deadline = Instant::now() + STUCK_PAGE_DROP;
        while cache.cached() != pages {
            assert!(
                Instant::now() < deadline,
                "still cached: {:?}",
                cache.cached()
            );
            tokio::time::sleep(PAGE_DROP_PATIENCE).await;
        }
    }
}
