//! What reading a batch's users from the feature store costs, per user: the scorer's CPU, Redis's
//! CPU (`INFO cpu`) and the wall time of the round trip. Two ways of reading the same 500 hashes
//! per batch: the store's Lua script with its packed reply (what the scorer does), and 500
//! pipelined `HMGET`s parsed by redis-rs (the alternative the script replaced). A private Redis
//! with 5,000 users; prints numbers, asserts nothing.
//!
//!   cargo run --release -p scorer --example store_bench [batches]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redis::Value;
use scorer::features::UserFeatures;
use scorer::store::FeatureStore;

// The scorer's allocator, so that allocation costs are the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 500;
const USERS: usize = 5_000;
const PREFIX: &str = "features:user:";

fn redis_cpu_seconds(conn: &mut redis::Connection) -> Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query(conn)?;
    let field = |k: &str| -> Result<f64> {
        let v = info.lines().find_map(|l| l.strip_prefix(k)).with_context(|| format!("no {k} in INFO cpu"))?;
        Ok(v.trim().parse()?)
    };
    Ok(field("used_cpu_sys:")? + field("used_cpu_user:")?)
}

fn batch_ids(b: usize) -> Vec<String> {
    (0..BATCH).map(|i| ((b * BATCH + i) % USERS).to_string()).collect()
}

/// Runs `read` for `batches` batches and prints its cost per user.
fn measure(name: &str, batches: usize, conn: &mut redis::Connection, mut read: impl FnMut(&[String]) -> Result<usize>) -> Result<()> {
    let (cpu, redis_cpu, started) = (fraudctl::stack::cpu_seconds("self")?, redis_cpu_seconds(conn)?, Instant::now());
    for b in 0..batches {
        let found = read(&batch_ids(b))?;
        anyhow::ensure!(found == BATCH, "{name}: {found} of {BATCH} users found");
    }
    let per_user = |s: f64| s * 1e6 / (batches * BATCH) as f64;
    println!(
        "{name:<22} scorer {:.2} µs/user   redis {:.2} µs/user   wall {:.2} µs/user",
        per_user(fraudctl::stack::cpu_seconds("self")? - cpu),
        per_user(redis_cpu_seconds(conn)? - redis_cpu),
        per_user(started.elapsed().as_secs_f64()),
    );
    Ok(())
}

fn main() -> Result<()> {
    let batches: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(400);
    let redis = testkit::RedisServer::start();
    let defaults = UserFeatures { account_age_days: 30.0, txn_count_1h: 0.0, txn_count_24h: 1.0, avg_amount_30d: 50.0, chargebacks_90d: 0.0, home_country: None };
    let mut store = FeatureStore::new(&redis.url(), PREFIX, Duration::from_secs(1), Duration::from_millis(100), defaults.clone())?;
    let users: Vec<(String, UserFeatures)> = (0..USERS)
        .map(|i| {
            let f = UserFeatures { account_age_days: i as f64, txn_count_1h: 2.0, txn_count_24h: 9.0, avg_amount_30d: 80.5, chargebacks_90d: 1.0, home_country: Some("US".into()) };
            (i.to_string(), f)
        })
        .collect();
    store.store(users.iter().map(|(u, f)| (u.as_str(), f)))?;
    let mut stats = redis::Client::open(redis.url())?.get_connection()?;
    let mut pipelined = redis::Client::open(redis.url())?.get_connection()?;
    println!("{batches} batches of {BATCH} distinct users, {} fields each", UserFeatures::FIELDS.len());
    for _ in 0..2 {
        measure("script, packed reply", batches, &mut stats, |ids| Ok(store.fetch(ids.iter().map(String::as_str)).hits as usize))?;
        measure("pipelined HMGETs", batches, &mut stats, |ids| {
            let mut pipe = redis::pipe();
            for id in ids {
                pipe.cmd("HMGET").arg(format!("{PREFIX}{id}")).arg(&UserFeatures::FIELDS[..]);
            }
            let Value::Array(replies) = pipe.query::<Value>(&mut pipelined)? else { anyhow::bail!("not an array") };
            let mut found = 0;
            for reply in &replies {
                let Value::Array(values) = reply else { anyhow::bail!("not an array") };
                let text: Vec<&str> = values.iter().map(|v| if let Value::BulkString(b) = v { std::str::from_utf8(b).unwrap_or("") } else { "" }).collect();
                let user = UserFeatures::from_fields(UserFeatures::FIELDS.iter().zip(&text).filter(|(_, v)| !v.is_empty()).map(|(n, v)| (*n, *v)), &defaults);
                found += usize::from(user.home_country.is_some());
            }
            Ok(found)
        })?;
    }
    Ok(())
}
