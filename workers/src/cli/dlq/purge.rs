//! `fleet dlq purge <queue>`: empties an operator queue, after confirmation.
//! Only operator queues: a typo must never empty a lane.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use fleet_shared::config::Config;
use fleet_shared::lapin::options::QueuePurgeOptions;
use fleet_shared::topology::{names, Topology};

use super::common::{connect, is_operator_queue, queue_info};

pub(super) async fn run(
    config: &Config,
    topo: &Topology,
    queue: &str,
    yes: bool,
) -> anyhow::Result<ExitCode> {
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
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to purge {queue} ({} message(s)) without confirmation: stdin is not a \
                 terminal. Pass --yes to purge anyway.",
                info.messages
            );
        }
        print!(
            "Purge {} message(s) from {queue}? This cannot be undone. Type the queue name to confirm: ",
            info.messages
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
    let ch = conn.create_channel().await.context("open a channel")?;
    let purged = ch
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("cannot purge {queue}"))?;
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    tracing::info!(queue, purged, "Purged an operator queue.");
    println!("Purged {purged} message(s) from {queue}.");
    if queue == names::PARKED {
        println!("The parked_messages rows in PostgreSQL are kept (they are the audit trail).");
    }
    Ok(ExitCode::SUCCESS)
}
