//! [`Sandbox`]: one isolated slice of RabbitMQ, PostgreSQL and Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::broker;
use fleet_shared::config::Config;
use fleet_shared::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use fleet_shared::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use fleet_shared::message::OutboundBatch;
use fleet_shared::mgmt::Management;
use fleet_shared::topology::ApplyReport;
use fleet_workers::app::{self, WorkerKind};
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// The management API of this machine's RabbitMQ (tests).
pub const MGMT_URL: &str = "http://guest:guest@127.0.0.1:15672";
/// The database the tests create and drop theirs from.
pub const ADMIN_DB: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The integration tests' configuration before a sandbox is opened on it:
/// this machine's services, and second-scale versions of the production
/// delays so broker TTL paths are testable.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.amqp.url = "amqp://guest:guest@127.0.0.1:5672/%2f".into();
    config.amqp.management_url = MGMT_URL.into();
    config.amqp.prefetch = 32;
    config.amqp.reconnect_max_backoff = Duration::from_secs(2);
    config.database.url = ADMIN_DB.into();
    config.database.max_connections = 4;
    config.redis.url = "redis://127.0.0.1:6379/".into();
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
    config
}

/// The name the integration tests know the sandbox by.
pub type TestEnv = Sandbox;

/// One isolated slice of every service: a vhost, a database named after it
/// and the vhost's name as Redis key prefix. All three are removed by
/// [`remove`](Self::remove) or, failing that, when the sandbox is dropped.
pub struct Sandbox {
    /// The sandbox's vhost (`<prefix>-<pid>-<random>`); also its Redis key prefix.
    pub vhost: String,
    /// The sandbox's database: the vhost's name with `_` for `-`.
    pub db_name: String,
    /// The base configuration pointed at the sandbox; what workers run with.
    pub config: Config,
    /// The management API the vhost was created through.
    pub mgmt: Management,
    /// What the sandbox created and has not removed yet.
    leftovers: Leftovers,
    /// One confirm-mode channel for the test's own publishing and getting.
    shared: OnceCell<(Connection, Channel)>,
}

impl Sandbox {
    /// Opens a sandbox on the services `base` names: creates a vhost and a
    /// database called `<prefix>-<pid>-<random>` and points `base`'s AMQP and
    /// database URLs and Redis key prefix at them. The topology is not
    /// applied yet (see [`try_apply_topology`](Self::try_apply_topology)).
    /// Whatever was created before an error is removed again.
    pub async fn open(base: &Config, prefix: &str) -> anyhow::Result<Sandbox> {
        let vhost = unique(prefix);
        let db_name = vhost.replace('-', "_");
        let mut config = base.clone();
        config.amqp.url = with_path(&base.amqp.url, &vhost).context("AMQP URL")?;
        config.database.url = with_path(&base.database.url, &db_name).context("DATABASE_URL")?;
        config.redis.key_prefix = vhost.clone();
        let mut sandbox = Sandbox {
            mgmt: Management::new(&base.amqp.management_url)?,
            leftovers: Leftovers {
                management_url: base.amqp.management_url.clone(),
                admin_db_url: base.database.url.clone(),
                redis_url: base.redis.url.clone(),
                vhost: None,
                database: None,
                key_prefix: None,
                users: Vec::new(),
            },
            vhost,
            db_name,
            config,
            shared: OnceCell::new(),
        };
        sandbox
            .mgmt
            .create_vhost(&sandbox.vhost)
            .await
            .with_context(|| {
                format!(
                    "creating vhost {} (is the management plugin enabled?)",
                    sandbox.vhost
                )
            })?;
        sandbox.leftovers.vhost = Some(sandbox.vhost.clone());
        sandbox.leftovers.key_prefix = Some(sandbox.vhost.clone());
        let admin = admin_pool(&base.database.url).await?;
        sqlx::query(&format!("CREATE DATABASE \"{}\"", sandbox.db_name))
            .execute(&admin)
            .await
            .with_context(|| format!("CREATE DATABASE {}", sandbox.db_name))?;
        admin.close().await;
        sandbox.leftovers.database = Some(sandbox.db_name.clone());
        Ok(sandbox)
    }

