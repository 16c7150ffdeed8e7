//! Configuration as data.
//!
//! Layers, later ones winning: built-in defaults, an optional TOML file
//! (`--config`), the well-known connection variables (`AMQP_URL`,
//! `RABBITMQ_MANAGEMENT_URL`, `DATABASE_URL`, `REDIS_URL`, `SEARCH_URL`), then
//! one `FLEET_<SECTION>_<KEY>` variable per key (for example
//! `FLEET_RETRY_DELAY=2s`). Every layer is merged as JSON and decoded once with
//! `deny_unknown_fields`, so a typo or a bad value is refused at start-up with
//! the key's full name instead of being silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::IndexKey;

/// A refused configuration: always names the key and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("unknown configuration variable {var}{hint}")]
    UnknownVariable { var: String, hint: String },
    #[error("configuration key `{key}` (from {source_name}) has a bad value {value:?}: {message}")]
    BadValue {
        key: String,
        source_name: String,
        value: String,
        message: String,
    },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The whole configuration of a worker or CLI invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// RabbitMQ connection and consumer settings.
    pub amqp: AmqpConfig,
    /// PostgreSQL: jobs, partition tasks, parked messages, replay records.
    pub database: DatabaseConfig,
    /// Redis: request-id idempotency keys and the sweeper lock.
    pub redis: RedisConfig,
    /// The search cluster that resolves parameter ids to content ids.
    pub search: SearchConfig,
    /// The transient-failure path: delay queue TTL and the retry window.
    pub retry: RetryConfig,
    /// Validation, splitting and batching of invalidation requests.
    pub dispatcher: DispatcherConfig,
    /// Partition task execution.
    pub partition: PartitionConfig,
    /// Recovery of stalled jobs.
    pub sweeper: SweeperConfig,
    /// Source-event handlers.
    pub ingest: IngestConfig,
    /// Process-level settings shared by every worker.
    pub worker: WorkerConfig,
    /// Where the topology comes from and how its queues are declared.
    pub topology: TopologyConfig,
    /// Where each key that is not a default came from (`section.key` →
    /// `DATABASE_URL`, `FLEET_RETRY_DELAY`, a file, a flag): commands say
    /// what they talk to and why. Not configuration itself.
    #[serde(skip)]
    pub origins: Origins,
}

/// Where configuration keys came from. Two configurations with the same
/// values are equal wherever their values came from.
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, String>);

impl PartialEq for Origins {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// AMQP URL (`AMQP_URL`); its vhost is the one every worker uses. A
    /// cluster is several node URLs, comma-separated, on the same vhost: a
    /// worker connects to the first that answers and moves on to the next
    /// when it loses one. `amqps://` is always TLS, trusting the platform
    /// store plus `SSL_CERT_FILE` (`shared/src/tls.rs`).
    pub url: String,
    /// RabbitMQ management API base URL with credentials (`RABBITMQ_MANAGEMENT_URL`),
    /// or several, comma-separated (one per node; the first that answers is
    /// used); for `topology plan`, `status` and `dlq list`. Empty: derived
    /// from `url`, each node's host and credentials with its AMQP port plus
    /// 10000 (RabbitMQ's own pairing: 5672 → 15672, 5671 → https 15671).
    pub management_url: String,
    /// How long one connection attempt to one node may take, TCP connect and
    /// AMQP handshake together. A node that accepts connections but never
    /// answers (a wedged node) costs this long, then the next node is tried.
    /// A node URL's own `connection_timeout` query (milliseconds) wins.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The AMQP heartbeat asked of the broker (whole seconds): a connection
    /// to a node that stopped answering is declared dead after about twice
    /// this, and the worker reconnects elsewhere. A node URL's own
    /// `heartbeat` query wins.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Unacknowledged deliveries per consumer; also the number of messages a
    /// worker processes at once. A worker type named in `prefetch_by_worker`
    /// uses its own value instead.
    pub prefetch: u16,
    /// Prefetch per worker type (`dispatcher`, `partition`, `retry`,
    /// `ingest`, `sweeper`), given whole like `dispatcher.fields`: a type
    /// not named uses `prefetch`. The partition worker defaults to 4: each
    /// of its messages is a deep scan that holds a search request open for
    /// its whole length, so 64 at once put one process's every task on the
    /// search cluster together (on the 2-core development machine 25 tasks
    /// of one 250,000-id request stalled osmem-server and went to the retry
    /// delay); a few per process leave the rest queued for other replicas.
    /// The dispatcher defaults to 256: a lane carries requests that need no
    /// search (`parameterName: "id"`) behind requests that wait for the
    /// search limit, and the limit, not the prefetch, is what bounds the
    /// load on search; with 64, a backlog of searching requests during a
    /// search overload held every slot and the search-free requests behind
    /// them waited minutes (the full fault suite).
    pub prefetch_by_worker: BTreeMap<String, u16>,
    /// Longest wait between two reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
    /// How long to wait for a publisher confirm before treating the publish as failed.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// The AMQP users of the fleet's other worker types, comma-separated,
    /// when each type has its own (`fleet topology export --users`): a
    /// message whose `user_id` is one of them was published by the fleet
    /// (the broker vouches for `user_id`), so its retry counters are
    /// believed as if this process had published it. Needed for the retry
    /// handler's returns: it stamps its own user, and without this the
    /// lanes would count every return as a first attempt. Empty: only this
    /// process's own user (`url`) is the fleet.
    pub fleet_users: String,
}

