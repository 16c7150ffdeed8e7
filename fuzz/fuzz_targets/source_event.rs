//! The source-event decoder (`SourceKind::to_requests`, what ingest runs on
//! every body). The first byte picks the source kind and `dispatcher.max_ids`
//! (small limits exercise the chunking); the rest is the body.
//!
//! Invariants: no panic; a refusal has one of the documented classes; an
//! accepted event gives the same requests again (a redelivery repeats
//! exactly), each with 1..=max_ids ids and its own request id, together
//! naming the event's ids in order; and every request it gives passes the
//! dispatcher's validation (ingest never makes a request the fleet refuses).

#![no_main]

use fleet_shared::config::Config;
use fleet_shared::source::SourceKind;
use fleet_workers::dispatcher::validate;
use libfuzzer_sys::fuzz_target;

use fleet_shared::message::DECODE_CLASSES as CLASSES;
const LIMITS: &[usize] = &[10_000, 1, 2, 3, 7, 100];

fuzz_target!(|data: &[u8]| {
    let Some((&k, body)) = data.split_first() else {
        return;
    };
    let kinds = SourceKind::ALL;
    let kind = kinds[k as usize % kinds.len()];
    let max_ids = LIMITS[(k as usize / kinds.len()) % LIMITS.len()];
    let mut config = Config::default();
    config.dispatcher.max_ids = max_ids;
    let keys = config.dispatcher.index_keys.clone();
    match kind.to_requests(body, config.ingest.critical_stock, &keys, max_ids) {
        Ok(requests) => {
            let again = kind
                .to_requests(body, config.ingest.critical_stock, &keys, max_ids)
                .unwrap();
            assert_eq!(again, requests, "a redelivery gives the same requests");
            let mut ids = std::collections::BTreeSet::new();
            for r in &requests {
                assert!(!r.parameter_ids.is_empty() && r.parameter_ids.len() <= max_ids);
                assert!(ids.insert(r.request_id.clone().expect("named from the event")));
                let v = validate(&config, r.clone(), &r.encode()).unwrap_or_else(|e| {
                    panic!("ingest made a request the dispatcher refuses: {e}")
                });
                assert!(!v.index_keys.is_empty());
            }
        }
        Err(e) => {
            assert!(
                CLASSES.contains(&e.class()),
                "undocumented class {}",
                e.class()
            );
            let _ = e.to_string();
        }
    }
});
