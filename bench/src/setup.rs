//! The run's private slice of every service: a test-kit [`Sandbox`], the
//! search cluster (its own osmem-server loaded with a generated catalogue,
//! or `--search-url`) and a directory for the worker and server logs.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_shared::config::Config;
use fleet_shared::message::IndexKey;
use fleet_shared::runtime::Context;
use fleet_testkit::{Osmem, OsmemOptions, Sandbox};
use fleet_workers::catalogue::{self, Spec};
use serde_json::Value;

use crate::report::{mib, rate, thousands};
use crate::run::{Options, KEY};
use crate::worker::read_status_kib;

/// The log filter of the worker subprocesses.
const WORKER_LOG: &str = "info,lapin=warn,lapin::channel=off";

/// Everything the run created.
pub struct BenchEnv {
    /// The vhost, database and Redis key prefix; its config is the one the
    /// workers run with.
    pub sandbox: Sandbox,
    /// The run's own search server (none with `--search-url`).
    osmem: Option<Osmem>,
    /// Worker and osmem-server stderr logs.
    pub logs: PathBuf,
    /// The `fleet` binary of the workers (`None`: this binary).
    fleet_bin: Option<PathBuf>,
    /// Indices the run created in a cluster it did not start
    /// (`--search-url`): [`cleanup`](Self::cleanup) deletes them.
    created_indices: Vec<String>,
}

