//! Topology as data (SPEC §5): the file under `topology/`, its expansion into
//! exchanges, queues and bindings, and the three things an operator does with
//! it — `apply` (idempotent declares over AMQP), `plan` (a diff against the
//! live broker through the management API) and `export` (a RabbitMQ
//! definitions document).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use deadpool_lapin::lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use deadpool_lapin::lapin::types::{AMQPValue, FieldTable};
use deadpool_lapin::lapin::{Channel, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::message::{outbound_queue, outbound_routing_key, IndexKey, InvalidationType};
use crate::mgmt::Management;

/// The topology shipped with the fleet, built into the binary.
pub const BUILTIN: &str = include_str!("../../topology/fleet.toml");

/// Well-known names (SPEC §5 table). Producers and operators depend on them.
pub mod names {
    pub const REQUESTS: &str = "invalidation.requests";
    pub const FAST_LANE: &str = "invalidation.requests.fast";
    pub const BULK_LANE: &str = "invalidation.requests.bulk";
    pub const UNROUTABLE: &str = "invalidation.unroutable";
    pub const PARTITIONS: &str = "invalidation.partitions";
    pub const PARTITION_KEY: &str = "task";
    pub const OUTBOUND: &str = "content.invalidations";
    pub const EVENTS: &str = "invalidation.events";
    pub const EVENTS_LOG: &str = "invalidation.events.log";
    pub const RETRY_EXCHANGE: &str = "invalidation.retry";
    pub const RETRY_DELAY: &str = "invalidation.retry.delay";
    pub const RETRY_DELAY_KEY: &str = "delay";
    pub const RETRY_READY: &str = "invalidation.retry.ready";
    pub const PARKED: &str = "invalidation.parked";
    pub const PARKED_EXCHANGE: &str = "invalidation.parked";
    pub const DLX: &str = "invalidation.dlx";
    pub const JOB_COMPLETED: &str = "job.completed";
    /// Events about a request's end (see `message::RequestEvent`).
    pub const REQUEST_DEAD_LETTERED: &str = "request.dead_lettered";
    pub const REQUEST_PARKED: &str = "request.parked";

    /// The dead-letter queue of `queue`.
    pub fn dlq(queue: &str) -> String {
        format!("{queue}.dlq")
    }
}

/// The file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    pub defaults: Defaults,
    #[serde(default, rename = "exchange")]
    pub exchanges: Vec<ExchangeSpec>,
    #[serde(default, rename = "queue")]
    pub queues: Vec<QueueSpec>,
    #[serde(default)]
    pub outbound: Option<OutboundSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// `x-delivery-limit` of quorum queues.
    pub delivery_limit: i64,
    /// The exchange every `dead_letter = true` queue dead-letters to.
    pub dead_letter_exchange: String,
    /// `x-delivery-limit` of quorum queues no worker consumes (dead-letter,
    /// parking, delay, log queues). Operators peek them with nack-requeue,
    /// which counts as a delivery; they have nowhere to dead-letter to, so
    /// the limit must never be reached.
    #[serde(default = "default_operator_delivery_limit")]
    pub operator_delivery_limit: i64,
    /// `x-queue-leader-locator` of quorum queues: where a new queue's leader
    /// goes. `balanced` spreads the leaders over the cluster's nodes (without
    /// it every leader lands on the node `apply` is connected to);
    /// `client-local` is that node; empty leaves it to the broker's default.
    #[serde(default = "default_leader_locator")]
    pub leader_locator: String,
}

fn default_operator_delivery_limit() -> i64 {
    1_000_000
}

fn default_leader_locator() -> String {
    "balanced".into()
}

