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
mod hostile;
mod idempotency;
mod ingress;
mod jobs;
mod monitoring;
mod operators;
mod ops;
mod pipeline;
mod privileges;
mod producers;
mod replay;
mod search;
mod secrets;
mod tls;
mod topology;
