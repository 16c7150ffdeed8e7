//! `fleet-chaos`: the fault suite's command line. The run is
//! [`fleet_chaos::run`]; this file parses arguments and prints the report.
//!
//! Its worker subprocesses are, by default, this binary itself started as
//! `fleet-chaos fleet run …`: the first argument `fleet` hands the rest of
//! the command line to the fleet's own (`fleet_workers::cli`), so the
//! workers are the code of this build. `--fleet-bin` runs another binary.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleet_chaos::{Options, FLEET};

const AFTER: &str = "\
Needs root (it starts a RabbitMQ node as the rabbitmq user and a PostgreSQL cluster with \
pg_createcluster) and the services' packages (scripts/services.sh installs them); it never \
touches the machine's running RabbitMQ, PostgreSQL or Redis. Everything it starts is \
stopped and removed at the end, also on Ctrl-C. Exit status 1 when anything was lost, \
invented or left stuck; 2 when the suite itself could not run.

Examples:
  fleet-chaos            the full run: 100,000 documents, ~40 faults (about 15 minutes here)
  fleet-chaos --ci       the CI variant: 20,000 documents, each fault once (a few minutes)";

#[derive(Debug, Parser)]
#[command(name = "fleet-chaos", version, about = "The fleet's fault suite: kill, restart and overload everything under a mixed load, then count what was lost.", after_help = AFTER)]
struct Cli {
    /// The CI variant: 20,000 documents, each fault once.
    #[arg(long)]
    ci: bool,
    /// Documents in the catalogue (overrides the variant's).
    #[arg(long, value_name = "N")]
    docs: Option<u64>,
    /// Run the workers from this `fleet` binary (e.g. target/release/fleet)
    /// instead of this binary's built-in copy of the fleet command line.
    #[arg(long, value_name = "FILE")]
    fleet_bin: Option<PathBuf>,
    /// Keep the work directory (logs of every worker and server) even when the run passes.
    #[arg(long)]
    keep_logs: bool,
    /// Seed of the load plan.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let is_worker = args.get(1).is_some_and(|a| a == FLEET);
    if !is_worker && std::env::var_os("FLEET_LOG").is_none() {
        // The suite's own connections see every broker restart; lapin logs
        // each lost one as an error, which here is the plan, not news.
        // (Set before the runtime starts: no other thread reads the environment yet.)
        std::env::set_var("FLEET_LOG", "warn,lapin=off");
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    runtime.block_on(async {
        if is_worker {
            // A worker subprocess: `fleet-chaos fleet run …` is `fleet run …`.
            let cli = <fleet_workers::cli::Cli as Parser>::parse_from(&args[1..]);
            return fleet_workers::cli::main(cli).await;
        }
        suite(Cli::parse()).await
    })
}

async fn suite(cli: Cli) -> ExitCode {
    fleet_shared::telemetry::init_tracing(false);
    let mut opts = if cli.ci {
        Options::ci()
    } else {
        Options::full()
    };
    if let Some(docs) = cli.docs {
        opts.load.catalogue.docs = docs;
    }
    if let Some(seed) = cli.seed {
        opts.seed = seed;
    }
    opts.fleet_bin = cli.fleet_bin;
    opts.keep_logs = cli.keep_logs;
    let command: Vec<String> = std::env::args().collect();
    match fleet_chaos::run(&opts).await {
        Ok(report) => {
            println!("{report}");
            println!("Command: {}", command.join(" "));
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
