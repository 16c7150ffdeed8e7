//! The per-process bound on concurrent search requests (SPEC §11), adapted
//! with AIMD: it grows by one after a full window of fast successes that
//! actually used the limit, and halves on a sign of overload (a timeout, a
//! 429, a 503). A success slower than `search.concurrency_slow_after` says
//! the cluster is at capacity, not that it is failing: it holds the limit
//! (the window starts again, so no growth) but does not shrink it. Halving
//! on slow answers starved a server whose every page is slow (osmem-server
//! scanning 250,000 documents, a loaded machine): the limit sat at 1-2 and
//! the fan-out ran at 0.62× the best fixed limit (docs/BENCHMARKS.md).
//!
//! Hand-written over a `tokio::sync::Semaphore` (no mature crate fits; see
//! `CRATES.md`). The semaphore holds the permits not in use; shrinking below
//! the permits in use is a *debt*: returned permits are forgotten until it is
//! paid. So at every moment, under the state lock,
//! `available + in_flight - debt == limit`, and `available > 0` only when
//! there is no debt: a request starts exactly when fewer than `limit` run.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry;

/// How one request ended, as far as the limit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, in this time.
    Success(Duration),
    /// The cluster pushed back or timed out.
    Overload,
    /// Failed for a reason that says nothing about load (a 400, a refused
    /// connection), or was abandoned.
    Neutral,
}

/// Bounds of the limit. `min == max` is a fixed limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: usize,
    pub initial: usize,
    pub max: usize,
    /// A success slower than this holds the limit (no growth).
    pub slow_after: Duration,
}

impl Bounds {
    /// Puts `initial` and `max` in order (`min >= 1`, `min <= initial <= max`).
    pub fn normalised(self) -> Self {
        let min = self.min.max(1);
        let max = self.max.max(min);
        Bounds {
            min,
            max,
            initial: self.initial.clamp(min, max),
            slow_after: self.slow_after,
        }
    }
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    /// Permits to forget as they come back (the limit shrank below the use).
    debt: usize,
    /// Bumped by every decrease: one burst of failures of requests that all
    /// started under the same limit halves it once, not once per request.
    epoch: u64,
    /// Fast successes since the last change.
    window: usize,
    /// Most requests in flight at once since the last change: the limit only
    /// grows when it was actually reached.
    peak: usize,
}

#[derive(Debug)]
struct Inner {
    /// The `limiter` label of its gauges (`shared`, `fast_lane`).
    name: &'static str,
    sem: Arc<Semaphore>,
    bounds: Bounds,
    state: Mutex<State>,
}

/// Cheap to clone: clones share one limit. A worker process has one,
/// `shared`, plus the dispatcher fast lane's own, `fast_lane`.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

/// A snapshot for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub limit: usize,
    pub in_flight: usize,
    pub available: usize,
    pub debt: usize,
}

impl Limiter {
    /// A limiter reported as `limiter="<name>"`.
    pub fn new(name: &'static str, bounds: Bounds) -> Self {
        let bounds = bounds.normalised();
        telemetry::search_concurrency(name, bounds.initial, 0);
        Limiter {
            inner: Arc::new(Inner {
                name,
                sem: Arc::new(Semaphore::new(bounds.initial)),
                bounds,
                state: Mutex::new(State {
                    limit: bounds.initial,
                    in_flight: 0,
                    debt: 0,
                    epoch: 0,
                    window: 0,
                    peak: 0,
                }),
            }),
        }
    }

    /// Waits for a free slot (FIFO).
    pub async fn acquire(&self) -> Permit {
        // `expect`: the semaphore is never closed.
        let permit = Arc::clone(&self.inner.sem)
            .acquire_owned()
            .await
            .expect("the limiter's semaphore is never closed");
        self.admitted(permit)
    }

    /// A slot if one is free now.
    pub fn try_acquire(&self) -> Option<Permit> {
        let permit = Arc::clone(&self.inner.sem).try_acquire_owned().ok()?;
        Some(self.admitted(permit))
    }

