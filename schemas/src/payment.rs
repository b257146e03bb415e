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
        let mut h = DefaultHasher::new();
        (&self.user_id, self.amount.to_bits(), &self.currency, self.payment_method).hash(&mut h);
        h.finish()
    }
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
}
