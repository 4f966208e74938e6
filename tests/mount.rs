//! The filesystem through a real FUSE mount of a replicated cluster: one
//! MDS and three `aspen osd` processes (pool size 3) and an `aspen mount`
//! process. File data really spreads over the OSDs, long files, writes
//! past 32-bit offsets and mmap read back intact, concurrent writers do
//! not disturb each other, a truncate or unlink frees the objects, a copy
//! survives kill -9 of an OSD, SIGTERM unmounts cleanly, and a full
//! cluster or damaged data surfaces as ENOSPC or EIO, never as wrong
//! bytes.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use aspen_fsclient::fuse::is_mounted;
use aspen_osd::bench::pattern;
use aspen_osd::client::ObjectClient;
use aspen_placement::PoolId;
use aspen_proto::InodeId;
use aspen_proto::cluster::ClusterConfig;
use aspen_proto::ids::{ObjectId, ObjectNo};
use common::{Daemons, create_data_pool, eventually, require_fuse, start_mds, start_osds_holding};

const DATA_POOL: PoolId = PoolId(1);
const OBJECT_SIZE: u64 = 4 << 20;
const MOUNT_DAEMON: u64 = 100;

fn object_name(ino: u64, objno: u64) -> Vec<u8> {
    ObjectId {
        pool: DATA_POOL,
        ino: InodeId(ino),
        objno: ObjectNo(objno),
    }
    .name()
    .into_bytes()
}

/// blake3 of a file, read in 1 MiB pieces.
fn digest(path: &Path) -> blake3::Hash {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            return hasher.finalize();
        }
        hasher.update(&buffer[..read]);
    }
}

