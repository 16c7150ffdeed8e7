//! The downstream side: one consumer on every outbound queue that records,
//! per queue and content id, when it first arrived and how often. It
//! reconnects by itself when the broker goes away.
//!
//! A message the broker delivers again after a lost connection (flagged
//! `redelivered`) whose bytes were already counted is acknowledged without
//! counting: that duplicate is the counter's, not the fleet's.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_shared::broker::{self, Identity};
use fleet_shared::lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::message::OutboundBatch;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One content id on one queue.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub first: Instant,
    pub count: u32,
}

/// What arrived on one outbound queue.
#[derive(Debug, Default)]
pub struct QueueSeen {
    pub ids: HashMap<i64, Seen>,
    /// Ids delivered, duplicates included.
    pub total: u64,
    pub messages: u64,
}

/// Everything counted so far.
#[derive(Debug, Default)]
pub struct Tally {
    pub queues: HashMap<String, QueueSeen>,
    /// Digests of the bodies counted, to recognise the broker's redeliveries.
    bodies: HashSet<u64>,
    /// Redeliveries of already counted messages (not counted again).
    pub redeliveries: u64,
    /// Messages that were not outbound batches.
    pub undecodable: u64,
    /// When the last message arrived.
    pub last: Option<Instant>,
    /// Times the counter connected again after losing the broker.
    pub reconnects: u64,
}

impl Tally {
    fn record(&mut self, queue: &str, body: &[u8], redelivered: bool) {
        let mut h = DefaultHasher::new();
        queue.hash(&mut h);
        body.hash(&mut h);
        let digest = h.finish();
        let now = Instant::now();
        self.last = Some(now);
        if !self.bodies.insert(digest) && redelivered {
            self.redeliveries += 1;
            return;
        }
        let Ok(batch) = OutboundBatch::decode(body) else {
            self.undecodable += 1;
            return;
        };
        let q = self.queues.entry(queue.to_string()).or_default();
        q.messages += 1;
        q.total += batch.content_ids.len() as u64;
        for id in batch.content_ids {
            q.ids
                .entry(id)
                .and_modify(|s| s.count += 1)
                .or_insert(Seen {
                    first: now,
                    count: 1,
                });
        }
    }

    /// When `id` first arrived on `queue`.
    pub fn first_seen(&self, queue: &str, id: i64) -> Option<Instant> {
        self.queues.get(queue)?.ids.get(&id).map(|s| s.first)
    }
}

/// The running counter.
pub struct Counter {
    pub tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Counter {
    /// Starts consuming `queues` on the broker at `url`.
    pub fn start(url: &str, queues: Vec<String>) -> Counter {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(url.to_string(), queues, tally.clone(), stop.clone()));
        Counter {
            tally,
            stop,
            handle,
        }
    }

    /// Reads the tally.
    pub fn read<R>(&self, f: impl FnOnce(&Tally) -> R) -> R {
        f(&self.tally.lock().expect("the tally lock is never poisoned"))
    }

    /// Waits until nothing arrived for `quiet` (or `max` passed), then stops.
    pub async fn drain_and_stop(self, quiet: Duration, max: Duration) -> Tally {
        let deadline = Instant::now() + max;
        loop {
            let last = self.read(|t| t.last);
            if last.is_none_or(|l| l.elapsed() >= quiet) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop.cancel();
        let _ = self.handle.await;
        let tally = std::mem::take(&mut *self.tally.lock().expect("never poisoned"));
        tally
    }
}

async fn run(url: String, queues: Vec<String>, tally: Arc<Mutex<Tally>>, stop: CancellationToken) {
    let mut connected_before = false;
    loop {
        let ended = session(&url, &queues, &tally, &stop, &mut connected_before).await;
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = ended {
            tracing::debug!(error = %e, "The counter lost the broker; reconnecting.");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn session(
    url: &str,
    queues: &[String],
    tally: &Mutex<Tally>,
    stop: &CancellationToken,
    connected_before: &mut bool,
) -> anyhow::Result<()> {
    let conn = broker::connect(url, &Identity::new("chaos"), "counter").await?;
    if std::mem::replace(connected_before, true) {
        tally.lock().expect("never poisoned").reconnects += 1;
    }
    let ch = conn.create_channel().await?;
    ch.basic_qos(2000, BasicQosOptions::default()).await?;
    let mut streams = Vec::new();
    for q in queues {
        let consumer = ch
            .basic_consume(
                q.as_str().into(),
                format!("chaos-counter {q}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let queue = q.clone();
        streams.push(consumer.map(move |d| (queue.clone(), d)).boxed());
    }
    let mut merged = futures::stream::select_all(streams);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = conn.close(200, "counted".into()).await;
                return Ok(());
            }
            next = merged.next() => match next {
                Some((queue, Ok(d))) => {
                    tally
                        .lock()
                        .expect("never poisoned")
                        .record(&queue, &d.data, d.redelivered);
                    d.ack(BasicAckOptions::default()).await?;
                }
                Some((_, Err(e))) => return Err(e.into()),
                None => anyhow::bail!("every consumer of the counter was cancelled"),
            }
        }
    }
}
