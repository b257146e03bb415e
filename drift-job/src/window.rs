//! Drift windows: per model version, bin counts of every monitored feature over one tumbling
//! window. State is counts only (a few hundred integers per model), so memory does not grow with
//! traffic; at the window's end PSI is computed per feature against the card's reference.

use schemas::{Decision, DriftBin, DriftReport, DriftSeverity};
use scorer::card::ModelCard;

use crate::psi::{Binning, psi};

/// One monitored feature: how to bin it, where its value sits in a decision, its reference shares.
#[derive(Debug, Clone)]
pub struct Monitored {
    pub name: String,
    pub binning: Binning,
    pub expected: Vec<f64>,
    /// Index in `Decision::features` (numeric), or `None` for `payment_method` (categorical).
    pub feature_index: Option<usize>,
}

/// The monitored features of one model card.
#[derive(Debug, Clone)]
pub struct Reference {
    pub model_version: String,
    pub epsilon: f64,
    pub features: Vec<Monitored>,
}

impl Reference {
    pub fn from_card(card: &ModelCard) -> Self {
        let names: Vec<&str> = card.feature_names().collect();
        let features = card
            .psi
            .reference
            .iter()
            .map(|(name, r)| {
                let (binning, expected) = Binning::from_reference(r);
                Monitored { name: name.clone(), binning, expected, feature_index: names.iter().position(|n| n == name) }
            })
            .collect();
        Self { model_version: card.model_version.clone(), epsilon: card.psi.epsilon, features }
    }
}

/// Bin counts of one model version's decisions over one window.
#[derive(Debug, Clone)]
pub struct PsiWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub samples: u64,
    counts: Vec<Vec<u64>>,
}

impl PsiWindow {
    pub fn new(reference: &Reference, start_ms: i64, end_ms: i64) -> Self {
        Self { start_ms, end_ms, samples: 0, counts: reference.features.iter().map(|f| vec![0; f.binning.bins()]).collect() }
    }

    /// Counts one decision's feature values. Decisions whose feature vector does not have the
    /// card's shape are refused (`false`).
    pub fn observe(&mut self, reference: &Reference, d: &Decision) -> bool {
        let fits = reference.features.iter().all(|f| match f.feature_index {
            Some(i) => d.features.get(i).is_some_and(|v| v.name == f.name),
            None => true,
        });
        if !fits {
            return false;
        }
        for (f, counts) in reference.features.iter().zip(self.counts.iter_mut()) {
            let bin = match (&f.binning, f.feature_index) {
                (Binning::Numeric { edges }, Some(i)) => Binning::numeric_bin(edges, d.features[i].value),
                (Binning::Categorical { categories }, _) => Binning::categorical_bin(categories, d.payment_method.as_str()),
                (Binning::Numeric { .. }, None) => continue,
            };
            counts[bin] += 1;
        }
        self.samples += 1;
        true
    }

    /// Counts raw values of one feature (benchmarks and tests).
    pub fn observe_value(&mut self, reference: &Reference, feature: usize, value: f64) {
        if let Binning::Numeric { edges } = &reference.features[feature].binning {
            self.counts[feature][Binning::numeric_bin(edges, value)] += 1;
        }
    }

    /// PSI per feature, in the reference's feature order.
    pub fn psi(&self, reference: &Reference) -> Vec<f64> {
        reference.features.iter().zip(&self.counts).map(|(f, c)| psi(&f.expected, c, reference.epsilon)).collect()
    }

    /// One report per feature.
    pub fn reports(&self, reference: &Reference) -> Vec<DriftReport> {
        let psis = self.psi(reference);
        reference
            .features
            .iter()
            .zip(&self.counts)
            .zip(psis)
            .map(|((f, counts), value)| {
                let total = counts.iter().sum::<u64>().max(1) as f64;
                DriftReport {
                    model_version: reference.model_version.clone(),
                    feature: f.name.clone(),
                    window_start: self.start_ms,
                    window_end: self.end_ms,
                    samples: self.samples as i64,
                    psi: value,
                    severity: DriftSeverity::of(value),
                    bins: f
                        .binning
                        .labels()
                        .into_iter()
                        .zip(&f.expected)
                        .zip(counts)
                        .map(|((label, &expected), &count)| DriftBin { label, expected, actual: count as f64 / total, count: count as i64 })
                        .collect(),
                }
            })
            .collect()
    }
}

/// The window `[start, end)` of length `len_ms` containing `t_ms`, aligned to the epoch.
pub fn window_of(t_ms: i64, len_ms: i64) -> (i64, i64) {
    let start = t_ms.div_euclid(len_ms) * len_ms;
    (start, start + len_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scorer::ModelCard;

    fn reference() -> Reference {
        Reference::from_card(&ModelCard::load(&ModelCard::bundled_path()).unwrap())
    }

    #[test]
    fn monitored_features_come_from_the_card() {
        let r = reference();
        let names: Vec<&str> = r.features.iter().map(|f| f.name.as_str()).collect();
        assert!(names.contains(&"amount_log") && names.contains(&"payment_method"));
        assert!(!names.contains(&"pm_card"), "one-hot columns are monitored through payment_method");
        let pm = r.features.iter().find(|f| f.name == "payment_method").unwrap();
        assert_eq!(pm.feature_index, None);
        let amount = r.features.iter().find(|f| f.name == "amount_log").unwrap();
        assert_eq!(amount.feature_index, Some(0));
    }

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(window_of(300_001, 300_000), (300_000, 600_000));
        assert_eq!(window_of(-1, 1000), (-1000, 0));
    }

    #[test]
    fn severities() {
        assert_eq!(DriftSeverity::of(0.099), DriftSeverity::None);
        assert_eq!(DriftSeverity::of(0.1), DriftSeverity::Moderate);
        assert_eq!(DriftSeverity::of(0.25), DriftSeverity::Significant);
    }
}
