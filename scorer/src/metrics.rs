//! Everything the scorer measures, in one place. Names are the contract with the dashboards and
//! alerts in `infra/`: change both together.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use schemas::Verdict;
use telemetry::metrics::{BATCH_BUCKETS, LATENCY_BUCKETS, PROBABILITY_BUCKETS, register};

/// Per-record latency histograms, whose buckets keep exemplars (records traced and exported).
pub const PREDICTION_LATENCY: &str = "prediction_latency_seconds";
pub const DECISION_LATENCY: &str = "decision_latency_seconds";

#[derive(Clone)]
pub struct ScorerMetrics {
    pub predictions: IntCounterVec,
    pub prediction_latency: Histogram,
    pub prediction_score: Histogram,
    pub decision_latency: Histogram,
    pub model_inference: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub feature_fetch_latency: Histogram,
    pub degraded: IntCounter,
    pub revenue_usd: prometheus::Counter,
    pub fraud_blocked_usd: prometheus::Counter,
    pub review_queued_usd: prometheus::Counter,
    pub errors: IntCounterVec,
    pub dlq: IntCounterVec,
    pub batch_records: Histogram,
    pub records: IntCounter,
    pub consumer_lag: prometheus::IntGaugeVec,
    pub stalled_partitions: IntGauge,
    pub transactions_aborted: IntCounter,
    pub repeated_transactions: IntCounterVec,
    pub build_info: IntGauge,
}

/// `errors_total{kind}` values known up front.
/// `feature_record`: a user's stored features could not be read (the store answered).
pub const ERROR_KINDS: [&str; 8] = ["decode", "schema", "validation", "feature_store", "feature_record", "consume", "produce", "commit"];
/// `dlq_records_total{reason}` values known up front.
pub const DLQ_REASONS: [&str; 3] = ["decode", "schema", "validation"];
/// `scorer_repeated_transactions_total{payment}` values.
pub const REPEATED_PAYMENTS: [&str; 2] = ["same", "different"];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid histogram")
}

impl ScorerMetrics {
    pub fn new(registry: &Registry, model_version: &str) -> Self {
        let r = registry;
        let predictions = register(
            r,
            IntCounterVec::new(
                Opts::new("predictions_total", "Decisions made, by decision, risk level and model version."),
                &["decision", "risk_level", "model_version"],
            )
            .expect("valid metric"),
        );
        let errors = register(
            r,
            IntCounterVec::new(Opts::new("errors_total", "Errors by kind."), &["kind"]).expect("valid metric"),
        );
        let dlq = register(
            r,
            IntCounterVec::new(
                Opts::new("dlq_records_total", "Records sent to the dead-letter topic, by reason."),
                &["reason"],
            )
            .expect("valid metric"),
        );
        // Start known series at 0 so that alerts see the first event.
        for v in Verdict::ALL {
            predictions.with_label_values(&[v.as_str(), v.risk_level().as_str(), model_version]);
        }
        for k in ERROR_KINDS {
            errors.with_label_values(&[k]);
        }
        for k in DLQ_REASONS {
            dlq.with_label_values(&[k]);
        }
        let repeated_transactions = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "scorer_repeated_transactions_total",
                    "Records of a transaction id this scorer had decided already: decided again for whoever waits on them, without a second business event. payment: same (a retry, a producer's duplicate) or different (an id reused for another payment).",
                ),
                &["payment"],
            )
            .expect("valid metric"),
        );
        for k in REPEATED_PAYMENTS {
            repeated_transactions.with_label_values(&[k]);
        }
        let build_info = register(
            r,
            IntGauge::with_opts(
                Opts::new("build_info", "Build and model of this process; always 1.")
                    .const_label("service", "scorer")
                    .const_label("version", env!("CARGO_PKG_VERSION"))
                    .const_label("model_version", model_version),
            )
            .expect("valid metric"),
        );
        build_info.set(1);
        Self {
            predictions,
            prediction_latency: register(r, histogram(PREDICTION_LATENCY, "Time from a record's poll to its decision being produced.", LATENCY_BUCKETS)),
            prediction_score: register(r, histogram("prediction_score", "Fraud probabilities the model gave.", PROBABILITY_BUCKETS)),
            decision_latency: register(r, histogram(DECISION_LATENCY, "Time from a transaction record's Kafka timestamp to its decision being produced.", LATENCY_BUCKETS)),
            model_inference: register(r, histogram("model_inference_duration_seconds", "Duration of one model call (one per poll batch).", LATENCY_BUCKETS)),
            cache_hits: register(r, IntCounter::new("feature_cache_hits_total", "Users found in the feature store.").expect("valid metric")),
            cache_misses: register(r, IntCounter::new("feature_cache_misses_total", "Users the feature store had no features for.").expect("valid metric")),
            feature_fetch_latency: register(r, histogram("feature_fetch_latency_seconds", "Duration of one pipelined feature store read (one per poll batch).", LATENCY_BUCKETS)),
            degraded: register(r, IntCounter::new("degraded_decisions_total", "Decisions made on default features because the feature store was unavailable or could not read the user's features.").expect("valid metric")),
            revenue_usd: register(r, prometheus::Counter::new("revenue_usd_total", "Amount of approved transactions, in USD.").expect("valid metric")),
            fraud_blocked_usd: register(r, prometheus::Counter::new("fraud_blocked_usd_total", "Amount of blocked transactions, in USD.").expect("valid metric")),
            review_queued_usd: register(r, prometheus::Counter::new("review_queued_usd_total", "Amount of transactions sent to review, in USD.").expect("valid metric")),
            errors,
            dlq,
            batch_records: register(r, histogram("scorer_batch_records", "Records per poll batch.", BATCH_BUCKETS)),
            consumer_lag: register(r, prometheus::IntGaugeVec::new(Opts::new("kafka_consumer_lag", "Records between the scorer's position and the partition's end, from librdkafka statistics (every 5 s)."), &["topic", "partition"]).expect("valid metric")),
            stalled_partitions: register(r, IntGauge::new("kafka_consumer_stalled_partitions", "Partitions of this scorer whose records wait while it has fetched and taken none of them for --stall-after-s.").expect("valid metric")),
            records: register(r, IntCounter::new("scorer_records_total", "Input records processed and committed.").expect("valid metric")),
            transactions_aborted: register(r, IntCounter::new("scorer_transactions_aborted_total", "Kafka transactions aborted and their batch re-read.").expect("valid metric")),
            repeated_transactions,
            build_info,
        }
    }
}