    /// A test sandbox ([`test_config`]) with the topology applied.
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

    /// Like [`with`](Self::with), searching a private clone of the shared
    /// test catalogue.
    pub async fn with_catalogue(tweak: impl FnOnce(&mut Config)) -> Self {
        let url = crate::catalogue_clone().await;
        Self::with(|c| {
            c.search.url = url;
            tweak(c);
        })
        .await
    }

    /// Waits until some worker consumes `queue` (its topology applied and
    /// its consumer attached), so a test can change the broker under it.
    pub async fn consumed(&self, queue: &str) {
        crate::eventually(Duration::from_secs(20), "a worker to consume", || async {
            let ch = self.shared_channel().await;
            let q = fleet_shared::broker::inspect_queue(ch, queue).await.ok()?;
            (q.consumer_count() > 0).then_some(())
        })
        .await
    }

    /// A test sandbox ([`test_config`]) with an empty vhost (no topology).
    pub async fn bare() -> Self {
        Self::open(&test_config(), "fleet-test")
            .await
            .unwrap_or_else(|e| panic!("opening a test sandbox: {e:#}"))
    }

    /// Removes the vhost, the database and the Redis keys under the
    /// sandbox's prefix; returns what could not be removed (and is tried
    /// again on drop).
    pub async fn remove(&mut self) -> Vec<anyhow::Error> {
        self.leftovers.remove().await
    }

    /// The variables a `fleet` subprocess needs to work in this sandbox: the
    /// whole configuration ([`Config::to_env`]) and a quiet log filter.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        self.env_vars_logging("info,lapin=off")
    }

    /// [`env_vars`](Self::env_vars) with another `FLEET_LOG` filter.
    pub fn env_vars_logging(&self, filter: &str) -> Vec<(String, String)> {
        let mut vars = self.config.to_env();
        vars.push(("FLEET_LOG".into(), filter.into()));
        vars
    }

    /// Removes the broker user `name` with the sandbox (users are not
    /// per vhost: a test that creates one names it after the vhost, so
    /// tests never share one).
    pub fn delete_user_on_drop(&mut self, name: &str) {
        self.leftovers.users.push(name.to_string());
    }

    /// The sandbox's AMQP URL (every node) logged in as `user`.
    pub fn amqp_url_as(&self, user: &str, password: &str) -> String {
        fleet_shared::config::split_list(&self.config.amqp.url)
            .into_iter()
            .map(|node| {
                let mut u = reqwest::Url::parse(node).expect("the sandbox's URL parses");
                // `expect`s: an amqp URL with a host takes credentials.
                u.set_username(user).expect("a URL with a host");
                u.set_password(Some(password)).expect("a URL with a host");
                u.to_string()
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Applies the topology of `self.config` in the vhost.
    pub async fn try_apply_topology(&self) -> anyhow::Result<ApplyReport> {
        let ctx = app::context(&Arc::new(self.config.clone()), "test").await?;
        app::apply_topology(&ctx)
            .await
            .context("applying the topology")
    }

    /// [`try_apply_topology`](Self::try_apply_topology) for tests: panics on failure.
    pub async fn apply_topology(&self) {
        self.try_apply_topology()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
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
        let q = broker::inspect_queue(ch, queue).await.unwrap();
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
                        headers: broker::headers_map(d.properties.headers().as_ref()),
                        routing_key: d.routing_key.to_string(),
                        exchange: d.exchange.to_string(),
                        message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
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

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.leftovers.is_empty() {
            return;
        }
        let mut leftovers = std::mem::take(&mut self.leftovers);
        // Removal needs async clients; run them on a private runtime so the
        // caller's own runtime (possibly shutting down) is not involved.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(leftovers.remove());
        })
        .join();
    }
}

