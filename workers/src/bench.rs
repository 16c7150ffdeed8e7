//! `fleet bench`: the measurements of SPEC §10, from one run on one machine,
//! each next to a baseline measured in the same run on the same services.
//!
//! - **fan-out**: content ids per second delivered to an outbound queue for
//!   one request matching the whole catalogue (split into partition tasks by
//!   a `fleet run dispatcher partition` subprocess), next to a raw unsplit
//!   `search_after` scan of the same query and next to the summed raw scans
//!   of the partition queries the dispatcher would make;
//! - **fast lane**: single-content requests per second end to end (publish →
//!   dispatcher → outbound queue), next to a raw consume-and-republish relay
//!   with publisher confirms on the same broker;
//! - **memory**: peak RSS of a `fleet run partition` subprocess while it
//!   streams a small and a large partition task.
//!
//! The run is isolated from anything else on the services: its own vhost (with
//! the topology applied), its own database, its own Redis key prefix and, unless
//! `--search-url` names a loaded cluster, its own osmem-server seeded with a
//! generated catalogue. Everything it created is removed at the end, also
//! after an error or Ctrl-C.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_shared::broker::{self, Identity, Outgoing};
use fleet_shared::config::Config;
use fleet_shared::db::{self, NewJob, NewTask};
use fleet_shared::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use fleet_shared::lapin::types::FieldTable;
use fleet_shared::lapin::{BasicProperties, Channel, Confirmation, Connection};
use fleet_shared::message::{
    now_millis, outbound_queue, IndexKey, InvalidationRequest, InvalidationType, OutboundBatch,
    PartitionTask, CURRENT_VERSION,
};
use fleet_shared::mgmt::Management;
use fleet_shared::runtime::Context;
use fleet_shared::search::{group_partitions, terms_query, with_partition_range, Search};
use fleet_shared::topology::names;
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::app;
use crate::catalogue::{self, Spec};

/// The index key every measurement uses (its index is `search.indices.trTR`).
const KEY: IndexKey = IndexKey::TrTr;
/// The bulk-lane type of the fan-out request.
const FANOUT_TYPE: InvalidationType = InvalidationType::Supplier;
/// The fast-lane type of the single-content requests.
const FAST_TYPE: InvalidationType = InvalidationType::Price;
/// How often the memory sampler reads `/proc/<pid>/status`.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The lower bound on the fan-out request's size.
const FANOUT_MIN_HITS: u64 = 200_000;

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Part {
    /// (a) a request matching the whole catalogue, against raw scans.
    Fanout,
    /// (b) single-content requests through the fast lane, against a raw relay.
    FastLane,
    /// (c) peak RSS of a partition worker at two result sizes.
    Memory,
}

/// What to run and how big.
#[derive(Debug, Clone)]
pub struct Options {
    /// Documents in the generated catalogue (ignored with `search_url`).
    pub docs: u64,
    /// Listings kept per generated document (the nested mapping is unchanged;
    /// fewer listings load faster and no measured query reads them).
    pub listings: usize,
    /// Suppliers of the catalogue: the fan-out request names all of them.
    pub suppliers: u32,
    /// An already loaded cluster to use instead of starting osmem-server.
    pub search_url: Option<String>,
    /// `dispatcher.split_limit` of the measured fleet and of the partition baseline.
    pub split_limit: u64,
    /// Stop the unsplit baseline scan after this many ids (its rate is then
    /// that of the first ids, and labelled so).
    pub unsplit_limit: Option<u64>,
    /// Stop the unsplit baseline scan after this long (same labelling).
    pub unsplit_max: Duration,
    /// Single-content requests per fast-lane measurement.
    pub fast_requests: usize,
    /// The small memory task covers `searchPartition < this` (of 1000).
    pub small_partitions: i64,
    /// The measurements to run.
    pub parts: Vec<Part>,
    /// The config file the workers should load too (`--config`).
    pub config_file: Option<PathBuf>,
    /// Keep the worker logs directory even when the run succeeds.
    pub keep_logs: bool,
}

