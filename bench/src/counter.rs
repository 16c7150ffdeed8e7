//! Counting consumers: how many distinct content ids reached a queue, when
//! the first and the last new one arrived, and (for latency) when each did.
//!
//! The counter consumes without acknowledgements (`no_ack`), so it is never
//! the slowest part of what it measures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_shared::lapin::options::BasicConsumeOptions;
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::lapin::Connection;
use fleet_shared::message::{InvalidationRequest, OutboundBatch};
use futures::StreamExt;
use uuid::Uuid;

/// What a counting consumer saw.
#[derive(Debug, Clone)]
pub struct Counted {
    /// Distinct ids seen.
    pub distinct: u64,
    /// Messages consumed.
    pub messages: u64,
    /// Ids delivered, duplicates included.
    pub ids: u64,
    /// When the first message arrived, and the distinct ids it carried
    /// (a rate "first output to last id" counts the ids after it).
    pub first: Option<(Instant, u64)>,
    /// When the last new id arrived.
    pub last_new: Instant,
    /// When each id first arrived (only with [`Arrivals::Record`]).
    pub arrivals: HashMap<i64, Instant>,
    /// Why counting stopped before `expected` ids (nothing new for `idle`).
    pub stalled: Option<String>,
}

/// How to read the content ids of a message.
pub type Decode = fn(&[u8]) -> anyhow::Result<Vec<i64>>;

pub fn outbound_ids(body: &[u8]) -> anyhow::Result<Vec<i64>> {
    Ok(OutboundBatch::decode(body)?.content_ids)
}

pub fn request_ids(body: &[u8]) -> anyhow::Result<Vec<i64>> {
    Ok(InvalidationRequest::decode(body)?.parameter_ids)
}

/// Whether the counter keeps each id's arrival time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    Skip,
    Record,
}

impl Counted {
    /// Ids per second from the first output to the last new id, not
    /// counting the ids of the first message (its arrival starts the clock).
    pub fn output_rate(&self) -> f64 {
        match self.first {
            Some((at, first_ids)) => {
                let secs = self.last_new.duration_since(at).as_secs_f64();
                crate::report::rate(self.distinct.saturating_sub(first_ids), secs)
            }
            None => 0.0,
        }
    }
}

/// Starts consuming `queue` until `expected` distinct ids arrived or nothing
/// new came for `idle` (then `stalled` says so); resolves to what it saw.
pub async fn start_counter(
    conn: &Connection,
    queue: &str,
    expected: u64,
    idle: Duration,
    decode: Decode,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Counted>>> {
    start_counter_with(conn, queue, expected, idle, decode, Arrivals::Skip).await
}

/// [`start_counter`], keeping each id's arrival time when `arrivals` says so.
pub async fn start_counter_with(
    conn: &Connection,
    queue: &str,
    expected: u64,
    idle: Duration,
    decode: Decode,
    arrivals: Arrivals,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Counted>>> {
    let ch = conn.create_channel().await?;
    // Leftovers of an earlier measurement must not count in this one.
    ch.queue_purge(queue.into(), Default::default())
        .await
        .with_context(|| format!("purging {queue}"))?;
    let tag = format!("fleet-bench-counter-{}", Uuid::new_v4().simple());
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {queue}"))?;
    let queue = queue.to_string();
    Ok(tokio::spawn(async move {
        let mut seen: HashMap<i64, Instant> = HashMap::with_capacity(expected as usize);
        let mut c = Counted {
            distinct: 0,
            messages: 0,
            ids: 0,
            first: None,
            last_new: Instant::now(),
            arrivals: HashMap::new(),
            stalled: None,
        };
        while c.distinct < expected {
            let next = tokio::time::timeout(idle, consumer.next()).await;
            let delivery = match next {
                Ok(Some(d)) => d.with_context(|| format!("consuming {queue}"))?,
                Ok(None) => bail!("the consumer of {queue} was cancelled"),
                Err(_) => {
                    c.stalled = Some(format!(
                        "nothing new on {queue} for {idle:?}: {} of {expected} ids arrived",
                        c.distinct
                    ));
                    break;
                }
            };
            let ids =
                decode(&delivery.data).with_context(|| format!("decoding a message of {queue}"))?;
            let now = Instant::now();
            c.messages += 1;
            c.ids += ids.len() as u64;
            let before = seen.len();
            for id in ids {
                seen.entry(id).or_insert(now);
            }
            if seen.len() > before {
                c.distinct = seen.len() as u64;
                c.last_new = now;
                c.first.get_or_insert((now, c.distinct));
            }
        }
        let _ = ch.close(200, "counted".into()).await;
        if arrivals == Arrivals::Record {
            c.arrivals = seen;
        }
        Ok(c)
    }))
}

/// What the counter saw; a stall is an error.
pub async fn join_counter(
    h: tokio::task::JoinHandle<anyhow::Result<Counted>>,
) -> anyhow::Result<Counted> {
    let c = join_counter_partial(h).await?;
    match c.stalled {
        Some(why) => bail!("{why}"),
        None => Ok(c),
    }
}

/// What the counter saw, also when it stalled.
pub async fn join_counter_partial(
    h: tokio::task::JoinHandle<anyhow::Result<Counted>>,
) -> anyhow::Result<Counted> {
    h.await.context("the counting task panicked")?
}
