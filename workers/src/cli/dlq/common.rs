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

/// Whether an exchange exists (a passive declare on a throwaway channel:
/// a missing one closes it). The default exchange (`""`) always does.
pub(super) async fn exchange_exists(conn: &Connection, name: &str) -> anyhow::Result<bool> {
    use fleet_shared::lapin::options::ExchangeDeclareOptions;
    use fleet_shared::lapin::ExchangeKind;
    if name.is_empty() {
        return Ok(true);
    }
    let ch = conn.create_channel().await.context("open a channel")?;
    let declared = ch
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(()) => {
            let _ = ch.close(200, "done".into()).await;
            Ok(true)
        }
        Err(e) if broker::is_not_found(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot look up exchange {name}")),
    }
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

pub(super) use fleet_shared::broker::headers_json;

/// The body on one line, at most 100 characters (see `show::preview`).
pub(super) fn body_preview(body: &[u8]) -> String {
    super::show::preview(body)
}

/// Who runs a replay or purge, for the record: `--operator` or
/// `FLEET_OPERATOR` (clap reads both into `explicit`), else `$SUDO_USER`
/// (the person behind a `sudo`, not `root`), `$USER`, `$LOGNAME`, the
/// account name of the process's uid, and only then `uid N`.
pub(super) fn operator(explicit: Option<&str>) -> String {
    let from_env = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok());
    explicit
        .map(str::to_string)
        .into_iter()
        .chain(from_env)
        .map(|u| u.trim().to_string())
        .find(|u| !u.is_empty())
        .or_else(account_name)
        .unwrap_or_else(|| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid {}", unsafe { libc::getuid() })
        })
}

/// The passwd entry's name of this process's uid.
fn account_name() -> Option<String> {
    // SAFETY: getpwuid returns NULL or a pointer to a static entry that is
    // valid until the next call; its name is copied out at once, and the
    // CLI does not call it from two threads.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_str()
            .ok()
            .map(str::to_string)
    }
}

/// The keys `--filter` takes besides header names (`x-…`).
pub(super) const FILTER_KEYS: &[&str] = &["type", "class", "reason", "request-id", "routing-key"];

/// One `--filter KEY=VALUE` of `replay` and `purge`. Every value but a
/// request id matches without regard to case, as the workers read them
/// (types and routing keys are case-insensitive; classes and reasons are
/// lower-case words an operator may type in capitals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Filter {
    /// The body's invalidationType.
    Type(String),
    /// The current error class: x-error-class, or the broker's reason.
    Class(String),
    /// A substring of the current reason texts (x-error-message, x-park-reason, the broker's).
    Reason(String),
    /// The body's requestId (or one of an outbound batch's requestIds; for
    /// a request without one, the id the dispatcher derives from its body).
    /// Exact: request ids are opaque.
    RequestId(String),
    /// The routing key the message was published with at its origin (the
    /// one a replay sends it with), else the one it was delivered with.
    RoutingKey(String),
    /// A header's value.
    Header(String, String),
}

impl Filter {
    pub(super) fn parse(s: &str) -> anyhow::Result<Filter> {
        let Some((k, v)) = s.split_once('=') else {
            bail!(
                "bad --filter {s:?}: expected KEY=VALUE, e.g. type=PRICE, class=malformed_json, \
                 reason=timeout, request-id=ID, routing-key=price or x-original-queue=NAME"
            );
        };
        let (k, v) = (k.trim(), v.to_string());
        if k.is_empty() {
            bail!("bad --filter {s:?}: the key is empty");
        }
        Ok(match k.to_ascii_lowercase().as_str() {
            "type" => Filter::Type(v),
            "class" => Filter::Class(v),
            "reason" => Filter::Reason(v.to_lowercase()),
            "request-id" | "request_id" | "requestid" => Filter::RequestId(v),
            "routing-key" | "routing_key" => Filter::RoutingKey(v),
            h if h.starts_with("x-") => Filter::Header(h.to_string(), v),
            _ => {
                let keys: Vec<String> = FILTER_KEYS.iter().map(|k| k.to_string()).collect();
                let close = suggest(&k.to_ascii_lowercase(), &keys)
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                bail!(
                    "unknown filter key `{k}`; {close}valid keys: {}, or a header name starting \
                     with `x-` (e.g. x-original-routing-key)",
                    FILTER_KEYS.join(", ")
                )
            }
        })
    }

    /// Whether a message matches; `class`, `reason` and `routing-key` read
    /// its current diagnosis only (an earlier one is history).
    pub(super) fn matches(&self, now: &Current, m: &Seen<'_>, body: &[u8]) -> bool {
        let json = || serde_json::from_slice::<Value>(body).ok();
        match self {
            Filter::Type(t) => json()
                .and_then(|v| v["invalidationType"].as_str().map(str::to_string))
                .is_some_and(|x| x.eq_ignore_ascii_case(t)),
            Filter::Class(c) => now
                .class
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(c)),
            Filter::Reason(r) => now
                .reasons
                .iter()
                .any(|text| text.to_lowercase().contains(r.as_str())),
            Filter::RequestId(id) => match json() {
                Some(v) => match (&v["requestId"], &v["requestIds"]) {
                    (Value::String(x), _) => x == id,
                    (_, Value::Array(ids)) => ids.iter().any(|x| x.as_str() == Some(id)),
                    _ => v.is_object() && fleet_shared::message::derived_request_id(body) == *id,
                },
                None => false,
            },
            Filter::RoutingKey(k) => now
                .origin
                .as_ref()
                .map_or(m.routing_key, |(_, key)| key.as_str())
                .eq_ignore_ascii_case(k),
            Filter::Header(k, v) => {
                broker::header_text(m.headers, k).is_some_and(|x| x.eq_ignore_ascii_case(v))
            }
        }
    }
}

/// The `--filter` options parsed, all of which must match.
pub(super) fn parse_filters(filters: &[String]) -> anyhow::Result<Vec<Filter>> {
    filters.iter().map(|f| Filter::parse(f)).collect()
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
