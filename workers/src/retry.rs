//! The retry handler (SPEC §6; the seeds' "invalidation request exception
//! handler"): a message whose delay is over goes back to its original
//! exchange and routing key while it is younger than the window, and is
//! parked otherwise — a PostgreSQL row with the reason and the whole message,
//! plus a copy on the parking queue.
//!
//! The decision uses the message's own `invalidationTime` and attempt
//! counter, never the broker's `x-death` (RabbitMQ 4 stopped counting it for
//! republished messages).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::broker::{headers, headers_map, with_headers, HeaderValue, Outgoing};
use fleet_shared::config::RetryConfig;
use fleet_shared::db::{self, Parked};
use fleet_shared::message::{now_millis, PartitionTask};
use fleet_shared::runtime::{Classify, Context, Handler, HandlerError, Incoming};
use fleet_shared::telemetry;
use fleet_shared::topology::names;
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

/// `now - invalidation_time <= window` and under the attempt cap: retry; else park.
pub fn decide(now: i64, invalidation_time: i64, attempts: i64, cfg: &RetryConfig) -> Decision {
    let age = Duration::from_millis((now - invalidation_time).max(0) as u64);
    if age > cfg.window {
        return Decision::Park {
            reason: "retry_window_exceeded",
            detail: format!(
                "first failed {} ago, longer than the retry window of {}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(cfg.window)
            ),
        };
    }
    if let Some(max) = cfg.max_attempts {
        if attempts >= max as i64 {
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
}

impl RetryHandler {
    pub fn new(ctx: Context, db: PgPool) -> Arc<Self> {
        Arc::new(Self { ctx, db })
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
        let attempts = msg
            .header(headers::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        let now = now_millis();
        let time = invalidation_time(msg).unwrap_or(now);
        match decide(now, time, attempts, &self.ctx.config.retry) {
            Decision::Retry => {
                let props = msg.delivery.properties.clone();
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
                let headers_json =
                    serde_json::to_value(headers_map(msg.headers())).unwrap_or_default();
                let parked = Parked {
                    message_key: message_key(msg, time, attempts),
                    reason: format!("{reason}: {detail}"),
                    original_exchange: exchange.clone(),
                    original_routing_key: routing_key.clone(),
                    attempts: attempts as i32,
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
                let table = with_headers(
                    msg.headers(),
                    &[(
                        headers::PARK_REASON,
                        HeaderValue::from(parked.reason.clone()),
                    )],
                );
                let props = msg.delivery.properties.clone().with_headers(table);
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
        }
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
