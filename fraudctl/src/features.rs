//! Loading user features into the feature store: a synthetic population consistent with the
//! training data, or users from a JSON-lines file.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use scorer::UserFeatures;
use scorer::store::FeatureStore;

use crate::synth::Generator;

/// One line of a features file: `{"user_id": "42", "account_age_days": 12, ...}`; absent
/// fields take the model card's defaults.
#[derive(Debug, Deserialize)]
struct FileUser {
    user_id: serde_json::Value,
    #[serde(flatten)]
    fields: serde_json::Map<String, serde_json::Value>,
}

pub fn store(url: &str, key_prefix: &str) -> Result<FeatureStore> {
    // Defaults only matter for reads; writes store exactly what they are given.
    let defaults = UserFeatures {
        account_age_days: 0.0,
        txn_count_1h: 0.0,
        txn_count_24h: 0.0,
        avg_amount_30d: 0.0,
        chargebacks_90d: 0.0,
        home_country: None,
    };
    FeatureStore::new(url, key_prefix, Duration::from_secs(5), Duration::ZERO, defaults).context("feature store URL")
}

/// Writes users 0..n of the synthetic population for `seed`; returns how many were written.
pub fn load_synthetic(store: &mut FeatureStore, users: u64, seed: u64) -> Result<usize> {
    let mut written = 0;
    let chunk = 1000;
    let mut start = 0;
    while start < users {
        let end = (start + chunk).min(users);
        let batch: Vec<_> = (start..end).map(|n| Generator::user(seed, n)).collect();
        written += store
            .store(batch.iter().map(|u| (u.user_id.as_str(), &u.features)))
            .context("writing features to Redis")?;
        start = end;
    }
    Ok(written)
}

/// Writes the users of a JSON-lines file; a bad line stops the load and names the line.
pub fn load_file(store: &mut FeatureStore, path: &Path, defaults: &UserFeatures) -> Result<usize> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut users = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let u: FileUser = serde_json::from_str(&line).with_context(|| format!("{}:{}: not a user object", path.display(), i + 1))?;
        let user_id = match u.user_id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            other => anyhow::bail!("{}:{}: user_id must be a string or number, got {other}", path.display(), i + 1),
        };
        let texts: Vec<(String, String)> = u
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        let features = UserFeatures::from_fields(texts.iter().map(|(k, v)| (k.as_str(), v.as_str())), defaults);
        users.push((user_id, features));
    }
    store.store(users.iter().map(|(id, f)| (id.as_str(), f))).context("writing features to Redis")
}
