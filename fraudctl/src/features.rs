//! Loading user features into the feature store: a synthetic population consistent with the
//! training data, or users from a JSON-lines file.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use scorer::UserFeatures;
use scorer::store::FeatureStore;

use crate::synth::Generator;

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

/// Users written to Redis per pipeline.
const CHUNK: usize = 1000;

/// Writes users 0..n of the synthetic population for `seed`; returns how many were written.
pub fn load_synthetic(store: &mut FeatureStore, users: u64, seed: u64) -> Result<usize> {
    let mut written = 0;
    let mut start = 0;
    while start < users {
        let end = (start + CHUNK as u64).min(users);
        let batch: Vec<_> = (start..end).map(|n| Generator::user(seed, n)).collect();
        written += store
            .store(batch.iter().map(|u| (u.user_id.as_str(), &u.features)))
            .context("writing features to Redis")?;
        start = end;
    }
    Ok(written)
}

/// Writes the users of a JSON-lines file, one object per line:
/// `{"user_id": "42", "account_age_days": 12, "txn_count_1h": 0, "home_country": "US"}`. Fields
/// left out take `defaults` (the model card's). The whole file is checked first: a bad line — not
/// an object, no usable `user_id`, a value that is not a number ≥ 0, an unknown field — stops the
/// load before anything is written, with the line and the reason. Then it is written in
/// pipelines of `CHUNK` users, so memory stays flat whatever the file's size.
pub fn load_file(store: &mut FeatureStore, path: &Path, defaults: &UserFeatures) -> Result<usize> {
    each_user(path, defaults, |_| Ok(()))?;
    let mut written = 0;
    let mut chunk: Vec<(String, UserFeatures)> = Vec::with_capacity(CHUNK);
    let mut write = |chunk: &mut Vec<(String, UserFeatures)>| -> Result<()> {
        written += store.store(chunk.iter().map(|(id, f)| (id.as_str(), f))).context("writing features to Redis")?;
        chunk.clear();
        Ok(())
    };
    each_user(path, defaults, |user| {
        chunk.push(user);
        if chunk.len() == CHUNK { write(&mut chunk) } else { Ok(()) }
    })?;
    write(&mut chunk)?;
    Ok(written)
}

/// Reads a features file line by line, handing each user to `f`; stops at the first bad line.
fn each_user(path: &Path, defaults: &UserFeatures, mut f: impl FnMut((String, UserFeatures)) -> Result<()>) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let user = parse_user(&line, defaults).map_err(|reason| anyhow::anyhow!("{}:{}: {reason}", path.display(), i + 1))?;
        f(user)?;
    }
    Ok(())
}

/// One line of a features file, checked; the error is the reason in words.
fn parse_user(line: &str, defaults: &UserFeatures) -> std::result::Result<(String, UserFeatures), String> {
    use serde_json::Value;
    let Value::Object(object) = serde_json::from_str::<Value>(line).map_err(|e| format!("not JSON: {e}"))? else {
        return Err("not a JSON object".into());
    };
    let mut user_id = None;
    let mut fields: Vec<(&str, String)> = Vec::with_capacity(object.len());
    for (name, value) in &object {
        match (name.as_str(), value) {
            ("user_id", Value::String(s)) if !s.trim().is_empty() => user_id = Some(s.clone()),
            ("user_id", Value::Number(n)) if n.is_i64() || n.is_u64() => user_id = Some(n.to_string()),
            ("user_id", other) => return Err(format!("user_id must be a non-empty string or an integer, got {other}")),
            ("home_country", Value::Null) => {}
            ("home_country", Value::String(c)) if schemas::codes::is_country(&c.to_ascii_uppercase()) => {
                fields.push(("home_country", c.to_ascii_uppercase()));
            }
            ("home_country", other) => return Err(format!("home_country must be an ISO 3166-1 alpha-2 country code such as US, got {other}")),
            (known, value) if UserFeatures::FIELDS.contains(&known) => {
                let number = match value {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                match number {
                    Some(x) if UserFeatures::usable_value(x) => fields.push((known, x.to_string())),
                    _ => return Err(format!("{known} must be a number >= 0 and at most {:e}, got {value}", f32::MAX)),
                }
            }
            (unknown, _) => {
                return Err(format!("unknown field {unknown:?} (known: user_id, {})", UserFeatures::FIELDS.join(", ")));
            }
        }
    }
    let user_id = user_id.ok_or("user_id is required")?;
    Ok((user_id, UserFeatures::from_fields(fields.iter().map(|(n, v)| (*n, v.as_str())), defaults)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> UserFeatures {
        UserFeatures { account_age_days: 30.0, txn_count_1h: 0.0, txn_count_24h: 1.0, avg_amount_30d: 50.0, chargebacks_90d: 0.0, home_country: None }
    }

    #[test]
    fn a_line_gives_its_user_with_defaults_for_what_it_leaves_out() {
        let (id, u) = parse_user(r#"{"user_id": 42, "account_age_days": 400, "txn_count_1h": "3", "home_country": "de"}"#, &defaults()).unwrap();
        assert_eq!(id, "42");
        assert_eq!((u.account_age_days, u.txn_count_1h, u.home_country.as_deref()), (400.0, 3.0, Some("DE")));
        assert_eq!((u.txn_count_24h, u.avg_amount_30d, u.chargebacks_90d), (1.0, 50.0, 0.0), "the defaults");
        let (id, u) = parse_user(r#"{"user_id": "u-7", "home_country": null}"#, &defaults()).unwrap();
        assert_eq!((id.as_str(), u), ("u-7", UserFeatures { home_country: None, ..defaults() }));
    }

    #[test]
    fn bad_lines_are_refused_with_the_reason() {
        for (line, reason) in [
            ("[1]", "not a JSON object"),
            ("{\"user_id\": ", "not JSON"),
            (r#"{"account_age_days": 1}"#, "user_id is required"),
            (r#"{"user_id": ""}"#, "user_id must be a non-empty string or an integer"),
            (r#"{"user_id": 1.5}"#, "user_id must be"),
            (r#"{"user_id": 1, "account_age_days": -1}"#, "account_age_days must be a number >= 0 and at most"),
            (r#"{"user_id": 1, "txn_count_24h": 1e300}"#, "txn_count_24h must be a number >= 0 and at most"),
            (r#"{"user_id": 1, "txn_count_1h": "many"}"#, "txn_count_1h must be a number >= 0"),
            (r#"{"user_id": 1, "home_country": "USA"}"#, "home_country must be an ISO 3166-1 alpha-2 country code"),
            (r#"{"user_id": 1, "home_country": "XX"}"#, "home_country must be an ISO 3166-1 alpha-2 country code"),
            (r#"{"user_id": 1, "acount_age_days": 3}"#, "unknown field \"acount_age_days\""),
        ] {
            let err = parse_user(line, &defaults()).unwrap_err();
            assert!(err.contains(reason), "{line}: {err}");
        }
    }
}