/// The queue argument that places a quorum queue's leader. The broker uses it
/// only when it creates the queue, so a queue that was created without it
/// keeps its leader and is not a conflict (see [`apply`] and [`plan`]).
pub const LEADER_LOCATOR: &str = "x-queue-leader-locator";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub alternate_exchange: Option<String>,
    #[serde(default)]
    pub purpose: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub name: String,
    /// The worker that consumes it (documentation and `status`).
    #[serde(default)]
    pub consumer: Option<String>,
    #[serde(default)]
    pub dead_letter: bool,
    /// Dead-letter somewhere specific (the retry delay queue does this).
    #[serde(default)]
    pub dead_letter_to: Option<DeadLetterTo>,
    /// A config key (`retry.delay`) or a number of milliseconds.
    #[serde(default)]
    pub message_ttl: Option<toml::Value>,
    /// `x-max-length`: keep only the newest N messages (for queues nobody must drain).
    #[serde(default)]
    pub max_length: Option<i64>,
    #[serde(default)]
    pub purpose: String,
    #[serde(default)]
    pub bind: Vec<BindSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterTo {
    pub exchange: String,
    pub routing_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindSpec {
    pub exchange: String,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSpec {
    pub exchange: String,
    #[serde(default)]
    pub dead_letter: bool,
    pub types: Vec<InvalidationType>,
    pub index_keys: Vec<IndexKey>,
}

/// An argument value as RabbitMQ stores it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum Arg {
    Int(i64),
    Str(String),
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arg::Int(i) => write!(f, "{i}"),
            Arg::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Arg {
    fn amqp(&self) -> AMQPValue {
        match self {
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
            Arg::Str(s) => AMQPValue::LongString(s.as_str().into()),
        }
    }

    fn from_json(v: &Value) -> Option<Arg> {
        match v {
            Value::Number(n) => n.as_i64().map(Arg::Int),
            Value::String(s) => Some(Arg::Str(s.clone())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub name: String,
    pub kind: String,
    pub arguments: BTreeMap<String, Arg>,
    pub purpose: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub name: String,
    pub arguments: BTreeMap<String, Arg>,
    pub consumer: Option<String>,
    pub purpose: String,
    /// The queue this one holds the dead letters of.
    pub dead_letters_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

/// The expanded topology: exactly what gets declared.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchanges: Vec<Exchange>,
    pub queues: Vec<Queue>,
    pub bindings: Vec<Binding>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {message}")]
    File { path: String, message: String },
    #[error("topology: {0}")]
    Invalid(String),
    #[error("{}", format_mismatches(.0))]
    Mismatch(Vec<Mismatch>),
    #[error("topology: broker refused {what}: {message}")]
    Broker { what: String, message: String },
    /// The user may not declare or bind (no configure right): workers with
    /// least-privilege users leave the topology to an operator.
    #[error("topology: {0}")]
    AccessRefused(crate::access::Refusal),
}

/// A queue or exchange that exists with arguments other than the file's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub kind: &'static str,
    pub name: String,
    pub argument: String,
    /// What the topology wants.
    pub wanted: String,
    /// What the broker has.
    pub found: String,
}

impl Mismatch {
    /// The configuration key (and its variable) whose value the wanted
    /// argument comes from, when it is configuration rather than the
    /// topology file: the retry delay queue's TTL is `retry.delay`; a
    /// queue's type, and the quorum-only arguments that come and go with
    /// it, are `topology.queue_type`.
    pub fn config_key(&self) -> Option<(&'static str, &'static str)> {
        let quorum_only = [
            "x-delivery-limit",
            "x-dead-letter-strategy",
            "x-overflow",
            LEADER_LOCATOR,
        ];
        match self.argument.as_str() {
            "x-message-ttl" if self.name == names::RETRY_DELAY => {
                Some(("retry.delay", "FLEET_RETRY_DELAY"))
            }
            "x-queue-type" => Some(("topology.queue_type", "FLEET_TOPOLOGY_QUEUE_TYPE")),
            a if quorum_only.contains(&a) && (self.wanted == "none" || self.found == "none") => {
                Some(("topology.queue_type", "FLEET_TOPOLOGY_QUEUE_TYPE"))
            }
            _ => None,
        }
    }

    /// Where the wanted value comes from, for people.
    fn source(&self) -> String {
        match self.config_key() {
            Some((key, var)) => format!("the topology (from configuration key {key}, {var})"),
            None => "the topology".into(),
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} '{}' already exists with {} = {}, but the topology wants {}",
            self.kind, self.name, self.argument, self.found, self.wanted
        )?;
        if let Some((key, var)) = self.config_key() {
            write!(f, " (from configuration key {key}, {var})")?;
        }
        Ok(())
    }
}

/// The conflicts among a plan's changes.
pub fn conflicts(changes: &[Change]) -> Vec<Mismatch> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Conflict(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// Conflicts for people: each one when there are few, else one line per
/// kind of conflict (argument, found, wanted) with a count and examples —
/// switching the queue type conflicts on every queue at once.
pub fn conflict_lines(m: &[Mismatch]) -> Vec<String> {
    const EACH_UP_TO: usize = 8;
    if m.len() <= EACH_UP_TO {
        return m.iter().map(|x| x.to_string()).collect();
    }
    let mut groups: BTreeMap<(&str, &str, &str, &str), Vec<&str>> = BTreeMap::new();
    for x in m {
        groups
            .entry((
                x.kind,
                x.argument.as_str(),
                x.found.as_str(),
                x.wanted.as_str(),
            ))
            .or_default()
            .push(x.name.as_str());
    }
    groups
        .into_iter()
        .map(|((kind, argument, found, wanted), names)| {
            let source = m
                .iter()
                .find(|x| x.argument == argument && x.found == found && x.wanted == wanted)
                .map(Mismatch::source)
                .unwrap_or_default();
            let examples: Vec<&str> = names.iter().take(3).copied().collect();
            let more = names.len().saturating_sub(examples.len());
            format!(
                "{} {kind}(s) exist with {argument} = {found}, but {source} wants {wanted}: {}{}",
                names.len(),
                examples.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        })
        .collect()
}

/// What to do about conflicts: set the configuration back, or drain and
/// re-create each queue (its messages kept, in order, confirmed).
pub fn conflict_advice(m: &[Mismatch]) -> String {
    let mut s = String::from("A queue's arguments cannot change in place.");
    let mut keys: BTreeMap<(&str, &str), &Mismatch> = BTreeMap::new();
    for x in m {
        if let Some(k) = x.config_key() {
            keys.entry(k).or_insert(x);
        }
    }
    for ((key, var), x) in &keys {
        let back = match *key {
            "retry.delay" => format!("{var}={}ms", x.found),
            "topology.queue_type" => {
                let found_type = m
                    .iter()
                    .find(|y| y.argument == "x-queue-type")
                    .map(|y| y.found.trim_matches('"'))
                    .unwrap_or("classic");
                let found_type = if found_type == "none" {
                    "classic"
                } else {
                    found_type
                };
                format!("{var}={found_type}")
            }
            _ => format!("{var} as before"),
        };
        s.push_str(&format!(
            " The wanted value comes from configuration key {key} ({var}), not the topology file: \
             to keep the existing queues, run every worker and command with {back} (or unset it)."
        ));
    }
    s.push_str(
        " To change a queue, drain and re-create it, one queue at a time, with every worker \
         stopped (a starting worker declares it again):\n\
         \x20 1. rabbitmqadmin declare queue name=QUEUE.migrate durable=true   (a holding queue)\n\
         \x20 2. fleet dlq replay QUEUE --to :QUEUE.migrate --verbose         (each message confirmed, in order)\n\
         \x20 3. rabbitmqctl delete_queue QUEUE   (add -p VHOST; check it is empty first)\n\
         \x20 4. fleet topology apply                                         (re-creates it as configured)\n\
         \x20 5. fleet dlq replay QUEUE.migrate --to :QUEUE --verbose, then rabbitmqctl delete_queue QUEUE.migrate\n\
         Or change the topology file to match. `fleet topology plan` lists every difference.",
    );
    s
}

fn format_mismatches(m: &[Mismatch]) -> String {
    let mut s = String::from("the broker's topology conflicts with the configuration:\n");
    for line in conflict_lines(m) {
        s.push_str(&format!("  - {line}\n"));
    }
    s.push_str(&conflict_advice(m));
    s
}

impl Topology {
    /// Loads the configured topology file (or the built-in one) and expands it.
    pub fn load(config: &Config) -> Result<Topology, TopologyError> {
        let text = match &config.topology.file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| TopologyError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
            None => BUILTIN.to_string(),
        };
        let origin = config
            .topology
            .file
            .as_deref()
            .unwrap_or(Path::new("topology/fleet.toml (built in)"));
        let file: TopologyFile = toml::from_str(&text).map_err(|e| TopologyError::File {
            path: origin.display().to_string(),
            message: e.to_string(),
        })?;
        file.expand(config)
    }

    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// Queues that hold messages nobody will process without an operator:
    /// dead-letter queues, the parking queue and the unroutable catch-all.
    pub fn operator_queues(&self) -> Vec<&Queue> {
        self.queues
            .iter()
            .filter(|q| {
                q.dead_letters_of.is_some()
                    || q.name == names::PARKED
                    || q.name == names::UNROUTABLE
            })
            .collect()
    }
}

/// The longest routing key AMQP carries (a short string), in bytes.
pub const MAX_ROUTING_KEY: usize = 255;

/// How many alternate exchanges [`Topology::route`] follows before it
/// gives up (a cycle of alternate exchanges would otherwise never end).
const MAX_ALTERNATE_HOPS: usize = 8;

impl Topology {
    /// The queues a message published to `exchange` with `routing_key`
    /// reaches by the topology's bindings: a direct exchange matches keys
    /// exactly, a topic exchange by pattern (`*` one word, `#` any number),
    /// a fanout exchange always; when no binding matches, the exchange's
    /// alternate exchange takes the message. The default exchange (`""`)
    /// delivers to the queue the key names. `None` when the exchange is not
    /// in the topology or its routing cannot be told from keys (`headers`).
    ///
    /// This is the topology file's view: a binding an operator added to the
    /// live broker by hand is not in it (add it to the file instead).
    pub fn route(&self, exchange: &str, routing_key: &str) -> Option<BTreeSet<String>> {
        self.route_from(exchange, routing_key, 0)
    }

    fn route_from(&self, exchange: &str, key: &str, hops: usize) -> Option<BTreeSet<String>> {
        if exchange.is_empty() {
            return Some(
                self.queue(key)
                    .map(|q| q.name.clone())
                    .into_iter()
                    .collect(),
            );
        }
        let ex = self.exchanges.iter().find(|e| e.name == exchange)?;
        let mut out = BTreeSet::new();
        for b in self.bindings.iter().filter(|b| b.exchange == exchange) {
            let matched = match ex.kind.as_str() {
                "fanout" => true,
                "direct" => b.routing_key == key,
                "topic" => topic_matches(&b.routing_key, key),
                _ => return None,
            };
            if matched {
                out.insert(b.queue.clone());
            }
        }
        if out.is_empty() {
            if let Some(Arg::Str(ae)) = ex.arguments.get("alternate-exchange") {
                if hops < MAX_ALTERNATE_HOPS {
                    return self.route_from(ae, key, hops + 1);
                }
            }
        }
        Some(out)
    }

    /// Whether the retry handler may send a message back to `exchange` /
    /// `routing_key` (SPEC §11): only where the topology routes it to at
    /// least one queue, and only to queues a worker consumes other than the
    /// retry-ready queue (the lanes, the unroutable queue the dispatcher
    /// re-routes from, the partition queue, the source queues). Never the
    /// outbound exchange, the events, the parking or dead-letter queues, nor
    /// back into the retry path. The error says why.
    ///
    /// A routing key that no producer could have published with — over
    /// AMQP's 255 bytes, or with a control character (NUL …) — is refused
    /// whatever it would reach: the alternate exchange would take it to the
    /// unroutable queue, but such a key comes only from forged headers, and
    /// the fleet never publishes it.
    pub fn allows_return(&self, exchange: &str, routing_key: &str) -> Result<(), String> {
        let shown = if exchange.is_empty() {
            "the default exchange".to_string()
        } else {
            format!("exchange {exchange:?}")
        };
        if routing_key.len() > MAX_ROUTING_KEY {
            return Err(format!(
                "the routing key has {} bytes, more than AMQP's {MAX_ROUTING_KEY}: no producer published it",
                routing_key.len()
            ));
        }
        if routing_key.chars().any(char::is_control) {
            return Err(format!(
                "routing key {routing_key:?} has a control character: no lane, source or partition key has one"
            ));
        }
        let Some(queues) = self.route(exchange, routing_key) else {
            return Err(format!(
                "{shown} is not in the topology: retried messages only go back to the fleet's own input queues"
            ));
        };
        if queues.is_empty() {
            return Err(format!(
                "{shown} routes routing key {routing_key:?} to no queue"
            ));
        }
        let outside: Vec<&str> = queues
            .iter()
            .map(String::as_str)
            .filter(|q| {
                !self
                    .queue(q)
                    .is_some_and(|q| q.consumer.is_some() && q.name != names::RETRY_READY)
            })
            .collect();
        if !outside.is_empty() {
            return Err(format!(
                "{shown} with routing key {routing_key:?} reaches {}, which is not one of the fleet's \
                 input queues (lanes, partition queue, source queues)",
                outside.join(", ")
            ));
        }
        Ok(())
    }

    /// The exchanges [`allows_return`](Self::allows_return) lets the retry
    /// handler send messages back to, by the names RabbitMQ's permissions
    /// use ([`DEFAULT_EXCHANGE`](crate::access::DEFAULT_EXCHANGE) for the
    /// default exchange): every exchange with a binding it allows, and the
    /// default exchange when some queue may be returned to by name. The
    /// retry handler's write right is exactly this set (plus its own
    /// outputs), so the two never disagree.
    pub fn return_exchanges(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .bindings
            .iter()
            .filter(|b| self.allows_return(&b.exchange, &b.routing_key).is_ok())
            .map(|b| b.exchange.clone())
            .collect();
        if self
            .queues
            .iter()
            .any(|q| self.allows_return("", &q.name).is_ok())
        {
            out.insert(crate::access::DEFAULT_EXCHANGE.into());
        }
        out
    }
}

/// Whether a topic exchange's binding `pattern` matches `key`: words are
/// separated by dots, `*` stands for exactly one word, `#` for zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&word, rest)) => match k.split_first() {
                Some((&first, k_rest)) => (word == "*" || word == first) && go(rest, k_rest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

impl TopologyFile {
    pub fn expand(&self, config: &Config) -> Result<Topology, TopologyError> {
        let queue_type = config
            .topology
            .queue_type
            .clone()
            .unwrap_or_else(|| self.defaults.queue_type.clone());
        let quorum = match queue_type.as_str() {
            "quorum" => true,
            "classic" => false,
            other => {
                return Err(TopologyError::Invalid(format!(
                    "queue_type {other:?} is neither classic nor quorum"
                )))
            }
        };
        if !matches!(
            self.defaults.leader_locator.as_str(),
            "" | "balanced" | "client-local"
        ) {
            return Err(TopologyError::Invalid(format!(
                "leader_locator {:?} is none of \"balanced\", \"client-local\" or \"\"",
                self.defaults.leader_locator
            )));
        }
        let dlx = &self.defaults.dead_letter_exchange;
        let mut exchanges: Vec<Exchange> = Vec::new();
        for e in &self.exchanges {
            if !matches!(e.kind.as_str(), "direct" | "topic" | "fanout" | "headers") {
                return Err(TopologyError::Invalid(format!(
                    "exchange {} has unknown type {:?}",
                    e.name, e.kind
                )));
            }
            let mut arguments = BTreeMap::new();
            if let Some(ae) = &e.alternate_exchange {
                arguments.insert("alternate-exchange".into(), Arg::Str(ae.clone()));
            }
            exchanges.push(Exchange {
                name: e.name.clone(),
                kind: e.kind.clone(),
                arguments,
                purpose: e.purpose.clone(),
            });
        }
        let mut queues = Vec::new();
        let mut bindings = Vec::new();
        let mut needs_dlx = false;

        // `consumed`: a worker or an indexer takes messages off it; the
        // others are only peeked and replayed by operators.
        let base_args = |dead_letter: bool, consumed: bool| {
            let mut a = BTreeMap::new();
            if quorum {
                let limit = if consumed {
                    self.defaults.delivery_limit
                } else {
                    self.defaults.operator_delivery_limit
                };
                a.insert("x-queue-type".into(), Arg::Str("quorum".into()));
                a.insert("x-delivery-limit".into(), Arg::Int(limit));
                if !self.defaults.leader_locator.is_empty() {
                    a.insert(
                        LEADER_LOCATOR.into(),
                        Arg::Str(self.defaults.leader_locator.clone()),
                    );
                }
                if dead_letter {
                    a.insert(
                        "x-dead-letter-strategy".into(),
                        Arg::Str("at-least-once".into()),
                    );
                    a.insert("x-overflow".into(), Arg::Str("reject-publish".into()));
                }
            }
            a
        };
        let mut push_queue = |spec_name: &str,
                              consumer: Option<String>,
                              purpose: String,
                              dead_letter: bool,
                              mut arguments: BTreeMap<String, Arg>,
                              queues: &mut Vec<Queue>,
                              bindings: &mut Vec<Binding>| {
            if dead_letter {
                needs_dlx = true;
                arguments.insert("x-dead-letter-exchange".into(), Arg::Str(dlx.clone()));
                arguments.insert(
                    "x-dead-letter-routing-key".into(),
                    Arg::Str(spec_name.into()),
                );
                let dlq = names::dlq(spec_name);
                queues.push(Queue {
                    name: dlq.clone(),
                    arguments: base_args(false, false),
                    consumer: None,
                    purpose: format!("Dead letters of {spec_name}: messages that failed permanently, with headers saying why."),
                    dead_letters_of: Some(spec_name.into()),
                });
                bindings.push(Binding {
                    exchange: dlx.clone(),
                    queue: dlq,
                    routing_key: spec_name.into(),
                });
            }
            queues.push(Queue {
                name: spec_name.into(),
                arguments,
                consumer,
                purpose,
                dead_letters_of: None,
            });
        };

        for q in &self.queues {
            let has_dl = q.dead_letter || q.dead_letter_to.is_some();
            let mut args = base_args(has_dl, q.consumer.is_some());
            if let Some(ttl) = &q.message_ttl {
                let ms = match ttl {
                    toml::Value::Integer(i) => *i,
                    toml::Value::String(s) if s == "retry.delay" => {
                        config.retry.delay.as_millis() as i64
                    }
                    other => {
                        return Err(TopologyError::Invalid(format!(
                            "queue {} has message_ttl {other}; use milliseconds or \"retry.delay\"",
                            q.name
                        )))
                    }
                };
                args.insert("x-message-ttl".into(), Arg::Int(ms));
            }
            if let Some(n) = q.max_length {
                args.insert("x-max-length".into(), Arg::Int(n));
            }
            if let Some(to) = &q.dead_letter_to {
                args.insert(
                    "x-dead-letter-exchange".into(),
                    Arg::Str(to.exchange.clone()),
                );
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    Arg::Str(to.routing_key.clone()),
                );
            }
            push_queue(
                &q.name,
                q.consumer.clone(),
                q.purpose.clone(),
                q.dead_letter,
                args,
                &mut queues,
                &mut bindings,
            );
            for b in &q.bind {
                for key in &b.keys {
                    bindings.push(Binding {
                        exchange: b.exchange.clone(),
                        queue: q.name.clone(),
                        routing_key: key.clone(),
                    });
                }
            }
        }
        if let Some(o) = &self.outbound {
            for &t in &o.types {
                for &k in &o.index_keys {
                    let name = outbound_queue(t, k);
                    push_queue(
                        &name,
                        None,
                        format!("Content ids to rebuild for {t} in {k}; read by the downstream indexers."),
                        o.dead_letter,
                        base_args(o.dead_letter, true),
                        &mut queues,
                        &mut bindings,
                    );
                    bindings.push(Binding {
                        exchange: o.exchange.clone(),
                        queue: name,
                        routing_key: outbound_routing_key(t, k),
                    });
                }
            }
        }
        if needs_dlx && !exchanges.iter().any(|e| &e.name == dlx) {
            return Err(TopologyError::Invalid(format!(
                "dead_letter_exchange {dlx} is not declared as an exchange"
            )));
        }
        // Every binding must name declared things: a typo would otherwise only
        // show up as messages silently going nowhere.
        let ex_names: BTreeSet<&str> = exchanges.iter().map(|e| e.name.as_str()).collect();
        let q_names: BTreeSet<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        if q_names.len() != queues.len() {
            return Err(TopologyError::Invalid("a queue name appears twice".into()));
        }
        for b in &bindings {
            if !ex_names.contains(b.exchange.as_str()) {
                return Err(TopologyError::Invalid(format!(
                    "queue {} binds to undeclared exchange {}",
                    b.queue, b.exchange
                )));
            }
        }
        for e in &exchanges {
            if let Some(Arg::Str(ae)) = e.arguments.get("alternate-exchange") {
                if !ex_names.contains(ae.as_str()) {
                    return Err(TopologyError::Invalid(format!(
                        "exchange {} names undeclared alternate exchange {ae}",
                        e.name
                    )));
                }
            }
        }
        Ok(Topology {
            exchanges,
            queues,
            bindings,
        })
    }
}

fn table(args: &BTreeMap<String, Arg>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert(k.as_str().into(), v.amqp());
    }
    t
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Direct,
    }
}

/// Parses RabbitMQ's PRECONDITION_FAILED text, e.g.
/// `inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the
/// value '2000' of type 'long' but current is the value '1000' of type 'long'`.
pub fn parse_precondition(kind: &'static str, name: &str, text: &str) -> Mismatch {
    let between = |s: &str, start: &str, end: &str| -> Option<String> {
        let i = s.find(start)? + start.len();
        let j = s[i..].find(end)? + i;
        Some(s[i..j].to_string())
    };
    let argument = between(text, "inequivalent arg '", "'").unwrap_or_else(|| "arguments".into());
    let wanted = between(text, "received the value '", "'")
        .or_else(|| between(text, "received '", "'"))
        .or_else(|| text.contains("received none").then(|| "none".into()))
        .unwrap_or_else(|| "(see broker message)".into());
    let found = between(text, "but current is the value '", "'")
        .or_else(|| between(text, "but current is '", "'"))
        .or_else(|| text.contains("current is none").then(|| "none".into()))
        .unwrap_or_else(|| format!("(broker said: {text})"));
    Mismatch {
        kind,
        name: name.into(),
        argument,
        wanted,
        found,
    }
}

/// What [`apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    pub exchanges: usize,
    pub queues: usize,
    pub bindings: usize,
}

/// Declares everything (idempotent). A conflicting queue or exchange does not
/// stop the others from being checked: every conflict is reported at once.
pub async fn apply(conn: &Connection, topology: &Topology) -> Result<ApplyReport, TopologyError> {
    let broker = |what: String| {
        move |e: deadpool_lapin::lapin::Error| {
            if crate::broker::is_access_refused(&e) {
                TopologyError::AccessRefused(crate::access::Refusal::new(
                    "declare",
                    what.clone(),
                    None,
                    e.to_string(),
                ))
            } else {
                TopologyError::Broker {
                    what: what.clone(),
                    message: e.to_string(),
                }
            }
        }
    };
    let open = || async {
        conn.create_channel()
            .await
            .map_err(broker("a channel".into()))
    };
    let mut ch: Channel = open().await?;
    let mut mismatches = Vec::new();
    let mut report = ApplyReport::default();
    let durable_ex = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for e in &topology.exchanges {
        match ch
            .exchange_declare(
                e.name.as_str().into(),
                exchange_kind(&e.kind),
                durable_ex,
                table(&e.arguments),
            )
            .await
        {
            Ok(()) => report.exchanges += 1,
            Err(err) => {
                let text = err.to_string();
                if !text.contains("PRECONDITION_FAILED") {
                    return Err(broker(format!("exchange {:?}", e.name))(err));
                }
                let mut m = parse_precondition("exchange", &e.name, &text);
                if !text.contains("inequivalent arg") {
                    m.argument = "type or durability".into();
                    m.wanted = e.kind.clone();
                }
                mismatches.push(m);
                ch = open().await?;
            }
        }
    }
    let durable_q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for q in &topology.queues {
        let mut arguments = q.arguments.clone();
        loop {
            match ch
                .queue_declare(q.name.as_str().into(), durable_q, table(&arguments))
                .await
            {
                Ok(_) => report.queues += 1,
                Err(err) => {
                    let text = err.to_string();
                    if !text.contains("PRECONDITION_FAILED") {
                        return Err(broker(format!("queue {:?}", q.name))(err));
                    }
                    ch = open().await?;
                    let m = parse_precondition("queue", &q.name, &text);
                    // A queue created before the topology placed leaders:
                    // its leader is where it is, and that is no conflict.
                    if m.argument == LEADER_LOCATOR
                        && m.found == "none"
                        && arguments.remove(LEADER_LOCATOR).is_some()
                    {
                        continue;
                    }
                    mismatches.push(m);
                }
            }
            break;
        }
    }
    if !mismatches.is_empty() {
        return Err(TopologyError::Mismatch(mismatches));
    }
    for b in &topology.bindings {
        ch.queue_bind(
            b.queue.as_str().into(),
            b.exchange.as_str().into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker(format!("binding {:?} -> {:?}", b.exchange, b.queue)))?;
        report.bindings += 1;
    }
    let _ = ch.close(200, "topology applied".into()).await;
    Ok(report)
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateExchange(String),
    CreateQueue(String),
    CreateBinding(Binding),
    Conflict(Mismatch),
}

impl Change {
    pub fn is_conflict(&self) -> bool {
        matches!(self, Change::Conflict(_))
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateExchange(n) => write!(f, "+ exchange {n}"),
            Change::CreateQueue(n) => write!(f, "+ queue    {n}"),
            Change::CreateBinding(b) => write!(
                f,
                "+ binding  {} -> {} (key {:?})",
                b.exchange, b.queue, b.routing_key
            ),
            Change::Conflict(m) => write!(f, "! conflict {m}"),
        }
    }
}

