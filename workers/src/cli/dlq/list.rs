//! `fleet dlq list`: every operator queue (dead-letter queues, parking,
//! unroutable) with its depth, the age of its oldest message and its top
//! error reasons.
//!
//! Depths are the broker's own (passive declares), so a message that was
//! dead-lettered a moment ago is already counted: an operator's first look
//! after a failure must be exact. The management API's statistics lag by
//! their collection interval and are not used for counting.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use fleet_shared::broker;
use fleet_shared::config::Config;
use fleet_shared::mgmt::{vhost_of, Management};
use fleet_shared::topology::Topology;

use super::common::{age_text, connect, quorum_limit, quorum_note};
use super::peek::{sample, Peeked};

/// Messages `list` samples per queue for its top error reasons.
const SAMPLE: usize = 100;

/// One operator queue, as `list --json` prints it (one object per line, as
/// `jobs list --json`).
#[derive(Debug, serde::Serialize)]
struct Row<'a> {
    queue: &'a str,
    /// `false`: the queue is not declared on the broker.
    exists: bool,
    messages: u64,
    /// When the oldest sampled message got here (RFC 3339).
    oldest: Option<String>,
    /// The current reasons of the sampled messages, commonest first.
    reasons: Vec<(String, usize)>,
    /// How many messages the reasons were read from.
    sampled: usize,
}

pub(super) async fn run(
    config: &Config,
    topo: &Topology,
    all: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let vhost = vhost_of(&config.amqp.url);
    let conn = connect(config).await?;
    let operator = topo.operator_queues();
    let names: Vec<&str> = operator.iter().map(|q| q.name.as_str()).collect();
    let counts = broker::queue_counts(&conn, &names)
        .await
        .with_context(|| format!("cannot inspect the queues of vhost {vhost:?}"))?;
    // Only for the quorum notes (a queue's type is not a statistic); optional.
    let mgmt = Management::new(&config.amqp.management_url).ok();
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "queue",
        "messages",
        "oldest",
        "top reasons",
    ]);
    let mut shown = 0;
    let mut total = 0u64;
    for (name, counts) in names.iter().zip(counts) {
        let Some(counts) = counts else {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string(&Row {
                        queue: name,
                        exists: false,
                        messages: 0,
                        oldest: None,
                        reasons: Vec::new(),
                        sampled: 0,
                    })?
                );
                continue;
            }
            table.add_row(vec![
                Cell::new(name),
                Cell::new("-").set_alignment(CellAlignment::Right),
                Cell::new(""),
                Cell::new("not declared on the broker (`fleet topology apply`)"),
            ]);
            shown += 1;
            continue;
        };
        let depth = u64::from(counts.ready);
        total += depth;
        if depth == 0 && !all {
            continue;
        }
        let sampled = if depth > 0 {
            sample(&conn, name, SAMPLE).await?
        } else {
            Vec::new()
        };
        let oldest_time = sampled
            .iter()
            .filter_map(|p| p.current(topo, name).time)
            .min();
        if as_json {
            println!(
                "{}",
                serde_json::to_string(&Row {
                    queue: name,
                    exists: true,
                    messages: depth,
                    oldest: oldest_time.map(|t| t.to_rfc3339()),
                    reasons: reason_counts(topo, name, &sampled),
                    sampled: sampled.len(),
                })?
            );
            continue;
        }
        let (oldest, reasons) = if depth > 0 {
            let oldest = oldest_time
                .map(age_text)
                .unwrap_or_else(|| "unknown".into());
            (oldest, top_reasons(topo, name, &sampled, depth))
        } else {
            (String::new(), String::new())
        };
        if depth > 0 {
            if let Some(limit) = quorum_limit(mgmt.as_ref(), &vhost, name).await {
                quorum_note(name, limit);
            }
        }
        table.add_row(vec![
            Cell::new(name),
            Cell::new(depth).set_alignment(CellAlignment::Right),
            Cell::new(oldest),
            Cell::new(reasons),
        ]);
        shown += 1;
    }
    let _ = conn.close(200, "done".into()).await;
    if as_json {
        return Ok(ExitCode::SUCCESS);
    }
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

/// "class ×n, …" for the three commonest current reasons of the sampled
/// messages (see `common::current`: the error class, `parked: <kind>`,
/// `broker: <reason>`, or the routing key of an unroutable message).
fn top_reasons(topo: &Topology, queue: &str, sampled: &[Peeked], depth: u64) -> String {
    let counts = reason_counts(topo, queue, sampled);
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
    text.join(", ")
}

/// The current reasons of the sampled messages with their counts, commonest first.
fn reason_counts(topo: &Topology, queue: &str, sampled: &[Peeked]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for p in sampled {
        *counts.entry(p.current(topo, queue).label).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}
