//! The fast lane's baseline: the least a consume-and-republish worker can
//! do on the same broker (confirm, then ack; the dispatcher's prefetch).

use anyhow::{bail, Context as _};
use fleet_shared::broker::{self, Identity};
use fleet_shared::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::lapin::Confirmation;
use futures::StreamExt;

/// Consumes `from` with `prefetch` unacked deliveries; each is republished
/// to `to` with a publisher confirm and acked after the confirm.
pub async fn raw_relay(
    url: String,
    from: &'static str,
    to: &'static str,
    prefetch: u16,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let identity = Identity::new("bench-relay");
    let consumer_conn = broker::connect(&url, &identity, "consumer").await?;
    let publisher_conn = broker::connect(&url, &identity, "publisher").await?;
    let ch = consumer_conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let out = publisher_conn.create_channel().await?;
    out.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            from.into(),
            "fleet-bench-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            d = consumer.next() => match d {
                Some(d) => d?,
                None => break,
            },
        };
        let out = out.clone();
        tasks.spawn(async move {
            let confirm = out
                .basic_publish(
                    "".into(),
                    to.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    delivery.properties.clone(),
                )
                .await?
                .await?;
            if !matches!(confirm, Confirmation::Ack(None)) {
                bail!("relay publish not confirmed: {confirm:?}");
            }
            delivery.ack(BasicAckOptions::default()).await?;
            anyhow::Ok(())
        });
        // Reap finished relays so the set stays at most `prefetch` long.
        while let Some(done) = tasks.try_join_next() {
            done.context("a relay task panicked")??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a relay task panicked")??;
    }
    let _ = consumer_conn.close(200, "relay done".into()).await;
    let _ = publisher_conn.close(200, "relay done".into()).await;
    Ok(())
}