/// Diffs the topology against the live broker (management API).
pub async fn plan(
    mgmt: &Management,
    vhost: &str,
    topology: &Topology,
) -> Result<Vec<Change>, crate::mgmt::MgmtError> {
    let live_queues = mgmt.queues(vhost).await?;
    let live_exchanges = mgmt.exchanges(vhost).await?;
    let live_bindings = mgmt.bindings(vhost).await?;
    let mut changes = Vec::new();
    for e in &topology.exchanges {
        match live_exchanges.iter().find(|x| x.name == e.name) {
            None => changes.push(Change::CreateExchange(e.name.clone())),
            Some(live) => {
                if live.kind != e.kind {
                    changes.push(Change::Conflict(Mismatch {
                        kind: "exchange",
                        name: e.name.clone(),
                        argument: "type".into(),
                        wanted: e.kind.clone(),
                        found: live.kind.clone(),
                    }));
                }
                diff_args(
                    "exchange",
                    &e.name,
                    &e.arguments,
                    &live.arguments,
                    &mut changes,
                );
            }
        }
    }
    for q in &topology.queues {
        match live_queues.iter().find(|x| x.name == q.name) {
            None => changes.push(Change::CreateQueue(q.name.clone())),
            Some(live) => diff_args(
                "queue",
                &q.name,
                &q.arguments,
                &live.arguments,
                &mut changes,
            ),
        }
    }
    let have: BTreeSet<(&str, &str, &str)> = live_bindings
        .iter()
        .filter(|b| b.destination_type == "queue")
        .map(|b| {
            (
                b.source.as_str(),
                b.destination.as_str(),
                b.routing_key.as_str(),
            )
        })
        .collect();
    for b in &topology.bindings {
        if !have.contains(&(
            b.exchange.as_str(),
            b.queue.as_str(),
            b.routing_key.as_str(),
        )) {
            changes.push(Change::CreateBinding(b.clone()));
        }
    }
    Ok(changes)
}

