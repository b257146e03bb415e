//! The feature store against a real Redis: one lookup per id given, in order, with each distinct
//! user read from Redis once per batch.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::time::Duration;

use scorer::UserLookup;
use scorer::features::UserFeatures;
use scorer::store::FeatureStore;
use testkit::{RedisServer, unique};

fn defaults() -> UserFeatures {
    UserFeatures { account_age_days: 30.0, txn_count_1h: 0.0, txn_count_24h: 1.0, avg_amount_30d: 50.0, chargebacks_90d: 0.0, home_country: None }
}

fn user(age: f64, country: &str) -> UserFeatures {
    UserFeatures { account_age_days: age, txn_count_1h: 2.0, txn_count_24h: 9.0, avg_amount_30d: 80.0, chargebacks_90d: 1.0, home_country: Some(country.into()) }
}

/// How many `HMGET`s Redis has run since it started (the lookup script issues one per user).
fn hmget_calls(url: &str) -> u64 {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_hmget:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

#[test]
fn a_batch_gets_one_lookup_per_record_and_redis_one_read_per_distinct_user() {
    let redis = RedisServer::start();
    let prefix = format!("{}:", unique("features"));
    let mut store = FeatureStore::new(&redis.url(), prefix, Duration::from_secs(1), Duration::from_millis(100), defaults()).unwrap();
    let (a, b) = (user(400.0, "US"), user(12.0, "DE"));
    store.store([("a", &a), ("b", &b)]).unwrap();

    let before = hmget_calls(&redis.url());
    // A burst from one user, a user the store does not know (twice), and another user.
    let ids = ["a", "a", "ghost", "b", "a", "ghost", "a"];
    let fetched = store.fetch(ids.iter().copied());
    assert_eq!(hmget_calls(&redis.url()) - before, 3, "one read per distinct user");

    assert!(fetched.error.is_none(), "{:?}", fetched.error);
    assert_eq!((fetched.hits, fetched.misses), (5, 2), "counted per record");
    let want = |id: &str| match id {
        "a" => UserLookup::Found(a.clone()),
        "b" => UserLookup::Found(b.clone()),
        _ => UserLookup::Missing,
    };
    let expected: Vec<UserLookup> = ids.iter().map(|id| want(id)).collect();
    assert_eq!(fetched.lookups, expected);

    // All distinct: the same answers, one read each.
    let before = hmget_calls(&redis.url());
    let fetched = store.fetch(["b", "ghost", "a"].into_iter());
    assert_eq!(hmget_calls(&redis.url()) - before, 3);
    assert_eq!(fetched.lookups, vec![want("b"), UserLookup::Missing, want("a")]);
}

#[test]
fn a_store_that_is_down_answers_unavailable_for_every_record() {
    let mut redis = RedisServer::start();
    let mut store = FeatureStore::new(&redis.url(), "features:user:", Duration::from_millis(300), Duration::from_millis(100), defaults()).unwrap();
    redis.stop();
    let fetched = store.fetch(["a", "a", "b"].into_iter());
    assert!(fetched.error.is_some());
    assert_eq!(fetched.lookups, vec![UserLookup::Unavailable; 3]);
    assert_eq!((fetched.hits, fetched.misses), (0, 0));
}

#[test]
fn a_user_record_that_cannot_be_read_costs_that_user_its_features_not_the_batch() {
    let redis = RedisServer::start();
    let prefix = format!("{}:", unique("features"));
    let mut store = FeatureStore::new(&redis.url(), prefix.clone(), Duration::from_secs(1), Duration::from_secs(60), defaults()).unwrap();
    let (a, b) = (user(400.0, "US"), user(12.0, "DE"));
    store.store([("a", &a), ("b", &b)]).unwrap();
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    // A key of another type under the prefix, and a hash whose value holds the byte the packed
    // reply separates values with.
    redis::cmd("SET").arg(format!("{prefix}string")).arg("not a hash").exec(&mut conn).unwrap();
    redis::cmd("HSET").arg(format!("{prefix}odd")).arg("account_age_days").arg("4\u{1f}2").arg("txn_count_1h").arg("5").exec(&mut conn).unwrap();

    let fetched = store.fetch(["a", "string", "odd", "b", "string"].into_iter());
    assert!(fetched.error.is_none(), "the store answered: {:?}", fetched.error);
    let odd = UserFeatures { txn_count_1h: 5.0, ..defaults() };
    assert_eq!(
        fetched.lookups,
        vec![UserLookup::Found(a.clone()), UserLookup::Unavailable, UserLookup::Found(odd.clone()), UserLookup::Found(b.clone()), UserLookup::Unavailable],
        "the odd value takes its default, like any value that is not a number"
    );
    assert_eq!((fetched.hits, fetched.misses, fetched.unreadable), (3, 0, 2));
    let detail = fetched.unreadable_detail.unwrap();
    assert!(detail.contains(&format!("{prefix}string")) && detail.contains("WRONGTYPE"), "{detail}");

    // The odd value alone (the packed reply has one value too many), then no backoff (a minute
    // here) followed: the next batch is read from the store.
    let fetched = store.fetch(["odd", "a"].into_iter());
    assert!(fetched.error.is_none(), "{:?}", fetched.error);
    assert_eq!(fetched.lookups, vec![UserLookup::Found(odd), UserLookup::Found(a.clone())]);
    let fetched = store.fetch(["b", "a"].into_iter());
    assert!(fetched.error.is_none(), "{:?}", fetched.error);
    assert_eq!(fetched.lookups, vec![UserLookup::Found(b), UserLookup::Found(a)]);
    assert_eq!(fetched.unreadable, 0);
}

#[test]
fn rewriting_users_never_shows_them_missing_to_a_reader() {
    let redis = RedisServer::start();
    let prefix = format!("{}:", unique("features"));
    let users: Vec<(String, UserFeatures)> = (0..1000).map(|i| (format!("u{i}"), user(f64::from(i), "US"))).collect();
    let mut writer = FeatureStore::new(&redis.url(), prefix.clone(), Duration::from_secs(5), Duration::from_millis(100), defaults()).unwrap();
    writer.store(users.iter().map(|(id, f)| (id.as_str(), f))).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (url, prefix, stop) = (redis.url(), prefix.clone(), stop.clone());
        let ids: Vec<String> = users.iter().map(|(id, _)| id.clone()).collect();
        std::thread::spawn(move || {
            let mut store = FeatureStore::new(&url, prefix, Duration::from_secs(5), Duration::from_millis(100), defaults()).unwrap();
            let (mut reads, mut missing) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let fetched = store.fetch(ids.iter().map(String::as_str));
                assert!(fetched.error.is_none(), "{:?}", fetched.error);
                missing += fetched.misses;
                reads += 1;
            }
            (reads, missing)
        })
    };
    // The same users written again and again while the reader reads them, as a reload does.
    for _ in 0..30 {
        writer.store(users.iter().map(|(id, f)| (id.as_str(), f))).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, missing) = reader.join().unwrap();
    assert!(reads > 0);
    assert_eq!(missing, 0, "{missing} lookups over {reads} reads found a user missing while it was rewritten");
}
