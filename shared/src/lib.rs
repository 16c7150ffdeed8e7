//! Everything the fleet's workers share: configuration, the wire messages,
//! the topology, the broker runtime with its failure paths, and the clients of
//! PostgreSQL, Redis and the search cluster.
//!
//! This crate knows nothing about any particular worker: it must not name the
//! dispatcher, the partition worker or the CLI. See `ARCHITECTURE.md`.

pub mod access;
pub mod acks;
pub mod broker;
pub mod config;
pub mod db;
pub mod error;
pub mod kv;
pub mod message;
pub mod mgmt;
pub mod runtime;
pub mod schema;
pub mod search;
pub mod source;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod window;

pub use deadpool_lapin::lapin;
