//! `fleet topology plan | apply | export`, and the worker users of least
//! privilege (`--users`, see `privileges`).

use std::process::ExitCode;

use clap::Subcommand;
use fleet_shared::config::Config;
use fleet_shared::mgmt::{vhost_of, Management};
use fleet_shared::topology::{self, Topology};

use crate::privileges;

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Show what `apply` would change on the live broker (management API);
    /// exits 2 when an existing queue or exchange conflicts with the file.
    Plan,
    /// Declare every exchange, queue and binding (idempotent).
    Apply {
        /// Also create or update one RabbitMQ user per worker type with
        /// exactly the rights it needs, through the management API (an
        /// administrator's URL). Passwords come from FLEET_PASSWORD_<WORKER>
        /// (FLEET_PASSWORD_DISPATCHER, …); an existing user's password is reset.
        #[arg(long)]
        users: bool,
        #[command(flatten)]
        names: UserNames,
    },
    /// Print a RabbitMQ definitions document (for load_definitions or the management UI import).
    Export {
        /// The vhost to write into the document; the one of AMQP_URL by default.
        #[arg(long)]
        vhost: Option<String>,
        /// Add one user per worker type (`users`, `permissions`) whose
        /// configure / write / read patterns allow exactly what that worker
        /// does. Without --passwords-from-env the users have no password.
        #[arg(long)]
        users: bool,
        /// Hash each user's password from FLEET_PASSWORD_<WORKER>
        /// (FLEET_PASSWORD_DISPATCHER, …) into the document; the passwords
        /// themselves are never printed.
        #[arg(long, requires = "users")]
        passwords_from_env: bool,
        #[command(flatten)]
        names: UserNames,
    },
    /// List every queue with its purpose and consumer.
    Describe,
}

/// How the worker users are named.
#[derive(Debug, Clone, clap::Args)]
pub struct UserNames {
    /// Prefix of the worker users' names: `<prefix><worker>`.
    #[arg(long, default_value = privileges::DEFAULT_USER_PREFIX, value_name = "PREFIX")]
    pub user_prefix: String,
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
        TopologyCommand::Apply { users, names } => {
            let vhost = vhost_of(&config.amqp.url);
            // Read before anything changes: a missing password stops the
            // command before the broker is touched.
            let worker_users = privileges::users(&topo, &names.user_prefix);
            let passwords = if users {
                Some(
                    privileges::passwords_from_env(&worker_users, |v| std::env::var(v).ok())
                        .map_err(anyhow::Error::msg)?,
                )
            } else {
                None
            };
            let ctx = crate::app::context(&std::sync::Arc::new(config.clone()), "cli").await?;
            let r = crate::app::apply_topology(&ctx).await?;
            println!(
                "Applied: {} exchanges, {} queues, {} bindings (vhost {vhost:?}).",
                r.exchanges, r.queues, r.bindings,
            );
            if let Some(passwords) = passwords {
                let mgmt = Management::new(&config.amqp.management_url)?;
                for (u, password) in worker_users.iter().zip(&passwords) {
                    let p = u.rights.patterns();
                    mgmt.put_user(&u.name, password, "").await?;
                    mgmt.set_permissions(&vhost, &u.name, &p.configure, &p.write, &p.read)
                        .await?;
                    println!(
                        "User {}: configure {} write {} read {}",
                        u.name, p.configure, p.write, p.read
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Export {
            vhost,
            users,
            passwords_from_env,
            names,
        } => {
            let vhost = vhost.unwrap_or_else(|| vhost_of(&config.amqp.url));
            let mut doc = topology::export(&topo, &vhost);
            if users {
                let worker_users = privileges::users(&topo, &names.user_prefix);
                let passwords = if passwords_from_env {
                    Some(
                        privileges::passwords_from_env(&worker_users, |v| std::env::var(v).ok())
                            .map_err(anyhow::Error::msg)?,
                    )
                } else {
                    eprintln!(
                        "The users have no password (password_hash \"\"): set each with \
                         `rabbitmqctl change_password <user> <password>`, or export with \
                         --passwords-from-env (FLEET_PASSWORD_DISPATCHER, …)."
                    );
                    None
                };
                let defs = privileges::definition_users(&worker_users, passwords.as_deref());
                let (u, p) = fleet_shared::access::definitions(&defs, &vhost);
                doc["users"] = u;
                doc["permissions"] = p;
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
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
