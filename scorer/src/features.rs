//! The model's input: what the feature store holds per user, and the feature vector built from
//! a transaction plus those user features (the same arithmetic as `model/train.py`).

use serde::{Deserialize, Serialize};

use schemas::{PaymentMethod, Transaction};

pub const N_FEATURES: usize = 12;

/// The model's input columns, in order. The model card must list the same.
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "amount_log",
    "amount_ratio_log",
    "is_night",
    "is_cross_border",
    "account_age_log",
    "txn_count_1h",
    "txn_count_24h",
    "chargebacks_90d",
    "pm_card",
    "pm_bank_transfer",
    "pm_wallet",
    "pm_crypto",
];

/// What the feature store holds for one user (one Redis hash, one field each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserFeatures {
    pub account_age_days: f64,
    pub txn_count_1h: f64,
    pub txn_count_24h: f64,
    pub avg_amount_30d: f64,
    pub chargebacks_90d: f64,
    #[serde(default)]
    pub home_country: Option<String>,
}

/// The outcome of looking a user up in the feature store.
#[derive(Debug, Clone, PartialEq)]
pub enum UserLookup {
    Found(UserFeatures),
    /// The store answered but has no features for this user.
    Missing,
    /// The store did not answer (down, slow, refused), or holds the user's features in a form
    /// that cannot be read: the decision is degraded.
    Unavailable,
}

impl UserFeatures {
    /// Field names as stored in the feature store's hash.
    pub const FIELDS: [&'static str; 6] = [
        "account_age_days",
        "txn_count_1h",
        "txn_count_24h",
        "avg_amount_30d",
        "chargebacks_90d",
        "home_country",
    ];

    /// Whether `v` can be a stored numeric feature: finite, not negative, and within the model's
    /// `f32` input (a larger count would reach the model as infinity).
    pub fn usable_value(v: f64) -> bool {
        v.is_finite() && v >= 0.0 && v <= f64::from(f32::MAX)
    }

    /// Builds a user's features from stored (field, value) pairs. A field that is absent or whose
    /// value is not a usable number (`usable_value`) takes the default's value.
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
        defaults: &UserFeatures,
    ) -> UserFeatures {
        let mut u = defaults.clone();
        u.home_country = None;
        for (name, value) in fields {
            let slot = match name {
                "account_age_days" => &mut u.account_age_days,
                "txn_count_1h" => &mut u.txn_count_1h,
                "txn_count_24h" => &mut u.txn_count_24h,
                "avg_amount_30d" => &mut u.avg_amount_30d,
                "chargebacks_90d" => &mut u.chargebacks_90d,
                "home_country" => {
                    let v = value.trim();
                    u.home_country = (!v.is_empty()).then(|| v.to_ascii_uppercase());
                    continue;
                }
                _ => continue,
            };
            if let Ok(v) = value.trim().parse::<f64>()
                && Self::usable_value(v)
            {
                *slot = v;
            }
        }
        u
    }

    /// The (field, value) pairs to store for this user.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("account_age_days", self.account_age_days.to_string()),
            ("txn_count_1h", self.txn_count_1h.to_string()),
            ("txn_count_24h", self.txn_count_24h.to_string()),
            ("avg_amount_30d", self.avg_amount_30d.to_string()),
            ("chargebacks_90d", self.chargebacks_90d.to_string()),
        ];
        if let Some(c) = &self.home_country {
            out.push(("home_country", c.clone()));
        }
        out
    }
}

const MS_PER_HOUR: i64 = 3_600_000;