/// What a sandbox created and still has to remove, with the addresses to
/// remove it through (owned, so removal can run on another thread).
#[derive(Debug, Default)]
struct Leftovers {
    management_url: String,
    admin_db_url: String,
    redis_url: String,
    vhost: Option<String>,
    database: Option<String>,
    key_prefix: Option<String>,
    /// Broker users a test made for this sandbox.
    users: Vec<String>,
}

impl Leftovers {
    fn is_empty(&self) -> bool {
        self.vhost.is_none()
            && self.database.is_none()
            && self.key_prefix.is_none()
            && self.users.is_empty()
    }

    /// Tries every removal; forgets what is gone, returns what failed.
    async fn remove(&mut self) -> Vec<anyhow::Error> {
        let mut failed = Vec::new();
        let mut kept = Vec::new();
        for user in std::mem::take(&mut self.users) {
            let deleted = async {
                Management::new(&self.management_url)?
                    .delete_user(&user)
                    .await
            }
            .await;
            match deleted {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failed.push(
                        anyhow::Error::new(e).context(format!("could not delete user {user}")),
                    );
                    kept.push(user);
                }
            }
        }
        self.users = kept;
        if let Some(vhost) = &self.vhost {
            let deleted = async {
                Management::new(&self.management_url)?
                    .delete_vhost(vhost)
                    .await
            }
            .await;
            match deleted {
                Ok(()) => self.vhost = None,
                Err(e) => failed
                    .push(anyhow::Error::new(e).context(format!("could not delete vhost {vhost}"))),
            }
        }
        if let Some(db) = &self.database {
            let dropped = async {
                let admin = admin_pool(&self.admin_db_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                anyhow::Ok(())
            }
            .await;
            match dropped {
                Ok(()) => self.database = None,
                Err(e) => failed.push(e.context(format!("could not drop database {db}"))),
            }
        }
        if let Some(prefix) = &self.key_prefix {
            let deleted = tokio::time::timeout(
                Duration::from_secs(10),
                delete_keys(&self.redis_url, prefix),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("Redis did not answer in 10 s")));
            match deleted {
                Ok(()) => self.key_prefix = None,
                Err(e) => failed.push(e.context(format!("could not delete Redis keys {prefix}:*"))),
            }
        }
        failed
    }
}

/// Deletes every key under `<prefix>:` (the fleet's idempotency keys and
/// locks; they would otherwise outlive the sandbox by their TTL).
async fn delete_keys(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{prefix}:*");
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

async fn admin_pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", broker::redact(url)))
}

/// `<prefix>-<pid>-<10 random hex digits>`: unique across concurrent test
/// processes and runs, and a valid vhost, database and key-prefix name.
fn unique(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}-{}", std::process::id(), &random[..10])
}

/// `url` with its path replaced by `/<name>` (a vhost or a database).
fn with_path(url: &str, name: &str) -> anyhow::Result<String> {
    let mut u = reqwest::Url::parse(url).with_context(|| format!("bad URL {url:?}"))?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}

/// A message taken off a queue.
#[derive(Debug, Clone)]
pub struct Taken {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub routing_key: String,
    pub exchange: String,
    /// The `message_id` property, when it has one.
    pub message_id: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_sandbox_vhost_and_database() {
        assert_eq!(
            with_path("amqp://guest:guest@127.0.0.1:5672/%2f", "fleet-bench-1").unwrap(),
            "amqp://guest:guest@127.0.0.1:5672/fleet-bench-1"
        );
        assert_eq!(
            with_path("postgres://postgres@127.0.0.1:5432/test", "fleet_bench_1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/fleet_bench_1"
        );
    }

    #[test]
    fn names_are_unique_and_usable_everywhere() {
        let a = unique("fleet-test");
        assert_ne!(a, unique("fleet-test"));
        assert!(a.starts_with(&format!("fleet-test-{}-", std::process::id())));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }
}
