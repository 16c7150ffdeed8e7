//! `fleet dlq list | peek | replay | purge`: what failed, why, and moving it
//! back (SPEC §6, §7).
//!
//! Invariants:
//! - `list` and `peek` are non-destructive: messages are fetched unacked on
//!   one channel and returned together with one `basic.nack(multiple,
//!   requeue)`, which puts them back at their original positions;
//! - `replay` republishes a message with a publisher confirm *before* acking
//!   it, one message at a time, so a crash or Ctrl-C loses nothing and
//!   duplicates at most the one message in flight;
//! - messages `replay` does not move are never republished: they stay unacked
//!   until the end and are then returned in one nack (or by the broker when the
//!   process dies), so they keep their original order and bytes.
//!
//! Peeking a quorum queue counts as a delivery attempt against its
//! `x-delivery-limit`; the commands say so when the queue is a quorum queue.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use fleet_shared::broker::{
    self, header_i64, header_text, headers, headers_map, with_headers, HeaderValue, Identity,
    Outgoing, Publisher,
};
use fleet_shared::config::Config;
use fleet_shared::db::{self, Replay};
use fleet_shared::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions,
};
use fleet_shared::lapin::types::{AMQPValue, FieldTable, ShortString};
use fleet_shared::lapin::{BasicProperties, Channel, Connection};
use fleet_shared::mgmt::{vhost_of, Management};
use fleet_shared::topology::{enc, names, Topology};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Messages `list` samples per queue for its top error reasons.
const SAMPLE: usize = 100;

