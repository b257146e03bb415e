//! The scorer process against a real Tansu broker and a real Redis: every transaction decided,
//! poison records dead-lettered, Redis outages degraded and recovered, shutdowns and crashes
//! losing nothing.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashMap;
use std::time::{Duration, Instant};

use schemas::{BusinessEvent, BusinessEventKind, Decision, Transaction, Verdict, topics};
use scorer::{ModelCard, Scorer, UserLookup};
use testkit::kafka::{Received, TestProducer, read};
use testkit::process::Service;
use testkit::{Broker, RedisServer, free_port, unique};

use fraudctl::synth::{Drift, Generator};

const SEED: u64 = 7;
const USERS: u64 = 200;

struct Stack {
    broker: Broker,
    redis: RedisServer,
    group: String,
}

impl Stack {
    fn start(partitions: i32) -> Self {
        let (broker, redis) = testkit::servers(partitions, USERS, SEED);
        Self { broker, redis, group: unique("scorers") }
    }

    fn load_features(&self) {
        testkit::load_features(&self.redis, USERS, SEED);
    }

    fn scorer(&self, instance: &str, extra: &[&str]) -> Service {
        self.scorer_on(free_port(), instance, extra)
    }

    /// A scorer serving its /metrics on `port`.
    fn scorer_on(&self, port: u16, instance: &str, extra: &[&str]) -> Service {
        let mut args: Vec<String> = vec![
            "--brokers".into(),
            self.broker.bootstrap(),
            "--redis-url".into(),
            self.redis.url(),
            "--group-id".into(),
            self.group.clone(),
            "--transactional-id".into(),
            format!("{}-{instance}", self.group),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--session-timeout-ms".into(),
            "6000".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Service::start("scorer", &args, &[]);
        s.wait_for_log("scorer ready", Duration::from_secs(30));
        s
    }

    fn producer(&self) -> TestProducer {
        TestProducer::new(&self.broker.bootstrap())
    }

    fn read(&self, topic: &str, min: usize, timeout_s: u64) -> Vec<Received> {
        read(&self.broker.bootstrap(), topic, min, Duration::from_secs(timeout_s), Duration::from_millis(1500))
    }
}

fn payments(n: usize, run: &str) -> Vec<(Transaction, bool)> {
    let mut g = Generator::new(SEED, Drift::None, run);
    let now = 1_764_000_000_000;
    (0..n)
        .map(|i| {
            let user = Generator::user(SEED, i as u64 % USERS);
            let p = g.payment(&user, now);
            (p.transaction, p.is_fraud)
        })
        .collect()
}

/// Sends `txs[range]` (the earlier ones were sent before) and returns their decisions once
/// `range.end` decisions are in the topic.
fn send_and_decide(stack: &Stack, p: &TestProducer, txs: &[(Transaction, bool)], range: std::ops::Range<usize>) -> Vec<Decision> {
    p.send_transactions(topics::TRANSACTIONS, txs[range.clone()].iter().map(|(t, _)| t));
    p.flush();
    let ids: Vec<&str> = txs[range.clone()].iter().map(|(t, _)| t.transaction_id.as_str()).collect();
    decisions(&stack.read(topics::DECISIONS, range.end, 60)).into_iter().filter(|d| ids.contains(&d.transaction_id.as_str())).collect()
}

fn decisions(records: &[Received]) -> Vec<Decision> {
    records.iter().map(Received::decode::<Decision>).collect()
}

/// First decision per transaction id, and how many extra copies there were.
fn first_per_transaction(ds: Vec<Decision>) -> (HashMap<String, Decision>, usize) {
    let mut first = HashMap::new();
    let mut dups = 0;
    for d in ds {
        if first.contains_key(&d.transaction_id) {
            dups += 1;
        } else {
            first.insert(d.transaction_id.clone(), d);
        }
    }
    (first, dups)
}

#[test]
fn every_transaction_is_decided_like_the_scoring_core_and_events_add_up() {
    let stack = Stack::start(2);
    let scorer = stack.scorer("a", &[]);
    let txs = payments(300, "e2e");
    let p = stack.producer();
    for (tx, _) in &txs {
        p.send(topics::TRANSACTIONS, Some(tx.user_id.as_bytes()), &schemas::encode(tx).unwrap(), &[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]);
    }
    p.flush();

    let records = stack.read(topics::DECISIONS, txs.len(), 60);
    let (by_id, dups) = first_per_transaction(decisions(&records));
    assert_eq!(dups, 0);
    assert_eq!(by_id.len(), txs.len());
    for r in &records {
        let d: Decision = r.decode();
        assert_eq!(r.key.as_deref(), Some(d.user_id.as_bytes()), "decisions are keyed by user_id");
        // The trace goes on (same trace, still sampled); this scorer exports no spans, so its
        // outputs carry the producer's context as it came (gateway/tests/traces.rs: from the
        // scorer's `send decisions` span when it exports).
        assert_eq!(r.headers["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    }

    // The same transactions through the scoring core in-process, with the same features.
    let card = ModelCard::load(&ModelCard::bundled_path()).unwrap();
    let mut core = Scorer::from_card(card, 1).unwrap();
    let batch: Vec<_> = txs
        .iter()
        .map(|(tx, _)| {
            let n: u64 = tx.user_id.parse::<u64>().unwrap() - 10_000;
            (tx.clone(), UserLookup::Found(Generator::user(SEED, n).features))
        })
        .collect();
    for want in core.decide_batch(batch, Instant::now()).unwrap() {
        let got = &by_id[&want.transaction_id];
        assert!((got.fraud_probability - want.fraud_probability).abs() < 1e-6, "{}", want.transaction_id);
        assert_eq!(got.features, want.features);
        assert_eq!(got.top_features.len(), 3);
        assert!(!got.degraded && got.user_features_found);
        // The scorer's rules add a large-amount review on top of the card's thresholds.
        if want.amount <= 10_000.0 {
            assert_eq!(got.decision, want.decision);
        }
    }

    let events: Vec<BusinessEvent> = stack.read(topics::BUSINESS_EVENTS, txs.len(), 30).iter().map(Received::decode).collect();
    assert_eq!(events.len(), txs.len());
    for kind in [BusinessEventKind::Revenue, BusinessEventKind::FraudBlocked, BusinessEventKind::ReviewQueued] {
        let verdict = match kind {
            BusinessEventKind::Revenue => Verdict::Approve,
            BusinessEventKind::FraudBlocked => Verdict::Block,
            BusinessEventKind::ReviewQueued => Verdict::Review,
        };
        let from_events: f64 = events.iter().filter(|e| e.kind == kind).map(|e| e.amount).sum();
        let from_decisions: f64 = by_id.values().filter(|d| d.decision == verdict).map(|d| d.amount).sum();
        assert!((from_events - from_decisions).abs() < 1e-6, "{kind:?}: {from_events} vs {from_decisions}");
    }
    assert!(events.iter().any(|e| e.kind == BusinessEventKind::Revenue));

    // Logs: one JSON object per line; reviews and blocks are logged with their explanation and
    // the trace id of the request they belong to.
    let logs = scorer.logs();
    let lines: Vec<serde_json::Value> = logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let flagged = by_id.values().filter(|d| d.decision != Verdict::Approve).count();
    let logged: Vec<&serde_json::Value> = lines.iter().filter(|l| l["message"] == "decision").collect();
    assert!(flagged > 0);
    assert_eq!(logged.len(), flagged, "one info line per review or block");
    for l in logged {
        assert_eq!(l["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(l["level"], "INFO");
        assert!(l["top_features"].as_str().unwrap().contains('='), "{l}");
        assert!(l["timestamp"].is_string() && l["target"].is_string());
    }
}

#[test]
fn poison_records_are_dead_lettered_with_reasons_and_scoring_continues() {
    let stack = Stack::start(1);
    let _scorer = stack.scorer("a", &[]);
    let p = stack.producer();
    let good = payments(2, "poison");
    let mut wrong_id = schemas::encode(&good[0].0).unwrap();
    wrong_id[1..5].copy_from_slice(&77u32.to_be_bytes());
    let mut negative = good[0].0.clone();
    negative.transaction_id = "negative-amount".into();
    negative.amount = -5.0;
    p.send(topics::TRANSACTIONS, Some(b"u1"), b"{\"not\": \"avro\"}", &[("origin", "test")]);
    p.send(topics::TRANSACTIONS, Some(b"u2"), &wrong_id, &[]);
    p.send(topics::TRANSACTIONS, Some(b"u3"), &schemas::encode(&negative).unwrap(), &[]);
    p.send_transactions(topics::TRANSACTIONS, [&good[1].0]);
    p.flush();

    let decided = decisions(&stack.read(topics::DECISIONS, 1, 60));
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].transaction_id, good[1].0.transaction_id);

    let dlq = stack.read(topics::TRANSACTIONS_DLQ, 3, 30);
    assert_eq!(dlq.len(), 3);
    let kinds: Vec<&str> = dlq.iter().map(|r| r.headers["error.kind"].as_str()).collect();
    assert_eq!(kinds, ["decode", "schema", "validation"]);
    assert_eq!(dlq[0].payload, b"{\"not\": \"avro\"}", "original bytes kept");
    assert_eq!(dlq[0].key.as_deref(), Some(&b"u1"[..]), "original key kept");
    assert_eq!(dlq[0].headers["origin"], "test", "original headers kept");
    assert!(dlq[0].headers["error"].contains("magic byte"), "{}", dlq[0].headers["error"]);
    assert!(dlq[1].headers["error"].contains("unknown schema id 77"));
    assert!(dlq[2].headers["error"].contains("amount: must be > 0"));
    for (i, r) in dlq.iter().enumerate() {
        assert_eq!(r.headers["source.topic"], topics::TRANSACTIONS);
        assert_eq!(r.headers["source.partition"], "0");
        assert_eq!(r.headers["source.offset"], i.to_string());
    }
}

/// A restarted scorer re-reads recent decisions into its repeat window: a transaction decided
/// before the restart and sent again after it gets a decision but no second business event.
#[test]
fn a_restarted_scorer_still_knows_the_transactions_it_decided_before() {
    let stack = Stack::start(2);
    let txs: Vec<Transaction> = payments(40, "restart-repeats").into_iter().map(|(t, _)| t).collect();
    let p = stack.producer();
    let mut first = stack.scorer("a", &[]);
    p.send_transactions(topics::TRANSACTIONS, &txs);
    p.flush();
    stack.read(topics::BUSINESS_EVENTS, txs.len(), 60);
    first.signal("TERM");
    assert_eq!(first.wait(Duration::from_secs(30)), Some(0), "{}", first.logs());

    let port = free_port();
    let mut second = stack.scorer_on(port, "a", &[]);
    second.wait_for_log("scorer ready", Duration::from_secs(30));
    let fields = second.log_fields("into the repeat window", Duration::from_secs(1));
    assert_eq!(fields["decisions"].as_u64(), Some(txs.len() as u64), "{}", second.logs());
    // The same payments again, and one new.
    let new = payments(1, "restart-new").remove(0).0;
    p.send_transactions(topics::TRANSACTIONS, txs.iter().chain([&new]));
    p.flush();
    assert_eq!(decisions(&stack.read(topics::DECISIONS, 2 * txs.len() + 1, 60)).len(), 2 * txs.len() + 1, "a decision for every record");
    let events: Vec<BusinessEvent> = stack.read(topics::BUSINESS_EVENTS, txs.len() + 1, 60).iter().map(Received::decode).collect();
    assert_eq!(events.len(), txs.len() + 1, "one business event per transaction");
    let text = testkit::scrape(port);
    assert_eq!(testkit::sample(&text, r#"scorer_repeated_transactions_total{payment="same"}"#), txs.len() as f64, "{text}");
}

/// A second record for a decided transaction — in the same batch, the next, or after its
/// decision committed — is decided again (whoever published it may be waiting) but gets no second
/// business event; repeats are counted by whether the payment is the same.
#[test]
fn repeated_transactions_get_a_decision_each_and_one_business_event() {
    let stack = Stack::start(1);
    let port = free_port();
    let _scorer = stack.scorer_on(port, "a", &[]);
    let p = stack.producer();
    let txs: Vec<Transaction> = payments(4, "repeats").into_iter().map(|(t, _)| t).collect();
    let other = Transaction { amount: txs[0].amount + 1.0, ..txs[0].clone() };
    p.send_transactions(topics::TRANSACTIONS, [&txs[0], &txs[1], &txs[0], &other, &txs[2]]);
    p.flush();
    assert_eq!(decisions(&stack.read(topics::DECISIONS, 5, 60)).len(), 5);
    p.send_transactions(topics::TRANSACTIONS, [&txs[0], &txs[3]]);
    p.flush();

    let ds = decisions(&stack.read(topics::DECISIONS, 7, 60));
    let sent = [&txs[0], &txs[1], &txs[0], &other, &txs[2], &txs[0], &txs[3]];
    let got: Vec<(&str, f64)> = ds.iter().map(|d| (d.transaction_id.as_str(), d.amount)).collect();
    let want: Vec<(&str, f64)> = sent.iter().map(|t| (t.transaction_id.as_str(), t.amount)).collect();
    assert_eq!(got, want, "a decision for every record, in order");
    let events: Vec<BusinessEvent> = stack.read(topics::BUSINESS_EVENTS, 4, 60).iter().map(Received::decode).collect();
    let mut ids: Vec<&str> = events.iter().map(|e| e.transaction_id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "one business event per transaction");
    let first = events.iter().find(|e| e.transaction_id == txs[0].transaction_id).unwrap();
    assert_eq!(first.amount, txs[0].amount, "the first payment's event");

    let text = testkit::scrape(port);
    assert_eq!(testkit::sample(&text, r#"scorer_repeated_transactions_total{payment="same"}"#), 2.0, "{text}");
    assert_eq!(testkit::sample(&text, r#"scorer_repeated_transactions_total{payment="different"}"#), 1.0);
    let counted: f64 = ["revenue", "fraud_blocked", "review_queued"].iter().map(|m| testkit::sample(&text, &format!("{m}_usd_total"))).sum();
    let amounts: f64 = events.iter().map(|e| scorer::fx::to_usd(e.amount, &e.currency).0).sum();
    assert!((counted - amounts).abs() < 1e-6, "amount metrics count each transaction once: {counted} vs {amounts}");
}

#[test]
fn redis_outage_degrades_decisions_and_recovery_needs_no_restart() {
    let mut stack = Stack::start(1);
    let scorer = stack.scorer("a", &["--redis-timeout-ms", "100", "--redis-backoff-ms", "200"]);
    let p = stack.producer();
    let txs = payments(60, "redis");

    let healthy = send_and_decide(&stack, &p, &txs, 0..20);
    assert!(healthy.iter().all(|d| !d.degraded && d.user_features_found));

    stack.redis.stop();
    let degraded = send_and_decide(&stack, &p, &txs, 20..40);
    assert_eq!(degraded.len(), 20);
    assert!(degraded.iter().all(|d| d.degraded && !d.user_features_found));

    stack.redis.restart();
    stack.load_features();
    std::thread::sleep(Duration::from_millis(300)); // past the backoff
    let recovered = send_and_decide(&stack, &p, &txs, 40..60);
    assert_eq!(recovered.len(), 20);
    assert!(recovered.iter().all(|d| !d.degraded && d.user_features_found), "recovered without a restart");
    drop(scorer);
}

/// A Redis that stops answering (frozen, not refusing connections) costs each batch at most the
/// lookup timeout: decisions go on degraded, and come back with features once it answers again.
#[test]
fn a_redis_that_stops_answering_degrades_decisions_until_it_answers_again() {
    let stack = Stack::start(1);
    let scorer = stack.scorer("a", &["--redis-timeout-ms", "100", "--redis-backoff-ms", "200"]);
    let p = stack.producer();
    let txs = payments(60, "slow-redis");

    assert!(send_and_decide(&stack, &p, &txs, 0..20).iter().all(|d| !d.degraded && d.user_features_found));

    stack.redis.pause();
    let frozen = send_and_decide(&stack, &p, &txs, 20..40);
    assert_eq!(frozen.len(), 20, "scoring went on while Redis did not answer");
    assert!(frozen.iter().all(|d| d.degraded && !d.user_features_found));

    stack.redis.resume();
    std::thread::sleep(Duration::from_millis(300)); // past the backoff
    let recovered = send_and_decide(&stack, &p, &txs, 40..60);
    assert_eq!(recovered.len(), 20);
    assert!(recovered.iter().all(|d| !d.degraded && d.user_features_found), "features again, without a restart");
    assert!(scorer.logs().contains("feature store unavailable"));
}

/// A broker that stalls while the scorer works through a backlog — connections open, nothing
/// answered, for longer than the group's session timeout and the scorer's 10 s wait on a commit —
/// loses nothing: once it answers again, the same scorer process decides every transaction.
#[test]
fn a_broker_stalled_mid_stream_loses_nothing_and_the_scorer_carries_on() {
    let stack = Stack::start(2);
    let mut scorer = stack.scorer("a", &[]);
    let p = stack.producer();
    let txs = payments(6_000, "stall");
    assert_eq!(send_and_decide(&stack, &p, &txs, 0..200).len(), 200);

    // A backlog of a dozen batches, and the broker stalls while they are being decided.
    p.send_transactions(topics::TRANSACTIONS, txs[200..5_200].iter().map(|(t, _)| t));
    p.flush();
    std::thread::sleep(Duration::from_millis(30));
    stack.broker.pause();
    std::thread::sleep(Duration::from_secs(15));
    stack.broker.resume();
    p.send_transactions(topics::TRANSACTIONS, txs[5_200..].iter().map(|(t, _)| t));
    p.flush();

    let (by_id, dups) = first_per_transaction(decisions(&stack.read(topics::DECISIONS, txs.len(), 120)));
    let missing: Vec<&str> = txs.iter().map(|(t, _)| t.transaction_id.as_str()).filter(|id| !by_id.contains_key(*id)).collect();
    println!("after the stall: {} decided, {dups} duplicates, {} missing", by_id.len(), missing.len());
    assert!(missing.is_empty(), "{} transactions never decided:\n{}", missing.len(), scorer.logs());
    assert!(scorer.is_running(), "the scorer gave up:\n{}", scorer.logs());
    // Whether the stall caught a commit depends on timing; say so when it did. An aborted batch
    // fails all its output records at once: a line a second, not one per record.
    let logs = scorer.logs();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\"")).collect();
    for l in &warnings {
        println!("{l}");
    }
    let undelivered = warnings.iter().filter(|l| l.contains("output record not delivered")).count();
    assert!(undelivered <= 40, "{undelivered} lines for undelivered records");
}

/// This broker answers a fetch with no records when it cannot read the partition within the
/// fetch's wait; with no wait at all that is every fetch, so the scorer starves while its records
/// wait — as a scorer with a short wait does on a large partition. It says so, and counts the
/// partition as stalled; a scorer with a wait the broker can meet decides everything and says
/// nothing of the kind.
#[test]
fn a_scorer_whose_fetches_come_back_empty_says_its_partitions_are_stalled() {
    let stack = Stack::start(1);
    let p = stack.producer();
    let txs = payments(40, "starved");
    // One record per batch, as the gateway sends them.
    for (t, _) in &txs {
        p.send_transactions(topics::TRANSACTIONS, [t]);
        p.flush();
    }
    let quick_stats = ["--kafka-config", "statistics.interval.ms=500", "--stall-after-s", "2"];

    let port = free_port();
    let mut starved = stack.scorer_on(port, "a", &[&quick_stats[..], &["--kafka-config", "fetch.wait.max.ms=0"]].concat());
    let fields = starved.log_fields("partition stalled", Duration::from_secs(60));
    let (logs, line) = (starved.logs(), serde_json::Value::Object(fields.clone()));
    assert_eq!(fields["level"], "WARN", "{line}");
    assert_eq!(fields["topic"], topics::TRANSACTIONS, "{line}");
    assert_eq!(fields["partition"], 0, "{line}");
    assert_eq!(fields["position"], 0, "{line}");
    // The partition's end as this broker gives it: the last batch's first offset (39), where
    // Apache Kafka gives the end itself (40).
    assert!((39..=40).contains(&fields["waiting"].as_i64().unwrap()), "{line}");
    assert_eq!(fields["fetch_wait_ms"], "0", "{line}");
    assert!(fields["stalled_s"].as_u64().unwrap() >= 2, "{line}");
    assert_eq!(logs.matches("partition stalled").count(), 1, "once per stall:\n{logs}");
    assert!(!logs.contains("Client stats"), "the producer's statistics are not logged");
    let metrics = testkit::scrape(port);
    assert_eq!(testkit::sample(&metrics, "scorer_records_total"), 0.0, "the scorer really was starved");
    assert_eq!(testkit::sample(&metrics, "kafka_consumer_stalled_partitions"), 1.0);
    starved.signal("TERM");
    assert_eq!(starved.wait(Duration::from_secs(30)), Some(0));

    let port = free_port();
    let fed = stack.scorer_on(port, "a", &quick_stats);
    assert_eq!(decisions(&stack.read(topics::DECISIONS, txs.len(), 60)).len(), txs.len());
    std::thread::sleep(Duration::from_secs(4));
    assert!(!fed.logs().contains("partition stalled"), "{}", fed.logs());
    assert_eq!(testkit::sample(&testkit::scrape(port), "kafka_consumer_stalled_partitions"), 0.0);
}

/// Streams `n` transactions at a steady rate, stops the scorer with `signal` while they are
/// still flowing, restarts it, and returns (decisions by id, duplicates, transactions).
fn interrupted_run(signal: &str, n: usize, delivery: &str) -> (HashMap<String, Decision>, usize, Vec<Transaction>) {
    let stack = Stack::start(2);
    let txs: Vec<Transaction> = payments(n, signal).into_iter().map(|(t, _)| t).collect();
    let args = ["--max-batch", "200", "--delivery", delivery];
    let mut first = stack.scorer("a", &args);
    let brokers = stack.broker.bootstrap();
    let sent = txs.clone();
    let feeder = std::thread::spawn(move || {
        let p = TestProducer::new(&brokers);
        for chunk in sent.chunks(250) {
            p.send_transactions(topics::TRANSACTIONS, chunk);
            p.flush();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let partial = read(&stack.broker.bootstrap(), topics::DECISIONS, n / 5, Duration::from_secs(60), Duration::ZERO);
    first.signal(signal);
    let code = first.wait(Duration::from_secs(30));
    assert!(partial.len() < n, "the scorer finished before it could be interrupted");
    if signal == "TERM" {
        assert_eq!(code, Some(0), "graceful shutdown exits 0:\n{}", first.logs());
        assert!(first.logs().contains("scorer left the consumer group"));
    }
    let _second = stack.scorer("a", &args);
    feeder.join().unwrap();
    let all = decisions(&stack.read(topics::DECISIONS, n, 120));
    let (by_id, dups) = first_per_transaction(all);
    (by_id, dups, txs)
}

#[test]
fn sigterm_mid_stream_then_restart_gives_exactly_one_decision_each() {
    let (by_id, dups, txs) = interrupted_run("TERM", 20_000, "exactly-once");
    assert_eq!(by_id.len(), txs.len(), "every transaction decided");
    assert_eq!(dups, 0, "exactly one decision per transaction");
}

/// At-least-once commits offsets after the outputs, from the committer thread while the next
/// batch is polled; a graceful stop commits the batch in flight, so its successor repeats nothing.
#[test]
fn at_least_once_sigterm_mid_stream_then_restart_loses_and_repeats_nothing() {
    let (by_id, dups, txs) = interrupted_run("TERM", 10_000, "at-least-once");
    assert_eq!(by_id.len(), txs.len(), "every transaction decided");
    assert_eq!(dups, 0, "a graceful stop leaves no batch to read again");
}

#[test]
fn sigkill_mid_stream_then_restart_loses_nothing() {
    let (by_id, dups, txs) = interrupted_run("KILL", 20_000, "exactly-once");
    assert_eq!(by_id.len(), txs.len(), "every transaction decided");
    // The test broker commits a killed producer's open transaction when its successor starts
    // (Apache Kafka aborts it), so duplicates are possible here; readers keep the first.
    println!("SIGKILL: {} transactions, {dups} duplicate decisions", txs.len());
}

#[test]
fn a_second_scorer_joining_mid_stream_shares_the_work_and_nothing_is_lost() {
    let stack = Stack::start(2);
    let txs: Vec<Transaction> = payments(20_000, "group").into_iter().map(|(t, _)| t).collect();
    let p = stack.producer();
    p.send_transactions(topics::TRANSACTIONS, &txs[..10_000]);
    p.flush();
    let _a = stack.scorer("a", &["--max-batch", "100"]);
    stack.read(topics::DECISIONS, 500, 60);
    let _b = stack.scorer("b", &["--max-batch", "100"]);
    p.send_transactions(topics::TRANSACTIONS, &txs[10_000..]);
    p.flush();
    let all = decisions(&stack.read(topics::DECISIONS, txs.len(), 180));
    let (by_id, dups) = first_per_transaction(all);
    assert_eq!(by_id.len(), txs.len(), "every transaction decided");
    println!("two scorers: {} transactions, {dups} duplicate decisions", txs.len());
}

/// The benchmark yardsticks move the same records as scoring without processing them: the
/// passthrough forwards each record once, the fan-out once to each output topic, with key,
/// payload and headers unchanged, and both commit their input offsets like the scorer.
#[test]
fn passthrough_and_fan_out_forward_every_record_unchanged() {
    let mut stack = Stack::start(2);
    let n = 300;
    let sent: Vec<(Vec<u8>, Vec<u8>, String)> =
        (0..n).map(|i| (format!("k{}", i % 17).into_bytes(), format!("payload {i}").into_bytes(), format!("h{i}"))).collect();
    let p = stack.producer();
    for (k, v, h) in &sent {
        p.send(topics::TRANSACTIONS, Some(k), v, &[("origin", h)]);
    }
    p.flush();
    let mut expected: Vec<(Option<Vec<u8>>, Vec<u8>, String)> = sent.iter().map(|(k, v, h)| (Some(k.clone()), v.clone(), h.clone())).collect();
    expected.sort();
    let outputs = |records: Vec<Received>| {
        let mut got: Vec<_> = records.into_iter().map(|r| (r.key, r.payload, r.headers["origin"].clone())).collect();
        got.sort();
        got
    };

    let [pass, pass_unused, fan_decisions, fan_events] = ["pass-out", "pass-unused", "fan-decisions", "fan-events"].map(unique);
    testkit::kafka::create_topics(&stack.broker.bootstrap(), &[(&pass, 2), (&pass_unused, 2), (&fan_decisions, 2), (&fan_events, 2)]);
    for (work, decisions, events) in [("passthrough", &pass, &pass_unused), ("fan-out", &fan_decisions, &fan_events)] {
        // A group of its own: each reads `transactions` from the start.
        stack.group = unique(work);
        let _s = stack.scorer(work, &["--work", work, "--decisions-topic", decisions, "--business-events-topic", events]);
        assert_eq!(outputs(stack.read(decisions, n, 60)), expected, "{work}: every record once, unchanged");
        if work == "fan-out" {
            assert_eq!(outputs(stack.read(events, n, 60)), expected, "fan-out: every record on the second topic too");
        }
    }
}
