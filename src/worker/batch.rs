//! Group commit for the per-job writes of the hot path: audit rows, attempt
//! reservations, "about to send" marks and decisions. Each dial task submits its
//! write and waits for it to be committed, exactly as if it had written alone;
//! a background task takes whatever has queued up meanwhile (up to `max`) and
//! writes it in one transaction. Under load that turns hundreds of checkouts and
//! commits per second into a few, and the pool stops being the queue every dial
//! waits in (issue 5, load run). With one dial at a time a batch is one write,
//! with no added delay: nothing waits for a batch to fill.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

type Reply<O> = oneshot::Sender<Result<O, String>>;

/// A queue of writes flushed in batches by a background task.
pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<(I, Reply<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the flushing task (on the current Tokio runtime). At most `parallel`
    /// batches are written at once, each of at most `max` items; `flush` returns
    /// one result per item, in order, or fails the whole batch.
    pub fn spawn<F, Fut>(max: usize, parallel: usize, flush: F) -> Batcher<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Vec<O>>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(I, Reply<O>)>();
        let flush = Arc::new(flush);
        let slots = Arc::new(Semaphore::new(parallel.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut items = vec![first];
                while items.len() < max.max(1) {
                    match rx.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
                let flush = flush.clone();
                tokio::spawn(async move {
                    let (inputs, replies): (Vec<I>, Vec<Reply<O>>) = items.into_iter().unzip();
                    let n = inputs.len();
                    match flush(inputs).await {
                        Ok(outs) if outs.len() == n => {
                            for (reply, out) in replies.into_iter().zip(outs) {
                                let _ = reply.send(Ok(out));
                            }
                        }
                        Ok(outs) => {
                            let msg = format!("batch write answered {} of {n} items", outs.len());
                            for reply in replies {
                                let _ = reply.send(Err(msg.clone()));
                            }
                        }
                        Err(e) => {
                            let msg = format!("{e:#}");
                            for reply in replies {
                                let _ = reply.send(Err(msg.clone()));
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
        Batcher { tx }
    }

    /// Queues one write and waits until its batch is committed (or failed).
    pub async fn submit(&self, item: I) -> anyhow::Result<O> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .map_err(|_| anyhow::anyhow!("the batch writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the batch writer has stopped"))?
            .map_err(|e| anyhow::anyhow!(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn concurrent_submits_share_batches_and_get_their_own_results() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b: Arc<Batcher<u32, u32>> = Arc::new(Batcher::spawn(64, 1, move |xs: Vec<u32>| {
            seen.lock().unwrap().push(xs.len());
            async move {
                tokio::task::yield_now().await;
                Ok(xs.into_iter().map(|x| x * 10).collect())
            }
        }));
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.submit(i).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, out) = t.await.unwrap();
            assert_eq!(out, i * 10, "a submit got another item's result");
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 200, "every item written once");
        assert!(
            sizes.iter().all(|n| *n <= 64),
            "a batch over max: {sizes:?}"
        );
        assert!(sizes.len() < 200, "no batching happened: {sizes:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_submits() {
        let b: Batcher<u32, u32> = Batcher::spawn(8, 2, |_xs: Vec<u32>| async {
            anyhow::bail!("database unavailable")
        });
        let e = b.submit(1).await.unwrap_err();
        assert!(e.to_string().contains("database unavailable"), "{e}");
    }

    #[tokio::test]
    async fn a_short_answer_is_an_error_not_a_wrong_result() {
        let b: Batcher<u32, u32> = Batcher::spawn(8, 1, |_xs: Vec<u32>| async { Ok(vec![]) });
        assert!(b.submit(1).await.is_err());
    }
}
