//! The retry handler (SPEC §6; the seeds' "invalidation request exception
//! handler"): a message whose delay is over goes back to its original
//! exchange and routing key while it is younger than the window, and is
//! parked otherwise — a PostgreSQL row with the reason and the whole message,
//! plus a copy on the parking queue.
//!
//! The decision uses the message's own window start (its `invalidationTime`,
//! or the later `x-window-start` of an operator's reset replay) and attempt
//! counter, never the broker's `x-death` (RabbitMQ 4 stopped counting it for
//! republished messages).
//!
//! A message only goes back where the topology allows (SPEC §11): to an
//! exchange and routing key that reach the fleet's own input queues (lanes,
//! partition queue, source queues). Anything else is dead-lettered as
//! `forbidden_destination`: whoever managed to put a message on the retry
//! path must not borrow the fleet's permissions to publish it elsewhere.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::broker::{headers, headers_json, Outgoing};
use fleet_shared::config::RetryConfig;
use fleet_shared::db::{self, Parked};
use fleet_shared::message::{now_millis, PartitionTask, RequestEvent};
use fleet_shared::runtime::{
    copy_properties, fleet_user, park_headers, Classify, Context, Handler, HandlerError, Incoming,
};
use fleet_shared::telemetry;
use fleet_shared::topology::{names, Topology, TopologyError};
use fleet_shared::window;
use sqlx::PgPool;

use crate::job;

/// What to do with a message whose retry delay is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry,
    Park {
        reason: &'static str,
        detail: String,
    },
}

/// `now - window_start <= window` and under the attempt cap: retry; else park.
/// `window_start` is the later of the message's `invalidationTime` and its
/// `x-window-start` ([`window::start`]); any value is safe (no overflow).
pub fn decide(now: i64, window_start: i64, attempts: i64, cfg: &RetryConfig) -> Decision {
    let age = window::age(now, window_start);
    if age > cfg.window {
        return Decision::Park {
            reason: "retry_window_exceeded",
            detail: format!(
                "its window started {} ago, longer than the retry window of {}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(cfg.window)
            ),
        };
    }
    if let Some(max) = cfg.max_attempts {
        if attempts >= i64::from(max) {
            return Decision::Park {
                reason: "max_attempts_reached",
                detail: format!("failed {attempts} times; retry.max_attempts is {max}"),
            };
        }
    }
    Decision::Retry
}

pub struct RetryHandler {
    pub ctx: Context,
    pub db: PgPool,
    /// Decides where a message may go back to.
    pub topology: Topology,
}

impl RetryHandler {
    pub fn new(ctx: Context, db: PgPool) -> Result<Arc<Self>, TopologyError> {
        let topology = Topology::load(&ctx.config)?;
        Ok(Arc::new(Self { ctx, db, topology }))
    }
}

/// The message's invalidation time: the body's `invalidationTime`, else the
/// first-failure header the runtime wrote.
fn invalidation_time(msg: &Incoming) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(msg.body())
        .ok()
        .and_then(|v| v.get("invalidationTime").and_then(|t| t.as_i64()))
        .or_else(|| {
            msg.header(headers::FIRST_FAILURE)
                .and_then(|t| t.parse().ok())
        })
}

