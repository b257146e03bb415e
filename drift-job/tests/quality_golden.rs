//! Precision, recall, F1 and the false-positive rate against `sklearn.metrics` on the same fixed
//! labelled set (`model/golden/drift.json`, written by the training script).

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use drift_job::quality::{QualityWindow, Threshold};
use schemas::Verdict;
use scorer::ModelCard;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    quality: Quality,
}

#[derive(Deserialize)]
struct Quality {
    thresholds: Thresholds,
    is_fraud: Vec<u8>,
    probability: Vec<f64>,
    at_review: Metrics,
    at_block: Metrics,
}

#[derive(Deserialize)]
struct Thresholds {
    review: f64,
    block: f64,
}

#[derive(Deserialize)]
struct Metrics {
    precision: f64,
    recall: f64,
    f1: f64,
    false_positive_rate: f64,
    tp: u64,
    fp: u64,
    #[serde(rename = "fn")]
    fn_: u64,
    tn: u64,
}

#[test]
fn quality_matches_sklearn() {
    let path = ModelCard::bundled_path().with_file_name("golden/drift.json");
    let g: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let q = g.quality;
    let mut w = QualityWindow::new(q.probability.len());
    for (&p, &f) in q.probability.iter().zip(&q.is_fraud) {
        let verdict = if p >= q.thresholds.block {
            Verdict::Block
        } else if p >= q.thresholds.review {
            Verdict::Review
        } else {
            Verdict::Approve
        };
        w.push(verdict, f == 1);
    }
    for (t, want) in [(Threshold::Review, &q.at_review), (Threshold::Block, &q.at_block)] {
        let c = w.confusion(t);
        assert_eq!((c.tp, c.fp, c.fn_, c.tn), (want.tp, want.fp, want.fn_, want.tn), "{t:?}");
        for (name, ours, theirs) in [
            ("precision", c.precision(), want.precision),
            ("recall", c.recall(), want.recall),
            ("f1", c.f1(), want.f1),
            ("false_positive_rate", c.false_positive_rate(), want.false_positive_rate),
        ] {
            assert!((ours - theirs).abs() < 1e-12, "{t:?} {name}: {ours} vs sklearn {theirs}");
        }
    }
}