fn diff_args(
    kind: &'static str,
    name: &str,
    wanted: &BTreeMap<String, Arg>,
    live: &serde_json::Map<String, Value>,
    changes: &mut Vec<Change>,
) {
    let keys: BTreeSet<&String> = wanted.keys().chain(live.keys()).collect();
    for key in keys {
        let w = wanted.get(key);
        // A queue declared without a type is a classic queue.
        let l = live.get(key).and_then(Arg::from_json).or_else(|| {
            (kind == "queue" && key == "x-queue-type").then(|| Arg::Str("classic".into()))
        });
        // The broker fills in `x-queue-type` for queues declared without one.
        if key == "x-queue-type" && w.is_none() && l == Some(Arg::Str("classic".into())) {
            continue;
        }
        // Leader placement only counts when a queue is created (`apply`
        // declares an older queue without it).
        if key == LEADER_LOCATOR && l.is_none() {
            continue;
        }
        if w != l.as_ref() {
            changes.push(Change::Conflict(Mismatch {
                kind,
                name: name.into(),
                argument: key.clone(),
                wanted: w.map(|a| a.to_string()).unwrap_or_else(|| "none".into()),
                found: l.map(|a| a.to_string()).unwrap_or_else(|| "none".into()),
            }));
        }
    }
}

