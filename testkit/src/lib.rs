//! The fleet's test kit: a sandbox on the real services for the integration
//! tests and the benchmark (never for production code).
//!
//! A [`Sandbox`] is one isolated slice of every service: its own vhost (with
//! the topology applied), its own PostgreSQL database and its own Redis key
//! prefix, all removed when it is dropped. [`Osmem`] runs an osmem-server
//! (an in-memory OpenSearch-compatible server); the integration tests share
//! one seeded with [the test catalogue](catalogue_spec) and give each test a
//! copy-on-write clone of it ([`catalogue_clone`]), so tests run in parallel
//! and never see each other.
//!
//! The services are the ones on this machine (`scripts/services.sh`): the
//! tests use the fixed addresses of [`test_config`]; the benchmark opens a
//! sandbox on whatever its configuration names ([`Sandbox::open`]).

use std::time::{Duration, Instant};

use fleet_shared::broker::{header_text, Identity};
use fleet_shared::lapin::types::FieldTable;

mod catalogue;
mod osmem;
mod sandbox;
pub mod tls;

pub use catalogue::{catalogue_spec, expected_ids, CATALOGUE_DOCS, INDICES};
pub use osmem::{
    catalogue_clone, find_osmem_binary, osmem_binary, shared_osmem, Osmem, OsmemOptions,
};
pub use sandbox::{test_config, Running, Sandbox, Taken, TestEnv, ADMIN_DB, MGMT_URL};

/// Polls `f` until it returns `Some`, or panics after `wait` with `what`.
pub async fn eventually<T, F, Fut>(wait: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {wait:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port nothing listens on right now (bound, then released),
/// outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
///
/// Tests stop a server and start it again on the same port. A port from
/// the ephemeral range can meanwhile become the local end of any outgoing
/// connection on the machine, or of a client retrying that very address
/// (the kernel then connects it to itself), and the restart fails with
/// "address in use": a clean CI run saw osmem-server exit at start-up that
/// way. A port outside the range is only ever taken by an explicit bind.
pub fn free_port() -> u16 {
    use rand::Rng;
    let (low, high) = ephemeral_range();
    let (from, to) = outside(low, high).unwrap_or_else(|| {
        panic!("the ephemeral range {low}-{high} leaves too few ports outside it")
    });
    let mut rng = rand::rng();
    for _ in 0..500 {
        // `as`: `from..to` lies within 10,000..=65,535.
        let port = rng.random_range(from..to) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port outside the ephemeral range {low}-{high}")
}

/// The ports `from..to` to pick from beside the ephemeral range
/// `low..=high`: the wider of its two sides (ports from 10,000 up; below
/// it with Linux's default 32768-60999). `None` when that side has fewer
/// than 1,000 ports.
fn outside(low: u16, high: u16) -> Option<(u32, u32)> {
    let below = (10_000, u32::from(low).max(10_000));
    let above = ((u32::from(high) + 1).max(10_000), u32::from(u16::MAX) + 1);
    let wider = if below.1 - below.0 >= above.1.saturating_sub(above.0) {
        below
    } else {
        above
    };
    (wider.1.saturating_sub(wider.0) >= 1_000).then_some(wider)
}

/// The kernel's ephemeral port range; Linux's default when unreadable.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// An HTTP URL where nothing listens: every call is refused at once.
pub fn refused_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// The identity test code publishes under.
pub fn identity() -> Identity {
    Identity::new("test")
}

/// A header of a taken message as text (empty when absent).
pub fn header(t: &Taken, key: &str) -> String {
    t.headers.get(key).cloned().unwrap_or_default()
}

/// A header of a field table as text.
pub fn text_header(table: Option<&FieldTable>, key: &str) -> Option<String> {
    header_text(table, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Only where the port lies: that it is still free a moment later is
    // not the function's to promise (another process may bind it; a clean
    // CI-style run once saw exactly that).
    #[test]
    fn a_free_port_is_never_one_the_kernel_hands_out() {
        let (low, high) = ephemeral_range();
        assert!(low <= high, "{low}-{high}");
        for _ in 0..200 {
            let port = free_port();
            assert!(!(low..=high).contains(&port), "{port} in {low}-{high}");
            assert!(port >= 10_000, "{port}");
        }
    }

    #[test]
    fn the_ports_picked_from_lie_beside_any_ephemeral_range() {
        assert_eq!(outside(32_768, 60_999), Some((10_000, 32_768)));
        // A range up to the last port: below it, never 65,535.
        assert_eq!(outside(20_000, 65_535), Some((10_000, 20_000)));
        // A range from low down: above it.
        assert_eq!(outside(1_024, 50_000), Some((50_001, 65_536)));
        assert_eq!(outside(1_024, 65_535), None);
    }
}