impl Handler for RetryHandler {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let (Some(exchange), Some(routing_key)) = (
            msg.header(headers::ORIGINAL_EXCHANGE),
            msg.header(headers::ORIGINAL_ROUTING_KEY),
        ) else {
            return Err(HandlerError::permanent(
                "missing_origin",
                "no x-original-exchange / x-original-routing-key header: cannot tell where to send it back",
            ));
        };
        if let Err(why) = self.topology.allows_return(&exchange, &routing_key) {
            return Err(HandlerError::permanent(
                "forbidden_destination",
                format!("not sent back to exchange {exchange:?} with routing key {routing_key:?}: {why}"),
            ));
        }
        let attempts: i64 = msg
            .header(headers::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1)
            .max(1);
        let now = now_millis();
        let time = invalidation_time(msg).unwrap_or(now);
        let window_start = msg
            .header(headers::WINDOW_START)
            .and_then(|t| t.parse().ok());
        let start = window::start(time, window_start);
        let user = fleet_user(&self.ctx);
        match decide(now, start, attempts, &self.ctx.config.retry) {
            Decision::Retry => {
                // Stamped with the fleet's own user, which the broker
                // vouches for: the lane then believes the counters.
                let mut props = msg.delivery.properties.clone();
                if let Some(user) = &user {
                    props = props.with_user_id(user.as_str().into());
                }
                tracing::info!(%exchange, %routing_key, attempts, "Retrying a failed message.");
                self.ctx
                    .publisher
                    .publish(Outgoing {
                        exchange: &exchange,
                        routing_key: &routing_key,
                        body: msg.body(),
                        properties: props,
                        mandatory: true,
                    })
                    .await?;
                Ok(())
            }
            Decision::Park { reason, detail } => {
                // Structured (x-death as an array of objects), not JSON text in a string.
                let headers_json = serde_json::Value::Object(headers_json(msg.headers()));
                let parked = Parked {
                    message_key: message_key(msg, time, attempts),
                    reason: format!("{reason}: {detail}"),
                    original_exchange: exchange.clone(),
                    original_routing_key: routing_key.clone(),
                    attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                    invalidation_time: chrono::DateTime::from_timestamp_millis(time),
                    headers: headers_json,
                    body: msg.body().to_vec(),
                };
                db::park(&self.db, &parked).await.transient("database")?;
                if msg.header(headers::ORIGINAL_QUEUE).as_deref() == Some(names::PARTITIONS) {
                    // A parked task must not look merely slow: the sweeper
                    // would re-publish it, and `jobs show` must point here.
                    if let Ok(task) = PartitionTask::decode(msg.body()) {
                        job::park_task(&self.db, &task, &parked.reason).await?;
                    }
                }
                let props = copy_properties(
                    &msg.delivery.properties,
                    park_headers(msg, &parked.reason),
                    user.as_deref(),
                );
                self.ctx
                    .publisher
                    .publish(Outgoing {
                        exchange: names::PARKED_EXCHANGE,
                        routing_key: "",
                        body: msg.body(),
                        properties: props,
                        mandatory: true,
                    })
                    .await?;
                telemetry::parked(reason);
                msg.mark_parked();
                // Published by the runtime once the delivery is acked: the
                // parked copy and its row are confirmed by then.
                msg.announce_after_ack(msg.request_event(
                    &self.ctx,
                    RequestEvent::PARKED,
                    reason,
                    &parked.reason,
                    names::PARKED,
                    (Some(exchange.clone()), Some(routing_key.clone())),
                ));
                tracing::warn!(%exchange, %routing_key, attempts, reason = %parked.reason, "Parked a message: it is not retried again until an operator replays it.");
                Ok(())
            }
        }
    }
}

/// Identifies a delivery for the parking table, so a redelivered message parks once.
fn message_key(msg: &Incoming, time: i64, attempts: i64) -> String {
    if let Some(id) = msg.delivery.properties.message_id() {
        return format!("{id}/{time}/{attempts}");
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    msg.body().hash(&mut h);
    format!("{:016x}/{time}/{attempts}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: Option<u32>) -> RetryConfig {
        RetryConfig {
            delay: Duration::from_secs(600),
            window: Duration::from_secs(7200),
            max_attempts: max,
            clock_slack: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_reset_window_counts_from_its_own_start() {
        let now = 10_000_000_000;
        let old = now - 3 * 3_600_000;
        assert!(matches!(
            decide(now, window::start(old, None), 1, &cfg(None)),
            Decision::Park { .. }
        ));
        assert_eq!(
            decide(now, window::start(old, Some(now - 60_000)), 1, &cfg(None)),
            Decision::Retry
        );
    }

    #[test]
    fn extreme_times_and_counts_decide_without_overflow() {
        for now in [i64::MIN, -1, 0, 10_000_000_000, i64::MAX] {
            for start in [i64::MIN, -1, 0, 10_000_000_000, i64::MAX] {
                for attempts in [i64::MIN, 0, 1, i64::MAX] {
                    let _ = decide(now, start, attempts, &cfg(Some(20)));
                }
            }
        }
        assert!(matches!(
            decide(i64::MAX, i64::MIN, 1, &cfg(None)),
            Decision::Park {
                reason: "retry_window_exceeded",
                ..
            }
        ));
        assert!(matches!(
            decide(0, i64::MAX, i64::MAX, &cfg(Some(20))),
            Decision::Park {
                reason: "max_attempts_reached",
                ..
            }
        ));
    }

    #[test]
    fn retries_inside_the_window_and_parks_outside() {
        let now = 10_000_000_000;
        assert_eq!(decide(now, now - 7_200_000, 3, &cfg(None)), Decision::Retry);
        assert!(matches!(
            decide(now, now - 7_200_001, 3, &cfg(None)),
            Decision::Park {
                reason: "retry_window_exceeded",
                ..
            }
        ));
    }

    #[test]
    fn the_attempt_cap_parks_early() {
        let now = 10_000_000_000;
        assert_eq!(decide(now, now, 2, &cfg(Some(3))), Decision::Retry);
        assert!(matches!(
            decide(now, now, 3, &cfg(Some(3))),
            Decision::Park {
                reason: "max_attempts_reached",
                ..
            }
        ));
    }
}