/// A RabbitMQ definitions document (accepted by `load_definitions` and the
/// management UI's import) for `vhost`.
pub fn export(topology: &Topology, vhost: &str) -> Value {
    let args = |a: &BTreeMap<String, Arg>| serde_json::to_value(a).unwrap_or(json!({}));
    json!({
        "rabbit_version": "3.10.0",
        "vhosts": [{ "name": vhost }],
        "exchanges": topology.exchanges.iter().map(|e| json!({
            "name": e.name, "vhost": vhost, "type": e.kind, "durable": true,
            "auto_delete": false, "internal": false, "arguments": args(&e.arguments),
        })).collect::<Vec<_>>(),
        "queues": topology.queues.iter().map(|q| json!({
            "name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
            "arguments": args(&q.arguments),
        })).collect::<Vec<_>>(),
        "bindings": topology.bindings.iter().map(|b| json!({
            "source": b.exchange, "vhost": vhost, "destination": b.queue,
            "destination_type": "queue", "routing_key": b.routing_key, "arguments": {},
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(config: &Config) -> Topology {
        Topology::load(config).unwrap()
    }

    #[test]
    fn the_builtin_file_has_the_public_names() {
        let t = builtin(&Config::default());
        for q in [
            names::FAST_LANE,
            names::BULK_LANE,
            names::PARTITIONS,
            names::RETRY_DELAY,
            names::RETRY_READY,
            names::PARKED,
            names::UNROUTABLE,
            "productcontent_price_tr_tr",
            "productcontent_stock_de_de",
            "invalidation.requests.fast.dlq",
            "source.stock.dlq",
        ] {
            assert!(t.queue(q).is_some(), "missing {q}");
        }
        let delay = t.queue(names::RETRY_DELAY).unwrap();
        assert_eq!(delay.arguments["x-message-ttl"], Arg::Int(600_000));
        assert_eq!(
            delay.arguments["x-dead-letter-routing-key"],
            Arg::Str("ready".into())
        );
        let requests = t
            .exchanges
            .iter()
            .find(|e| e.name == names::REQUESTS)
            .unwrap();
        assert_eq!(
            requests.arguments["alternate-exchange"],
            Arg::Str(names::UNROUTABLE.into())
        );
        // Every invalidation type is routed to exactly one lane.
        for ty in InvalidationType::ALL {
            let lanes = t
                .bindings
                .iter()
                .filter(|b| b.exchange == names::REQUESTS && b.routing_key == ty.snake())
                .count();
            assert_eq!(lanes, 1, "{ty} is bound to {lanes} lanes");
            let fast = t.bindings.iter().any(|b| {
                b.exchange == names::REQUESTS
                    && b.routing_key == ty.snake()
                    && b.queue == names::FAST_LANE
            });
            assert_eq!(
                fast,
                InvalidationType::DEFAULT_FAST.contains(ty),
                "{ty} is on the wrong lane"
            );
        }
    }

    #[test]
    fn quorum_sets_delivery_limit_and_dead_lettering_explicitly() {
        let mut c = Config::default();
        c.topology.queue_type = Some("quorum".into());
        let t = builtin(&c);
        let fast = t.queue(names::FAST_LANE).unwrap();
        assert_eq!(fast.arguments["x-queue-type"], Arg::Str("quorum".into()));
        assert_eq!(fast.arguments["x-delivery-limit"], Arg::Int(50));
        assert_eq!(
            fast.arguments["x-dead-letter-exchange"],
            Arg::Str(names::DLX.into())
        );
        assert_eq!(
            fast.arguments["x-dead-letter-strategy"],
            Arg::Str("at-least-once".into())
        );
        // Operator queues are peeked with nack-requeue: their limit is never reached.
        let dlq = t.queue("invalidation.requests.fast.dlq").unwrap();
        assert_eq!(dlq.arguments["x-delivery-limit"], Arg::Int(1_000_000));
        // Leaders spread over the nodes, for every queue.
        assert!(t
            .queues
            .iter()
            .all(|q| q.arguments.get(LEADER_LOCATOR) == Some(&Arg::Str("balanced".into()))));
        // Classic queues have no leaders to place.
        let classic = builtin(&Config::default());
        assert!(classic
            .queues
            .iter()
            .all(|q| !q.arguments.contains_key(LEADER_LOCATOR)));
    }

    #[test]
    fn a_queue_made_before_leader_placement_is_no_conflict() {
        let wanted = BTreeMap::from([
            ("x-queue-type".to_string(), Arg::Str("quorum".into())),
            (LEADER_LOCATOR.to_string(), Arg::Str("balanced".into())),
        ]);
        let older = serde_json::from_value(json!({"x-queue-type": "quorum"})).unwrap();
        let mut changes = Vec::new();
        diff_args("queue", "q", &wanted, &older, &mut changes);
        assert!(changes.is_empty(), "{changes:?}");
        // Another placement than the file's is still shown.
        let other = serde_json::from_value(
            json!({"x-queue-type": "quorum", LEADER_LOCATOR: "client-local"}),
        )
        .unwrap();
        diff_args("queue", "q", &wanted, &other, &mut changes);
        assert_eq!(changes.len(), 1, "{changes:?}");
    }

    #[test]
    fn an_unknown_leader_locator_is_refused() {
        let mut file: TopologyFile = toml::from_str(BUILTIN).unwrap();
        file.defaults.leader_locator = "min-masters".into();
        let err = file.expand(&Config::default()).unwrap_err().to_string();
        assert!(err.contains("min-masters"), "{err}");
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        assert!(topic_matches("price", "price"));
        assert!(!topic_matches("price", "refund"));
        assert!(topic_matches("#", "job.completed"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("job.*", "job.completed"));
        assert!(!topic_matches("job.*", "job"));
        assert!(!topic_matches("job.*", "job.completed.late"));
        assert!(topic_matches("job.#", "job"));
        assert!(topic_matches("job.#", "job.completed.late"));
        assert!(topic_matches("*.tr_tr", "price.tr_tr"));
        assert!(topic_matches("#.tr_tr", "a.b.tr_tr"));
        assert!(!topic_matches("*.tr_tr", "price.de_de"));
        assert!(topic_matches("a.#.z", "a.z"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.#.z", "a.b.c"));
    }

    #[test]
    fn routes_follow_bindings_and_the_alternate_exchange() {
        let t = builtin(&Config::default());
        let set = |qs: &[&str]| qs.iter().map(|q| q.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            t.route(names::REQUESTS, "price"),
            Some(set(&[names::FAST_LANE]))
        );
        assert_eq!(
            t.route(names::REQUESTS, "brand_category"),
            Some(set(&[names::BULK_LANE]))
        );
        // No lane takes it: the alternate exchange puts it in the catch-all.
        assert_eq!(
            t.route(names::REQUESTS, "refund"),
            Some(set(&[names::UNROUTABLE]))
        );
        assert_eq!(
            t.route(names::UNROUTABLE, "anything"),
            Some(set(&[names::UNROUTABLE]))
        );
        assert_eq!(
            t.route(names::OUTBOUND, "price.tr_tr"),
            Some(set(&["productcontent_price_tr_tr"]))
        );
        assert_eq!(t.route(names::OUTBOUND, "price.xx"), Some(set(&[])));
        assert_eq!(
            t.route("", names::BULK_LANE),
            Some(set(&[names::BULK_LANE]))
        );
        assert_eq!(t.route("", "no.such.queue"), Some(set(&[])));
        assert_eq!(t.route("no.such.exchange", "x"), None);
    }

    #[test]
    fn retried_messages_only_go_back_to_the_fleets_input_queues() {
        let t = builtin(&Config::default());
        for (exchange, key) in [
            (names::REQUESTS, "price"),
            (names::REQUESTS, "translation"),
            (names::PARTITIONS, names::PARTITION_KEY),
            ("source.stock", ""),
            ("", names::FAST_LANE),
            // Caught by the alternate exchange: the dispatcher consumes the
            // unroutable queue and re-routes or dead-letters what it holds.
            (names::REQUESTS, "refund"),
        ] {
            assert_eq!(t.allows_return(exchange, key), Ok(()), "{exchange} {key}");
        }
        for (exchange, key) in [
            (names::OUTBOUND, "price.tr_tr"),
            (names::EVENTS, names::JOB_COMPLETED),
            (names::PARKED_EXCHANGE, ""),
            (names::RETRY_EXCHANGE, "ready"),
            (names::RETRY_EXCHANGE, "delay"),
            (names::DLX, names::FAST_LANE),
            ("", "productcontent_price_tr_tr"),
            ("", names::RETRY_READY),
            ("", "nowhere"),
            ("amq.topic", "price"),
        ] {
            let e = t.allows_return(exchange, key).unwrap_err();
            assert!(
                e.contains(&format!("{key:?}")) || e.contains("not in the topology"),
                "{e}"
            );
        }
        // Keys only forged headers carry: never published, although the
        // alternate exchange would take them to the unroutable queue.
        let long = "p".repeat(MAX_ROUTING_KEY + 1);
        for (exchange, key) in [
            (names::REQUESTS, "price\0"),
            (names::REQUESTS, "\0"),
            (names::REQUESTS, "price\n"),
            (names::REQUESTS, long.as_str()),
            ("", "invalidation.requests.fast\0"),
        ] {
            let e = t.allows_return(exchange, key).unwrap_err();
            assert!(
                e.contains("control character") || e.contains("bytes"),
                "{e}"
            );
        }
        assert_eq!(
            t.allows_return(names::REQUESTS, &"p".repeat(MAX_ROUTING_KEY)),
            Ok(())
        );
        for (exchange, key) in [(names::REQUESTS, "#"), (names::REQUESTS, "*")] {
            assert_eq!(t.allows_return(exchange, key), Ok(()), "{exchange} {key}");
        }
        let e = t.allows_return("no.such.exchange", "x").unwrap_err();
        assert!(e.contains("not in the topology"), "{e}");
    }

    #[test]
    fn the_retry_handler_may_write_exactly_where_it_may_return() {
        let t = builtin(&Config::default());
        let mut expected: BTreeSet<String> = [
            names::REQUESTS,
            // The alternate exchange's own: its queue is consumed (the
            // dispatcher re-routes what it holds), like README's
            // Least privilege table says.
            names::UNROUTABLE,
            names::PARTITIONS,
            crate::access::DEFAULT_EXCHANGE,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        expected.extend(crate::source::SourceKind::ALL.iter().map(|k| k.queue()));
        assert_eq!(t.return_exchanges(), expected);
    }

    #[test]
    fn the_retry_delay_follows_the_config() {
        let mut c = Config::default();
        c.retry.delay = std::time::Duration::from_secs(2);
        let t = builtin(&c);
        assert_eq!(
            t.queue(names::RETRY_DELAY).unwrap().arguments["x-message-ttl"],
            Arg::Int(2000)
        );
    }

    #[test]
    fn precondition_text_becomes_a_readable_mismatch() {
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'invalidation.retry.delay' in vhost '/': received the value '2000' of type 'long' but current is the value '600000' of type 'long'";
        let m = parse_precondition("queue", "invalidation.retry.delay", text);
        assert_eq!(m.argument, "x-message-ttl");
        assert_eq!(m.wanted, "2000");
        assert_eq!(m.found, "600000");
        let shown = TopologyError::Mismatch(vec![m]).to_string();
        assert!(shown.contains("queue 'invalidation.retry.delay' already exists with x-message-ttl = 600000, but the topology wants 2000"), "{shown}");
    }
}
