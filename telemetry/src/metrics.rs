//! The Prometheus registry every service exports on `/metrics`, with process metrics, and the
//! bucket layouts chosen for this workload.

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
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    }
    registry
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
