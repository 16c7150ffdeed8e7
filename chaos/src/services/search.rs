//! The search side: an osmem-server of the suite's own loaded with lean
//! catalogue documents, and a TCP proxy in front of it that the fleet talks
//! to. Taking the proxy away (its listener closed, every open connection
//! reset) is the search cluster going away for the fleet, while the
//! in-memory index survives: an osmem-server restarted for real would need
//! minutes to load 100,000 documents again (measured here: ~750-3,000
//! documents/s), and a partly loaded index would answer with partial
//! results the fleet could not tell from complete ones.
//!
//! The overload fault talks to osmem-server directly (heavy concurrent
//! queries), so it competes with the fleet for the same server.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_testkit::{Osmem, OsmemOptions};
use fleet_workers::catalogue::{self, Spec};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::free_port;

/// The one index every index key maps to (the suite loads the catalogue once).
pub const INDEX: &str = "content";

/// What to load.
#[derive(Debug, Clone)]
pub struct SearchSpec {
    pub catalogue: Spec,
}

/// osmem-server and the proxy the fleet reaches it through.
pub struct SearchServer {
    osmem: Option<Osmem>,
    /// osmem-server itself (the overload fault's target).
    pub direct_url: String,
    /// The proxy: the fleet's `SEARCH_URL`.
    pub url: String,
    proxy: Proxy,
}

impl SearchServer {
    /// Starts osmem-server, loads the catalogue through `_bulk` and opens the proxy.
    pub async fn start(spec: &SearchSpec, logs: &Path) -> anyhow::Result<Self> {
        let docs = spec.catalogue.docs;
        let osmem = Osmem::launch(&OsmemOptions {
            log: Some(logs.join("osmem.log")),
            // A soft limit: the collector works harder instead of doubling the heap.
            memory_limit_mib: Some(1024 + docs * 24 / 1024),
            start_timeout: Duration::from_secs(60),
            ..OsmemOptions::default()
        })
        .await
        .context("starting osmem-server")?;
        let direct_url = osmem.url.clone();
        let t = Instant::now();
        eprintln!(
            "osmem-server at {direct_url} (pid {}); loading {docs} documents…",
            osmem.pid
        );
        let n = bulk_load(&direct_url, &spec.catalogue).await?;
        eprintln!(
            "Loaded {n} documents in {:.0} s.",
            t.elapsed().as_secs_f64()
        );
        let target: SocketAddr = reqwest::Url::parse(&direct_url)?
            .socket_addrs(|| None)?
            .into_iter()
            .next()
            .context("osmem-server's address")?;
        let mut proxy = Proxy {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            target,
            task: None,
        };
        proxy.up().await?;
        Ok(SearchServer {
            url: format!("http://{}", proxy.listen),
            osmem: Some(osmem),
            direct_url,
            proxy,
        })
    }

    /// The search cluster goes away: new connections are refused, open ones reset.
    pub fn take_away(&mut self) {
        self.proxy.down();
    }

    /// The search cluster is back.
    pub async fn bring_back(&mut self) -> anyhow::Result<()> {
        self.proxy.up().await
    }

    /// Stops the proxy and osmem-server.
    pub async fn remove(&mut self) {
        self.proxy.down();
        if let Some(o) = self.osmem.take() {
            o.kill().await;
        }
    }
}

