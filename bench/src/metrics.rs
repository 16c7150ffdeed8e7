//! What a worker subprocess says about itself on `/metrics`: its search
//! concurrency limit over a run (sampled), and the counters that show a
//! transient failure (retried messages, search errors, back-offs).

use std::time::Duration;

use fleet_shared::search::Search;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the sampler reads `/metrics` during a run.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// One `/metrics` text, parsed into (name, labels, value) lines.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    lines: Vec<(String, String, f64)>,
}

impl Scrape {
    /// Parses the Prometheus text format (comments and blank lines skipped).
    pub fn parse(text: &str) -> Self {
        let lines = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let value: f64 = value.trim().parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_string(), labels.to_string(), value))
            })
            .collect();
        Self { lines }
    }

    /// The series of `name` whose labels contain each of `with`
    /// (`outcome="retried"`) and none of `without`: (labels, value).
    fn series<'a>(
        &'a self,
        name: &'a str,
        with: &'a [&str],
        without: &'a [&str],
    ) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.lines
            .iter()
            .filter(move |(n, labels, _)| {
                n == name
                    && with.iter().all(|w| labels.contains(w))
                    && !without.iter().any(|w| labels.contains(w))
            })
            .map(|(_, labels, v)| (labels.as_str(), *v))
    }

    /// The sum of every series of `name` whose labels contain each of `with`
    /// (`outcome="retried"`) and none of `without`.
    pub fn sum(&self, name: &str, with: &[&str], without: &[&str]) -> f64 {
        self.series(name, with, without).map(|(_, v)| v).sum()
    }

    /// The cumulative counts of histogram `name`'s buckets, summed over the
    /// series whose labels contain each of `with`, by upper bound
    /// (ascending; `+Inf` last).
    pub fn buckets(&self, name: &str, with: &[&str]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for (labels, value) in self.series(&bucket, with, &[]) {
            let Some(le) = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le=\""))
                .map(|v| v.trim_end_matches('"'))
                .and_then(|v| v.parse::<f64>().ok())
            else {
                continue;
            };
            match by_le.iter_mut().find(|(l, _)| *l == le) {
                Some((_, count)) => *count += value,
                None => by_le.push((le, value)),
            }
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        by_le
    }

    /// The sum of the series of gauge `name` whose labels contain each of
    /// `with`; `None` when there is none.
    pub fn gauge(&self, name: &str, with: &[&str]) -> Option<f64> {
        let mut series = self.series(name, with, &[]).peekable();
        series.peek()?;
        Some(series.map(|(_, v)| v).sum())
    }
}

/// The upper bound (seconds) of the bucket that holds quantile `q` of what
/// histogram `name` recorded between the scrapes `before` and `after`, over
/// the series whose labels contain each of `with`: the quantile is at most
/// that. `None` when nothing was recorded; infinite past the last bound.
pub fn quantile_bound(
    before: &Scrape,
    after: &Scrape,
    name: &str,
    with: &[&str],
    q: f64,
) -> Option<f64> {
    let earlier = before.buckets(name, with);
    let recorded: Vec<(f64, f64)> = after
        .buckets(name, with)
        .into_iter()
        .map(|(le, count)| {
            let was = earlier
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c);
            (le, count - was)
        })
        .collect();
    let total = recorded.last().map_or(0.0, |(_, c)| *c);
    if total <= 0.0 {
        return None;
    }
    recorded
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

/// Reads `url` (a worker's `/metrics`).
pub async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<Scrape> {
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(Scrape::parse(&text))
}

/// The search concurrency of a worker over a run, sampled every
/// [`SAMPLE_EVERY`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LimitSeen {
    pub samples: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// Most search requests seen in flight at one sample.
    pub in_flight_max: f64,
}

impl LimitSeen {
    pub fn mean(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.sum / self.samples as f64
        }
    }

    fn add(&mut self, limit: f64, in_flight: f64) {
        if self.samples == 0 {
            self.min = limit;
            self.max = limit;
        }
        self.samples += 1;
        self.min = self.min.min(limit);
        self.max = self.max.max(limit);
        self.sum += limit;
        self.in_flight_max = self.in_flight_max.max(in_flight);
    }
}

