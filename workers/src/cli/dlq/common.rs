//! What every `dlq` subcommand shares: the connection, finding a queue (with
//! "did you mean …?"), the quorum notes, and showing message bodies.

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use fleet_shared::broker::{self, header_tables, header_text, headers, Identity};
use fleet_shared::config::Config;
use fleet_shared::lapin::types::{AMQPValue, FieldTable};
use fleet_shared::lapin::Connection;
use fleet_shared::mgmt::{vhost_of, Management};
use fleet_shared::topology::{names, Topology};
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

/// Who put a message where it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum By {
    /// The fleet's runtime or retry handler: `x-error-*`, `x-park-reason`.
    Fleet,
    /// The broker itself (a consumer's reject, a delivery limit, a TTL, a
    /// length limit): the newest `x-death` entry of the queue it left.
    Broker,
    /// The alternate exchange: it was published with a routing key no
    /// binding matched, and nobody wrote anything about it.
    Unroutable,
    /// Nobody said.
    Unknown,
}

/// Why a message is in an operator queue, read from its current headers
/// only: what an earlier failure wrote is history (`x-history`), and stale
/// `x-error-*` on a message the broker dead-lettered afterwards do not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Current {
    pub by: By,
    /// For counting in `list`: the error class, `parked: <kind>`,
    /// `broker: <reason>`, or the routing key of an unroutable message.
    pub label: String,
    /// What `--filter class=` matches: `x-error-class`, or the broker's
    /// reason (`rejected`, `expired`, `maxlen`, `delivery_limit`).
    pub class: Option<String>,
    /// What `--filter reason=` searches.
    pub reasons: Vec<String>,
    /// Where it came from: the exchange and routing key to replay it to.
    pub origin: Option<(String, String)>,
    /// When it got here.
    pub time: Option<DateTime<Utc>>,
    /// One line for people.
    pub summary: String,
}

/// A message as read from a queue: its headers, where the broker says it was
/// published to (exchange, routing key) and its timestamp property.
pub(super) struct Seen<'a> {
    pub headers: Option<&'a FieldTable>,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub timestamp: Option<u64>,
}

/// The newest `x-death` entry for the queue `queue` holds the dead letters
/// of (any entry's queue when `queue` is not in the topology). Parking and
/// unroutable queues are never dead-lettered into by the broker.
fn broker_death(topo: &Topology, queue: &str, h: Option<&FieldTable>) -> Option<FieldTable> {
    let deaths = header_tables(h, headers::DEATH);
    match topo.queue(queue) {
        Some(q) => {
            let source = q.dead_letters_of.as_deref()?;
            deaths
                .into_iter()
                .find(|d| header_text(Some(d), "queue").as_deref() == Some(source))
        }
        None => deaths.into_iter().next(),
    }
}

/// Reads why a message is in `queue` (see [`Current`]).
pub(super) fn current(topo: &Topology, queue: &str, m: &Seen<'_>) -> Current {
    let h = m.headers;
    let text = |k: &str| header_text(h, k);
    // The fleet moves `x-death` into its history whenever it writes a
    // diagnosis, so an `x-death` entry for this queue's source is newer
    // than any `x-error-*` beside it.
    if let Some(death) = broker_death(topo, queue, h) {
        let field = |k: &str| header_text(Some(&death), k);
        let reason = field("reason").unwrap_or_else(|| "dead-lettered".into());
        let from = field("queue").unwrap_or_default();
        let exchange = field("exchange");
        let key = match death.inner().get("routing-keys") {
            Some(AMQPValue::FieldArray(keys)) => {
                keys.as_slice().first().and_then(broker::value_text)
            }
            _ => None,
        };
        let time = field("time")
            .and_then(|t| t.parse::<i64>().ok())
            .and_then(|t| DateTime::from_timestamp(t, 0));
        let origin = exchange
            .clone()
            .map(|e| (e, key.clone().unwrap_or_default()));
        let summary = format!(
            "dead-lettered by the broker ({reason}) from queue {from}, where it had been published to \
             exchange {:?} with routing key {:?}",
            exchange.unwrap_or_default(),
            key.unwrap_or_default()
        );
        return Current {
            by: By::Broker,
            label: format!("broker: {reason}"),
            class: Some(reason),
            reasons: vec![summary.clone()],
            origin,
            time,
            summary,
        };
    }
    let time = text(headers::ERROR_TIME)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            m.timestamp
                .and_then(|s| DateTime::from_timestamp(i64::try_from(s).ok()?, 0))
        });
    let origin = text(headers::ORIGINAL_EXCHANGE)
        .map(|e| (e, text(headers::ORIGINAL_ROUTING_KEY).unwrap_or_default()));
    let class = text(headers::ERROR_CLASS);
    let park = text(headers::PARK_REASON);
    if class.is_some() || park.is_some() {
        let reasons: Vec<String> = [text(headers::ERROR_MESSAGE), park.clone()]
            .into_iter()
            .flatten()
            .collect();
        let label = match (&park, &class) {
            // "retry_window_exceeded: details…": count by the kind, not the details.
            (Some(p), _) => format!("parked: {}", p.split(':').next().unwrap_or(p).trim()),
            (None, Some(c)) => c.clone(),
            (None, None) => unreachable!("one of them is set"),
        };
        let summary = match &park {
            Some(p) => format!(
                "parked: {p} (last error: {})",
                class.as_deref().unwrap_or("unknown")
            ),
            None => format!(
                "{}: {}",
                class.as_deref().unwrap_or_default(),
                text(headers::ERROR_MESSAGE).unwrap_or_default()
            ),
        };
        return Current {
            by: By::Fleet,
            label,
            class,
            reasons,
            origin,
            time,
            summary,
        };
    }
    // The unroutable catch-all receives requests through the alternate
    // exchange unchanged: their origin is where they were published.
    if queue == names::UNROUTABLE && !m.exchange.is_empty() {
        let summary = format!(
            "published to exchange {:?} with routing key {:?}, which no binding matches",
            m.exchange, m.routing_key
        );
        return Current {
            by: By::Unroutable,
            label: format!("routing key {:?}", m.routing_key),
            class: None,
            reasons: vec![summary.clone()],
            origin: Some((m.exchange.to_string(), m.routing_key.to_string())),
            time,
            summary,
        };
    }
    Current {
        by: By::Unknown,
        label: format!("routing key {:?}", m.routing_key),
        class: None,
        reasons: Vec::new(),
        origin,
        time,
        summary: "no header says why".into(),
    }
}

