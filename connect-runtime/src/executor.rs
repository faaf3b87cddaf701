//! The executor hyper spawns its per-stream tasks on, for connect's own
//! HTTP/2 connections (client and server).

use std::future::Future;
use std::pin::Pin;

/// Spawns each future onto tokio boxed.
///
/// hyper spawns one or two tasks for every HTTP/2 stream, each a future of
/// several hundred bytes; `tokio::spawn` moves a future by value through
/// several frames before it reaches the task's cell, so a large one is
/// copied again and again. Boxed first, it is copied once and the spawn
/// moves a pointer (tonic's channel does the same, for the same reason).
/// Measured with callgrind on BENCHMARKS.md's workload w: about 2,200
/// instructions in `tokio::spawn` per spawn by value, 900 boxed; about
/// 1,000 fewer per spawn net of the box (fifth round).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let future: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(future);
        tokio::spawn(future);
    }
}
