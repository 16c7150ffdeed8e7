//! The retry window of a message (SPEC §6) and the sane range of its
//! `invalidationTime` (SPEC §11, "Ingress hygiene").
//!
//! A message's window starts at its body's `invalidationTime`, or at the
//! `x-window-start` header when that is later: `fleet dlq replay
//! --reset-retries` stamps it, so an operator gives a message a whole new
//! window without rewriting the producer's body. The retry handler parks a
//! message once `now - window start > retry.window`.
//!
//! Where a request enters (the dispatcher, ingest), its time must be sane:
//! neither its `invalidationTime` nor its window start may lie more than
//! `retry.clock_slack` in the future, and its window start may not be older
//! than `retry.window + retry.clock_slack` (such a message could only be
//! parked). Judging the window start, not the body's time, is what lets a
//! message replayed with a reset through. Every computation saturates:
//! extreme values (`i64::MIN`, `i64::MAX`) are refused, never overflow.

use std::time::Duration;

use crate::config::RetryConfig;

/// The instant the window of a message counts from: the later of its
/// `invalidationTime` and its `x-window-start`.
pub fn start(invalidation_time: i64, window_start: Option<i64>) -> i64 {
    window_start.map_or(invalidation_time, |w| w.max(invalidation_time))
}

/// How long ago `start` was; zero when it lies in the future.
pub fn age(now: i64, start: i64) -> Duration {
    Duration::from_millis(u64::try_from(now.saturating_sub(start)).unwrap_or(0))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A time for people: RFC 3339 when representable, else the raw number.
fn shown(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => format!("{ms} ({})", t.to_rfc3339()),
        None => ms.to_string(),
    }
}

/// The error class of a time outside the sane range: a permanent failure.
pub const BAD_TIME: &str = "bad_invalidation_time";

/// [`check`] now, with the configured window and clock slack.
pub fn check_now(
    invalidation_time: Option<i64>,
    window_start: Option<i64>,
    cfg: &RetryConfig,
) -> Result<(), String> {
    check(
        invalidation_time,
        window_start,
        crate::message::now_millis(),
        cfg.window,
        cfg.clock_slack,
    )
}

/// Checks that a message's times are sane (see the module docs); the error
/// says which value is wrong and why. `invalidation_time` is `None` when the
/// message has none (the first failure stamps one).
pub fn check(
    invalidation_time: Option<i64>,
    window_start: Option<i64>,
    now: i64,
    window: Duration,
    slack: Duration,
) -> Result<(), String> {
    let latest = now.saturating_add(millis(slack));
    let earliest = now
        .saturating_sub(millis(window))
        .saturating_sub(millis(slack));
    if let Some(t) = invalidation_time {
        if t < 0 {
            return Err(format!(
                "invalidationTime {t} is before 1970: it must be milliseconds since the epoch"
            ));
        }
        if t > latest {
            return Err(format!(
                "invalidationTime {} is more than retry.clock_slack ({}) in the future; \
                 it must be milliseconds since the epoch",
                shown(t),
                humantime::format_duration(slack)
            ));
        }
    }
    if let Some(w) = window_start {
        if w > latest {
            return Err(format!(
                "x-window-start {} is more than retry.clock_slack ({}) in the future",
                shown(w),
                humantime::format_duration(slack)
            ));
        }
    }
    let from = start(invalidation_time.unwrap_or(now), window_start);
    if from < earliest {
        return Err(format!(
            "invalidationTime {} is older than the retry window ({}) plus retry.clock_slack ({}): \
             the message could only be parked. A message an operator means to run again is \
             replayed with `fleet dlq replay --reset-retries`, which gives it a new window \
             (x-window-start) without changing its body",
            shown(from),
            humantime::format_duration(window),
            humantime::format_duration(slack)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn ok(t: Option<i64>, w: Option<i64>) -> bool {
        check(
            t,
            w,
            NOW,
            Duration::from_secs(7200),
            Duration::from_secs(300),
        )
        .is_ok()
    }

    #[test]
    fn the_window_counts_from_the_later_of_time_and_window_start() {
        assert_eq!(start(5, None), 5);
        assert_eq!(start(5, Some(9)), 9);
        assert_eq!(start(9, Some(5)), 9);
        assert_eq!(age(NOW, NOW - 1000), Duration::from_secs(1));
        assert_eq!(age(NOW, NOW + 1000), Duration::ZERO);
        assert_eq!(
            age(i64::MAX, i64::MIN),
            Duration::from_millis(i64::MAX as u64)
        );
        assert_eq!(age(i64::MIN, i64::MAX), Duration::ZERO);
    }

    #[test]
    fn sane_times_pass_and_the_rest_is_refused_without_overflow() {
        assert!(ok(None, None));
        assert!(ok(Some(NOW), None));
        assert!(ok(Some(NOW - 2 * HOUR), None));
        assert!(ok(Some(NOW + 4 * 60_000), None), "within the clock slack");
        assert!(!ok(Some(NOW + HOUR), None));
        assert!(!ok(Some(NOW - 3 * HOUR), None), "could only be parked");
        assert!(!ok(Some(1_700_000_000), None), "seconds, not milliseconds");
        assert!(!ok(Some(-1), None));
        // Replayed with a reset: judged from the new window, not the old time.
        assert!(ok(Some(NOW - 30 * 24 * HOUR), Some(NOW)));
        assert!(!ok(Some(NOW - 30 * 24 * HOUR), Some(NOW - 3 * HOUR)));
        assert!(
            !ok(Some(NOW), Some(NOW + HOUR)),
            "a window starting tomorrow"
        );
        assert!(
            !ok(Some(-5), Some(NOW)),
            "before the epoch, whatever the window"
        );
        for extreme in [i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1] {
            assert!(!ok(Some(extreme), None), "{extreme}");
        }
        // An old window start is the later of the two: the time decides.
        assert!(ok(Some(NOW), Some(i64::MIN)));
        assert!(!ok(Some(NOW), Some(i64::MAX)));
        // No combination of extremes overflows (debug builds would panic).
        let extremes = [i64::MIN, -1, 0, NOW, i64::MAX];
        for t in extremes {
            for w in extremes {
                for now in extremes {
                    let _ = check(Some(t), Some(w), now, Duration::MAX, Duration::MAX);
                    let _ = check(Some(t), None, now, Duration::ZERO, Duration::ZERO);
                }
            }
        }
        let e = check(
            Some(NOW - 3 * HOUR),
            None,
            NOW,
            Duration::from_secs(7200),
            Duration::from_secs(300),
        )
        .unwrap_err();
        assert!(e.contains("--reset-retries"), "{e}");
    }
}
