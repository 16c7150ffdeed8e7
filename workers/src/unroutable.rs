//! The unroutable handler: consumes `invalidation.unroutable` (the request
//! exchange's alternate exchange) in the dispatcher's process, so a request
//! published with a routing key no lane is bound to (`PRICE`,
//! `brand-category`) is not left there silently. By the lane rule
//! ([`crate::lanes`]) it is re-routed to the lane of its `invalidationType`
//! (or, when the body has no readable type, of its routing key in lower
//! case); anything else is dead-lettered to `invalidation.unroutable.dlq` as
//! `unknown_routing_key`, with a reason naming the routing keys to use.

use std::sync::Arc;

use fleet_shared::message::InvalidationType;
use fleet_shared::runtime::{Context, Handler, HandlerError, Incoming};
use serde::Deserialize;

use crate::lanes::{self, Lanes, Verdict};

pub struct Unroutable {
    pub ctx: Context,
    pub lanes: Lanes,
}

impl Unroutable {
    pub fn new(ctx: Context, lanes: Lanes) -> Arc<Self> {
        Arc::new(Self { ctx, lanes })
    }
}

/// Only the type of a request body: nothing else is decoded here (the lane
/// validates the rest).
#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "invalidationType")]
    invalidation_type: InvalidationType,
}

/// What the lane rule makes of a message in `invalidation.unroutable`
/// published with `routing_key`: its body's type decides when it has one
/// ([`Lanes::unroutable`]). The hostile corpus's offline check calls this too.
pub fn verdict(lanes: &Lanes, routing_key: &str, body: &[u8], rerouted: bool) -> Verdict {
    let t = serde_json::from_slice::<TypeOnly>(body)
        .ok()
        .map(|b| b.invalidation_type);
    lanes.unroutable(routing_key, t, rerouted)
}

impl Handler for Unroutable {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        // The body's size was checked by the runtime before this handler
        // (`body_too_large`, like on the lanes): nothing larger is decoded.
        match verdict(
            &self.lanes,
            msg.delivery.routing_key.as_str(),
            msg.body(),
            lanes::rerouted(msg),
        ) {
            Verdict::Reroute(key) => lanes::reroute(&self.ctx, msg, &key).await,
            Verdict::Refuse(class, why) => Err(HandlerError::permanent(class, why)),
            // Not a verdict for this queue; never acked without an end.
            Verdict::Here => Err(HandlerError::permanent(
                lanes::UNKNOWN_ROUTING_KEY,
                "no lane takes this message",
            )),
        }
    }
}
