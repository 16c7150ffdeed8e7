//! The lane rule: a request's `invalidationType` decides its lane, not the
//! routing key it was published with.
//!
//! The lanes are bindings of `invalidation.requests` in the topology file
//! (`price` → the fast lane, `brand_category` → the bulk lane, …). A request
//! that arrives where its type does not belong — on the other lane (a
//! BRAND_CATEGORY request published with routing key `price`), or in
//! `invalidation.unroutable` (routing key `PRICE`, `price-update`) — is
//! re-published once, body and properties unchanged, to
//! `invalidation.requests` with its type's routing key, and stamped
//! `x-rerouted-from`. The right lane's dispatcher then validates it like
//! any other request, so nothing skips validation.
//!
//! It cannot loop: the target key is one the topology binds to a lane that
//! accepts the type, and a message that already carries `x-rerouted-from`
//! and is still in the wrong place (the live bindings differ from the
//! topology file) is dead-lettered instead of re-routed again
//! (`wrong_lane`, `unknown_routing_key`), with a reason naming the key to
//! use. The dispatcher and the unroutable handler share this module.

use std::collections::{BTreeSet, HashMap};

use fleet_shared::broker::{headers, with_headers, Outgoing};
use fleet_shared::config::Config;
use fleet_shared::message::InvalidationType;
use fleet_shared::runtime::{copy_properties, fleet_user, Context, HandlerError, Incoming};
use fleet_shared::topology::{names, Topology, TopologyError};

/// The worker that consumes the lanes, as the topology file names it.
const LANE_CONSUMER: &str = "dispatcher";

/// Dead-letter class of a request that is on a lane its type does not
/// belong to and cannot be re-routed.
pub const WRONG_LANE: &str = "wrong_lane";

/// Dead-letter class of a message in `invalidation.unroutable` whose routing
/// key (in any case) and type match no lane.
pub const UNKNOWN_ROUTING_KEY: &str = "unknown_routing_key";

/// What to do with a request where it was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It is where its type belongs.
    Here,
    /// Re-publish it to `invalidation.requests` with this routing key.
    Reroute(String),
    /// Dead-letter it with this class and reason.
    Refuse(&'static str, String),
}

/// The lanes of the topology file.
#[derive(Debug, Clone)]
pub struct Lanes {
    topology: Topology,
    /// The lanes of each type's routing key, worked out once: the lane
    /// rule runs for every request.
    by_type: HashMap<InvalidationType, BTreeSet<String>>,
}

impl Lanes {
    pub fn load(config: &Config) -> Result<Self, TopologyError> {
        Ok(Self::new(Topology::load(config)?))
    }

    pub fn new(topology: Topology) -> Self {
        let mut lanes = Self {
            topology,
            by_type: HashMap::new(),
        };
        lanes.by_type = InvalidationType::ALL
            .iter()
            .map(|&t| (t, lanes.lanes_of(&t.snake())))
            .collect();
        lanes
    }

    /// The lanes a request published with `routing_key` reaches: queues the
    /// dispatcher consumes, never the unroutable catch-all.
    pub fn lanes_of(&self, routing_key: &str) -> BTreeSet<String> {
        self.topology
            .route(names::REQUESTS, routing_key)
            .unwrap_or_default()
            .into_iter()
            .filter(|q| {
                q != names::UNROUTABLE
                    && self
                        .topology
                        .queue(q)
                        .is_some_and(|q| q.consumer.as_deref() == Some(LANE_CONSUMER))
            })
            .collect()
    }

    /// Every routing key some lane is bound to (for reasons that name them).
    pub fn keys(&self) -> Vec<String> {
        InvalidationType::ALL
            .iter()
            .map(|t| t.snake())
            .filter(|k| !self.lanes_of(k).is_empty())
            .collect()
    }

    /// A request of type `t` delivered from `queue` (a lane).
    pub fn on_lane(&self, queue: &str, t: InvalidationType, rerouted: bool) -> Verdict {
        let lanes = &self.by_type[&t];
        if lanes.contains(queue) {
            return Verdict::Here;
        }
        let key = t.snake();
        if lanes.is_empty() {
            return Verdict::Refuse(
                WRONG_LANE,
                format!(
                    "invalidationType {t} belongs to no lane: the topology binds no lane to routing key {key:?}"
                ),
            );
        }
        let shown: Vec<&str> = lanes.iter().map(String::as_str).collect();
        if rerouted {
            return Verdict::Refuse(
                WRONG_LANE,
                format!(
                    "invalidationType {t} belongs on {}, not {queue}, and it was re-routed once already \
                     (the broker's bindings differ from the topology file?); publish it with routing key {key:?}",
                    shown.join(", ")
                ),
            );
        }
        Verdict::Reroute(key)
    }

