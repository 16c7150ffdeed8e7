//! Integration tests against the real services (one binary, so it links once).

mod chaos;
mod cluster;
mod common;
mod compose;
mod consumers;
mod dlq;
mod failures;
mod faultproxy;
mod hostile;
mod idempotency;
mod ingress;
mod jobs;
mod monitoring;
mod operators;
mod pipeline;
mod producers;
mod replay;
mod search;
mod secrets;
mod topology;
