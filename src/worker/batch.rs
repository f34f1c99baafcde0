//! Group commit: many tasks each submit one write and wait for its result; a
//! background loop writes whatever queued meanwhile in one batch (one transaction)
//! and hands each task its own result.
//!
//! Why (issue 5): a dial costs a few cheap statements, and executed one job at a time
//! their round trips and commits, not the work, bound the dial rate. A batch adds no
//! delay when the database is idle (the first item is written at once) and grows by
//! itself under load (items queue while a batch is being written).
//!
//! Liveness: the loop never holds a database connection itself and never waits on
//! a submitter, so it cannot take part in a pool-starvation cycle; a batch that
//! fails (or panics) fails each of its submitters, and the loop goes on.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Why a submitted item got no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The batch's write failed: every item of it failed (nothing partial is
    /// reported as done).
    #[error("{0}")]
    Failed(Arc<str>),
    /// The batch loop is gone (the worker is stopping) or the batch panicked.
    #[error("the {0} batch was not written")]
    Lost(&'static str),
}

type Item<I, O> = (I, oneshot::Sender<Result<O, BatchError>>);

/// A group-commit queue: `submit` an item, get its result once its batch is written.
pub struct Batcher<I, O> {
    name: &'static str,
    tx: mpsc::Sender<Item<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the loop: up to `max` items per batch, up to `parallel` batches being
    /// written at once. `write` gets the items in submission order and returns one
    /// result per item, in that order.
    pub fn spawn<F, Fut>(name: &'static str, max: usize, parallel: usize, write: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, String>> + Send + 'static,
    {
        let max = max.max(1);
        let (tx, mut rx) = mpsc::channel::<Item<I, O>>(max * parallel.max(1) * 2);
        let slots = Arc::new(Semaphore::new(parallel.max(1)));
        let write = Arc::new(write);
        tokio::spawn(async move {
            loop {
                // Take a write slot first: while every slot is busy, items queue up
                // and the next batch is larger.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut items = Vec::with_capacity(max.min(64));
                items.push(first);
                while items.len() < max {
                    match rx.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
                let write = write.clone();
                tokio::spawn(async move {
                    let (inputs, replies): (Vec<I>, Vec<_>) = items.into_iter().unzip();
                    let n = inputs.len();
                    match write(inputs).await {
                        Ok(outs) if outs.len() == n => {
                            for (reply, out) in replies.into_iter().zip(outs) {
                                let _ = reply.send(Ok(out));
                            }
                        }
                        Ok(outs) => {
                            let e = BatchError::Failed(
                                format!("{name} batch: {} results for {n} items", outs.len())
                                    .into(),
                            );
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                        Err(e) => {
                            let e = BatchError::Failed(e.into());
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
        Batcher { name, tx }
    }

    /// Submits one item and waits for its result.
    pub async fn submit(&self, item: I) -> Result<O, BatchError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| BatchError::Lost(self.name))?;
        result.await.map_err(|_| BatchError::Lost(self.name))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn items_submitted_together_are_written_in_few_batches_each_getting_its_own_result() {
        let batches = Arc::new(AtomicUsize::new(0));
        let b = {
            let batches = batches.clone();
            Arc::new(Batcher::spawn("test", 100, 1, move |items: Vec<u32>| {
                let batches = batches.clone();
                async move {
                    batches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    Ok(items.into_iter().map(|i| i * 2).collect())
                }
            }))
        };
        let mut tasks = Vec::new();
        for i in 0..300u32 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move { (i, b.submit(i).await.unwrap()) }));
        }
        for t in tasks {
            let (i, out) = t.await.unwrap();
            assert_eq!(out, i * 2);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!((3..300).contains(&n), "300 items in {n} batches");
    }

    #[tokio::test]
    async fn a_failed_or_panicking_batch_fails_its_items_and_the_loop_goes_on() {
        let b = Batcher::spawn("test", 10, 2, |items: Vec<i32>| async move {
            match items[0] {
                0 => Err("database gone".to_owned()),
                1 => panic!("bug"),
                _ => Ok(items),
            }
        });
        assert!(matches!(b.submit(0).await, Err(BatchError::Failed(e)) if &*e == "database gone"));
        assert!(matches!(b.submit(1).await, Err(BatchError::Lost("test"))));
        assert_eq!(b.submit(7).await.unwrap(), 7);
    }
}
