//! Least privilege (SPEC §11): the RabbitMQ rights each worker type needs,
//! derived from the topology in this one place, and the users
//! `fleet topology export --users` / `apply --users` make of them.
//!
//! - **read**: the queues the topology file says the worker consumes
//!   (`consumer = "…"`).
//! - **write**: the exchanges it publishes to. Every consuming worker's
//!   failure paths publish to the dead-letter exchange, the retry
//!   exchange and the request events; besides that the dispatcher writes
//!   outbound batches, partition tasks and re-routed requests, the partition worker outbound batches and job
//!   events, ingest requests, the sweeper re-published tasks and job
//!   events, and the retry handler parks and returns messages to exactly
//!   the exchanges [`Topology::return_exchanges`] allows (the rule it
//!   checks before every return), which includes the default exchange.
//! - **configure**: nothing. These users never declare: the topology is an
//!   operator's `fleet topology apply` (as an administrator), and a worker
//!   whose start-up declare is refused says so and goes on (see `app::run`);
//!   run them with `FLEET_WORKER_APPLY_TOPOLOGY=false` to skip the attempt.
//!
//! Passive declares (the sweeper's look at the partition queue's depth)
//! need no right at all.

use fleet_shared::access::{self, Rights};
use fleet_shared::topology::{names, Topology};

use crate::app::WorkerKind;

/// The exchanges a worker type publishes to besides its failure paths.
fn publishes(kind: WorkerKind, topology: &Topology) -> Vec<String> {
    let fixed: &[&str] = match kind {
        // batcher (outbound batches), job::create (partition tasks),
        // lanes::reroute (a request on the wrong lane, or unroutable)
        WorkerKind::Dispatcher => &[names::OUTBOUND, names::PARTITIONS, names::REQUESTS],
        // batcher, job::finish_task → job::announce (job.completed)
        WorkerKind::Partition => &[names::OUTBOUND, names::EVENTS],
        // parking; returns are added below
        WorkerKind::Retry => &[names::PARKED_EXCHANGE],
        // one request per source event chunk
        WorkerKind::Ingest => &[names::REQUESTS],
        // job::republish_pending, job::announce
        WorkerKind::Sweeper => &[names::PARTITIONS, names::EVENTS],
    };
    let mut out: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    if kind == WorkerKind::Retry {
        out.extend(topology.return_exchanges());
    }
    out
}

/// Exactly what `kind` does on the broker, as rights.
pub fn rights(kind: WorkerKind, topology: &Topology) -> Rights {
    let read: std::collections::BTreeSet<String> = topology
        .queues
        .iter()
        .filter(|q| q.consumer.as_deref() == Some(kind.name()))
        .map(|q| q.name.clone())
        .collect();
    let mut write: std::collections::BTreeSet<String> =
        publishes(kind, topology).into_iter().collect();
    if !read.is_empty() {
        // runtime::dead_letter and runtime::send_to_retry, and the
        // request.dead_lettered / request.parked events after them.
        write.insert(names::DLX.into());
        write.insert(names::RETRY_EXCHANGE.into());
        write.insert(names::EVENTS.into());
    }
    Rights {
        configure: Default::default(),
        write,
        read,
    }
}

/// One worker type's user.
#[derive(Debug, Clone)]
pub struct WorkerUser {
    pub kind: WorkerKind,
    /// `<prefix><worker>`, e.g. `fleet-dispatcher`.
    pub name: String,
    pub rights: Rights,
}

/// The default prefix of the users' names.
pub const DEFAULT_USER_PREFIX: &str = "fleet-";

/// One user per worker type, named `<prefix><worker>`.
pub fn users(topology: &Topology, prefix: &str) -> Vec<WorkerUser> {
    WorkerKind::ALL
        .iter()
        .map(|&kind| WorkerUser {
            kind,
            name: format!("{prefix}{}", kind.name()),
            rights: rights(kind, topology),
        })
        .collect()
}

/// The variable `--passwords-from-env` reads a worker user's password from:
/// `FLEET_PASSWORD_DISPATCHER`, …
pub fn password_variable(kind: WorkerKind) -> String {
    format!("FLEET_PASSWORD_{}", kind.name().to_ascii_uppercase())
}

/// Every user's password from its variable; the error names every one missing.
pub fn passwords_from_env(
    users: &[WorkerUser],
    get: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for u in users {
        let var = password_variable(u.kind);
        match get(&var).filter(|p| !p.is_empty()) {
            Some(p) => out.push(p),
            None => missing.push(var),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "{} not set: one password per worker user is read from the environment \
             (the passwords are never printed)",
            missing.join(", ")
        ))
    }
}

