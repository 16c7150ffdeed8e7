//! `fleet status`: the fleet's queues (depth, consumers, rates) and its
//! connected workers, from the RabbitMQ management API.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
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

/// One queue's numbers, as the management API reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStatus {
    /// Queue name.
    pub name: String,
    /// Whether the queue exists on the broker.
    pub exists: bool,
    /// Ready plus unacknowledged messages.
    pub messages: u64,
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
    /// Consumers attached.
    pub consumers: u64,
    /// Messages published per second (recent average).
    pub publish_rate: f64,
    /// Messages delivered per second (recent average).
    pub deliver_rate: f64,
}

impl QueueStatus {
    /// Reads the management API's entry for one queue.
    pub fn from_api(q: &QueueInfo) -> Self {
        Self {
            name: q.name.clone(),
            exists: true,
            messages: q.messages.unwrap_or(0),
            ready: q.messages_ready.unwrap_or(0),
            unacked: q.messages_unacknowledged.unwrap_or(0),
            consumers: q.consumers.unwrap_or(0),
            publish_rate: q.publish_rate(),
            deliver_rate: q.deliver_rate(),
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
    let live: BTreeMap<String, QueueStatus> = mgmt
        .queues(&vhost)
        .await
        .with_context(|| format!("cannot list the queues of vhost {vhost:?}"))?
        .iter()
        .map(QueueStatus::from_api)
        .map(|q| (q.name.clone(), q))
        .collect();
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
    for q in &topo.queues {
        let status = live.get(&q.name).cloned().unwrap_or_else(|| QueueStatus {
            name: q.name.clone(),
            ..Default::default()
        });
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
    }
    if hidden > 0 {
        println!("({hidden} empty queue(s) without consumers hidden; --all shows them)");
    }
    if missing > 0 {
        println!(
            "{missing} topology queue(s) do not exist on the broker; `fleet topology plan` shows them."
        );
    }

    let workers = worker_connections(&mgmt, &vhost).await?;
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
    fn queue_numbers_and_rates_are_read_from_the_api_shape() {
        let v = serde_json::json!({
            "name": "invalidation.requests.fast", "messages": 7, "messages_ready": 5,
            "messages_unacknowledged": 2, "consumers": 3,
            "message_stats": {"publish_details": {"rate": 12.5}, "deliver_get_details": {"rate": 4.0}}
        });
        let q = QueueStatus::from_api(&serde_json::from_value(v).unwrap());
        assert_eq!(q.messages, 7);
        assert_eq!(q.ready, 5);
        assert_eq!(q.unacked, 2);
        assert_eq!(q.consumers, 3);
        assert_eq!(q.publish_rate, 12.5);
        assert_eq!(q.deliver_rate, 4.0);
        let idle = QueueStatus::from_api(
            &serde_json::from_value(serde_json::json!({"name": "q"})).unwrap(),
        );
        assert_eq!((idle.messages, idle.publish_rate), (0, 0.0));
    }
}
