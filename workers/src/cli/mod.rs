//! The command line: one file per command group.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fleet_shared::config::Config;
use tokio_util::sync::CancellationToken;

use crate::app::{self, WorkerKind};

pub mod catalogue;
pub mod dlq;
pub mod jobs;
pub mod publish;
pub mod requests;
pub mod status;
pub mod topology;

/// Says on stderr which service a command talks to and where that address
/// came from, so nobody acts on an answer from a service they did not mean.
pub fn using(config: &Config, service: &str, key: &str, url: &str) {
    eprintln!(
        "{service}: {} ({})",
        fleet_shared::broker::redact(url),
        config.origin(key)
    );
}

const ABOUT: &str =
    "The content-invalidation worker fleet: turns invalidation requests into batches of \
content ids on per-type, per-locale queues, splits huge queries by searchPartition, retries \
failures through a delay queue, and lets operators replay what did not go through.";

const AFTER: &str = "\
Connections come from AMQP_URL (its vhost is the one used), RABBITMQ_MANAGEMENT_URL, DATABASE_URL, \
REDIS_URL and SEARCH_URL, or the flags above, or a --config file. Every other key can be set with \
FLEET_<SECTION>_<KEY>, e.g. FLEET_RETRY_DELAY=2s; `fleet config` prints them all.

Examples:
  fleet run --all                       every worker in one process (development)
  fleet run dispatcher partition        some workers
  fleet topology plan                   what `apply` would change on the broker
  fleet schema request                  JSON Schema for producers";

#[derive(Debug, Parser)]
#[command(name = "fleet", version, about = ABOUT, after_help = AFTER, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// TOML configuration file (see config/example.toml).
    #[arg(long, global = true, env = "FLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// RabbitMQ URL, or the node URLs of a cluster comma-separated; overrides AMQP_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub amqp_url: Option<String>,
    /// RabbitMQ management API URL, overrides RABBITMQ_MANAGEMENT_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub management_url: Option<String>,
    /// PostgreSQL URL, overrides DATABASE_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Redis URL, overrides REDIS_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Search cluster URL, overrides SEARCH_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub search_url: Option<String>,
    /// Log as JSON lines (for log shippers) instead of text.
    #[arg(long, global = true, env = "FLEET_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
}

impl Global {
    /// Loads the configuration, with flags over variables over the file.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        if let Some(v) = &self.amqp_url {
            // A management URL derived from the old nodes follows the new ones.
            c.amqp.set_url(v);
            c.set_origin("amqp.url", "--amqp-url");
        }
        if let Some(v) = &self.management_url {
            c.amqp.management_url = v.clone();
            c.set_origin("amqp.management_url", "--management-url");
        }
        if let Some(v) = &self.database_url {
            c.database.url = v.clone();
            c.set_origin("database.url", "--database-url");
        }
        if let Some(v) = &self.redis_url {
            c.redis.url = v.clone();
            c.set_origin("redis.url", "--redis-url");
        }
        if let Some(v) = &self.search_url {
            c.search.url = v.clone();
            c.set_origin("search.url", "--search-url");
        }
        Ok(c)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run workers until Ctrl-C or SIGTERM.
    Run(RunArgs),
    /// Plan, apply or export the broker topology (topology/fleet.toml).
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
    /// Dead-letter, parked and unroutable messages: list, peek, replay or purge them.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Print the JSON Schema of a message kind, for producers.
    Schema {
        /// request, outbound, partition-task, job-completed, request-event or source-event.
        #[arg(default_value = "request")]
        kind: String,
    },
    /// Print the effective configuration (every key, after files and variables).
    Config,
    /// Generate a content catalogue for development and benchmarks.
    #[command(subcommand)]
    Catalogue(catalogue::CatalogueCommand),
    /// Partition progress of large requests: list, show or resume a job.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Send an invalidation request or a source event (with a publisher confirm).
    Publish(publish::PublishArgs),
    /// What became of a request: done mark, jobs, dead-letter or parking queue, events.
    #[command(subcommand)]
    Requests(requests::RequestsCommand),
    /// Queues (depth, consumers, rates) and connected workers, from the management API.
    Status(status::StatusArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Workers to run in this process.
    #[arg(value_enum, required_unless_present = "all")]
    pub workers: Vec<WorkerKind>,
    /// Run every worker in one process (development).
    #[arg(long, conflicts_with = "workers")]
    pub all: bool,
}

/// Runs a parsed command line; errors are printed, not panicked.
pub async fn main(cli: Cli) -> ExitCode {
    fleet_shared::telemetry::init_tracing(cli.global.log_format == "json");
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Run(args) => {
            let config = g.config()?;
            let kinds: Vec<WorkerKind> = if args.all {
                WorkerKind::ALL.to_vec()
            } else {
                dedup(args.workers)
            };
            let shutdown = CancellationToken::new();
            app::cancel_on_signals(shutdown.clone());
            app::run(config, &kinds, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Topology(cmd) => topology::run(&g.config()?, cmd).await,
        Command::Dlq(cmd) => dlq::run(&g.config()?, cmd).await,
        Command::Jobs(cmd) => jobs::run(&g.config()?, cmd).await,
        Command::Publish(args) => publish::run(&g.config()?, args).await,
        Command::Requests(cmd) => requests::run(&g.config()?, cmd).await,
        Command::Status(args) => status::run(&g.config()?, args).await,
        Command::Schema { kind } => {
            let all = fleet_shared::schema::all();
            match all.iter().find(|(n, _)| *n == kind) {
                Some((_, schema)) => {
                    println!("{}", serde_json::to_string_pretty(schema)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
                    anyhow::bail!(
                        "unknown message kind {kind:?}; try one of: {}",
                        names.join(", ")
                    )
                }
            }
        }
        Command::Catalogue(cmd) => catalogue::run(cmd).await,
        Command::Config => {
            // Passwords never leave the process: the URLs are shown redacted.
            print!("{}", g.config()?.redacted().to_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dedup(mut kinds: Vec<WorkerKind>) -> Vec<WorkerKind> {
    let mut seen = std::collections::HashSet::new();
    kinds.retain(|k| seen.insert(*k));
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_is_not_a_fleet_command() {
        // It is `fleet-bench` (bench/): a development tool, not production code.
        let err = Cli::try_parse_from(["fleet", "bench"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }
}
