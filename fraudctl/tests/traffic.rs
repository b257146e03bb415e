//! `fraudctl traffic` against a real broker, Redis, scorer and gateway: its summary counts the
//! decisions of the payments it sent, not those of others sent meanwhile, and those made without
//! the feature store.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fraudctl::synth::Drift;
use fraudctl::traffic::{TrafficConfig, TrafficStats};
use testkit::process::Service;
use testkit::{free_port, unique};

fn decided(s: &TrafficStats) -> u64 {
    [&s.approve, &s.review, &s.block].iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

#[test]
fn two_runs_at_once_each_count_their_own_decisions_and_a_redis_outage_shows() {
    let (broker, mut redis) = testkit::servers(2, 200, 1);
    let brokers = broker.bootstrap();
    let run = unique("traffic");
    let (scorer_port, gateway_port) = (free_port(), free_port());
    let _scorer = Service::start(
        "scorer",
        &["--brokers", &brokers, "--redis-url", &redis.url(), "--group-id", &format!("{run}-scorers"), "--transactional-id", &format!("{run}-scorer"), "--listen", &format!("127.0.0.1:{scorer_port}")]
            .map(String::from),
        &[],
    );
    let _gateway = Service::start("gateway", &["--brokers", &brokers, "--listen", &format!("127.0.0.1:{gateway_port}")].map(String::from), &[]);
    assert!(testkit::wait_ready(scorer_port, Duration::from_secs(60)), "scorer not ready");
    assert!(testkit::wait_ready(gateway_port, Duration::from_secs(60)), "gateway not ready");

    let config = |name: &str| TrafficConfig {
        // One run names the gateway with a trailing slash, as a URL often is.
        gateway: Some(format!("http://127.0.0.1:{gateway_port}{}", if name == "b" { "/" } else { "" })),
        brokers: Some(brokers.clone()),
        rate: 40.0,
        duration: Some(Duration::from_secs(4)),
        direct_share: 0.25,
        users: 200,
        seed: 1,
        drift: Drift::None,
        max_in_flight: 64,
        run_id: format!("{run}-{name}"),
        label_delay: None,
        truth_file: None,
        notices: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (a, b) = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        tokio::join!(fraudctl::traffic::run(config("a"), stop.clone(), false), fraudctl::traffic::run(config("b"), stop, false))
    });
    for stats in [a.unwrap(), b.unwrap()] {
        let sent = stats.sent_http.load(Ordering::Relaxed) + stats.sent_direct.load(Ordering::Relaxed);
        let answered = stats.http_ok.load(Ordering::Relaxed);
        // At most one decision per payment sent: the other run's are not counted. Most are (the
        // last few may still be on their way to the counter when the run ends).
        assert!(answered > 50 && decided(&stats) >= answered / 2 && decided(&stats) <= sent, "sent {sent}, answered {answered}, decided {}: {}", decided(&stats), stats.summary(Duration::from_secs(4)));
        assert_eq!(stats.degraded.load(Ordering::Relaxed), 0, "{}", stats.summary(Duration::from_secs(4)));
    }

    // Redis gone: every decision is made on the card's defaults, and the summary counts them.
    redis.stop();
    let stats = rt.block_on(fraudctl::traffic::run(config("c"), Arc::new(AtomicBool::new(false)), false)).unwrap();
    let summary = stats.summary(Duration::from_secs(4));
    assert!(decided(&stats) > 50 && stats.degraded.load(Ordering::Relaxed) == decided(&stats), "{summary}");
    assert!(summary.contains(&format!("| degraded {}", decided(&stats))), "{summary}");
}
