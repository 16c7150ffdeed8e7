//! What every `dlq` subcommand shares: the connection, finding a queue (with
//! "did you mean …?"), the quorum notes, and showing message bodies.

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use fleet_shared::broker::{self, Identity};
use fleet_shared::config::Config;
use fleet_shared::lapin::Connection;
use fleet_shared::mgmt::{vhost_of, Management};
use fleet_shared::topology::Topology;
use serde_json::Value;

pub(super) async fn connect(config: &Config) -> anyhow::Result<Connection> {
    Ok(broker::connect(&config.amqp.url, &Identity::new("cli"), "dlq").await?)
}

/// What the broker says about one queue (AMQP passive declare: exact, not sampled).
pub(super) struct QueueInfo {
    /// Ready messages.
    pub messages: u32,
    pub consumers: u32,
}

/// Checks the queue exists; a typo gets "did you mean …?".
pub(super) async fn queue_info(
    conn: &Connection,
    config: &Config,
    topo: &Topology,
    queue: &str,
) -> anyhow::Result<QueueInfo> {
    // A passive declare of a missing queue closes its channel: use a throwaway one.
    let ch = conn.create_channel().await.context("open a channel")?;
    match broker::inspect_queue(&ch, queue).await {
        Ok(q) => {
            let _ = ch.close(200, "done".into()).await;
            Ok(QueueInfo {
                messages: q.message_count(),
                consumers: q.consumer_count(),
            })
        }
        Err(e) if broker::is_not_found(&e) => {
            let mut candidates: Vec<String> = topo.queues.iter().map(|q| q.name.clone()).collect();
            // Queues outside the topology count too, when the management API answers.
            if let Ok(mgmt) = Management::new(&config.amqp.management_url) {
                if let Ok(live) = mgmt.queues(&vhost_of(&config.amqp.url)).await {
                    candidates.extend(live.into_iter().map(|q| q.name));
                }
            }
            bail!("{}", missing_queue_message(queue, &candidates))
        }
        Err(e) => Err(e).with_context(|| format!("cannot look up queue {queue}")),
    }
}

/// "no queue X; did you mean Y?", or the operator queues when nothing is close.
fn missing_queue_message(queue: &str, candidates: &[String]) -> String {
    let vhost_hint = "(in the vhost of AMQP_URL)";
    match suggest(queue, candidates) {
        Some(s) => format!("no queue {queue} {vhost_hint}; did you mean {s}?"),
        None => format!(
            "no queue {queue} {vhost_hint}; `fleet dlq list --all` shows the operator queues"
        ),
    }
}

/// The closest candidate by edit distance, when it is close enough to be a typo.
fn suggest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let best = candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .min_by_key(|(d, _)| *d)?;
    let max = (name.chars().count() / 3).max(2);
    (best.0 <= max).then_some(best.1.as_str())
}

pub(super) fn is_operator_queue(topo: &Topology, queue: &str) -> bool {
    topo.operator_queues().iter().any(|q| q.name == queue)
}

/// The `x-delivery-limit` of `queue` when the broker holds it as a quorum
/// queue (`Some(None)`: quorum without a limit); `None` for other queues or
/// when the management API does not answer.
pub(super) async fn quorum_limit(
    mgmt: Option<&Management>,
    vhost: &str,
    queue: &str,
) -> Option<Option<u64>> {
    let q = mgmt?.queue(vhost, queue).await.ok()?;
    (q.kind == "quorum").then(|| q.delivery_limit())
}

pub(super) fn quorum_note(queue: &str, limit: Option<u64>) {
    let limit = limit.map_or("its delivery limit".to_string(), |l| {
        format!("its x-delivery-limit ({l})")
    });
    eprintln!(
        "note: {queue} is a quorum queue: every peek counts as a delivery attempt against \
         {limit}; a message past the limit is dropped by the broker."
    );
}

pub(super) fn age_text(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// The body for people: pretty JSON when it parses, else escaped text.
pub(super) fn readable_body(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        // `unwrap_or_else`: a parsed value always serialises; keep the raw text just in case.
        return serde_json::to_string_pretty(&v)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    }
    match std::str::from_utf8(body) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => body.escape_ascii().to_string(),
    }
}

/// The body on one line, at most 100 characters.
pub(super) fn body_preview(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v.to_string(),
        Err(_) => readable_body(body),
    };
    let mut out: String = text.chars().take(100).collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        let c = vec![
            "invalidation.requests.fast.dlq".to_string(),
            "invalidation.requests.bulk.dlq".to_string(),
            "invalidation.parked".to_string(),
        ];
        assert_eq!(
            suggest("invalidation.request.fast.dlq", &c),
            Some("invalidation.requests.fast.dlq")
        );
        assert_eq!(
            suggest("invalidation.parkd", &c),
            Some("invalidation.parked")
        );
        assert_eq!(suggest("orders", &c), None);
    }
}
