//! Everything the dispatcher checks before it acts (`dispatcher::admit`:
//! decode, the sanity of `invalidationTime` against the window start,
//! validation against the configuration), after the runtime's size check.
//! The first byte picks the settings (the window start header, `max_ids`,
//! which index keys the fleet serves); the rest is the body.
//!
//! Invariants: no panic; a refusal is permanent with a documented class; an
//! admitted request respects every bound: 1..=max_ids ids, a field on the
//! allow-list with its rule, index keys served and de-duplicated (in the
//! order first given; every served key when none is given), a non-empty
//! request id (derived from the body when absent), and a time inside the
//! window: not before the epoch, at most the clock slack ahead, and its
//! window start no older than the window plus the slack.

#![no_main]

use std::collections::BTreeSet;

use fleet_shared::config::Config;
use fleet_shared::message::{derived_request_id, IndexKey, InvalidationRequest, DECODE_CLASSES};
use fleet_shared::runtime::HandlerError;
use fleet_shared::window;
use fleet_workers::dispatcher::admit;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_763_856_000_000;
const LIMITS: &[usize] = &[10_000, 1, 3, 50];
/// The decoder's classes, then validation's own.
const VALIDATION_CLASSES: &[&str] = &[
    "bad_invalidation_time",
    "empty_ids",
    "too_many_ids",
    "forbidden_field",
];

fuzz_target!(|data: &[u8]| {
    let Some((&settings, body)) = data.split_first() else {
        return;
    };
    let mut config = Config::default();
    let cfg = config.retry.clone();
    let (window_ms, slack_ms) = (
        cfg.window.as_millis() as i64,
        cfg.clock_slack.as_millis() as i64,
    );
    let window_start = match settings & 3 {
        0 => None,
        1 => Some(NOW),
        2 => Some(NOW - window_ms - slack_ms - 1),
        _ => Some(NOW + slack_ms + 1),
    };
    config.dispatcher.max_ids = LIMITS[(settings as usize >> 2) % LIMITS.len()];
    if settings & 0x10 != 0 {
        config.dispatcher.index_keys = vec![IndexKey::DeDe, IndexKey::TrTr];
    }
    if body.len() > config.worker.max_body_bytes {
        return; // dead-lettered by the runtime before any decoding
    }
    let mut seen = None;
    match admit(&config, body, window_start, NOW, |r| seen = Some(r.clone())) {
        Ok(v) => {
            let d = &config.dispatcher;
            let r: InvalidationRequest = seen.expect("decoded before admitted");
            assert!(!v.request.parameter_ids.is_empty());
            assert!(v.request.parameter_ids.len() <= d.max_ids);
            assert_eq!(d.fields.get(&v.request.parameter_name), Some(&v.rule));
            let mut once = BTreeSet::new();
            assert!(
                v.index_keys.iter().all(|k| once.insert(*k)),
                "index keys de-duplicated"
            );
            assert!(v.index_keys.iter().all(|k| d.index_keys.contains(k)));
            if r.index_keys.is_empty() {
                assert_eq!(v.index_keys, d.index_keys);
            } else {
                let mut first = Vec::new();
                for k in &r.index_keys {
                    if !first.contains(k) {
                        first.push(*k);
                    }
                }
                assert_eq!(v.index_keys, first);
            }
            assert!(!v.request_id.is_empty());
            match r.request_id.as_deref() {
                Some(id) if !id.is_empty() => assert_eq!(v.request_id, id),
                _ => assert_eq!(v.request_id, derived_request_id(body)),
            }
            if let Some(t) = r.invalidation_time {
                assert!(
                    (0..=NOW + slack_ms).contains(&t),
                    "time {t} outside the window"
                );
            }
            if let Some(w) = window_start {
                assert!(w <= NOW + slack_ms);
            }
            let start = window::start(r.invalidation_time.unwrap_or(NOW), window_start);
            assert!(
                start >= NOW - window_ms - slack_ms,
                "window start {start} too old"
            );
        }
        Err(HandlerError::Permanent { class, .. }) => {
            assert!(
                DECODE_CLASSES.contains(&class) || VALIDATION_CLASSES.contains(&class),
                "undocumented class {class}"
            );
        }
        Err(e) => panic!("admission failed transiently: {e}"),
    }
});
