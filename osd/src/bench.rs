//! An object benchmark against a running cluster through the object
//! client: 4 MiB object writes and reads (MiB/s) and 4 KiB random writes
//! and reads inside 4 MiB objects (ops/s), at a given queue depth, and
//! 4 KiB random writes all in one object. What `aspen bench osd` runs.

use std::sync::Arc;
use std::time::Instant;

use aspen_placement::PoolId;
use aspen_proto::transport::Bytes;

use crate::client::{ClientError, ObjectClient};

const OBJECT: usize = 4 << 20;
const SMALL: usize = 4 << 10;

/// One measured workload.
#[derive(Clone, Debug)]
pub struct Measured {
    pub workload: String,
    pub depth: usize,
    pub ops_per_sec: f64,
    pub mib_per_sec: f64,
}

/// Deterministic bytes without a period (so nothing deduplicates), for
/// benchmarks and tests.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn object_name(prefix: &str, n: usize) -> Vec<u8> {
    format!("{prefix}.{n:08x}").into_bytes()
}

/// Runs `ops` operations with `depth` of them in flight; `op(i)` is the i-th.
async fn run_ops<F, Fut>(ops: usize, depth: usize, op: F) -> Result<f64, ClientError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), ClientError>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..depth {
        let op = op.clone();
        workers.spawn(async move {
            for i in (worker..ops).step_by(depth) {
                op(i).await?;
            }
            Ok::<(), ClientError>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| ClientError::Unexpected(e.to_string()))??;
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

fn measured(workload: &str, depth: usize, ops_per_sec: f64, op_bytes: usize) -> Measured {
    Measured {
        workload: workload.into(),
        depth,
        ops_per_sec,
        mib_per_sec: ops_per_sec * op_bytes as f64 / (1 << 20) as f64,
    }
}

/// Every workload: `objects` 4 MiB objects, then `small_ops` 4 KiB ops at
/// depth 1 and at `depth`, then `small_ops` 4 KiB writes at `depth` all in
/// the first object. `report` sees each result as soon as it is
/// measured.
pub async fn run(
    client: Arc<ObjectClient>,
    pool: PoolId,
    objects: usize,
    small_ops: usize,
    depth: usize,
    mut report: impl FnMut(&Measured),
) -> Result<Vec<Measured>, ClientError> {
    let mut results = Vec::new();
    let mut keep = |result: Measured| {
        report(&result);
        results.push(result);
    };
    let prefix = format!("bench{}", std::process::id());
    let payload = Bytes::from(pattern(1, OBJECT));
    let write = {
        let (client, payload, prefix) = (client.clone(), payload.clone(), prefix.clone());
        move |i: usize| {
            let (client, payload, name) =
                (client.clone(), payload.clone(), object_name(&prefix, i));
            async move { client.write(pool, &name, 0, payload).await.map(drop) }
        }
    };
    let rate = run_ops(objects, depth, write).await?;
    keep(measured("4 MiB object writes", depth, rate, OBJECT));
    let read = {
        let (client, prefix) = (client.clone(), prefix.clone());
        move |i: usize| {
            let (client, name) = (client.clone(), object_name(&prefix, i));
            async move {
                let back = client.read(pool, &name, 0, OBJECT as u64).await?;
                if back.len() != OBJECT {
                    return Err(ClientError::Unexpected("short read".into()));
                }
                Ok(())
            }
        }
    };
    let rate = run_ops(objects, depth, read).await?;
    keep(measured("4 MiB object reads", depth, rate, OBJECT));
    let small = Bytes::from(pattern(2, SMALL));
    for queue in [1, depth] {
        let random_write = {
            let (client, small, prefix) = (client.clone(), small.clone(), prefix.clone());
            move |i: usize| {
                let (client, small) = (client.clone(), small.clone());
                let (object, offset) = place(i, objects);
                let name = object_name(&prefix, object);
                async move { client.write(pool, &name, offset, small).await.map(drop) }
            }
        };
        let rate = run_ops(small_ops, queue, random_write).await?;
        keep(measured("4 KiB random writes", queue, rate, SMALL));
        let random_read = {
            let (client, prefix) = (client.clone(), prefix.clone());
            move |i: usize| {
                let client = client.clone();
                let (object, offset) = place(i + 7919, objects);
                let name = object_name(&prefix, object);
                async move {
                    client
                        .read(pool, &name, offset, SMALL as u64)
                        .await
                        .map(drop)
                }
            }
        };
        let rate = run_ops(small_ops, queue, random_read).await?;
        keep(measured("4 KiB random reads", queue, rate, SMALL));
    }
    // A hot object: every write in one PG, so its primary overlaps them.
    let hot_write = {
        let (client, small, name) = (client.clone(), small.clone(), object_name(&prefix, 0));
        move |i: usize| {
            let (client, small, name) = (client.clone(), small.clone(), name.clone());
            let (_, offset) = place(i, 1);
            async move { client.write(pool, &name, offset, small).await.map(drop) }
        }
    };
    let rate = run_ops(small_ops, depth, hot_write).await?;
    keep(measured(
        "4 KiB random writes in one object",
        depth,
        rate,
        SMALL,
    ));
    // Small writes go to object 0 even when no 4 MiB object was asked for.
    for i in 0..objects.max(1) {
        client.delete(pool, &object_name(&prefix, i)).await?;
    }
    Ok(results)
}

/// A pseudo-random 4 KiB-aligned place in one of `objects` objects.
fn place(i: usize, objects: usize) -> (usize, u64) {
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let object = (x >> 40) as usize % objects.max(1);
    let block = (x >> 8) % (OBJECT / SMALL) as u64;
    (object, block * SMALL as u64)
}
