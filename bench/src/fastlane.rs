//! (b) Fast lane: how fast the dispatcher drains a fast lane pre-filled
//! with single-content requests, first output to last id, next to two
//! baselines draining the same request bodies on the same broker
//! ([`crate::relay`]): the fastest honest relay (pipelined publishes,
//! confirms awaited in batches, `multiple` acks) and the broker's
//! consume-and-ack ceiling. Each is measured `--fast-rounds` times and the
//! best round counts, for the fleet and the baselines alike.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_shared::broker;
use fleet_shared::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::lapin::{BasicProperties, Channel, Confirmation, Connection};
use fleet_shared::message::{now_millis, outbound_queue, InvalidationRequest, CURRENT_VERSION};
use fleet_shared::topology::names;
use uuid::Uuid;

use crate::counter::{join_counter, outbound_ids, request_ids, start_counter};
use crate::relay;
use crate::report::{thousands, FastLane};
use crate::run::{Options, FAST_TYPE, KEY};
use crate::setup::BenchEnv;
use crate::worker::{PeakRss, Worker};

/// What [`publish`] did: when each message was due, and how far behind its
/// schedule the publisher fell at worst (the channel took a publish late).
pub struct Published {
    pub due: Vec<Instant>,
    pub worst_lag: Duration,
}

/// Publishes `bodies` to `exchange`/`routing_key` on one confirm channel,
/// persistent and mandatory, awaiting the confirms together at the end
/// (pipelined). With `rate`, the i-th is published when it is due at `rate`
/// per second; without, each as soon as the channel takes it.
pub async fn publish(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    bodies: impl IntoIterator<Item = Vec<u8>>,
    rate: Option<f64>,
) -> anyhow::Result<Published> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let start = Instant::now() + Duration::from_millis(5);
    let mut due_at = Vec::new();
    let mut worst_lag = Duration::ZERO;
    let mut confirms = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let due = match rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                due
            }
            None => Instant::now(),
        };
        confirms.push(
            ch.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props.clone(),
            )
            .await?,
        );
        worst_lag = worst_lag.max(Instant::now().saturating_duration_since(due));
        due_at.push(due);
    }
    for c in confirms {
        match c.await? {
            Confirmation::Ack(None) => {}
            other => bail!("publish to {exchange}/{routing_key} not confirmed: {other:?}"),
        }
    }
    let _ = ch.close(200, "published".into()).await;
    Ok(Published {
        due: due_at,
        worst_lag,
    })
}

/// [`publish`] as fast as the channel takes the messages.
pub async fn publish_pipelined(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    bodies: impl IntoIterator<Item = Vec<u8>>,
) -> anyhow::Result<()> {
    publish(conn, exchange, routing_key, bodies, None).await?;
    Ok(())
}

pub fn single_request(id: i64, run: &str, invalidation_time: i64) -> Vec<u8> {
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

/// Waits until `queue` holds `n` ready messages (the pre-fill arrived).
async fn wait_ready(ch: &Channel, queue: &str, n: u64) -> anyhow::Result<()> {
    for _ in 0..600 {
        let q = broker::inspect_queue(ch, queue)
            .await
            .with_context(|| format!("checking queue {queue}"))?;
        if u64::from(q.message_count()) >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{queue} did not fill up with {n} messages in 60 s")
}

/// Declares a durable scratch queue of the run, empty.
pub async fn declare(ch: &Channel, queue: &str) -> anyhow::Result<()> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declaring {queue}"))?;
    ch.queue_purge(queue.into(), Default::default()).await?;
    Ok(())
}

pub async fn fast_lane(
    env: &BenchEnv,
    opts: &Options,
    conn: &Connection,
    control: &Channel,
) -> anyhow::Result<FastLane> {
    let n = opts.fast_requests as u64;
    let prefetch = env.config().amqp.prefetch_for("dispatcher");
    eprintln!(
        "\n(b) fast lane: drain {} pre-filled single-content PRICE requests, {} round(s) each: \
         the dispatcher (prefetch {prefetch}), a pipelined relay, consume-and-ack…",
        thousands(n as f64),
        opts.fast_rounds
    );
    let now = now_millis();
    let bodies = |run: &str| -> Vec<Vec<u8>> {
        (1..=n as i64)
            .map(|id| single_request(id, run, now))
            .collect()
    };
    let url = env.config().amqp.url.clone();
    let mut out = FastLane {
        requests: n,
        prefetch,
        fleet: Vec::new(),
        fleet_messages: 0,
        relay: Vec::new(),
        ceiling: Vec::new(),
        dispatcher_peak_kib: 0,
    };
    let relay_in = "fleet-bench.relay.in";
    let relay_out = "fleet-bench.relay.out";
    let ceiling = "fleet-bench.ceiling";
    for q in [relay_in, relay_out, ceiling] {
        declare(control, q).await?;
    }
    for round in 1..=opts.fast_rounds {
        // The broker's ceiling: consume and ack, nothing else.
        let run = Uuid::new_v4().simple().to_string();
        publish_pipelined(conn, "", ceiling, bodies(&run)).await?;
        wait_ready(control, ceiling, n).await?;
        let drained = relay::consume_and_ack(&url, ceiling, prefetch, n).await?;
        out.ceiling.push(drained.rate());

        // The pipelined relay.
        let run = Uuid::new_v4().simple().to_string();
        publish_pipelined(conn, "", relay_in, bodies(&run)).await?;
        wait_ready(control, relay_in, n).await?;
        let counter =
            start_counter(conn, relay_out, n, Duration::from_secs(60), request_ids).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let relaying = tokio::spawn(relay::pipelined_relay(
            url.clone(),
            relay_in,
            relay_out,
            prefetch,
            stop.clone(),
        ));
        let counted = join_counter(counter).await;
        stop.cancel();
        relaying.await.context("the relay task panicked")??;
        out.relay.push(counted?.output_rate());

        // The fleet: a dispatcher subprocess started on the full lane.
        let run = Uuid::new_v4().simple().to_string();
        publish_pipelined(conn, names::REQUESTS, &FAST_TYPE.snake(), bodies(&run))
            .await
            .context("pre-filling the fast lane")?;
        wait_ready(control, names::FAST_LANE, n).await?;
        let counter = start_counter(
            conn,
            &outbound_queue(FAST_TYPE, KEY),
            n,
            Duration::from_secs(60),
            outbound_ids,
        )
        .await?;
        let mut worker = Worker::spawn(
            env,
            &["dispatcher"],
            &format!("fast-lane-dispatcher-{round}"),
            None,
        )
        .await?;
        let sampler = PeakRss::start(worker.pid);
        let counted = join_counter(counter).await;
        let peak = sampler.finish().await;
        let alive = worker.check_alive();
        worker.stop().await;
        alive?;
        let counted = counted?;
        out.fleet.push(counted.output_rate());
        out.dispatcher_peak_kib = out.dispatcher_peak_kib.max(peak);
        out.fleet_messages = counted.messages;
        eprintln!(
            "  round {round}: dispatcher {} requests/s ({} outbound messages, peak RSS {}), \
             relay {} msg/s, consume-and-ack {} msg/s.",
            thousands(counted.output_rate()),
            counted.messages,
            crate::report::mib(peak),
            thousands(out.relay[round - 1]),
            thousands(out.ceiling[round - 1]),
        );
    }
    Ok(out)
}
