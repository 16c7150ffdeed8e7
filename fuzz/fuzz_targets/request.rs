//! The request decoder (`InvalidationRequest::decode`, what the dispatcher
//! runs first on every body) and the retry path's `stamp_invalidation_time`
//! (what the runtime does to any body that failed transiently).
//!
//! Invariants: no panic; a refusal has one of the documented classes; a
//! decoded request was a UTF-8 JSON object, re-encodes to itself, and still
//! decodes to itself (with the stamped time) after the retry path stamped it.

#![no_main]

use fleet_shared::message::InvalidationRequest;
use fleet_shared::runtime::stamp_invalidation_time;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_763_856_000_000;

use fleet_shared::message::DECODE_CLASSES as CLASSES;

fuzz_target!(|body: &[u8]| {
    let decoded = InvalidationRequest::decode(body);
    match &decoded {
        Ok(r) => {
            let text = std::str::from_utf8(body).expect("a decoded body is UTF-8");
            assert!(
                text.trim_start().starts_with('{'),
                "a request is a JSON object"
            );
            let again =
                InvalidationRequest::decode(&r.encode()).expect("re-encoded request decodes");
            assert_eq!(&again, r);
            // Digests are pure and ignore the order of ids and keys.
            assert_eq!(r.query_digest(), r.query_digest());
            let mut keys = r.index_keys.clone();
            let forward = r.content_digest(&keys);
            keys.reverse();
            assert_eq!(forward, r.content_digest(&keys));
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
    let (stamped, time) = stamp_invalidation_time(body, NOW);
    if stamped != body {
        assert_eq!(time, Some(NOW), "only an absent time is stamped");
    }
    if let Ok(r) = decoded {
        if stamped != body {
            let s = InvalidationRequest::decode(&stamped).expect("a stamped request still decodes");
            assert_eq!(s.invalidation_time, Some(NOW));
            assert_eq!(
                InvalidationRequest {
                    invalidation_time: r.invalidation_time,
                    ..s
                },
                r
            );
        } else if let Some(t) = time {
            assert_eq!(r.invalidation_time, Some(t));
        }
    }
});