/// Writes `len` pattern bytes (seeded) to `path`; returns their digest.
fn write_pattern(path: &Path, len: u64, seed: u64) -> blake3::Hash {
    let mut file = std::fs::File::create(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut written = 0;
    let mut piece = 0;
    while written < len {
        let chunk = pattern(
            seed * 1_000_003 + piece,
            (len - written).min(1 << 20) as usize,
        );
        file.write_all(&chunk).unwrap();
        hasher.update(&chunk);
        written += chunk.len() as u64;
        piece += 1;
    }
    file.sync_all().unwrap();
    hasher.finalize()
}

/// How much the large-file check streams (three copies go to disk).
const STREAMED_LEN: u64 = 512 << 20;
/// Offsets that a 32-bit signed or unsigned offset would get wrong.
const PAST_32_BIT_OFFSETS: [u64; 2] = [2 << 30, 4 << 30];
/// The piece written across each of them.
const PIECE_LEN: usize = 2 << 20;

/// Asks the kernel to forget `path`'s clean cached pages, so the next read
/// comes from the cluster.
fn drop_cached_pages(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// Writes a piece across each of [`PAST_32_BIT_OFFSETS`] into the file at
/// `path`, then reads the pieces and a hole back from the cluster.
fn check_writes_past_32_bit_offsets(path: &Path) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let pieces: Vec<(u64, Vec<u8>)> = PAST_32_BIT_OFFSETS
        .iter()
        .enumerate()
        .map(|(n, boundary)| {
            let piece = pattern(77 + n as u64, PIECE_LEN);
            let offset = boundary - PIECE_LEN as u64 / 2;
            file.write_all_at(&piece, offset).unwrap();
            (offset, piece)
        })
        .collect();
    file.sync_all().unwrap();
    drop(file);
    drop_cached_pages(path);
    let end = pieces
        .last()
        .map(|(offset, piece)| offset + piece.len() as u64);
    assert_eq!(Some(std::fs::metadata(path).unwrap().len()), end);
    let file = std::fs::File::open(path).unwrap();
    for (offset, piece) in &pieces {
        let mut back = vec![0u8; piece.len()];
        file.read_exact_at(&mut back, *offset).unwrap();
        assert!(back == *piece, "the piece at {offset} read back differs");
    }
    // Midway between the streamed part and the first piece.
    let hole_at = (STREAMED_LEN + PAST_32_BIT_OFFSETS[0]) / 2;
    let mut hole = vec![1u8; PIECE_LEN];
    file.read_exact_at(&mut hole, hole_at).unwrap();
    assert!(
        hole.iter().all(|&byte| byte == 0),
        "a hole read back non-zero"
    );
}

struct Cluster {
    _root: tempfile::TempDir,
    root: PathBuf,
    mountpoint: PathBuf,
    daemons: Daemons,
    runtime: tokio::runtime::Runtime,
    objects: ObjectClient,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_holding(None)
    }

    /// A cluster whose OSDs each hold at most `capacity` bytes.
    fn start_holding(capacity: Option<u64>) -> Cluster {
        require_fuse();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut daemons = Daemons::new();
        let config = start_mds(&root, &mut daemons);
        start_osds_holding(&root, &mut daemons, &config, 3, capacity);
        create_data_pool(&config, 32);
        let mountpoint = root.join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        daemons.spawn(
            MOUNT_DAEMON,
            &["mount", mountpoint.to_str().unwrap(), "--config", &config],
            &root.join("mount.log"),
        );
        eventually("the mount", 60, || is_mounted(&mountpoint).then_some(()));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = ClusterConfig::load(Path::new(&config)).unwrap();
        let objects = runtime.block_on(ObjectClient::connect(&cluster)).unwrap();
        Cluster {
            _root: dir,
            root,
            mountpoint,
            daemons,
            runtime,
            objects,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    fn object_exists(&self, ino: u64, objno: u64) -> bool {
        let name = object_name(ino, objno);
        self.runtime
            .block_on(self.objects.stat(DATA_POOL, &name))
            .unwrap()
            .is_some()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

#[test]
fn a_mounted_replicated_cluster_keeps_file_data_right() {
    let cluster = Cluster::start();

    // Data spreads over objects, PGs and every OSD.
    let spread = cluster.path("spread");
    let expected = write_pattern(&spread, 16 * OBJECT_SIZE, 1);
    assert_eq!(digest(&spread), expected);
    let ino = std::fs::metadata(&spread).unwrap().ino();
    let map = cluster.runtime.block_on(cluster.objects.map());
    let mut primaries = BTreeSet::new();
    for objno in 0..16 {
        let name = object_name(ino, objno);
        let pg = map.osdmap.object_pg(DATA_POOL, &name).unwrap();
        let mapping = map.osdmap.pg_mapping(pg).unwrap();
        primaries.insert(mapping.acting_primary.unwrap());
        for osd in mapping.acting.iter().flatten() {
            let held = cluster
                .runtime
                .block_on(cluster.objects.list_pg(*osd, pg))
                .unwrap();
            assert!(
                held.contains(&name),
                "{osd:?} lacks object {objno} of {pg:?}"
            );
        }
    }
    assert_eq!(primaries.len(), 3, "16 objects led by {primaries:?}");

    // Truncation cuts the objects at once; unlink purges the rest.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&spread)
        .unwrap()
        .set_len(OBJECT_SIZE + 10)
        .unwrap();
    assert!(cluster.object_exists(ino, 1));
    assert!(
        !cluster.object_exists(ino, 2),
        "objects past the new end remain"
    );
    let mut file = std::fs::File::open(&spread).unwrap();
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(OBJECT_SIZE)).unwrap();
    file.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, pattern(1_000_003 + 4, 1 << 20)[..10]);
    drop(file);
    std::fs::remove_file(&spread).unwrap();
    eventually("the MDS to purge the unlinked file", 30, || {
        (!cluster.object_exists(ino, 0) && !cluster.object_exists(ino, 1)).then_some(())
    });

    // A file written back but not yet reported to the MDS (closed a moment
    // ago, in a directory this mount made) is purged whole when unlinked.
    let fresh = cluster.path("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let written = fresh.join("written");
    std::fs::write(&written, pattern(7, 2 * OBJECT_SIZE as usize)).unwrap();
    let ino = std::fs::metadata(&written).unwrap().ino();
    eventually("the close's write-back", 30, || {
        cluster.object_exists(ino, 1).then_some(())
    });
    std::fs::remove_file(&written).unwrap();
    eventually(
        "the MDS to purge the file unlinked right after its close",
        30,
        || (!cluster.object_exists(ino, 0) && !cluster.object_exists(ino, 1)).then_some(()),
    );

    // A directory's layout goes to the files made in it; a layout naming a
    // pool the map lacks is refused.
    let small = cluster.path("small-objects");
    std::fs::create_dir(&small).unwrap();
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import errno,os\n\
             os.setxattr('{0}','aspen.layout',b'object_size=1048576')\n\
             open('{0}/f','wb').write(b'x'*(3<<20))\n\
             assert os.getxattr('{0}/f','aspen.layout')==b'object_size=1048576 pool=1'\n\
             try:\n os.setxattr('{0}','aspen.layout',b'pool=99'); raise SystemExit('accepted')\n\
             except OSError as e:\n assert e.errno==errno.EINVAL, e",
            small.display()
        ))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let small_ino = std::fs::metadata(small.join("f")).unwrap().ino();
    // The close starts the write-back; it ends a moment later.
    eventually("the small-object file's write-back", 30, || {
        cluster.object_exists(small_ino, 2).then_some(())
    });
    assert!(
        !cluster.object_exists(small_ino, 3),
        "a fourth 1 MiB object"
    );

    // A long sequential write reads back with the same checksum, and data
    // written across the 2 GiB and 4 GiB offsets lands there, with the
    // hole between the streamed part and the pieces reading as zeros.
    // (Sparse, so the test's disk need stays at three copies of the
    // streamed part.)
    let large = cluster.path("large");
    let expected = write_pattern(&large, STREAMED_LEN, 2);
    drop_cached_pages(&large);
    assert_eq!(digest(&large), expected, "streamed file read back differs");
    check_writes_past_32_bit_offsets(&large);
    std::fs::remove_file(&large).unwrap();

    // Writes through a shared mapping reach the file, and the mapping sees it.
    let mapped = cluster.path("mapped");
    std::fs::write(&mapped, vec![7u8; 3 * 4096]).unwrap();
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import mmap,os\n\
             fd=os.open('{0}',os.O_RDWR)\n\
             m=mmap.mmap(fd,3*4096)\n\
             assert m[5000]==7\n\
             m[4096:4101]=b'hello'\n\
             m.flush(); m.close(); os.close(fd)",
            mapped.display()
        ))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let back = std::fs::read(&mapped).unwrap();
    assert_eq!(&back[4096..4101], b"hello");
    assert_eq!(back[4101], 7);

    // Concurrent writers to different files.
    let writers: Vec<_> = (0..4u64)
        .map(|n| {
            let path = cluster.path(&format!("writer{n}"));
            std::thread::spawn(move || (path.clone(), write_pattern(&path, 24 << 20, 10 + n)))
        })
        .collect();
    for writer in writers {
        let (path, expected) = writer.join().unwrap();
        assert_eq!(digest(&path), expected, "{}", path.display());
    }
}

