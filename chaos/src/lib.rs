//! `fleet-chaos`: the fleet's fault suite (SPEC §10, reliability tests).
//!
//! It starts services of its own — a RabbitMQ node, a PostgreSQL cluster,
//! a Redis server and an osmem-server loaded with the generated catalogue
//! behind a proxy — never the machine's shared ones, which serve other
//! tests at the same time. It runs the fleet as `fleet run <kind>`
//! subprocesses (two partition workers, one of each other kind), drives a
//! mixed load whose every expected id is computed from the catalogue
//! generator, and meanwhile injects faults: SIGKILL of every worker kind,
//! the broker node stopped and started, the search server away and
//! overloaded, PostgreSQL restarted, Redis killed. At the end it counts
//! what arrived on the outbound queues against what was expected and reads
//! the end state (queues, jobs, tasks, events); [`Report::passed`] is false
//! if anything was lost, invented or stuck.
//!
//! [`run`] cleans up everything it started, also after an error, Ctrl-C or
//! SIGTERM. `fleet-chaos` is the command line; the integration test
//! `workers/tests/it/chaos.rs` runs [`Options::ci`].

pub mod check;
pub mod counter;
pub mod faults;
pub mod fleet;
pub mod load;
pub mod options;
pub mod report;
pub mod run;
pub mod services;

pub use options::Options;
pub use report::Report;
pub use run::run;

/// The first argument that makes the `fleet-chaos` binary the `fleet`
/// command line (its worker subprocesses are `fleet-chaos fleet run …`
/// unless a `fleet` binary is given).
pub const FLEET: &str = "fleet";
