//! `fleet status`: is the fleet healthy? The services it depends on
//! (reachable, with latency, or the error), its queues (depth, consumers,
//! rates; a queue whose worker is missing is marked), and its worker
//! processes.
//!
//! Depths and consumer counts come from the broker itself (passive declares:
//! exact the moment a message lands); the management API supplies what only
//! its statistics know — unacked counts and rates, a few seconds behind —
//! and who is connected.
//!
//! Exit code: 0 when everything is healthy, 2 when something is not (a
//! dependency unreachable, a queue without its consumer, a topology queue
//! missing, a broker node down), 1 when the command itself cannot run (a
//! bad configuration, a vhost that does not exist).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use fleet_shared::broker::{self, redact, Identity, QueueCounts};
use fleet_shared::config::Config;
use fleet_shared::mgmt::{vhost_of, Management, QueueInfo};
use fleet_shared::topology::Topology;
use serde::Serialize;
use serde_json::json;

/// Options of `fleet status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show every topology queue, also the empty ones nobody consumes.
    #[arg(long)]
    pub all: bool,
    /// One JSON object (dependencies, queues, processes, problems, healthy)
    /// instead of the tables; the exit code is the same.
    #[arg(long)]
    pub json: bool,
}

/// How long one dependency check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One service the fleet depends on, as `status` found it.
#[derive(Debug, Clone, Serialize)]
pub struct Dependency {
    /// `broker`, `management`, `postgresql`, `redis`, `search`.
    pub name: &'static str,
    /// Where it was asked (without password).
    pub address: String,
    pub ok: bool,
    /// How long the check took, when it answered.
    pub latency_ms: Option<u64>,
    pub error: Option<String>,
}

/// Runs one check with a time limit, timing it.
async fn check<T, E: std::fmt::Display>(
    name: &'static str,
    address: &str,
    f: impl Future<Output = Result<T, E>>,
) -> (Dependency, Option<T>) {
    let started = Instant::now();
    let result = tokio::time::timeout(CHECK_TIMEOUT, f).await;
    let ms = started.elapsed().as_millis() as u64;
    let dep = |ok: bool, error: Option<String>| Dependency {
        name,
        address: redact(address),
        ok,
        latency_ms: ok.then_some(ms),
        error,
    };
    match result {
        Ok(Ok(v)) => (dep(true, None), Some(v)),
        Ok(Err(e)) => (dep(false, Some(e.to_string())), None),
        Err(_) => (
            dep(
                false,
                Some(format!(
                    "no answer within {}",
                    humantime::format_duration(CHECK_TIMEOUT)
                )),
            ),
            None,
        ),
    }
}

/// One queue's numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
    /// The fleet worker that should consume it (topology `consumer`).
    pub expects: Option<String>,
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
            expects: None,
        }
    }

    /// It exists, a fleet worker should consume it, and nobody does.
    pub fn missing_consumer(&self) -> bool {
        self.exists && self.expects.is_some() && self.consumers == 0
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

/// One worker process: its connections grouped by host and pid (one
/// process opens a connection per role; counting connections would count
/// each process several times).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkerProcess {
    pub host: String,
    pub pid: Option<u32>,
    /// The worker kinds it runs (`dispatcher`, `partition`, …).
    pub workers: BTreeSet<String>,
    /// Its connections to the vhost.
    pub connections: u64,
    /// Consumers on those connections.
    pub consumers: u64,
    /// Its first connection, milliseconds since the epoch.
    pub connected_at: Option<i64>,
}

/// `fleet-<worker>@<host> (<role>, pid N)` → (worker, host, pid).
fn parse_connection_name(name: &str) -> Option<(String, String, Option<u32>)> {
    let rest = name.strip_prefix("fleet-")?;
    let (worker, rest) = rest.split_once('@')?;
    let (host, tail) = rest.split_once(" (").unwrap_or((rest, ""));
    let pid = tail
        .rsplit_once("pid ")
        .and_then(|(_, p)| p.trim_end_matches(')').trim().parse().ok());
    Some((worker.to_string(), host.to_string(), pid))
}

