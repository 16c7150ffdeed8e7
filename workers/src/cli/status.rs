//! `fleet status`: the fleet's queues (depth, consumers, rates) and its
//! connected workers.
//!
//! Depths and consumer counts come from the broker itself (passive declares:
//! exact the moment a message lands); the management API supplies what only
//! its statistics know — unacked counts and rates, a few seconds behind —
//! and who is connected.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use fleet_shared::broker::{self, Identity, QueueCounts};
use fleet_shared::config::Config;
use fleet_shared::mgmt::{vhost_of, Management, QueueInfo};
use fleet_shared::topology::Topology;

/// Options of `fleet status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show every topology queue, also the empty ones nobody consumes.
    #[arg(long)]
    pub all: bool,
}

/// One queue's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStatus {
    /// Queue name.
    pub name: String,
    /// Whether the queue exists on the broker.
    pub exists: bool,
    /// Ready plus unacknowledged messages.
    pub messages: u64,
    /// Messages waiting for a consumer (exact: from the broker).
    pub ready: u64,
    /// Messages delivered and not yet acknowledged (management statistics).
    pub unacked: u64,
    /// Consumers attached (exact: from the broker).
    pub consumers: u64,
    /// Messages published per second (recent average; management statistics).
    pub publish_rate: f64,
    /// Messages delivered per second (recent average; management statistics).
    pub deliver_rate: f64,
}

impl QueueStatus {
    /// `exact` is the broker's own answer (`None`: no such queue); `stats`
    /// the management API's entry for the queue, when it has one yet.
    pub fn new(name: &str, exact: Option<QueueCounts>, stats: Option<&QueueInfo>) -> Self {
        let Some(exact) = exact else {
            return Self {
                name: name.into(),
                ..Default::default()
            };
        };
        let unacked = stats.and_then(|s| s.messages_unacknowledged).unwrap_or(0);
        Self {
            name: name.into(),
            exists: true,
            messages: u64::from(exact.ready) + unacked,
            ready: exact.ready.into(),
            unacked,
            consumers: exact.consumers.into(),
            publish_rate: stats.map_or(0.0, QueueInfo::publish_rate),
            deliver_rate: stats.map_or(0.0, QueueInfo::deliver_rate),
        }
    }
}

/// One connected worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerConnection {
    /// `fleet-<worker>@<host> (<role>, pid N)`.
    pub name: String,
    /// Address the worker connects from.
    pub peer: String,
    /// `running`, `blocked`, …
    pub state: String,
    /// Open channels.
    pub channels: u64,
    /// Consumers on this connection's channels.
    pub consumers: u64,
    /// Milliseconds since the epoch when it connected.
    pub connected_at: Option<i64>,
}

