//! Partitions whose records wait while a consumer does not move.
//!
//! Consumer lag rises with traffic and falls as a consumer catches up. A partition whose fetch
//! position and application position both stand still while records wait in it is something
//! else: every fetch coming back empty (a broker that cannot read the partition within the
//! consumer's `fetch.wait.max.ms` answers with nothing, every time, and tells nothing of the
//! partition's end either), a paused partition, a consumer that lost its fetch session. The
//! statistics reports give each partition's positions; a partition that has not moved for a while
//! is a suspect, and the consumer's own loop asks the broker for its end (a `ListOffsets` request,
//! once per suspect and period) to tell a stalled partition from an idle one. [`Stalls`] does
//! both for a consumer and says what it finds in the logs and in a gauge.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// What changed for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing moved for `stalled_for` although `waiting` records (at least) wait.
    Stalled { waiting: i64, stalled_for: Duration },
    /// A partition reported stalled moved again, `stalled_for` after it last moved.
    Resumed { stalled_for: Duration },
}

/// A partition that has not moved for the watch's period and whose end should be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    pub topic: String,
    pub partition: i32,
    /// The next offset the consumer would fetch.
    pub position: i64,
}

#[derive(Debug)]
struct Watched {
    fetch: i64,
    app: i64,
    /// When the positions last moved (or the partition was first seen).
    since: Instant,
    /// When its end was last asked for and found not beyond its position, or not answered.
    asked: Option<Instant>,
    stalled: bool,
    seen: bool,
}

/// Remembers each partition's positions between statistics reports.
#[derive(Debug)]
pub struct StallWatch {
    after: Duration,
    partitions: HashMap<(String, i32), Watched>,
}

impl StallWatch {
    /// Partitions that have not moved for `after` become suspects.
    pub fn new(after: Duration) -> Self {
        Self { after, partitions: HashMap::new() }
    }

    /// One partition of a statistics report taken at `now`: `fetch` is the next offset to fetch
    /// (librdkafka's `next_offset`), `app` the offset after the last record handed over
    /// (`app_offset`). Says when a partition reported stalled moves again.
    pub fn record(&mut self, topic: &str, partition: i32, fetch: i64, app: i64, now: Instant) -> Option<Change> {
        let key = (topic.to_string(), partition);
        let fresh = Watched { fetch, app, since: now, asked: None, stalled: false, seen: true };
        let Some(w) = self.partitions.get_mut(&key) else {
            self.partitions.insert(key, fresh);
            return None;
        };
        w.seen = true;
        if fetch == w.fetch && app == w.app {
            return None;
        }
        let change = w.stalled.then(|| Change::Resumed { stalled_for: now.saturating_duration_since(w.since) });
        *w = fresh;
        change
    }

    /// Ends a report: partitions it did not mention (revoked, or no longer fetched) are forgotten.
    pub fn sweep(&mut self) {
        self.partitions.retain(|_, w| std::mem::take(&mut w.seen));
    }