/// Prints the dependency, queue and process tables; see the module's exit codes.
pub async fn run(config: &Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let vhost = vhost_of(&config.amqp.url);
    let topo = Topology::load(config)?;
    let mgmt = Management::new(&config.amqp.management_url)?;
    let identity = Identity::new("cli");
    // Every dependency at once: a dead one costs its timeout, not the sum.
    let (
        (broker_dep, conn),
        (mgmt_dep, vhost_exists),
        (pg_dep, _),
        (redis_dep, _),
        (search_dep, _),
    ) = tokio::join!(
        check(
            "broker",
            &config.amqp.url,
            broker::connect(&config.amqp, &identity, "status")
        ),
        check(
            "management",
            &config.amqp.management_url,
            mgmt.vhost_exists(&vhost)
        ),
        check("postgresql", &config.database.url, async {
            let pool = fleet_shared::db::connect_existing(&config.database.url, 1).await?;
            pool.close().await;
            Ok::<_, anyhow::Error>(())
        }),
        check("redis", &config.redis.url, async {
            let kv = fleet_shared::kv::Kv::connect(&config.redis).await?;
            kv.ping().await?;
            Ok::<_, anyhow::Error>(())
        }),
        check("search", &config.search.url, async {
            let search = fleet_shared::search::Search::new(&config.search)?;
            search.ping().await?;
            Ok::<_, anyhow::Error>(())
        }),
    );
    // A vhost that does not exist is one error, not a row per queue.
    let broker_says_missing = broker_dep
        .error
        .as_deref()
        .is_some_and(|e| e.contains(&format!("vhost {vhost:?} does not exist")));
    if vhost_exists == Some(false) || broker_says_missing {
        if let Some(conn) = &conn {
            let _ = conn.close(200, "status done".into()).await;
        }
        bail!(
            "vhost {vhost:?} does not exist on the broker ({}). Create it with `rabbitmqctl \
             add_vhost {vhost}` (and `rabbitmqctl set_permissions -p {vhost} USER '.*' '.*' '.*'`), \
             then `fleet topology apply`; or fix the vhost in AMQP_URL.",
            redact(&config.amqp.management_url)
        );
    }
    let deps = vec![broker_dep, mgmt_dep, pg_dep, redis_dep, search_dep];
    let mut problems: Vec<String> = deps
        .iter()
        .filter(|d| !d.ok)
        .map(|d| format!("{} unreachable", d.name))
        .collect();
    let mgmt_ok = vhost_exists.is_some();

    // What only the management API knows: nodes, statistics, connections.
    let nodes = if mgmt_ok {
        mgmt.nodes().await.unwrap_or_else(|error| {
            eprintln!("(cannot list the broker's nodes: {error})");
            Vec::new()
        })
    } else {
        Vec::new()
    };
    let stats: BTreeMap<String, QueueInfo> = if mgmt_ok {
        mgmt.queues(&vhost)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|q| (q.name.clone(), q))
            .collect()
    } else {
        BTreeMap::new()
    };
    let processes = if mgmt_ok {
        match worker_processes(&mgmt, &vhost).await {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("(cannot list the worker processes: {e:#})");
                None
            }
        }
    } else {
        None
    };
    let down: Vec<&str> = nodes
        .iter()
        .filter(|n| !n.running)
        .map(|n| n.name.as_str())
        .collect();
    for n in &down {
        problems.push(format!("broker node {n} down"));
    }

    // Exact depths from the broker itself, when it answered.
    let queues: Option<Vec<QueueStatus>> = match &conn {
        Some(conn) => {
            let names: Vec<&String> = topo.queues.iter().map(|q| &q.name).collect();
            let exact = broker::queue_counts(conn, &names).await;
            let _ = conn.close(200, "status done".into()).await;
            match exact {
                Ok(exact) => Some(
                    topo.queues
                        .iter()
                        .zip(exact)
                        .map(|(q, exact)| {
                            let mut s =
                                QueueStatus::on_nodes(&q.name, exact, stats.get(&q.name), &down);
                            s.expects = q.consumer.clone();
                            s
                        })
                        .collect(),
                ),
                Err(e) => {
                    problems.push(format!("cannot inspect the queues: {e}"));
                    None
                }
            }
        }
        None => None,
    };
    let unconsumed: Vec<&QueueStatus> = queues
        .iter()
        .flatten()
        .filter(|q| q.missing_consumer())
        .collect();
    if !unconsumed.is_empty() {
        problems.push(format!(
            "{} queue(s) have no consumer: {}",
            unconsumed.len(),
            unconsumed
                .iter()
                .map(|q| format!(
                    "{} (expects {}, {} ready)",
                    q.name,
                    q.expects.as_deref().unwrap_or("?"),
                    q.ready
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let missing: Vec<&QueueStatus> = queues.iter().flatten().filter(|q| !q.exists).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} topology queue(s) do not exist on the broker (`fleet topology apply`)",
            missing.len()
        ));
    }
    let healthy = problems.is_empty();
    let code = if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    };

    if args.json {
        let doc = json!({
            "vhost": vhost,
            "healthy": healthy,
            "problems": problems,
            "dependencies": deps,
            "nodes": nodes.iter().map(|n| json!({"name": n.name, "running": n.running})).collect::<Vec<_>>(),
            "queues": queues,
            "processes": processes,
        });
        println!("{}", serde_json::to_string(&doc)?);
        return Ok(code);
    }

    println!("Dependencies:");
    for d in &deps {
        match (&d.error, d.latency_ms) {
            (None, ms) => println!(
                "  {:<11} ok      {:>6}  {}",
                d.name,
                ms.map(|m| format!("{m} ms")).unwrap_or_default(),
                d.address
            ),
            (Some(e), _) => println!("  {:<11} FAILED          {}: {e}", d.name, d.address),
        }
    }
    if nodes.len() > 1 || !down.is_empty() {
        println!(
            "Broker nodes: {} ({})",
            nodes
                .iter()
                .map(|n| format!("{} {}", n.name, if n.running { "up" } else { "DOWN" }))
                .collect::<Vec<_>>()
                .join(", "),
            if down.is_empty() {
                "all up".to_string()
            } else {
                format!(
                    "{} down: its quorum queues run on the others while a majority is up",
                    down.len()
                )
            }
        );
    }
    match &queues {
        Some(queues) => print_queues(&vhost, queues, args.all),
        None => println!("\nQueues in vhost {vhost:?}: unknown (the broker did not answer)."),
    }
    match &processes {
        Some(ps) => print_processes(ps),
        None => println!("\nWorker processes: unknown (the management API did not answer)."),
    }
    if healthy {
        println!("\nHealthy.");
    } else {
        println!("\nUNHEALTHY:");
        for p in &problems {
            println!("  - {p}");
        }
    }
    Ok(code)
}

