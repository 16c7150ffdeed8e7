//! `fleet-bench`: fan-out, fast-lane and memory measurements of the fleet
//! against baselines taken in the same run (SPEC §10). This file is the
//! command line; [`run`] is the run, one module per measurement.
//!
//! The workers it measures are `fleet run …` subprocesses. By default they
//! are this binary itself, started as `fleet-bench fleet run …`: the first
//! argument `fleet` hands the rest of the command line to the fleet's own
//! (`fleet_workers::cli`), so the workers are the code of this commit
//! without a separate build of the `fleet` binary. `--fleet-bin` measures a
//! given binary instead.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser};
use fleet_workers::cli::Global;

mod counter;
mod fanout;
mod fastlane;
mod latency;
mod memory;
mod metrics;
mod relay;
mod report;
mod run;
mod setup;
mod worker;

use run::{Concurrency, Part};

/// The first argument that makes this binary the `fleet` command line.
pub const FLEET: &str = "fleet";

/// An HTTP client for the bench's calls to this machine (a worker's
/// `/metrics`, the search server): never through a proxy from the
/// environment, each call bounded by `timeout`.
pub fn local_http(timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()?)
}

const ABOUT: &str = "Measure the fleet's fan-out, fast lane, worker memory and fast-lane latency \
under load against baselines run in the same command (SPEC §10).";

const AFTER: &str = "\
Everything runs in a private vhost, database and Redis key prefix that are removed at the end; \
the workers run as `fleet run …` subprocesses (of this binary, or of --fleet-bin). Without \
--search-url an osmem-server is started with a generated catalogue (about 1,000-2,600 \
documents/s to load and several GB of RAM for 250,000 documents).

Examples:
  fleet-bench                                  the full run (250,000 documents)
  fleet-bench --docs 20000 --fast-requests 5000 --memory-large-ids 100000   a quick run
  fleet-bench --parts memory                   only the memory measurement

The last thing printed is a markdown table with the command line, for docs/BENCHMARKS.md.";

#[derive(Debug, Parser)]
#[command(name = "fleet-bench", version, about = ABOUT, after_help = AFTER)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(flatten)]
    bench: BenchArgs,
}

/// What to measure and how big.
#[derive(Debug, Args)]
struct BenchArgs {
    /// Documents in the generated catalogue; the fan-out request matches all of them.
    #[arg(long, default_value_t = 250_000, value_name = "N")]
    docs: u64,
    /// Listings kept per generated document (0-3; the nested mapping stays,
    /// fewer listings load faster and no measured query reads them).
    #[arg(long, default_value_t = 0, value_name = "N")]
    listings: usize,
    /// Suppliers in the catalogue; the fan-out request names every one. Kept
    /// small: osmem-server evaluates a `terms` query in time proportional to
    /// documents × terms (2,000 terms cost ~15 s per page at 250,000 documents).
    #[arg(long, default_value_t = 20, value_name = "N")]
    suppliers: u32,
    /// Split limit of the measured dispatcher and of the partition baseline.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    split_limit: u64,
    /// Stop the unsplit baseline scan after this many ids (its rate is then
    /// the rate of those first ids, and the table says so).
    #[arg(long, value_name = "N")]
    unsplit_limit: Option<u64>,
    /// Stop the unsplit baseline scan after this many seconds (same labelling).
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    unsplit_max_secs: u64,
    /// The fan-out's fleet runs, one per search concurrency setting:
    /// `adaptive` (the configured adaptive limit) or a fixed limit N.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "adaptive,1,2,4,8,16",
        value_name = "LIST"
    )]
    concurrency: Vec<Concurrency>,
    /// Single-content requests pre-filled for the fast lane and for each
    /// baseline (relay, consume-and-ack); also the latency part's
    /// single-id maximum (a tenth of it for the search kind's).
    #[arg(long, default_value_t = 30_000, value_name = "N")]
    fast_requests: usize,
    /// Rounds of the fast lane and each baseline; the best round of each counts.
    #[arg(long, default_value_t = 2, value_name = "N")]
    fast_rounds: usize,
    /// Ids of the memory part's small measurement (one partition task).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    memory_small_ids: u64,
    /// Ids of the memory part's large measurement (tasks over the whole
    /// catalogue, one after another, until this many).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    memory_large_ids: u64,
    /// Documents of the latency part's search index (one listing each).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    latency_docs: u64,
    /// Seconds of offered load per latency row.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    latency_secs: u64,
    /// During the latency part, run the bench's own osmem-server at its
    /// normal priority instead of the lowest (nice 19, its session's
    /// scheduling group too): the search cluster then competes with the
    /// broker and the workers for the same cores.
    #[arg(long)]
    latency_search_same_priority: bool,
    /// Measurements to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fanout,fast-lane,memory,latency"
    )]
    parts: Vec<Part>,
    /// Run the workers from this `fleet` binary (e.g. target/release/fleet)
    /// instead of this binary's built-in copy of the fleet command line.
    #[arg(long, value_name = "FILE")]
    fleet_bin: Option<PathBuf>,
    /// Keep the worker logs (printed path) even when the run succeeds.
    #[arg(long)]
    keep_logs: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == FLEET) {
        // A worker subprocess: `fleet-bench fleet run …` is `fleet run …`.
        let cli = <fleet_workers::cli::Cli as Parser>::parse_from(&args[1..]);
        return fleet_workers::cli::main(cli).await;
    }
    let cli = Cli::parse();
    fleet_shared::telemetry::init_tracing(cli.global.log_format == "json");
    match bench(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn bench(cli: Cli) -> anyhow::Result<()> {
    let args = cli.bench;
    if args.listings > 3 {
        anyhow::bail!("--listings is at most 3 (the catalogue generates 1-3 per document)");
    }
    if args.fast_rounds == 0 || args.fast_requests == 0 {
        anyhow::bail!("--fast-rounds and --fast-requests must be at least 1");
    }
    if args.memory_small_ids == 0 || args.memory_large_ids < args.memory_small_ids {
        anyhow::bail!(
            "--memory-large-ids must be at least --memory-small-ids, which must be at least 1"
        );
    }
    if args.latency_docs == 0 || args.latency_secs == 0 {
        anyhow::bail!("--latency-docs and --latency-secs must be at least 1");
    }
    let opts = run::Options {
        docs: args.docs,
        listings: args.listings,
        suppliers: args.suppliers,
        // The global --search-url here means "use this loaded cluster instead
        // of starting osmem-server".
        search_url: cli.global.search_url.clone(),
        split_limit: args.split_limit,
        unsplit_limit: args.unsplit_limit,
        unsplit_max: std::time::Duration::from_secs(args.unsplit_max_secs),
        concurrency: args.concurrency,
        fast_requests: args.fast_requests,
        fast_rounds: args.fast_rounds,
        memory_small_ids: args.memory_small_ids,
        memory_large_ids: args.memory_large_ids,
        latency_docs: args.latency_docs,
        latency_secs: args.latency_secs,
        latency_nice_search: !args.latency_search_same_priority,
        parts: args.parts,
        fleet_bin: args.fleet_bin,
        keep_logs: args.keep_logs,
    };
    run::run(&cli.global.config()?, &opts, &command_line()).await
}

/// This invocation as a shell command line, for the report.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
