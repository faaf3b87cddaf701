//! Driving a population of connections: an operation over every index at a
//! fixed concurrency, and a reproducible shuffled order. Shared by the scale
//! test and connect-bench's workload s.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `op(k)` for every `k` below `n`, `concurrency` at a time (each on a
/// task of its own); the results in order of `k`.
pub async fn each<T, F, Fut>(n: usize, concurrency: usize, op: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = T> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.min(n.max(1)))
        .map(|_| {
            let (next, op) = (Arc::clone(&next), op.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= n {
                        return done;
                    }
                    done.push((k, op(k).await));
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for worker in workers {
        results.extend(worker.await.expect("a worker panicked"));
    }
    results.sort_unstable_by_key(|(k, _)| *k);
    results.into_iter().map(|(_, result)| result).collect()
}

/// A fixed permutation of `0..n` for each `seed`: the order only has to
/// differ from the opening order, and be the same every run.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    fastrand::Rng::with_seed(seed).shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_is_a_permutation_that_depends_on_the_seed() {
        let mut order = shuffled(1000, 1);
        assert_ne!(order, (0..1000).collect::<Vec<_>>());
        assert_ne!(order, shuffled(1000, 2));
        assert_eq!(order, shuffled(1000, 1));
        order.sort_unstable();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn each_runs_every_index_once_in_order() {
        let results = each(100, 7, |k| async move { k * 2 }).await;
        assert_eq!(results, (0..100).map(|k| k * 2).collect::<Vec<_>>());
    }
}
