//! What exemplars cost: `Exemplars::record` per observation (the scorer makes two per record of
//! an exported trace, the gateway one per traced request), and a scrape in the OpenMetrics format
//! against the Prometheus text format, for a registry shaped like the gateway's. Prints numbers;
//! asserts nothing.
//!
//!   cargo run --release -p telemetry --example exemplar_bench
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use telemetry::metrics::{Exemplars, LATENCY_BUCKETS, register, render, render_openmetrics};

fn main() {
    let exemplars = Exemplars::default();
    let n = 1_000_000u32;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let started = Instant::now();
    for i in 0..n {
        let value = f64::from(i % 1000) / 1e4;
        exemplars.record("decision_latency_seconds", &[], LATENCY_BUCKETS, value, trace_id);
    }
    let per_record = started.elapsed().as_nanos() as f64 / f64::from(n);
    let started = Instant::now();
    for i in 0..n {
        let value = f64::from(i % 1000) / 1e4;
        exemplars.record("http_request_duration_seconds", &[("route", "/v1/predict")], LATENCY_BUCKETS, value, trace_id);
    }
    let per_labelled = started.elapsed().as_nanos() as f64 / f64::from(n);
    println!("record, unlabelled series: {per_record:.0} ns per observation");
    println!("record, one label:         {per_labelled:.0} ns per observation");

    // A registry like the gateway's: request counters by route/method/status, a latency histogram
    // by route with an exemplar in every bucket.
    let registry = telemetry::metrics::registry();
    let requests = register(&registry, IntCounterVec::new(Opts::new("http_requests_total", "Requests."), &["route", "method", "status"]).unwrap());
    let latency = register(
        &registry,
        HistogramVec::new(HistogramOpts::new("http_request_duration_seconds", "Duration.").buckets(LATENCY_BUCKETS.to_vec()), &["route"]).unwrap(),
    );
    for route in ["/v1/predict", "/v1/decisions/{transaction_id}", "/openapi.json", "unmatched"] {
        for status in ["200", "202", "400", "404", "413", "415", "422", "503"] {
            requests.with_label_values(&[route, "POST", status]).inc();
        }
        for b in LATENCY_BUCKETS {
            latency.with_label_values(&[route]).observe(*b);
            exemplars.record("http_request_duration_seconds", &[("route", route)], LATENCY_BUCKETS, *b, trace_id);
        }
    }
    let scrapes = 2000u32;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..scrapes {
        bytes = render(&registry).len();
    }
    let text = started.elapsed().as_secs_f64() * 1e6 / f64::from(scrapes);
    let started = Instant::now();
    let mut om_bytes = 0;
    for _ in 0..scrapes {
        om_bytes = render_openmetrics(&registry, &exemplars).len();
    }
    let om = started.elapsed().as_secs_f64() * 1e6 / f64::from(scrapes);
    println!("scrape, Prometheus text:    {text:.0} µs ({bytes} bytes)");
    println!("scrape, OpenMetrics + 68 exemplars: {om:.0} µs ({om_bytes} bytes)");
}
