//! Integration tests against the real services (one binary, so it links once).

mod chaos;
mod cluster;
mod common;
mod compose;
mod consumers;
mod dlq;
mod docs;
mod failures;
mod faultproxy;
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
