//! The fast lane's baselines on the same broker, each draining a queue
//! pre-filled with the same request bodies the fleet drains:
//!
//! - [`pipelined_relay`]: the fastest honest consume-and-republish worker —
//!   every delivery republished at once on a confirm channel (publishes
//!   pipelined, never awaited one by one), the confirms of a batch awaited
//!   together by a second task while the consumer goes on, then the whole
//!   batch acked with one `multiple` ack. A batch is `prefetch / 2`
//!   deliveries, or fewer when no further delivery is waiting.
//! - [`consume_and_ack`]: the broker's ceiling for any consumer of the
//!   queue — deliveries acked with `multiple` acks in the same batches, and
//!   nothing else done with them.

use std::time::Instant;

use anyhow::{bail, Context as _};
use fleet_shared::broker::{self, Identity};
use fleet_shared::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::lapin::{Acker, Confirmation, Connection, Consumer, PublisherConfirm};
use futures::{FutureExt as _, StreamExt};

/// Acks `multiple` up to and including `acker`'s delivery.
async fn ack_through(acker: &Acker) -> anyhow::Result<()> {
    acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .context("acking a batch")?;
    Ok(())
}

async fn consumer(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> anyhow::Result<Consumer> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("consuming {queue}"))
}

/// The next delivery, or `None` when `wait` is false and none is waiting.
async fn next_delivery(
    consumer: &mut Consumer,
    wait: bool,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<fleet_shared::lapin::message::Delivery>> {
    if !wait {
        return match consumer.next().now_or_never() {
            Some(Some(d)) => Ok(Some(d?)),
            Some(None) => bail!("the baseline's consumer was cancelled"),
            None => Ok(None),
        };
    }
    tokio::select! {
        _ = stop.cancelled() => Ok(None),
        d = consumer.next() => match d {
            Some(d) => Ok(Some(d?)),
            None => bail!("the baseline's consumer was cancelled"),
        },
    }
}

/// Relays `from` to `to` until `stop` (see the module's description).
pub async fn pipelined_relay(
    url: String,
    from: &'static str,
    to: &'static str,
    prefetch: u16,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let identity = Identity::new("bench-relay");
    let consumer_conn = broker::connect(&url, &identity, "consumer").await?;
    let publisher_conn = broker::connect(&url, &identity, "publisher").await?;
    let mut deliveries = consumer(&consumer_conn, from, prefetch, "fleet-bench-relay").await?;
    let out = publisher_conn.create_channel().await?;
    out.confirm_select(ConfirmSelectOptions::default()).await?;
    let batch = usize::from(prefetch / 2).max(1);
    // Batches travel in order to the task that awaits their confirms and
    // acks them, so `multiple` never acks a delivery whose copy is unconfirmed.
    let (batches, mut confirmed) =
        tokio::sync::mpsc::unbounded_channel::<(Vec<PublisherConfirm>, Acker)>();
    let acking = tokio::spawn(async move {
        while let Some((confirms, last)) = confirmed.recv().await {
            for confirm in confirms {
                match confirm.await? {
                    Confirmation::Ack(None) => {}
                    other => bail!("relay publish not confirmed: {other:?}"),
                }
            }
            ack_through(&last).await?;
        }
        anyhow::Ok(())
    });
    let mut pending: Vec<PublisherConfirm> = Vec::with_capacity(batch);
    let mut last: Option<Acker> = None;
    loop {
        // Wait only when nothing is pending; otherwise a pause in the
        // deliveries closes the batch.
        let Some(delivery) = next_delivery(&mut deliveries, pending.is_empty(), &stop).await?
        else {
            if pending.is_empty() {
                break;
            }
            let acker = last.take().expect("a pending batch has a last delivery");
            if batches.send((std::mem::take(&mut pending), acker)).is_err() {
                break;
            }
            continue;
        };
        let confirm = out
            .basic_publish(
                "".into(),
                to.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                delivery.properties,
            )
            .await?;
        pending.push(confirm);
        last = Some(delivery.acker);
        if pending.len() >= batch {
            let acker = last.take().expect("just set");
            if batches.send((std::mem::take(&mut pending), acker)).is_err() {
                break;
            }
        }
    }
    drop(batches);
    acking.await.context("the relay's acking task panicked")??;
    let _ = consumer_conn.close(200, "relay done".into()).await;
    let _ = publisher_conn.close(200, "relay done".into()).await;
    Ok(())
}

/// What [`consume_and_ack`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    /// Deliveries received.
    pub messages: u64,
    /// From the first delivery to the last one.
    pub secs: f64,
}

impl Drained {
    /// Deliveries per second after the first (whose arrival starts the clock).
    pub fn rate(&self) -> f64 {
        crate::report::rate(self.messages.saturating_sub(1), self.secs)
    }
}

/// Consumes `expected` deliveries of `queue` and acks them (see the module's
/// description); the time runs from the first delivery to the last.
pub async fn consume_and_ack(
    url: &str,
    queue: &str,
    prefetch: u16,
    expected: u64,
) -> anyhow::Result<Drained> {
    let identity = Identity::new("bench-ceiling");
    let conn = broker::connect(url, &identity, "consumer").await?;
    let mut deliveries = consumer(&conn, queue, prefetch, "fleet-bench-ceiling").await?;
    let batch = u64::from(prefetch / 2).max(1);
    let never = tokio_util::sync::CancellationToken::new();
    let (mut n, mut unacked) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last_at = Instant::now();
    let mut last: Option<Acker> = None;
    while n < expected {
        let delivery = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            next_delivery(&mut deliveries, unacked == 0, &never),
        )
        .await
        .with_context(|| format!("{queue}: no delivery for 30 s after {n} of {expected}"))??;
        let Some(delivery) = delivery else {
            if let Some(acker) = last.take() {
                ack_through(&acker).await?;
            }
            unacked = 0;
            continue;
        };
        last_at = Instant::now();
        first.get_or_insert(last_at);
        n += 1;
        unacked += 1;
        last = Some(delivery.acker);
        if unacked >= batch {
            ack_through(last.as_ref().expect("just set")).await?;
            unacked = 0;
        }
    }
    if let Some(acker) = last.take() {
        ack_through(&acker).await?;
    }
    let _ = conn.close(200, "drained".into()).await;
    Ok(Drained {
        messages: n,
        secs: first.map_or(0.0, |f| last_at.duration_since(f).as_secs_f64()),
    })
}
