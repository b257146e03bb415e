//! `scorer replay` against a real Tansu broker and a real Redis: transactions decided by the
//! scorer service are replayed through a candidate model on the features they were decided with,
//! and the report's every count is checked against the decisions, the labels and the scoring
//! core.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use schemas::{Decision, Label, Transaction, Verdict, topics};
use scorer::card::Thresholds;
use scorer::quality::{Confusion, Threshold};
use scorer::{ModelCard, Rules, Scorer, UserLookup};
use testkit::kafka::{TestProducer, read};
use testkit::process::{Service, bin};
use testkit::{free_port, unique};

use fraudctl::synth::{Drift, Generator};

const SEED: u64 = 11;
const USERS: u64 = 100;
const PAID_MS: i64 = 1_795_262_400_000; // 2026-11-21T12:00:00Z
const REVIEW_ABOVE: f64 = 10_000.0;
const CANDIDATE: Thresholds = Thresholds { review: 0.2, block: 0.5 };

/// What the report must say of one transaction.
struct Expected {
    transaction_id: String,
    features_from: &'static str,
    baseline: Verdict,
    candidate: Verdict,
    is_fraud: Option<bool>,
}

fn payments(run: &str, n: usize, first_user: u64, at_ms: i64) -> Vec<(Transaction, bool)> {
    let mut g = Generator::new(SEED, Drift::None, run);
    (0..n)
        .map(|i| {
            let user = Generator::user(SEED, first_user + i as u64 % USERS);
            let mut p = g.payment(&user, at_ms);
            p.transaction.timestamp = at_ms + i as i64 * 1_000;
            (p.transaction, p.is_fraud)
        })
        .collect()
}

/// The bundled card as a candidate with its own version and thresholds, in a directory of its
/// own (its ONNX file named by absolute path).
fn candidate_card(dir: &Path) -> PathBuf {
    let mut card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ModelCard::bundled_path()).unwrap()).unwrap();
    let bundled = ModelCard::load(&ModelCard::bundled_path()).unwrap();
    card["model_version"] = "1.1.0-candidate".into();
    card["thresholds"] = serde_json::json!({ "review": CANDIDATE.review, "block": CANDIDATE.block });
    card["onnx_file"] = bundled.onnx_path().canonicalize().unwrap().display().to_string().into();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("model_card.json");
    std::fs::write(&path, serde_json::to_string_pretty(&card).unwrap()).unwrap();
    path
}

fn replay(brokers: &str, redis_url: &str, args: &[&str]) -> Output {
    Command::new(bin("scorer"))
        .args(["replay", "--brokers", brokers, "--redis-url", redis_url, "--idle-timeout-s", "20"])
        .args(args)
        .output()
        .unwrap()
}

fn report_of(out: &Output, path: &Path) -> (serde_json::Value, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "replay failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap(), stdout)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn rates(v: &serde_json::Value) -> Confusion {
    Confusion { tp: u(&v["tp"]), fp: u(&v["fp"]), fn_: u(&v["fn"]), tn: u(&v["tn"]) }
}