/// Publish failures in a row after which `replay` stops (the target or the broker is broken).
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Every dead-letter queue, the parking queue and the unroutable catch-all,
    /// with depth, age of the oldest message and top error reasons.
    List {
        /// Show empty queues too.
        #[arg(long)]
        all: bool,
    },
    /// Show messages with their error headers, non-destructively (they stay
    /// in the queue, in the same order).
    Peek {
        /// The queue, e.g. invalidation.requests.fast.dlq.
        queue: String,
        /// How many messages from the head of the queue.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// One JSON document (an array of messages) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move messages back to where they came from (x-original-exchange and
    /// x-original-routing-key), or elsewhere with --to. Each message is
    /// confirmed by the broker before it leaves the queue.
    Replay(ReplayArgs),
    /// Delete every message of an operator queue (dead-letter, parked or
    /// unroutable), after confirmation.
    Purge {
        /// The queue to empty.
        queue: String,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// `fleet dlq replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The queue to replay, e.g. invalidation.requests.fast.dlq.
    pub queue: String,
    /// Send to EXCHANGE (with ROUTING_KEY, else each message's original
    /// routing key) instead of each message's origin. `--to :QUEUE` uses
    /// the default exchange: straight into QUEUE.
    #[arg(long, value_name = "EXCHANGE[:ROUTING_KEY]")]
    pub to: Option<String>,
    /// Only messages matching KEY=VALUE (repeatable; all must match):
    /// `type=PRICE` (the body's invalidationType), `class=malformed_json`
    /// (x-error-class), `reason=TEXT` (in x-error-message or x-park-reason),
    /// or any header name, e.g. `x-original-routing-key=price`.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Move at most this many messages.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Show exactly what would move; change nothing (the run is still recorded).
    #[arg(long)]
    pub dry_run: bool,
    /// Drop the retry counters (x-retry-attempts, x-first-failure-time) so the
    /// message gets a fresh set of attempts; the body is never changed.
    #[arg(long)]
    pub reset_retries: bool,
}

/// Runs one `dlq` subcommand.
pub async fn run(config: &Config, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let topo = Topology::load(config)?;
    match cmd {
        DlqCommand::List { all } => list(config, &topo, all).await,
        DlqCommand::Peek { queue, limit, json } => peek(config, &topo, &queue, limit, json).await,
        DlqCommand::Replay(args) => replay(config, &topo, args).await,
        DlqCommand::Purge { queue, yes } => purge(config, &topo, &queue, yes).await,
    }
}

async fn connect(config: &Config) -> anyhow::Result<Connection> {
    Ok(broker::connect(&config.amqp.url, &Identity::new("cli"), "dlq").await?)
}

// ------------------------------------------------------------------ queues

/// What the broker says about one queue (AMQP passive declare: exact, not sampled).
struct QueueInfo {
    messages: u32,
    consumers: u32,
}

/// Checks the queue exists; a typo gets "did you mean …?".
async fn queue_info(
    conn: &Connection,
    config: &Config,
    topo: &Topology,
    queue: &str,
) -> anyhow::Result<QueueInfo> {
    // A passive declare of a missing queue closes its channel: use a throwaway one.
    let ch = conn.create_channel().await.context("open a channel")?;
    let declared = fleet_shared::broker::inspect_queue(&ch, queue).await;
    match declared {
        Ok(q) => {
            let _ = ch.close(200, "done".into()).await;
            Ok(QueueInfo {
                messages: q.message_count(),
                consumers: q.consumer_count(),
            })
        }
        Err(e) if e.to_string().contains("NOT_FOUND") || e.to_string().contains("404") => {
            let mut candidates: Vec<String> = topo.queues.iter().map(|q| q.name.clone()).collect();
            // Queues outside the topology count too, when the management API answers.
            if let Ok(mgmt) = Management::new(&config.amqp.management_url) {
                if let Ok(live) = mgmt.queues(&vhost_of(&config.amqp.url)).await {
                    candidates.extend(
                        live.iter()
                            .filter_map(|q| q["name"].as_str().map(str::to_string)),
                    );
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

fn is_operator_queue(topo: &Topology, queue: &str) -> bool {
    topo.operator_queues().iter().any(|q| q.name == queue)
}

/// The `x-delivery-limit` of `queue` when the broker holds it as a quorum
/// queue (`Some(None)`: quorum without a limit); `None` for other queues or
/// when the management API does not answer.
async fn quorum_limit(config: &Config, queue: &str) -> Option<Option<u64>> {
    let mgmt = Management::new(&config.amqp.management_url).ok()?;
    let path = format!("queues/{}/{}", enc(&vhost_of(&config.amqp.url)), enc(queue));
    let q = mgmt.get(&path).await.ok()?;
    (q["type"] == "quorum").then(|| q["arguments"]["x-delivery-limit"].as_u64())
}

fn quorum_note(queue: &str, limit: Option<u64>) {
    let limit = limit.map_or("its delivery limit".to_string(), |l| {
        format!("its x-delivery-limit ({l})")
    });
    eprintln!(
        "note: {queue} is a quorum queue: every peek counts as a delivery attempt against \
         {limit}; a message past the limit is dropped by the broker."
    );
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

// ------------------------------------------------------------------ peeking

/// A message looked at without taking it.
struct Peeked {
    /// 1-based position from the head of the queue.
    position: usize,
    exchange: String,
    routing_key: String,
    redelivered: bool,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl Peeked {
    fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    fn header(&self, key: &str) -> Option<String> {
        header_text(self.headers(), key)
    }
}

/// Up to `limit` messages from the head of `queue`, returned to the queue in
/// their original positions before this returns (one nack with
/// multiple=true, then the channel closes; if either fails the broker
/// returns them when the channel or connection goes away).
async fn sample(conn: &Connection, queue: &str, limit: usize) -> anyhow::Result<Vec<Peeked>> {
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
async fn return_all(ch: &Channel, last_tag: Option<u64>) -> anyhow::Result<()> {
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

/// When the message failed (x-error-time), else when it was published (timestamp property).
fn message_time(p: &Peeked) -> Option<DateTime<Utc>> {
    if let Some(t) = p.header(headers::ERROR_TIME) {
        if let Ok(t) = DateTime::parse_from_rfc3339(&t) {
            return Some(t.with_timezone(&Utc));
        }
    }
    p.properties
        .timestamp()
        .and_then(|s| DateTime::from_timestamp(i64::try_from(s).ok()?, 0))
}

/// Why a message is here, for counting: error class, park reason, or for
/// header-less messages (the unroutable catch-all) the routing key.
fn reason_of(p: &Peeked) -> String {
    if let Some(c) = p.header(headers::ERROR_CLASS) {
        if p.header(headers::PARK_REASON).is_none() {
            return c;
        }
    }
    if let Some(r) = p.header(headers::PARK_REASON) {
        // "retry_window_exceeded: details…": count by the kind, not the details.
        return format!(
            "parked: {}",
            r.split(':').next().unwrap_or(r.as_str()).trim()
        );
    }
    format!("routing key {:?}", p.routing_key)
}

fn age_text(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// The body for people: pretty JSON when it parses, else escaped text.
fn readable_body(body: &[u8]) -> String {
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

// ------------------------------------------------------------------ list

async fn list(config: &Config, topo: &Topology, all: bool) -> anyhow::Result<ExitCode> {
    let mgmt = Management::new(&config.amqp.management_url)?;
    let vhost = vhost_of(&config.amqp.url);
    let live = mgmt
        .queues(&vhost)
        .await
        .with_context(|| format!("cannot list the queues of vhost {vhost:?}"))?;
    let live: BTreeMap<String, &Value> = live
        .iter()
        .filter_map(|q| Some((q["name"].as_str()?.to_string(), q)))
        .collect();
    let conn = connect(config).await?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "queue",
        "messages",
        "oldest",
        "top reasons",
    ]);
    let mut shown = 0;
    let mut total = 0u64;
    let operator = topo.operator_queues();
    for q in &operator {
        let Some(info) = live.get(&q.name) else {
            table.add_row(vec![
                Cell::new(&q.name),
                Cell::new("-").set_alignment(CellAlignment::Right),
                Cell::new(""),
                Cell::new("not declared on the broker (`fleet topology apply`)"),
            ]);
            shown += 1;
            continue;
        };
        // The management API's counts lag by its statistics interval (a few
        // seconds); good enough for an overview and one request for all queues.
        let depth = info["messages"]
            .as_u64()
            .or_else(|| info["messages_ready"].as_u64())
            .unwrap_or(0);
        total += depth;
        if depth == 0 && !all {
            continue;
        }
        let (oldest, reasons) = if depth > 0 {
            let sampled = sample(&conn, &q.name, SAMPLE).await?;
            let oldest = sampled
                .iter()
                .filter_map(message_time)
                .min()
                .map(age_text)
                .unwrap_or_else(|| "unknown".into());
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for p in &sampled {
                *counts.entry(reason_of(p)).or_default() += 1;
            }
            let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
            counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let mut text: Vec<String> = counts
                .iter()
                .take(3)
                .map(|(r, n)| format!("{r} ×{n}"))
                .collect();
            if counts.len() > 3 {
                text.push(format!("+{} more", counts.len() - 3));
            }
            if (sampled.len() as u64) < depth {
                text.push(format!("(first {} sampled)", sampled.len()));
            }
            (oldest, text.join(", "))
        } else {
            (String::new(), String::new())
        };
        if depth > 0 && info["type"] == "quorum" {
            quorum_note(&q.name, info["arguments"]["x-delivery-limit"].as_u64());
        }
        table.add_row(vec![
            Cell::new(&q.name),
            Cell::new(depth).set_alignment(CellAlignment::Right),
            Cell::new(oldest),
            Cell::new(reasons),
        ]);
        shown += 1;
    }
    let _ = conn.close(200, "done".into()).await;
    if shown == 0 {
        println!(
            "No messages in any of the {} operator queues of vhost {vhost:?} (`--all` lists them).",
            operator.len()
        );
    } else {
        println!("{table}");
        println!(
            "{total} message(s) in {} operator queues of vhost {vhost:?}.",
            operator.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------ peek

async fn peek(
    config: &Config,
    topo: &Topology,
    queue: &str,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let conn = connect(config).await?;
    let info = queue_info(&conn, config, topo, queue).await?;
    let quorum = quorum_limit(config, queue).await;
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
        let docs: Vec<Value> = messages.iter().map(peeked_json).collect();
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
        if let Some(t) = message_time(p) {
            println!("   failed {} ago ({})", age_text(t), t.to_rfc3339());
        }
        for (k, v) in headers_map(p.headers()) {
            println!("   {k}: {v}");
        }
        println!("   body ({} bytes):", p.body.len());
        for line in readable_body(&p.body).lines() {
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

fn peeked_json(p: &Peeked) -> Value {
    let parsed = serde_json::from_slice::<Value>(&p.body).ok();
    json!({
        "position": p.position,
        "exchange": p.exchange,
        "routingKey": p.routing_key,
        "redelivered": p.redelivered,
        "headers": headers_map(p.headers()),
        "bodyIsJson": parsed.is_some(),
        "body": parsed.unwrap_or_else(|| Value::String(readable_body(&p.body))),
    })
}

// ------------------------------------------------------------------ replay

/// One `--filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    /// The body's invalidationType (case-insensitive).
    Type(String),
    /// x-error-class, exactly.
    Class(String),
    /// Case-insensitive substring of x-error-message or x-park-reason.
    Reason(String),
    /// A header's value, exactly.
    Header(String, String),
}

impl Filter {
    fn parse(s: &str) -> anyhow::Result<Filter> {
        let Some((k, v)) = s.split_once('=') else {
            bail!("bad --filter {s:?}: expected KEY=VALUE, e.g. type=PRICE, class=malformed_json, reason=timeout or x-original-routing-key=price");
        };
        let (k, v) = (k.trim(), v.to_string());
        if k.is_empty() {
            bail!("bad --filter {s:?}: the key is empty");
        }
        Ok(match k {
            "type" => Filter::Type(v),
            "class" => Filter::Class(v),
            "reason" => Filter::Reason(v.to_lowercase()),
            _ => Filter::Header(k.to_string(), v),
        })
    }

    fn matches(&self, headers: Option<&FieldTable>, body: &[u8]) -> bool {
        match self {
            Filter::Type(t) => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["invalidationType"].as_str().map(str::to_string))
                .is_some_and(|x| x.eq_ignore_ascii_case(t)),
            Filter::Class(c) => header_text(headers, headers::ERROR_CLASS).as_deref() == Some(c),
            Filter::Reason(r) => [headers::ERROR_MESSAGE, headers::PARK_REASON]
                .iter()
                .filter_map(|h| header_text(headers, h))
                .any(|text| text.to_lowercase().contains(r.as_str())),
            Filter::Header(k, v) => header_text(headers, k).as_deref() == Some(v),
        }
    }
}

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Each message's x-original-exchange / x-original-routing-key.
    Origin,
    /// `--to EXCHANGE[:ROUTING_KEY]`.
    To {
        exchange: String,
        routing_key: Option<String>,
    },
}

impl Target {
    fn parse(to: Option<&str>) -> Target {
        match to {
            None => Target::Origin,
            Some(s) => match s.split_once(':') {
                Some((e, k)) => Target::To {
                    exchange: e.into(),
                    routing_key: Some(k.into()),
                },
                None => Target::To {
                    exchange: s.into(),
                    routing_key: None,
                },
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Origin => "origin".into(),
            Target::To {
                exchange,
                routing_key: Some(k),
            } => format!("{exchange}:{k}"),
            Target::To {
                exchange,
                routing_key: None,
            } => exchange.clone(),
        }
    }

    /// The exchange and routing key of one message; `None` when it has no origin.
    fn destination(
        &self,
        queue: &str,
        headers: Option<&FieldTable>,
        delivered: (&str, &str),
    ) -> Option<(String, String)> {
        let original_key = header_text(headers, headers::ORIGINAL_ROUTING_KEY);
        match self {
            Target::To {
                exchange,
                routing_key,
            } => Some((
                exchange.clone(),
                routing_key
                    .clone()
                    .or(original_key)
                    .unwrap_or_else(|| delivered.1.to_string()),
            )),
            Target::Origin => match header_text(headers, headers::ORIGINAL_EXCHANGE) {
                Some(e) => Some((e, original_key.unwrap_or_default())),
                // The unroutable catch-all receives requests through the
                // alternate exchange unchanged: their origin is where they
                // were published (useful once the missing binding is added).
                None if queue == names::UNROUTABLE && !delivered.0.is_empty() => {
                    Some((delivered.0.to_string(), delivered.1.to_string()))
                }
                None => None,
            },
        }
    }
}

/// The headers of a replayed message: counters kept or reset, replay stamped.
fn replay_headers(original: Option<&FieldTable>, reset_retries: bool) -> FieldTable {
    let count = header_i64(original, headers::REPLAY_COUNT).unwrap_or(0) + 1;
    let mut base: BTreeMap<ShortString, AMQPValue> =
        original.map(|t| t.inner().clone()).unwrap_or_default();
    if reset_retries {
        base.remove(headers::ATTEMPTS);
        base.remove(headers::FIRST_FAILURE);
    }
    with_headers(
        Some(&FieldTable::from(base)),
        &[
            (headers::REPLAYED_AT, Utc::now().to_rfc3339().into()),
            (headers::REPLAY_COUNT, HeaderValue::Int(count)),
        ],
    )
}

/// What happened to the messages of one replay.
#[derive(Debug, Default)]
struct Tally {
    examined: u64,
    moved: u64,
    not_matching: u64,
    no_origin: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
}

fn body_preview(body: &[u8]) -> String {
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

async fn replay(config: &Config, topo: &Topology, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let started_at = Utc::now();
    let filters = args
        .filters
        .iter()
        .map(|f| Filter::parse(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let target = Target::parse(args.to.as_deref());
    let queue = args.queue.as_str();
    // Everything that can fail up front fails before a message moves.
    let pool = db::connect(&config.database.url, 2).await?;
    let identity = Identity::new("cli");
    let conn = connect(config).await?;
    let info = queue_info(&conn, config, topo, queue).await?;
    if info.consumers > 0 {
        eprintln!(
            "note: {queue} has {} consumer(s); they may take messages during the replay.",
            info.consumers
        );
    }
    let publisher = if args.dry_run {
        None
    } else {
        Some(Publisher::connect(&config.amqp.url, &identity, config.amqp.confirm_timeout).await?)
    };
    let ch = conn.create_channel().await.context("open a channel")?;
    let stop = CancellationToken::new();
    crate::app::cancel_on_signals(stop.clone());

    // Only the messages present at the start: kept ones are not re-read, and
    // messages arriving meanwhile wait for the next replay.
    let depth = u64::from(info.messages);
    let verb = if args.dry_run { "would move" } else { "moved" };
    let bar = if std::io::stdout().is_terminal() {
        let pb = ProgressBar::new(depth);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} examined {msg}")
        {
            pb.set_style(style);
        }
        Some(pb)
    } else {
        None
    };
    let say = |line: String| match &bar {
        Some(pb) => pb.println(line),
        None => println!("{line}"),
    };
    let mut tally = Tally::default();
    let mut last_held: Option<u64> = None;
    let mut consecutive_failures = 0;
    let mut aborted: Option<anyhow::Error> = None;
    let limit = args.limit.unwrap_or(u64::MAX);

    while tally.examined < depth && tally.moved < limit {
        if stop.is_cancelled() {
            aborted = Some(anyhow::anyhow!("interrupted"));
            break;
        }
        let got = match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(Some(m)) => m.delivery,
            Ok(None) => break,
            Err(e) => {
                aborted = Some(anyhow::Error::new(e).context(format!("cannot read from {queue}")));
                break;
            }
        };
        tally.examined += 1;
        let position = tally.examined;
        let tag = got.delivery_tag;
        let hdrs = got.properties.headers().as_ref();
        if !filters.iter().all(|f| f.matches(hdrs, &got.data)) {
            tally.not_matching += 1;
            last_held = Some(tag);
        } else if let Some((exchange, routing_key)) = target.destination(
            queue,
            hdrs,
            (got.exchange.as_str(), got.routing_key.as_str()),
        ) {
            let class = header_text(hdrs, headers::ERROR_CLASS).unwrap_or_default();
            let line = format!(
                "{verb} #{position} → {exchange:?} / {routing_key:?} [{class}] {}",
                body_preview(&got.data)
            );
            match &publisher {
                None => {
                    say(line);
                    tally.moved += 1;
                    last_held = Some(tag);
                }
                Some(publisher) => {
                    let props = got
                        .properties
                        .clone()
                        .with_headers(replay_headers(hdrs, args.reset_retries));
                    let published = publisher
                        .publish(Outgoing {
                            exchange: &exchange,
                            routing_key: &routing_key,
                            body: &got.data,
                            properties: props,
                            mandatory: true,
                        })
                        .await;
                    match published {
                        Ok(()) => {
                            // Confirmed: only now may it leave the queue.
                            if let Err(e) = ch.basic_ack(tag, BasicAckOptions::default()).await {
                                tally.moved += 1;
                                aborted = Some(anyhow::Error::new(e).context(format!(
                                    "message #{position} was delivered to {exchange:?} but could not be \
                                     acked; it stays in {queue} too (a duplicate)"
                                )));
                                break;
                            }
                            tally.moved += 1;
                            consecutive_failures = 0;
                            if bar.is_none() {
                                say(line);
                            }
                        }
                        Err(e) => {
                            tally.failed += 1;
                            consecutive_failures += 1;
                            *tally.errors.entry(e.to_string()).or_default() += 1;
                            last_held = Some(tag);
                            say(format!("kept #{position}: {e}"));
                            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                                aborted = Some(anyhow::anyhow!(
                                    "{consecutive_failures} publishes in a row failed; stopped (last: {e})"
                                ));
                                break;
                            }
                        }
                    }
                }
            }
        } else {
            tally.no_origin += 1;
            last_held = Some(tag);
            say(format!(
                "kept #{position}: no {} header; use --to EXCHANGE[:ROUTING_KEY] [{}]",
                headers::ORIGINAL_EXCHANGE,
                body_preview(&got.data)
            ));
        }
        if let Some(pb) = &bar {
            pb.inc(1);
            pb.set_message(format!("{verb} {}", tally.moved));
        }
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    // Everything not moved goes back to its original position, all at once.
    let returned = return_all(&ch, last_held).await;
    let _ = ch.close(200, "replay done".into()).await;
    let _ = conn.close(200, "replay done".into()).await;
    if let Err(e) = returned {
        // Not fatal for the messages: the broker returns unacked ones when the channel closes.
        eprintln!("warning: could not return the kept messages explicitly ({e:#}); the broker returns them as the channel closes.");
    }

    let kept = depth.saturating_sub(tally.moved);
    let record = Replay {
        queue: queue.to_string(),
        target: target.describe(),
        filter: (!args.filters.is_empty()).then(|| args.filters.join(" ")),
        operator: operator(),
        host: identity.host.clone(),
        dry_run: args.dry_run,
        moved: i32::try_from(tally.moved).unwrap_or(i32::MAX),
        kept: i32::try_from(kept).unwrap_or(i32::MAX),
        started_at,
    };
    let id = db::record_replay(&pool, &record)
        .await
        .context("the replay ran but could not be recorded in PostgreSQL")?;

    let unexamined = depth.saturating_sub(tally.examined);
    let dry = if args.dry_run {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    let keep_verb = if args.dry_run { "would keep" } else { "kept" };
    println!(
        "{queue}: {verb} {}, {keep_verb} {kept} ({} not matching the filter, {} without origin, {} failed, \
         {unexamined} not examined){dry}; replay record #{id}.",
        tally.moved, tally.not_matching, tally.no_origin, tally.failed
    );
    for (e, n) in &tally.errors {
        println!("  {n} × {e}");
    }
    if let Some(e) = aborted {
        eprintln!("error: replay stopped early: {e:#}. Nothing was lost: what did not move is still in {queue}.");
        return Ok(ExitCode::from(if stop.is_cancelled() { 130 } else { 1 }));
    }
    if tally.failed > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------ purge

async fn purge(
    config: &Config,
    topo: &Topology,
    queue: &str,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let conn = connect(config).await?;
    let info = queue_info(&conn, config, topo, queue).await?;
    if !is_operator_queue(topo, queue) {
        let dlqs = topo
            .operator_queues()
            .iter()
            .filter(|q| q.dead_letters_of.is_some())
            .count();
        let mut hint = String::new();
        if topo.queue(&names::dlq(queue)).is_some() {
            hint = format!(" Did you mean its dead-letter queue {}?", names::dlq(queue));
        }
        bail!(
            "refusing to purge {queue}: only operator queues may be purged — the {dlqs} dead-letter \
             queues (`<queue>.dlq`, e.g. {}), {} and {} (`fleet dlq list --all` names them all).{hint}",
            names::dlq(names::FAST_LANE),
            names::PARKED,
            names::UNROUTABLE
        );
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to purge {queue} ({} message(s)) without confirmation: stdin is not a \
                 terminal. Pass --yes to purge anyway.",
                info.messages
            );
        }
        print!(
            "Purge {} message(s) from {queue}? This cannot be undone. Type the queue name to confirm: ",
            info.messages
        );
        std::io::stdout().flush().context("write the prompt")?;
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("read the confirmation")?;
        if answer.trim() != queue {
            eprintln!("Not confirmed; {queue} was not purged.");
            return Ok(ExitCode::from(1));
        }
    }
    let ch = conn.create_channel().await.context("open a channel")?;
    let purged = ch
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("cannot purge {queue}"))?;
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    tracing::info!(queue, purged, "Purged an operator queue.");
    println!("Purged {purged} message(s) from {queue}.");
    if queue == names::PARKED {
        println!("The parked_messages rows in PostgreSQL are kept (they are the audit trail).");
    }
    Ok(ExitCode::SUCCESS)
}

/// Who runs the replay, for the record: `FLEET_OPERATOR` (set it in shared
/// admin shells), else the login name, else the numeric uid.
fn operator() -> String {
    ["FLEET_OPERATOR", "USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid {}", unsafe { libc::getuid() })
        })
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

    #[test]
    fn filters_parse_and_match() {
        let mut h = FieldTable::default();
        h.insert(
            headers::ERROR_CLASS.into(),
            AMQPValue::LongString("malformed_json".into()),
        );
        h.insert(
            headers::ERROR_MESSAGE.into(),
            AMQPValue::LongString("EOF while parsing".into()),
        );
        let body = br#"{"invalidationType":"PRICE"}"#;
        let m = |f: &str| Filter::parse(f).unwrap().matches(Some(&h), body);
        assert!(m("type=price"));
        assert!(!m("type=STOCK"));
        assert!(m("class=malformed_json"));
        assert!(!m("class=malformed"));
        assert!(m("reason=eof"));
        assert!(m("x-error-class=malformed_json"));
        assert!(!m("x-original-exchange=x"));
        assert!(Filter::parse("nokey").is_err());
    }

    #[test]
    fn targets_and_replay_headers() {
        let mut h = FieldTable::default();
        h.insert(
            headers::ORIGINAL_EXCHANGE.into(),
            AMQPValue::LongString("invalidation.requests".into()),
        );
        h.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            AMQPValue::LongString("price".into()),
        );
        h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(3));
        h.insert(headers::REPLAY_COUNT.into(), AMQPValue::LongLongInt(1));
        let q = "invalidation.requests.fast.dlq";
        let d = ("invalidation.dlx", "invalidation.requests.fast");
        assert_eq!(
            Target::parse(None).destination(q, Some(&h), d),
            Some(("invalidation.requests".into(), "price".into()))
        );
        assert_eq!(Target::parse(None).destination(q, None, d), None);
        assert_eq!(
            Target::parse(Some("x:y")).destination(q, Some(&h), d),
            Some(("x".into(), "y".into()))
        );
        assert_eq!(
            Target::parse(Some("x")).destination(q, Some(&h), d),
            Some(("x".into(), "price".into()))
        );
        let kept = replay_headers(Some(&h), false);
        assert_eq!(header_i64(Some(&kept), headers::ATTEMPTS), Some(3));
        assert_eq!(header_i64(Some(&kept), headers::REPLAY_COUNT), Some(2));
        assert!(header_text(Some(&kept), headers::REPLAYED_AT).is_some());
        let reset = replay_headers(Some(&h), true);
        assert_eq!(header_i64(Some(&reset), headers::ATTEMPTS), None);
        assert_eq!(
            header_text(Some(&reset), headers::ORIGINAL_EXCHANGE).as_deref(),
            Some("invalidation.requests")
        );
    }
}
