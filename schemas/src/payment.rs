//! What a transaction id stands for: the payment a retry must repeat. The gateway refuses an id
//! that comes back with another payment, and the scorer tells a retry from a reused id, by these
//! same fields. (The timestamp is left out: a retry without one is stamped anew on receipt.)

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::{Decision, PaymentMethod, Transaction};

#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub user_id: String,
    pub amount: f64,
    pub currency: String,
    pub payment_method: PaymentMethod,
}

impl Payment {
    pub fn of(tx: &Transaction) -> Self {
        Self { user_id: tx.user_id.clone(), amount: tx.amount, currency: tx.currency.clone(), payment_method: tx.payment_method }
    }

    pub fn decided(d: &Decision) -> Self {
        Self { user_id: d.user_id.clone(), amount: d.amount, currency: d.currency.clone(), payment_method: d.payment_method }
    }

    /// The fields, by their API names, that `other` gives differently.
    pub fn differences(&self, other: &Payment) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.user_id != other.user_id {
            out.push("user_id");
        }
        if self.amount != other.amount {
            out.push("amount");
        }
        if self.currency != other.currency {
            out.push("currency");
        }
        if self.payment_method != other.payment_method {
            out.push("payment_method");
        }
        out
    }
}

impl Transaction {
    /// A hash of its `Payment`, taken without building one (the scorer does this per record):
    /// equal for a retry, different (but for a 64-bit collision) for another payment.
    pub fn payment_hash(&self) -> u64 {
        payment_hash(&self.user_id, self.amount, &self.currency, self.payment_method)
    }
}

impl Decision {
    /// The [`Transaction::payment_hash`] of the payment it decided.
    pub fn payment_hash(&self) -> u64 {
        payment_hash(&self.user_id, self.amount, &self.currency, self.payment_method)
    }
}

fn payment_hash(user_id: &str, amount: f64, currency: &str, method: PaymentMethod) -> u64 {
    let mut h = DefaultHasher::new();
    (user_id, amount.to_bits(), currency, method).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx() -> Transaction {
        Transaction::example()
    }

    #[test]
    fn the_payment_hash_changes_exactly_when_the_payment_does() {
        let base = tx();
        let variants = [
            (Transaction { user_id: "9".into(), ..tx() }, Some("user_id")),
            (Transaction { amount: 150.0, ..tx() }, Some("amount")),
            (Transaction { currency: "EUR".into(), ..tx() }, Some("currency")),
            (Transaction { payment_method: PaymentMethod::Crypto, ..tx() }, Some("payment_method")),
            (Transaction { merchant_id: None, country: None, timestamp: 5, ..tx() }, None),
        ];
        for (v, differs) in variants {
            assert_eq!(Payment::of(&base).differences(&Payment::of(&v)), differs.into_iter().collect::<Vec<_>>());
            assert_eq!(base.payment_hash() != v.payment_hash(), differs.is_some(), "{differs:?}");
        }
    }

    #[test]
    fn a_decision_hashes_the_payment_it_decided_as_the_transaction_does() {
        let t = tx();
        let d = Decision {
            transaction_id: t.transaction_id.clone(),
            user_id: t.user_id.clone(),
            decision: crate::Verdict::Approve,
            fraud_probability: 0.1,
            risk_level: crate::RiskLevel::Low,
            model_version: "1".into(),
            features: vec![],
            top_features: vec![],
            degraded: false,
            user_features_found: true,
            amount: t.amount,
            currency: t.currency.clone(),
            payment_method: t.payment_method,
            transaction_timestamp: t.timestamp,
            decided_at: t.timestamp,
            processing_latency_ms: 1.0,
        };
        assert_eq!(d.payment_hash(), t.payment_hash());
        assert_ne!(Decision { amount: t.amount + 1.0, ..d }.payment_hash(), t.payment_hash());
    }
}
