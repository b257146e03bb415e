//! fraudstream's drift job: how far live traffic has moved from the model's training data.

pub mod psi;
