//! Least privilege (SPEC §11) as data: the configure / write / read rights
//! of a RabbitMQ user as sets of exchange and queue names, rendered as the
//! anchored patterns RabbitMQ checks and as the `users` and `permissions`
//! sections of a definitions document; and the words a process says when
//! the broker refuses an operation for lack of rights.
//!
//! Which names a worker needs is the workers crate's knowledge
//! (`fleet_workers::privileges`); this module knows no worker.
//!
//! What RabbitMQ checks (AMQP 0-9-1, checked on this machine's 3.10):
//! `basic.publish` needs write on the exchange (`amq.default` for the
//! default exchange; routing on to an alternate exchange needs nothing
//! more); `basic.consume` and `basic.get` need read on the queue; an
//! active `exchange.declare` / `queue.declare` needs configure on it (even
//! when it exists already), a passive one needs nothing; `queue.bind`
//! needs write on the queue and read on the exchange. Acks, nacks, QoS and
//! the broker's own dead-lettering need nothing.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The name RabbitMQ's permissions give the default exchange (`""`).
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// The password hashing RabbitMQ uses by default, and the one
/// [`password_hash`] produces.
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// What a user may do in one vhost, as the exchange and queue names each
/// right must cover (exactly those: the patterns are anchored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    /// Exchanges and queues the user may declare (actively), delete or bind to.
    pub configure: BTreeSet<String>,
    /// Exchanges the user publishes to (and queues it binds).
    pub write: BTreeSet<String>,
    /// Queues the user consumes or gets from (and exchanges it binds from).
    pub read: BTreeSet<String>,
}

impl Rights {
    /// The three patterns RabbitMQ stores for the user.
    pub fn patterns(&self) -> Patterns {
        Patterns {
            configure: pattern(&self.configure),
            write: pattern(&self.write),
            read: pattern(&self.read),
        }
    }
}

/// A user's configure / write / read regular expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patterns {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// The anchored pattern that matches exactly `names`: `^(a|b\.c)$`, or
/// `^$` (RabbitMQ's "nothing") when there are none. Every name is escaped,
/// so a dot matches only a dot.
pub fn pattern<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> String {
    let escaped: BTreeSet<String> = names.into_iter().map(|n| escape(n.as_ref())).collect();
    if escaped.is_empty() {
        return "^$".into();
    }
    format!("^({})$", escaped.into_iter().collect::<Vec<_>>().join("|"))
}

/// `name` with every character that means something in a regular
/// expression escaped.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One user of a definitions document: its name, its rights, and the
/// password hash to import (empty: the user cannot log in with a password
/// until an operator sets one).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub rights: Rights,
    /// A [`password_hash`], or empty.
    pub password_hash: String,
}

/// The `users` and `permissions` sections of a definitions document for
/// `vhost` (what `rabbitmqadmin import` and `POST /api/definitions` read).
/// The users get no tags: the workers never use the management API.
pub fn definitions(users: &[User], vhost: &str) -> (Value, Value) {
    let u = users
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "password_hash": u.password_hash,
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": [],
                "limits": {},
            })
        })
        .collect::<Vec<_>>();
    let p = users
        .iter()
        .map(|u| {
            let p = u.rights.patterns();
            json!({
                "user": u.name, "vhost": vhost,
                "configure": p.configure, "write": p.write, "read": p.read,
            })
        })
        .collect::<Vec<_>>();
    (Value::Array(u), Value::Array(p))
}

/// RabbitMQ's salted SHA-256 password hash (`rabbit_password_hashing_sha256`):
/// base64 of a random 4-byte salt followed by SHA-256(salt ‖ password).
pub fn password_hash(password: &str) -> String {
    password_hash_with_salt(password, rand::random())
}

fn password_hash_with_salt(password: &str, salt: [u8; 4]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The broker refused an operation because the user lacks the right
/// (`ACCESS_REFUSED`, 403). Its text says so in plain words: the
/// operation, the exchange or queue, the user, and where the rights come from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    /// What was attempted: `publish to`, `consume from`, `declare`.
    pub operation: String,
    /// `exchange "content.invalidations"`, `queue "invalidation.partitions"`.
    pub resource: String,
    /// The connection's user, when the URL says it (not with certificates).
    pub user: Option<String>,
    /// What the broker said.
    pub broker: String,
}

impl Refusal {
    pub fn new(
        operation: impl Into<String>,
        resource: impl Into<String>,
        user: Option<String>,
        broker: impl Into<String>,
    ) -> Self {
        let broker = broker.into();
        // RabbitMQ names the user itself: "… refused for user 'x'".
        let user = user.or_else(|| {
            let i = broker.find("for user '")? + "for user '".len();
            let j = broker[i..].find('\'')? + i;
            Some(broker[i..j].to_string())
        });
        Self {
            operation: operation.into(),
            resource: resource.into(),
            user,
            broker,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = match &self.user {
            Some(u) => format!("user {u:?}"),
            None => "this connection's user".into(),
        };
        write!(
            f,
            "permission denied: RabbitMQ refused to let {user} {} {} (ACCESS_REFUSED, 403). \
             This is a permissions problem, not an outage: the user lacks the right for this \
             worker's work. `fleet topology export --users` prints the rights each worker needs \
             (import them, or run `fleet topology apply --users` as an administrator). \
             Broker said: {}",
            self.operation, self.resource, self.broker
        )
    }
}

/// `exchange "name"` (the default exchange by its permission name).
pub fn exchange_resource(exchange: &str) -> String {
    if exchange.is_empty() {
        format!("exchange {DEFAULT_EXCHANGE:?} (the default exchange)")
    } else {
        format!("exchange {exchange:?}")
    }
}

/// `queue "name"`.
pub fn queue_resource(queue: &str) -> String {
    format!("queue {queue:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_anchored_escaped_and_exact() {
        assert_eq!(pattern(Vec::<String>::new()), "^$");
        assert_eq!(
            pattern(["invalidation.requests", "amq.default"]),
            r"^(amq\.default|invalidation\.requests)$"
        );
        assert_eq!(escape("a-b(c)*"), r"a-b\(c\)\*");
    }

    #[test]
    fn the_hash_is_rabbitmqs_salted_sha256() {
        // From the RabbitMQ docs' example: salt 0x908DC60A, password "test12".
        assert_eq!(
            password_hash_with_salt("test12", [0x90, 0x8D, 0xC6, 0x0A]),
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
        );
        assert_ne!(password_hash("x"), password_hash("x"), "salted");
    }

    #[test]
    fn a_refusal_names_the_operation_the_resource_and_the_user() {
        let r = Refusal::new(
            "publish to",
            exchange_resource("invalidation.requests"),
            Some("fleet-partition".into()),
            "ACCESS_REFUSED - access to exchange 'invalidation.requests' in vhost 'v' refused",
        );
        let text = r.to_string();
        let from_broker = Refusal::new(
            "declare",
            queue_resource("q"),
            None,
            "ACCESS_REFUSED - access to queue 'q' in vhost 'v' refused for user 'fleet-ingest'",
        );
        assert_eq!(from_broker.user.as_deref(), Some("fleet-ingest"));
        for part in [
            "permission",
            "publish to",
            "exchange \"invalidation.requests\"",
            "user \"fleet-partition\"",
            "fleet topology export --users",
            "ACCESS_REFUSED",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }
}