#[test]
fn a_range_is_replayed_on_recorded_features_and_compared_on_labels() {
    let (broker, redis) = testkit::servers(2, USERS, SEED);
    let brokers = broker.bootstrap();
    let run = unique("replay");
    let producer = TestProducer::new(&brokers);

    // Decided by the scorer: 30 payments written before the range, 120 in it (one sent twice),
    // one record that is not a transaction.
    let old = payments(&format!("{run}-old"), 30, 0, PAID_MS);
    let recent = payments(&format!("{run}-recent"), 120, 0, PAID_MS);
    producer.send_transactions(topics::TRANSACTIONS, old.iter().map(|(t, _)| t));
    producer.flush();
    std::thread::sleep(Duration::from_millis(50));
    let from = now_rfc3339();
    std::thread::sleep(Duration::from_millis(50));
    producer.send_transactions(topics::TRANSACTIONS, recent.iter().map(|(t, _)| t));
    producer.send_transactions(topics::TRANSACTIONS, [&recent[0].0]);
    producer.send(topics::TRANSACTIONS, Some(b"k"), b"not avro", &[]);
    producer.flush();
    let mut scorer = Service::start(
        "scorer",
        &[
            "--brokers".into(),
            brokers.clone(),
            "--redis-url".into(),
            redis.url(),
            "--group-id".into(),
            format!("{run}-scorers"),
            "--transactional-id".into(),
            format!("{run}-scorer"),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
        &[],
    );
    let decided = read(&brokers, topics::DECISIONS, 150, Duration::from_secs(90), Duration::from_millis(1500));
    scorer.signal("TERM");
    scorer.wait(Duration::from_secs(30));
    let mut recorded: HashMap<String, Decision> = HashMap::new();
    for r in &decided {
        let d: Decision = r.decode();
        recorded.entry(d.transaction_id.clone()).or_insert(d);
    }
    assert_eq!(recorded.len(), 150);

    // Not decided: 8 payments of known users (features from the store now), 2 of users the store
    // does not know and 1 of a user whose key holds no hash (the card's defaults).
    let mut unscored = payments(&format!("{run}-late"), 8, 0, PAID_MS);
    unscored.extend(payments(&format!("{run}-unknown"), 2, USERS + 5, PAID_MS));
    unscored.extend(payments(&format!("{run}-unreadable"), 1, USERS + 9, PAID_MS));
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let unreadable_key = format!("features:user:{}", unscored[10].0.user_id);
    redis::cmd("SET").arg(&unreadable_key).arg("not a hash").exec(&mut conn).unwrap();
    let before_unscored = now_rfc3339();
    std::thread::sleep(Duration::from_millis(50));
    producer.send_transactions(topics::TRANSACTIONS, unscored.iter().map(|(t, _)| t));
    // Labels for the first 80 recent payments; the second one's first label is corrected later.
    let label = |t: &Transaction, is_fraud: bool, at: i64| {
        let l = Label { transaction_id: t.transaction_id.clone(), is_fraud, labelled_at: at };
        producer.send(topics::LABELS, Some(t.transaction_id.as_bytes()), &schemas::encode(&l).unwrap(), &[]);
    };
    label(&recent[1].0, !recent[1].1, PAID_MS + 1_000_000);
    for (t, is_fraud) in &recent[..80] {
        label(t, *is_fraud, PAID_MS + 2_000_000);
    }
    producer.flush();

    // What the report must say, from the recorded decisions and the scoring core.
    let bundled = ModelCard::load(&ModelCard::bundled_path()).unwrap();
    let mut core = Scorer::load(&ModelCard::bundled_path(), 1, Some(REVIEW_ABOVE)).unwrap();
    let candidate_rules = Rules::new(CANDIDATE, Some(REVIEW_ABOVE)).unwrap();
    let mut expected: Vec<Expected> = Vec::new();
    let mut expect = |t: &Transaction, p: f64, baseline: Verdict, is_fraud: Option<bool>, features_from| {
        expected.push(Expected { transaction_id: t.transaction_id.clone(), features_from, baseline, candidate: candidate_rules.verdict(p, t), is_fraud });
    };
    for (i, (t, is_fraud)) in recent.iter().enumerate() {
        let d = &recorded[&t.transaction_id];
        expect(t, d.fraud_probability, d.decision, (i < 80).then_some(*is_fraud), "recorded");
    }
    for (i, (t, _)) in unscored.iter().enumerate() {
        let (lookup, from) = match i {
            0..8 => (UserLookup::Found(Generator::user(SEED, i as u64).features), "store"),
            8..10 => (UserLookup::Missing, "defaults_user_unknown"),
            _ => (UserLookup::Unavailable, "defaults_user_unreadable"),
        };
        let d = core.decide(t.clone(), lookup).unwrap();
        expect(t, d.fraud_probability, d.decision, None, from);
    }
    let count = |f: &dyn Fn(&Expected) -> bool| expected.iter().filter(|e| f(e)).count() as u64;
    let changed = count(&|e| e.baseline != e.candidate);
    assert!(changed > 0, "the candidate's lower thresholds change some decisions");

    let dir = std::env::temp_dir().join(unique("replay-test"));
    let card = candidate_card(&dir);
    let (report_path, lines_path) = (dir.join("report.json"), dir.join("lines.jsonl"));
    let out = replay(&brokers, &redis.url(), &["--candidate-card", card.to_str().unwrap(), "--from", &from, "--report", report_path.to_str().unwrap(), "--examples", "4", "--output", lines_path.to_str().unwrap()]);
    let (r, text) = report_of(&out, &report_path);

    // One line per transaction, each as the scoring core and the labels say.
    let lines: HashMap<String, serde_json::Value> = std::fs::read_to_string(&lines_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["transaction_id"].as_str().unwrap().to_string(), v))
        .collect();
    assert_eq!(lines.len(), 131);
    for e in &expected {
        let line = &lines[&e.transaction_id];
        assert_eq!(line["features_from"], e.features_from, "{line}");
        assert_eq!((&line["baseline"]["decision"], &line["candidate"]["decision"]), (&e.baseline.as_str().into(), &e.candidate.as_str().into()), "{line}");
        assert_eq!(line["is_fraud"], serde_json::json!(e.is_fraud), "{line}");
        if e.features_from == "recorded" {
            let (recorded, replayed) = (line["recorded_probability"].as_f64().unwrap(), line["baseline"]["fraud_probability"].as_f64().unwrap());
            assert!((recorded - replayed).abs() <= 1e-6, "{line}");
        }
    }

    assert_eq!(u(&r["transactions"]), 131, "{text}");
    let read = &r["read"];
    assert_eq!((u(&read["repeated"]), u(&read["undecodable"]), u(&read["invalid"])), (1, 1, 0), "{read}");
    // This broker finds the range's first offsets by time; one that cannot has the range's
    // records read from the first record and counted outside the range.
    assert_eq!(u(&read["transaction_records"]) - u(&read["outside_range"]), 120 + 1 + 1 + 11, "{read}");
    let parts = r["range"]["partitions"].as_array().unwrap();
    assert_eq!(parts.iter().map(|p| u(&p["records"])).sum::<u64>(), u(&read["transaction_records"]));
    let f = &r["features"];
    assert_eq!(
        (u(&f["recorded"]), u(&f["store"]), u(&f["defaults_user_unknown"]), u(&f["defaults_user_unreadable"]), u(&f["defaults_store_unavailable"])),
        (120, 8, 2, 1, 0),
        "{f}"
    );
    assert!(text.contains("3 on the card's defaults (2 users unknown to the store, 1 with unreadable stored features, 0 with the store unavailable)"), "{text}");
    let rep = &r["reproduced"];
    assert_eq!((u(&rep["recorded_by_baseline"]), u(&rep["matching"]), u(&rep["recorded_by_others"])), (120, 120, 0), "{rep}");
    assert!(text.contains("Reproduced: 120 of 120 decisions recorded by 1.0.0"), "{text}");

    for v in Verdict::ALL {
        let name = v.as_str();
        assert_eq!(u(&r["baseline"][name]), count(&|e| e.baseline == v), "baseline {name}");
        assert_eq!(u(&r["candidate"][name]), count(&|e| e.candidate == v), "candidate {name}");
    }
    assert_eq!(r["candidate"]["model_version"], "1.1.0-candidate");
    assert_eq!(u(&r["changed"]), changed);
    assert_eq!(r["changes"].as_array().unwrap().iter().map(|c| u(&c["count"])).sum::<u64>(), changed);
    let examples = r["examples"].as_array().unwrap();
    assert_eq!(examples.len() as u64, changed.min(4));
    for e in examples {
        assert_ne!(e["baseline"]["decision"], e["candidate"]["decision"], "{e}");
    }

    let labelled = &r["labelled"];
    assert_eq!(u(&labelled["transactions"]), 80);
    assert_eq!(u(&labelled["fraud"]), recent[..80].iter().filter(|(_, f)| *f).count() as u64);
    for (side, verdict_of) in [("baseline", (|e: &Expected| e.baseline) as fn(&Expected) -> Verdict), ("candidate", |e| e.candidate)] {
        for (threshold, key) in [(Threshold::Block, "at_block"), (Threshold::Review, "at_review")] {
            let mut want = Confusion::default();
            for e in &expected {
                if let Some(is_fraud) = e.is_fraud {
                    want.add(threshold.positive(verdict_of(e)), is_fraud);
                }
            }
            assert_eq!(rates(&labelled[side][key]), want, "{side} {key}");
        }
    }
    assert_eq!(bundled.model_version, r["baseline"]["model_version"]);

    // Up to the moment before the undecided ones were written: those are read and left out.
    let until_path = dir.join("until.json");
    let out = replay(&brokers, &redis.url(), &["--candidate-card", card.to_str().unwrap(), "--from", &from, "--to", &before_unscored, "--report", until_path.to_str().unwrap()]);
    let (until, text) = report_of(&out, &until_path);
    assert_eq!((u(&until["transactions"]), u(&until["features"]["recorded"])), (120, 120), "{text}");
    assert_eq!(u(&until["read"]["transaction_records"]) - u(&until["read"]["outside_range"]), 122, "{text}");
    assert!(u(&until["read"]["outside_range"]) >= 11, "{text}");

    // Half of the range by transaction id: exactly the transactions `sampled` picks, each as the
    // whole range's replay had it; the rest counted as left out.
    let (half_path, half_lines) = (dir.join("half.json"), dir.join("half.jsonl"));
    let out = replay(&brokers, &redis.url(), &["--candidate-card", card.to_str().unwrap(), "--from", &from, "--sample", "0.5", "--report", half_path.to_str().unwrap(), "--output", half_lines.to_str().unwrap()]);
    let (half, text) = report_of(&out, &half_path);
    let mut want: Vec<&str> = expected.iter().map(|e| e.transaction_id.as_str()).filter(|id| scorer::replay::sampled(id, 0.5)).collect();
    want.sort_unstable();
    let sampled_lines: HashMap<String, serde_json::Value> = std::fs::read_to_string(&half_lines)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["transaction_id"].as_str().unwrap().to_string(), v))
        .collect();
    let mut got: Vec<&str> = sampled_lines.keys().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, want);
    assert!((40..=90).contains(&want.len()), "about half of 131: {}", want.len());
    for (id, line) in &sampled_lines {
        assert_eq!(line, &lines[id], "as the whole range's replay had it");
    }
    assert_eq!((u(&half["transactions"]), half["sample"].as_f64()), (want.len() as u64, Some(0.5)), "{text}");
    // The record sent twice is counted by the sample or as a repeat, as its id falls.
    let twice = u64::from(!scorer::replay::sampled(&recent[0].0.transaction_id, 0.5));
    assert_eq!(u(&half["read"]["not_sampled"]), 131 - want.len() as u64 + twice, "{text}");
    assert_eq!(u(&half["read"]["repeated"]), 1 - twice, "{text}");
    assert!(text.contains("sampled: 50% of the range's transactions"), "{text}");

    // The baseline against itself, over everything kept: nothing changes.
    let same_path = dir.join("same.json");
    let out = replay(&brokers, &redis.url(), &["--candidate-card", ModelCard::bundled_path().to_str().unwrap(), "--report", same_path.to_str().unwrap()]);
    let (same, text) = report_of(&out, &same_path);
    assert_eq!((u(&same["transactions"]), u(&same["changed"]), u(&same["read"]["outside_range"])), (161, 0, 0), "{text}");
    assert_eq!(u(&same["reproduced"]["matching"]), 150);

    std::fs::remove_dir_all(&dir).unwrap();
}