    /// Partitions unmoved for the watch's period, not reported yet, and not found idle within the
    /// last period: their end is worth a request to the broker.
    pub fn suspects(&self, now: Instant) -> Vec<Suspect> {
        let mut out: Vec<Suspect> = self
            .partitions
            .iter()
            .filter(|(_, w)| w.fetch >= 0 && !w.stalled && now.saturating_duration_since(w.since) >= self.after)
            .filter(|(_, w)| w.asked.is_none_or(|t| now.saturating_duration_since(t) >= self.after))
            .map(|((topic, partition), w)| Suspect { topic: topic.clone(), partition: *partition, position: w.fetch })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// The broker's answer for a suspect: the partition's `end` (its high watermark, or a lower
    /// bound of it). Records beyond the unmoved position make it stalled, once per stall.
    pub fn confirm(&mut self, topic: &str, partition: i32, end: i64, now: Instant) -> Option<Change> {
        let w = self.partitions.get_mut(&(topic.to_string(), partition))?;
        if w.stalled {
            return None;
        }
        if end <= w.fetch {
            w.asked = Some(now);
            return None;
        }
        w.stalled = true;
        Some(Change::Stalled { waiting: end - w.fetch, stalled_for: now.saturating_duration_since(w.since) })
    }

    /// The broker did not answer for a suspect: it is asked again a period later, not at once.
    pub fn unanswered(&mut self, topic: &str, partition: i32, now: Instant) {
        if let Some(w) = self.partitions.get_mut(&(topic.to_string(), partition)) {
            w.asked = Some(now);
        }
    }

    /// How many partitions are stalled now.
    pub fn stalled(&self) -> usize {
        self.partitions.values().filter(|w| w.stalled).count()
    }
}

/// Stall detection for one consumer: fed by its statistics reports, checked from its poll loop,
/// logged with target `kafka` and counted in a gauge.
#[derive(Debug)]
pub struct Stalls {
    watch: Mutex<StallWatch>,
    gauge: prometheus::IntGauge,
    /// The consumer's `fetch.wait.max.ms`, named in warnings.
    fetch_wait_ms: String,
    /// What an operator can do, for the warning: the service's setting for a longer fetch wait.
    remedy: &'static str,
    last_check: Mutex<Option<Instant>>,
}

impl Stalls {
    /// Stall detection for the consumer `config` (its settings and overrides all given) will
    /// make: partitions unmoved for `after` while records wait are reported with `remedy`, and
    /// `gauge` counts them. Turns on the statistics reports it needs (every 5 s) unless `config`
    /// has its own interval.
    pub fn new(after: Duration, gauge: prometheus::IntGauge, config: &mut ClientConfig, remedy: &'static str) -> Self {
        if config.get("statistics.interval.ms").is_none() {
            config.set("statistics.interval.ms", "5000");
        }
        // librdkafka's default when the consumer sets none.
        let fetch_wait_ms = config.get("fetch.wait.max.ms").unwrap_or("500").to_string();
        Self { watch: Mutex::new(StallWatch::new(after)), gauge, fetch_wait_ms, remedy, last_check: Mutex::new(None) }
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, StallWatch> {
        self.watch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A statistics report: the positions of the partitions the consumer fetches.
    pub fn on_stats(&self, stats: &rdkafka::Statistics) {
        let now = Instant::now();
        let mut watch = self.watch();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || !p.desired {
                    continue;
                }
                if let Some(Change::Resumed { stalled_for }) = watch.record(topic, *partition, p.next_offset, p.app_offset, now) {
                    tracing::info!(target: "kafka", topic = topic.as_str(), partition, stalled_s = stalled_for.as_secs(), "partition moving again");
                }
            }
        }
        watch.sweep();
        self.gauge.set(watch.stalled() as i64);
    }

