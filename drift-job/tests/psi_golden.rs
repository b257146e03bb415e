//! PSI against numpy's, computed by the training script on the same inputs
//! (`model/golden/drift.json`).

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use drift_job::psi::{Binning, psi};
use scorer::ModelCard;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Golden {
    epsilon: f64,
    psi: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    feature: String,
    values: Vec<Value>,
    counts: Vec<u64>,
    psi: f64,
}

#[test]
fn psi_matches_numpy_to_1e9() {
    let card = ModelCard::load(&ModelCard::bundled_path()).unwrap();
    let path = ModelCard::bundled_path().with_file_name("golden/drift.json");
    let golden: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(golden.epsilon, card.psi.epsilon);
    assert!(golden.psi.len() >= 5);
    for case in &golden.psi {
        let (binning, expected) = Binning::from_reference(&card.psi.reference[&case.feature]);
        let mut counts = vec![0u64; binning.bins()];
        for v in &case.values {
            let bin = match &binning {
                Binning::Numeric { edges } => Binning::numeric_bin(edges, v.as_f64().unwrap()),
                Binning::Categorical { categories } => Binning::categorical_bin(categories, v.as_str().unwrap()),
            };
            counts[bin] += 1;
        }
        assert_eq!(counts, case.counts, "{}: bin counts", case.name);
        let ours = psi(&expected, &counts, card.psi.epsilon);
        assert!((ours - case.psi).abs() < 1e-9, "{}: {ours} vs numpy {}", case.name, case.psi);
    }
}
