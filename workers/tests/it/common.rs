//! The shared test harness: the test kit (`fleet-testkit`: a sandbox of
//! real RabbitMQ, PostgreSQL, Redis and osmem-server per test), plus what
//! only a test of this package can know.

pub use fleet_testkit::*;

/// The `fleet` binary built for these tests.
pub fn fleet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fleet")
}
