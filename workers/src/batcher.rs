//! Outbound batching: content ids for the same type and index key share a
//! message, so the fast lane is not bound to one publish per request.
//!
//! A submission never spans two batches (callers submit at most `batch_size`
//! ids at once), so each submitter waits on exactly one publisher confirm.
//! A batch goes out at once when it is full or when its key has a free
//! in-flight slot; otherwise it waits for a confirm to free one, and never
//! longer than `flush_interval`. Publishing runs in its own task, so
//! confirms are pipelined.

use std::collections::HashMap;
use std::time::Duration;

use fleet_shared::broker::{Outgoing, PublishError, Publisher};
use fleet_shared::message::{
    outbound_routing_key, IndexKey, InvalidationType, OutboundBatch, CURRENT_VERSION,
};
use fleet_shared::telemetry;
use fleet_shared::topology::names;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use indexmap::IndexSet;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Where a submission's ids go and where they come from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub invalidation_type: InvalidationType,
    pub index_key: IndexKey,
    pub request_id: String,
    pub invalidation_time: i64,
}

struct Submit {
    origin: Origin,
    ids: Vec<i64>,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// A handle to the batching task; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Submit>,
    batch_size: usize,
}

/// Resolves when the ids of one submission are confirmed by the broker.
pub type Confirm = oneshot::Receiver<Result<(), PublishError>>;

impl Batcher {
    /// Starts the batching task; it ends when every handle is dropped, after
    /// flushing what it holds.
    pub fn start(
        publisher: Publisher,
        worker: String,
        batch_size: usize,
        flush_interval: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(rx, publisher, worker, batch_size, flush_interval));
        Self { tx, batch_size }
    }

    /// A batcher with the worker's publisher and the configured batch size and flush interval.
    pub fn for_context(ctx: &fleet_shared::runtime::Context) -> Self {
        let c = &ctx.config.dispatcher;
        Self::start(
            ctx.publisher.clone(),
            ctx.identity.worker.clone(),
            c.batch_size,
            c.flush_interval,
        )
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Queues at most `batch_size` ids; the receiver resolves once they are confirmed.
    pub async fn submit(&self, origin: Origin, ids: Vec<i64>) -> Confirm {
        debug_assert!(ids.len() <= self.batch_size);
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(s)) = self.tx.send(Submit { origin, ids, done }).await {
            let _ = s
                .done
                .send(Err(PublishError::Broker("the batcher has stopped".into())));
        }
        rx
    }

    /// Submits any number of ids (chunked) keeping at most `max_in_flight`
    /// chunks unconfirmed, and waits for all of them: memory stays bounded
    /// however many ids the stream brings.
    pub fn sink(&self, max_in_flight: usize) -> Sink<'_> {
        Sink {
            batcher: self,
            pending: FuturesUnordered::new(),
            max_in_flight: max_in_flight.max(1),
            submitted: 0,
        }
    }
}

/// See [`Batcher::sink`].
pub struct Sink<'a> {
    batcher: &'a Batcher,
    pending: FuturesUnordered<Confirm>,
    max_in_flight: usize,
    submitted: u64,
}

impl Sink<'_> {
    pub async fn push(&mut self, origin: &Origin, ids: &[i64]) -> Result<(), PublishError> {
        for chunk in ids.chunks(self.batcher.batch_size) {
            while self.pending.len() >= self.max_in_flight {
                self.next_confirm().await?;
            }
            let rx = self.batcher.submit(origin.clone(), chunk.to_vec()).await;
            self.pending.push(rx);
            self.submitted += chunk.len() as u64;
        }
        Ok(())
    }

    async fn next_confirm(&mut self) -> Result<(), PublishError> {
        match self.pending.next().await {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(PublishError::Broker("the batcher dropped a batch".into())),
            None => Ok(()),
        }
    }

    /// Waits for every confirm; returns how many ids were published.
    pub async fn finish(mut self) -> Result<u64, PublishError> {
        while !self.pending.is_empty() {
            self.next_confirm().await?;
        }
        Ok(self.submitted)
    }
}

struct Pending {
    first: Origin,
    /// The distinct requests of the batch, in the order they came (what the
    /// batch names); a set, so a check per submission stays constant-time
    /// when a stalled confirm lets a batch gather thousands.
    request_ids: IndexSet<String>,
    invalidation_time: i64,
    ids: Vec<i64>,
    waiters: Vec<oneshot::Sender<Result<(), PublishError>>>,
    deadline: Instant,
}

type Key = (InvalidationType, IndexKey);

