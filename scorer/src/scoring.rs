//! The scoring core: a batch of transactions and their users' features in, one explained
//! `Decision` per transaction out, with a single model call per batch.

use std::time::{Instant, SystemTime};

use schemas::{Decision, FeatureContribution, FeatureValue, Transaction};

use crate::card::ModelCard;
use crate::features::{FEATURE_NAMES, N_FEATURES, UserFeatures, UserLookup, feature_vector};
use crate::model::FraudModel;
use crate::rules::Rules;
use crate::Result;

/// How many contributions a decision explains itself with.
pub const TOP_FEATURES: usize = 3;

pub struct Scorer {
    card: ModelCard,
    model: FraudModel,
    rules: Rules,
    rows: Vec<f32>,
    last_stages: StageTimes,
}

/// When the last batch's model call and business rules ran, for its trace spans.
#[derive(Debug, Clone, Copy)]
pub struct StageTimes {
    pub inference: (SystemTime, SystemTime),
    pub rules: (SystemTime, SystemTime),
}

impl Scorer {
    pub fn new(card: ModelCard, model: FraudModel, rules: Rules) -> Self {
        Self { card, model, rules, rows: Vec::new(), last_stages: StageTimes { inference: (SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH), rules: (SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH) } }
    }

    /// Loads the card at `path`, its model, and rules with its thresholds (and, if given, the
    /// amount above which nothing is approved without review).
    pub fn load(path: &std::path::Path, intra_threads: usize, review_above_amount: Option<f64>) -> Result<Self> {
        let card = ModelCard::load(path)?;
        let model = FraudModel::load(&card, intra_threads)?;
        let rules = Rules::new(card.thresholds, review_above_amount)?;
        Ok(Self::new(card, model, rules))
    }