    /// From the consumer's poll loop: at most once a second, asks the broker for the end of one
    /// suspect and warns if records wait beyond its position. The request holds the loop for a
    /// round trip (at most half a second when the broker does not answer, after which that
    /// partition waits a period before it is asked again), so a broker that is down cannot hold
    /// a loop that has other partitions to serve, or a shutdown, for long.
    pub fn check<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        {
            let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Some(s) = self.watch().suspects(Instant::now()).into_iter().next() else { return };
        // On brokers whose ListOffsets answers with the last batch's first offset rather than the
        // partition's end (Tansu), this is a lower bound: enough to tell records wait.
        let answer = consumer.fetch_watermarks(&s.topic, s.partition, Duration::from_millis(500));
        let mut watch = self.watch();
        let end = match answer {
            Ok((_, high)) => high,
            Err(e) => {
                tracing::debug!(target: "kafka", topic = s.topic.as_str(), partition = s.partition, error = %e, "cannot read the partition's end");
                watch.unanswered(&s.topic, s.partition, Instant::now());
                return;
            }
        };
        if let Some(Change::Stalled { waiting, stalled_for }) = watch.confirm(&s.topic, s.partition, end, Instant::now()) {
            self.gauge.set(watch.stalled() as i64);
            tracing::warn!(
                target: "kafka",
                topic = s.topic.as_str(),
                partition = s.partition,
                position = s.position,
                waiting,
                stalled_s = stalled_for.as_secs(),
                fetch_wait_ms = self.fetch_wait_ms.as_str(),
                remedy = self.remedy,
                "partition stalled: records wait but none has been fetched for a while; fetches may be coming \
                 back empty (a broker that cannot read the partition within fetch.wait.max.ms answers with \
                 nothing): see remedy"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> impl Fn(u64) -> Instant {
        let t0 = Instant::now();
        move |secs| t0 + Duration::from_secs(secs)
    }

    fn suspect(topic: &str, partition: i32, position: i64) -> Suspect {
        Suspect { topic: topic.into(), partition, position }
    }

    #[test]
    fn an_unmoved_partition_with_records_beyond_it_is_stalled_once_and_resumes_when_it_moves() {
        let s = clock();
        let mut w = StallWatch::new(Duration::from_secs(30));
        assert_eq!(w.record("t", 0, 100, 100, s(0)), None);
        assert_eq!(w.record("t", 0, 100, 100, s(25)), None);
        assert_eq!(w.suspects(s(25)), []);
        assert_eq!(w.record("t", 0, 100, 100, s(30)), None);
        assert_eq!(w.suspects(s(30)), [suspect("t", 0, 100)]);
        assert_eq!(w.confirm("t", 0, 140, s(31)), Some(Change::Stalled { waiting: 40, stalled_for: Duration::from_secs(31) }));
        assert_eq!(w.stalled(), 1);
        assert_eq!(w.suspects(s(40)), [], "reported once per stall");
        assert_eq!(w.confirm("t", 0, 150, s(40)), None);
        assert_eq!(w.record("t", 0, 100, 100, s(45)), None);
        assert_eq!(w.record("t", 0, 140, 100, s(50)), Some(Change::Resumed { stalled_for: Duration::from_secs(50) }));
        assert_eq!(w.stalled(), 0);
        assert_eq!(w.record("t", 0, 140, 140, s(55)), None);
    }

    #[test]
    fn moving_partitions_are_not_suspects_and_idle_ones_are_asked_about_once_a_period() {
        let s = clock();
        let mut w = StallWatch::new(Duration::from_secs(30));
        // Busy and behind, but the application keeps taking records (the fetch position alone
        // moving counts too).
        for (i, fetch, app) in [(0, 500, 10), (20, 500, 20), (40, 900, 20), (60, 900, 40)] {
            w.record("t", 0, fetch, app, s(i));
            w.record("t", 1, 7, 7, s(i));
        }
        // Same partition number, another topic: watched apart.
        w.record("u", 0, 3, 3, s(60));
        assert_eq!(w.suspects(s(60)), [suspect("t", 1, 7)]);
        // Idle: its end is its position. Not asked about again until another period has passed.
        assert_eq!(w.confirm("t", 1, 7, s(61)), None);
        assert_eq!(w.suspects(s(80)), []);
        w.record("t", 0, 950, 50, s(80));
        assert_eq!(w.suspects(s(91)), [suspect("t", 1, 7), suspect("u", 0, 3)]);
        // A lower bound of the end that is not beyond the position is no stall either.
        assert_eq!(w.confirm("u", 0, 2, s(91)), None);
        assert_eq!(w.stalled(), 0);
        // A partition the watch has forgotten is not confirmed.
        assert_eq!(w.confirm("v", 0, 100, s(91)), None);
    }

    #[test]
    fn a_suspect_the_broker_does_not_answer_for_is_asked_about_again_a_period_later() {
        let s = clock();
        let mut w = StallWatch::new(Duration::from_secs(30));
        w.record("t", 0, 4, 4, s(0));
        assert_eq!(w.suspects(s(30)), [suspect("t", 0, 4)]);
        w.unanswered("t", 0, s(30));
        assert_eq!(w.suspects(s(31)), []);
        assert_eq!(w.suspects(s(59)), []);
        assert_eq!(w.suspects(s(60)), [suspect("t", 0, 4)]);
        assert_eq!(w.confirm("t", 0, 9, s(60)), Some(Change::Stalled { waiting: 5, stalled_for: Duration::from_secs(60) }));
    }

    #[test]
    fn a_partition_missing_from_a_report_starts_afresh() {
        let s = clock();
        let mut w = StallWatch::new(Duration::from_secs(30));
        w.record("t", 0, 5, 5, s(0));
        w.sweep();
        // Revoked in the next report...
        w.record("t", 1, 0, 0, s(20));
        w.sweep();
        // ...and assigned again later: its clock starts over.
        w.record("t", 0, 5, 5, s(40));
        w.sweep();
        assert_eq!(w.suspects(s(69)), []);
        assert_eq!(w.suspects(s(70)), [suspect("t", 0, 5)]);
    }

    #[test]
    fn stall_detection_turns_on_statistics_unless_the_consumer_has_its_own_interval() {
        let gauge = || prometheus::IntGauge::new("stalled", "test").unwrap();
        let mut plain = ClientConfig::new();
        let stalls = Stalls::new(Duration::from_secs(30), gauge(), &mut plain, "remedy");
        assert_eq!(plain.get("statistics.interval.ms"), Some("5000"));
        assert_eq!(stalls.fetch_wait_ms, "500", "librdkafka's default");
        let mut own = ClientConfig::new();
        own.set("statistics.interval.ms", "500").set("fetch.wait.max.ms", "0");
        let stalls = Stalls::new(Duration::from_secs(30), gauge(), &mut own, "remedy");
        assert_eq!(own.get("statistics.interval.ms"), Some("500"));
        assert_eq!(stalls.fetch_wait_ms, "0");
    }

    #[test]
    fn a_partition_without_a_fetch_position_is_not_suspected() {
        let s = clock();
        let mut w = StallWatch::new(Duration::from_secs(1));
        w.record("t", 0, -1001, -1001, s(0));
        assert_eq!(w.suspects(s(10)), []);
    }
}