/// Prints the queue and worker tables.
pub async fn run(config: &Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mgmt = Management::new(&config.amqp.management_url)?;
    let vhost = vhost_of(&config.amqp.url);
    let topo = Topology::load(config)?;
    // Who is connected first, so this command's own connection is not among them.
    let workers = worker_connections(&mgmt, &vhost).await?;
    let stats: BTreeMap<String, QueueInfo> = mgmt
        .queues(&vhost)
        .await
        .with_context(|| format!("cannot list the queues of vhost {vhost:?}"))?
        .into_iter()
        .map(|q| (q.name.clone(), q))
        .collect();
    let conn = broker::connect(&config.amqp.url, &Identity::new("cli"), "status").await?;
    let exact = broker::queue_counts(
        &conn,
        &topo.queues.iter().map(|q| &q.name).collect::<Vec<_>>(),
    )
    .await
    .with_context(|| format!("cannot inspect the queues of vhost {vhost:?}"));
    let _ = conn.close(200, "status done".into()).await;
    let exact = exact?;
    let mut shown = 0;
    let mut hidden = 0;
    let mut missing = 0;
    let mut queues = table(&[
        "queue",
        "messages",
        "ready",
        "unacked",
        "consumers",
        "publish/s",
        "deliver/s",
    ]);
    for (q, exact) in topo.queues.iter().zip(exact) {
        let status = QueueStatus::new(&q.name, exact, stats.get(&q.name));
        if !status.exists {
            missing += 1;
        }
        if !args.all && status.messages == 0 && status.consumers == 0 {
            hidden += 1;
            continue;
        }
        shown += 1;
        if status.exists {
            queues.add_row(vec![
                Cell::new(&status.name),
                right(status.messages),
                right(status.ready),
                right(status.unacked),
                right(status.consumers),
                right(format!("{:.1}", status.publish_rate)),
                right(format!("{:.1}", status.deliver_rate)),
            ]);
        } else {
            queues.add_row(vec![
                Cell::new(&status.name),
                Cell::new("missing: run `fleet topology apply`"),
            ]);
        }
    }
    println!("Queues in vhost {vhost:?}:");
    if shown > 0 {
        println!("{queues}");
        println!("(ready and consumers are the broker's own counts; unacked and rates are the management API's statistics, a few seconds behind)");
    }
    if hidden > 0 {
        println!("({hidden} empty queue(s) without consumers hidden; --all shows them)");
    }
    if missing > 0 {
        println!(
            "{missing} topology queue(s) do not exist on the broker; `fleet topology plan` shows them."
        );
    }

    println!("\nConnected workers: {}", workers.len());
    if !workers.is_empty() {
        let now = chrono::Utc::now();
        let mut t = table(&[
            "connection",
            "from",
            "state",
            "channels",
            "consumers",
            "connected",
        ]);
        for w in &workers {
            let since = w
                .connected_at
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|at| format!("{} ago", super::jobs::age(now, at)))
                .unwrap_or_else(|| "-".into());
            t.add_row(vec![
                Cell::new(&w.name),
                Cell::new(&w.peer),
                Cell::new(&w.state),
                right(w.channels),
                right(w.consumers),
                right(since),
            ]);
        }
        println!("{t}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The fleet's connections to `vhost` (named `fleet-…`), with their consumer counts.
pub async fn worker_connections(
    mgmt: &Management,
    vhost: &str,
) -> anyhow::Result<Vec<WorkerConnection>> {
    let connections = mgmt
        .connections(vhost)
        .await
        .with_context(|| format!("cannot list the connections of vhost {vhost:?}"))?;
    let consumers = mgmt
        .consumers(vhost)
        .await
        .with_context(|| format!("cannot list the consumers of vhost {vhost:?}"))?;
    let mut per_connection: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &consumers {
        *per_connection
            .entry(c.channel_details.connection_name.as_str())
            .or_default() += 1;
    }
    let mut out: Vec<WorkerConnection> = connections
        .iter()
        .filter_map(|c| {
            let name = c.client_name()?;
            if !name.starts_with("fleet-") {
                return None;
            }
            // The API keys consumers by the broker's connection name (peer -> host).
            Some(WorkerConnection {
                name: name.to_string(),
                peer: format!(
                    "{}:{}",
                    c.peer_host.as_deref().unwrap_or("?"),
                    c.peer_port.unwrap_or(0)
                ),
                state: c.state.clone().unwrap_or_else(|| "-".into()),
                channels: c.channels.unwrap_or(0),
                consumers: per_connection.get(c.name.as_str()).copied().unwrap_or(0),
                connected_at: c.connected_at,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn right(v: impl ToString) -> Cell {
    Cell::new(v.to_string()).set_alignment(CellAlignment::Right)
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_are_the_brokers_and_rates_the_statistics() {
        let stats: QueueInfo = serde_json::from_value(serde_json::json!({
            "name": "invalidation.requests.fast", "messages": 0, "messages_ready": 0,
            "messages_unacknowledged": 2, "consumers": 0,
            "message_stats": {"publish_details": {"rate": 12.5}, "deliver_get_details": {"rate": 4.0}}
        }))
        .unwrap();
        let exact = QueueCounts {
            ready: 5,
            consumers: 3,
        };
        // The statistics still say 0 ready and no consumers: the broker's answer wins.
        let q = QueueStatus::new("invalidation.requests.fast", Some(exact), Some(&stats));
        assert_eq!((q.messages, q.ready, q.unacked, q.consumers), (7, 5, 2, 3));
        assert_eq!((q.publish_rate, q.deliver_rate), (12.5, 4.0));
        // A queue the statistics have not seen yet is still counted.
        let fresh = QueueStatus::new("q", Some(exact), None);
        assert!(fresh.exists);
        assert_eq!((fresh.messages, fresh.publish_rate), (5, 0.0));
        assert!(!QueueStatus::new("gone", None, Some(&stats)).exists);
    }
}
