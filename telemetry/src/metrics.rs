//! The Prometheus registry every service exports on `/metrics`, with process metrics, the
//! bucket layouts chosen for this workload, and exemplars: the latency histograms keep, per
//! bucket, the latest observation made in a trace that is exported, and `/metrics` shows them in
//! the OpenMetrics format to a scraper that asks for it (Prometheus does), so that a latency
//! spike on a dashboard leads to the trace of a request in it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

/// Sub-millisecond to seconds: scoring runs in microseconds per record, a degraded or congested
/// path in hundreds of milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Probabilities in twentieths.
pub const PROBABILITY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0,
];

/// Records per poll batch.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];

/// A registry with the process collector (CPU, memory, file descriptors) registered.
pub fn registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(process::ProcessMetrics::new()));
    }
    registry
}

#[cfg(target_os = "linux")]
mod process {
    use prometheus::core::{Collector, Desc};
    use prometheus::process_collector::ProcessCollector;
    use prometheus::proto::MetricFamily;
    use prometheus::{Counter, Opts};

    const CPU: &str = "process_cpu_seconds_total";

    /// The `prometheus` crate's process metrics, except that `process_cpu_seconds_total` is in
    /// seconds to the kernel's tick (10 ms) as other Prometheus clients give it, not in whole
    /// seconds: the crate's counter moves once per second of CPU, so a rate over a minute moves
    /// in steps of 1/60 of a core, and a service using 1 % of one reads 0 most minutes.
    pub struct ProcessMetrics {
        inner: ProcessCollector,
        cpu: Counter,
    }

    impl ProcessMetrics {
        pub fn new() -> Self {
            let cpu = Counter::with_opts(Opts::new(CPU, "Total user and system CPU time spent in seconds.")).expect("valid metric");
            Self { inner: ProcessCollector::for_self(), cpu }
        }
    }

    /// The process's user and system CPU time so far, all threads.
    pub fn cpu_seconds() -> Option<f64> {
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
    }

    impl Collector for ProcessMetrics {
        fn desc(&self) -> Vec<&Desc> {
            // The inner collector describes `process_cpu_seconds_total` by the same name and help.
            self.inner.desc()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let mut families = self.inner.collect();
            families.retain(|f| f.name() != CPU);
            if let Some(total) = cpu_seconds() {
                // Concurrent scrapes may both see the old value: the later one adds nothing.
                let delta = total - self.cpu.get();
                if delta > 0.0 {
                    self.cpu.inc_by(delta);
                }
                families.extend(self.cpu.collect());
            }
            families
        }
    }
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::with_capacity(16 * 1024);
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Registers `metric` and hands it back, so a metrics struct can be built in one expression.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        panic!("metric registered twice or with a bad name: {e}");
    }
    metric
}

/// One observation's value, its trace and when it was made.
#[derive(Debug, Clone, PartialEq)]
struct Exemplar {
    trace_id: String,
    value: f64,
    at_seconds: f64,
}

/// The latest exemplar per bucket of each histogram series (name and labels) of the process.
#[derive(Debug, Default)]
pub struct Exemplars(Mutex<HashMap<String, Vec<Option<Exemplar>>>>);

/// The process's exemplars: one registry per service process, rendered by [`render_openmetrics`].
pub fn exemplars() -> &'static Exemplars {
    static EXEMPLARS: OnceLock<Exemplars> = OnceLock::new();
    EXEMPLARS.get_or_init(Exemplars::default)
}

/// `name` and the label pairs sorted by label name, as one key.
fn series_key<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut labels: Vec<(&str, &str)> = labels.collect();
    labels.sort_unstable();
    let mut key = name.to_string();
    for (k, v) in labels {
        let _ = write!(key, "\u{0}{k}\u{0}{v}");
    }
    key
}

impl Exemplars {
    /// Keeps `value`, observed in the trace `trace_id` (32 hex digits), as the exemplar of the
    /// bucket it falls in (`bounds`: the histogram's upper bounds, `+Inf` implied) of the series
    /// `name{labels}`. Callers give only observations made in a trace that is exported: an
    /// exemplar must lead somewhere.
    pub fn record(&self, name: &str, labels: &[(&str, &str)], bounds: &[f64], value: f64, trace_id: &str) {
        let bucket = bounds.iter().position(|&b| value <= b).unwrap_or(bounds.len());
        let at_seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let exemplar = Exemplar { trace_id: trace_id.to_string(), value, at_seconds };
        let key = series_key(name, labels.iter().copied());
        let mut all = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let buckets = all.entry(key).or_insert_with(|| vec![None; bounds.len() + 1]);
        if let Some(slot) = buckets.get_mut(bucket) {
            *slot = Some(exemplar);
        }
    }