/// The label selector of the limit the partition worker's searches take
/// (the dispatcher's fast lane has its own).
fn shared_limit() -> String {
    format!("limiter=\"{}\"", Search::SHARED_LIMIT)
}

/// Samples the shared `fleet_search_concurrency_limit` and
/// `fleet_search_in_flight` of the worker at `url` until `stop`.
pub fn sample_limit(url: String, stop: CancellationToken) -> JoinHandle<LimitSeen> {
    tokio::spawn(async move {
        let http = crate::local_http(Duration::from_secs(2)).unwrap_or_default();
        let selector = shared_limit();
        let mut seen = LimitSeen::default();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Ok(s) = scrape(&http, &url).await {
                        let shared = [selector.as_str()];
                        if let Some(limit) = s.gauge("fleet_search_concurrency_limit", &shared) {
                            let in_flight = s.gauge("fleet_search_in_flight", &shared);
                            seen.add(limit, in_flight.unwrap_or(0.0));
                        }
                    }
                }
            }
        }
        seen
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_gauges() {
        let s = Scrape::parse(
            "# HELP fleet_messages_total Messages.\n\
             # TYPE fleet_messages_total counter\n\
             fleet_messages_total{worker=\"partition\",queue=\"q\",outcome=\"done\"} 25\n\
             fleet_messages_total{worker=\"partition\",queue=\"q\",outcome=\"retried\"} 2\n\
             fleet_messages_total{worker=\"dispatcher\",queue=\"b\",outcome=\"done\"} 1\n\
             fleet_search_concurrency_limit{limiter=\"shared\"} 4\n\
             fleet_search_concurrency_limit{limiter=\"fast_lane\"} 1\n\
             fleet_search_in_flight{limiter=\"shared\"} 3\n",
        );
        assert_eq!(s.sum("fleet_messages_total", &[], &[]), 28.0);
        assert_eq!(
            s.sum("fleet_messages_total", &["outcome=\"retried\""], &[]),
            2.0
        );
        assert_eq!(
            s.sum("fleet_messages_total", &[], &["outcome=\"done\""]),
            2.0
        );
        assert_eq!(
            s.gauge("fleet_search_concurrency_limit", &[&shared_limit()]),
            Some(4.0)
        );
        assert_eq!(s.gauge("fleet_search_concurrency_limit", &[]), Some(5.0));
        assert_eq!(s.gauge("fleet_search_errors_total", &[]), None);
        let mut seen = LimitSeen::default();
        seen.add(4.0, 4.0);
        seen.add(2.0, 1.0);
        assert_eq!(
            (seen.min, seen.max, seen.mean(), seen.in_flight_max),
            (2.0, 4.0, 3.0, 4.0)
        );
    }

    #[test]
    fn a_quantile_is_bounded_by_the_buckets_filled_between_two_scrapes() {
        let at = |fast: [u32; 4], bulk: u32| {
            let mut text = String::new();
            for (le, n) in ["0.01", "0.1", "1", "+Inf"].iter().zip(fast) {
                text += &format!("h_bucket{{queue=\"fast\",outcome=\"done\",le=\"{le}\"}} {n}\n");
                text +=
                    &format!("h_bucket{{queue=\"bulk\",outcome=\"done\",le=\"{le}\"}} {bulk}\n");
            }
            Scrape::parse(&text)
        };
        let before = at([10, 10, 10, 10], 5);
        // 100 more fast-lane messages: 90 within 10 ms, 9 more within
        // 100 ms, the last one within a second.
        let after = at([100, 109, 110, 110], 500);
        let fast = ["queue=\"fast\""];
        assert_eq!(quantile_bound(&before, &after, "h", &fast, 0.5), Some(0.01));
        assert_eq!(quantile_bound(&before, &after, "h", &fast, 0.99), Some(0.1));
        assert_eq!(quantile_bound(&before, &after, "h", &fast, 1.0), Some(1.0));
        assert_eq!(quantile_bound(&after, &after, "h", &fast, 0.99), None);
        let slow = at([10, 10, 10, 20], 5);
        assert_eq!(
            quantile_bound(&before, &slow, "h", &fast, 0.99),
            Some(f64::INFINITY)
        );
    }
}
