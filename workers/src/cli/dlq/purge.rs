//! `fleet dlq purge <queue>`: deletes the messages of an operator queue —
//! all of them, or only those matching `--filter` — after confirmation, and
//! puts the run on record (`purges`, and `parked_messages` rows of purged
//! parked messages are marked). Only operator queues: a typo must never
//! empty a lane.
//!
//! A filtered purge reads the queue one message at a time: a match is acked
//! (deleted); every other message stays unacked until the end and is then
//! returned with one nack, so it keeps its position. The parking queue is
//! always read that way, to mark each purged message's record. Any other
//! queue without a filter is emptied with one `queue.purge`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use chrono::Utc;
use clap::Args;
use fleet_shared::broker::Identity;
use fleet_shared::config::Config;
use fleet_shared::db::{self, ParkedOutcome, Purge, ReplayState};
use fleet_shared::lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use fleet_shared::lapin::Channel;
use fleet_shared::topology::{names, Topology};
use tokio_util::sync::CancellationToken;

use super::common::{
    connect, current, is_operator_queue, operator, parse_filters, queue_info, Filter, Seen,
};
use super::peek::return_all;

/// `fleet dlq purge` options.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The queue to purge (a dead-letter queue, invalidation.parked or
    /// invalidation.unroutable).
    pub queue: String,
    /// Only messages matching KEY=VALUE (repeatable; all must match); the
    /// same keys as `replay --filter`. Others stay, in order.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Do not ask (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Who runs this, for the record (default: $SUDO_USER, $USER, the login name).
    #[arg(long, env = "FLEET_OPERATOR", value_name = "NAME")]
    pub operator: Option<String>,
}

pub(super) async fn run(
    config: &Config,
    topo: &Topology,
    args: PurgeArgs,
) -> anyhow::Result<ExitCode> {
    let queue = args.queue.as_str();
    let filters = parse_filters(&args.filters)?;
    let conn = connect(config).await?;
    let info = queue_info(&conn, config, topo, queue).await?;
    if !is_operator_queue(topo, queue) {
        let dlqs = topo
            .operator_queues()
            .iter()
            .filter(|q| q.dead_letters_of.is_some())
            .count();
        let mut hint = String::new();
        if topo.queue(&names::dlq(queue)).is_some() {
            hint = format!(" Did you mean its dead-letter queue {}?", names::dlq(queue));
        }
        bail!(
            "refusing to purge {queue}: only operator queues may be purged — the {dlqs} dead-letter \
             queues (`<queue>.dlq`, e.g. {}), {} and {} (`fleet dlq list --all` names them all).{hint}",
            names::dlq(names::FAST_LANE),
            names::PARKED,
            names::UNROUTABLE
        );
    }
    let what = if filters.is_empty() {
        format!("{} message(s)", info.messages)
    } else {
        format!(
            "the messages matching {} (of {})",
            args.filters.join(" "),
            info.messages
        )
    };
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to purge {what} from {queue} without confirmation: stdin is not a \
                 terminal. Pass --yes to purge anyway."
            );
        }
        print!(
            "Purge {what} from {queue}? This cannot be undone. Type the queue name to confirm: "
        );
        std::io::stdout().flush().context("write the prompt")?;
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("read the confirmation")?;
        if answer.trim() != queue {
            eprintln!("Not confirmed; {queue} was not purged.");
            return Ok(ExitCode::from(1));
        }
    }
    // On record before anything is deleted.
    let pool = db::connect(&config.database.url, 2).await?;
    let identity = Identity::new("cli");
    let id = db::start_purge(
        &pool,
        &Purge {
            queue: queue.to_string(),
            filter: (!args.filters.is_empty()).then(|| args.filters.join(" ")),
            operator: operator(args.operator.as_deref()),
            host: identity.host.clone(),
        },
    )
    .await
    .context("cannot put the purge on record in PostgreSQL; nothing was purged")?;
    let started = Utc::now();
    let ch = conn.create_channel().await.context("open a channel")?;
    let stop = CancellationToken::new();
    crate::app::cancel_on_signals(stop.clone());
    let parked = queue == names::PARKED;
    let result = if filters.is_empty() && !parked {
        ch.queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map(|n| Tally {
                purged: u64::from(n),
                kept: 0,
                unmarked: 0,
            })
            .with_context(|| format!("cannot purge {queue}"))
    } else {
        let mut ctx = Reader {
            ch: &ch,
            topo,
            queue,
            filters: &filters,
            depth: u64::from(info.messages),
            pool: parked.then_some(&pool),
            purge_id: id,
            stop: &stop,
        };
        ctx.purge_matching().await
    };
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    let (state, tally) = match &result {
        Ok(t) if stop.is_cancelled() => (ReplayState::Interrupted, *t),
        Ok(t) => (ReplayState::Finished, *t),
        Err(_) => (ReplayState::Failed, Tally::default()),
    };
    db::finish_purge(&pool, id, count(tally.purged), count(tally.kept), state)
        .await
        .with_context(|| {
            format!("the purge ran but its end could not be recorded (purge record #{id})")
        })?;
    let tally = result?;
    tracing::info!(queue, purged = tally.purged, kept = tally.kept, record = id, since = %started, "Purged an operator queue.");
    let kept = if filters.is_empty() {
        String::new()
    } else {
        format!(", kept {} not matching the filter (in order)", tally.kept)
    };
    println!(
        "Purged {} message(s) from {queue}{kept}; purge record #{id}.",
        tally.purged
    );
    if parked {
        println!(
            "The parked_messages rows of the purged messages are kept (the audit trail) and \
             marked purged (purge_id {id}){}.",
            if tally.unmarked > 0 {
                format!("; {} had no open row", tally.unmarked)
            } else {
                String::new()
            }
        );
    }
    if stop.is_cancelled() {
        eprintln!("Interrupted: what was not examined is still in {queue}.");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a purge did.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    purged: u64,
    kept: u64,
    /// Purged parked messages without an open `parked_messages` row.
    unmarked: u64,
}