    fn of_series(&self, name: &str, labels: &[LabelPair]) -> Option<Vec<Option<Exemplar>>> {
        let key = series_key(name, labels.iter().map(|l| (l.name(), l.value())));
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned()
    }
}

/// Whether an HTTP `Accept` header asks for the OpenMetrics text format.
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.contains("application/openmetrics-text")
}

/// The content type of [`render_openmetrics`]' output.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the OpenMetrics text format, with `exemplars` on histogram buckets. Series
/// names, labels and values are those of [`render`] (counters keep their `_total` samples; a
/// counter named otherwise is given as `unknown` so that its name does not change).
pub fn render_openmetrics(registry: &Registry, exemplars: &Exemplars) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for family in registry.gather() {
        write_family(&mut out, &family, exemplars);
    }
    out.push_str("# EOF\n");
    out
}

fn write_family(out: &mut String, family: &MetricFamily, exemplars: &Exemplars) {
    let name = family.name();
    let (om_name, om_type) = match family.get_field_type() {
        MetricType::COUNTER => match name.strip_suffix("_total") {
            Some(base) => (base, "counter"),
            None => (name, "unknown"),
        },
        MetricType::GAUGE => (name, "gauge"),
        MetricType::HISTOGRAM => (name, "histogram"),
        MetricType::SUMMARY => (name, "summary"),
        // Not made by this crate's metric types.
        MetricType::UNTYPED => return,
    };
    let _ = writeln!(out, "# TYPE {om_name} {om_type}");
    if !family.help().is_empty() {
        let _ = writeln!(out, "# HELP {om_name} {}", escape(family.help()));
    }
    for m in family.get_metric() {
        let labels = m.get_label();
        match family.get_field_type() {
            MetricType::UNTYPED => {}
            MetricType::COUNTER => sample(out, name, labels, None, m.get_counter().get_value()),
            MetricType::GAUGE => sample(out, name, labels, None, m.get_gauge().get_value()),
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                let series = exemplars.of_series(name, labels);
                // Bucket i's exemplar, if its value lies in (lower, upper] — it does unless the
                // histogram's bounds differ from those it was recorded with.
                let exemplar = |i: usize, lower: f64, upper: f64| {
                    series.as_ref().and_then(|s| s.get(i).cloned().flatten()).filter(|e| e.value > lower && e.value <= upper)
                };
                let bucket_name = format!("{name}_bucket");
                let mut lower = f64::NEG_INFINITY;
                for (i, b) in h.get_bucket().iter().enumerate() {
                    let le = b.upper_bound();
                    sample(out, &bucket_name, labels, Some(&format_value(le)), b.cumulative_count() as f64);
                    if let Some(e) = exemplar(i, lower, le) {
                        with_exemplar(out, &e);
                    }
                    lower = le;
                }
                if lower != f64::INFINITY {
                    sample(out, &bucket_name, labels, Some("+Inf"), h.get_sample_count() as f64);
                    if let Some(e) = exemplar(h.get_bucket().len(), lower, f64::INFINITY) {
                        with_exemplar(out, &e);
                    }
                }
                sample(out, &format!("{name}_sum"), labels, None, h.get_sample_sum());
                sample(out, &format!("{name}_count"), labels, None, h.get_sample_count() as f64);
            }
            MetricType::SUMMARY => {
                let s = m.get_summary();
                for q in s.get_quantile() {
                    let mut with_quantile = labels.to_vec();
                    let mut pair = LabelPair::default();
                    pair.set_name("quantile".to_string());
                    pair.set_value(format_value(q.quantile()));
                    with_quantile.push(pair);
                    sample(out, name, &with_quantile, None, q.value());
                }
                sample(out, &format!("{name}_sum"), labels, None, s.sample_sum());
                sample(out, &format!("{name}_count"), labels, None, s.sample_count() as f64);
            }
        }
    }
}

/// One sample line.
fn sample(out: &mut String, name: &str, labels: &[LabelPair], le: Option<&str>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().map(|l| (l.name(), l.value())).chain(le.map(|le| ("le", le))) {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(value));
}

/// Appends ` # {trace_id="..."} value timestamp` to the sample line just written (before its
/// newline).
fn with_exemplar(out: &mut String, e: &Exemplar) {
    if out.ends_with('\n') {
        out.pop();
    }
    let _ = writeln!(out, " # {{trace_id=\"{}\"}} {} {:.3}", escape(&e.trace_id), format_value(e.value), e.at_seconds);
}

/// Numbers as the Prometheus text format writes them (so series match across the two formats),
/// with OpenMetrics' names for infinities and NaN.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".to_string() } else { "-Inf".to_string() }
    } else {
        v.to_string()
    }
}

