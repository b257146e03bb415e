//! Field-level checks on a `Transaction`, shared by every door a transaction comes in by (HTTP,
//! Kafka), so that both refuse the same things for the same reasons.

use serde::Serialize;

use crate::records::Transaction;

/// One bad field and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Configurable bounds on what a transaction may carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransactionLimits {
    pub max_amount: f64,
}

impl Default for TransactionLimits {
    fn default() -> Self {
        Self { max_amount: 1_000_000.0 }
    }
}

const MAX_ID_LEN: usize = 128;

impl Transaction {
    /// Every field that breaks the contract, with the reason; empty when the record is valid.
    pub fn field_errors(&self, limits: &TransactionLimits) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_id(&mut errors, "transaction_id", &self.transaction_id);
        check_id(&mut errors, "user_id", &self.user_id);
        if let Some(m) = &self.merchant_id {
            check_id(&mut errors, "merchant_id", m);
        }
        if !self.amount.is_finite() {
            errors.push(FieldError::new("amount", "must be a finite number"));
        } else if self.amount <= 0.0 {
            errors.push(FieldError::new("amount", "must be > 0"));
        } else if self.amount > limits.max_amount {
            errors.push(FieldError::new("amount", format!("must be at most {}", limits.max_amount)));
        }
        if !crate::codes::is_currency(&self.currency) {
            errors.push(FieldError::new("currency", "must be an ISO 4217 currency code such as USD"));
        }
        if let Some(c) = &self.country
            && !crate::codes::is_country(c)
        {
            errors.push(FieldError::new("country", "must be an ISO 3166-1 alpha-2 country code such as US"));
        }
        if self.timestamp < 0 {
            errors.push(FieldError::new("timestamp", "must not be before 1970-01-01"));
        }
        errors
    }
}

fn check_id(errors: &mut Vec<FieldError>, field: &str, value: &str) {
    // One pass over the characters (ids are checked on every record the scorer reads).
    let (mut chars, mut blank, mut control) = (0usize, true, false);
    if value.is_ascii() {
        for &b in value.as_bytes() {
            blank &= matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
            control |= b < 0x20 || b == 0x7f;
        }
        chars = value.len();
    } else {
        for c in value.chars() {
            chars += 1;
            blank &= c.is_whitespace();
            control |= c.is_control();
        }
    }
    if blank {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if chars > MAX_ID_LEN {
        errors.push(FieldError::new(field, format!("must be at most {MAX_ID_LEN} characters")));
    } else if control {
        errors.push(FieldError::new(field, "must not contain control characters"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Transaction {
        Transaction::example()
    }

    fn fields(t: Transaction) -> Vec<String> {
        t.field_errors(&TransactionLimits::default()).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn valid_transaction_has_no_errors() {
        assert!(fields(valid()).is_empty());
    }

    #[test]
    fn amount_bounds() {
        assert_eq!(fields(Transaction { amount: 0.0, ..valid() }), ["amount"]);
        assert_eq!(fields(Transaction { amount: -1.0, ..valid() }), ["amount"]);
        assert_eq!(fields(Transaction { amount: f64::NAN, ..valid() }), ["amount"]);
        assert_eq!(fields(Transaction { amount: f64::INFINITY, ..valid() }), ["amount"]);
        assert_eq!(fields(Transaction { amount: 1_000_000.01, ..valid() }), ["amount"]);
        assert!(fields(Transaction { amount: 1_000_000.0, ..valid() }).is_empty());
        let tight = TransactionLimits { max_amount: 10.0 };
        let errs = Transaction { amount: 11.0, ..valid() }.field_errors(&tight);
        assert_eq!(errs, [FieldError::new("amount", "must be at most 10")]);
    }

    #[test]
    fn ids_codes_and_time() {
        let bad = Transaction {
            transaction_id: " ".into(),
            user_id: "x".repeat(129),
            merchant_id: Some("a\nb".into()),
            currency: "usd".into(),
            country: Some("USA".into()),
            timestamp: -1,
            ..valid()
        };
        assert_eq!(
            fields(bad),
            ["transaction_id", "user_id", "merchant_id", "currency", "country", "timestamp"]
        );
    }

    /// The one-pass check gives the reasons the plain definitions give: empty after `trim`,
    /// more than 128 `chars`, any `char::is_control`.
    #[test]
    fn id_checks_match_their_definitions() {
        let samples = [
            "", " ", "\t\n\x0b\x0c\r ", "\u{a0}\u{2003}", "\x0b", "a\x0b", "a\x7f", "a\u{85}", "\u{85}", "ok-id_1", "é", "\u{1f600}",
        ];
        let long = ["x".repeat(128), "x".repeat(129), "é".repeat(129), format!("{}\n", "x".repeat(128))];
        for v in samples.iter().map(|s| s.to_string()).chain(long) {
            let want = if v.trim().is_empty() {
                Some("must not be empty".to_string())
            } else if v.chars().count() > MAX_ID_LEN {
                Some(format!("must be at most {MAX_ID_LEN} characters"))
            } else if v.chars().any(char::is_control) {
                Some("must not contain control characters".to_string())
            } else {
                None
            };
            let mut errors = Vec::new();
            check_id(&mut errors, "user_id", &v);
            assert_eq!(errors.pop().map(|e| e.reason), want, "{v:?}");
        }
    }

    #[test]
    fn id_length_counts_characters_as_the_api_spec_does() {
        assert!(fields(Transaction { user_id: "é".repeat(128), ..valid() }).is_empty(), "256 bytes, 128 characters");
        let errs = Transaction { user_id: "é".repeat(129), ..valid() }.field_errors(&TransactionLimits::default());
        assert_eq!(errs, [FieldError::new("user_id", "must be at most 128 characters")]);
    }
}
