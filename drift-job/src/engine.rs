//! The drift job's state machine, without Kafka: decisions feed the drift windows and the label
//! join, labels feed the join, `tick` closes due windows and expires join state. Tests and
//! benchmarks drive it directly; `main` drives it from Kafka.

use std::collections::HashMap;

use schemas::{Decision, DriftReport, DriftSeverity, FirstSeen, Label, Verdict};

use crate::metrics::DriftMetrics;
use crate::quality::{Joined, LabelJoin, Outcome, QualityWindow, Threshold, Unmatched};
use crate::window::{PsiWindow, Reference, window_of};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub window_ms: i64,
    pub min_samples: u64,
    pub join_max_entries: usize,
    pub join_ttl_ms: i64,
    pub quality_window: usize,
    /// Transaction ids remembered to keep the first decision per transaction.
    pub dedupe_ids: usize,
}

pub struct Engine {
    cfg: EngineConfig,
    references: HashMap<String, Reference>,
    windows: HashMap<String, PsiWindow>,
    join: LabelJoin,
    quality: HashMap<String, QualityWindow>,
    seen: FirstSeen,
    metrics: DriftMetrics,
    /// A model card that does not match its decisions fails every one of them: a line a second.
    mismatch_lines: telemetry::logs::Throttle,
}

impl Engine {
    pub fn new(cfg: EngineConfig, references: Vec<Reference>, metrics: DriftMetrics) -> Self {
        let join = LabelJoin::new(cfg.join_max_entries, cfg.join_ttl_ms);
        Self {
            references: references.into_iter().map(|r| (r.model_version.clone(), r)).collect(),
            windows: HashMap::new(),
            join,
            quality: HashMap::new(),
            seen: FirstSeen::new(cfg.dedupe_ids),
            metrics,
            mismatch_lines: telemetry::logs::Throttle::per_second(),
            cfg,
        }
    }

    /// A decision read at `now_ms` (processing time decides its window). A later decision for a
    /// transaction already decided is counted and left out of drift and quality.
    pub fn on_decision(&mut self, d: &Decision, now_ms: i64) {
        if !self.seen.first(&d.transaction_id) {
            self.metrics.duplicates.inc();
            return;
        }
        let Some(reference) = self.references.get(&d.model_version) else {
            self.metrics.decisions.with_label_values(&[d.model_version.as_str(), "unknown_model"]).inc();
            return;
        };
        self.metrics.decisions.with_label_values(&[d.model_version.as_str(), "known"]).inc();
        let (start, end) = window_of(now_ms, self.cfg.window_ms);
        let window = self.windows.entry(d.model_version.clone()).or_insert_with(|| PsiWindow::new(reference, start, end));
        if !window.observe(reference, d)
            && let Some(suppressed) = self.mismatch_lines.allow()
        {
            tracing::warn!(model_version = %d.model_version, transaction_id = %d.transaction_id, suppressed, "decision's features do not match its model card; not counted for drift");
        }
        let (joined, evicted) = self.join.decision(&d.transaction_id, outcome_of(d), now_ms);
        self.unmatched(evicted, 1);
        if let Some(j) = joined {
            self.record(j, true);
        }
    }

    /// A decision re-read at start-up (the job's state is in memory; the process before it
    /// counted this decision): it rejoins the label join, and the drift window of `now_ms` when
    /// it was written (`written_ms`, Kafka's timestamp) within that window — so a restart neither
    /// forgets decisions waiting for labels nor starts the open window empty. Counts nothing;
    /// answers whether the join, full, let its oldest entry go for it.
    pub fn recall_decision(&mut self, d: &Decision, written_ms: i64, now_ms: i64) -> bool {
        if !self.seen.first(&d.transaction_id) {
            return false;
        }
        let Some(reference) = self.references.get(&d.model_version) else { return false };
        let (start, end) = window_of(now_ms, self.cfg.window_ms);
        if (start..end).contains(&written_ms) {
            let window = self.windows.entry(d.model_version.clone()).or_insert_with(|| PsiWindow::new(reference, start, end));
            window.observe(reference, d);
        }
        let (joined, evicted) = self.join.decision(&d.transaction_id, outcome_of(d), written_ms);
        if let Some(j) = joined {
            self.record(j, false);
        }
        evicted.is_some()
    }

    /// A label re-read at start-up, written at `written_ms`: it rejoins the label join, and a
    /// label whose decision was recalled too goes back into the quality window. Counts nothing;
    /// answers whether the join, full, let its oldest entry go for it.
    pub fn recall_label(&mut self, l: &Label, written_ms: i64) -> bool {
        let (joined, evicted) = self.join.label(&l.transaction_id, l.is_fraud, l.labelled_at, written_ms);
        if let Some(j) = joined {
            self.record(j, false);
        }
        evicted.is_some()
    }

