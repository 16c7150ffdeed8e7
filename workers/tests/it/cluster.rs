//! SPEC §11 "Cluster" and "A node that accepts but never answers is a lost
//! node": the fleet on a three-node RabbitMQ cluster of its own
//! (`scripts/cluster.sh`, on free ports), and a wedged node in front of a
//! real one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_shared::broker::{self, Identity, Nodes};
use fleet_shared::config::Config;
use fleet_shared::lapin::options::ConfirmSelectOptions;
use fleet_shared::lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use fleet_shared::lapin::{BasicProperties, Channel, Connection};
use fleet_shared::message::OutboundBatch;
use fleet_shared::mgmt::Management;
use fleet_shared::topology::{names, Topology};
use fleet_workers::app::{self, WorkerKind};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::*;

// ------------------------------------------------------------ a wedged node

/// A TCP listener that accepts connections and never says a word: a node
/// whose AMQP side hangs (SPEC §11). Reports, per connection, how long after
/// the accept the client closed its side.
struct Wedged {
    url: String,
    closed: mpsc::UnboundedReceiver<Duration>,
    _task: tokio::task::JoinHandle<()>,
}

impl Wedged {
    async fn start(vhost: &str) -> Wedged {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, closed) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let accepted = Instant::now();
                    let mut buf = [0u8; 512];
                    // Read (the protocol header) and never answer, until the
                    // client gives up and closes.
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                    let _ = tx.send(accepted.elapsed());
                });
            }
        });
        Wedged {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/{vhost}"),
            closed,
            _task: task,
        }
    }
}

#[tokio::test]
async fn a_node_that_accepts_but_never_answers_costs_the_connect_timeout_then_the_next_node_serves()
{
    let env = TestEnv::new().await;
    let mut wedged = Wedged::start(&env.vhost).await;
    let mut config = env.config.clone();
    config.amqp.url = format!("{},{}", wedged.url, env.config.amqp.url);
    config.amqp.connect_timeout = Duration::from_secs(2);

    // A worker's publisher: the wedged node first, then the real one.
    let started = Instant::now();
    let ctx = app::context(&Arc::new(config.clone()), "test")
        .await
        .expect("the second node serves");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "connected in {took:?}"
    );
    // The abandoned attempt let go of its socket (no thread left waiting on it).
    let released = tokio::time::timeout(Duration::from_secs(5), wedged.closed.recv())
        .await
        .expect("the timed-out attempt closed its socket")
        .unwrap();
    assert!(released < Duration::from_secs(4), "{released:?}");
    drop(ctx);

    // Workers consume through the second node; a request goes all the way.
    let token = CancellationToken::new();
    let fleet = tokio::spawn({
        let token = token.clone();
        let config = config.clone();
        async move { app::run(config, &[WorkerKind::Dispatcher], token).await }
    });
    let body = br#"{"parameterIds":[41,42],"parameterName":"id","invalidationType":"PRICE","indexKeys":["deDE"]}"#;
    env.publish(names::REQUESTS, "price", body).await;
    let (ids, _) = env
        .collect_ids("productcontent_price_de_de", 2, Duration::from_secs(30))
        .await;
    assert_eq!(ids, BTreeSet::from([41, 42]));
    token.cancel();
    fleet.await.unwrap().unwrap();

    // A CLI command against the wedged node alone says which node did not
    // answer and exits non-zero, within seconds.
    let started = Instant::now();
    let out = Command::new(fleet_bin())
        .args(["topology", "apply"])
        .envs(env.env_vars())
        .env("AMQP_URL", &wedged.url)
        .env("FLEET_AMQP_CONNECT_TIMEOUT", "2s")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    let shown = wedged.url.replace("guest:guest", "guest:***");
    assert!(
        stderr.contains(&format!("{shown} did not answer within 2s")),
        "{stderr}"
    );
    assert!(!stderr.contains("guest:guest"), "no password: {stderr}");
}

