//! The fault suite's CI variant (`fleet-chaos --ci`, crate `fleet-chaos`):
//! its own RabbitMQ node, PostgreSQL cluster, Redis and osmem-server (never
//! the shared services the other tests use), the fleet as `fleet run`
//! subprocesses of this build, every worker kind killed and every service
//! faulted once under a mixed load. Nothing may be lost, invented or left
//! stuck; the report is printed either way (`cargo test chaos -- --nocapture`).

use crate::common::fleet_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_loses_nothing_while_every_part_of_it_fails() {
    let mut opts = fleet_chaos::Options::ci();
    opts.fleet_bin = Some(fleet_bin().into());
    opts.handle_signals = false;
    let report = fleet_chaos::run(&opts)
        .await
        .unwrap_or_else(|e| panic!("the fault suite could not run: {e:#}"));
    println!("{report}");
    assert!(
        report.passed(),
        "the fault suite failed (lost {}, unexpected {}); see the report above",
        report.lost(),
        report.unexpected()
    );
}
