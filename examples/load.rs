//! Reference loads for the load run (issue 5, acceptance 3), measured beside the whole
//! path (`scripts/bench-load`):
//!
//! * `queue URL [CLAIMERS] [BATCH] [ACK_CONCURRENCY] [MAX_CONNECTIONS] [ACK_BATCH]`:
//!   drains every due job of the database through the worker's own claim code
//!   (`Store::claim`) and acknowledges each as `done` under its lease with
//!   `Store::update_jobs`, ACK_BATCH jobs per transaction (no dial, no pre-flight):
//!   the queue alone.
//! * `http BASE_URL N CONCURRENCY`: a bare reqwest loop of N dial requests (unique
//!   numbers and keys) against the simulator, CONCURRENCY at once.
//!
//! Each prints one line: count, seconds, rate. Bounded: `queue` stops when a claim
//! comes back empty, `http` after N requests.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dialer::store::{self, Guard, JobUpdate, JobWrite};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> anyhow::Result<u64> {
        match args.get(i) {
            Some(s) => Ok(s.parse()?),
            None => Ok(default),
        }
    };
    match args.first().map(String::as_str) {
        Some("queue") => {
            let url = args
                .get(1)
                .ok_or_else(|| anyhow::anyhow!("queue needs a database URL"))?;
            queue(
                url,
                arg(2, 1)?,
                arg(3, 200)? as u32,
                arg(4, 64)? as usize,
                arg(5, 10)? as u32,
                arg(6, 50)? as usize,
            )
            .await
        }
        Some("http") => {
            let base = args
                .get(1)
                .ok_or_else(|| anyhow::anyhow!("http needs the simulator's base URL"))?;
            http(base, arg(2, 50_000)?, arg(3, 1000)? as usize).await
        }
        _ => anyhow::bail!(
            "usage: load queue URL [CLAIMERS] [BATCH] [ACK_CONCURRENCY] [MAX_CONNECTIONS] [ACK_BATCH] | load http BASE_URL N CONCURRENCY"
        ),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn queue(
    url: &str,
    claimers: u64,
    batch: u32,
    ack_concurrency: usize,
    max_connections: u32,
    ack_batch: usize,
) -> anyhow::Result<()> {
    let ack_batch = ack_batch.max(1);
    let store = store::connect(url, max_connections).await?;
    let done = Arc::new(AtomicU64::new(0));
    let claims = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..claimers {
        let store = store.clone();
        let done = done.clone();
        let claims = claims.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("bench-queue-{c}");
            let update = JobUpdate {
                status: "done",
                ..Default::default()
            };
            loop {
                let jobs = store.claim(&owner, batch, now_ms(), 60_000, None).await?;
                claims.fetch_add(1, Ordering::Relaxed);
                if jobs.is_empty() {
                    return anyhow::Ok(());
                }
                // Batched acknowledgements: the claim's jobs acknowledged in chunks
                // of ACK_BATCH, one transaction each, up to ACK_CONCURRENCY at once
                // (`Store::update_jobs`, the worker's group commit).
                let writes: Vec<JobWrite> = jobs
                    .iter()
                    .map(|j| JobWrite {
                        job_id: j.id,
                        guard: Guard::Lease(owner.clone()),
                        update: update.clone(),
                        now_ms: now_ms(),
                    })
                    .collect();
                let chunks: Vec<Vec<JobWrite>> =
                    writes.chunks(ack_batch).map(<[JobWrite]>::to_vec).collect();
                let results: Vec<_> = futures::stream::iter(chunks)
                    .map(|chunk| {
                        let store = store.clone();
                        async move { store.update_jobs(&chunk).await }
                    })
                    .buffer_unordered(ack_concurrency)
                    .collect()
                    .await;
                for r in results {
                    for applied in r? {
                        if applied {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "queue alone: {n} jobs claimed and acknowledged in {secs:.2}s = {:.0} jobs/s \
         ({claimers} claimer(s), batch {batch}, {ack_concurrency} ack batches of {ack_batch} at once per claimer, \
         {max_connections} connections, {} claims)",
        n as f64 / secs,
        claims.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn http(base: &str, n: u64, concurrency: usize) -> anyhow::Result<()> {
    // HTTP2=1: one multiplexed connection, as the worker with `revdesk.http2`.
    let builder = reqwest::Client::builder();
    let client = if std::env::var("HTTP2").is_ok_and(|v| v == "1") {
        builder.http2_prior_knowledge().build()?
    } else {
        builder.http1_only().build()?
    };
    let url = format!("{}/v1/calls/dial", base.trim_end_matches('/'));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (client, url, accepted) = (&client, &url, accepted.clone());
            async move {
                // +1 646 2XX XXXX: a real, single-zone area code the bench data never uses.
                let body = format!(
                    r#"{{"from_number":"+14155550100","to_number":"+1646{:07}"}}"#,
                    2_000_000 + i
                );
                let sent = client
                    .post(url)
                    .bearer_auth("sk_bench")
                    .header("Idempotency-Key", format!("bench-http-{i}"))
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await;
                if let Ok(r) = sent {
                    let ok = r.status().as_u16() == 202;
                    if r.bytes().await.is_ok() && ok {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<()>()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let ok = accepted.load(Ordering::Relaxed);
    println!(
        "bare reqwest loop: {n} dial requests ({ok} answered 202) in {secs:.2}s = {:.0} requests/s \
         ({concurrency} in flight)",
        n as f64 / secs
    );
    Ok(())
}