#[tokio::test]
async fn nodes_are_tried_in_order_from_the_given_one_and_every_failure_is_named() {
    let env = TestEnv::bare().await;
    // Two closed ports around the real node.
    let closed = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/{}", env.vhost);
    let (a, b) = (free_port(), free_port());
    let list = format!("{},{},{}", closed(a), env.config.amqp.url, closed(b));
    let nodes = Nodes::new(&list, Duration::from_secs(2), Duration::from_secs(5));
    let identity = Identity::new("test");
    let (conn, i) = nodes.connect_from(&identity, "test", 2).await.unwrap();
    assert_eq!(
        i, 1,
        "from node 2: node 2 refused, node 0 refused, node 1 served"
    );
    // The heartbeat asked for is the one the connection runs with.
    assert_eq!(conn.configuration().heartbeat(), 5);
    let _ = conn.close(200, "done".into()).await;
    let err = broker::connect(
        format!("{},{}", closed(a), closed(b)).as_str(),
        &identity,
        "test",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("any of the 2 RabbitMQ nodes"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{a}")) && err.contains(&format!("127.0.0.1:{b}")),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "{err}");
}

// ------------------------------------------------------- a cluster of three

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workers crate sits inside the workspace")
        .to_path_buf()
}

/// A three-node cluster of this test's own, stopped and deleted on drop
/// (also when the test fails).
struct Cluster {
    dir: PathBuf,
    name: String,
    amqp_port: u16,
}

impl Cluster {
    /// Ports every node needs free: AMQP, management (+10000), distribution
    /// (+20000) and the CLI tools' distribution range (+30000 … +30010).
    fn ports_free(base: u16) -> bool {
        (0..3u16).all(|n| {
            let p = base + n;
            let mut all = vec![p, p + 10_000, p + 20_000];
            all.extend((0..=10).map(|k| p + 30_000 + k));
            all.iter()
                .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        })
    }

    /// Stops and deletes the clusters of earlier test runs whose process is
    /// gone (killed before its guard ran), so they do not pile up.
    fn sweep_stale() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("fleet-it-cluster-")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            eprintln!("stopping the cluster a killed test run left: {name}");
            let _ = Command::new(repo_root().join("scripts/cluster.sh"))
                .args(["stop", "--purge"])
                .env("CLUSTER_DIR", entry.path())
                .env("CLUSTER_NAME", format!("fit{pid}n"))
                .output();
        }
    }

    fn start() -> Cluster {
        Cluster::sweep_stale();
        let pid = std::process::id();
        let base = (0..200)
            .map(|k| 6000 + ((pid as u16 % 100) * 20 + k * 20) % 4000)
            .find(|&b| Cluster::ports_free(b))
            .expect("free ports for a cluster");
        let cluster = Cluster {
            dir: std::env::temp_dir().join(format!("fleet-it-cluster-{pid}")),
            name: format!("fit{pid}n"),
            amqp_port: base,
        };
        let started = Instant::now();
        let out = cluster.script(&["start"]);
        assert!(
            out.status.success(),
            "cluster.sh start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("cluster started in {:?}", started.elapsed());
        cluster
    }

    /// Runs the script to its end. It blocks this thread (the runtime's
    /// other thread keeps the workers going), and bounds its own waits.
    fn script(&self, args: &[&str]) -> std::process::Output {
        let run = || {
            Command::new(repo_root().join("scripts/cluster.sh"))
                .args(args)
                .env("CLUSTER_DIR", &self.dir)
                .env("CLUSTER_NAME", &self.name)
                .env("CLUSTER_AMQP_PORT", self.amqp_port.to_string())
                .output()
                .expect("run scripts/cluster.sh")
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(run),
            Err(_) => run(),
        }
    }

    fn node_url(&self, n: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.amqp_port as usize + n
        )
    }

    fn mgmt_urls(&self) -> String {
        (0..3)
            .map(|n| {
                format!(
                    "http://guest:guest@127.0.0.1:{}",
                    self.amqp_port as usize + 10_000 + n
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Erlang node name of node `n` (0-based).
    fn node_name(&self, n: usize) -> String {
        format!("{}{}@localhost", self.name, n + 1)
    }

    /// Stops node `n` cleanly, or kills its VM when `CLUSTER_FAULT=kill`
    /// (a crash; not the default, to keep the suite's run short and calm).
    fn stop_node(&self, n: usize) {
        let how = match std::env::var("CLUSTER_FAULT").as_deref() {
            Ok("kill") => "kill-node",
            _ => "stop-node",
        };
        let out = self.script(&[how, &(n + 1).to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_node(&self, n: usize) {
        let out = self.script(&["start-node", &(n + 1).to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.script(&["stop", "--purge"]);
        if !out.status.success() {
            eprintln!("cluster.sh stop: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// A confirm-mode channel of the test's own on one node.
async fn channel_on(url: &str) -> (Connection, Channel) {
    let conn = broker::connect(url, &Identity::new("test"), "test")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

fn price_request(id: i64) -> Vec<u8> {
    format!(
        r#"{{"v":1,"requestId":"c{id}","parameterIds":[{id}],"parameterName":"id","invalidationType":"PRICE","indexKeys":["deDE"]}}"#
    )
    .into_bytes()
}

// Two threads: the cluster script blocks one while the workers run on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_the_cluster_stops_and_comes_back_under_load_and_nothing_is_lost() {
    const REQUESTS: i64 = 300;
    let cluster = Cluster::start();
    // Database, Redis prefix and timings from the shared harness; the broker is the cluster.
    let mut env = TestEnv::bare().await;
    let mut config: Config = env.config.clone();
    config.amqp.url = (0..3)
        .map(|n| cluster.node_url(n))
        .collect::<Vec<_>>()
        .join(",");
    config.amqp.management_url = cluster.mgmt_urls();
    config.amqp.connect_timeout = Duration::from_secs(3);
    config.amqp.heartbeat = Duration::from_secs(5);
    config.amqp.confirm_timeout = Duration::from_secs(10);
    config.topology.queue_type = Some("quorum".into());
    env.config = config.clone();
    let ctx = app::context(&Arc::new(config.clone()), "test")
        .await
        .unwrap();
    app::apply_topology(&ctx).await.unwrap();
    drop(ctx);

    // The leaders are spread over the three nodes.
    let mgmt = Management::new(&config.amqp.management_url).unwrap();
    let topo = Topology::load(&config).unwrap();
    let leaders = eventually(
        Duration::from_secs(30),
        "every queue to have a leader",
        || async {
            let qs = mgmt.queues("/").await.ok()?;
            let leaders: Vec<String> = qs.iter().filter_map(|q| q.leader.clone()).collect();
            (leaders.len() == topo.queues.len()).then_some(leaders)
        },
    )
    .await;
    for n in 0..3 {
        let led = leaders
            .iter()
            .filter(|l| **l == cluster.node_name(n))
            .count();
        assert!(
            led >= topo.queues.len() / 5,
            "node {n} leads {led} of {} queues",
            topo.queues.len()
        );
    }
    let leader_of = |queue: &str| {
        let mgmt = mgmt.clone();
        let queue = queue.to_string();
        async move {
            eventually(Duration::from_secs(60), "the queue's leader", || async {
                mgmt.queue("/", &queue).await.ok()?.leader
            })
            .await
        }
    };
    let lane_leader = leader_of(names::FAST_LANE).await;
    let victim = (0..3)
        .find(|&n| cluster.node_name(n) == lane_leader)
        .unwrap();
    let safe = (victim + 1) % 3;

    // The workers know the victim first, so they lose their connections with it.
    let order = [victim, (victim + 1) % 3, (victim + 2) % 3];
    config.amqp.url = order
        .iter()
        .map(|&n| cluster.node_url(n))
        .collect::<Vec<_>>()
        .join(",");
    let token = CancellationToken::new();
    let fleet = tokio::spawn({
        let token = token.clone();
        let config = config.clone();
        async move { app::run(config, &[WorkerKind::Dispatcher, WorkerKind::Retry], token).await }
    });

    // Load: one request a few milliseconds apart, from a node that stays up.
    let (_pc, publish) = channel_on(&cluster.node_url(safe)).await;
    // The last request the broker confirmed.
    let confirmed = Arc::new(AtomicI64::new(0));
    // The producer holds its second part back until the node is down (a
    // stop can take longer than publishing everything), so some requests
    // are certain to be published after the stop.
    let node_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = tokio::spawn({
        let confirmed = confirmed.clone();
        let node_down = node_down.clone();
        async move {
            for id in 1..=REQUESTS {
                if id == REQUESTS / 2 {
                    while !node_down.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                let confirm = publish
                    .basic_publish(
                        names::REQUESTS.into(),
                        "price".into(),
                        BasicPublishOptions::default(),
                        &price_request(id),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap();
                // A confirm waits while the lane elects its new leader.
                let confirm = tokio::time::timeout(Duration::from_secs(30), confirm)
                    .await
                    .expect("a confirm within 30 s")
                    .unwrap();
                assert!(confirm.is_ack(), "request {id} not confirmed");
                confirmed.store(id, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });

    // Collect on the safe node while the victim goes down and comes back.
    let (collect_conn, collect) = channel_on(&cluster.node_url(safe)).await;
    let outbound = "productcontent_price_de_de";
    let mut ids = BTreeSet::new();
    let started = Instant::now();
    while ids.len() < 60 {
        ids.extend(take_ids(&collect, outbound).await);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no traffic before the fault: {}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = ids.len();
    let stopping = Instant::now();
    cluster.stop_node(victim);
    // Requests published from here on can only go through the other nodes.
    let mark = confirmed.load(Ordering::SeqCst);
    node_down.store(true, Ordering::SeqCst);
    println!(
        "stopped node {victim} ({lane_leader}) in {:?} with {before} ids in",
        stopping.elapsed()
    );
    // Deliveries resume on the other nodes: a request published after the
    // node went away comes out.
    let resumed = loop {
        ids.extend(take_ids(&collect, outbound).await);
        if ids.range(mark + 1..).next().is_some() {
            break stopping.elapsed();
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(60),
            "no progress after the node stopped ({} ids)",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("a request published after the stop came out {resumed:?} after the stop began");
    let new_leader = leader_of(names::FAST_LANE).await;
    assert_ne!(new_leader, lane_leader, "the lane elected another leader");
    cluster.start_node(victim);
    println!("node {victim} back after {:?}", stopping.elapsed());

    producer.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < REQUESTS as usize && Instant::now() < deadline {
        ids.extend(take_ids(&collect, outbound).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing: Vec<i64> = (1..=REQUESTS).filter(|i| !ids.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{} ids never arrived: {missing:?}",
        missing.len()
    );

    // Nothing dead-lettered, parked or unroutable.
    for q in topo.operator_queues() {
        let counts = broker::queue_counts(&collect_conn, &[q.name.as_str()])
            .await
            .unwrap();
        assert_eq!(
            counts[0].map(|c| c.ready),
            Some(0),
            "{} holds messages",
            q.name
        );
    }
    token.cancel();
    fleet.await.unwrap().unwrap();
}

/// Every content id waiting in `queue` now (acked).
async fn take_ids(ch: &Channel, queue: &str) -> Vec<i64> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        out.extend(OutboundBatch::decode(&m.delivery.data).unwrap().content_ids);
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}