fn print_queues(vhost: &str, queues: &[QueueStatus], all: bool) {
    let quorum = queues.iter().any(|q| q.leader.is_some());
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
    let mut t = table(&header);
    let (mut shown, mut hidden) = (0, 0);
    for q in queues {
        let worth = all || q.messages > 0 || q.consumers > 0 || q.missing_consumer() || !q.exists;
        if !worth {
            hidden += 1;
            continue;
        }
        shown += 1;
        if !q.exists {
            t.add_row(vec![
                Cell::new(&q.name),
                Cell::new("missing: run `fleet topology apply`"),
            ]);
            continue;
        }
        let consumers = if q.missing_consumer() {
            format!("0 ⚠ NONE (expects {})", q.expects.as_deref().unwrap_or("?"))
        } else {
            q.consumers.to_string()
        };
        let mut row = vec![
            Cell::new(if q.missing_consumer() {
                format!("⚠ {}", q.name)
            } else {
                q.name.clone()
            }),
            right(q.messages),
            right(q.ready),
            right(q.unacked),
            right(consumers),
            right(format!("{:.1}", q.publish_rate)),
            right(format!("{:.1}", q.deliver_rate)),
        ];
        if quorum {
            row.push(Cell::new(q.leader_cell()));
        }
        t.add_row(row);
    }
    println!("\nQueues in vhost {vhost:?}:");
    if shown > 0 {
        println!("{t}");
        println!("(ready and consumers are the broker's own counts; unacked and rates are the management API's statistics, a few seconds behind)");
    }
    if hidden > 0 {
        println!("({hidden} empty queue(s) without consumers hidden; --all shows them)");
    }
}

fn print_processes(ps: &[WorkerProcess]) {
    println!("\nWorker processes: {}", ps.len());
    if ps.is_empty() {
        return;
    }
    let now = chrono::Utc::now();
    let mut t = table(&[
        "host",
        "pid",
        "workers",
        "connections",
        "consumers",
        "connected",
    ]);
    for p in ps {
        let since = p
            .connected_at
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|at| format!("{} ago", super::jobs::age(now, at)))
            .unwrap_or_else(|| "-".into());
        t.add_row(vec![
            Cell::new(&p.host),
            right(p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())),
            Cell::new(p.workers.iter().cloned().collect::<Vec<_>>().join(", ")),
            right(p.connections),
            right(p.consumers),
            right(since),
        ]);
    }
    println!("{t}");
}

/// The fleet's worker processes on `vhost`: its `fleet-…` connections
/// (the CLI's own excepted) grouped by host and pid, with consumer counts.
pub async fn worker_processes(
    mgmt: &Management,
    vhost: &str,
) -> anyhow::Result<Vec<WorkerProcess>> {
    let connections = mgmt.connections(vhost).await?;
    let consumers = mgmt.consumers(vhost).await?;
    // The API keys consumers by the broker's connection name (peer -> host).
    let mut per_connection: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &consumers {
        *per_connection
            .entry(c.channel_details.connection_name.as_str())
            .or_default() += 1;
    }
    let mut out: BTreeMap<(String, Option<u32>, String), WorkerProcess> = BTreeMap::new();
    for c in &connections {
        let Some(name) = c.client_name() else {
            continue;
        };
        let Some((worker, host, pid)) = parse_connection_name(name) else {
            continue;
        };
        if worker == "cli" {
            continue;
        }
        // Without a pid (an old worker), each connection is its own entry.
        let key = (
            host.clone(),
            pid,
            if pid.is_some() {
                String::new()
            } else {
                c.name.clone()
            },
        );
        let p = out.entry(key).or_insert_with(|| WorkerProcess {
            host,
            pid,
            ..Default::default()
        });
        p.workers.insert(worker);
        p.connections += 1;
        p.consumers += per_connection.get(c.name.as_str()).copied().unwrap_or(0);
        p.connected_at = match (p.connected_at, c.connected_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(out.into_values().collect())
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

    #[test]
    fn connections_are_grouped_into_processes_by_host_and_pid() {
        assert_eq!(
            parse_connection_name("fleet-dispatcher@vm1 (publisher, pid 42)"),
            Some(("dispatcher".into(), "vm1".into(), Some(42)))
        );
        assert_eq!(
            parse_connection_name("fleet-retry@vm1"),
            Some(("retry".into(), "vm1".into(), None))
        );
        assert_eq!(parse_connection_name("orders-service"), None);
    }
}
