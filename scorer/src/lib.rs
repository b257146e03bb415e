//! fraudstream's scorer: turns transactions into explained decisions. The scoring core (card,
//! features, model, rules) is plain library code that tests call without a network.

pub mod card;
pub mod commit;
pub mod config;
pub mod features;
pub mod fx;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod quality;
pub mod replay;
pub mod rules;
pub mod runtime;
pub mod scoring;
pub mod spans;
pub mod store;

pub use card::ModelCard;
pub use features::{FEATURE_NAMES, N_FEATURES, UserFeatures, UserLookup};
pub use model::FraudModel;
pub use rules::Rules;
pub use scoring::Scorer;

/// What can go wrong in the scoring core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the model card {path}: {error}")]
    CardRead { path: String, error: std::io::Error },
    #[error("model card {path} is not valid: {reason}")]
    CardInvalid { path: String, reason: String },
    #[error(
        "ONNX Runtime library not found (looked in: {searched}). Run `scripts/setup.sh` to fetch \
         it, or point ORT_DYLIB_PATH at libonnxruntime.so"
    )]
    RuntimeMissing { searched: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    RuntimeLoad { path: String, reason: String },
    #[error("ONNX model {path}: {source}")]
    ModelLoad { path: String, source: ort::Error },
    #[error("model inference failed: {0}")]
    Inference(#[from] ort::Error),
    #[error("model output {output} has shape {shape:?}, expected [{rows}, {cols}]")]
    OutputShape { output: &'static str, shape: Vec<i64>, rows: usize, cols: usize },
    #[error("invalid rules: {0}")]
    Rules(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