#[test]
fn a_copy_survives_kill_9_of_an_osd_and_sigterm_unmounts() {
    let mut cluster = Cluster::start();
    let source = cluster.root.join("source");
    let expected = write_pattern(&source, 192 << 20, 3);
    let target = cluster.path("copy");
    let copy = {
        let (source, target) = (source.clone(), target.clone());
        std::thread::spawn(move || std::fs::copy(&source, &target))
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    cluster.daemons.kill(2);
    let copied = copy
        .join()
        .unwrap()
        .expect("the copy fails when an OSD dies");
    assert_eq!(copied, 192 << 20);
    assert_eq!(
        digest(&target),
        expected,
        "the copy differs after kill -9 of an OSD"
    );

    cluster.daemons.signal(MOUNT_DAEMON, "-TERM");
    eventually("the unmount on SIGTERM", 30, || {
        (!is_mounted(&cluster.mountpoint)).then_some(())
    });
}

/// Each OSD of the cluster that fills up holds at most this much.
const SMALL_OSD_CAPACITY: u64 = 48 << 20;

/// Flips one byte of `needle` wherever it is stored in a segment file under
/// `dir`; how many copies it damaged.
fn damage_stored(dir: &Path, needle: &[u8]) -> usize {
    let mut damaged = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            damaged += damage_stored(&path, needle);
            continue;
        }
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + 7] ^= 0x5a;
            std::fs::write(&path, &bytes).unwrap();
            damaged += 1;
        }
    }
    damaged
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
fn write_durably(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

/// Copy `number` of `piece`, with the number in the first bytes of every
/// 4 KiB: no two copies share a chunk (the OSDs store equal chunks once,
/// so a fill of equal pieces would hardly use space).
fn stamped(piece: &[u8], number: u64) -> Vec<u8> {
    let stamp = number.to_le_bytes();
    let mut copy = piece.to_vec();
    for block in copy.chunks_mut(4096) {
        let len = stamp.len().min(block.len());
        block[..len].copy_from_slice(&stamp[..len]);
    }
    copy
}

/// Writes stamped copies of `piece` to `path`, each made durable with
/// fsync, until a write or fsync fails; the bytes made durable and the
/// error.
fn fill(path: &Path, piece: &[u8]) -> (u64, std::io::Error) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    let mut number = 0u64;
    loop {
        match file
            .write_all(&stamped(piece, number))
            .and_then(|()| file.sync_data())
        {
            Ok(()) => written += piece.len() as u64,
            Err(error) => return (written, error),
        }
        number += 1;
        assert!(
            written <= 2 * SMALL_OSD_CAPACITY,
            "{written} bytes went into OSDs holding {SMALL_OSD_CAPACITY}"
        );
    }
}

