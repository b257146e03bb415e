//! fraudstream's drift job: how far live traffic has moved from the model's training data (PSI
//! per feature), and how good the model's decisions turn out to be once labels arrive.

pub mod engine;
pub mod metrics;
pub mod psi;
pub mod quality;
pub mod window;
