//! `fraudctl features load` against a real Redis: synthetic users and users from a file land as
//! one hash per user that the scorer's feature store reads back; a bad file writes nothing.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::process::Command;
use std::time::Duration;

use scorer::features::UserFeatures;
use scorer::store::FeatureStore;
use scorer::{ModelCard, UserLookup};
use testkit::{RedisServer, unique};

fn load(redis: &RedisServer, prefix: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fraudctl"))
        .args(["features", "load", "--redis-url", &redis.url(), "--key-prefix", prefix])
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn read(redis: &RedisServer, prefix: &str, ids: &[&str]) -> Vec<UserLookup> {
    let defaults = ModelCard::load(&ModelCard::bundled_path()).unwrap().default_user_features;
    let mut store = FeatureStore::new(&redis.url(), prefix, Duration::from_secs(2), Duration::ZERO, defaults).unwrap();
    let fetched = store.fetch(ids.iter().copied());
    assert!(fetched.error.is_none(), "{:?}", fetched.error);
    fetched.lookups
}

#[test]
fn users_from_a_file_are_read_back_by_the_scorer_with_the_cards_defaults_for_what_they_leave_out() {
    let redis = RedisServer::start();
    let prefix = format!("{}:", unique("features"));
    let dir = std::env::temp_dir().join(unique("features-file"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.jsonl");
    let mut text = String::from("{\"user_id\": \"alice\", \"account_age_days\": 400, \"txn_count_1h\": 2, \"txn_count_24h\": \"9\", \"avg_amount_30d\": 80.5, \"chargebacks_90d\": 1, \"home_country\": \"us\"}\n\n{\"user_id\": 42}\n");
    // More users than one pipeline holds.
    for i in 0..2500 {
        text.push_str(&format!("{{\"user_id\": \"bulk-{i}\", \"account_age_days\": {i}}}\n"));
    }
    std::fs::write(&file, text).unwrap();

    let (ok, out) = load(&redis, &prefix, &["--file", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("wrote features of 2502 users"), "{out}");

    let defaults = ModelCard::load(&ModelCard::bundled_path()).unwrap().default_user_features;
    let got = read(&redis, &prefix, &["alice", "42", "bulk-0", "bulk-2499", "nobody"]);
    let alice = UserFeatures { account_age_days: 400.0, txn_count_1h: 2.0, txn_count_24h: 9.0, avg_amount_30d: 80.5, chargebacks_90d: 1.0, home_country: Some("US".into()) };
    assert_eq!(got[0], UserLookup::Found(alice));
    assert_eq!(got[1], UserLookup::Found(UserFeatures { home_country: None, ..defaults.clone() }), "absent fields: the card's defaults");
    assert_eq!(got[2], UserLookup::Found(UserFeatures { account_age_days: 0.0, home_country: None, ..defaults.clone() }));
    assert_eq!(got[3], UserLookup::Found(UserFeatures { account_age_days: 2499.0, home_country: None, ..defaults }));
    assert_eq!(got[4], UserLookup::Missing);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_with_a_bad_line_is_refused_with_its_line_and_nothing_is_written() {
    let redis = RedisServer::start();
    let prefix = format!("{}:", unique("features"));
    let dir = std::env::temp_dir().join(unique("features-bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.jsonl");
    std::fs::write(&file, "{\"user_id\": \"a\", \"account_age_days\": 3}\n{\"user_id\": \"b\"}\n{\"user_id\": \"c\", \"txn_count_1h\": \"lots\"}\n").unwrap();

    let (ok, out) = load(&redis, &prefix, &["--file", file.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("users.jsonl:3: txn_count_1h must be a number >= 0"), "{out}");
    assert_eq!(read(&redis, &prefix, &["a", "b"]), vec![UserLookup::Missing, UserLookup::Missing], "nothing written");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn synthetic_users_are_written_under_their_ids() {
    let redis = RedisServer::start();
    let prefix = format!("{}:", unique("features"));
    let (ok, out) = load(&redis, &prefix, &["--users", "1500", "--seed", "3"]);
    assert!(ok, "{out}");
    assert!(out.contains("wrote features of 1500 users"), "{out}");
    let got = read(&redis, &prefix, &["10000", "11499", "11500"]);
    assert_eq!(got[0], UserLookup::Found(fraudctl::synth::Generator::user(3, 0).features));
    assert_eq!(got[1], UserLookup::Found(fraudctl::synth::Generator::user(3, 1499).features));
    assert_eq!(got[2], UserLookup::Missing);
}
