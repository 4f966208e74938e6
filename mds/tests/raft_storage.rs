//! openraft's storage conformance suite against the SQLite log store and
//! state machine, plus checks of what the suite does not cover: commands
//! applied through Raft entries, atomic batches, snapshots that restore.

use aspen_mds::namespace::{NsOp, NsReply, OpContext, SessionId};
use aspen_mds::raft::log_store::LogStore;
use aspen_mds::raft::state_machine::StateMachineStore;
use aspen_mds::raft::{Command, Entry, Response, StorageError, TypeConfig};
use aspen_proto::fs::{Caller, Timestamp};
use aspen_proto::{Errno, FileLayout, InodeId};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use tempfile::TempDir;

/// Builds stores for member `own_id`. The suite's entries are mostly
/// node 0's: as member 0 the log appends them as their leader, as any other
/// member as a follower.
struct SqliteStores {
    own_id: u64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SqliteStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = LogStore::open(&dir.path().join("log.db"), self.own_id).expect("log store opens");
        let state = StateMachineStore::open(dir.path()).expect("state machine opens");
        Ok((dir, log, state))
    }
}

#[test]
fn openraft_storage_conformance_suite_as_the_leader() {
    Suite::test_all(SqliteStores { own_id: 0 }).unwrap();
}

#[test]
fn openraft_storage_conformance_suite_as_a_follower() {
    Suite::test_all(SqliteStores { own_id: 5 }).unwrap();
}

fn entry(index: u64, op: NsOp) -> Entry {
    let ctx = OpContext {
        caller: Caller::root(),
        now: Timestamp::new(index as i64, 0),
        session: SessionId(1),
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Command::Namespace {
            op,
            ctx,
            request: 0,
        }),
    }
}

fn format() -> NsOp {
    NsOp::Format {
        mode: 0o755,
        uid: 0,
        gid: 0,
        layout: FileLayout::default(),
    }
}

fn mkdir(name: &str) -> NsOp {
    NsOp::Mkdir {
        parent: InodeId::ROOT,
        name: name.into(),
        mode: 0o755,
        umask: 0,
    }
}

#[tokio::test]
async fn entries_apply_commands_and_record_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let responses = sm
        .apply(vec![
            entry(1, format()),
            entry(2, mkdir("a")),
            entry(3, mkdir("a")),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&responses[0], Response::Namespace(Ok(NsReply::Attr(root))) if root.ino == InodeId::ROOT)
    );
    assert!(matches!(
        responses[1],
        Response::Namespace(Ok(NsReply::Attr(_)))
    ));
    assert_eq!(
        responses[2],
        Response::Namespace(Err(Errno::EEXIST)),
        "a failed command is still applied (as a failure)"
    );
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 3);
    drop(sm);
    // Reopened: the state and the applied index survive.
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 3);
    assert!(
        sm.read(|ns| ns.lookup(InodeId::ROOT, b"a", &Caller::root()).unwrap())
            .is_ok()
    );
}

#[tokio::test]
async fn a_snapshot_installs_on_another_member() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = StateMachineStore::open(leader_dir.path()).unwrap();
    leader
        .apply(vec![entry(1, format()), entry(2, mkdir("kept"))])
        .await
        .unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id.unwrap().index, 2);

    let mut follower = StateMachineStore::open(follower_dir.path()).unwrap();
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    let mut source = snapshot.snapshot;
    tokio::io::copy(&mut source, &mut *receiving).await.unwrap();
    follower
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .unwrap();
    assert_eq!(follower.applied_state().await.unwrap().0.unwrap().index, 2);
    assert!(
        follower
            .read(|ns| ns.lookup(InodeId::ROOT, b"kept", &Caller::root()).unwrap())
            .is_ok()
    );
    // The follower serves the installed snapshot, also after a restart.
    drop(follower);
    let mut follower = StateMachineStore::open(follower_dir.path()).unwrap();
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    // And keeps applying after it.
    follower
        .apply(vec![entry(3, mkdir("after"))])
        .await
        .unwrap();
    assert!(
        follower
            .read(|ns| ns.lookup(InodeId::ROOT, b"after", &Caller::root()).unwrap())
            .is_ok()
    );
}

/// The log's write-ahead file is filled with zeros past its frames when the
/// store opens; the files as a crash would leave them (copied while the
/// store is open) still recover everything that was synced.
#[tokio::test]
async fn a_log_copied_while_open_recovers_over_its_preallocated_tail() {
    use openraft::storage::RaftLogStorage;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let mut log = LogStore::open(&path, 1).unwrap();
    let wal = dir.path().join("log.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() >= 1 << 20,
        "preallocated"
    );
    let vote = openraft::Vote::new_committed(7, 3);
    log.save_vote(&vote).await.unwrap();

    let crashed = tempfile::tempdir().unwrap();
    std::fs::copy(&path, crashed.path().join("log.db")).unwrap();
    std::fs::copy(&wal, crashed.path().join("log.db-wal")).unwrap();
    let mut recovered = LogStore::open(&crashed.path().join("log.db"), 1).unwrap();
    assert_eq!(recovered.read_vote().await.unwrap(), Some(vote));
}
