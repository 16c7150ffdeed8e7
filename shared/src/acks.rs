//! One consumer channel's acknowledgements, coalesced: deliveries that
//! settle together are acked with one `basic.ack(multiple)` frame instead of
//! one frame each.
//!
//! Delivery tags on a channel count up from 1 in delivery order, and a
//! `multiple` ack at tag T acks *every* unacknowledged delivery up to T. So
//! it is only sent when every delivery below T is one its handler is done
//! with: [`Acks`] keeps the set of deliveries not yet acked to the broker
//! (registered by the consume loop before the handler runs) and, of those,
//! the ones whose handler asked for an ack. The ready ones below the lowest
//! still-running delivery go out as one `multiple` ack; ready ones above it
//! are acked one by one at once, never held back behind a slow delivery
//! (holding them would hold the prefetch window). A nack (requeue or
//! reject) is always sent on its own, and before any `multiple` ack that
//! could cover it.
//!
//! Nothing is acked earlier than before: a handler asks for the ack after
//! its outputs were confirmed, and [`Acks::ack`] returns only once the frame
//! carrying it was handed to the connection, so what the runtime does after
//! an ack (announcing an event) still happens after it.
//!
//! Coalescing happens by itself under load: the task handles one request,
//! yields once so that handlers finishing at the same moment (a batch of
//! requests released by one publisher confirm) can queue theirs, then takes
//! everything queued. At low load an ack goes out as soon as it is asked for.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_lapin::lapin::options::{BasicAckOptions, BasicNackOptions};
use deadpool_lapin::lapin::Acker;
use tokio::sync::{mpsc, oneshot};

/// How an ack or nack went: `Ok(false)` when the channel was already closed
/// (the broker redelivers), `Err` with the client's error otherwise.
pub type Sent = Result<bool, String>;

enum Settle {
    /// A delivery the consume loop handed to a handler.
    Delivered(u64),
    Ack {
        tag: u64,
        acker: Acker,
        sent: oneshot::Sender<Sent>,
    },
    Nack {
        tag: u64,
        acker: Acker,
        requeue: bool,
        sent: oneshot::Sender<Sent>,
    },
}

/// The handle of one channel's ack task; cheap to clone. The task ends when
/// every handle is dropped.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Settle>,
}

impl Acks {
    /// Starts the ack task of one consumer channel.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx));
        Self { tx }
    }

    /// Registers a delivery before its handler runs (in delivery order).
    pub fn delivered(&self, tag: u64) {
        let _ = self.tx.send(Settle::Delivered(tag));
    }

    /// Acks the delivery `tag` (possibly together with others); returns
    /// once the frame that acks it was handed to the connection.
    pub async fn ack(&self, tag: u64, acker: &Acker) -> Sent {
        let (sent, done) = oneshot::channel();
        let settle = Settle::Ack {
            tag,
            acker: acker.clone(),
            sent,
        };
        if self.tx.send(settle).is_err() {
            return sent_result(acker.ack(BasicAckOptions::default()).await);
        }
        done.await
            .unwrap_or_else(|_| Err("the ack task stopped".into()))
    }

    /// Nacks the delivery `tag` on its own (`requeue`: back to the queue;
    /// otherwise to the queue's dead-letter exchange).
    pub async fn nack(&self, tag: u64, acker: &Acker, requeue: bool) -> Sent {
        let (sent, done) = oneshot::channel();
        let settle = Settle::Nack {
            tag,
            acker: acker.clone(),
            requeue,
            sent,
        };
        if self.tx.send(settle).is_err() {
            return sent_result(acker.nack(nack_options(requeue)).await);
        }
        done.await
            .unwrap_or_else(|_| Err("the ack task stopped".into()))
    }
}

fn nack_options(requeue: bool) -> BasicNackOptions {
    BasicNackOptions {
        requeue,
        multiple: false,
    }
}

fn sent_result(r: Result<bool, deadpool_lapin::lapin::Error>) -> Sent {
    r.map_err(|e| e.to_string())
}

/// The ready acks of one wake-up, by tag: `covered` by one `multiple` ack,
/// and `behind` a delivery still running (acked one by one).
struct Ready<T> {
    covered: Vec<(u64, T)>,
    behind: Vec<(u64, T)>,
}

/// What the task keeps between wake-ups; `T` is what a ready ack carries
/// (its acker and the handler's reply).
struct State<T> {
    /// Deliveries not yet acked or nacked to the broker.
    outstanding: BTreeSet<u64>,
    /// Of those, the ones whose handler asked for an ack.
    ready: BTreeMap<u64, T>,
}