/// The feature vector for `tx` given the user's features, in `FEATURE_NAMES` order. Amounts
/// enter in USD, the currency the model was trained in and `avg_amount_30d` is kept in: a
/// payment in another currency is converted at its reference rate (`crate::fx`; at face value
/// for a currency without one).
pub fn feature_vector(tx: &Transaction, user: &UserFeatures) -> [f32; N_FEATURES] {
    let amount = crate::fx::model_amount(tx.amount, &tx.currency);
    let hour = (tx.timestamp.div_euclid(MS_PER_HOUR)).rem_euclid(24);
    let cross_border = match (&tx.country, &user.home_country) {
        (Some(c), Some(home)) => c != home,
        _ => false,
    };
    let pm = tx.payment_method;
    let one_hot = |m: PaymentMethod| f64::from(u8::from(pm == m));
    let f = [
        amount.ln_1p(),
        ((1.0 + amount) / (1.0 + user.avg_amount_30d)).ln(),
        f64::from(u8::from(hour < 6)),
        f64::from(u8::from(cross_border)),
        user.account_age_days.ln_1p(),
        user.txn_count_1h,
        user.txn_count_24h,
        user.chargebacks_90d,
        one_hot(PaymentMethod::Card),
        one_hot(PaymentMethod::BankTransfer),
        one_hot(PaymentMethod::Wallet),
        one_hot(PaymentMethod::Crypto),
    ];
    f.map(|v| v as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> UserFeatures {
        UserFeatures {
            account_age_days: 396.0,
            txn_count_1h: 0.0,
            txn_count_24h: 3.0,
            avg_amount_30d: 54.4,
            chargebacks_90d: 0.0,
            home_country: None,
        }
    }

    fn tx(amount: f64, hour: i64, country: Option<&str>, pm: PaymentMethod) -> Transaction {
        Transaction {
            transaction_id: "t".into(),
            user_id: "u".into(),
            amount,
            currency: "USD".into(),
            payment_method: pm,
            merchant_id: None,
            country: country.map(Into::into),
            timestamp: 20_000 * 86_400_000 + hour * MS_PER_HOUR + 59_999,
        }
    }

    #[test]
    fn stored_fields_parse_and_fall_back_to_defaults() {
        let u = UserFeatures::from_fields(
            [("account_age_days", "12"), ("txn_count_1h", "oops"), ("home_country", "de"), ("extra", "1")],
            &defaults(),
        );
        assert_eq!(u.account_age_days, 12.0);
        assert_eq!(u.txn_count_1h, 0.0, "unparseable → default");
        assert_eq!(u.home_country.as_deref(), Some("DE"));
        let back = UserFeatures::from_fields(u.to_fields().iter().map(|(k, v)| (*k, v.as_str())), &defaults());
        assert_eq!(back, u);
        let neg = UserFeatures::from_fields([("chargebacks_90d", "-3"), ("txn_count_24h", "inf"), ("txn_count_1h", "1e300")], &defaults());
        assert_eq!((neg.chargebacks_90d, neg.txn_count_24h, neg.txn_count_1h), (0.0, 3.0, 0.0), "1e300 would reach the model as infinity");
    }

    #[test]
    fn night_cross_border_and_one_hot() {
        let user = UserFeatures { home_country: Some("US".into()), ..defaults() };
        let v = feature_vector(&tx(100.0, 5, Some("BR"), PaymentMethod::Crypto), &user);
        assert_eq!(v[2], 1.0, "05:59 is night");
        assert_eq!(v[3], 1.0, "BR != US");
        assert_eq!(&v[8..], &[0.0, 0.0, 0.0, 1.0]);
        let v = feature_vector(&tx(100.0, 6, Some("US"), PaymentMethod::BankTransfer), &user);
        assert_eq!((v[2], v[3]), (0.0, 0.0));
        assert_eq!(&v[8..], &[0.0, 1.0, 0.0, 0.0]);
        let v = feature_vector(&tx(100.0, 12, None, PaymentMethod::Card), &user);
        assert_eq!(v[3], 0.0, "unknown country is not cross-border");
        assert!((v[0] - 101f32.ln()).abs() < 1e-6);
        assert!((v[1] - (101.0f32 / 55.4).ln()).abs() < 1e-6);
    }

    #[test]
    fn amounts_enter_in_usd_whatever_the_currency() {
        let user = defaults();
        let in_usd = feature_vector(&tx(100.5, 12, None, PaymentMethod::Card), &user);
        let close = |v: [f32; N_FEATURES]| v.iter().zip(&in_usd).all(|(a, b)| (a - b).abs() < 1e-6);
        let mut yen = tx(15_000.0, 12, None, PaymentMethod::Card); // 15,000 JPY at 0.0067 USD
        yen.currency = "JPY".into();
        assert!(close(feature_vector(&yen, &user)), "{:?}", feature_vector(&yen, &user));
        let mut pounds = tx(100.5 / 1.27, 12, None, PaymentMethod::Card);
        pounds.currency = "GBP".into();
        assert!(close(feature_vector(&pounds, &user)), "{:?}", feature_vector(&pounds, &user));
        // A currency without a reference rate is taken at face value.
        let mut won = tx(100.5, 12, None, PaymentMethod::Card);
        won.currency = "KRW".into();
        assert_eq!(feature_vector(&won, &user), in_usd);
    }

    #[test]
    fn hour_is_utc_and_handles_times_before_the_epoch() {
        let mut t = tx(1.0, 0, None, PaymentMethod::Card);
        t.timestamp = -1; // 23:59:59.999 on 1969-12-31
        assert_eq!(feature_vector(&t, &defaults())[2], 0.0);
        t.timestamp = -MS_PER_HOUR * 20; // 04:00
        assert_eq!(feature_vector(&t, &defaults())[2], 1.0);
    }
}