    fn admitted(&self, permit: OwnedSemaphorePermit) -> Permit {
        let mut st = self.lock();
        st.in_flight += 1;
        st.peak = st.peak.max(st.in_flight);
        telemetry::search_concurrency(self.inner.name, st.limit, st.in_flight);
        Permit {
            limiter: self.clone(),
            permit: Some(permit),
            epoch: st.epoch,
        }
    }

    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            limit: st.limit,
            in_flight: st.in_flight,
            available: self.inner.sem.available_permits(),
            debt: st.debt,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent numbers (every
        // update is a few integer assignments), so a poisoned lock is usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, permit: OwnedSemaphorePermit, epoch: u64, outcome: Outcome) {
        let b = self.inner.bounds;
        let mut st = self.lock();
        st.in_flight -= 1;
        match outcome {
            Outcome::Success(took) if took > b.slow_after => {
                // At capacity: hold.
                st.window = 0;
                st.peak = st.in_flight;
            }
            Outcome::Success(_) => {
                st.window += 1;
                if st.window >= st.limit && st.peak >= st.limit && st.limit < b.max {
                    st.limit += 1;
                    st.window = 0;
                    st.peak = st.in_flight;
                    if st.debt > 0 {
                        st.debt -= 1;
                    } else {
                        self.inner.sem.add_permits(1);
                    }
                }
            }
            Outcome::Overload if epoch == st.epoch => {
                st.epoch += 1;
                st.window = 0;
                st.peak = st.in_flight;
                let shrunk = (st.limit / 2).max(b.min);
                st.debt += st.limit - shrunk;
                st.limit = shrunk;
                // Pay the debt from the idle permits first.
                while st.debt > 0 {
                    match self.inner.sem.try_acquire() {
                        Ok(p) => {
                            p.forget();
                            st.debt -= 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            Outcome::Overload | Outcome::Neutral => {}
        }
        if st.debt > 0 {
            permit.forget();
            st.debt -= 1;
        } else {
            drop(permit);
        }
        telemetry::search_concurrency(self.inner.name, st.limit, st.in_flight);
    }
}

/// One admitted request. Say how it went with [`Permit::finish`]; dropping
/// it (a cancelled request) counts as [`Outcome::Neutral`].
#[derive(Debug)]
pub struct Permit {
    limiter: Limiter,
    permit: Option<OwnedSemaphorePermit>,
    epoch: u64,
}

impl Permit {
    pub fn finish(mut self, outcome: Outcome) {
        if let Some(p) = self.permit.take() {
            self.limiter.release(p, self.epoch, outcome);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.limiter.release(p, self.epoch, Outcome::Neutral);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FAST: Outcome = Outcome::Success(Duration::from_millis(5));
    const SLOW: Outcome = Outcome::Success(Duration::from_secs(60));

    fn limiter(min: usize, initial: usize, max: usize) -> Limiter {
        Limiter::new(
            "test",
            Bounds {
                min,
                initial,
                max,
                slow_after: Duration::from_secs(1),
            },
        )
    }

    fn check(l: &Limiter, held: usize) {
        let s = l.snapshot();
        let b = l.inner.bounds;
        assert!(s.limit >= b.min && s.limit <= b.max, "{s:?} {b:?}");
        assert_eq!(s.in_flight, held, "{s:?}");
        assert_eq!(s.available + s.in_flight - s.debt, s.limit, "{s:?}");
        assert!(s.available == 0 || s.debt == 0, "{s:?}");
    }

    #[test]
    fn grows_by_one_per_window_of_fast_successes_that_used_the_limit() {
        let l = limiter(1, 2, 4);
        // Never more than one in flight: no evidence that 2 is too few.
        for _ in 0..10 {
            l.try_acquire().unwrap().finish(FAST);
        }
        assert_eq!(l.limit(), 2);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none(), "the limit holds");
        a.finish(FAST);
        b.finish(FAST);
        assert_eq!(l.limit(), 3);
        check(&l, 0);
    }

    #[test]
    fn slow_answers_hold_the_limit_neither_growing_nor_shrinking_it() {
        let l = limiter(1, 3, 8);
        for _ in 0..10 {
            let held: Vec<Permit> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
            for p in held {
                p.finish(SLOW);
            }
            assert_eq!(l.limit(), 3);
        }
        // A slow answer in a window of fast ones starts the window again.
        let held: Vec<Permit> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        let mut held = held.into_iter();
        held.next().unwrap().finish(FAST);
        held.next().unwrap().finish(SLOW);
        held.next().unwrap().finish(FAST);
        assert_eq!(l.limit(), 3, "no full window of fast successes yet");
        check(&l, 0);
    }

    #[test]
    fn one_burst_of_overload_halves_once() {
        let l = limiter(1, 8, 8);
        let held: Vec<Permit> = (0..8).map(|_| l.try_acquire().unwrap()).collect();
        for p in held {
            p.finish(Outcome::Overload);
        }
        assert_eq!(l.limit(), 4);
        check(&l, 0);
        // A new request that fails again halves again.
        l.try_acquire().unwrap().finish(Outcome::Overload);
        assert_eq!(l.limit(), 2);
        l.try_acquire().unwrap().finish(SLOW);
        assert_eq!(l.limit(), 2, "a slow answer holds the limit");
        l.try_acquire().unwrap().finish(Outcome::Overload);
        assert_eq!(l.limit(), 1);
        l.try_acquire().unwrap().finish(Outcome::Overload);
        assert_eq!(l.limit(), 1, "never below the minimum");
    }

    #[test]
    fn shrinking_below_the_use_waits_for_permits_to_come_back() {
        let l = limiter(1, 4, 4);
        let mut held: Vec<Permit> = (0..4).map(|_| l.try_acquire().unwrap()).collect();
        held.pop().unwrap().finish(Outcome::Overload);
        check(&l, 3);
        assert_eq!(l.limit(), 2);
        assert!(l.try_acquire().is_none(), "3 in flight over a limit of 2");
        held.pop().unwrap().finish(Outcome::Neutral);
        assert!(l.try_acquire().is_none(), "2 in flight at a limit of 2");
        drop(held.pop());
        let p = l.try_acquire().expect("1 in flight under a limit of 2");
        check(&l, 2);
        drop(p);
        drop(held);
        check(&l, 0);
        assert_eq!(l.snapshot().available, 2);
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let l = limiter(3, 3, 3);
        for _ in 0..20 {
            let held: Vec<Permit> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
            assert!(l.try_acquire().is_none());
            for p in held {
                p.finish(FAST);
            }
        }
        l.try_acquire().unwrap().finish(Outcome::Overload);
        assert_eq!(l.limit(), 3);
        check(&l, 0);
    }

    #[tokio::test]
    async fn a_waiter_starts_when_a_permit_comes_back() {
        let l = limiter(1, 1, 1);
        let p = l.acquire().await;
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.finish(FAST) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        p.finish(FAST);
        waiter.await.unwrap();
        check(&l, 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        /// Finish the held permit at this index (modulo), with this outcome.
        Finish(usize, u8),
        Drop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Acquire),
            3 => (any::<usize>(), 0u8..4).prop_map(|(i, o)| Op::Finish(i, o)),
            1 => any::<usize>().prop_map(Op::Drop),
        ]
    }

    proptest! {
        /// Whatever happens, the limit stays in its bounds, permits are
        /// conserved (`available + in_flight - debt == limit`), a request
        /// starts exactly when fewer than `limit` run, and once everything
        /// is back the semaphore holds exactly `limit` permits.
        #[test]
        fn the_limit_stays_in_bounds_and_permits_are_conserved(
            min in 1usize..4,
            extra in 0usize..12,
            start in 0usize..16,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let max = min + extra;
            let l = limiter(min, start, max);
            let mut held: Vec<Permit> = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire => {
                        let before = l.snapshot();
                        let got = l.try_acquire();
                        prop_assert_eq!(got.is_some(), before.in_flight < before.limit, "{:?}", before);
                        held.extend(got);
                    }
                    Op::Finish(i, o) if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        p.finish(match o {
                            0 => FAST,
                            1 => SLOW,
                            2 => Outcome::Overload,
                            _ => Outcome::Neutral,
                        });
                    }
                    Op::Drop(i) if !held.is_empty() => {
                        drop(held.swap_remove(i % held.len()));
                    }
                    _ => {}
                }
                check(&l, held.len());
            }
            held.clear();
            check(&l, 0);
            let s = l.snapshot();
            prop_assert_eq!(s.available, s.limit);
            prop_assert_eq!(s.debt, 0);
        }
    }
}
