//! How well a model's verdicts match the truth: confusion counts at one of the two operating
//! points (positive = review or block, positive = block) and the rates derived from them. The
//! drift job computes them over labelled decisions; `scorer replay` over a backtest's.

use schemas::Verdict;

/// Confusion counts and the rates derived from them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
}

impl Confusion {
    pub fn add(&mut self, predicted_fraud: bool, is_fraud: bool) {
        match (predicted_fraud, is_fraud) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    /// Takes back an `add` of the same pair (a sliding window's oldest entry leaving it).
    pub fn remove(&mut self, predicted_fraud: bool, is_fraud: bool) {
        let n = match (predicted_fraud, is_fraud) {
            (true, true) => &mut self.tp,
            (true, false) => &mut self.fp,
            (false, true) => &mut self.fn_,
            (false, false) => &mut self.tn,
        };
        *n = n.saturating_sub(1);
    }

    fn ratio(a: u64, b: u64) -> f64 {
        if b == 0 { 0.0 } else { a as f64 / b as f64 }
    }

    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        Self::ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    pub fn false_positive_rate(&self) -> f64 {
        Self::ratio(self.fp, self.fp + self.tn)
    }
}

/// The two operating points of `model_performance{threshold}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// Positive = review or block.
    Review,
    /// Positive = block.
    Block,
}

impl Threshold {
    pub const ALL: [Threshold; 2] = [Threshold::Review, Threshold::Block];

    pub fn as_str(self) -> &'static str {
        match self {
            Threshold::Review => "review",
            Threshold::Block => "block",
        }
    }

    pub fn positive(self, v: Verdict) -> bool {
        match self {
            Threshold::Review => v != Verdict::Approve,
            Threshold::Block => v == Verdict::Block,
        }
    }
}
