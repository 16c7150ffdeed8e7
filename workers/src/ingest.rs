//! Ingest (SPEC §3; the seeds' "content invalidation service"): one handler
//! per source queue, each turning a source event into invalidation requests on
//! the request exchange, where bindings put them on the right lane.

use std::sync::Arc;

use fleet_shared::broker::Outgoing;
use fleet_shared::runtime::{Context, Handler, HandlerError, Incoming};
use fleet_shared::source::SourceKind;
use fleet_shared::topology::names;

pub struct Ingest {
    pub ctx: Context,
}

impl Ingest {
    pub fn new(ctx: Context) -> Arc<Self> {
        Arc::new(Self { ctx })
    }

    /// The queues it consumes: `source.<kind>` for every kind.
    pub fn queues() -> Vec<String> {
        SourceKind::ALL.iter().map(|k| k.queue()).collect()
    }
}

impl Handler for Ingest {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let kind: SourceKind = msg
            .queue
            .parse()
            .map_err(|e: String| HandlerError::permanent("unknown_source", e))?;
        let requests = kind
            .to_requests(
                msg.body(),
                self.ctx.config.ingest.critical_stock,
                &self.ctx.config.dispatcher.index_keys,
                self.ctx.config.dispatcher.max_ids,
            )
            .map_err(|e| HandlerError::permanent(e.class(), e))?;
        if requests.is_empty() {
            tracing::debug!(source = %kind, "Event does not need an invalidation.");
        }
        for r in requests {
            let body = r.encode();
            let key = r.routing_key();
            self.ctx
                .publisher
                .publish(Outgoing::json(names::REQUESTS, &key, &body))
                .await?;
        }
        Ok(())
    }
}
