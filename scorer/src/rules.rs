//! Business rules: from a fraud probability (and the transaction) to approve, review or block.

use schemas::{Transaction, Verdict};

use crate::card::Thresholds;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub thresholds: Thresholds,
    /// Amounts above this, in USD, are never approved without a human look, whatever the score.
    pub review_above_amount: Option<f64>,
}

impl Rules {
    pub fn new(thresholds: Thresholds, review_above_amount: Option<f64>) -> Result<Self> {
        let t = thresholds;
        if !(0.0 < t.review && t.review <= t.block && t.block <= 1.0) {
            return Err(Error::Rules(format!(
                "thresholds must satisfy 0 < review <= block <= 1, got review={} block={}",
                t.review, t.block
            )));
        }
        if let Some(a) = review_above_amount
            && !(a.is_finite() && a > 0.0)
        {
            return Err(Error::Rules(format!("review-above amount must be > 0, got {a}")));
        }
        Ok(Self { thresholds, review_above_amount })
    }

    /// approve below `review`, review from `review` up to below `block`, block from `block` on.
    pub fn verdict(&self, probability: f64, tx: &Transaction) -> Verdict {
        let by_score = if probability >= self.thresholds.block {
            Verdict::Block
        } else if probability >= self.thresholds.review {
            Verdict::Review
        } else {
            Verdict::Approve
        };
        match self.review_above_amount {
            Some(limit) if by_score == Verdict::Approve && crate::fx::model_amount(tx.amount, &tx.currency) > limit => Verdict::Review,
            _ => by_score,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::PaymentMethod;

    fn tx(amount: f64) -> Transaction {
        Transaction {
            transaction_id: "t".into(),
            user_id: "u".into(),
            amount,
            currency: "USD".into(),
            payment_method: PaymentMethod::Card,
            merchant_id: None,
            country: None,
            timestamp: 0,
        }
    }

    fn rules() -> Rules {
        Rules::new(Thresholds { review: 0.3, block: 0.7 }, Some(10_000.0)).unwrap()
    }

    #[test]
    fn thresholds_at_their_edges() {
        let r = rules();
        let t = tx(10.0);
        let below = |x: f64| x.next_down();
        assert_eq!(r.verdict(0.0, &t), Verdict::Approve);
        assert_eq!(r.verdict(below(0.3), &t), Verdict::Approve);
        assert_eq!(r.verdict(0.3, &t), Verdict::Review);
        assert_eq!(r.verdict(below(0.7), &t), Verdict::Review);
        assert_eq!(r.verdict(0.7, &t), Verdict::Block);
        assert_eq!(r.verdict(1.0, &t), Verdict::Block);
    }

    #[test]
    fn large_amounts_are_reviewed_not_approved() {
        let r = rules();
        assert_eq!(r.verdict(0.01, &tx(10_000.0)), Verdict::Approve);
        assert_eq!(r.verdict(0.01, &tx(10_000.01)), Verdict::Review);
        assert_eq!(r.verdict(0.9, &tx(50_000.0)), Verdict::Block);
    }

    #[test]
    fn the_amount_limit_is_in_usd() {
        let r = rules();
        let mut t = tx(1_000_000.0);
        t.currency = "JPY".into(); // 6,700 USD
        assert_eq!(r.verdict(0.01, &t), Verdict::Approve);
        t.currency = "GBP".into();
        t.amount = 8_000.0; // 10,160 USD
        assert_eq!(r.verdict(0.01, &t), Verdict::Review);
    }

    #[test]
    fn inconsistent_thresholds_are_refused() {
        assert!(Rules::new(Thresholds { review: 0.8, block: 0.7 }, None).is_err());
        assert!(Rules::new(Thresholds { review: 0.0, block: 0.7 }, None).is_err());
        assert!(Rules::new(Thresholds { review: 0.3, block: 1.1 }, None).is_err());
        assert!(Rules::new(Thresholds { review: 0.3, block: 0.7 }, Some(-1.0)).is_err());
    }
}
