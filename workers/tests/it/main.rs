//! Integration tests against the real services (one binary, so it links once).

mod cluster;
mod common;
mod compose;
mod consumers;
mod dlq;
mod failures;
mod idempotency;
mod jobs;
mod monitoring;
mod operators;
mod pipeline;
mod topology;