impl AmqpConfig {
    /// The node URLs of `url`, in order.
    pub fn nodes(&self) -> Vec<&str> {
        split_list(&self.url)
    }

    /// The management API URL(s) to use: the configured ones, or the ones
    /// derived from the node URLs.
    pub fn management(&self) -> String {
        if self.management_url.trim().is_empty() {
            derive_management_url(&self.url)
        } else {
            self.management_url.clone()
        }
    }

    /// Points the configuration at other nodes; a management URL that was
    /// derived from the old ones follows them.
    pub fn set_url(&mut self, url: &str) {
        if self.management_url == derive_management_url(&self.url) {
            self.management_url = derive_management_url(url);
        }
        self.url = url.to_string();
    }
}

/// The non-empty, trimmed items of a comma-separated list.
pub fn split_list(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The management API URLs of the nodes of `amqp_urls`: same host and
/// credentials, `http` for `amqp` (`https` for `amqps`), port + 10000. Nodes
/// that give the same address appear once.
pub fn derive_management_url(amqp_urls: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for node in split_list(amqp_urls) {
        let Ok(u) = reqwest::Url::parse(node) else {
            continue;
        };
        let (scheme, default_port) = match u.scheme() {
            "amqps" => ("https", 5671),
            _ => ("http", 5672),
        };
        let port = u.port().unwrap_or(default_port) as u32 + 10_000;
        // `host_str` keeps the brackets of an IPv6 address.
        let Some(host) = u.host_str() else {
            continue;
        };
        let credentials = match (u.username(), u.password()) {
            ("", _) => String::new(),
            (user, Some(pass)) => format!("{user}:{pass}@"),
            (user, None) => format!("{user}@"),
        };
        let m = format!("{scheme}://{credentials}{host}:{port}");
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out.join(",")
}

/// The worker types, as `fleet run` names them (keys of `amqp.prefetch_by_worker`).
pub const WORKER_TYPES: &[&str] = &["dispatcher", "partition", "retry", "ingest", "sweeper"];

impl AmqpConfig {
    /// The prefetch of a consumer of worker type `worker`.
    pub fn prefetch_for(&self, worker: &str) -> u16 {
        self.prefetch_by_worker
            .get(worker)
            .copied()
            .unwrap_or(self.prefetch)
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            management_url: String::new(),
            connect_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(30),
            prefetch: 64,
            prefetch_by_worker: BTreeMap::from([
                ("dispatcher".to_string(), 256),
                ("partition".to_string(), 4),
            ]),
            reconnect_max_backoff: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(30),
            fleet_users: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL (`DATABASE_URL`). TLS: `sslmode=verify-full` checks
    /// the server's certificate against the platform store plus
    /// `sslrootcert=/path/ca.pem` (and `SSL_CERT_FILE`); `require` encrypts
    /// without a check.
    pub url: String,
    /// Pool size per process.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Redis URL (`REDIS_URL`); `rediss://` is TLS, trusting the platform
    /// store plus `SSL_CERT_FILE`.
    pub url: String,
    /// Prefix of every key the fleet writes, so several fleets (or tests) can share a server.
    pub key_prefix: String,
    /// How long a processed request id is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "fleet".into(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Which point-in-time API the search server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchFlavor {
    /// Elasticsearch 8: `POST /<index>/_pit`, closed with `DELETE /_pit`.
    Elasticsearch,
    /// OpenSearch (and osmem-server): `POST /<index>/_search/point_in_time`.
    Opensearch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Search cluster URL (`SEARCH_URL`); `https://` trusts the platform
    /// store plus `SSL_CERT_FILE`.
    pub url: String,
    /// Point-in-time dialect of the server.
    pub flavor: SearchFlavor,
    /// Page through a point in time (consistent view) where the server offers one.
    pub point_in_time: bool,
    /// Keep-alive of a point in time between two pages.
    #[serde(with = "humantime_serde")]
    pub pit_keep_alive: Duration,
    /// Per-request timeout; a timeout is a transient failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Hits per `search_after` page.
    pub page_size: usize,
    /// Index key → index name; index keys not listed use `default_index`.
    pub indices: BTreeMap<String, String>,
    /// Index for every index key not listed in `indices` (the international index).
    pub default_index: String,
    /// A fixed number of concurrent search requests per process, for
    /// benchmarking against a fixed limit; unset (the default), the limit
    /// adapts between `concurrency_min` and `concurrency_max`.
    pub concurrency: Option<usize>,
    /// Fewest concurrent search requests per process the adaptive limit
    /// shrinks to under overload (429, 503, timeouts, slow answers).
    pub concurrency_min: usize,
    /// Concurrent search requests per process at start-up.
    pub concurrency_initial: usize,
    /// Most concurrent search requests per process the adaptive limit grows
    /// to while answers stay fast. Separate from `amqp.prefetch`: messages
    /// beyond the limit wait for a slot instead of piling onto the cluster.
    pub concurrency_max: usize,
    /// A successful search answer slower than this holds the limit (it stops
    /// growing; only a timeout, 429 or 503 halves it); faster ones let it grow.
    #[serde(with = "humantime_serde")]
    pub concurrency_slow_after: Duration,
    /// Times a search call the cluster pushed back on (429, 503, a timeout)
    /// is tried again in place, after a jittered exponential back-off, before
    /// its message takes the retry path.
    pub backoff_attempts: u32,
    /// First local back-off; each next one doubles, with jitter (half to all of it).
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest single local back-off.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".into(),
            flavor: SearchFlavor::Opensearch,
            point_in_time: true,
            pit_keep_alive: Duration::from_secs(120),
            timeout: Duration::from_secs(30),
            // One page holds a whole partition at the default split limit
            // (and stays within Elasticsearch's default max_result_window).
            page_size: 10_000,
            indices: BTreeMap::from([("trTR".to_string(), "content_tr".to_string())]),
            default_index: "content_intl".into(),
            concurrency: None,
            concurrency_min: 1,
            concurrency_initial: 4,
            concurrency_max: 16,
            concurrency_slow_after: Duration::from_secs(5),
            backoff_attempts: 3,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl SearchConfig {
    /// The bounds of the per-process concurrency limit: `concurrency` fixes
    /// it, else it adapts within `concurrency_min..=concurrency_max`.
    pub fn concurrency_bounds(&self) -> crate::search::limiter::Bounds {
        let b = match self.concurrency {
            Some(n) => crate::search::limiter::Bounds {
                min: n,
                initial: n,
                max: n,
                slow_after: self.concurrency_slow_after,
            },
            None => crate::search::limiter::Bounds {
                min: self.concurrency_min,
                initial: self.concurrency_initial,
                max: self.concurrency_max,
                slow_after: self.concurrency_slow_after,
            },
        };
        b.normalised()
    }

    /// The index that holds the documents of `key`.
    pub fn index_for(&self, key: IndexKey) -> &str {
        self.indices
            .get(key.as_str())
            .map(String::as_str)
            .unwrap_or(&self.default_index)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// TTL of the retry delay queue: how long a failed message waits before it is tried again.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// A message whose window start (its `invalidationTime`, or the later
    /// `x-window-start` an operator's `dlq replay --reset-retries` stamps)
    /// is older than this is parked instead of retried.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Cap on attempts: a message that failed this many times is parked even
    /// inside its window, so nothing (a forged or skewed time, a window that
    /// keeps being reset) retries forever. The default, 20, is above the
    /// 13 attempts the default 2-hour window allows at the 10-minute delay
    /// (one at first sight, then one per delay), so with the defaults the
    /// window decides and the cap only stops loops. Must be at least 1; a
    /// large number is no practical cap.
    pub max_attempts: Option<u32>,
    /// How far a producer's clock may be ahead of ours, and how long a
    /// retried message may wait on its lane, when judging whether an
    /// `invalidationTime` is sane: one more than this in the future, or whose
    /// window started more than `window + clock_slack` ago, is refused as
    /// `bad_invalidation_time` where it enters the fleet (dispatcher, ingest).
    #[serde(with = "humantime_serde")]
    pub clock_slack: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(600),
            window: Duration::from_secs(7200),
            max_attempts: Some(20),
            clock_slack: Duration::from_secs(300),
        }
    }
}

/// How a `parameterName` may be queried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// The field lives inside a nested object and needs a `nested` query.
    #[serde(default)]
    pub nested: bool,
    /// The nested path (required when `nested`).
    #[serde(default)]
    pub path: Option<String>,
}

impl FieldRule {
    /// The nested path of the field, when it is nested.
    pub fn nested_path(&self) -> Option<&str> {
        if self.nested {
            self.path.as_deref()
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// A query counting more hits than this is split by `searchPartition` into partition tasks.
    pub split_limit: u64,
    /// Most `parameterIds` one request may carry.
    pub max_ids: usize,
    /// Most content ids per outbound message.
    pub batch_size: usize,
    /// Longest time a partial outbound batch waits for more ids from other requests.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// The fields a request may name as `parameterName` (the allow-list).
    pub fields: BTreeMap<String, FieldRule>,
    /// Index keys accepted in requests, and the default when a source event names none.
    pub index_keys: Vec<IndexKey>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let plain = FieldRule {
            nested: false,
            path: None,
        };
        let listings = FieldRule {
            nested: true,
            path: Some("listings".into()),
        };
        Self {
            split_limit: 10_000,
            max_ids: 10_000,
            batch_size: 1000,
            flush_interval: Duration::from_millis(20),
            fields: BTreeMap::from([
                ("id".into(), plain.clone()),
                ("brand.id".into(), plain.clone()),
                ("category.id".into(), plain.clone()),
                ("supplier.id".into(), plain),
                ("listings.id".into(), listings.clone()),
                ("listings.merchantId".into(), listings),
            ]),
            index_keys: IndexKey::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionConfig {
    /// Outbound batches a partition worker may have awaiting confirms at once;
    /// bounds memory while streaming (it never collects a whole result).
    pub max_in_flight_batches: usize,
    /// A task started this many times without finishing (its worker keeps
    /// dying on it, or it keeps coming back) ends `failed` and its message
    /// is dead-lettered, instead of being re-published forever. Above the
    /// retries one retry window allows, so it only stops real loops.
    pub max_attempts: u32,
    /// How often a running task shows it is alive; keep it well under
    /// `sweeper.stall_after`, which re-publishes tasks that stopped showing it.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self {
            max_in_flight_batches: 8,
            max_attempts: 25,
            heartbeat: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweeperConfig {
    /// A task running without a heartbeat for this long (its worker died), or
    /// pending this long while the partition queue holds no backlog (its
    /// message was lost), is re-published.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// Pause between two sweeps.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Expiry of the Redis lock that keeps a single sweeper active.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(300),
            interval: Duration::from_secs(30),
            lock_ttl: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// A stock update invalidates only when the new quantity is at or below this.
    pub critical_stock: i64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { critical_stock: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Upper bound on a graceful shutdown: in-flight messages not finished by
    /// then are returned to the broker unacknowledged.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Address of the `/metrics`, `/livez` and `/readyz` listener; empty disables it.
    pub metrics_listen: String,
    /// Apply the topology at start-up (idempotent declares).
    pub apply_topology: bool,
    /// Largest message body a worker accepts, in bytes. A larger one is
    /// dead-lettered as `body_too_large` before it is decoded, so one
    /// producer's mistake cannot make every worker parse megabytes. The
    /// default (1 MiB) is far above the largest legitimate message (a
    /// request with `dispatcher.max_ids` ids is about 200 KB).
    pub max_body_bytes: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(20),
            metrics_listen: "127.0.0.1:9464".into(),
            apply_topology: true,
            max_body_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologyConfig {
    /// Topology file; the one shipped in `topology/fleet.toml` (built in) when absent.
    pub file: Option<PathBuf>,
    /// Overrides the file's default queue type (`classic` or `quorum`).
    pub queue_type: Option<String>,
}

/// The variables that carry connection URLs, mapped to their keys.
pub const URL_VARIABLES: &[(&str, &str, &str)] = &[
    ("AMQP_URL", "amqp", "url"),
    ("RABBITMQ_MANAGEMENT_URL", "amqp", "management_url"),
    ("DATABASE_URL", "database", "url"),
    ("REDIS_URL", "redis", "url"),
    ("SEARCH_URL", "search", "url"),
];

impl Config {
    /// Loads the configuration from the process environment and an optional file.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the configuration from an explicit set of variables (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // `unwrap`: serialising plain structs to JSON cannot fail.
        let mut merged = serde_json::to_value(Config::default()).unwrap();
        let mut sources: BTreeMap<String, String> = BTreeMap::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Toml {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            let value = serde_json::to_value(table).map_err(|e| ConfigError::Toml {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            if let Value::Object(sections) = &value {
                for (section, keys) in sections {
                    if let Value::Object(keys) = keys {
                        for key in keys.keys() {
                            sources.insert(format!("{section}.{key}"), path.display().to_string());
                        }
                    }
                }
            }
            merge(&mut merged, value);
        }
        let mut vars: Vec<(String, String)> = vars.into_iter().collect();
        vars.sort();
        for (var, section, key) in URL_VARIABLES {
            if let Some((_, v)) = vars.iter().find(|(name, _)| name == var) {
                merged[*section][*key] = Value::String(v.clone());
                sources.insert(format!("{section}.{key}"), var.to_string());
            }
        }
        for (var, raw) in &vars {
            let Some(rest) = var.strip_prefix("FLEET_") else {
                continue;
            };
            // Variables the scripts and CLI use for themselves, not config keys.
            // `FLEET_PASSWORD_<WORKER>`: the worker users' passwords that
            // `fleet topology export|apply --users` reads.
            if matches!(rest, "CONFIG" | "LOG" | "LOG_FORMAT" | "OPERATOR")
                || rest.starts_with("PASSWORD_")
            {
                continue;
            }
            let (section, key) = locate(&merged, var, rest)?;
            let current = &merged[&section][&key];
            let value = parse_env_value(current, raw).map_err(|message| ConfigError::BadValue {
                key: format!("{section}.{key}"),
                source_name: var.clone(),
                value: raw.clone(),
                message,
            })?;
            merged[&section][&key] = value;
            sources.insert(format!("{section}.{key}"), var.clone());
        }
        let config: Config = serde_path_to_error::deserialize(merged.clone()).map_err(|e| {
            let key = e.path().to_string();
            let value = lookup(&merged, &key)
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            let source_name = sources.get(&key).cloned().unwrap_or_else(|| match file {
                Some(p) => p.display().to_string(),
                None => "defaults".into(),
            });
            ConfigError::BadValue {
                key,
                source_name,
                value,
                message: e.into_inner().to_string(),
            }
        })?;
        let mut config = config;
        if config.amqp.management_url.trim().is_empty() {
            config.amqp.management_url = derive_management_url(&config.amqp.url);
        }
        config.validate()?;
        config.origins = Origins(sources);
        Ok(config)
    }

    /// The configuration as it may be shown: every URL without its password.
    pub fn redacted(&self) -> Config {
        use crate::broker::redact;
        let mut c = self.clone();
        c.amqp.url = redact(&c.amqp.url);
        c.amqp.management_url = redact(&c.amqp.management_url);
        c.database.url = redact(&c.database.url);
        c.redis.url = redact(&c.redis.url);
        c.search.url = redact(&c.search.url);
        c
    }

    /// Records that `key` (`section.key`) was set by `from` (a flag, say).
    pub fn set_origin(&mut self, key: &str, from: &str) {
        self.origins.0.insert(key.to_string(), from.to_string());
    }

    /// Where `key` came from, in words: the variable, file or flag that
    /// set it, or that nothing did.
    pub fn origin(&self, key: &str) -> String {
        match self.origins.0.get(key) {
            Some(from) => format!("from {from}"),
            None => "the built-in default: nothing configured it".into(),
        }
    }

    /// Cross-field checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.dispatcher.batch_size == 0 {
            return invalid("dispatcher.batch_size", "must be at least 1");
        }
        if self.dispatcher.split_limit == 0 {
            return invalid("dispatcher.split_limit", "must be at least 1");
        }
        if self.search.page_size == 0 {
            return invalid("search.page_size", "must be at least 1");
        }
        if self.search.concurrency == Some(0) {
            return invalid(
                "search.concurrency",
                "must be at least 1 (or unset: adaptive)",
            );
        }
        if self.search.concurrency_min == 0 {
            return invalid("search.concurrency_min", "must be at least 1");
        }
        if self.search.concurrency_max < self.search.concurrency_min {
            return invalid(
                "search.concurrency_max",
                "must be at least search.concurrency_min",
            );
        }
        if !(self.search.concurrency_min..=self.search.concurrency_max)
            .contains(&self.search.concurrency_initial)
        {
            return invalid(
                "search.concurrency_initial",
                "must be between search.concurrency_min and search.concurrency_max",
            );
        }
        if self.amqp.prefetch == 0 {
            return invalid("amqp.prefetch", "must be at least 1");
        }
        self.validate_amqp()?;
        for (worker, &n) in &self.amqp.prefetch_by_worker {
            let key = format!("amqp.prefetch_by_worker.{worker}");
            if !WORKER_TYPES.contains(&worker.as_str()) {
                return invalid(
                    &key,
                    &format!("no such worker type (one of {})", WORKER_TYPES.join(", ")),
                );
            }
            if n == 0 {
                return invalid(&key, "must be at least 1");
            }
        }
        if self.retry.delay.is_zero() {
            return invalid("retry.delay", "must be longer than zero");
        }
        if self.retry.max_attempts == Some(0) {
            return invalid(
                "retry.max_attempts",
                "must be at least 1 (a large number is no practical cap)",
            );
        }
        if self.worker.max_body_bytes == 0 {
            return invalid("worker.max_body_bytes", "must be at least 1");
        }
        for (name, rule) in &self.dispatcher.fields {
            if rule.nested && rule.path.is_none() {
                return invalid(
                    &format!("dispatcher.fields.\"{name}\".path"),
                    "a nested field needs its nested path",
                );
            }
        }
        if let Some(t) = &self.topology.queue_type {
            if t != "classic" && t != "quorum" {
                return invalid("topology.queue_type", "must be `classic` or `quorum`");
            }
        }
        Ok(())
    }

    /// The node list: at least one URL, every one an AMQP URL, all on one vhost.
    fn validate_amqp(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| {
            Err(ConfigError::Invalid {
                key: "amqp.url".into(),
                message,
            })
        };
        let nodes = self.amqp.nodes();
        if nodes.is_empty() {
            return invalid("names no broker node".into());
        }
        let mut vhosts = std::collections::BTreeSet::new();
        for node in &nodes {
            match reqwest::Url::parse(node) {
                Ok(u) if matches!(u.scheme(), "amqp" | "amqps") && u.has_host() => {
                    vhosts.insert(crate::mgmt::vhost_of(node));
                }
                _ => {
                    return invalid(format!(
                        "{} is not an amqp:// or amqps:// URL",
                        crate::broker::redact(node)
                    ))
                }
            }
        }
        if vhosts.len() > 1 {
            return invalid(format!(
                "the nodes of one cluster must name the same vhost, not {}",
                vhosts
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
        if self.amqp.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "amqp.connect_timeout".into(),
                message: "must be longer than zero".into(),
            });
        }
        if self.amqp.heartbeat.as_secs() == 0 || self.amqp.heartbeat.as_secs() > u16::MAX as u64 {
            return Err(ConfigError::Invalid {
                key: "amqp.heartbeat".into(),
                message: "must be whole seconds from 1 s to 65535 s (the heartbeat stays on)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Every key with its current value, for `fleet config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// Every key as the variables [`load`](Self::load) reads back, for a child
    /// process that must see exactly this configuration: the connection URLs
    /// under their well-known names (`AMQP_URL`, …), every other key as
    /// `FLEET_<SECTION>_<KEY>`. Values are written the way the loader parses
    /// them: durations in humantime (`1m 30s`), lists and maps as JSON.
    ///
    /// Every key is rendered, so the variables override whatever the child
    /// inherits or finds in a `--config` file, with one exception: an optional
    /// key that is unset here is left out (there is no text for "unset"), and
    /// the child keeps its own value for it.
    pub fn to_env(&self) -> Vec<(String, String)> {
        // `unwrap`: serialising plain structs to JSON cannot fail.
        let value = serde_json::to_value(self).unwrap();
        let mut vars = Vec::new();
        for (section, keys) in value.as_object().into_iter().flatten() {
            for (key, v) in keys.as_object().into_iter().flatten() {
                let text = match v {
                    Value::Null => continue,
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let name = URL_VARIABLES
                    .iter()
                    .find(|(_, s, k)| s == section && k == key)
                    .map(|(var, _, _)| var.to_string())
                    .unwrap_or_else(|| format!("FLEET_{section}_{key}").to_ascii_uppercase());
                vars.push((name, text));
            }
        }
        vars
    }
}

/// Finds the section and key of a `FLEET_<SECTION>_<KEY>` variable.
fn locate(merged: &Value, var: &str, rest: &str) -> Result<(String, String), ConfigError> {
    let lower = rest.to_ascii_lowercase();
    let sections = merged.as_object().into_iter().flat_map(|m| m.keys());
    let mut candidates = Vec::new();
    for section in sections {
        let Some(key) = lower.strip_prefix(&format!("{section}_")) else {
            continue;
        };
        if merged[section].get(key).is_some() {
            return Ok((section.clone(), key.to_string()));
        }
        candidates.extend(
            merged[section]
                .as_object()
                .into_iter()
                .flat_map(|m| m.keys())
                .map(|k| (strsim::levenshtein(k, key), format!("{section}_{k}"))),
        );
    }
    if candidates.is_empty() {
        candidates = all_keys(merged)
            .into_iter()
            .map(|k| (strsim::levenshtein(&k, &lower), k))
            .collect();
    }
    candidates.sort();
    let hint = candidates
        .first()
        .filter(|(d, _)| *d <= 4)
        .map(|(_, k)| format!("; did you mean FLEET_{}?", k.to_ascii_uppercase()))
        .unwrap_or_else(|| "; `fleet config` lists every key".into());
    Err(ConfigError::UnknownVariable {
        var: var.into(),
        hint,
    })
}

fn all_keys(merged: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(map) = merged.as_object() {
        for (section, v) in map {
            for key in v.as_object().into_iter().flat_map(|m| m.keys()) {
                keys.push(format!("{section}_{key}"));
            }
        }
    }
    keys
}

fn lookup<'a>(merged: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted
        .split('.')
        .try_fold(merged, |v, part| v.get(part.trim_matches('"')))
}

/// Parses a variable's text into the JSON shape of the key it overrides.
fn parse_env_value(current: &Value, raw: &str) -> Result<Value, String> {
    match current {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Value::Bool(true)),
            "0" | "false" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err("expected true or false".into()),
        },
        Value::Number(_) => serde_json::from_str::<serde_json::Number>(raw.trim())
            .map(Value::Number)
            .map_err(|_| "expected a number".into()),
        Value::Array(_) => {
            if raw.trim_start().starts_with('[') {
                serde_json::from_str(raw).map_err(|e| format!("expected a JSON array: {e}"))
            } else {
                Ok(Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.into()))
                        .collect(),
                ))
            }
        }
        Value::Object(_) => {
            serde_json::from_str(raw).map_err(|e| format!("expected a JSON object: {e}"))
        }
        // Optional keys (null) take a number when the text is one, else the text.
        Value::Null => Ok(serde_json::from_str::<serde_json::Number>(raw.trim())
            .map(Value::Number)
            .unwrap_or_else(|_| Value::String(raw.into()))),
        Value::String(_) => Ok(Value::String(raw.into())),
    }
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    // Maps such as `dispatcher.fields` are replaced whole, not
                    // merged, so a file can shrink the allow-list.
                    Some(slot) if slot.is_object() && v.is_object() && !is_free_map(&k) => {
                        merge(slot, v)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn is_free_map(key: &str) -> bool {
    matches!(key, "fields" | "indices" | "prefetch_by_worker")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::load_from(None, vars(&[])).unwrap();
        assert_eq!(c.retry.delay, Duration::from_secs(600));
        assert_eq!(c.retry.window, Duration::from_secs(7200));
        // The default cap leaves room for every attempt the window allows.
        let max = c.retry.max_attempts.expect("attempts have a default cap");
        let window_allows = c.retry.window.as_secs() / c.retry.delay.as_secs() + 1;
        assert!(u64::from(max) > window_allows, "{max} <= {window_allows}");
        assert_eq!(c.retry.clock_slack, Duration::from_secs(300));
        assert_eq!(c.worker.max_body_bytes, 1024 * 1024);
        assert_eq!(c.dispatcher.split_limit, 10_000);
        assert_eq!(c.dispatcher.batch_size, 1000);
        assert_eq!(c.ingest.critical_stock, 3);
        assert_eq!(c.search.index_for(IndexKey::TrTr), "content_tr");
        assert_eq!(c.search.index_for(IndexKey::DeDe), "content_intl");
        assert!(c.dispatcher.fields["listings.merchantId"].nested);
    }

    #[test]
    fn fleet_variables_override_keys() {
        let c = Config::load_from(
            None,
            vars(&[
                ("FLEET_RETRY_DELAY", "2s"),
                ("FLEET_RETRY_WINDOW", "6s"),
                ("FLEET_DISPATCHER_SPLIT_LIMIT", "500"),
                ("FLEET_RETRY_MAX_ATTEMPTS", "4"),
                ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/test"),
            ]),
        )
        .unwrap();
        assert_eq!(c.retry.delay, Duration::from_secs(2));
        assert_eq!(c.retry.window, Duration::from_secs(6));
        assert_eq!(c.dispatcher.split_limit, 500);
        assert_eq!(c.retry.max_attempts, Some(4));
        assert!(c.amqp.url.ends_with("/test"));
    }

    #[test]
    fn the_rendered_variables_load_back_to_the_same_config() {
        // The defaults as loaded (the management URL is derived then).
        let defaults = Config::load_from(None, vars(&[])).unwrap();
        assert_eq!(
            Config::load_from(None, defaults.to_env()).unwrap(),
            defaults
        );
        // Every key away from its default, so a key the rendering drops or
        // mangles shows up as a difference.
        let mut c = Config::default();
        c.amqp.url = "amqp://u:p@10.0.0.1:5672/fleet-x".into();
        c.amqp.management_url = "http://u:p@10.0.0.1:15672".into();
        c.amqp.prefetch = 7;
        c.amqp.prefetch_by_worker = BTreeMap::from([("dispatcher".into(), 9)]);
        c.amqp.reconnect_max_backoff = Duration::from_millis(2500);
        c.amqp.confirm_timeout = Duration::from_secs(90);
        c.amqp.fleet_users = "fleet-retry,fleet-ingest".into();
        c.database.url = "postgres://postgres@10.0.0.2:5432/fleet_x".into();
        c.database.max_connections = 3;
        c.redis.url = "redis://10.0.0.3:6379/2".into();
        c.redis.key_prefix = "fleet-x".into();
        c.redis.idempotency_ttl = Duration::from_secs(15 * 60);
        c.search.url = "http://10.0.0.4:9200".into();
        c.search.flavor = SearchFlavor::Elasticsearch;
        c.search.point_in_time = false;
        c.search.pit_keep_alive = Duration::from_millis(1);
        c.search.timeout = Duration::from_secs(3 * 3600 + 1);
        c.search.page_size = 123;
        c.search.indices = BTreeMap::from([("deDE".into(), "content_de".into())]);
        c.search.default_index = "content_rest".into();
        c.retry.delay = Duration::from_millis(1500);
        c.retry.window = Duration::from_secs(30);
        c.retry.max_attempts = Some(4);
        c.dispatcher.split_limit = 400;
        c.dispatcher.max_ids = 9;
        c.dispatcher.batch_size = 100;
        c.dispatcher.flush_interval = Duration::from_micros(10_500);
        c.dispatcher.fields = BTreeMap::from([(
            "listings.id".into(),
            FieldRule {
                nested: true,
                path: Some("listings".into()),
            },
        )]);
        c.dispatcher.index_keys = vec![IndexKey::DeDe, IndexKey::TrTr];
        c.partition.max_in_flight_batches = 2;
        c.sweeper.stall_after = Duration::from_secs(2);
        c.sweeper.interval = Duration::from_millis(500);
        c.sweeper.lock_ttl = Duration::from_secs(5);
        c.ingest.critical_stock = -1;
        c.worker.shutdown_grace = Duration::from_secs(5);
        c.worker.metrics_listen = String::new();
        c.worker.apply_topology = false;
        c.topology.file = Some(PathBuf::from("/etc/fleet/topology.toml"));
        c.topology.queue_type = Some("quorum".into());
        let vars = c.to_env();
        assert!(vars
            .iter()
            .any(|(k, v)| k == "AMQP_URL" && v == &c.amqp.url));
        assert!(vars
            .iter()
            .any(|(k, v)| k == "FLEET_RETRY_DELAY" && v == "1s 500ms"));
        let keys: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(keys.len(), unique.len(), "{keys:?}");
        assert_eq!(Config::load_from(None, vars).unwrap(), c);
    }

    #[test]
    fn a_bad_value_names_the_key() {
        let err = Config::load_from(None, vars(&[("FLEET_RETRY_DELAY", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retry.delay"), "{err}");
        assert!(err.contains("FLEET_RETRY_DELAY"), "{err}");
        let err = Config::load_from(None, vars(&[("FLEET_DISPATCHER_SPLIT_LIMIT", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dispatcher.split_limit"), "{err}");
    }

    #[test]
    fn a_misspelt_variable_gets_a_suggestion() {
        let err = Config::load_from(None, vars(&[("FLEET_RETRY_DELAYY", "2s")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean FLEET_RETRY_DELAY?"), "{err}");
    }

    #[test]
    fn a_cluster_is_a_list_of_nodes_on_one_vhost() {
        let c = Config::load_from(
            None,
            vars(&[(
                "AMQP_URL",
                "amqp://u:p@10.0.0.1:5672/prod, amqp://u:p@10.0.0.2/prod,amqp://u:p@[::1]:5701/prod",
            )]),
        )
        .unwrap();
        assert_eq!(c.amqp.nodes().len(), 3);
        assert_eq!(c.amqp.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.amqp.heartbeat, Duration::from_secs(30));
        // Not configured: one management URL per node, port + 10000.
        assert_eq!(
            c.amqp.management_url,
            "http://u:p@10.0.0.1:15672,http://u:p@10.0.0.2:15672,http://u:p@[::1]:15701"
        );
        let err = Config::load_from(
            None,
            vars(&[("AMQP_URL", "amqp://u:secret@a/one,amqp://u:secret@b/two")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("amqp.url") && err.contains("same vhost"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
        let err = Config::load_from(None, vars(&[("AMQP_URL", "http://a:5672/")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an amqp://"), "{err}");
        let err = Config::load_from(None, vars(&[("FLEET_AMQP_HEARTBEAT", "0s")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp.heartbeat"), "{err}");
    }

    #[test]
    fn a_configured_management_url_stays_and_a_derived_one_follows_the_nodes() {
        let mut c = Config::load_from(None, vars(&[])).unwrap();
        assert_eq!(c.amqp.management_url, "http://guest:guest@127.0.0.1:15672");
        c.amqp
            .set_url("amqps://u:p@h1:5671/v,amqps://u:p@h2:5671/v");
        assert_eq!(
            c.amqp.management_url,
            "https://u:p@h1:15671,https://u:p@h2:15671"
        );
        let mut c = Config::load_from(
            None,
            vars(&[("RABBITMQ_MANAGEMENT_URL", "http://admin:x@mgmt:8080")]),
        )
        .unwrap();
        c.amqp.set_url("amqp://h1/v");
        assert_eq!(c.amqp.management_url, "http://admin:x@mgmt:8080");
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example.toml");
        let c = Config::load_from(Some(&path), vars(&[])).unwrap();
        assert_eq!(c.dispatcher.split_limit, 10_000);
    }

    #[test]
    fn search_concurrency_adapts_by_default_and_can_be_fixed() {
        let c = Config::load_from(None, vars(&[])).unwrap();
        let b = c.search.concurrency_bounds();
        assert_eq!((b.min, b.initial, b.max), (1, 4, 16));
        assert_eq!(c.search.backoff_attempts, 3);
        let c = Config::load_from(
            None,
            vars(&[
                ("FLEET_SEARCH_CONCURRENCY", "6"),
                ("FLEET_SEARCH_BACKOFF_INITIAL", "50ms"),
            ]),
        )
        .unwrap();
        let b = c.search.concurrency_bounds();
        assert_eq!((b.min, b.initial, b.max), (6, 6, 6));
        assert_eq!(c.search.backoff_initial, Duration::from_millis(50));
        let err = Config::load_from(
            None,
            vars(&[
                ("FLEET_SEARCH_CONCURRENCY_MIN", "8"),
                ("FLEET_SEARCH_CONCURRENCY_MAX", "4"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("search.concurrency_max"), "{err}");
        let err = Config::load_from(None, vars(&[("FLEET_SEARCH_CONCURRENCY", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("search.concurrency"), "{err}");
    }

    #[test]
    fn prefetch_is_set_per_worker_type() {
        let c = Config::load_from(None, vars(&[])).unwrap();
        assert_eq!(c.amqp.prefetch_for("partition"), 4);
        assert_eq!(c.amqp.prefetch_for("dispatcher"), 256);
        assert_eq!(c.amqp.prefetch_for("retry"), 64);
        let c = Config::load_from(
            None,
            vars(&[
                ("FLEET_AMQP_PREFETCH", "10"),
                ("FLEET_AMQP_PREFETCH_BY_WORKER", r#"{"dispatcher": 128}"#),
            ]),
        )
        .unwrap();
        // Given whole: partition is no longer named and takes amqp.prefetch.
        assert_eq!(c.amqp.prefetch_for("dispatcher"), 128);
        assert_eq!(c.amqp.prefetch_for("partition"), 10);
        let dir = std::env::temp_dir().join(format!("fleet-cfg-pf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prefetch.toml");
        std::fs::write(&path, "[amqp.prefetch_by_worker]\npartition = 2\n").unwrap();
        let c = Config::load_from(Some(&path), vars(&[])).unwrap();
        assert_eq!(c.amqp.prefetch_for("partition"), 2);
        for bad in [r#"{"partiton": 4}"#, r#"{"partition": 0}"#] {
            let err = Config::load_from(None, vars(&[("FLEET_AMQP_PREFETCH_BY_WORKER", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("amqp.prefetch_by_worker.parti"), "{err}");
        }
    }

    #[test]
    fn an_unknown_key_in_a_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("fleet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[retry]\ndelai = \"2s\"\n").unwrap();
        let err = Config::load_from(Some(&path), vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("delai"), "{err}");
    }
}
