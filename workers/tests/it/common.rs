//! The shared test harness: real RabbitMQ, PostgreSQL, Redis and osmem-server.
//!
//! Every test gets its own vhost, its own database and its own Redis key
//! prefix, and (when it searches) its own copy-on-write clone of the seeded
//! catalogue, so tests run in parallel and never see each other.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_shared::broker::{header_text, Identity};
use fleet_shared::config::Config;
use fleet_shared::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use fleet_shared::message::OutboundBatch;
use fleet_shared::mgmt::Management;
use fleet_workers::app::{self, WorkerKind};
use fleet_workers::catalogue::{self, Spec};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub const MGMT_URL: &str = "http://guest:guest@127.0.0.1:15672";
pub const ADMIN_DB: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Documents per index in the shared test catalogue.
pub const CATALOGUE_DOCS: u64 = 8000;
pub const INDICES: &[&str] = &["content_tr", "content_intl"];

pub fn catalogue_spec() -> Spec {
    Spec {
        docs: CATALOGUE_DOCS,
        brands: 300,
        categories: 120,
        suppliers: 800,
        ..Spec::default()
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..10)
            .unwrap_or("x")
    )
}

/// One test's isolated slice of every service.
pub struct TestEnv {
    pub vhost: String,
    pub db_name: String,
    pub config: Config,
    pub mgmt: Management,
    /// One confirm-mode channel for the test's own publishing and getting.
    shared: OnceCell<(Connection, Channel)>,
}

impl TestEnv {
    /// A fresh vhost with the topology applied, a database and a key prefix.
    /// Delays are second-scale versions of the production defaults.
    pub async fn new() -> Self {
        let env = Self::bare().await;
        env.apply_topology().await;
        env
    }