/// The headers as JSON: scalars as text (as `peek` has always shown them),
/// `x-history` and `x-death` as arrays of objects.
pub(super) fn headers_json(h: Option<&FieldTable>) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    if let Some(t) = h {
        for (k, v) in t.inner() {
            let value = match v {
                AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => broker::value_json(v),
                other => broker::value_text(other)
                    .map(Value::String)
                    .unwrap_or_else(|| broker::value_json(other)),
            };
            out.insert(k.as_str().to_string(), value);
        }
    }
    out
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
    use fleet_shared::broker::{with_headers, HeaderValue};
    use fleet_shared::config::Config;

    fn death(queue: &str, exchange: &str, key: &str, reason: &str) -> AMQPValue {
        let mut d = FieldTable::default();
        d.insert("queue".into(), AMQPValue::LongString(queue.into()));
        d.insert("exchange".into(), AMQPValue::LongString(exchange.into()));
        d.insert("reason".into(), AMQPValue::LongString(reason.into()));
        d.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString(key.into())].into()),
        );
        d.insert("time".into(), AMQPValue::Timestamp(1_800_000_000));
        AMQPValue::FieldTable(d)
    }

    #[test]
    fn the_current_reason_is_the_newest_event() {
        let topo = Topology::load(&Config::default()).unwrap();
        let dlq = names::dlq(names::FAST_LANE);
        let seen = |h: &FieldTable| -> Current {
            current(
                &topo,
                &dlq,
                &Seen {
                    headers: Some(h),
                    exchange: names::DLX,
                    routing_key: names::FAST_LANE,
                    timestamp: None,
                },
            )
        };
        // The fleet's dead letter.
        let fleet = with_headers(
            None,
            &[
                (headers::ERROR_CLASS, HeaderValue::from("forbidden_field")),
                (headers::ERROR_MESSAGE, "not on the allow-list".into()),
                (headers::ORIGINAL_EXCHANGE, names::REQUESTS.into()),
                (headers::ORIGINAL_ROUTING_KEY, "price".into()),
            ],
        );
        let c = seen(&fleet);
        assert_eq!(
            (c.by.clone(), c.label.as_str()),
            (By::Fleet, "forbidden_field")
        );
        assert_eq!(
            c.origin,
            Some((names::REQUESTS.to_string(), "price".to_string()))
        );
        // The broker rejected it afterwards (stale x-error-* beside x-death):
        // the broker's event is the current one, and so is its origin. An
        // x-death entry of another queue (the retry delay) does not count.
        let mut broker = fleet.clone();
        broker.insert(
            headers::DEATH.into(),
            AMQPValue::FieldArray(
                vec![
                    death(names::FAST_LANE, names::REQUESTS, "stock", "rejected"),
                    death(
                        names::RETRY_DELAY,
                        names::RETRY_EXCHANGE,
                        "delay",
                        "expired",
                    ),
                ]
                .into(),
            ),
        );
        let c = seen(&broker);
        assert_eq!(
            (c.by.clone(), c.label.as_str()),
            (By::Broker, "broker: rejected")
        );
        assert_eq!(c.class.as_deref(), Some("rejected"));
        assert_eq!(
            c.origin,
            Some((names::REQUESTS.to_string(), "stock".to_string()))
        );
        assert!(c.time.is_some());
        let mut delay_only = fleet.clone();
        delay_only.insert(
            headers::DEATH.into(),
            AMQPValue::FieldArray(
                vec![death(
                    names::RETRY_DELAY,
                    names::RETRY_EXCHANGE,
                    "delay",
                    "expired",
                )]
                .into(),
            ),
        );
        assert_eq!(seen(&delay_only).by, By::Fleet);
        // Parked: the park reason is the label, both texts are searchable.
        let parked = with_headers(
            Some(&fleet),
            &[(headers::PARK_REASON, "retry_window_exceeded: 3h".into())],
        );
        let c = seen(&parked);
        assert_eq!(c.label, "parked: retry_window_exceeded");
        assert_eq!(c.reasons.len(), 2);
    }

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
