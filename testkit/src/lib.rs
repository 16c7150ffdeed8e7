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

/// The identity test code publishes under.
/// A loopback port nothing listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port on loopback")
        .port()
}

/// An HTTP URL where nothing listens: every call is refused at once.
pub fn refused_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

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
