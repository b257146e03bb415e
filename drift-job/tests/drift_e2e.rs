//! The drift job on a real broker: decisions from the real scorer, a window of traffic like the
//! training data, then a window with one feature shifted; then delayed labels.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fraudctl::labels::LabelSink;
use fraudctl::synth::{Drift, Generator};
use schemas::{Decision, DriftReport, DriftSeverity, Label, topics};
use testkit::kafka::{Received, TestProducer, read};
use testkit::process::Service;
use testkit::{free_port, unique};

const SEED: u64 = 5;
const USERS: u64 = 2000;
const WINDOW_S: i64 = 4;

/// `name{labels...}` → value, for every series of `name` whose labels contain `filter`.
fn series(text: &str, name: &str, filter: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            Some((head.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn psi_by_feature(text: &str) -> HashMap<String, f64> {
    series(text, "feature_psi", "")
        .into_iter()
        .map(|(head, v)| {
            let feature = head.split("feature=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
            (feature, v)
        })
        .collect()
}


/// A scorer of its own group on `broker`, reading features from `redis`, once it is ready.
fn scorer(broker: &testkit::Broker, redis: &testkit::RedisServer) -> Service {
    let group = unique("scorer");
    let mut scorer = Service::start(
        "scorer",
        &["--brokers", &broker.bootstrap(), "--redis-url", &redis.url(), "--group-id", &group, "--transactional-id", &group, "--listen", &format!("127.0.0.1:{}", free_port())]
            .map(String::from),
        &[],
    );
    scorer.wait_for_log("scorer ready", Duration::from_secs(30));
    scorer
}

/// Sleeps until just after the next window boundary, so one phase fills one window.
fn wait_for_window_start() {
    let len = WINDOW_S * 1000;
    let next = (schemas::now_millis() / len + 1) * len;
    std::thread::sleep(Duration::from_millis((next - schemas::now_millis() + 100) as u64));
}

/// Waits until the drift job reports a window that ended after `after_ms`.
fn wait_for_report(port: u16, after_ms: i64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = testkit::scrape(port);
        if let Some((_, end)) = series(&text, "drift_window_end_timestamp_seconds", "").first()
            && (*end * 1000.0) as i64 > after_ms
        {
            return text;
        }
        assert!(Instant::now() < deadline, "no drift window reported after {after_ms}:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn shifted_traffic_raises_psi_for_that_feature_only_and_labels_move_quality() {
    let (broker, redis) = testkit::servers(2, USERS, SEED);
    let scorer = scorer(&broker, &redis);
    let drift_port = free_port();
    let mut drift = Service::start(
        "drift-job",
        &["--brokers", &broker.bootstrap(), "--listen", &format!("127.0.0.1:{drift_port}"), "--window-seconds", &WINDOW_S.to_string(), "--min-samples", "1000", "--group-id", &unique("drift")]
            .map(String::from),
        &[],
    );
    drift.wait_for_log("drift-job ready", Duration::from_secs(30));
    let p = TestProducer::new(&broker.bootstrap());
    let users: Vec<_> = (0..USERS).map(|n| Generator::user(SEED, n)).collect();

    // Let both consumers join their groups before the first window starts.
    p.send_transactions(topics::TRANSACTIONS, [&Generator::new(SEED, Drift::None, "warmup").payment(&users[0], schemas::now_millis()).transaction]);
    p.flush();
    read(&broker.bootstrap(), topics::DECISIONS, 1, Duration::from_secs(60), Duration::ZERO);
    std::thread::sleep(Duration::from_secs(8));

    let mut truth = Vec::new();
    let mut phase = |drift: Drift, run: &str| {
        wait_for_window_start();
        let started = schemas::now_millis();
        let mut g = Generator::new(SEED, drift, run);
        for i in 0..2500 {
            let pay = g.payment(&users[i % users.len()], schemas::now_millis());
            truth.push((pay.transaction.transaction_id.clone(), pay.is_fraud));
            p.send_transactions(topics::TRANSACTIONS, [&pay.transaction]);
        }
        p.flush();
        wait_for_report(drift_port, started)
    };

    let baseline = psi_by_feature(&phase(Drift::None, "normal"));
    println!("PSI, traffic like training: {baseline:?}");
    assert!(baseline.len() >= 8, "{baseline:?}");
    for (feature, psi) in &baseline {
        assert!(*psi < 0.1, "{feature} drifted without a shift: {psi}");
    }

    let shifted = psi_by_feature(&phase(Drift::Night, "night"));
    println!("PSI, most payments at night: {shifted:?}");
    assert!(shifted["is_night"] > 0.25, "{shifted:?}");
    for (feature, psi) in &shifted {
        if feature != "is_night" {
            assert!(*psi < 0.25, "{feature} reported as drifted: {psi}");
        }
    }
    let reports: Vec<DriftReport> = read(&broker.bootstrap(), topics::DRIFT_REPORTS, 2 * baseline.len(), Duration::from_secs(30), Duration::from_millis(500))
        .iter()
        .map(Received::decode)
        .collect();
    let night = reports.iter().filter(|r| r.feature == "is_night").max_by_key(|r| r.window_end).unwrap();
    assert_eq!(night.severity, DriftSeverity::Significant);
    assert!(night.samples >= 1000 && night.bins.len() == 2, "{night:?}");
    assert!(drift.logs().contains("significant feature drift"));

    // Labels for the decided transactions move model quality.
    let decided: Vec<Decision> = read(&broker.bootstrap(), topics::DECISIONS, truth.len() + 1, Duration::from_secs(60), Duration::from_millis(500))
        .iter()
        .map(Received::decode)
        .collect();
    assert!(decided.len() > truth.len());
    let sink = LabelSink::new(&broker.bootstrap()).unwrap();
    let labels: Vec<Label> = truth.iter().map(|(id, f)| Label { transaction_id: id.clone(), is_fraud: *f, labelled_at: schemas::now_millis() }).collect();
    sink.send(&labels).unwrap();
    sink.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = testkit::scrape(drift_port);
        if series(&text, "model_performance_samples", "").first().is_some_and(|(_, v)| *v as usize >= labels.len()) {
            break;
        }
        assert!(Instant::now() < deadline, "labels not joined:\n{}", text.lines().filter(|l| l.contains("label")).collect::<Vec<_>>().join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Scraped again: a scrape reads one metric after another while the job goes on joining, so
    // the one that saw the last sample may have read the joined counter a few labels earlier.
    let text = testkit::scrape(drift_port);
    assert!(
        text.contains(&format!("labels_joined_total {}", labels.len())),
        "{} labels sent:\n{}",
        labels.len(),
        text.lines().filter(|l| l.contains("label") || l.contains("duplicate") || l.contains("samples")).collect::<Vec<_>>().join("\n")
    );
    let perf = series(&text, "model_performance", "threshold=\"review\"");
    assert_eq!(perf.len(), 4, "{perf:?}");
    let precision = perf.iter().find(|(h, _)| h.contains("metric=\"precision\"")).unwrap().1;
    let recall = perf.iter().find(|(h, _)| h.contains("metric=\"recall\"")).unwrap().1;
    println!("quality at review: precision {precision:.3} recall {recall:.3}");
    assert!(precision > 0.2 && recall > 0.2, "{perf:?}");
    drop(scorer);
}

/// This broker answers a fetch with no records when it cannot read the partition within the
/// fetch's wait; with no wait at all that is every fetch, so the drift job's windows and quality
/// stop while labels and decisions wait. It says which partitions stall and what to do.
#[test]
fn a_drift_job_whose_fetches_come_back_empty_says_its_partitions_are_stalled() {
    let (broker, _redis) = testkit::servers(1, 10, SEED);
    let port = free_port();
    let mut drift = Service::start(
        "drift-job",
        &[
            "--brokers", &broker.bootstrap(), "--listen", &format!("127.0.0.1:{port}"), "--group-id", &unique("drift"),
            "--session-timeout-ms", "6000", "--stall-after-s", "2",
            "--kafka-config", "fetch.wait.max.ms=0", "--kafka-config", "statistics.interval.ms=500",
        ]
        .map(String::from),
        &[],
    );
    drift.wait_for_log("drift-job ready", Duration::from_secs(30));
    // Labels keep coming, a record per batch, until the job says its partition of `labels`
    // stalls: it starts at the end, wherever that is once the group has given it the partition.
    let p = TestProducer::new(&broker.bootstrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while !drift.logs().contains("partition stalled") {
        assert!(Instant::now() < deadline, "no stall reported after {sent} labels:\n{}", drift.logs());
        let label = Label { transaction_id: format!("starved-{sent}"), is_fraud: false, labelled_at: schemas::now_millis() };
        p.send(topics::LABELS, Some(label.transaction_id.as_bytes()), &schemas::encode(&label).unwrap(), &[]);
        p.flush();
        sent += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let fields = drift.log_fields("partition stalled", Duration::from_secs(1));
    let (logs, line) = (drift.logs(), serde_json::Value::Object(fields.clone()));
    assert_eq!(fields["level"], "WARN", "{line}");
    assert_eq!(fields["topic"], topics::LABELS, "{line}");
    assert_eq!(fields["fetch_wait_ms"], "0", "{line}");
    assert!(fields["waiting"].as_i64().unwrap() >= 1, "{line}");
    assert!(fields["remedy"].as_str().unwrap().contains("DRIFT_KAFKA_CONFIG"), "{line}");
    assert!(logs.contains(r#""kafka_config":"fetch.wait.max.ms=0,statistics.interval.ms=500""#), "overrides listed at start-up");
    let metrics = testkit::scrape(port);
    assert!(testkit::sample(&metrics, "kafka_consumer_stalled_partitions") >= 1.0, "{metrics}");
}

/// Waits until the drift job's `name` sample reaches `want`; answers the scrape that showed it.
fn wait_for_sample(port: u16, name: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = testkit::scrape(port);
        if testkit::sample(&text, name) >= want {
            return text;
        }
        assert!(Instant::now() < deadline, "{name} did not reach {want}:\n{}", text.lines().filter(|l| l.contains("label") || l.contains("model_performance_samples")).collect::<Vec<_>>().join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job keeps its join and quality windows in memory. Restarted, it re-reads recent decisions
/// and labels: labels that come after the restart still find decisions made before it, the
/// quality window is whole again at once, and nothing the job before it counted is counted again.
#[test]
fn a_restarted_drift_job_joins_labels_for_decisions_made_before_it_restarted() {
    let (broker, redis) = testkit::servers(2, USERS, SEED);
    let scorer = scorer(&broker, &redis);
    let drift_group = unique("drift");
    let start_drift = |port: u16| {
        let mut drift = Service::start(
            "drift-job",
            &["--brokers", &broker.bootstrap(), "--listen", &format!("127.0.0.1:{port}"), "--group-id", &drift_group, "--session-timeout-ms", "6000"].map(String::from),
            &[],
        );
        drift.wait_for_log("drift-job ready", Duration::from_secs(30));
        drift
    };
    let first_port = free_port();
    let mut first = start_drift(first_port);

    // 300 payments decided while the first job runs; the first 100 labelled then.
    let p = TestProducer::new(&broker.bootstrap());
    let mut g = Generator::new(SEED, Drift::None, unique("restart"));
    let payments: Vec<_> = (0..300).map(|i| g.payment(&Generator::user(SEED, i), schemas::now_millis())).collect();
    p.send_transactions(topics::TRANSACTIONS, payments.iter().map(|pay| &pay.transaction));
    p.flush();
    read(&broker.bootstrap(), topics::DECISIONS, payments.len(), Duration::from_secs(60), Duration::ZERO);
    let label = |pay: &fraudctl::synth::SynthPayment| Label { transaction_id: pay.transaction.transaction_id.clone(), is_fraud: pay.is_fraud, labelled_at: schemas::now_millis() };
    let sink = LabelSink::new(&broker.bootstrap()).unwrap();
    sink.send(&payments[..100].iter().map(label).collect::<Vec<_>>()).unwrap();
    sink.flush().unwrap();
    wait_for_sample(first_port, "labels_joined_total", 100.0);
    // Its offsets are committed every few seconds: let them be, as for a job that ran a while.
    std::thread::sleep(Duration::from_secs(6));
    first.signal("TERM");
    assert_eq!(first.wait(Duration::from_secs(20)), Some(0), "{}", first.logs());

    let port = free_port();
    let mut second = start_drift(port);
    let fields = second.log_fields("recalled the last", Duration::from_secs(1));
    assert_eq!((fields["decisions"].as_u64(), fields["labels"].as_u64(), fields["decisions_waiting"].as_u64()), (Some(300), Some(100), Some(200)), "{}", second.logs());
    // The quality window is back; the joins of the job before are not counted again.
    let text = testkit::scrape(port);
    assert!(series(&text, "model_performance_samples", "").first().is_some_and(|(_, v)| *v == 100.0), "{text}");
    assert_eq!(testkit::sample(&text, "labels_joined_total"), 0.0);

    // Labels for the other 200, after the restart: each finds its decision.
    sink.send(&payments[100..].iter().map(label).collect::<Vec<_>>()).unwrap();
    sink.flush().unwrap();
    let text = wait_for_sample(port, "labels_joined_total", 200.0);
    assert_eq!(testkit::sample(&text, "labels_joined_total"), 200.0, "each label joined once");
    assert!(series(&text, "model_performance_samples", "").first().is_some_and(|(_, v)| *v == 300.0), "{text}");
    assert_eq!(testkit::sample(&text, "duplicate_decisions_total"), 0.0, "the recalled decisions were not read again");
    drop(scorer);
}

/// A job with a group of its own starts reading live where its recall stopped, not at the
/// partitions' end: the decisions the scorer writes while the job starts (in transactions, whose
/// markers take offsets of their own) are each read once, by the recall or live, and so are the
/// labels that come later into partitions that were empty then.
#[test]
fn a_new_drift_job_reads_every_decision_written_while_it_starts() {
    let (broker, redis) = testkit::servers(2, USERS, SEED);
    let scorer = scorer(&broker, &redis);
    // Payments at ~150/s from before the job starts until after it is ready.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (bootstrap, stop) = (broker.bootstrap(), stop.clone());
        std::thread::spawn(move || {
            let p = TestProducer::new(&bootstrap);
            let mut g = Generator::new(SEED, Drift::None, unique("starting"));
            let mut sent = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let pay = g.payment(&Generator::user(SEED, sent.len() as u64 % USERS), schemas::now_millis());
                p.send_transactions(topics::TRANSACTIONS, [&pay.transaction]);
                p.flush();
                sent.push(pay);
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    // Some decided before the job starts (the recall's), more while it starts and after.
    read(&broker.bootstrap(), topics::DECISIONS, 1, Duration::from_secs(60), Duration::ZERO);
    let port = free_port();
    let mut drift = Service::start(
        "drift-job",
        &["--brokers", &broker.bootstrap(), "--listen", &format!("127.0.0.1:{port}"), "--group-id", &unique("drift"), "--session-timeout-ms", "6000"].map(String::from),
        &[],
    );
    drift.wait_for_log("drift-job ready", Duration::from_secs(30));
    let recalled = drift.log_fields("recalled the last", Duration::from_secs(1))["decisions"].as_u64().unwrap();
    assert!(recalled > 0, "{}", drift.logs());
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let payments = writer.join().unwrap();
    let sent = payments.len() as u64;
    read(&broker.bootstrap(), topics::DECISIONS, payments.len(), Duration::from_secs(60), Duration::ZERO);

    let live = |text: &str| series(text, "drift_decisions_total", "status=\"known\"").iter().map(|(_, v)| *v as u64).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = testkit::scrape(port);
    while recalled + live(&text) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        text = testkit::scrape(port);
    }
    assert_eq!(recalled + live(&text), sent, "{recalled} recalled, {} read live, of {sent} decided", live(&text));
    assert_eq!(testkit::sample(&text, "duplicate_decisions_total"), 0.0, "none read twice");

    // `labels` was empty when the job started: its first labels are read from the start.
    let sink = LabelSink::new(&broker.bootstrap()).unwrap();
    let labels: Vec<Label> = payments.iter().take(50).map(|pay| Label { transaction_id: pay.transaction.transaction_id.clone(), is_fraud: pay.is_fraud, labelled_at: schemas::now_millis() }).collect();
    sink.send(&labels).unwrap();
    sink.flush().unwrap();
    let text = wait_for_sample(port, "labels_joined_total", 50.0);
    assert_eq!(testkit::sample(&text, "labels_joined_total"), 50.0);
    drop(scorer);
}

/// The recall re-reads its window only, on a broker that looks offsets up by time from the
/// partitions' start (the embedded one) too: labels older than the window stay out.
#[test]
fn the_recall_passes_over_records_older_than_its_window() {
    let (broker, _redis) = testkit::servers(1, 10, SEED);
    let sink = LabelSink::new(&broker.bootstrap()).unwrap();
    let old: Vec<Label> = (0..5).map(|i| Label { transaction_id: format!("old-{i}"), is_fraud: false, labelled_at: schemas::now_millis() }).collect();
    sink.send(&old).unwrap();
    sink.flush().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let recalled = |seconds: &str| {
        let mut drift = Service::start(
            "drift-job",
            &["--brokers", &broker.bootstrap(), "--listen", &format!("127.0.0.1:{}", free_port()), "--group-id", &unique("drift"), "--recall-seconds", seconds].map(String::from),
            &[],
        );
        drift.wait_for_log("drift-job ready", Duration::from_secs(30));
        drift.log_fields("recalled the last", Duration::from_secs(1))["labels"].as_u64()
    };
    assert_eq!(recalled("1"), Some(0), "written 3 s before the job started");
    assert_eq!(recalled("60"), Some(5));
}
