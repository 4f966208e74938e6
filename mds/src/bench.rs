//! A metadata benchmark against a running MDS group: creates, stats and
//! unlinks of empty files at a given concurrency, and the latency of
//! serial creates. What `aspen bench mds` runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aspen_proto::InodeId;
use aspen_proto::cluster::MdsClient;
use aspen_proto::fs::{Caller, mode};
use aspen_proto::mds::{MdsRequest, MdsResponse, NsOp, NsReply, SessionId};

/// Results of one run.
#[derive(Clone, Debug)]
pub struct MetadataReport {
    pub files: usize,
    pub concurrency: usize,
    pub creates_per_sec: f64,
    pub stats_per_sec: f64,
    pub unlinks_per_sec: f64,
    /// Serial create latency percentiles (p50, p99).
    pub serial_create: (Duration, Duration),
}

#[derive(Clone, Copy)]
enum Phase {
    Create,
    Stat,
    Unlink,
}

fn request(phase: Phase, dir: InodeId, name: &str) -> MdsRequest {
    let caller = Caller::root();
    let name = name.as_bytes().to_vec();
    match phase {
        Phase::Create => MdsRequest::Mutate {
            caller,
            session: SessionId(0),
            request: 0,
            op: NsOp::Mknod {
                parent: dir,
                name,
                mode: mode::S_IFREG | 0o644,
                umask: 0,
                rdev: 0,
            },
        },
        Phase::Stat => MdsRequest::Lookup {
            caller,
            parent: dir,
            name,
        },
        Phase::Unlink => MdsRequest::Mutate {
            caller,
            session: SessionId(0),
            request: 0,
            op: NsOp::Unlink { parent: dir, name },
        },
    }
}

fn succeeded(response: &MdsResponse) -> bool {
    matches!(
        response,
        MdsResponse::Reply(Ok(_)) | MdsResponse::Attr(Ok(_))
    )
}

/// Runs `phase` over `files` names with `concurrency` workers; ops per second.
async fn run_phase(
    client: &Arc<MdsClient>,
    phase: Phase,
    dir: InodeId,
    files: usize,
    concurrency: usize,
) -> Result<f64, String> {
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (worker..files).step_by(concurrency) {
                    let response = client
                        .call(&request(phase, dir, &format!("f{i}")))
                        .await
                        .map_err(|e| e.to_string())?;
                    if !succeeded(&response) {
                        return Err(format!("f{i}: {response:?}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(|e| e.to_string())??;
    }
    Ok(files as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

/// Creates a fresh directory `name` under the root and runs every phase in it.
pub async fn run(
    client: MdsClient,
    name: &str,
    files: usize,
    concurrency: usize,
) -> Result<MetadataReport, String> {
    let client = Arc::new(client);
    let mkdir = MdsRequest::Mutate {
        caller: Caller::root(),
        session: SessionId(0),
        request: 0,
        op: NsOp::Mkdir {
            parent: InodeId::ROOT,
            name: name.as_bytes().to_vec(),
            mode: 0o755,
            umask: 0,
        },
    };
    let dir = match client.call(&mkdir).await.map_err(|e| e.to_string())? {
        MdsResponse::Reply(Ok(NsReply::Attr(attr))) => attr.ino,
        other => return Err(format!("mkdir {name}: {other:?}")),
    };
    let creates_per_sec = run_phase(&client, Phase::Create, dir, files, concurrency).await?;
    let stats_per_sec = run_phase(&client, Phase::Stat, dir, files, concurrency).await?;
    let unlinks_per_sec = run_phase(&client, Phase::Unlink, dir, files, concurrency).await?;
    let mut latencies = Vec::with_capacity(files.min(1000));
    for i in 0..files.min(1000) {
        let started = Instant::now();
        let response = client
            .call(&request(Phase::Create, dir, &format!("serial{i}")))
            .await
            .map_err(|e| e.to_string())?;
        if !succeeded(&response) {
            return Err(format!("serial{i}: {response:?}"));
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    client.close().await;
    Ok(MetadataReport {
        files,
        concurrency,
        creates_per_sec,
        stats_per_sec,
        unlinks_per_sec,
        serial_create: (percentile(&latencies, 0.5), percentile(&latencies, 0.99)),
    })
}