    /// Decisions waiting for their label, and labels waiting for their decision.
    pub fn join_pending(&self) -> (usize, usize) {
        self.join.pending()
    }

    pub fn on_label(&mut self, l: &Label, now_ms: i64) {
        let (joined, evicted) = self.join.label(&l.transaction_id, l.is_fraud, l.labelled_at, now_ms);
        self.unmatched(evicted, 1);
        if let Some(j) = joined {
            self.record(j, true);
        }
    }

    fn unmatched(&self, reason: Option<Unmatched>, n: u64) {
        if let Some(r) = reason {
            self.metrics.labels_unmatched.with_label_values(&[r.as_str()]).inc_by(n);
        }
    }

    /// A decision joined with its label: into its model's quality window and gauges, and, when
    /// `count` (not a recall of what an earlier process counted), into the counters.
    fn record(&mut self, j: Joined, count: bool) {
        let m = &self.metrics;
        let version = j.outcome.model_version.as_str();
        if count {
            m.labels_joined.inc();
            m.label_delay.observe(((j.labelled_at_ms - j.outcome.decided_at_ms).max(0) as f64) / 1e3);
            match (j.outcome.verdict, j.is_fraud) {
                (Verdict::Block, false) => m.false_positive_blocked_usd.with_label_values(&[version]).inc_by(j.outcome.amount_usd),
                (Verdict::Approve, true) => m.fraud_missed_usd.with_label_values(&[version]).inc_by(j.outcome.amount_usd),
                _ => {}
            }
        }
        let window = self.quality.entry(version.to_string()).or_insert_with(|| QualityWindow::new(self.cfg.quality_window));
        window.push(j.outcome.verdict, j.is_fraud);
        m.labelled.with_label_values(&[version]).set(window.len() as i64);
        for t in Threshold::ALL {
            let c = window.confusion(t);
            for (metric, value) in [("precision", c.precision()), ("recall", c.recall()), ("f1", c.f1()), ("false_positive_rate", c.false_positive_rate())] {
                m.model_performance.with_label_values(&[metric, version, t.as_str()]).set(value);
            }
            for (outcome, n) in [("tp", c.tp), ("fp", c.fp), ("fn", c.fn_), ("tn", c.tn)] {
                m.confusion.with_label_values(&[outcome, version, t.as_str()]).set(n as i64);
            }
        }
    }

    /// Closes every window that ended by `now_ms` and expires old join state; returns the drift
    /// reports of the closed windows that had enough samples.
    pub fn tick(&mut self, now_ms: i64) -> Vec<DriftReport> {
        let (decisions, labels) = self.join.expire(now_ms);
        self.unmatched(Some(Unmatched::DecisionExpired).filter(|_| decisions > 0), decisions);
        self.unmatched(Some(Unmatched::LabelExpired).filter(|_| labels > 0), labels);

        let due: Vec<String> = self.windows.iter().filter(|(_, w)| w.end_ms <= now_ms).map(|(v, _)| v.clone()).collect();
        let mut out = Vec::new();
        for version in due {
            let Some(window) = self.windows.remove(&version) else { continue };
            let Some(reference) = self.references.get(&version) else { continue };
            for f in &reference.features {
                self.metrics.feature_psi_samples.with_label_values(&[f.name.as_str(), version.as_str()]).set(window.samples as i64);
            }
            if window.samples < self.cfg.min_samples {
                tracing::info!(model_version = %version, samples = window.samples, min_samples = self.cfg.min_samples, "drift window closed with too few decisions; PSI not reported");
                continue;
            }
            self.metrics.window_end.with_label_values(&[version.as_str()]).set(window.end_ms as f64 / 1e3);
            for report in window.reports(reference) {
                self.metrics.feature_psi.with_label_values(&[report.feature.as_str(), version.as_str()]).set(report.psi);
                if report.severity == DriftSeverity::Significant {
                    tracing::warn!(feature = %report.feature, model_version = %version, psi = report.psi, samples = report.samples, "significant feature drift");
                }
                out.push(report);
            }
        }
        out
    }
}