/// Reads a queue one message at a time, deleting the matching ones.
struct Reader<'a> {
    ch: &'a Channel,
    topo: &'a Topology,
    queue: &'a str,
    filters: &'a [Filter],
    /// Messages present at the start: only that many are examined.
    depth: u64,
    /// Set for the parking queue: purged messages' rows are marked.
    pool: Option<&'a sqlx::PgPool>,
    purge_id: i64,
    stop: &'a CancellationToken,
}

impl Reader<'_> {
    async fn purge_matching(&mut self) -> anyhow::Result<Tally> {
        let mut tally = Tally::default();
        let mut last_held = None;
        let read: anyhow::Result<()> = async {
            for _ in 0..self.depth {
                if self.stop.is_cancelled() {
                    break;
                }
                let got = self
                    .ch
                    .basic_get(self.queue.into(), BasicGetOptions { no_ack: false })
                    .await
                    .with_context(|| format!("cannot read from {}", self.queue))?;
                let Some(m) = got else { break };
                let d = m.delivery;
                let seen = Seen {
                    headers: d.properties.headers().as_ref(),
                    exchange: d.exchange.as_str(),
                    routing_key: d.routing_key.as_str(),
                    timestamp: *d.properties.timestamp(),
                };
                let now = current(self.topo, self.queue, &seen);
                if !self.filters.iter().all(|f| f.matches(&now, &seen, &d.data)) {
                    tally.kept += 1;
                    last_held = Some(d.delivery_tag);
                    continue;
                }
                self.ch
                    .basic_ack(d.delivery_tag, BasicAckOptions::default())
                    .await
                    .with_context(|| format!("cannot delete a message of {}", self.queue))?;
                tally.purged += 1;
                if let Some(pool) = self.pool {
                    let marked =
                        db::mark_parked(pool, &d.data, ParkedOutcome::Purged(self.purge_id))
                            .await
                            .context("cannot mark a parked_messages row as purged")?;
                    if !marked {
                        tally.unmarked += 1;
                    }
                }
            }
            Ok(())
        }
        .await;
        // Everything kept goes back to its original position, at once.
        let returned = return_all(self.ch, last_held).await;
        read?;
        returned.with_context(|| format!("cannot return the kept messages to {}", self.queue))?;
        Ok(tally)
    }
}