    /// A message in `invalidation.unroutable` that was published with
    /// `routing_key`; `t` is its `invalidationType` when its body has one.
    pub fn unroutable(
        &self,
        routing_key: &str,
        t: Option<InvalidationType>,
        rerouted: bool,
    ) -> Verdict {
        let by_type = t
            .map(|t| t.snake())
            .filter(|k| !self.lanes_of(k).is_empty());
        let lowered = routing_key.trim().to_ascii_lowercase();
        let by_key = Some(lowered).filter(|k| !self.lanes_of(k).is_empty());
        let use_key = t
            .map(|t| format!("{:?} (its invalidationType {t} in lower case)", t.snake()))
            .unwrap_or_else(|| "the invalidationType in lower case".into());
        match by_type.or(by_key) {
            Some(key) if !rerouted => Verdict::Reroute(key),
            Some(_) => Verdict::Refuse(
                UNKNOWN_ROUTING_KEY,
                format!(
                    "routing key {routing_key:?} matches no lane and the message was re-routed once already \
                     (the broker's bindings differ from the topology file?); publish it with routing key {use_key}"
                ),
            ),
            None => Verdict::Refuse(
                UNKNOWN_ROUTING_KEY,
                format!(
                    "routing key {routing_key:?} matches no lane; publish with routing key {use_key}: one of {}",
                    self.keys().join(", ")
                ),
            ),
        }
    }
}

/// Whether the fleet re-routed this message before.
pub fn rerouted(msg: &Incoming) -> bool {
    msg.header(headers::REROUTED_FROM).is_some()
}

/// Re-publishes the message to `invalidation.requests` with `routing_key`:
/// the body byte for byte, every property the broker does not act on, and
/// `x-rerouted-from` saying where it was. Confirmed before the caller acks.
pub async fn reroute(ctx: &Context, msg: &Incoming, routing_key: &str) -> Result<(), HandlerError> {
    let from = format!(
        "{} (exchange {:?}, routing key {:?})",
        msg.queue, msg.delivery.exchange, msg.delivery.routing_key
    );
    let table = with_headers(
        msg.headers(),
        &[(headers::REROUTED_FROM, from.clone().into())],
    );
    let props = copy_properties(&msg.delivery.properties, table, fleet_user(ctx).as_deref());
    ctx.publisher
        .publish(Outgoing {
            exchange: names::REQUESTS,
            routing_key,
            body: msg.body(),
            properties: props,
            mandatory: true,
        })
        .await?;
    msg.mark_outcome("rerouted");
    tracing::warn!(%from, to = routing_key, "Re-routed a request to the lane of its type; its producer should publish with this routing key.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes() -> Lanes {
        Lanes::load(&Config::default()).unwrap()
    }

    #[test]
    fn a_request_belongs_on_the_lane_of_its_type() {
        let l = lanes();
        let bc = InvalidationType::BrandCategory;
        assert_eq!(l.on_lane(names::BULK_LANE, bc, false), Verdict::Here);
        assert_eq!(
            l.on_lane(names::FAST_LANE, bc, false),
            Verdict::Reroute("brand_category".into())
        );
        // Once re-routed and still wrong: dead-lettered, never a loop.
        let Verdict::Refuse(class, why) = l.on_lane(names::FAST_LANE, bc, true) else {
            panic!("re-routed twice")
        };
        assert_eq!(class, WRONG_LANE);
        assert!(why.contains("\"brand_category\""), "{why}");
        assert_eq!(l.keys().len(), InvalidationType::ALL.len());
    }

    #[test]
    fn unroutable_keys_are_matched_by_type_then_in_any_case() {
        let l = lanes();
        let price = Some(InvalidationType::Price);
        assert_eq!(
            l.unroutable("PRICE", price, false),
            Verdict::Reroute("price".into())
        );
        // The type decides, whatever the key says.
        assert_eq!(
            l.unroutable("refund", Some(InvalidationType::Tag), false),
            Verdict::Reroute("tag".into())
        );
        // No body type (malformed): the key in lower case.
        assert_eq!(
            l.unroutable("Stock", None, false),
            Verdict::Reroute("stock".into())
        );
        let Verdict::Refuse(class, why) = l.unroutable("refund", None, false) else {
            panic!("no lane for refund")
        };
        assert_eq!(class, UNKNOWN_ROUTING_KEY);
        assert!(
            why.contains("price, ") && why.contains("brand_category"),
            "{why}"
        );
        assert!(matches!(
            l.unroutable("PRICE", price, true),
            Verdict::Refuse(UNKNOWN_ROUTING_KEY, _)
        ));
    }
}
