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
    /// Quorum queues: the node leading the queue.
    pub leader: Option<String>,
    /// Quorum queues: replicas up, of all replicas.
    pub replicas: Option<(usize, usize)>,
}

impl QueueStatus {
    /// `exact` is the broker's own answer (`None`: no such queue); `stats`
    /// the management API's entry for the queue, when it has one yet.
    pub fn new(name: &str, exact: Option<QueueCounts>, stats: Option<&QueueInfo>) -> Self {
        Self::on_nodes(name, exact, stats, &[])
    }

    /// Like [`new`](Self::new); `down` names the cluster's stopped nodes, to
    /// count a quorum queue's replicas that are up.
    pub fn on_nodes(
        name: &str,
        exact: Option<QueueCounts>,
        stats: Option<&QueueInfo>,
        down: &[&str],
    ) -> Self {
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
            leader: stats.and_then(|s| s.leader.clone()),
            replicas: stats.filter(|s| !s.members.is_empty()).map(|s| {
                let up = s
                    .members
                    .iter()
                    .filter(|m| !down.contains(&m.as_str()))
                    .count();
                (up, s.members.len())
            }),
        }
    }

    /// `fleet2@host` with `2/3` when a replica is down, for the leader column.
    fn leader_cell(&self) -> String {
        let leader = self.leader.as_deref().unwrap_or("-");
        match self.replicas {
            Some((up, all)) if up < all => format!("{leader} ({up}/{all} replicas up)"),
            _ => leader.to_string(),
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
    // Listing nodes needs the `monitoring` tag; without it the rest still shows.
    let nodes = mgmt.nodes().await.unwrap_or_else(|error| {
        eprintln!("(cannot list the broker's nodes: {error})");
        Vec::new()
    });
    let stats: BTreeMap<String, QueueInfo> = mgmt
        .queues(&vhost)
        .await
        .with_context(|| format!("cannot list the queues of vhost {vhost:?}"))?
        .into_iter()
        .map(|q| (q.name.clone(), q))
        .collect();
    let conn = broker::connect(&config.amqp, &Identity::new("cli"), "status").await?;
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
    // Quorum queues have a leader each: a column for it.
    let quorum = topo
        .queues
        .iter()
        .any(|q| stats.get(&q.name).is_some_and(|s| s.leader.is_some()));
    let down: Vec<&str> = nodes
        .iter()
        .filter(|n| !n.running)
        .map(|n| n.name.as_str())
        .collect();
    let mut header = vec![
        "queue",
        "messages",
        "ready",
        "unacked",
        "consumers",
        "publish/s",
        "deliver/s",
    ];
    if quorum {
        header.push("leader");
    }
    let mut queues = table(&header);
    for (q, exact) in topo.queues.iter().zip(exact) {
        let status = QueueStatus::on_nodes(&q.name, exact, stats.get(&q.name), &down);
        if !status.exists {
            missing += 1;
        }
        if !args.all && status.messages == 0 && status.consumers == 0 {
            hidden += 1;
            continue;
        }
        shown += 1;
        if status.exists {
            let mut row = vec![
                Cell::new(&status.name),
                right(status.messages),
                right(status.ready),
                right(status.unacked),
                right(status.consumers),
                right(format!("{:.1}", status.publish_rate)),
                right(format!("{:.1}", status.deliver_rate)),
            ];
            if quorum {
                row.push(Cell::new(status.leader_cell()));
            }
            queues.add_row(row);
        } else {
            queues.add_row(vec![
                Cell::new(&status.name),
                Cell::new("missing: run `fleet topology apply`"),
            ]);
        }
    }
    if nodes.len() > 1 || nodes.iter().any(|n| !n.running) {
        let down = nodes.iter().filter(|n| !n.running).count();
        println!(
            "Broker nodes: {} ({})",
            nodes
                .iter()
                .map(|n| format!("{} {}", n.name, if n.running { "up" } else { "DOWN" }))
                .collect::<Vec<_>>()
                .join(", "),
            if down == 0 {
                "all up".to_string()
            } else {
                format!("{down} down: its quorum queues run on the others while a majority is up")
            }
        );
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
