//! Ingest (SPEC §3; the seeds' "content invalidation service"): one handler
//! per source queue, each turning a source event into invalidation requests on
//! the request exchange, where bindings put them on the right lane.

use std::sync::Arc;

use fleet_shared::broker::{headers, with_headers, Outgoing};
use fleet_shared::runtime::{Context, Handler, HandlerError, Incoming};
use fleet_shared::source::SourceKind;
use fleet_shared::topology::names;
use fleet_shared::window;

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
        // A replayed event's new window (see `window`) goes with what it becomes.
        let window_start = msg
            .header(headers::WINDOW_START)
            .and_then(|t| t.parse::<i64>().ok());
        for r in &requests {
            // Caught where it enters, so the producer of the event sees why.
            window::check_now(r.invalidation_time, window_start, &self.ctx.config.retry)
                .map_err(|e| HandlerError::permanent(window::BAD_TIME, e))?;
        }
        for r in requests {
            let body = r.encode();
            let key = r.routing_key();
            let mut out = Outgoing::json(names::REQUESTS, &key, &body);
            if let Some(start) = window_start {
                out.properties = out
                    .properties
                    .with_headers(with_headers(None, &[(headers::WINDOW_START, start.into())]));
            }
            self.ctx.publisher.publish(out).await?;
        }
        Ok(())
    }
}