impl BenchEnv {
    /// Opens the sandbox (vhost, database) and the log directory.
    pub async fn open(base: &Config, opts: &Options) -> anyhow::Result<Self> {
        let mut config = base.clone();
        config.dispatcher.split_limit = opts.split_limit;
        config.worker.metrics_listen = String::new();
        // The bench's request ids need not outlive the run by a day.
        config.redis.idempotency_ttl = Duration::from_secs(15 * 60);
        let sandbox = Sandbox::open(&config, "fleet-bench").await?;
        let logs = std::env::temp_dir().join(&sandbox.vhost);
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("creating the log directory {}", logs.display()))?;
        Ok(Self {
            sandbox,
            osmem: None,
            logs,
            fleet_bin: opts.fleet_bin.clone(),
            created_indices: Vec::new(),
        })
    }

    /// Applies the topology and brings up the search cluster.
    pub async fn setup(&mut self, opts: &Options) -> anyhow::Result<()> {
        let report = self.sandbox.try_apply_topology().await?;
        eprintln!(
            "Bench vhost {} ({} queues), database {}, Redis prefix {}.",
            self.sandbox.vhost,
            report.queues,
            self.sandbox.db_name,
            self.config().redis.key_prefix
        );
        match &opts.search_url {
            Some(url) => self.sandbox.config.search.url = url.clone(),
            None => self.start_osmem(opts).await?,
        }
        Ok(())
    }

    /// The search server this run started, if any (`--search-url` starts none).
    pub fn osmem(&self) -> Option<&Osmem> {
        self.osmem.as_ref()
    }

    /// The configuration of the run (sandbox URLs, search, bench settings).
    pub fn config(&self) -> &Config {
        &self.sandbox.config
    }

    pub async fn context(&self, worker: &str) -> anyhow::Result<Context> {
        fleet_workers::app::context(&Arc::new(self.config().clone()), worker).await
    }

    /// A `fleet run <kinds>` command working in the sandbox with `config`
    /// (the run's, adjusted for this worker), logging to `<logs>/<label>.log`
    /// (returned).
    pub fn worker_command(
        &self,
        kinds: &[&str],
        label: &str,
        config: &Config,
    ) -> anyhow::Result<(tokio::process::Command, PathBuf)> {
        let mut cmd = match &self.fleet_bin {
            Some(bin) => tokio::process::Command::new(bin),
            None => {
                let exe = std::env::current_exe().context("locating the fleet-bench binary")?;
                let mut cmd = tokio::process::Command::new(exe);
                cmd.arg(crate::FLEET);
                cmd
            }
        };
        // An optional key unset in `config` is left out of its variables,
        // so one inherited from the bench's own environment would win.
        cmd.env_remove("FLEET_SEARCH_CONCURRENCY");
        cmd.arg("run")
            .args(kinds)
            .envs(config.to_env())
            .env("FLEET_LOG", WORKER_LOG);
        Ok((cmd, self.logs.join(format!("{label}.log"))))
    }

    /// Starts an empty osmem-server on a free port, then loads the generated
    /// catalogue through `_bulk` in chunks, printing progress. (Measured here:
    /// as fast as a `--seed` directory, with a third of the peak memory, which
    /// for 250,000 documents is the difference between ~6 and ~16 GB.)
    async fn start_osmem(&mut self, opts: &Options) -> anyhow::Result<()> {
        let server = Osmem::launch(&OsmemOptions {
            log: Some(self.logs.join("osmem.log")),
            memory_limit_mib: Some(1024 + opts.docs * 24 / 1024),
            start_timeout: Duration::from_secs(60),
            // So the latency part can lower its priority as a whole.
            own_session: true,
            ..OsmemOptions::default()
        })
        .await
        .context("no osmem-server (or pass --search-url of a loaded cluster)")?;
        let (url, pid) = (server.url.clone(), server.pid);
        self.osmem = Some(server);
        self.sandbox.config.search.url = url.clone();
        let index = self.config().search.index_for(KEY).to_string();
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

    /// Loads a second, small index for `key` (`docs` documents with one
    /// listing each) and points the run's configuration at it; returns the
    /// first content id and the number of documents.
    pub async fn load_latency_index(
        &mut self,
        key: IndexKey,
        docs: u64,
    ) -> anyhow::Result<(i64, u64)> {
        let index = format!("{}-latency", self.sandbox.db_name).to_lowercase();
        let spec = Spec {
            docs,
            seed: 7,
            ..Spec::default()
        };
        let pid = self.osmem.as_ref().map_or(0, |o| o.pid);
        let url = self.config().search.url.clone();
        let t = Instant::now();
        if self.osmem.is_none() {
            // Noted before the load, so a half-loaded index goes too.
            self.created_indices.push(index.clone());
        }
        let n = bulk_load(&url, &index, &spec, 1, pid).await?;
        eprintln!(
            "  loaded {} documents into {index} in {:.0} s.",
            thousands(n as f64),
            t.elapsed().as_secs_f64()
        );
        self.sandbox
            .config
            .search
            .indices
            .insert(key.to_string(), index);
        Ok((spec.first_id, n))
    }

    /// Removes what the run created; reports, never fails.
    pub async fn cleanup(&mut self, remove_logs: bool) {
        if let Some(server) = self.osmem.take() {
            server.kill().await;
        }
        for index in std::mem::take(&mut self.created_indices) {
            if let Err(e) = delete_index(&self.config().search.url, &index).await {
                eprintln!("warning: the run's index {index} is left in the search cluster: {e:#}");
            }
        }
        for e in self.sandbox.remove().await {
            eprintln!("warning: {e:#}");
        }
        if remove_logs {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

pub fn bench_spec(opts: &Options) -> Spec {
    Spec {
        docs: opts.docs,
        suppliers: opts.suppliers,
        ..Spec::default()
    }
}

/// Deletes `index` (one the run created); an index already gone is fine.
async fn delete_index(url: &str, index: &str) -> anyhow::Result<()> {
    let res = crate::local_http(Duration::from_secs(60))?
        .delete(format!("{}/{index}", url.trim_end_matches('/')))
        .send()
        .await?;
    if !res.status().is_success() && res.status() != reqwest::StatusCode::NOT_FOUND {
        bail!("{}: {}", res.status(), res.text().await.unwrap_or_default());
    }
    Ok(())
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
    let http = crate::local_http(Duration::from_secs(300))?;
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
