//! The invalidation fleet's workers and the `fleet` CLI.
//!
//! Each worker is a [`fleet_shared::runtime::Handler`] run by the shared
//! consumer loop; [`app`] wires a process together; [`cli`] is the command line.
//! See `ARCHITECTURE.md` for the map and the invariants.

pub mod app;
pub mod batcher;
pub mod catalogue;
pub mod cli;
pub mod dispatcher;
pub mod ingest;
pub mod job;
pub mod lanes;
pub mod partition;
pub mod privileges;
pub mod retry;
pub mod sweeper;
pub mod unroutable;
