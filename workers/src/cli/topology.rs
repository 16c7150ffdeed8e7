//! `fleet topology plan | apply | export`.

use std::process::ExitCode;

use clap::Subcommand;
use fleet_shared::config::Config;
use fleet_shared::mgmt::{vhost_of, Management};
use fleet_shared::topology::{self, Topology};

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Show what `apply` would change on the live broker (management API);
    /// exits 2 when an existing queue or exchange conflicts with the file.
    Plan,
    /// Declare every exchange, queue and binding (idempotent).
    Apply,
    /// Print a RabbitMQ definitions document (for load_definitions or the management UI import).
    Export {
        /// The vhost to write into the document; the one of AMQP_URL by default.
        #[arg(long)]
        vhost: Option<String>,
    },
    /// List every queue with its purpose and consumer.
    Describe,
}

pub async fn run(config: &Config, cmd: TopologyCommand) -> anyhow::Result<ExitCode> {
    let topo = Topology::load(config)?;
    match cmd {
        TopologyCommand::Plan => {
            let mgmt = Management::new(&config.amqp.management_url)?;
            let vhost = vhost_of(&config.amqp.url);
            let changes = topology::plan(&mgmt, &vhost, &topo).await?;
            if changes.is_empty() {
                println!("No changes: vhost {vhost:?} matches the topology ({} exchanges, {} queues, {} bindings).", topo.exchanges.len(), topo.queues.len(), topo.bindings.len());
                return Ok(ExitCode::SUCCESS);
            }
            let conflicts = topology::conflicts(&changes);
            for c in changes.iter().filter(|c| !c.is_conflict()) {
                println!("{c}");
            }
            for line in topology::conflict_lines(&conflicts) {
                println!("! conflict {line}");
            }
            println!(
                "\n{} to create, {} conflict(s) in vhost {vhost:?}.",
                changes.len() - conflicts.len(),
                conflicts.len()
            );
            if !conflicts.is_empty() {
                println!("{}", topology::conflict_advice(&conflicts));
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Apply => {
            let ctx = crate::app::context(&std::sync::Arc::new(config.clone()), "cli").await?;
            let r = crate::app::apply_topology(&ctx).await?;
            println!(
                "Applied: {} exchanges, {} queues, {} bindings (vhost {:?}).",
                r.exchanges,
                r.queues,
                r.bindings,
                vhost_of(&config.amqp.url)
            );
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Export { vhost } => {
            let vhost = vhost.unwrap_or_else(|| vhost_of(&config.amqp.url));
            println!(
                "{}",
                serde_json::to_string_pretty(&topology::export(&topo, &vhost))?
            );
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Describe => {
            for q in &topo.queues {
                let consumer = q.consumer.as_deref().unwrap_or("-");
                println!("{:<44} {:<11} {}", q.name, consumer, q.purpose);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
