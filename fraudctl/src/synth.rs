//! Synthetic users and payments drawn from the same distributions as the training data
//! (`model/train.py`), so that local traffic looks like what the model was trained on — or,
//! with drift, deliberately does not.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal, Poisson};

use schemas::{PaymentMethod, Transaction};
use scorer::UserFeatures;

const COUNTRIES: [&str; 10] = ["US", "GB", "DE", "FR", "NL", "ES", "IT", "CA", "BR", "IN"];
const COUNTRY_WEIGHTS: [f64; 10] = [0.4, 0.12, 0.1, 0.08, 0.05, 0.05, 0.05, 0.06, 0.05, 0.04];
const FRAUD_RATE: f64 = 0.03;

/// A shift applied to generated traffic, to exercise drift detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Drift {
    #[default]
    None,
    /// Amounts about 4.5× larger than in training.
    Amount,
    /// Most payments at night (UTC 00-05).
    Night,
    /// Crypto becomes the most common payment method.
    Crypto,
}

/// A synthetic user: their stored features and whether they are a fraudster.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthUser {
    pub user_id: String,
    pub features: UserFeatures,
    pub fraudster: bool,
}

/// A generated payment with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthPayment {
    pub transaction: Transaction,
    pub is_fraud: bool,
}

pub struct Generator {
    rng: StdRng,
    drift: Drift,
    counter: u64,
    /// `txn-<run_id>-`, the start of every transaction id of the run.
    id_prefix: String,
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T], weights: &[f64]) -> T {
    let mut x = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (item, w) in items.iter().zip(weights) {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    items[items.len() - 1]
}

fn lognormal(rng: &mut StdRng, mu: f64, sigma: f64) -> f64 {
    LogNormal::new(mu, sigma).map_or(mu.exp(), |d| d.sample(rng))
}

fn poisson(rng: &mut StdRng, lambda: f64) -> f64 {
    Poisson::new(lambda).map_or(0.0, |d| d.sample(rng))
}

impl Generator {
    /// `run_id` makes transaction ids unique across runs (`txn-<run_id>-<n>`).
    pub fn new(seed: u64, drift: Drift, run_id: impl Into<String>) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), drift, counter: 0, id_prefix: Self::id_prefix(&run_id.into()) }
    }

    /// What every transaction id of run `run_id` starts with, and no other run's does.
    pub fn id_prefix(run_id: &str) -> String {
        format!("txn-{run_id}-")
    }

    /// User number `n` of a population: the same `n` and seed always give the same user.
    pub fn user(seed: u64, n: u64) -> SynthUser {
        let mut rng = StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let fraudster = rng.random::<f64>() < FRAUD_RATE;
        let account_age_days = if fraudster {
            if rng.random::<f64>() < 0.45 {
                Exp::new(1.0 / 40.0).map_or(40.0, |d| d.sample(&mut rng))
            } else {
                lognormal(&mut rng, 5.8, 1.0)
            }
        } else {
            lognormal(&mut rng, 6.0, 0.9)
        }
        .round();
        let txn_count_1h = poisson(&mut rng, if fraudster { 1.3 } else { 0.4 });
        let txn_count_24h = txn_count_1h + poisson(&mut rng, if fraudster { 5.0 } else { 3.0 });
        let avg_amount_30d = (lognormal(&mut rng, 4.0, 0.8) * 100.0).round() / 100.0;
        let chargebacks_90d = poisson(&mut rng, if fraudster { 0.25 } else { 0.03 });
        let home_country = pick(&mut rng, &COUNTRIES, &COUNTRY_WEIGHTS);
        SynthUser {
            user_id: format!("{}", 10_000 + n),
            features: UserFeatures {
                account_age_days,
                txn_count_1h,
                txn_count_24h,
                avg_amount_30d,
                chargebacks_90d,
                home_country: Some(home_country.into()),
            },
            fraudster,
        }
    }

    /// The next payment by `user` at `now_ms`.
    pub fn payment(&mut self, user: &SynthUser, now_ms: i64) -> SynthPayment {
        let rng = &mut self.rng;
        // Fraudsters' payments are fraud; a small share of legitimate users' are too (account
        // takeover), so fraud is about 3 % of payments as in training.
        let is_fraud = user.fraudster || rng.random::<f64>() < 0.004;
        let spend = if is_fraud { lognormal(rng, 0.7, 0.9) } else { lognormal(rng, 0.0, 0.6) };
        let mut amount = (user.features.avg_amount_30d * spend * 100.0).round() / 100.0;
        if self.drift == Drift::Amount {
            amount = (amount * 4.5 * 100.0).round() / 100.0;
        }
        let amount = amount.clamp(0.5, 1_000_000.0);

        let night_weight = match (self.drift, is_fraud) {
            (Drift::Night, _) => 40.0,
            (_, true) => 3.0,
            _ => 1.0,
        };
        let hours: Vec<i64> = (0..24).collect();
        let weights: Vec<f64> = (0..24)
            .map(|h| if h < 6 { night_weight } else if (9..=21).contains(&h) { 1.5 } else { 1.0 })
            .collect();
        let hour = pick(rng, &hours, &weights);
        let day_start = now_ms.div_euclid(86_400_000) * 86_400_000;
        let timestamp = day_start + hour * 3_600_000 + rng.random_range(0..3_600_000);

        let home = user.features.home_country.as_deref().unwrap_or("US");
        let cross = rng.random::<f64>() < if is_fraud { 0.25 } else { 0.07 };
        let country = if cross { pick(rng, &COUNTRIES, &[1.0; 10]) } else { home };

        let pm_weights: [f64; 4] = match (self.drift, is_fraud) {
            (Drift::Crypto, _) => [0.3, 0.1, 0.15, 0.45],
            (_, true) => [0.55, 0.08, 0.22, 0.15],
            _ => [0.62, 0.2, 0.16, 0.02],
        };
        let payment_method = pick(rng, &PaymentMethod::ALL, &pm_weights);

        self.counter += 1;
        SynthPayment {
            transaction: Transaction {
                transaction_id: format!("{}{}", self.id_prefix, self.counter),
                user_id: user.user_id.clone(),
                amount,
                currency: "USD".into(),
                payment_method,
                merchant_id: Some(format!("merchant_{}", rng.random_range(1..=500))),
                country: Some(country.into()),
                timestamp,
            },
            is_fraud,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_reproducible_and_mostly_honest() {
        assert_eq!(Generator::user(7, 42), Generator::user(7, 42));
        assert_ne!(Generator::user(7, 42), Generator::user(7, 43));
        let fraudsters = (0..10_000).filter(|&n| Generator::user(1, n).fraudster).count();
        assert!((200..400).contains(&fraudsters), "{fraudsters} of 10000");
    }

    #[test]
    fn payments_are_valid_transactions_with_unique_ids() {
        let mut g = Generator::new(1, Drift::None, "t");
        let users: Vec<_> = (0..100).map(|n| Generator::user(1, n)).collect();
        let mut ids = std::collections::HashSet::new();
        for i in 0..2000 {
            let p = g.payment(&users[i % 100], 1_750_000_000_000);
            assert!(p.transaction.field_errors(&Default::default()).is_empty(), "{p:?}");
            assert!(ids.insert(p.transaction.transaction_id));
        }
    }

    #[test]
    fn amount_drift_moves_amounts_up() {
        let users: Vec<_> = (0..200).map(|n| Generator::user(3, n)).collect();
        let mean = |drift| {
            let mut g = Generator::new(3, drift, "d");
            (0..4000).map(|i| g.payment(&users[i % 200], 0).transaction.amount.ln()).sum::<f64>() / 4000.0
        };
        assert!(mean(Drift::Amount) - mean(Drift::None) > 1.3);
    }
}