impl<T> State<T> {
    fn new() -> Self {
        Self {
            outstanding: BTreeSet::new(),
            ready: BTreeMap::new(),
        }
    }

    /// Takes the ready acks: those one `multiple` ack may cover (every one
    /// below the lowest delivery still being handled), and the rest.
    fn take_ready(&mut self) -> Ready<T> {
        let running = self
            .outstanding
            .iter()
            .find(|tag| !self.ready.contains_key(tag))
            .copied();
        let behind = match running {
            Some(t) => self.ready.split_off(&t),
            None => BTreeMap::new(),
        };
        let covered = std::mem::take(&mut self.ready);
        Ready {
            covered: covered.into_iter().collect(),
            behind: behind.into_iter().collect(),
        }
    }

    /// The broker no longer holds `tag` unacknowledged.
    fn settled(&mut self, tag: u64) {
        self.outstanding.remove(&tag);
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Settle>) {
    let mut st: State<(Acker, oneshot::Sender<Sent>)> = State::new();
    while let Some(first) = rx.recv().await {
        // Let handlers released at the same moment ask too.
        tokio::task::yield_now().await;
        let mut next = Some(first);
        while let Some(settle) = next.take().or_else(|| rx.try_recv().ok()) {
            match settle {
                Settle::Delivered(tag) => {
                    st.outstanding.insert(tag);
                }
                Settle::Ack { tag, acker, sent } => {
                    st.ready.insert(tag, (acker, sent));
                }
                Settle::Nack {
                    tag,
                    acker,
                    requeue,
                    sent,
                } => {
                    let r = sent_result(acker.nack(nack_options(requeue)).await);
                    st.settled(tag);
                    let _ = sent.send(r);
                }
            }
        }
        let Ready { covered, behind } = st.take_ready();
        if let Some((_, (last, _))) = covered.last() {
            let multiple = covered.len() > 1;
            let r = sent_result(last.ack(BasicAckOptions { multiple }).await);
            for (tag, (_, sent)) in covered {
                st.settled(tag);
                let _ = sent.send(r.clone());
            }
        }
        let singles = behind.into_iter().map(|(tag, (acker, sent))| async move {
            let r = sent_result(acker.ack(BasicAckOptions::default()).await);
            let _ = sent.send(r);
            tag
        });
        for tag in futures::future::join_all(singles).await {
            st.settled(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(outstanding: &[u64], ready: &[u64]) -> State<()> {
        let mut st = State::new();
        st.outstanding.extend(outstanding);
        st.ready.extend(ready.iter().map(|t| (*t, ())));
        st
    }

    fn tags(v: &[(u64, ())]) -> Vec<u64> {
        v.iter().map(|(t, _)| *t).collect()
    }

    #[test]
    fn one_multiple_ack_covers_only_what_is_below_the_lowest_running_delivery() {
        let mut st = state(&[3, 4, 5, 7, 9], &[3, 4, 7, 9]);
        let Ready { covered, behind } = st.take_ready();
        assert_eq!(tags(&covered), [3, 4]);
        assert_eq!(tags(&behind), [7, 9], "acked one by one, not held back");
        assert!(st.ready.is_empty());
    }

    #[test]
    fn everything_ready_goes_in_one_ack() {
        let mut st = state(&[10, 11, 12], &[10, 11, 12]);
        let Ready { covered, behind } = st.take_ready();
        assert_eq!(tags(&covered), [10, 11, 12]);
        assert!(behind.is_empty());
    }

    #[test]
    fn nothing_is_covered_while_the_oldest_delivery_runs() {
        let mut st = state(&[1, 2, 3], &[2, 3]);
        let Ready { covered, behind } = st.take_ready();
        assert!(covered.is_empty());
        assert_eq!(tags(&behind), [2, 3]);
        // Settled (acked singly): the frontier moves past them once 1 is done.
        st.settled(2);
        st.settled(3);
        st.ready.insert(1, ());
        let Ready { covered, .. } = st.take_ready();
        assert_eq!(tags(&covered), [1]);
    }

    #[test]
    fn a_nacked_delivery_no_longer_bounds_the_ack() {
        // 5 was nacked on its own (settled), so 4 and 6 may go together.
        let mut st = state(&[4, 5, 6], &[4, 6]);
        st.settled(5);
        let Ready { covered, behind } = st.take_ready();
        assert_eq!(tags(&covered), [4, 6]);
        assert!(behind.is_empty());
    }
}
