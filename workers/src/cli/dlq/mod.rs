//! `fleet dlq list | peek | replay | purge`: what failed, why, and moving it
//! back (SPEC §6, §7). One file per subcommand; `common.rs` holds what they
//! share (connecting, finding a queue, quorum notes, showing bodies).
//!
//! Invariants:
//! - depths are the broker's own counts (passive declares), exact the moment
//!   a message lands; the management API is asked only what its statistics
//!   alone know (a queue's type for the quorum notes, typo suggestions);
//! - `list` and `peek` are non-destructive: messages are fetched unacked on
//!   one channel and returned together with one `basic.nack(multiple,
//!   requeue)`, which puts them back at their original positions;
//! - `replay` republishes a message with a publisher confirm *before* acking
//!   it, one message at a time, so a crash or Ctrl-C loses nothing and
//!   duplicates at most the one message in flight;
//! - messages `replay` does not move are never republished: they stay unacked
//!   until the end and are then returned in one nack (or by the broker when the
//!   process dies), so they keep their original order and bytes.
//!
//! Peeking a quorum queue counts as a delivery attempt against its
//! `x-delivery-limit`; the commands say so when the queue is a quorum queue.

mod common;
mod list;
mod peek;
mod purge;
mod replay;
mod show;

use std::process::ExitCode;

use clap::Subcommand;
use fleet_shared::config::Config;
use fleet_shared::topology::Topology;

pub use replay::ReplayArgs;

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Every dead-letter queue, the parking queue and the unroutable catch-all,
    /// with depth, age of the oldest message and top error reasons.
    List {
        /// Show empty queues too.
        #[arg(long)]
        all: bool,
        /// One JSON object per queue and line (queue, exists, messages,
        /// oldest, reasons, sampled) instead of the table, as `jobs list --json`.
        #[arg(long)]
        json: bool,
    },
    /// Show messages with their error headers, non-destructively (they stay
    /// in the queue, in the same order).
    Peek {
        /// The queue, e.g. invalidation.requests.fast.dlq.
        queue: String,
        /// How many messages from the head of the queue.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// One JSON document (an array of messages) instead of text: every
        /// property and header, `x-death` decoded, the whole body (JSON as
        /// JSON, other text as a string, other bytes as hex).
        #[arg(long)]
        json: bool,
        /// Show long arrays in full (by default `[1, 2, 3, 4, 5, … 995 more]`)
        /// and the whole hex dump of a body that is not UTF-8.
        #[arg(long)]
        full: bool,
    },
    /// Move messages back to where they came from (x-original-exchange and
    /// x-original-routing-key), or elsewhere with --to. Each message is
    /// confirmed by the broker before it leaves the queue.
    Replay(ReplayArgs),
    /// Delete the messages of an operator queue (dead-letter, parked or
    /// unroutable) — all, or those matching --filter — after confirmation;
    /// recorded in the purges table with the operator's name.
    Purge(purge::PurgeArgs),
}

/// Runs one `dlq` subcommand.
pub async fn run(config: &Config, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let topo = Topology::load(config)?;
    match cmd {
        DlqCommand::List { all, json } => list::run(config, &topo, all, json).await,
        DlqCommand::Peek {
            queue,
            limit,
            json,
            full,
        } => peek::run(config, &topo, &queue, limit, json, full).await,
        DlqCommand::Replay(args) => replay::run(config, &topo, args).await,
        DlqCommand::Purge(args) => purge::run(config, &topo, args).await,
    }
}
