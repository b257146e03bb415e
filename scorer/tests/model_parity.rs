//! The Rust scoring core against what scikit-learn computed for the same rows at training time
//! (`model/golden/predictions.json`), through the real ONNX Runtime.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::time::Instant;

use schemas::{PaymentMethod, Transaction, Verdict};
use scorer::features::feature_vector;
use scorer::{FEATURE_NAMES, ModelCard, N_FEATURES, Scorer, UserFeatures, UserLookup};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    model_version: String,
    features: Vec<String>,
    rows: Vec<GoldenRow>,
}

#[derive(Deserialize)]
struct GoldenRow {
    input: Vec<f32>,
    probability: f64,
    logit: f64,
    contributions: Vec<f64>,
    transaction: GoldenTransaction,
    user: UserFeatures,
}

#[derive(Deserialize)]
struct GoldenTransaction {
    amount: f64,
    timestamp: i64,
    country: String,
    payment_method: String,
}

fn golden() -> Golden {
    let path = ModelCard::bundled_path().with_file_name("golden/predictions.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn card() -> ModelCard {
    ModelCard::load(&ModelCard::bundled_path()).unwrap()
}

fn transaction(i: usize, g: &GoldenTransaction) -> Transaction {
    Transaction {
        transaction_id: format!("golden-{i}"),
        user_id: format!("user-{i}"),
        amount: g.amount,
        currency: "USD".into(),
        payment_method: PaymentMethod::parse(&g.payment_method).unwrap(),
        merchant_id: None,
        country: Some(g.country.clone()),
        timestamp: g.timestamp,
    }
}

fn model() -> scorer::FraudModel {
    scorer::FraudModel::load(&card(), 1).unwrap()
}

#[test]
fn golden_file_matches_the_card() {
    let g = golden();
    assert_eq!(g.model_version, card().model_version);
    assert_eq!(g.features, FEATURE_NAMES);
    assert!(g.rows.len() >= 100);
}

#[test]
fn probabilities_match_sklearn_to_1e5() {
    let g = golden();
    let rows: Vec<f32> = g.rows.iter().flat_map(|r| r.input.iter().copied()).collect();
    let scores = model().score(&rows).unwrap();
    assert_eq!(scores.len(), g.rows.len());
    for (i, r) in g.rows.iter().enumerate() {
        let diff = (scores.probabilities[i] - r.probability).abs();
        assert!(diff < 1e-5, "row {i}: ort {} sklearn {}", scores.probabilities[i], r.probability);
    }
}

#[test]
fn single_row_and_batch_agree() {
    let g = golden();
    let mut m = model();
    let rows: Vec<f32> = g.rows.iter().take(20).flat_map(|r| r.input.iter().copied()).collect();
    let batch = m.score(&rows).unwrap();
    for i in 0..20 {
        let one = m.score(&rows[i * N_FEATURES..(i + 1) * N_FEATURES]).unwrap();
        // Vectorised kernels may round a batch differently from a single row, within float noise.
        assert!((one.probabilities[0] - batch.probabilities[i]).abs() < 1e-6);
        for (a, b) in one.contributions(0).iter().zip(batch.contributions(i)) {
            assert!((a - b).abs() < 1e-5);
        }
    }
    assert!(m.score(&[]).unwrap().is_empty());
}

#[test]
fn contributions_sum_with_the_intercept_to_the_logit() {
    let g = golden();
    let card = card();
    let rows: Vec<f32> = g.rows.iter().flat_map(|r| r.input.iter().copied()).collect();
    let scores = model().score(&rows).unwrap();
    for (i, r) in g.rows.iter().enumerate() {
        let c = scores.contributions(i);
        for (j, (ours, theirs)) in c.iter().zip(&r.contributions).enumerate() {
            assert!((f64::from(*ours) - theirs).abs() < 1e-4, "row {i} feature {j}: {ours} vs {theirs}");
        }
        let logit: f64 = c.iter().map(|&x| f64::from(x)).sum::<f64>() + card.intercept;
        assert!((logit - r.logit).abs() < 1e-4, "row {i}: {logit} vs {}", r.logit);
        let p = 1.0 / (1.0 + (-logit).exp());
        assert!((p - scores.probabilities[i]).abs() < 1e-5, "row {i}");
    }
}

#[test]
fn feature_builder_reproduces_the_training_features() {
    for (i, r) in golden().rows.iter().enumerate() {
        let v = feature_vector(&transaction(i, &r.transaction), &r.user);
        for (j, (ours, theirs)) in v.iter().zip(&r.input).enumerate() {
            assert!((ours - theirs).abs() <= 1e-6 * theirs.abs().max(1.0), "row {i} {}: {ours} vs {theirs}", FEATURE_NAMES[j]);
        }
    }
}

#[test]
fn decisions_are_explained_and_follow_the_thresholds() {
    let g = golden();
    let mut scorer = Scorer::from_card(card(), 1).unwrap();
    let batch: Vec<_> = g
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| (transaction(i, &r.transaction), UserLookup::Found(r.user.clone())))
        .collect();
    let decisions = scorer.decide_batch(batch, Instant::now()).unwrap();
    assert_eq!(decisions.len(), g.rows.len());
    let mut seen = std::collections::HashSet::new();
    for (i, (d, r)) in decisions.iter().zip(&g.rows).enumerate() {
        assert_eq!(d.transaction_id, format!("golden-{i}"));
        assert!((d.fraud_probability - r.probability).abs() < 1e-5);
        let want = if r.probability >= 0.7 {
            Verdict::Block
        } else if r.probability >= 0.3 {
            Verdict::Review
        } else {
            Verdict::Approve
        };
        // Rows within float noise of a threshold could go either way.
        if (r.probability - 0.3).abs() > 1e-5 && (r.probability - 0.7).abs() > 1e-5 {
            assert_eq!(d.decision, want, "row {i} p={}", r.probability);
        }
        seen.insert(d.decision);
        assert_eq!(d.risk_level, d.decision.risk_level());
        assert_eq!(d.features.len(), N_FEATURES);
        assert_eq!(d.top_features.len(), 3);
        assert!(d.top_features.windows(2).all(|w| w[0].contribution >= w[1].contribution));
        let max = r.contributions.iter().cloned().fold(f64::MIN, f64::max);
        assert!((d.top_features[0].contribution - max).abs() < 1e-4);
        assert!(!d.degraded && d.user_features_found);
        assert_eq!(d.model_version, "1.0.0");
    }
    assert_eq!(seen.len(), 3, "the golden rows cover approve, review and block");
}

#[test]
fn unavailable_store_gives_degraded_decisions_on_card_defaults() {
    let g = golden();
    let mut scorer = Scorer::from_card(card(), 1).unwrap();
    let tx = transaction(0, &g.rows[0].transaction);
    let degraded = scorer.decide(tx.clone(), UserLookup::Unavailable).unwrap();
    let missing = scorer.decide(tx.clone(), UserLookup::Missing).unwrap();
    let on_defaults = scorer.decide(tx, UserLookup::Found(scorer.default_user_features().clone())).unwrap();
    assert!(degraded.degraded && !degraded.user_features_found);
    assert!(!missing.degraded && !missing.user_features_found);
    assert_eq!(degraded.fraud_probability, on_defaults.fraud_probability);
    assert_eq!(missing.fraud_probability, on_defaults.fraud_probability);
}
