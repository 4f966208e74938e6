//! Measures the storage engines an OSD could use, on this machine, in one
//! run: Aspen's object store (segments + SQLite, `aspen_osd::store`) and
//! iroh-blobs' `FsStore`. Every write is durable when it returns in both.
//! What `bench/engine.sh` runs; the numbers decided the OSD's engine.
//!
//! Usage: engine_bench DIR

use std::sync::Arc;
use std::time::Instant;

use aspen_osd::bench::pattern as bytes;
use aspen_osd::store::{ObjectKey, ObjectStore};
use aspen_placement::{PgId, PoolId};

const OBJECT: usize = 4 << 20;
const SMALL: usize = 4 << 10;
const OBJECTS: usize = 32;
const SMALL_OPS_SERIAL: usize = 2_000;
const SMALL_OPS_PARALLEL: usize = 8_000;
const DEPTH: usize = 16;

fn key(n: usize) -> ObjectKey {
    ObjectKey {
        pg: PgId {
            pool: PoolId(1),
            seed: (n % 64) as u32,
        },
        name: format!("bench.{n:08x}").into_bytes(),
    }
}

fn report(name: &str, ops: usize, bytes: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<34} {:>9.0} ops/s {:>8.1} MiB/s",
        ops as f64 / secs,
        bytes as f64 / secs / (1 << 20) as f64
    );
}

/// The small-write offsets: random 4 KiB-aligned places in the objects.
fn small_targets(count: usize, salt: u64) -> Vec<(usize, u64)> {
    let mut x = salt | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let object = (x % OBJECTS as u64) as usize;
            let block = (x >> 20) % (OBJECT / SMALL) as u64;
            (object, block * SMALL as u64)
        })
        .collect()
}

fn aspen(dir: &std::path::Path) {
    let store = Arc::new(ObjectStore::open(dir).unwrap());
    let payloads: Vec<Vec<u8>> = (0..OBJECTS).map(|n| bytes(n as u64, OBJECT)).collect();
    let started = Instant::now();
    for (n, payload) in payloads.iter().enumerate() {
        store.write(&key(n), 0, payload).unwrap();
    }
    report(
        "aspen: 4 MiB object writes",
        OBJECTS,
        OBJECTS * OBJECT,
        started,
    );
    let started = Instant::now();
    for (n, payload) in payloads.iter().enumerate() {
        assert_eq!(&store.read(&key(n), 0, OBJECT as u64).unwrap(), payload);
    }
    report(
        "aspen: 4 MiB object reads",
        OBJECTS,
        OBJECTS * OBJECT,
        started,
    );

    let small = bytes(99, SMALL);
    let started = Instant::now();
    for (object, offset) in small_targets(SMALL_OPS_SERIAL, 1) {
        store.write(&key(object), offset, &small).unwrap();
    }
    report(
        "aspen: 4 KiB random writes, depth 1",
        SMALL_OPS_SERIAL,
        SMALL_OPS_SERIAL * SMALL,
        started,
    );
    let started = Instant::now();
    let threads: Vec<_> = (0..DEPTH)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let small = bytes(1000 + t as u64, SMALL);
                for (object, offset) in small_targets(SMALL_OPS_PARALLEL / DEPTH, 7 + t as u64) {
                    store.write(&key(object), offset, &small).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    report(
        "aspen: 4 KiB random writes, depth 16",
        SMALL_OPS_PARALLEL,
        SMALL_OPS_PARALLEL * SMALL,
        started,
    );
    let started = Instant::now();
    for (object, offset) in small_targets(SMALL_OPS_PARALLEL, 3) {
        assert_eq!(
            store
                .read(&key(object), offset, SMALL as u64)
                .unwrap()
                .len(),
            SMALL
        );
    }
    report(
        "aspen: 4 KiB random reads, depth 1",
        SMALL_OPS_PARALLEL,
        SMALL_OPS_PARALLEL * SMALL,
        started,
    );
}

async fn iroh_blobs(dir: &std::path::Path) {
    let store = iroh_blobs::store::fs::FsStore::load(dir).await.unwrap();
    let payloads: Vec<Vec<u8>> = (0..OBJECTS).map(|n| bytes(n as u64, OBJECT)).collect();
    let started = Instant::now();
    let mut hashes = Vec::new();
    for payload in &payloads {
        hashes.push(store.add_bytes(payload.clone()).await.unwrap().hash);
    }
    report(
        "iroh-blobs: 4 MiB blob adds",
        OBJECTS,
        OBJECTS * OBJECT,
        started,
    );
    let started = Instant::now();
    for (hash, payload) in hashes.iter().zip(&payloads) {
        assert_eq!(&store.get_bytes(*hash).await.unwrap()[..], &payload[..]);
    }
    report(
        "iroh-blobs: 4 MiB blob reads",
        OBJECTS,
        OBJECTS * OBJECT,
        started,
    );

    let started = Instant::now();
    let mut small = Vec::new();
    for n in 0..SMALL_OPS_SERIAL {
        small.push(
            store
                .add_bytes(bytes(10_000 + n as u64, SMALL))
                .await
                .unwrap()
                .hash,
        );
    }
    report(
        "iroh-blobs: 4 KiB blob adds, depth 1",
        SMALL_OPS_SERIAL,
        SMALL_OPS_SERIAL * SMALL,
        started,
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..DEPTH)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..SMALL_OPS_PARALLEL / DEPTH {
                    let data = bytes(100_000 + (t * SMALL_OPS_PARALLEL + n) as u64, SMALL);
                    store.add_bytes(data).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    report(
        "iroh-blobs: 4 KiB blob adds, depth 16",
        SMALL_OPS_PARALLEL,
        SMALL_OPS_PARALLEL * SMALL,
        started,
    );
    let started = Instant::now();
    for n in 0..SMALL_OPS_PARALLEL {
        let hash = small[(n * 7919) % small.len()];
        assert_eq!(store.get_bytes(hash).await.unwrap().len(), SMALL);
    }
    report(
        "iroh-blobs: 4 KiB blob reads, depth 1",
        SMALL_OPS_PARALLEL,
        SMALL_OPS_PARALLEL * SMALL,
        started,
    );
    store.shutdown().await.unwrap();
}

#[tokio::main]
async fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: engine_bench DIR"));
    let _ = std::fs::remove_dir_all(&dir);
    aspen(&dir.join("aspen"));
    iroh_blobs(&dir.join("iroh-blobs")).await;
}