/// The users as definitions-document users, with a password hash each
/// when `passwords` are given (in the order of `users`), else none.
pub fn definition_users(users: &[WorkerUser], passwords: Option<&[String]>) -> Vec<access::User> {
    users
        .iter()
        .enumerate()
        .map(|(i, u)| access::User {
            name: u.name.clone(),
            rights: u.rights.clone(),
            password_hash: passwords
                .and_then(|p| p.get(i))
                .map(|p| access::password_hash(p))
                .unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fleet_shared::config::Config;

    use super::*;
    use crate::ingest::Ingest;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn builtin() -> Topology {
        Topology::load(&Config::default()).unwrap()
    }

    #[test]
    fn each_worker_gets_exactly_what_it_uses() {
        let t = builtin();
        let r = |k| rights(k, &t);
        let failure = [names::DLX, names::RETRY_EXCHANGE, names::EVENTS];
        let d = r(WorkerKind::Dispatcher);
        assert_eq!(
            d.read,
            set(&[names::FAST_LANE, names::BULK_LANE, names::UNROUTABLE])
        );
        assert_eq!(
            d.write,
            set(&[
                &[names::OUTBOUND, names::PARTITIONS, names::REQUESTS][..],
                &failure[..]
            ]
            .concat())
        );
        let p = r(WorkerKind::Partition);
        assert_eq!(p.read, set(&[names::PARTITIONS]));
        assert_eq!(
            p.write,
            set(&[&[names::OUTBOUND, names::EVENTS][..], &failure[..]].concat())
        );
        let i = r(WorkerKind::Ingest);
        assert_eq!(i.read, Ingest::queues().into_iter().collect());
        assert_eq!(
            i.write,
            set(&[&[names::REQUESTS][..], &failure[..]].concat())
        );
        let s = r(WorkerKind::Sweeper);
        assert!(s.read.is_empty());
        assert_eq!(s.write, set(&[names::PARTITIONS, names::EVENTS]));
        let rt = r(WorkerKind::Retry);
        assert_eq!(rt.read, set(&[names::RETRY_READY]));
        let mut expected = set(&[
            names::PARKED_EXCHANGE,
            names::DLX,
            names::RETRY_EXCHANGE,
            names::EVENTS,
            names::UNROUTABLE,
            names::REQUESTS,
            names::PARTITIONS,
            access::DEFAULT_EXCHANGE,
        ]);
        expected.extend(
            fleet_shared::source::SourceKind::ALL
                .iter()
                .map(|k| k.queue()),
        );
        assert_eq!(rt.write, expected);
        // Never the outbound exchange, nor its own ready queue's exchange
        // for anything but its failure path.
        assert!(!rt.write.contains(names::OUTBOUND));
        for k in WorkerKind::ALL {
            assert!(r(*k).configure.is_empty(), "{k:?} never declares");
        }
    }

    #[test]
    fn every_named_exchange_and_queue_is_in_the_topology() {
        let t = builtin();
        for k in WorkerKind::ALL {
            let r = rights(*k, &t);
            for e in &r.write {
                assert!(
                    e == access::DEFAULT_EXCHANGE || t.exchanges.iter().any(|x| &x.name == e),
                    "{k:?} writes to {e}, which the topology lacks"
                );
            }
            for q in &r.read {
                assert!(t.queue(q).is_some(), "{k:?} reads {q}");
            }
        }
    }

    #[test]
    fn the_patterns_are_anchored_and_escaped() {
        let u = users(&builtin(), DEFAULT_USER_PREFIX);
        let names: Vec<&str> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fleet-dispatcher",
                "fleet-partition",
                "fleet-retry",
                "fleet-ingest",
                "fleet-sweeper"
            ]
        );
        let p = u[1].rights.patterns();
        assert_eq!(p.configure, "^$");
        assert_eq!(
            p.write,
            r"^(content\.invalidations|invalidation\.dlx|invalidation\.events|invalidation\.retry)$"
        );
        assert_eq!(p.read, r"^(invalidation\.partitions)$");
    }

    #[test]
    fn passwords_come_from_one_variable_per_user_and_missing_ones_are_named() {
        let u = users(&builtin(), "x-");
        let err = passwords_from_env(&u, |v| (v != "FLEET_PASSWORD_RETRY").then(|| "p".into()))
            .unwrap_err();
        assert!(err.contains("FLEET_PASSWORD_RETRY"), "{err}");
        assert!(!err.contains("FLEET_PASSWORD_INGEST"), "{err}");
        let ok = passwords_from_env(&u, |v| Some(format!("pw-{v}"))).unwrap();
        let defs = definition_users(&u, Some(&ok));
        assert!(defs.iter().all(|d| !d.password_hash.is_empty()));
        assert!(defs.iter().all(|d| !d.password_hash.contains("pw-")));
        let bare = definition_users(&u, None);
        assert!(bare.iter().all(|d| d.password_hash.is_empty()));
    }
}