    /// Like [`new`](Self::new) with a custom config tweak before the topology is applied.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut env = Self::bare().await;
        tweak(&mut env.config);
        env.apply_topology().await;
        env
    }

    /// A fresh, empty vhost (no topology), database and key prefix.
    pub async fn bare() -> Self {
        let mgmt = Management::new(MGMT_URL).unwrap();
        let vhost = unique("fleet-test");
        mgmt.create_vhost(&vhost)
            .await
            .expect("create vhost (is the management plugin enabled?)");
        let db_name = unique("fleet_test").replace('-', "_");
        let admin = sqlx::PgPool::connect(ADMIN_DB)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut config = Config::default();
        config.amqp.url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        config.amqp.management_url = MGMT_URL.into();
        config.amqp.prefetch = 32;
        config.amqp.reconnect_max_backoff = Duration::from_secs(2);
        config.database.url = format!("postgres://postgres@127.0.0.1:5432/{db_name}");
        config.database.max_connections = 4;
        config.redis.key_prefix = vhost.clone();
        config.search.url = "http://127.0.0.1:9".into(); // set by tests that search
        config.search.page_size = 500;
        config.retry.delay = Duration::from_secs(1);
        config.retry.window = Duration::from_secs(30);
        config.dispatcher.split_limit = 400;
        config.dispatcher.batch_size = 100;
        config.dispatcher.flush_interval = Duration::from_millis(10);
        config.sweeper.interval = Duration::from_millis(500);
        config.sweeper.stall_after = Duration::from_secs(2);
        config.worker.shutdown_grace = Duration::from_secs(5);
        config.worker.metrics_listen = String::new();
        Self {
            vhost,
            db_name,
            config,
            mgmt,
            shared: OnceCell::new(),
        }
    }

    /// The environment variables a `fleet` subprocess needs to see this slice.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let c = &self.config;
        vec![
            ("AMQP_URL".into(), c.amqp.url.clone()),
            (
                "RABBITMQ_MANAGEMENT_URL".into(),
                c.amqp.management_url.clone(),
            ),
            ("DATABASE_URL".into(), c.database.url.clone()),
            ("REDIS_URL".into(), c.redis.url.clone()),
            ("SEARCH_URL".into(), c.search.url.clone()),
            ("FLEET_REDIS_KEY_PREFIX".into(), c.redis.key_prefix.clone()),
            (
                "FLEET_RETRY_DELAY".into(),
                format!("{}ms", c.retry.delay.as_millis()),
            ),
            (
                "FLEET_RETRY_WINDOW".into(),
                format!("{}ms", c.retry.window.as_millis()),
            ),
            (
                "FLEET_DISPATCHER_SPLIT_LIMIT".into(),
                c.dispatcher.split_limit.to_string(),
            ),
            (
                "FLEET_DISPATCHER_BATCH_SIZE".into(),
                c.dispatcher.batch_size.to_string(),
            ),
            (
                "FLEET_WORKER_SHUTDOWN_GRACE".into(),
                format!("{}ms", c.worker.shutdown_grace.as_millis()),
            ),
            (
                "FLEET_WORKER_METRICS_LISTEN".into(),
                c.worker.metrics_listen.clone(),
            ),
            ("FLEET_LOG".into(), "info,lapin=off".into()),
        ]
    }

    /// Applies the topology of `self.config` in this vhost.
    pub async fn apply_topology(&self) {
        let ctx = app::context(&Arc::new(self.config.clone()), "test")
            .await
            .unwrap();
        app::apply_topology(&ctx).await.unwrap();
    }

    pub async fn db(&self) -> sqlx::PgPool {
        fleet_shared::db::connect(&self.config.database.url, 2)
            .await
            .unwrap()
    }

    pub async fn connection(&self) -> Connection {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("fleet-test {}", self.vhost).into());
        Connection::connect(&self.config.amqp.url, props)
            .await
            .unwrap()
    }

    /// A confirm-mode channel for publishing and getting.
    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connection().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        (conn, ch)
    }

    /// Publishes and waits for the confirm.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        self.publish_with(
            exchange,
            routing_key,
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }

    /// Publishes every body at once (confirms pipelined), then waits for all confirms.
    pub async fn publish_burst(&self, exchange: &str, routing_key: &str, bodies: &[Vec<u8>]) {
        let ch = self.shared_channel().await;
        let mut confirms = Vec::new();
        for body in bodies {
            let props = BasicProperties::default().with_delivery_mode(2);
            confirms.push(
                ch.basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
    }

    /// The test's shared channel (opened on first use).
    pub async fn shared_channel(&self) -> &Channel {
        &self.shared.get_or_init(|| self.channel()).await.1
    }

    pub async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        let ch = self.shared_channel().await;
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            confirm.is_ack(),
            "publish to {exchange}/{routing_key} not confirmed"
        );
    }

    /// Messages in a queue (ready, not unacked).
    pub async fn depth(&self, queue: &str) -> u32 {
        let ch = self.shared_channel().await;
        let q = fleet_shared::broker::inspect_queue(ch, queue)
            .await
            .unwrap();
        q.message_count()
    }

    /// Takes up to `max` messages off a queue (acked), waiting up to `wait`
    /// for at least `min` of them.
    pub async fn take(&self, queue: &str, min: usize, wait: Duration) -> Vec<Taken> {
        let ch = self.shared_channel().await;
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            match ch
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                Some(m) => {
                    let d = &m.delivery;
                    out.push(Taken {
                        body: d.data.clone(),
                        headers: fleet_shared::broker::headers_map(d.properties.headers().as_ref()),
                        routing_key: d.routing_key.to_string(),
                        exchange: d.exchange.to_string(),
                    });
                    d.ack(BasicAckOptions::default()).await.unwrap();
                }
                None => {
                    if out.len() >= min || Instant::now() > deadline {
                        return out;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Runs workers in-process until the returned guard is stopped or dropped.
    pub fn start(&self, kinds: &[WorkerKind]) -> Running {
        let token = CancellationToken::new();
        let config = self.config.clone();
        let kinds = kinds.to_vec();
        let t = token.clone();
        let handle = tokio::spawn(async move { app::run(config, &kinds, t).await });
        Running {
            token,
            handle: Some(handle),
        }
    }

    /// Content ids delivered to an outbound queue so far (drains it), waiting
    /// until `expected` distinct ids arrived or `wait` passed.
    pub async fn collect_ids(
        &self,
        queue: &str,
        expected: usize,
        wait: Duration,
    ) -> (BTreeSet<i64>, Vec<OutboundBatch>) {
        let deadline = Instant::now() + wait;
        let mut ids = BTreeSet::new();
        let mut batches = Vec::new();
        loop {
            for m in self.take(queue, 0, Duration::ZERO).await {
                let b = OutboundBatch::decode(&m.body).expect("outbound batches decode");
                ids.extend(b.content_ids.iter().copied());
                batches.push(b);
            }
            if ids.len() >= expected || Instant::now() > deadline {
                // A short grace for stragglers (duplicates are harmless but counted).
                return (ids, batches);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let vhost = self.vhost.clone();
        let db = self.db_name.clone();
        // Clean-up needs async clients; run them on a private runtime so a
        // test's own runtime (possibly shutting down) is not involved.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(m) = Management::new(MGMT_URL) {
                    let _ = m.delete_vhost(&vhost).await;
                }
                if let Ok(admin) = sqlx::PgPool::connect(ADMIN_DB).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A message taken off a queue.
#[derive(Debug, Clone)]
pub struct Taken {
    pub body: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
    pub routing_key: String,
    pub exchange: String,
}

impl Taken {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Workers running in this process.
pub struct Running {
    pub token: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        match self.handle.take() {
            Some(h) => h.await.unwrap(),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Polls `f` until it returns `Some`, or panics after `wait` with `what`.
pub async fn eventually<T, F, Fut>(wait: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {wait:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ osmem

/// The osmem-server binary: `OSMEM_SERVER_BIN`, else the one bundled in the
/// `osmem-server` Python wheel.
pub fn osmem_binary() -> PathBuf {
    if let Ok(p) = std::env::var("OSMEM_SERVER_BIN") {
        return p.into();
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import osmem_server; print(osmem_server.resolve_binary())",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "osmem-server is not installed: run `pip install osmem-server` (scripts/test.sh does)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A running osmem-server process; it exits with the test process.
pub struct Osmem {
    pub url: String,
    child: tokio::process::Child,
}

impl Osmem {
    /// Starts a server on `addr` (port 0 = any) seeded from `seed_dir`.
    pub async fn start(seed_dir: Option<&std::path::Path>, addr: &str) -> Osmem {
        let mut cmd = tokio::process::Command::new(osmem_binary());
        cmd.args([
            "--addr",
            addr,
            "--no-ja",
            "--parent-pid",
            &std::process::id().to_string(),
            "--no-stdin-watch",
        ]);
        if let Some(dir) = seed_dir {
            cmd.arg("--seed").arg(dir);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start osmem-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
            .await
            .expect("osmem-server started within 180 s")
            .unwrap()
            .expect("osmem-server printed its address");
        let v: Value = serde_json::from_str(&line).unwrap();
        Osmem {
            url: v["url"].as_str().unwrap().to_string(),
            child,
        }
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

static SHARED: OnceCell<Osmem> = OnceCell::const_new();

/// The shared server with the test catalogue in both indices.
pub async fn shared_osmem() -> &'static Osmem {
    SHARED
        .get_or_init(|| async {
            let dir =
                std::env::temp_dir().join(format!("fleet-test-catalogue-{}", std::process::id()));
            catalogue::write_seed_dir(&dir, INDICES, &catalogue_spec()).unwrap();
            let s = Osmem::start(Some(&dir), "127.0.0.1:0").await;
            let _ = std::fs::remove_dir_all(&dir);
            s
        })
        .await
}

/// A private copy-on-write clone of the shared catalogue; returns its URL.
pub async fn catalogue_clone() -> String {
    let base = shared_osmem().await;
    let v: Value = reqwest::Client::new()
        .post(format!("{}/_osmem/clones", base.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["url"].as_str().expect("clone url").to_string()
}

/// The content ids of the shared catalogue matching `pred`, computed from
/// the generator itself (independent of the search server).
pub fn expected_ids(pred: impl Fn(&catalogue::Content) -> bool) -> BTreeSet<i64> {
    catalogue::documents(&catalogue_spec())
        .filter(|d| pred(d))
        .map(|d| d.id)
        .collect()
}

pub fn identity() -> Identity {
    Identity::new("test")
}

pub fn header(t: &Taken, key: &str) -> String {
    t.headers.get(key).cloned().unwrap_or_default()
}

pub fn text_header(table: Option<&FieldTable>, key: &str) -> Option<String> {
    header_text(table, key)
}

/// The `fleet` binary built for these tests.
pub fn fleet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fleet")
}
