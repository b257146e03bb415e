//! The model card: everything about a trained model that the services need besides its ONNX
//! graph — version, feature order, thresholds, degraded-mode defaults, PSI reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::features::{FEATURE_NAMES, UserFeatures};
use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct ModelCard {
    pub model_name: String,
    pub model_version: String,
    pub onnx_file: String,
    pub onnx_input: String,
    pub onnx_outputs: OnnxOutputs,
    pub features: Vec<FeatureSpec>,
    pub default_user_features: UserFeatures,
    pub thresholds: Thresholds,
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    pub psi: PsiSpec,
    pub holdout: serde_json::Value,
    /// Where the card was read from; the ONNX file is resolved relative to it.
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OnnxOutputs {
    pub probabilities: String,
    pub contributions: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Thresholds {
    /// Probabilities at or above this are reviewed.
    pub review: f64,
    /// Probabilities at or above this are blocked.
    pub block: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PsiSpec {
    pub bins: usize,
    pub epsilon: f64,
    pub reference: BTreeMap<String, Reference>,
}

/// The training distribution of one monitored feature.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reference {
    /// Right-closed bins (-inf, e1], (e1, e2], ..., (e_{k-1}, inf) with their training shares.
    Numeric { edges: Vec<f64>, expected: Vec<f64> },
    /// One share per training category, then the share of the `__unseen__` bucket.
    Categorical { categories: Vec<String>, expected: Vec<f64> },
}

impl ModelCard {
    /// The card shipped in this repository's `model/` folder.
    pub fn bundled_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/model_card.json")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|error| Error::CardRead { path: shown.clone(), error })?;
        let mut card: ModelCard = serde_json::from_str(&text)
            .map_err(|e| Error::CardInvalid { path: shown.clone(), reason: e.to_string() })?;
        card.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        card.check().map_err(|reason| Error::CardInvalid { path: shown, reason })?;
        Ok(card)
    }

    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(&self.onnx_file)
    }

    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|f| f.name.as_str())
    }

    /// The card must describe the model this build computes features for.
    fn check(&self) -> Result<(), String> {
        let names: Vec<&str> = self.feature_names().collect();
        if names != FEATURE_NAMES {
            return Err(format!(
                "feature order {names:?} differs from the one this build computes {FEATURE_NAMES:?}"
            ));
        }
        if self.coefficients.len() != names.len() {
            return Err(format!("{} coefficients for {} features", self.coefficients.len(), names.len()));
        }
        let t = self.thresholds;
        if !(0.0 < t.review && t.review <= t.block && t.block <= 1.0) {
            return Err(format!("thresholds must satisfy 0 < review <= block <= 1, got {t:?}"));
        }
        for (feature, reference) in &self.psi.reference {
            match reference {
                Reference::Numeric { edges, expected } => {
                    if expected.len() != edges.len() + 1 {
                        return Err(format!("{feature}: {} edges need {} shares", edges.len(), edges.len() + 1));
                    }
                    if edges.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(format!("{feature}: edges must increase strictly"));
                    }
                }
                Reference::Categorical { categories, expected } => {
                    if expected.len() != categories.len() + 1 {
                        return Err(format!("{feature}: {} categories need {} shares", categories.len(), categories.len() + 1));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_card_loads_and_matches_this_build() {
        let card = ModelCard::load(&ModelCard::bundled_path()).unwrap();
        assert_eq!(card.model_version, "1.0.0");
        assert_eq!(card.thresholds, Thresholds { review: 0.3, block: 0.7 });
        assert!(card.onnx_path().exists());
        assert!(matches!(card.psi.reference["payment_method"], Reference::Categorical { .. }));
        assert!(matches!(card.psi.reference["amount_log"], Reference::Numeric { ref edges, .. } if edges.len() == 9));
    }

    #[test]
    fn a_card_for_another_feature_order_is_refused() {
        let dir = std::env::temp_dir().join(format!("card-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(ModelCard::bundled_path()).unwrap();
        let swapped = text.replacen("\"amount_log\"", "\"amount_raw\"", 1);
        let path = dir.join("model_card.json");
        std::fs::write(&path, swapped).unwrap();
        let err = ModelCard::load(&path).unwrap_err().to_string();
        assert!(err.contains("feature order"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_card_names_the_path() {
        let err = ModelCard::load(Path::new("/nonexistent/card.json")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/card.json"), "{err}");
    }
}
