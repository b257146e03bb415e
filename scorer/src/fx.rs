//! Amounts in USD: for the model's amount features and the amount rule (the model was trained on
//! USD amounts) and for the business metrics. Fixed reference rates — enough to put a payment's
//! size on the model's scale and for trends and alerting, not for accounting; a currency not
//! listed here is taken at face value (the scorer says so once per currency).

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

/// `amount` of `currency` in USD for the model and the rules; at face value, said once per
/// currency and process, for a currency without a reference rate.
pub fn model_amount(amount: f64, currency: &str) -> f64 {
    let (usd, priced) = to_usd(amount, currency);
    if !priced {
        static SAID: std::sync::Mutex<std::collections::BTreeSet<String>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
        // Currencies are validated codes (ISO 4217), so the set stays small; capped all the same.
        if said.len() < 512 && said.insert(currency.to_string()) {
            tracing::warn!(currency, "no reference rate for this currency: its amounts are taken as USD by the model and the amount rule");
        }
    }
    usd
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
