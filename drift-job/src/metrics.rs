//! Everything the drift job measures, in one place. Names are the contract with the dashboards and
//! alerts in `infra/`: change both together.

use prometheus::{CounterVec, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use telemetry::metrics::register;

use crate::quality::Unmatched;

#[derive(Clone)]
pub struct DriftMetrics {
    pub feature_psi: GaugeVec,
    pub feature_psi_samples: IntGaugeVec,
    pub window_end: GaugeVec,
    pub reports: IntCounter,
    pub decisions: IntCounterVec,
    pub model_performance: GaugeVec,
    pub confusion: IntGaugeVec,
    pub labelled: IntGaugeVec,
    pub labels_joined: IntCounter,
    pub label_delay: Histogram,
    pub labels_unmatched: IntCounterVec,
    pub false_positive_blocked_usd: CounterVec,
    pub fraud_missed_usd: CounterVec,
    pub errors: IntCounterVec,
    pub duplicates: IntCounter,
    pub stalled_partitions: IntGauge,
    pub build_info: IntGauge,
}

/// Label delays: minutes to weeks.
const DELAY_BUCKETS: &[f64] = &[1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 86_400.0, 3.0 * 86_400.0, 7.0 * 86_400.0, 30.0 * 86_400.0];

impl DriftMetrics {
    pub fn new(registry: &Registry, model_versions: &[String]) -> Self {
        let r = registry;
        let labels_unmatched = register(
            r,
            IntCounterVec::new(Opts::new("labels_unmatched_total", "Decisions or labels that left the join state without a partner, by reason."), &["reason"]).expect("valid metric"),
        );
        for u in Unmatched::ALL {
            labels_unmatched.with_label_values(&[u.as_str()]);
        }
        let errors = register(r, IntCounterVec::new(Opts::new("errors_total", "Errors by kind."), &["kind"]).expect("valid metric"));
        for k in ["decode", "consume", "produce"] {
            errors.with_label_values(&[k]);
        }
        let decisions = register(
            r,
            IntCounterVec::new(Opts::new("drift_decisions_total", "Decisions read, by whether the job has the model's reference (known) or not (unknown_model)."), &["model_version", "status"]).expect("valid metric"),
        );
        let false_positive_blocked_usd = register(
            r,
            CounterVec::new(Opts::new("false_positive_blocked_usd_total", "Legitimate money blocked: blocked transactions later labelled legitimate, in USD."), &["model_version"]).expect("valid metric"),
        );
        let fraud_missed_usd = register(
            r,
            CounterVec::new(Opts::new("fraud_missed_usd_total", "Fraud approved: approved transactions later labelled fraud, in USD."), &["model_version"]).expect("valid metric"),
        );
        for v in model_versions {
            decisions.with_label_values(&[v.as_str(), "known"]);
            false_positive_blocked_usd.with_label_values(&[v.as_str()]);
            fraud_missed_usd.with_label_values(&[v.as_str()]);
        }
        let build_info = register(
            r,
            IntGauge::with_opts(
                Opts::new("build_info", "Build and models of this process; always 1.")
                    .const_label("service", "drift-job")
                    .const_label("version", env!("CARGO_PKG_VERSION"))
                    .const_label("model_version", model_versions.join(",")),
            )
            .expect("valid metric"),
        );
        build_info.set(1);
        Self {
            feature_psi: register(r, GaugeVec::new(Opts::new("feature_psi", "Population stability index of a feature in the last complete window against the training reference."), &["feature", "model_version"]).expect("valid metric")),
            feature_psi_samples: register(r, IntGaugeVec::new(Opts::new("feature_psi_samples", "Decisions in the last complete window."), &["feature", "model_version"]).expect("valid metric")),
            window_end: register(r, GaugeVec::new(Opts::new("drift_window_end_timestamp_seconds", "End of the last complete drift window."), &["model_version"]).expect("valid metric")),
            reports: register(r, IntCounter::new("drift_reports_total", "DriftReport records published.").expect("valid metric")),
            decisions,
            model_performance: register(r, GaugeVec::new(Opts::new("model_performance", "Model quality over the last labelled decisions: metric is precision, recall, f1 or false_positive_rate; threshold review counts review or block as positive, block counts block."), &["metric", "model_version", "threshold"]).expect("valid metric")),
            confusion: register(r, IntGaugeVec::new(Opts::new("model_confusion", "Confusion counts over the last labelled decisions (outcome tp, fp, fn, tn)."), &["outcome", "model_version", "threshold"]).expect("valid metric")),
            labelled: register(r, IntGaugeVec::new(Opts::new("model_performance_samples", "Labelled decisions in the quality window."), &["model_version"]).expect("valid metric")),
            labels_joined: register(r, IntCounter::new("labels_joined_total", "Labels joined with their decision.").expect("valid metric")),
            label_delay: register(r, Histogram::with_opts(HistogramOpts::new("label_delay_seconds", "Time from decision to label.").buckets(DELAY_BUCKETS.to_vec())).expect("valid metric")),
            labels_unmatched,
            false_positive_blocked_usd,
            fraud_missed_usd,
            errors,
            stalled_partitions: register(
                r,
                IntGauge::new("kafka_consumer_stalled_partitions", "Partitions whose records wait while the drift job has fetched none of them for --stall-after-s.").expect("valid metric"),
            ),
            duplicates: register(r, IntCounter::new("duplicate_decisions_total", "Decisions read for a transaction that already had one; the first is kept.").expect("valid metric")),
            build_info,
        }
    }
}

