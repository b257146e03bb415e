//! The fraud model: one ONNX Runtime session over the card's ONNX graph. One call scores a whole
//! batch and returns, per row, the fraud probability and each feature's logit contribution.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::card::ModelCard;
use crate::features::N_FEATURES;
use crate::{Error, Result};

pub struct FraudModel {
    session: Session,
    input: String,
    probabilities: String,
    contributions: String,
}

/// The model's outputs for a batch of `len` rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchScores {
    /// P(fraud) per row.
    pub probabilities: Vec<f64>,
    /// `N_FEATURES` contributions per row, row-major.
    pub contributions: Vec<f32>,
}

impl BatchScores {
    pub fn len(&self) -> usize {
        self.probabilities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probabilities.is_empty()
    }

    pub fn contributions(&self, row: usize) -> &[f32] {
        &self.contributions[row * N_FEATURES..(row + 1) * N_FEATURES]
    }
}

impl FraudModel {
    /// Loads the card's ONNX graph. `intra_threads` is ONNX Runtime's thread count per call; one
    /// thread is fastest for this model's small batches.
    pub fn load(card: &ModelCard, intra_threads: usize) -> Result<Self> {
        let env = crate::runtime::environment()?;
        let path = card.onnx_path();
        let shown = path.display().to_string();
        let err = |source| Error::ModelLoad { path: shown.clone(), source };
        let builder = Session::builder(env).map_err(err)?;
        let builder = builder.with_intra_threads(intra_threads.max(1)).map_err(|e| err(e.into()))?;
        let builder = builder.with_inter_threads(1).map_err(|e| err(e.into()))?;
        let mut builder = builder.with_optimization_level(GraphOptimizationLevel::Level3).map_err(|e| err(e.into()))?;
        let session = builder.commit_from_file(&path).map_err(err)?;
        Ok(Self {
            session,
            input: card.onnx_input.clone(),
            probabilities: card.onnx_outputs.probabilities.clone(),
            contributions: card.onnx_outputs.contributions.clone(),
        })
    }

    /// Scores `rows` (row-major, `N_FEATURES` per row) in one model call.
    pub fn score(&mut self, rows: &[f32]) -> Result<BatchScores> {
        let n = rows.len() / N_FEATURES;
        assert_eq!(rows.len(), n * N_FEATURES, "rows must hold whole feature vectors");
        if n == 0 {
            return Ok(BatchScores::default());
        }
        let input = TensorRef::from_array_view(([n, N_FEATURES], rows))?;
        let outputs = self.session.run(ort::inputs![self.input.as_str() => input])?;

        let probs = outputs.get(&self.probabilities).ok_or_else(|| missing(&self.probabilities))?;
        let (shape, p) = probs.try_extract_tensor::<f32>()?;
        check_shape("probabilities", shape, n, 2)?;
        let contribs = outputs.get(&self.contributions).ok_or_else(|| missing(&self.contributions))?;
        let (shape, c) = contribs.try_extract_tensor::<f32>()?;
        check_shape("contributions", shape, n, N_FEATURES)?;

        Ok(BatchScores {
            probabilities: p.chunks_exact(2).map(|pair| f64::from(pair[1])).collect(),
            contributions: c.to_vec(),
        })
    }
}

fn missing(name: &str) -> Error {
    Error::Inference(ort::Error::new(format!("the model has no output named `{name}`")))
}

fn check_shape(output: &'static str, shape: &[i64], rows: usize, cols: usize) -> Result<()> {
    if shape != [rows as i64, cols as i64] {
        return Err(Error::OutputShape { output, shape: shape.to_vec(), rows, cols });
    }
    Ok(())
}