/// What the label join keeps of a decision until its label comes.
fn outcome_of(d: &Decision) -> Outcome {
    let (usd, _) = scorer::fx::to_usd(d.amount, &d.currency);
    Outcome { model_version: d.model_version.clone(), verdict: d.decision, amount_usd: usd, decided_at_ms: d.decided_at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{PaymentMethod, Transaction};
    use scorer::{ModelCard, Scorer, UserLookup};

    /// An engine over the bundled card (windows of a minute, everything reported) and its metrics.
    fn engine() -> (Engine, DriftMetrics, Scorer) {
        engine_with(100)
    }

    fn engine_with(join_max_entries: usize) -> (Engine, DriftMetrics, Scorer) {
        let card = ModelCard::load(&ModelCard::bundled_path()).unwrap();
        let metrics = DriftMetrics::new(&prometheus::Registry::new(), std::slice::from_ref(&card.model_version));
        let cfg = EngineConfig { window_ms: 60_000, min_samples: 1, join_max_entries, join_ttl_ms: 3_600_000, quality_window: 100, dedupe_ids: 100 };
        let engine = Engine::new(cfg, vec![Reference::from_card(&card)], metrics.clone());
        (engine, metrics, Scorer::from_card(card, 1).unwrap())
    }

    fn decide(core: &mut Scorer, id: &str, amount: f64) -> Decision {
        let tx = Transaction {
            transaction_id: id.into(),
            user_id: "u".into(),
            amount,
            currency: "USD".into(),
            payment_method: PaymentMethod::Card,
            merchant_id: None,
            country: None,
            timestamp: 1_764_000_000_000,
        };
        core.decide_batch(vec![(tx, UserLookup::Missing)], std::time::Instant::now()).unwrap().remove(0)
    }

    #[test]
    fn recalled_records_rebuild_the_join_quality_and_open_window_without_counting_again() {
        let (mut engine, metrics, mut core) = engine();
        let version = core.model_version().to_string();
        let now = 1_764_000_030_000; // half a minute into its window
        // Decided before the restart: one in an earlier window and labelled then, one in the open
        // window and labelled then, one in the open window and not labelled yet.
        let (old, open, waiting) = (decide(&mut core, "old", 20.0), decide(&mut core, "open", 30.0), decide(&mut core, "waiting", 40.0));
        assert!(!engine.recall_decision(&old, now - 60_000, now));
        assert!(!engine.recall_decision(&open, now - 10_000, now));
        assert!(!engine.recall_decision(&waiting, now - 5_000, now));
        assert!(!engine.recall_decision(&open, now - 4_000, now)); // a repeat, as after a scorer crash
        for id in ["old", "open"] {
            engine.recall_label(&Label { transaction_id: id.into(), is_fraud: false, labelled_at: now - 1_000 }, now - 1_000);
        }
        // Rebuilt: the quality window holds the two labelled decisions, one waits for its label.
        assert_eq!(metrics.labelled.with_label_values(&[version.as_str()]).get(), 2);
        assert_eq!(engine.join_pending(), (1, 0));
        // Counted by the process before: nothing counted again.
        assert_eq!((metrics.labels_joined.get(), metrics.duplicates.get()), (0, 0));
        assert_eq!(metrics.decisions.with_label_values(&[version.as_str(), "known"]).get(), 0);

        // The label that comes after the restart finds its decision and is counted.
        engine.on_label(&Label { transaction_id: "waiting".into(), is_fraud: true, labelled_at: now }, now);
        assert_eq!(metrics.labels_joined.get(), 1);
        assert_eq!(metrics.labelled.with_label_values(&[version.as_str()]).get(), 3);
        // The open window holds the decisions written in it (not the earlier window's), once.
        let reports = engine.tick(now + 60_000);
        assert!(!reports.is_empty());
        assert!(reports.iter().all(|r| r.samples == 2), "{reports:?}");

        // A recall that holds more than the join keeps says so.
        let (mut small, _, _) = engine_with(1);
        assert!(!small.recall_decision(&old, now - 2_000, now));
        assert!(small.recall_decision(&waiting, now - 1_000, now), "the join keeps one entry");
    }

    #[test]
    fn a_second_decision_for_a_transaction_is_counted_and_left_out_of_drift_and_quality() {
        let (mut engine, metrics, mut core) = engine();
        let version = core.model_version().to_string();
        let decision = decide(&mut core, "t-1", 42.0);
        let now = 1_764_000_000_000;

        engine.on_decision(&decision, now);
        engine.on_decision(&decision, now); // the batch decided again after a scorer crash
        engine.on_label(&Label { transaction_id: "t-1".into(), is_fraud: false, labelled_at: now }, now);

        assert_eq!(metrics.duplicates.get(), 1);
        assert_eq!(metrics.decisions.with_label_values(&[version.as_str(), "known"]).get(), 1);
        assert_eq!(metrics.labels_joined.get(), 1);
        // The repeat left nothing waiting for a label, and the window counted the transaction once.
        let reports = engine.tick(now + 2 * 3_600_000);
        assert_eq!(metrics.labels_unmatched.with_label_values(&["decision_expired"]).get(), 0);
        assert!(!reports.is_empty());
        assert!(reports.iter().all(|r| r.samples == 1), "{reports:?}");
    }
}