/// Escapes `\`, `"` and newlines in label values and help text.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts};

    fn sample_lines(text: &str) -> Vec<String> {
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(" # ").next().unwrap_or(l).to_string())
            .collect();
        lines.sort();
        lines
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_time_is_exported_to_the_tick_not_in_whole_seconds() {
        let registry = registry();
        let cpu = || {
            let families = registry.gather();
            let f = families.iter().find(|f| f.name() == "process_cpu_seconds_total").expect("exported");
            assert_eq!(f.get_field_type(), MetricType::COUNTER);
            f.get_metric()[0].get_counter().get_value()
        };
        // Busy until the process's CPU time has grown and is not a whole number of seconds, so
        // that a counter of whole seconds cannot fall between the readings around the scrape.
        let start = process::cpu_seconds().unwrap();
        let mut x = 0u64;
        let before = loop {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let now = process::cpu_seconds().unwrap();
            if now - start >= 0.05 && (0.05..0.95).contains(&now.fract()) {
                break now;
            }
        };
        let scraped = cpu();
        let after = process::cpu_seconds().unwrap();
        assert!(before <= scraped && scraped <= after, "{before} <= {scraped} <= {after}");
        // A counter: a later scrape never goes back.
        assert!(cpu() >= scraped);
        // The other process metrics are still there, once each.
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_string()).collect();
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
            assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name} in {names:?}");
        }
    }

    #[test]
    fn openmetrics_has_the_text_formats_series_and_the_exemplars_of_each_bucket() {
        let registry = Registry::new();
        let requests = register(&registry, IntCounterVec::new(Opts::new("requests_total", "Requests \"served\".\nAll."), &["route"]).unwrap());
        let odd = register(&registry, prometheus::Counter::new("odd_seconds", "A counter without _total.").unwrap());
        let queue = register(&registry, Gauge::new("queue_depth", "Waiting.").unwrap());
        let latency =
            register(&registry, HistogramVec::new(HistogramOpts::new("latency_seconds", "Latency.").buckets(vec![0.01, 0.1, 1.0]), &["route"]).unwrap());
        requests.with_label_values(&["/a\"b"]).inc_by(3);
        odd.inc_by(1.5);
        queue.set(f64::INFINITY);
        for v in [0.005, 0.05, 0.07, 5.0] {
            latency.with_label_values(&["/v1/predict"]).observe(v);
        }
        let exemplars = Exemplars::default();
        exemplars.record("latency_seconds", &[("route", "/v1/predict")], &[0.01, 0.1, 1.0], 0.05, "aaaa");
        exemplars.record("latency_seconds", &[("route", "/v1/predict")], &[0.01, 0.1, 1.0], 0.07, "bbbb");
        exemplars.record("latency_seconds", &[("route", "/v1/predict")], &[0.01, 0.1, 1.0], 5.0, "cccc");
        exemplars.record("latency_seconds", &[("route", "/other")], &[0.01, 0.1, 1.0], 0.005, "dddd");
        // Recorded with other bounds than the histogram's: its value is not in the bucket its
        // slot stands for, so it is left out rather than shown on the wrong bucket.
        exemplars.record("latency_seconds", &[("route", "/mismatched")], &[0.5], 0.3, "eeee");
        latency.with_label_values(&["/mismatched"]).observe(0.3);

        let om = render_openmetrics(&registry, &exemplars);
        assert!(om.ends_with("# EOF\n"), "{om}");
        for line in [
            "# TYPE requests counter",
            "# HELP requests Requests \\\"served\\\".\\nAll.",
            "requests_total{route=\"/a\\\"b\"} 3",
            "# TYPE odd_seconds unknown",
            "odd_seconds 1.5",
            "# TYPE queue_depth gauge",
            "queue_depth +Inf",
            "# TYPE latency_seconds histogram",
            "latency_seconds_bucket{route=\"/v1/predict\",le=\"0.01\"} 1",
            "latency_seconds_count{route=\"/v1/predict\"} 4",
        ] {
            assert!(om.lines().any(|l| l == line), "no line `{line}` in\n{om}");
        }
        // The latest observation of each bucket, in that bucket's line; none for the other route.
        let with = |prefix: &str| om.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}\n{om}")).to_string();
        with("latency_seconds_bucket{route=\"/v1/predict\",le=\"0.1\"} 3 # {trace_id=\"bbbb\"} 0.07 ");
        with("latency_seconds_bucket{route=\"/v1/predict\",le=\"+Inf\"} 4 # {trace_id=\"cccc\"} 5 ");
        assert!(!with("latency_seconds_bucket{route=\"/v1/predict\",le=\"0.01\"}").contains('#'), "{om}");
        assert_eq!(om.matches("trace_id").count(), 2, "{om}");
        // Same series and values as the Prometheus text format (infinity spelled as each format does).
        assert_eq!(sample_lines(&om), sample_lines(&render(&registry).replace(" inf", " +Inf")));
    }

    #[test]
    fn openmetrics_is_served_only_to_who_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain; version=0.0.4"));
    }
}
