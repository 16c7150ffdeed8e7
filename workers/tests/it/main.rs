//! Integration tests against the real services (one binary, so it links once).

mod chaos;
mod common;
mod compose;
mod consumers;
mod dlq;
mod failures;
mod faultproxy;
mod idempotency;
mod jobs;
mod monitoring;
mod operators;
mod pipeline;
mod search;
mod topology;