    /// Loads the card's model and uses the card's thresholds.
    pub fn from_card(card: ModelCard, intra_threads: usize) -> Result<Self> {
        let model = FraudModel::load(&card, intra_threads)?;
        let rules = Rules::new(card.thresholds, None)?;
        Ok(Self::new(card, model, rules))
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn model_version(&self) -> &str {
        &self.card.model_version
    }

    /// Scores feature rows (row-major, `N_FEATURES` per row) in one model call, without rules.
    pub fn score_rows(&mut self, rows: &[f32]) -> Result<crate::model::BatchScores> {
        self.model.score(rows)
    }

    /// The stage times of the last `decide_batch`.
    pub fn last_stages(&self) -> StageTimes {
        self.last_stages
    }

    /// Decides every transaction with one model call. `batch_started` is when the batch arrived;
    /// each decision reports the time from then to its decision.
    pub fn decide_batch(
        &mut self,
        batch: Vec<(Transaction, UserLookup)>,
        batch_started: Instant,
    ) -> Result<Vec<Decision>> {
        let inference_started = SystemTime::now();
        self.rows.clear();
        self.rows.reserve(batch.len() * N_FEATURES);
        for (tx, lookup) in &batch {
            let user = match lookup {
                UserLookup::Found(u) => u,
                UserLookup::Missing | UserLookup::Unavailable => &self.card.default_user_features,
            };
            self.rows.extend_from_slice(&feature_vector(tx, user));
        }
        let scores = self.model.score(&self.rows)?;
        let rules_started = SystemTime::now();
        let decided_at = schemas::now_millis();
        let latency_ms = batch_started.elapsed().as_secs_f64() * 1e3;

        let decisions = batch
            .into_iter()
            .enumerate()
            .map(|(i, (tx, lookup))| {
                let features = &self.rows[i * N_FEATURES..(i + 1) * N_FEATURES];
                let probability = scores.probabilities[i];
                let verdict = self.rules.verdict(probability, &tx);
                Decision {
                    decision: verdict,
                    fraud_probability: probability,
                    risk_level: verdict.risk_level(),
                    model_version: self.card.model_version.clone(),
                    features: FEATURE_NAMES
                        .iter()
                        .zip(features)
                        .map(|(name, &value)| FeatureValue { name: std::borrow::Cow::Borrowed(*name), value: value.into() })
                        .collect(),
                    top_features: top_contributions(features, scores.contributions(i)),
                    degraded: lookup == UserLookup::Unavailable,
                    user_features_found: matches!(lookup, UserLookup::Found(_)),
                    amount: tx.amount,
                    payment_method: tx.payment_method,
                    transaction_timestamp: tx.timestamp,
                    decided_at,
                    processing_latency_ms: latency_ms,
                    transaction_id: tx.transaction_id,
                    user_id: tx.user_id,
                    currency: tx.currency,
                }
            })
            .collect();
        self.last_stages = StageTimes { inference: (inference_started, rules_started), rules: (rules_started, SystemTime::now()) };
        Ok(decisions)
    }

    /// Decides one transaction (a batch of one).
    pub fn decide(&mut self, tx: Transaction, lookup: UserLookup) -> Result<Decision> {
        let mut out = self.decide_batch(vec![(tx, lookup)], Instant::now())?;
        Ok(out.remove(0))
    }

    /// The model card's degraded-mode user features.
    pub fn default_user_features(&self) -> &UserFeatures {
        &self.card.default_user_features
    }
}

/// The `TOP_FEATURES` largest contributions to the logit, largest first: what pushed the score
/// up the most.
pub fn top_contributions(features: &[f32], contributions: &[f32]) -> Vec<FeatureContribution> {
    // One pass keeping the best few in order (this runs for every record); ties go to the
    // feature listed first.
    let better = |a: usize, b: usize| contributions[a].total_cmp(&contributions[b]).then(b.cmp(&a)).is_gt();
    let (mut top, mut len) = ([0usize; TOP_FEATURES], 0);
    for i in 0..N_FEATURES {
        let mut at = len;
        while at > 0 && better(i, top[at - 1]) {
            at -= 1;
        }
        if at < TOP_FEATURES {
            top.copy_within(at..len.min(TOP_FEATURES - 1), at + 1);
            top[at] = i;
            len = (len + 1).min(TOP_FEATURES);
        }
    }
    top.iter()
        .map(|&i| FeatureContribution {
            name: std::borrow::Cow::Borrowed(FEATURE_NAMES[i]),
            value: features[i].into(),
            contribution: contributions[i].into(),
        })
        .collect()
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_contributions_are_the_largest_first_with_stable_ties() {
        let features: Vec<f32> = (0..N_FEATURES).map(|i| i as f32).collect();
        let mut c = vec![0.0f32; N_FEATURES];
        c[4] = 2.0;
        c[7] = -5.0;
        c[9] = 3.0;
        c[1] = 2.0;
        let top = top_contributions(&features, &c);
        let names: Vec<&str> = top.iter().map(|t| &*t.name).collect();
        assert_eq!(names, [FEATURE_NAMES[9], FEATURE_NAMES[1], FEATURE_NAMES[4]]);
        assert_eq!(top[0].value, 9.0);
        assert_eq!(top[0].contribution, 3.0);
    }

    /// The same features as sorting all of them would give, ties and NaN included.
    #[test]
    fn top_contributions_are_those_a_full_sort_gives() {
        let features: Vec<f32> = (0..N_FEATURES).map(|i| i as f32).collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..5_000 {
            let c: Vec<f32> = (0..N_FEATURES)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    match (state >> 60, round % 3) {
                        (0, _) => f32::NAN,
                        (_, 0) => ((state >> 40) % 5) as f32 - 2.0, // many ties
                        _ => ((state >> 33) as f32 / 1e9) - 2.0,
                    }
                })
                .collect();
            let mut idx: Vec<usize> = (0..N_FEATURES).collect();
            idx.sort_by(|&a, &b| c[b].total_cmp(&c[a]).then(a.cmp(&b)));
            let want: Vec<&str> = idx[..TOP_FEATURES].iter().map(|&i| FEATURE_NAMES[i]).collect();
            let got = top_contributions(&features, &c);
            assert_eq!(got.iter().map(|t| &*t.name).collect::<Vec<_>>(), want, "{c:?}");
        }
    }
}