/// Batches of one key that may await their confirm at once before new ids
/// for that key wait (up to `flush_interval`) for one of them to confirm.
///
/// This is what makes batches form by themselves under load: at low load a
/// request is published at once (no timer to wait out), while under load the
/// ids that arrive during one confirm round trip travel together in the next
/// message. Two in flight keeps the broker busy while one confirm returns.
const MAX_IN_FLIGHT_PER_KEY: usize = 2;

async fn run(
    mut rx: mpsc::Receiver<Submit>,
    publisher: Publisher,
    worker: String,
    batch_size: usize,
    flush_interval: Duration,
) {
    let mut pending: HashMap<Key, Pending> = HashMap::new();
    let mut in_flight: HashMap<Key, usize> = HashMap::new();
    let (confirmed_tx, mut confirmed) = mpsc::unbounded_channel::<Key>();
    let flush = |key: Key, p: Pending, in_flight: &mut HashMap<Key, usize>| {
        *in_flight.entry(key).or_default() += 1;
        publish(&publisher, &worker, key, p, confirmed_tx.clone());
    };
    let mut open = true;
    while open || !pending.is_empty() || in_flight.values().any(|n| *n > 0) {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        let sleep = async {
            match next_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv(), if open => {
                let Some(Submit { origin, ids, done }) = msg else {
                    // Every handle is gone: flush what is left, then stop
                    // once the last confirm came back.
                    open = false;
                    for (key, p) in pending.drain() {
                        flush(key, p, &mut in_flight);
                    }
                    continue;
                };
                let key = (origin.invalidation_type, origin.index_key);
                if let Some(p) = pending.get(&key) {
                    if p.ids.len() + ids.len() > batch_size {
                        let full = pending.remove(&key).expect("checked above");
                        flush(key, full, &mut in_flight);
                    }
                }
                let p = pending.entry(key).or_insert_with(|| Pending {
                    first: origin.clone(),
                    request_ids: IndexSet::new(),
                    invalidation_time: origin.invalidation_time,
                    ids: Vec::with_capacity(batch_size),
                    waiters: Vec::new(),
                    deadline: Instant::now() + flush_interval,
                });
                p.request_ids.insert(origin.request_id.clone());
                p.invalidation_time = p.invalidation_time.min(origin.invalidation_time);
                p.ids.extend_from_slice(&ids);
                p.waiters.push(done);
                let idle = in_flight.get(&key).copied().unwrap_or(0) < MAX_IN_FLIGHT_PER_KEY;
                if p.ids.len() >= batch_size || idle {
                    let ready = pending.remove(&key).expect("just inserted");
                    flush(key, ready, &mut in_flight);
                }
            }
            Some(key) = confirmed.recv() => {
                if let Some(n) = in_flight.get_mut(&key) {
                    *n = n.saturating_sub(1);
                }
                // A slot freed: what accumulated meanwhile goes now.
                if let Some(p) = pending.remove(&key) {
                    flush(key, p, &mut in_flight);
                }
            }
            _ = sleep => {
                let now = Instant::now();
                let due: Vec<Key> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
                for key in due {
                    if let Some(p) = pending.remove(&key) {
                        flush(key, p, &mut in_flight);
                    }
                }
            }
        }
    }
}

/// Publishes one batch in its own task; reports back when it is confirmed (or failed).
fn publish(
    publisher: &Publisher,
    worker: &str,
    key: Key,
    p: Pending,
    confirmed: mpsc::UnboundedSender<Key>,
) {
    let publisher = publisher.clone();
    let worker = worker.to_string();
    tokio::spawn(async move {
        let batch = OutboundBatch {
            v: CURRENT_VERSION,
            request_id: p.first.request_id.clone(),
            request_ids: if p.request_ids.len() > 1 {
                p.request_ids.into_iter().collect()
            } else {
                Vec::new()
            },
            invalidation_type: p.first.invalidation_type,
            index_key: p.first.index_key,
            content_ids: p.ids,
            invalidation_time: p.invalidation_time,
        };
        // `unwrap`: plain data serialises.
        let body = serde_json::to_vec(&batch).unwrap();
        let routing_key = outbound_routing_key(batch.invalidation_type, batch.index_key);
        let result = publisher
            .publish(Outgoing::json(names::OUTBOUND, &routing_key, &body))
            .await;
        if result.is_ok() {
            telemetry::ids_published(
                &worker,
                batch.invalidation_type.as_str(),
                batch.content_ids.len(),
            );
        }
        let _ = confirmed.send(key);
        for w in p.waiters {
            let _ = w.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.clone()),
            });
        }
    });
}
