//! Amounts in USD for the business metrics. Fixed reference rates: the metrics are for trends and
//! alerting, not accounting; a currency not listed here is counted at face value and logged once.

const USD_PER_UNIT: &[(&str, f64)] = &[
    ("USD", 1.0),
    ("EUR", 1.08),
    ("GBP", 1.27),
    ("CAD", 0.73),
    ("AUD", 0.66),
    ("JPY", 0.0067),
    ("CHF", 1.13),
    ("BRL", 0.18),
    ("INR", 0.012),
    ("MXN", 0.055),
];

/// `amount` of `currency` in USD, and whether the currency was known.
pub fn to_usd(amount: f64, currency: &str) -> (f64, bool) {
    match USD_PER_UNIT.iter().find(|(c, _)| *c == currency) {
        Some((_, rate)) => (amount * rate, true),
        None => (amount, false),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_and_unknown_currencies() {
        assert_eq!(super::to_usd(10.0, "USD"), (10.0, true));
        assert!((super::to_usd(100.0, "EUR").0 - 108.0).abs() < 1e-9);
        assert_eq!(super::to_usd(5.0, "XYZ"), (5.0, false));
    }
}
