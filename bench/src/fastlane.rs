//! (b) Fast lane: single-content requests end to end through the
//! dispatcher, against a raw consume-and-republish relay ([`crate::relay`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_shared::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::lapin::{BasicProperties, Confirmation, Connection};
use fleet_shared::message::{now_millis, outbound_queue, InvalidationRequest, CURRENT_VERSION};
use fleet_shared::topology::names;
use futures::StreamExt;
use uuid::Uuid;

use crate::counter::{join_counter, outbound_ids, request_ids, start_counter};
use crate::relay;
use crate::report::{rate, thousands, FastLane};
use crate::run::{Options, FAST_TYPE, KEY};
use crate::setup::BenchEnv;
use crate::worker::Worker;

/// Publishes `bodies` to `exchange`/`routing_key` as fast as the channel
/// takes them, awaiting the confirms in bulk at the end (pipelined).
async fn publish_pipelined(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    bodies: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let mut confirms = futures::stream::FuturesUnordered::new();
    for body in bodies {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props.clone(),
            )
            .await?;
        confirms.push(confirm);
    }
    while let Some(c) = confirms.next().await {
        match c? {
            Confirmation::Ack(None) => {}
            other => bail!("publish to {exchange}/{routing_key} not confirmed: {other:?}"),
        }
    }
    let _ = ch.close(200, "published".into()).await;
    Ok(())
}

fn single_request(id: i64, run: &str, invalidation_time: i64) -> Vec<u8> {
    InvalidationRequest {
        v: CURRENT_VERSION,
        request_id: Some(format!("bench-fast-{run}-{id}")),
        parameter_ids: vec![id],
        parameter_name: "id".into(),
        is_nested_type: false,
        nested_path_name: None,
        invalidation_type: FAST_TYPE,
        index_keys: vec![KEY],
        invalidation_time: Some(invalidation_time),
    }
    .encode()
}

pub async fn fast_lane(
    env: &BenchEnv,
    opts: &Options,
    conn: &Connection,
    worker: &mut Worker,
) -> anyhow::Result<FastLane> {
    let n = opts.fast_requests as u64;
    let prefetch = env.config().amqp.prefetch_for("dispatcher");
    eprintln!(
        "\n(b) fast lane: {} single-content PRICE requests (prefetch {prefetch})…",
        thousands(n as f64)
    );
    let run = Uuid::new_v4().simple().to_string();
    let now = now_millis();

    // The fleet: requests → dispatcher subprocess → outbound queue.
    worker.check_alive()?;
    let queue = outbound_queue(FAST_TYPE, KEY);
    let counter = start_counter(conn, &queue, n, Duration::from_secs(60), outbound_ids).await?;
    let t = Instant::now();
    publish_pipelined(
        conn,
        names::REQUESTS,
        &FAST_TYPE.snake(),
        (1..=n as i64).map(|id| single_request(id, &run, now)),
    )
    .await
    .context("publishing the fast-lane requests")?;
    let publish_secs = t.elapsed().as_secs_f64();
    let counted = join_counter(counter).await?;
    let fleet_secs = counted.last_new.duration_since(t).as_secs_f64();
    let fleet_messages = counted.messages;
    eprintln!(
        "  fleet: {} ids in {} outbound messages, {:.2} s ({} requests/s; publishing took {:.2} s).",
        thousands(counted.distinct as f64),
        counted.messages,
        fleet_secs,
        thousands(rate(counted.distinct, fleet_secs)),
        publish_secs
    );

    // The baseline: a raw relay in → out, confirm then ack, same prefetch.
    let relay_in = "fleet-bench.relay.in";
    let relay_out = "fleet-bench.relay.out";
    let setup = conn.create_channel().await?;
    for q in [relay_in, relay_out] {
        setup
            .queue_declare(
                q.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring {q}"))?;
    }
    let _ = setup.close(200, "declared".into()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(relay::raw_relay(
        env.config().amqp.url.clone(),
        relay_in,
        relay_out,
        prefetch,
        stop.clone(),
    ));
    let counter = start_counter(conn, relay_out, n, Duration::from_secs(60), request_ids).await?;
    let run = Uuid::new_v4().simple().to_string();
    let t = Instant::now();
    let published = publish_pipelined(
        conn,
        "",
        relay_in,
        (1..=n as i64).map(|id| single_request(id, &run, now)),
    )
    .await
    .context("publishing to the relay");
    let counted = match published {
        Ok(()) => join_counter(counter).await,
        Err(e) => Err(e),
    };
    stop.cancel();
    let relayed = relay.await.context("the relay task panicked")?;
    let counted = counted?;
    relayed?;
    let relay_secs = counted.last_new.duration_since(t).as_secs_f64();
    eprintln!(
        "  baseline: raw relay moved {} messages in {:.2} s ({} messages/s).",
        thousands(counted.distinct as f64),
        relay_secs,
        thousands(rate(counted.distinct, relay_secs))
    );
    Ok(FastLane {
        requests: n,
        fleet_secs,
        fleet_messages,
        relay_secs,
        prefetch,
    })
}
