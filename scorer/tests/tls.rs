//! Encrypted connections, as managed Redis services require: the feature store over TLS
//! (`rediss://`, the server's certificate verified against the CA in `SSL_CERT_FILE`) with a real
//! Redis serving TLS. Kafka over TLS: fraudctl's `kafka_config` and `run` tests.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::process::Command;
use std::time::Duration;

use schemas::{Decision, topics};
use testkit::kafka::{Received, TestProducer, read};
use testkit::process::Service;
use testkit::tls::certificates;
use testkit::{Broker, RedisServer, free_port, unique};

use fraudctl::synth::{Drift, Generator};

const SEED: u64 = 5;
const USERS: u64 = 40;

/// The decisions of a scorer (with the feature store at `redis_url`, environment `env`) for `n`
/// payments of the synthetic users, on a broker of its own; and the scorer's logs.
fn decide(redis_url: &str, env: &[(&str, String)], n: usize) -> (Vec<Decision>, String) {
    let broker = Broker::start();
    testkit::kafka::create_standard_topics(&broker.bootstrap(), 1);
    let group = unique("tls");
    let args: Vec<String> = vec![
        "--brokers".into(), broker.bootstrap(),
        "--redis-url".into(), redis_url.into(),
        "--group-id".into(), group.clone(),
        "--transactional-id".into(), group,
        "--listen".into(), format!("127.0.0.1:{}", free_port()),
        "--session-timeout-ms".into(), "6000".into(),
        "--redis-timeout-ms".into(), "2000".into(),
    ];
    let mut scorer = Service::start("scorer", &args, env);
    scorer.wait_for_log("scorer ready", Duration::from_secs(30));
    let mut g = Generator::new(SEED, Drift::None, unique("tls"));
    let txs: Vec<_> = (0..n).map(|i| g.payment(&Generator::user(SEED, i as u64 % USERS), 1_764_000_000_000).transaction).collect();
    let p = TestProducer::new(&broker.bootstrap());
    p.send_transactions(topics::TRANSACTIONS, &txs);
    p.flush();
    let decided = read(&broker.bootstrap(), topics::DECISIONS, n, Duration::from_secs(60), Duration::from_millis(500));
    (decided.iter().map(Received::decode::<Decision>).collect(), scorer.logs())
}

#[test]
fn the_feature_store_is_read_over_verified_tls() {
    let dir = certificates("tls");
    let redis = RedisServer::start_tls(&dir);
    let url = redis.url();
    let trust = [("SSL_CERT_FILE", dir.join("ca.pem").display().to_string())];

    // Features written over TLS by the operator CLI.
    let out = Command::new(testkit::process::bin("fraudctl"))
        .args(["features", "load", "--redis-url", &url, "--users", &USERS.to_string(), "--seed", &SEED.to_string()])
        .env(trust[0].0, &trust[0].1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // Read over TLS by the scorer: every decision made on the stored features.
    let (decided, logs) = decide(&url, &trust, 30);
    assert_eq!(decided.len(), 30, "{logs}");
    assert!(decided.iter().all(|d| d.user_features_found && !d.degraded), "{decided:?}\n{logs}");

    // Without the CA trusted the certificate is refused: the store counts as unavailable, and
    // scoring goes on degraded.
    let (decided, logs) = decide(&url, &[], 10);
    assert_eq!(decided.len(), 10, "{logs}");
    assert!(decided.iter().all(|d| d.degraded), "{decided:?}");
    assert!(logs.contains("feature store unavailable") && logs.to_lowercase().contains("certificate"), "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}