/// On a topic that is being written to, a partition's end never shows (each fetch finds something
/// new): the replay ends each partition past the range's end by its records' times instead, while
/// the traffic goes on.
#[test]
fn a_topic_being_written_to_is_replayed_up_to_the_range_end() {
    let (broker, redis) = testkit::servers(1, USERS, SEED);
    let brokers = broker.bootstrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let traffic = {
        let (brokers, stop, sent_so_far, run) = (brokers.clone(), stop.clone(), sent_so_far.clone(), unique("live"));
        std::thread::spawn(move || {
            let producer = TestProducer::new(&brokers);
            let payments = payments(&run, 6_000, 0, PAID_MS);
            // Every 20 ms for up to two minutes, unless stopped.
            for (sent, (t, _)) in payments.iter().enumerate() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return sent;
                }
                producer.send_transactions(topics::TRANSACTIONS, [t]);
                producer.flush();
                sent_so_far.store(sent + 1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            payments.len()
        })
    };
    while sent_so_far.load(std::sync::atomic::Ordering::Relaxed) < 20 {
        assert!(!traffic.is_finished(), "the traffic stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = std::env::temp_dir().join(unique("replay-live"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.json");
    let out = replay(&brokers, &redis.url(), &["--candidate-card", ModelCard::bundled_path().to_str().unwrap(), "--report", path.to_str().unwrap()]);
    let still_sending = !traffic.is_finished();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    let (r, text) = report_of(&out, &path);
    assert!(still_sending, "the replay ended only when the traffic did ({sent} sent)");
    let scored = u(&r["transactions"]);
    assert!(scored >= 20 && scored < sent as u64, "{scored} of {sent}: {text}");
    assert_eq!(u(&r["features"]["store"]), scored, "no decisions: features from the store");
    assert!(u(&r["read"]["outside_range"]) > 0, "records after the range's end were read and left out: {text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn what_cannot_be_replayed_is_said_plainly() {
    let (broker, redis) = testkit::servers(1, 1, SEED);
    let brokers = broker.bootstrap();

    let out = replay(&brokers, &redis.url(), &["--candidate-card", "/nonexistent/card.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("candidate") && stderr.contains("/nonexistent/card.json"), "{stderr}");

    let card = ModelCard::bundled_path();
    let out = replay(&brokers, &redis.url(), &["--candidate-card", card.to_str().unwrap(), "--transactions-topic", "no-such-topic"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("`no-such-topic` does not exist"), "{stderr}");

    let out = replay(&brokers, &redis.url(), &["--candidate-card", card.to_str().unwrap(), "--from", "1h", "--to", "2h"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the range is empty"), "{stderr}");

    // An empty topic is an empty backtest, not an error.
    let out = replay(&brokers, &redis.url(), &["--candidate-card", card.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(": 0 transactions scored"), "{stdout}");

    // More transactions than the replay may hold: refused, with what to do.
    let producer = TestProducer::new(&brokers);
    producer.send_transactions(topics::TRANSACTIONS, payments(&unique("many"), 5, 0, PAID_MS).iter().map(|(t, _)| t));
    producer.flush();
    let out = replay(&brokers, &redis.url(), &["--candidate-card", card.to_str().unwrap(), "--max-transactions", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("more than 4 transactions in the range") && stderr.contains("--max-transactions"), "{stderr}");
    let out = replay(&brokers, &redis.url(), &["--candidate-card", card.to_str().unwrap(), "--max-transactions", "5"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(": 5 transactions scored"), "{}", String::from_utf8_lossy(&out.stderr));
}