/// A TCP proxy that can be taken down and brought back on the same port.
struct Proxy {
    listen: SocketAddr,
    target: SocketAddr,
    /// The accept loop; it owns every connection task, so aborting it
    /// closes them all.
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn up(&mut self) -> anyhow::Result<()> {
        if self.task.is_some() {
            return Ok(());
        }
        let mut last = None;
        for _ in 0..40 {
            match TcpListener::bind(self.listen).await {
                Ok(l) => {
                    self.task = Some(tokio::spawn(serve(l, self.target)));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "the search proxy could not listen on {} again: {last:?}",
            self.listen
        )
    }

    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn serve(listener: TcpListener, target: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                conns.spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                    let _ = upstream.set_nodelay(true);
                    let mut client = client;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The index with only the fields the fleet's queries read.
fn lean_index_body() -> Value {
    json!({
        "settings": { "number_of_shards": 1, "number_of_replicas": 0 },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "id": { "type": "long" },
                "searchPartition": { "type": "integer" },
                "brand": { "properties": { "id": { "type": "long" } } },
                "category": { "properties": { "id": { "type": "long" } } },
                "supplier": { "properties": { "id": { "type": "long" } } }
            }
        }
    })
}

/// Loads the documents of `spec` (lean: no tags, no listings) into [`INDEX`],
/// 5,000 a request, then refreshes.
async fn bulk_load(url: &str, spec: &Spec) -> anyhow::Result<u64> {
    const CHUNK: u64 = 5000;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()?;
    let base = url.trim_end_matches('/');
    let res = http
        .put(format!("{base}/{INDEX}"))
        .json(&lean_index_body())
        .send()
        .await
        .context("creating the index")?;
    if !res.status().is_success() {
        bail!(
            "creating index {INDEX}: {}",
            res.text().await.unwrap_or_default()
        );
    }
    let mut body = String::new();
    let mut n = 0u64;
    let mut in_chunk = 0u64;
    let mut last_note = Instant::now();
    let mut docs = catalogue::documents(spec).peekable();
    while let Some(doc) = docs.next() {
        let _ = writeln!(body, "{{\"index\":{{\"_id\":\"{}\"}}}}", doc.id);
        let lean = json!({
            "id": doc.id,
            "searchPartition": doc.search_partition,
            "brand": { "id": doc.brand.id },
            "category": { "id": doc.category.id },
            "supplier": { "id": doc.supplier.id },
        });
        body.push_str(&lean.to_string());
        body.push('\n');
        n += 1;
        in_chunk += 1;
        if in_chunk == CHUNK || docs.peek().is_none() {
            in_chunk = 0;
            let v: Value = http
                .post(format!("{base}/{INDEX}/_bulk?refresh=false"))
                .header("content-type", "application/x-ndjson")
                .body(std::mem::take(&mut body))
                .send()
                .await
                .context("bulk loading")?
                .json()
                .await
                .context("reading a _bulk answer")?;
            if v["errors"] == json!(true) {
                let text: String = v.to_string().chars().take(500).collect();
                bail!("bulk load had errors: {text}");
            }
            if last_note.elapsed() > Duration::from_secs(15) {
                last_note = Instant::now();
                eprintln!("  {n} of {} documents", spec.docs);
            }
        }
    }
    http.post(format!("{base}/{INDEX}/_refresh"))
        .send()
        .await
        .context("refreshing the index")?;
    Ok(n)
}

/// What an overload burst did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Burst {
    pub sent: u64,
    pub answered: u64,
}

/// Heavy queries from `concurrency` clients at once against `url` until
/// `for_` passed: whole-index sorted pages and `searchPartition` histograms,
/// the two most expensive things the fleet itself asks.
pub async fn overload(url: &str, concurrency: usize, for_: Duration) -> Burst {
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + for_;
    let http = match reqwest::Client::builder()
        .no_proxy()
        .timeout(for_ + Duration::from_secs(5))
        .build()
    {
        Ok(h) => h,
        Err(_) => return Burst::default(),
    };
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let (http, sent, answered) = (http.clone(), sent.clone(), answered.clone());
        let url = format!("{}/{INDEX}/_search", url.trim_end_matches('/'));
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let body = if i % 2 == 0 {
                    json!({"size": 10000, "query": {"match_all": {}}, "sort": [{"id": "asc"}]})
                } else {
                    json!({"size": 0, "aggs": {"p": {"terms": {"field": "searchPartition", "size": 1000}}}})
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if let Ok(r) = http.post(&url).json(&body).send().await {
                    if r.bytes().await.is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    // The burst ends on time: queries still running then are abandoned.
    let _ = tokio::time::timeout_at(deadline.into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Burst {
        sent: sent.load(Ordering::Relaxed),
        answered: answered.load(Ordering::Relaxed),
    }
}
