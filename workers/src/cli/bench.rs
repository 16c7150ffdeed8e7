//! `fleet bench`: fan-out, fast-lane and memory measurements against
//! baselines taken in the same run (SPEC §10). The work is in
//! [`crate::bench`]; this file is the command line.

use std::process::ExitCode;

use clap::Args;
use fleet_shared::config::Config;

use crate::bench::{self, Part};

const AFTER: &str = "\
Everything runs in a private vhost, database and Redis key prefix that are removed at the end; \
the workers run as `fleet run …` subprocesses of this binary. Without --search-url an \
osmem-server is started with a generated catalogue (about 1,000-2,600 documents/s to load and \
several GB of RAM for 250,000 documents).

Examples:
  fleet bench                                  the full run (250,000 documents)
  fleet bench --docs 20000 --fast-requests 1000   a quick run
  fleet bench --parts memory                   only the memory measurement

The last thing printed is a markdown table with the command line, for docs/BENCHMARKS.md.";

/// Options of `fleet bench`.
#[derive(Debug, Args)]
#[command(after_help = AFTER)]
pub struct BenchArgs {
    /// Documents in the generated catalogue; the fan-out request matches all of them.
    #[arg(long, default_value_t = 250_000, value_name = "N")]
    pub docs: u64,
    /// Listings kept per generated document (0-3; the nested mapping stays,
    /// fewer listings load faster and no measured query reads them).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub listings: usize,
    /// Suppliers in the catalogue; the fan-out request names every one. Kept
    /// small: osmem-server evaluates a `terms` query in time proportional to
    /// documents × terms (2,000 terms cost ~15 s per page at 250,000 documents).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub suppliers: u32,
    /// Split limit of the measured dispatcher and of the partition baseline.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub split_limit: u64,
    /// Stop the unsplit baseline scan after this many ids (its rate is then
    /// the rate of those first ids, and the table says so).
    #[arg(long, value_name = "N")]
    pub unsplit_limit: Option<u64>,
    /// Stop the unsplit baseline scan after this many seconds (same labelling).
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub unsplit_max_secs: u64,
    /// Single-content requests sent through the fast lane and through the relay.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub fast_requests: usize,
    /// The small memory task covers searchPartition < N (of 1000 values).
    #[arg(long, default_value_t = 80, value_name = "N")]
    pub small_partitions: i64,
    /// Measurements to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fanout,fast-lane,memory"
    )]
    pub parts: Vec<Part>,
    /// Keep the worker logs (printed path) even when the run succeeds.
    #[arg(long)]
    pub keep_logs: bool,
}

/// Runs the benchmark; `search_url` is the global `--search-url`, which here
/// means "use this loaded cluster instead of starting osmem-server".
pub async fn run(
    config: &Config,
    args: BenchArgs,
    search_url: Option<String>,
    config_file: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    if args.listings > 3 {
        anyhow::bail!("--listings is at most 3 (the catalogue generates 1-3 per document)");
    }
    if !(1..=1000).contains(&args.small_partitions) {
        anyhow::bail!("--small-partitions must be within 1..=1000");
    }
    let opts = bench::Options {
        docs: args.docs,
        listings: args.listings,
        suppliers: args.suppliers,
        search_url,
        split_limit: args.split_limit,
        unsplit_limit: args.unsplit_limit,
        unsplit_max: std::time::Duration::from_secs(args.unsplit_max_secs),
        fast_requests: args.fast_requests,
        small_partitions: args.small_partitions,
        parts: args.parts,
        config_file,
        keep_logs: args.keep_logs,
    };
    let command_line = std::env::args()
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
        .join(" ");
    bench::run(config, &opts, &command_line).await?;
    Ok(ExitCode::SUCCESS)
}
