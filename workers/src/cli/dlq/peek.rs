//! `fleet dlq peek <queue>`: messages with their error headers, left in the
//! queue in the same order. `sample` is also how `list` reads reasons and ages.

use std::process::ExitCode;

use anyhow::Context as _;
use fleet_shared::broker::header_i64;
use fleet_shared::config::Config;
use fleet_shared::lapin::options::{BasicGetOptions, BasicNackOptions};
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::lapin::{BasicProperties, Channel, Connection};
use fleet_shared::mgmt::{vhost_of, Management};
use fleet_shared::topology::Topology;
use serde_json::{json, Value};

use super::common::{
    age_text, connect, current, headers_json, queue_info, quorum_limit, quorum_note, Current, Seen,
};
use super::show;

pub(super) async fn run(
    config: &Config,
    topo: &Topology,
    queue: &str,
    limit: usize,
    as_json: bool,
    full: bool,
) -> anyhow::Result<ExitCode> {
    let conn = connect(config).await?;
    let info = queue_info(&conn, config, topo, queue).await?;
    let mgmt = Management::new(&config.amqp.management_url).ok();
    let quorum = quorum_limit(mgmt.as_ref(), &vhost_of(&config.amqp.url), queue).await;
    if let Some(limit) = quorum {
        quorum_note(queue, limit);
    }
    if info.consumers > 0 {
        eprintln!(
            "note: {queue} has {} consumer(s); they may take messages while you look.",
            info.consumers
        );
    }
    let messages = sample(&conn, queue, limit).await?;
    let _ = conn.close(200, "done".into()).await;
    if let Some(limit) = quorum {
        delivery_count_warning(queue, limit, &messages);
    }
    if as_json {
        let docs: Vec<Value> = messages
            .iter()
            .map(|p| peeked_json(p, &p.current(topo, queue)))
            .collect();
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if messages.is_empty() {
        println!("{queue} is empty.");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &messages {
        println!("── #{} of {} in {queue}", p.position, info.messages);
        println!(
            "   published to {:?} with routing key {:?}",
            p.exchange, p.routing_key
        );
        let now = p.current(topo, queue);
        println!("   why: {}", now.summary);
        if let Some((exchange, key)) = &now.origin {
            println!("   origin: exchange {exchange:?}, routing key {key:?}");
        }
        if let Some(t) = now.time {
            println!("   failed {} ago ({})", age_text(t), t.to_rfc3339());
        }
        let props = show::property_pairs(&p.properties);
        if !props.is_empty() {
            println!("   properties:");
            for (k, v) in props {
                println!("     {k}: {v}");
            }
        }
        if p.headers().is_some_and(|h| !h.inner().is_empty()) {
            println!("   headers:");
            for line in show::header_lines(p.headers()) {
                println!("     {line}");
            }
        }
        let (heading, lines) = show::body_lines(&p.body, full);
        println!("   {heading}");
        for line in lines {
            println!("     {line}");
        }
    }
    println!(
        "{} of {} message(s) shown; nothing was removed.",
        messages.len(),
        info.messages
    );
    Ok(ExitCode::SUCCESS)
}

/// A message looked at without taking it.
pub(super) struct Peeked {
    /// 1-based position from the head of the queue.
    pub position: usize,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Peeked {
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    /// Why it is in `queue` now (see `common::current`).
    pub fn current(&self, topo: &Topology, queue: &str) -> Current {
        current(
            topo,
            queue,
            &Seen {
                headers: self.headers(),
                exchange: &self.exchange,
                routing_key: &self.routing_key,
                timestamp: *self.properties.timestamp(),
            },
        )
    }
}

/// Up to `limit` messages from the head of `queue`, returned to the queue in
/// their original positions before this returns (one nack with
/// multiple=true, then the channel closes; if either fails the broker
/// returns them when the channel or connection goes away).
pub(super) async fn sample(
    conn: &Connection,
    queue: &str,
    limit: usize,
) -> anyhow::Result<Vec<Peeked>> {
    let ch = conn.create_channel().await.context("open a channel")?;
    let mut out = Vec::new();
    let mut last_tag = None;
    let fetched: anyhow::Result<()> = async {
        while out.len() < limit {
            let got = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .with_context(|| format!("cannot read from {queue}"))?;
            let Some(m) = got else { break };
            let d = m.delivery;
            last_tag = Some(d.delivery_tag);
            out.push(Peeked {
                position: out.len() + 1,
                exchange: d.exchange.to_string(),
                routing_key: d.routing_key.to_string(),
                redelivered: d.redelivered,
                properties: d.properties,
                body: d.data,
            });
        }
        Ok(())
    }
    .await;
    let returned = return_all(&ch, last_tag).await;
    let _ = ch.close(200, "peek done".into()).await;
    fetched?;
    returned.with_context(|| format!("cannot return peeked messages to {queue}"))?;
    Ok(out)
}

/// Returns every unacked message of the channel up to `last_tag`, in one nack.
pub(super) async fn return_all(
    ch: &Channel,
    last_tag: Option<u64>,
) -> Result<(), fleet_shared::lapin::Error> {
    if let Some(tag) = last_tag {
        ch.basic_nack(
            tag,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await?;
    }
    Ok(())
}

/// Warns when peeking again could push a quorum queue's message past its delivery limit.
fn delivery_count_warning(queue: &str, limit: Option<u64>, sampled: &[Peeked]) {
    let Some(limit) = limit else { return };
    let worst = sampled
        .iter()
        .filter_map(|p| header_i64(p.headers(), "x-delivery-count"))
        .max()
        .unwrap_or(0);
    if worst as u64 + 5 >= limit {
        eprintln!(
            "warning: a message of {queue} has been delivered {worst} times (limit {limit}): \
             replay or move it (`fleet dlq replay {queue} --to …`) before peeking it again."
        );
    }
}

fn peeked_json(p: &Peeked, now: &Current) -> Value {
    let mut doc = json!({
        "position": p.position,
        "exchange": p.exchange,
        "routingKey": p.routing_key,
        "redelivered": p.redelivered,
        "why": now.summary,
        "reason": now.label,
        "origin": now.origin.as_ref().map(|(e, k)| json!({"exchange": e, "routingKey": k})),
        "time": now.time.map(|t| t.to_rfc3339()),
        "properties": show::properties_json(&p.properties),
        "headers": headers_json(p.headers()),
        "deaths": show::deaths(p.headers()).iter().map(show::Death::json).collect::<Vec<_>>(),
    });
    if let Value::Object(m) = &mut doc {
        m.extend(show::body_json(&p.body));
    }
    doc
}
