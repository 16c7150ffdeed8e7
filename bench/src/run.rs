//! The run: what to measure, the order, and the clean-up whatever happens.
//!
//! - **fan-out** ([`crate::fanout`]): content ids per second delivered to an
//!   outbound queue for one request matching the whole catalogue (split into
//!   partition tasks by a `fleet run dispatcher partition` subprocess), next
//!   to a raw unsplit `search_after` scan of the same query and next to the
//!   summed raw scans of the partition queries the dispatcher would make;
//! - **fast lane** ([`crate::fastlane`]): how fast a dispatcher drains a
//!   pre-filled fast lane of single-content requests, next to a pipelined
//!   relay and the broker's consume-and-ack ceiling ([`crate::relay`]);
//! - **memory** ([`crate::memory`]): peak RSS of a `fleet run partition`
//!   subprocess while it streams 100,000 ids and then 1,000,000;
//! - **latency** ([`crate::latency`]): fast-lane latency at 25/50/80 % of
//!   the measured maximum, alone and beside a saturated bulk lane.
//!
//! The run is isolated from anything else on the services: a test-kit
//! sandbox (its own vhost with the topology applied, its own database, its
//! own Redis key prefix) and, unless `--search-url` names a loaded cluster,
//! its own osmem-server seeded with a generated catalogue ([`crate::setup`]).
//! Everything it created is removed at the end, also after an error or Ctrl-C.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::broker::{self, Identity};
use fleet_shared::config::Config;
use fleet_shared::message::{IndexKey, InvalidationType};
use fleet_shared::search::Search;

use crate::report::{machine_description, report, Results};
use crate::setup::BenchEnv;
use crate::{fanout, fastlane, latency, memory};

/// The index key every measurement uses (its index is `search.indices.trTR`).
pub const KEY: IndexKey = IndexKey::TrTr;
/// The bulk-lane type of the fan-out request.
pub const FANOUT_TYPE: InvalidationType = InvalidationType::Supplier;
/// The fast-lane type of the single-content requests.
pub const FAST_TYPE: InvalidationType = InvalidationType::Price;
/// How often the memory sampler reads `/proc/<pid>/status`.
pub const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The lower bound on the fan-out request's size.
pub const FANOUT_MIN_HITS: u64 = 200_000;

/// The search concurrency of a measured worker: the adaptive limit of the
/// configuration (`search.concurrency_min/initial/max`), or a fixed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    Adaptive,
    Fixed(usize),
}

impl std::str::FromStr for Concurrency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "adaptive" => Ok(Concurrency::Adaptive),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Concurrency::Fixed(n)),
                _ => Err(format!(
                    "`{s}`: expected `adaptive` or a number of at least 1"
                )),
            },
        }
    }
}

impl std::fmt::Display for Concurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Concurrency::Adaptive => f.write_str("adaptive"),
            Concurrency::Fixed(n) => write!(f, "fixed {n}"),
        }
    }
}

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Part {
    /// (a) a request matching the whole catalogue, against raw scans.
    Fanout,
    /// (b) single-content requests through the fast lane, against a raw relay.
    FastLane,
    /// (c) peak RSS of a partition worker at two stream lengths.
    Memory,
    /// (d) fast-lane latency at fixed rates, alone and beside a saturated bulk lane.
    Latency,
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
    /// The fan-out's fleet runs: one per search concurrency setting, each
    /// with its own worker subprocess, over the same index and request.
    pub concurrency: Vec<Concurrency>,
    /// Single-content requests per fast-lane measurement.
    pub fast_requests: usize,
    /// Rounds of the fast lane and of each baseline (the best counts).
    pub fast_rounds: usize,
    /// Ids of the memory part's small and large measurements.
    pub memory_small_ids: u64,
    pub memory_large_ids: u64,
    /// Documents of the latency part's search index.
    pub latency_docs: u64,
    /// Seconds of offered load per latency row.
    pub latency_secs: u64,
    /// Run the run's own osmem-server at the lowest priority during the
    /// latency part (`Osmem::lower_priority`).
    pub latency_nice_search: bool,
    /// The measurements to run.
    pub parts: Vec<Part>,
    /// A `fleet` binary to run the workers with; `None`: this binary's own
    /// copy of the fleet command line (`fleet-bench fleet run …`).
    pub fleet_bin: Option<PathBuf>,
    /// Keep the worker logs directory even when the run succeeds.
    pub keep_logs: bool,
}

/// Runs the benchmark against `base` (whose URLs name the services) and
/// prints the report; everything created is removed before returning.
pub async fn run(base: &Config, opts: &Options, command_line: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env: Option<BenchEnv> = None;
    let outcome = tokio::select! {
        r = async {
            let env = env.insert(BenchEnv::open(base, opts).await?);
            env.setup(opts).await?;
            measure(env, opts, command_line).await
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaning up")),
    };
    if let Some(mut env) = env {
        if outcome.is_err() {
            eprintln!("Worker logs kept in {}.", env.logs.display());
        }
        env.cleanup(outcome.is_ok() && !opts.keep_logs).await;
    }
    let report = outcome?;
    println!("{report}");
    eprintln!(
        "Benchmark finished in {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn measure(env: &mut BenchEnv, opts: &Options, command_line: &str) -> anyhow::Result<String> {
    let search = Search::new(&env.config().search)?;
    search
        .ping()
        .await
        .with_context(|| format!("search cluster at {}", env.config().search.url))?;
    let ctx = env.context("bench").await?;
    let identity = Identity::new("bench");
    let conn = broker::connect(&env.config().amqp.url, &identity, "bench").await?;
    let control = conn.create_channel().await?;
    let machine = machine_description();
    eprintln!("{machine}");
    let mut results = Results::default();

    let wants = |p: Part| opts.parts.contains(&p);
    if wants(Part::Fanout) {
        results.fanout = Some(fanout::fanout(env, opts, &search, &ctx, &conn, &control).await?);
    }
    if wants(Part::FastLane) {
        results.fast = Some(fastlane::fast_lane(env, opts, &conn, &control).await?);
    }
    if wants(Part::Memory) {
        results.memory = Some(memory::memory(env, opts, &search, &ctx, &conn, &control).await?);
    }
    if wants(Part::Latency) {
        results.latency = Some(latency::latency(env, opts, &ctx, &conn, &control).await?);
    }
    let _ = conn.close(200, "bench done".into()).await;
    Ok(report(&results, opts, &machine, command_line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_settings_parse() {
        let parsed: Vec<Concurrency> = "adaptive,1,16"
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            parsed,
            [
                Concurrency::Adaptive,
                Concurrency::Fixed(1),
                Concurrency::Fixed(16)
            ]
        );
        assert!("0".parse::<Concurrency>().is_err());
        assert!("fast".parse::<Concurrency>().is_err());
        assert_eq!(Concurrency::Fixed(4).to_string(), "fixed 4");
    }
}