/// Runs the benchmark against `base` (whose URLs name the services) and
/// prints the report; everything created is removed before returning.
pub async fn run(base: &Config, opts: &Options, command_line: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = BenchEnv::new(base, opts)?;
    let outcome = tokio::select! {
        r = async {
            env.setup(opts).await?;
            measure(&mut env, opts, command_line).await
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaning up")),
    };
    if outcome.is_err() {
        eprintln!("Worker logs kept in {}.", env.logs.display());
    }
    env.cleanup(outcome.is_ok() && !opts.keep_logs).await;
    let report = outcome?;
    println!("{report}");
    eprintln!(
        "Benchmark finished in {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ------------------------------------------------------------ environment

/// The run's private slice of every service.
struct BenchEnv {
    /// The configuration of the bench vhost, database, prefix and search.
    config: Config,
    vhost: String,
    db_name: String,
    admin_db_url: String,
    mgmt: Management,
    created_vhost: bool,
    created_db: bool,
    osmem: Option<Child>,
    /// Worker stderr logs.
    logs: PathBuf,
    config_file: Option<PathBuf>,
}

impl BenchEnv {
    /// Names the run's resources; creates nothing yet.
    fn new(base: &Config, opts: &Options) -> anyhow::Result<Self> {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let vhost = format!("fleet-bench-{tag}");
        let db_name = format!("fleet_bench_{}", tag.replace('-', "_"));
        let logs = std::env::temp_dir().join(format!("fleet-bench-{tag}"));
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("creating the log directory {}", logs.display()))?;
        let mut config = base.clone();
        config.amqp.url = with_path(&base.amqp.url, &vhost).context("AMQP URL")?;
        config.database.url = with_path(&base.database.url, &db_name).context("DATABASE_URL")?;
        config.redis.key_prefix = vhost.clone();
        config.dispatcher.split_limit = opts.split_limit;
        config.worker.metrics_listen = String::new();
        let mgmt = Management::new(&base.amqp.management_url)?;
        Ok(Self {
            config,
            vhost,
            db_name,
            admin_db_url: base.database.url.clone(),
            mgmt,
            created_vhost: false,
            created_db: false,
            osmem: None,
            logs,
            config_file: opts.config_file.clone(),
        })
    }

    async fn setup(&mut self, opts: &Options) -> anyhow::Result<()> {
        self.mgmt
            .create_vhost(&self.vhost)
            .await
            .context("creating the bench vhost (is the management plugin enabled?)")?;
        self.created_vhost = true;
        let admin = admin_pool(&self.admin_db_url).await?;
        sqlx::query(&format!("CREATE DATABASE \"{}\"", self.db_name))
            .execute(&admin)
            .await
            .with_context(|| format!("CREATE DATABASE {}", self.db_name))?;
        admin.close().await;
        self.created_db = true;
        let ctx = self.context("bench").await?;
        let report = app::apply_topology(&ctx)
            .await
            .context("applying the topology")?;
        eprintln!(
            "Bench vhost {} ({} queues), database {}, Redis prefix {}.",
            self.vhost, report.queues, self.db_name, self.config.redis.key_prefix
        );
        match &opts.search_url {
            Some(url) => self.config.search.url = url.clone(),
            None => self.start_osmem(opts).await?,
        }
        Ok(())
    }

    async fn context(&self, worker: &str) -> anyhow::Result<Context> {
        app::context(&Arc::new(self.config.clone()), worker).await
    }

    /// Starts an empty osmem-server on a free port, then loads the generated
    /// catalogue through `_bulk` in chunks, printing progress. (Measured here:
    /// as fast as a `--seed` directory, with a third of the peak memory, which
    /// for 250,000 documents is the difference between ~6 and ~16 GB.)
    async fn start_osmem(&mut self, opts: &Options) -> anyhow::Result<()> {
        let binary = osmem_binary()?;
        let mut cmd = Command::new(&binary);
        cmd.args([
            "--addr",
            "127.0.0.1:0",
            "--no-ja",
            "--parent-pid",
            &std::process::id().to_string(),
            "--no-stdin-watch",
        ])
        // A soft heap limit (osmem-server is a Go program): the collector
        // works harder as the catalogue grows instead of doubling the heap.
        .env("GOMEMLIMIT", format!("{}MiB", 1024 + opts.docs * 24 / 1024))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(self.logs.join("osmem.log")).context("osmem log file")?,
        ))
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child
            .stdout
            .take()
            .context("osmem-server has no stdout pipe")?;
        self.osmem = Some(child);
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("osmem-server did not start within 60 s")?
            .context("reading osmem-server's first line")?
            .context("osmem-server exited at start-up (see osmem.log)")?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("osmem-server's first line is not JSON: {line}"))?;
        let url = v["url"]
            .as_str()
            .with_context(|| format!("osmem-server's first line has no url: {line}"))?
            .to_string();
        self.config.search.url = url.clone();
        let index = self.config.search.index_for(KEY).to_string();
        let spec = bench_spec(opts);
        eprintln!(
            "osmem-server at {url} (pid {pid}); loading {} documents into {index} \
             (about 1,500-2,600 documents/s here)…",
            thousands(opts.docs as f64)
        );
        let t = Instant::now();
        let n = bulk_load(&url, &index, &spec, opts.listings, pid).await?;
        eprintln!(
            "Loaded {} documents in {:.0} s ({} docs/s); osmem-server RSS {}.",
            thousands(n as f64),
            t.elapsed().as_secs_f64(),
            thousands(rate(n, t.elapsed().as_secs_f64())),
            mib(read_status_kib(pid, "VmRSS").unwrap_or(0))
        );
        Ok(())
    }

    /// The variables a `fleet run` subprocess needs to work in this slice.
    fn worker_env(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let mut vars = vec![
            ("AMQP_URL", c.amqp.url.clone()),
            ("RABBITMQ_MANAGEMENT_URL", c.amqp.management_url.clone()),
            ("DATABASE_URL", c.database.url.clone()),
            ("REDIS_URL", c.redis.url.clone()),
            ("SEARCH_URL", c.search.url.clone()),
            ("FLEET_REDIS_KEY_PREFIX", c.redis.key_prefix.clone()),
            // The bench's request ids need not outlive the run by a day.
            ("FLEET_REDIS_IDEMPOTENCY_TTL", "15m".into()),
            (
                "FLEET_DISPATCHER_SPLIT_LIMIT",
                c.dispatcher.split_limit.to_string(),
            ),
            ("FLEET_WORKER_METRICS_LISTEN", String::new()),
            ("FLEET_LOG", "info,lapin=warn,lapin::channel=off".into()),
        ];
        if let Some(f) = &self.config_file {
            vars.push(("FLEET_CONFIG", f.display().to_string()));
        }
        vars
    }

    /// Removes what the run created; reports, never fails.
    async fn cleanup(&mut self, remove_logs: bool) {
        if let Some(mut child) = self.osmem.take() {
            let _ = child.kill().await;
        }
        if self.created_vhost {
            match self.mgmt.delete_vhost(&self.vhost).await {
                Ok(()) => self.created_vhost = false,
                Err(e) => eprintln!("warning: could not delete vhost {}: {e:#}", self.vhost),
            }
        }
        if self.created_db {
            let dropped = async {
                let admin = admin_pool(&self.admin_db_url).await?;
                sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.db_name
                ))
                .execute(&admin)
                .await?;
                admin.close().await;
                anyhow::Ok(())
            }
            .await;
            match dropped {
                Ok(()) => self.created_db = false,
                Err(e) => eprintln!("warning: could not drop database {}: {e:#}", self.db_name),
            }
        }
        if remove_logs {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
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

/// `url` with its path replaced by `/<name>` (a vhost or a database).
fn with_path(url: &str, name: &str) -> anyhow::Result<String> {
    let mut u = reqwest::Url::parse(url).with_context(|| format!("bad URL {url:?}"))?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}

/// The catalogue of the run: the default skew, `docs` documents.
fn bench_spec(opts: &Options) -> Spec {
    Spec {
        docs: opts.docs,
        suppliers: opts.suppliers,
        ..Spec::default()
    }
}

/// Creates `index` with the catalogue's mapping and loads the documents of
/// `spec` (at most `listings` listings each) through `_bulk`, 5,000 at a time.
async fn bulk_load(
    url: &str,
    index: &str,
    spec: &Spec,
    listings: usize,
    server_pid: u32,
) -> anyhow::Result<u64> {
    const CHUNK: u64 = 5000;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()?;
    let base = url.trim_end_matches('/');
    let res = http
        .put(format!("{base}/{index}"))
        .json(&catalogue::index_body())
        .send()
        .await
        .with_context(|| format!("creating index {index}"))?;
    if !res.status().is_success() {
        bail!(
            "creating index {index}: {}",
            res.text().await.unwrap_or_default()
        );
    }
    let t = Instant::now();
    let mut last_note = Instant::now();
    let mut body = String::new();
    let mut n = 0u64;
    let mut in_chunk = 0u64;
    let mut docs = catalogue::documents(spec).peekable();
    while let Some(mut doc) = docs.next() {
        doc.listings.truncate(listings);
        let _ = writeln!(body, "{{\"index\":{{\"_id\":\"{}\"}}}}", doc.id);
        body.push_str(&serde_json::to_string(&doc)?);
        body.push('\n');
        n += 1;
        in_chunk += 1;
        if in_chunk == CHUNK || docs.peek().is_none() {
            in_chunk = 0;
            let res = http
                .post(format!("{base}/{index}/_bulk?refresh=false"))
                .header("content-type", "application/x-ndjson")
                .body(std::mem::take(&mut body))
                .send()
                .await
                .with_context(|| format!("bulk loading into {index}"))?;
            let v: Value = res.json().await.context("reading a _bulk response")?;
            if v["errors"] == serde_json::json!(true) {
                let text: String = v.to_string().chars().take(500).collect();
                bail!("bulk load into {index} had errors: {text}");
            }
            if last_note.elapsed() > Duration::from_secs(10) {
                last_note = Instant::now();
                eprintln!(
                    "  {} of {} documents, {:.0} s, osmem-server RSS {}",
                    thousands(n as f64),
                    thousands(spec.docs as f64),
                    t.elapsed().as_secs_f64(),
                    mib(read_status_kib(server_pid, "VmRSS").unwrap_or(0))
                );
            }
        }
    }
    http.post(format!("{base}/{index}/_refresh"))
        .send()
        .await
        .context("refreshing the index")?;
    Ok(n)
}

/// `OSMEM_SERVER_BIN`, else the binary bundled in the `osmem-server` wheel.
fn osmem_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("OSMEM_SERVER_BIN") {
        return Ok(p.into());
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import osmem_server; print(osmem_server.resolve_binary())",
        ])
        .output()
        .context("running python3 to find osmem-server")?;
    if !out.status.success() {
        bail!(
            "osmem-server is not installed: `pip install osmem-server`, set OSMEM_SERVER_BIN, \
             or pass --search-url of a loaded cluster"
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

// ---------------------------------------------------------------- workers

/// A `fleet run …` subprocess of this binary.
struct Worker {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Worker {
    async fn spawn(env: &BenchEnv, kinds: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the fleet binary")?;
        let log = env.logs.join(format!("{}.log", kinds.join("-")));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("run").args(kinds);
        for (k, v) in env.worker_env() {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting a fleet worker subprocess")?;
        let pid = child.id().context("the worker exited at once")?;
        Ok(Self { child, pid, log })
    }

    /// Fails when the worker already exited (its log says why).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the worker subprocess exited ({status}); see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// Stops the worker with SIGTERM (graceful), SIGKILL after 20 s.
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Waits until `queue` has at least one consumer.
async fn wait_for_consumer(
    ch: &Channel,
    queue: &str,
    worker: &mut Worker,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        worker.check_alive()?;
        let q = fleet_shared::broker::inspect_queue(ch, queue)
            .await
            .with_context(|| format!("checking queue {queue}"))?;
        if q.consumer_count() > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no consumer on {queue} after {wait:?}; see {}",
                worker.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --------------------------------------------------------------- counting

/// What a counting consumer saw.
#[derive(Debug, Clone)]
struct Counted {
    distinct: u64,
    messages: u64,
    ids: u64,
    /// When the last new id arrived.
    last_new: Instant,
}

/// How to read the content ids of a message.
type Decode = fn(&[u8]) -> anyhow::Result<Vec<i64>>;

fn outbound_ids(body: &[u8]) -> anyhow::Result<Vec<i64>> {
    Ok(OutboundBatch::decode(body)?.content_ids)
}

fn request_ids(body: &[u8]) -> anyhow::Result<Vec<i64>> {
    Ok(InvalidationRequest::decode(body)?.parameter_ids)
}

/// Starts consuming `queue` (acking everything) until `expected` distinct ids
/// arrived or nothing new came for `idle`; resolves to what it saw.
async fn start_counter(
    conn: &Connection,
    queue: &str,
    expected: u64,
    idle: Duration,
    decode: Decode,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Counted>>> {
    let ch = conn.create_channel().await?;
    // Leftovers of an earlier measurement must not count in this one.
    ch.queue_purge(queue.into(), Default::default())
        .await
        .with_context(|| format!("purging {queue}"))?;
    ch.basic_qos(2000, BasicQosOptions::default()).await?;
    let tag = format!("fleet-bench-counter-{}", Uuid::new_v4().simple());
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {queue}"))?;
    let queue = queue.to_string();
    Ok(tokio::spawn(async move {
        let mut seen: HashSet<i64> = HashSet::with_capacity(expected as usize);
        let mut c = Counted {
            distinct: 0,
            messages: 0,
            ids: 0,
            last_new: Instant::now(),
        };
        while c.distinct < expected {
            let next = tokio::time::timeout(idle, consumer.next()).await;
            let delivery = match next {
                Ok(Some(d)) => d.with_context(|| format!("consuming {queue}"))?,
                Ok(None) => bail!("the consumer of {queue} was cancelled"),
                Err(_) => bail!(
                    "nothing new on {queue} for {idle:?}: {} of {expected} ids arrived",
                    c.distinct
                ),
            };
            let ids =
                decode(&delivery.data).with_context(|| format!("decoding a message of {queue}"))?;
            c.messages += 1;
            c.ids += ids.len() as u64;
            let before = seen.len();
            seen.extend(ids);
            if seen.len() > before {
                c.distinct = seen.len() as u64;
                c.last_new = Instant::now();
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
        let _ = ch.close(200, "counted".into()).await;
        Ok(c)
    }))
}

async fn join_counter(
    h: tokio::task::JoinHandle<anyhow::Result<Counted>>,
) -> anyhow::Result<Counted> {
    h.await.context("the counting task panicked")?
}

// ---------------------------------------------------------------- results

/// The measurements of one run, for the table.
#[derive(Debug, Default)]
struct Results {
    fanout: Option<Fanout>,
    fast: Option<FastLane>,
    memory: Option<Memory>,
}

#[derive(Debug)]
struct Fanout {
    hits: u64,
    /// Partition tasks of the fleet's job (0: under the split limit, not split).
    tasks: usize,
    /// Partition queries of the baseline.
    groups: usize,
    fleet_secs: f64,
    fleet_messages: u64,
    fleet_delivered: u64,
    partition_scan_secs: f64,
    partition_scan_ids: u64,
    histogram_secs: f64,
    unsplit_secs: f64,
    unsplit_ids: u64,
    unsplit_capped: bool,
    /// VmHWM of the dispatcher + partition subprocess after the fan-out.
    worker_hwm_kib: u64,
}

#[derive(Debug)]
struct FastLane {
    requests: u64,
    fleet_secs: f64,
    fleet_messages: u64,
    relay_secs: f64,
    prefetch: u16,
}

#[derive(Debug)]
struct Memory {
    idle_kib: u64,
    small_ids: u64,
    small_secs: f64,
    small_peak_kib: u64,
    small_hwm_kib: u64,
    large_ids: u64,
    large_secs: f64,
    large_peak_kib: u64,
    large_hwm_kib: u64,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// `12345` → `12,345`.
fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

// ------------------------------------------------------------ measurement

async fn measure(env: &mut BenchEnv, opts: &Options, command_line: &str) -> anyhow::Result<String> {
    let search = Search::new(&env.config.search)?;
    search
        .ping()
        .await
        .with_context(|| format!("search cluster at {}", env.config.search.url))?;
    let ctx = env.context("bench").await?;
    let identity = Identity::new("bench");
    let conn = broker::connect(&env.config.amqp, &identity, "bench").await?;
    let control = conn.create_channel().await?;
    let machine = machine_description();
    eprintln!("{machine}");
    let mut results = Results::default();

    let wants = |p: Part| opts.parts.contains(&p);
    if wants(Part::Fanout) || wants(Part::FastLane) {
        let mut worker = Worker::spawn(env, &["dispatcher", "partition"]).await?;
        let ready = async {
            for q in [names::BULK_LANE, names::FAST_LANE, names::PARTITIONS] {
                wait_for_consumer(&control, q, &mut worker, Duration::from_secs(60)).await?;
            }
            anyhow::Ok(())
        }
        .await;
        let measured = match ready {
            Ok(()) => {
                eprintln!(
                    "Worker subprocess `fleet run dispatcher partition` (pid {}) is consuming.",
                    worker.pid
                );
                let mut r = anyhow::Ok(());
                if wants(Part::Fanout) {
                    r = fanout(env, opts, &search, &ctx, &conn, &mut worker)
                        .await
                        .map(|f| results.fanout = Some(f));
                }
                if r.is_ok() && wants(Part::FastLane) {
                    r = fast_lane(env, opts, &conn, &mut worker)
                        .await
                        .map(|f| results.fast = Some(f));
                }
                r
            }
            Err(e) => Err(e),
        };
        worker.stop().await;
        measured?;
    }
    if wants(Part::Memory) {
        results.memory = Some(memory(env, opts, &search, &ctx, &conn, &control).await?);
    }
    let _ = conn.close(200, "bench done".into()).await;
    Ok(report(&results, opts, &machine, command_line))
}

/// The fan-out request's query: every supplier.
fn fanout_query(opts: &Options) -> (Vec<i64>, Value) {
    let ids: Vec<i64> = (1..=i64::from(opts.suppliers)).collect();
    let q = terms_query("supplier.id", &ids, None);
    (ids, q)
}

async fn fanout(
    env: &BenchEnv,
    opts: &Options,
    search: &Search,
    ctx: &Context,
    conn: &Connection,
    worker: &mut Worker,
) -> anyhow::Result<Fanout> {
    let index = env.config.search.index_for(KEY).to_string();
    let (supplier_ids, query) = fanout_query(opts);
    let hits = search.count(&index, &query).await?;
    eprintln!(
        "\n(a) fan-out: SUPPLIER request naming {} suppliers matches {} documents in {index}.",
        supplier_ids.len(),
        thousands(hits as f64)
    );
    if hits < FANOUT_MIN_HITS {
        eprintln!(
            "  note: fewer than {} documents (a quick run); the issue's target needs --docs 250000.",
            thousands(FANOUT_MIN_HITS as f64)
        );
    }

    // Baseline 1: the partition queries the dispatcher would make, scanned
    // one after the other by a single client.
    let t = Instant::now();
    let buckets = search.partition_histogram(&index, &query).await?;
    let histogram_secs = t.elapsed().as_secs_f64();
    let groups = group_partitions(&buckets, opts.split_limit);
    eprintln!(
        "  baseline: raw scans of {} partition queries (split limit {}), sequential…",
        groups.len(),
        opts.split_limit
    );
    let mut partition_scan_secs = 0.0;
    let mut partition_scan_ids = 0u64;
    for g in &groups {
        let q = with_partition_range(&query, g.from, g.to);
        let t = Instant::now();
        let mut pages = std::pin::pin!(search.scan(&index, q));
        while let Some(page) = pages.next().await {
            partition_scan_ids += page?.len() as u64;
        }
        partition_scan_secs += t.elapsed().as_secs_f64();
    }
    eprintln!(
        "  baseline: {} ids in {:.2} s summed ({} ids/s).",
        thousands(partition_scan_ids as f64),
        partition_scan_secs,
        thousands(rate(partition_scan_ids, partition_scan_secs))
    );

    // Baseline 2: the same query unsplit, one `search_after` stream.
    let cap = opts.unsplit_limit.unwrap_or(u64::MAX);
    eprintln!(
        "  baseline: raw unsplit search_after scan{}…",
        if cap < hits {
            format!(" (first {} ids)", thousands(cap as f64))
        } else {
            String::new()
        }
    );
    let t = Instant::now();
    let mut unsplit_ids = 0u64;
    let mut unsplit_capped = false;
    {
        let mut pages = std::pin::pin!(search.scan(&index, query.clone()));
        let mut last_note = Instant::now();
        while let Some(page) = pages.next().await {
            unsplit_ids += page?.len() as u64;
            if (unsplit_ids >= cap || t.elapsed() > opts.unsplit_max) && unsplit_ids < hits {
                unsplit_capped = true;
                break;
            }
            if last_note.elapsed() > Duration::from_secs(15) {
                last_note = Instant::now();
                eprintln!(
                    "    {} ids after {:.0} s",
                    thousands(unsplit_ids as f64),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    let unsplit_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "  baseline: {} ids in {:.2} s ({} ids/s).",
        thousands(unsplit_ids as f64),
        unsplit_secs,
        thousands(rate(unsplit_ids, unsplit_secs))
    );

    // The fleet: one request, split by the dispatcher subprocess.
    worker.check_alive()?;
    let queue = outbound_queue(FANOUT_TYPE, KEY);
    let counter = start_counter(conn, &queue, hits, Duration::from_secs(120), outbound_ids).await?;
    let request_id = format!("bench-fanout-{}", Uuid::new_v4());
    let request = fanout_request(&request_id, supplier_ids);
    eprintln!("  fleet: publishing the request, counting ids on {queue}…");
    let body = request.encode();
    let routing_key = request.routing_key();
    let t = Instant::now();
    ctx.publisher
        .publish(Outgoing::json(names::REQUESTS, &routing_key, &body))
        .await
        .context("publishing the fan-out request")?;
    let counted = join_counter(counter).await?;
    let fleet_secs = counted.last_new.duration_since(t).as_secs_f64();
    let worker_hwm_kib = read_status_kib(worker.pid, "VmHWM").unwrap_or(0);
    let pool = db::connect(&env.config.database.url, 1).await?;
    let tasks = db::job(&pool, crate::job::id_of(&request, KEY))
        .await?
        .map(|j| j.task_count as usize)
        .unwrap_or(0);
    pool.close().await;
    eprintln!(
        "  fleet: {} distinct ids ({} delivered in {} messages, {tasks} partition tasks) in {:.2} s ({} ids/s).",
        thousands(counted.distinct as f64),
        thousands(counted.ids as f64),
        counted.messages,
        fleet_secs,
        thousands(rate(counted.distinct, fleet_secs))
    );
    Ok(Fanout {
        hits: counted.distinct,
        tasks,
        groups: groups.len(),
        fleet_secs,
        fleet_messages: counted.messages,
        fleet_delivered: counted.ids,
        worker_hwm_kib,
        partition_scan_secs,
        partition_scan_ids,
        histogram_secs,
        unsplit_secs,
        unsplit_ids,
        unsplit_capped,
    })
}

/// Publishes `bodies` to `exchange`/`routing_key` as fast as the channel
/// takes them, awaiting the confirms in bulk at the end (pipelined).
async fn publish_pipelined(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    bodies: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let mut confirms = futures::stream::FuturesUnordered::new();
    for body in bodies {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props.clone(),
            )
            .await?;
        confirms.push(confirm);
    }
    while let Some(c) = confirms.next().await {
        match c? {
            Confirmation::Ack(None) => {}
            other => bail!("publish to {exchange}/{routing_key} not confirmed: {other:?}"),
        }
    }
    let _ = ch.close(200, "published".into()).await;
    Ok(())
}

fn single_request(id: i64, run: &str, invalidation_time: i64) -> Vec<u8> {
    InvalidationRequest {
        v: CURRENT_VERSION,
        request_id: Some(format!("bench-fast-{run}-{id}")),
        parameter_ids: vec![id],
        parameter_name: "id".into(),
        is_nested_type: false,
        nested_path_name: None,
        invalidation_type: FAST_TYPE,
        index_keys: vec![KEY],
        invalidation_time: Some(invalidation_time),
    }
    .encode()
}

async fn fast_lane(
    env: &BenchEnv,
    opts: &Options,
    conn: &Connection,
    worker: &mut Worker,
) -> anyhow::Result<FastLane> {
    let n = opts.fast_requests as u64;
    let prefetch = env.config.amqp.prefetch;
    eprintln!(
        "\n(b) fast lane: {} single-content PRICE requests (prefetch {prefetch})…",
        thousands(n as f64)
    );
    let run = Uuid::new_v4().simple().to_string();
    let now = now_millis();

    // The fleet: requests → dispatcher subprocess → outbound queue.
    worker.check_alive()?;
    let queue = outbound_queue(FAST_TYPE, KEY);
    let counter = start_counter(conn, &queue, n, Duration::from_secs(60), outbound_ids).await?;
    let t = Instant::now();
    publish_pipelined(
        conn,
        names::REQUESTS,
        &FAST_TYPE.snake(),
        (1..=n as i64).map(|id| single_request(id, &run, now)),
    )
    .await
    .context("publishing the fast-lane requests")?;
    let publish_secs = t.elapsed().as_secs_f64();
    let counted = join_counter(counter).await?;
    let fleet_secs = counted.last_new.duration_since(t).as_secs_f64();
    let fleet_messages = counted.messages;
    eprintln!(
        "  fleet: {} ids in {} outbound messages, {:.2} s ({} requests/s; publishing took {:.2} s).",
        thousands(counted.distinct as f64),
        counted.messages,
        fleet_secs,
        thousands(rate(counted.distinct, fleet_secs)),
        publish_secs
    );

    // The baseline: a raw relay in → out, confirm then ack, same prefetch.
    let relay_in = "fleet-bench.relay.in";
    let relay_out = "fleet-bench.relay.out";
    let setup = conn.create_channel().await?;
    for q in [relay_in, relay_out] {
        setup
            .queue_declare(
                q.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring {q}"))?;
    }
    let _ = setup.close(200, "declared".into()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(raw_relay(
        env.config.amqp.url.clone(),
        relay_in,
        relay_out,
        prefetch,
        stop.clone(),
    ));
    let counter = start_counter(conn, relay_out, n, Duration::from_secs(60), request_ids).await?;
    let run = Uuid::new_v4().simple().to_string();
    let t = Instant::now();
    let published = publish_pipelined(
        conn,
        "",
        relay_in,
        (1..=n as i64).map(|id| single_request(id, &run, now)),
    )
    .await
    .context("publishing to the relay");
    let counted = match published {
        Ok(()) => join_counter(counter).await,
        Err(e) => Err(e),
    };
    stop.cancel();
    let relayed = relay.await.context("the relay task panicked")?;
    let counted = counted?;
    relayed?;
    let relay_secs = counted.last_new.duration_since(t).as_secs_f64();
    eprintln!(
        "  baseline: raw relay moved {} messages in {:.2} s ({} messages/s).",
        thousands(counted.distinct as f64),
        relay_secs,
        thousands(rate(counted.distinct, relay_secs))
    );
    Ok(FastLane {
        requests: n,
        fleet_secs,
        fleet_messages,
        relay_secs,
        prefetch,
    })
}

/// Consumes `from` with `prefetch` unacked deliveries; each is republished
/// to `to` with a publisher confirm and acked after the confirm.
async fn raw_relay(
    url: String,
    from: &'static str,
    to: &'static str,
    prefetch: u16,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let identity = Identity::new("bench-relay");
    let consumer_conn = broker::connect(&url, &identity, "consumer").await?;
    let publisher_conn = broker::connect(&url, &identity, "publisher").await?;
    let ch = consumer_conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let out = publisher_conn.create_channel().await?;
    out.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            from.into(),
            "fleet-bench-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            d = consumer.next() => match d {
                Some(d) => d?,
                None => break,
            },
        };
        let out = out.clone();
        tasks.spawn(async move {
            let confirm = out
                .basic_publish(
                    "".into(),
                    to.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    delivery.properties.clone(),
                )
                .await?
                .await?;
            if !matches!(confirm, Confirmation::Ack(None)) {
                bail!("relay publish not confirmed: {confirm:?}");
            }
            delivery.ack(BasicAckOptions::default()).await?;
            anyhow::Ok(())
        });
        // Reap finished relays so the set stays at most `prefetch` long.
        while let Some(done) = tasks.try_join_next() {
            done.context("a relay task panicked")??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a relay task panicked")??;
    }
    let _ = consumer_conn.close(200, "relay done".into()).await;
    let _ = publisher_conn.close(200, "relay done".into()).await;
    Ok(())
}

async fn memory(
    env: &BenchEnv,
    opts: &Options,
    search: &Search,
    ctx: &Context,
    conn: &Connection,
    control: &Channel,
) -> anyhow::Result<Memory> {
    let index = env.config.search.index_for(KEY).to_string();
    let (supplier_ids, query) = fanout_query(opts);
    let small_to = opts.small_partitions;
    let small = search
        .count(&index, &with_partition_range(&query, None, Some(small_to)))
        .await?;
    let large = search.count(&index, &query).await?;
    eprintln!(
        "\n(c) memory: one `fleet run partition` subprocess streams a task of {} ids \
         (searchPartition < {small_to}), then one of {} ids (no range).",
        thousands(small as f64),
        thousands(large as f64)
    );
    let mut worker = Worker::spawn(env, &["partition"]).await?;
    let result = async {
        wait_for_consumer(
            control,
            names::PARTITIONS,
            &mut worker,
            Duration::from_secs(60),
        )
        .await?;
        // Let start-up allocations settle before the idle reading.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = read_status_kib(worker.pid, "VmRSS").context("reading the worker's RSS")?;
        eprintln!("  idle worker RSS {}.", mib(idle));
        let pool = db::connect(&env.config.database.url, 1).await?;
        let mut out = Vec::new();
        for (label, to, expected) in [("small", Some(small_to), small), ("large", None, large)] {
            let job = Uuid::new_v4();
            let request_id = format!("bench-memory-{label}-{job}");
            let tasks = db::create_job(
                &pool,
                &NewJob {
                    id: job,
                    request_id: request_id.clone(),
                    invalidation_type: FANOUT_TYPE.to_string(),
                    index_key: KEY.to_string(),
                    parameter_name: "supplier.id".into(),
                    request: serde_json::to_value(fanout_request(
                        &request_id,
                        supplier_ids.clone(),
                    ))?,
                    total_hits: expected as i64,
                },
                &[NewTask {
                    from: None,
                    to,
                    expected_hits: expected as i64,
                }],
                env.config.redis.idempotency_ttl,
            )
            .await
            .context("creating the memory job")?;
            let task_no = tasks.first().map(|t| t.task_no).unwrap_or(0);
            let queue = outbound_queue(FANOUT_TYPE, KEY);
            let counter = start_counter(
                conn,
                &queue,
                expected,
                Duration::from_secs(120),
                outbound_ids,
            )
            .await?;
            let pid = worker.pid;
            let sampling = tokio_util::sync::CancellationToken::new();
            let sampler = tokio::spawn({
                let stop = sampling.clone();
                async move {
                    let mut peak = 0u64;
                    let mut tick = tokio::time::interval(RSS_SAMPLE_EVERY);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tick.tick() => {
                                if let Some(kib) = read_status_kib(pid, "VmRSS") {
                                    peak = peak.max(kib);
                                }
                            }
                        }
                    }
                    peak
                }
            });
            let task = PartitionTask {
                v: CURRENT_VERSION,
                job_id: job,
                task_no,
                request_id,
                invalidation_type: FANOUT_TYPE,
                index_key: KEY,
                parameter_name: "supplier.id".into(),
                parameter_ids: supplier_ids.clone(),
                partition_from: None,
                partition_to: to,
                invalidation_time: now_millis(),
            };
            let t = Instant::now();
            crate::job::publish_task(ctx, &task)
                .await
                .map_err(|e| anyhow::anyhow!("publishing the partition task: {e}"))?;
            let counted = join_counter(counter).await;
            sampling.cancel();
            let peak = sampler.await.context("the RSS sampler panicked")?;
            let counted = counted?;
            let secs = counted.last_new.duration_since(t).as_secs_f64();
            let hwm = read_status_kib(worker.pid, "VmHWM").unwrap_or(0);
            eprintln!(
                "  {label}: {} ids in {:.2} s, peak RSS {} (VmHWM {}).",
                thousands(counted.distinct as f64),
                secs,
                mib(peak),
                mib(hwm)
            );
            out.push((counted.distinct, secs, peak, hwm));
        }
        pool.close().await;
        let (small, large) = (out[0], out[1]);
        anyhow::Ok(Memory {
            idle_kib: idle,
            small_ids: small.0,
            small_secs: small.1,
            small_peak_kib: small.2,
            small_hwm_kib: small.3,
            large_ids: large.0,
            large_secs: large.1,
            large_peak_kib: large.2,
            large_hwm_kib: large.3,
        })
    }
    .await;
    worker.stop().await;
    result
}

// ----------------------------------------------------------------- report

fn machine_description() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = read_meminfo_kib("MemTotal").unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "Machine: {cores} cores ({cpu}), {:.0} GiB RAM, load average {load} at start.",
        mem as f64 / 1024.0 / 1024.0
    )
}

fn read_meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn report(r: &Results, opts: &Options, machine: &str, command_line: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## fleet bench\n");
    let _ = writeln!(s, "Command: `{command_line}`  ");
    let _ = writeln!(s, "{machine}\n");
    let _ = writeln!(s, "| measure | fleet | baseline | ratio |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
    if let Some(f) = &r.fanout {
        let fleet = rate(f.hits, f.fleet_secs);
        let parts = rate(f.partition_scan_ids, f.partition_scan_secs);
        let unsplit = rate(f.unsplit_ids, f.unsplit_secs);
        let _ = writeln!(
            s,
            "| (a) fan-out, ids/s to the outbound queue ({} ids, {}) vs summed raw scans of the partition queries | {} | {} | {:.2}× |",
            thousands(f.hits as f64),
            if f.tasks == 0 {
                "not split: under the split limit".to_string()
            } else {
                format!("{} partition tasks", f.tasks)
            },
            thousands(fleet),
            thousands(parts),
            fleet / parts.max(f64::MIN_POSITIVE)
        );
        let unsplit_label = if f.unsplit_capped {
            format!(
                "raw unsplit `search_after` scan, rate over its first {} ids (stopped early by --unsplit-limit/--unsplit-max-secs)",
                thousands(f.unsplit_ids as f64)
            )
        } else {
            "raw unsplit `search_after` scan".to_string()
        };
        let _ = writeln!(
            s,
            "| (a) fan-out, ids/s vs {unsplit_label} | {} | {} | {:.2}× |",
            thousands(fleet),
            thousands(unsplit),
            fleet / unsplit.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(f) = &r.fast {
        let fleet = rate(f.requests, f.fleet_secs);
        let relay = rate(f.requests, f.relay_secs);
        let _ = writeln!(
            s,
            "| (b) fast lane, single-content requests/s end to end ({} requests) vs raw consume-and-republish relay (confirm, then ack; prefetch {}) | {} | {} | {:.2}× |",
            thousands(f.requests as f64),
            f.prefetch,
            thousands(fleet),
            thousands(relay),
            fleet / relay.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            s,
            "| (c) partition worker peak RSS streaming {} ids vs streaming {} ids | {} | {} | {:.2}× |",
            thousands(m.large_ids as f64),
            thousands(m.small_ids as f64),
            mib(m.large_peak_kib),
            mib(m.small_peak_kib),
            m.large_peak_kib as f64 / (m.small_peak_kib.max(1)) as f64
        );
    }
    let _ = writeln!(s);
    if let Some(f) = &r.fanout {
        let _ = writeln!(
            s,
            "- fan-out: {} distinct ids ({} delivered in {} outbound messages) {:.2} s after the request was published; \
             the raw partition scans took {:.2} s summed ({} queries, histogram {:.2} s not included), \
             the unsplit scan {:.2} s for {} ids; the dispatcher + partition process peaked at {} (VmHWM, \
             all partition tasks at once).",
            thousands(f.hits as f64),
            thousands(f.fleet_delivered as f64),
            f.fleet_messages,
            f.fleet_secs,
            f.partition_scan_secs,
            f.groups,
            f.histogram_secs,
            f.unsplit_secs,
            thousands(f.unsplit_ids as f64),
            mib(f.worker_hwm_kib)
        );
    }
    if let Some(f) = &r.fast {
        let _ = writeln!(
            s,
            "- fast lane: {} requests → {} ids in {} outbound messages in {:.2} s; the relay moved {} messages in {:.2} s.",
            thousands(f.requests as f64),
            thousands(f.requests as f64),
            f.fleet_messages,
            f.fleet_secs,
            thousands(f.requests as f64),
            f.relay_secs
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            s,
            "- memory: idle {}; small task {} ids in {:.2} s, peak {} (VmHWM {}); large task {} ids in {:.2} s, peak {} (VmHWM {}); sampled every {} ms.",
            mib(m.idle_kib),
            thousands(m.small_ids as f64),
            m.small_secs,
            mib(m.small_peak_kib),
            mib(m.small_hwm_kib),
            thousands(m.large_ids as f64),
            m.large_secs,
            mib(m.large_peak_kib),
            mib(m.large_hwm_kib),
            RSS_SAMPLE_EVERY.as_millis()
        );
    }
    let _ = writeln!(
        s,
        "- settings: split limit {}, {} documents{}.",
        opts.split_limit,
        thousands(opts.docs as f64),
        if opts.search_url.is_some() {
            " (external cluster)"
        } else {
            ""
        }
    );
    s
}

/// The fan-out request: every supplier, one index key.
fn fanout_request(request_id: &str, supplier_ids: Vec<i64>) -> InvalidationRequest {
    InvalidationRequest {
        v: CURRENT_VERSION,
        request_id: Some(request_id.to_string()),
        parameter_ids: supplier_ids,
        parameter_name: "supplier.id".into(),
        is_nested_type: false,
        nested_path_name: None,
        invalidation_type: FANOUT_TYPE,
        index_keys: vec![KEY],
        invalidation_time: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-1234.0), "-1,234");
    }

    #[test]
    fn urls_get_the_bench_vhost_and_database() {
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
    fn status_fields_parse() {
        let me = std::process::id();
        assert!(read_status_kib(me, "VmRSS").unwrap_or(0) > 0);
        assert!(read_status_kib(me, "NoSuchField").is_none());
    }
}
