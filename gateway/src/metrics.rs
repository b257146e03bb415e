//! Everything the gateway measures, in one place. Names are the contract with the dashboards and
//! alerts in `infra/`: change both together.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use telemetry::metrics::{LATENCY_BUCKETS, register};

/// The request duration histogram (label `route`), whose buckets keep exemplars.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";

#[derive(Clone)]
pub struct GatewayMetrics {
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub predictions: IntCounterVec,
    pub duplicates: IntCounter,
    pub waiting: IntGauge,
    pub repeated: IntCounter,
    pub errors: IntCounterVec,
    pub stalled_partitions: IntGauge,
    pub build_info: IntGauge,
}

/// `gateway_predictions_total{outcome}` values.
pub const OUTCOMES: [&str; 5] = ["decided", "pending", "replayed", "rejected", "unavailable"];
pub const ERROR_KINDS: [&str; 3] = ["produce", "decode", "consume"];

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> Self {
        let r = registry;
        let predictions = register(
            r,
            IntCounterVec::new(
                Opts::new("gateway_predictions_total", "Answers to /v1/predict by outcome: decided (200), pending (202), replayed (decision already known), rejected (4xx), unavailable (503)."),
                &["outcome"],
            )
            .expect("valid metric"),
        );
        let errors = register(r, IntCounterVec::new(Opts::new("errors_total", "Errors by kind."), &["kind"]).expect("valid metric"));
        for o in OUTCOMES {
            predictions.with_label_values(&[o]);
        }
        for k in ERROR_KINDS {
            errors.with_label_values(&[k]);
        }
        let build_info = register(
            r,
            IntGauge::with_opts(
                Opts::new("build_info", "Build of this process; always 1.")
                    .const_label("service", "gateway")
                    .const_label("version", env!("CARGO_PKG_VERSION"))
                    .const_label("model_version", ""),
            )
            .expect("valid metric"),
        );
        build_info.set(1);
        Self {
            http_requests: register(
                r,
                IntCounterVec::new(Opts::new("http_requests_total", "HTTP requests by route, method and status."), &["route", "method", "status"]).expect("valid metric"),
            ),
            http_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(HTTP_DURATION, "HTTP request duration by route.").buckets(LATENCY_BUCKETS.to_vec()),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            predictions,
            duplicates: register(r, IntCounter::new("duplicate_decisions_total", "Decisions read for a transaction that already had one; the first is kept.").expect("valid metric")),
            waiting: register(r, IntGauge::new("gateway_waiting_requests", "Requests waiting for their decision.").expect("valid metric")),
            repeated: register(
                r,
                IntCounter::new(
                    "gateway_repeated_requests_total",
                    "Requests for a transaction this gateway had already published (no decision yet): not published again, answered with the first one's decision.",
                )
                .expect("valid metric"),
            ),
            errors,
            stalled_partitions: register(
                r,
                IntGauge::new("kafka_consumer_stalled_partitions", "Partitions of decisions whose records wait while the decisions reader has fetched none of them for --stall-after-s.")
                    .expect("valid metric"),
            ),
            build_info,
        }
    }
}