#[test]
fn a_full_cluster_says_enospc_and_damaged_data_says_eio() {
    let cluster = Cluster::start_holding(Some(SMALL_OSD_CAPACITY));
    let stat = nix::sys::statvfs::statvfs(&cluster.mountpoint).unwrap();
    let size = stat.blocks() * stat.fragment_size();
    assert_eq!(size, SMALL_OSD_CAPACITY, "statfs: three OSDs, three copies");

    // Damage every copy of one chunk: reading it is EIO, never other bytes.
    let damaged = cluster.path("damaged");
    let bytes = pattern(9, 1 << 20);
    write_durably(&damaged, &bytes);
    let copies: usize = (0..3)
        .map(|id| damage_stored(&cluster.root.join(format!("osd{id}")), &bytes[..64]))
        .sum();
    assert_eq!(copies, 3, "the chunk is not stored three times");
    // O_DIRECT: past the page cache, which still holds what was written.
    let read_direct = |path: &Path| -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let error = read_direct(&damaged).expect_err("damaged data was read");
    assert_eq!(error.raw_os_error(), Some(nix::libc::EIO), "{error}");
    std::fs::remove_file(&damaged).unwrap();

    // Filling the OSDs is ENOSPC; what was acknowledged reads back.
    let full = cluster.path("full");
    let piece = pattern(10, 1 << 20);
    let (written, error) = fill(&full, &piece);
    assert_eq!(error.raw_os_error(), Some(nix::libc::ENOSPC), "{error}");
    assert!(
        written >= SMALL_OSD_CAPACITY / 2,
        "full after {written} bytes"
    );
    // Bytes written but never made durable may be lost (the size may
    // still cover them, as on a local disk): the fsynced ones may not.
    let back = std::fs::read(&full).unwrap();
    assert!(
        back.len() as u64 >= written,
        "{} of {written} bytes",
        back.len()
    );
    let durable = &back[..written as usize];
    for (index, chunk) in durable.chunks(piece.len()).enumerate() {
        let expected = stamped(&piece, index as u64);
        assert!(chunk == &expected[..chunk.len()], "piece {index} differs");
    }

    // Removing the file gives the space back.
    std::fs::remove_file(&full).unwrap();
    let again = cluster.path("again");
    eventually("the space of a removed file to come back", 90, || {
        std::fs::write(&again, &piece[..]).ok()
    });
    assert_eq!(std::fs::read(&again).unwrap(), piece);
}
