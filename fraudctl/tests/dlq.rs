//! `fraudctl dlq` against a real Tansu broker and a real scorer: records the scorer dead-lettered
//! are listed with their reasons, and once what refused them is fixed, sent back and decided.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::time::Duration;

use schemas::{Decision, PaymentMethod, Transaction, topics};
use testkit::kafka::{TestProducer, read};
use testkit::process::Service;
use testkit::{free_port, unique};

mod common;
use common::fraudctl;

fn payment(id: &str, amount: f64) -> Transaction {
    Transaction {
        transaction_id: id.into(),
        user_id: "10001".into(),
        amount,
        currency: "USD".into(),
        payment_method: PaymentMethod::Card,
        merchant_id: None,
        country: Some("US".into()),
        timestamp: schemas::now_millis(),
    }
}

fn stdout(args: &[&str]) -> String {
    let out = fraudctl(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "fraudctl {args:?}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn dead_letters_are_listed_with_their_reasons_and_sent_back_once_fixed() {
    let (broker, redis) = testkit::servers(2, 50, 3);
    let brokers = broker.bootstrap();
    let run = unique("dlq");
    let scorer = |extra: &[&str]| {
        let mut args: Vec<String> = ["--brokers", &brokers, "--redis-url", &redis.url(), "--group-id", &format!("{run}-scorers"), "--transactional-id", &format!("{run}-scorer")]
            .map(String::from)
            .to_vec();
        args.extend(["--listen".to_string(), format!("127.0.0.1:{}", free_port())]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Service::start("scorer", &args, &[])
    };

    // A scorer whose amount limit is 100 refuses a payment of 500; bytes that are not Avro are
    // refused by any scorer.
    let mut strict = scorer(&["--max-amount", "100"]);
    let (big, small) = (payment(&format!("{run}-big"), 500.0), payment(&format!("{run}-small"), 50.0));
    let producer = TestProducer::new(&brokers);
    producer.send(topics::TRANSACTIONS, Some(b"10001"), &schemas::encode(&big).unwrap(), &[("origin", "test")]);
    producer.send(topics::TRANSACTIONS, Some(b"k"), b"not avro", &[]);
    producer.send_transactions(topics::TRANSACTIONS, [&small]);
    producer.flush();
    assert_eq!(read(&brokers, topics::DECISIONS, 1, Duration::from_secs(60), Duration::from_millis(500)).len(), 1);
    assert_eq!(read(&brokers, topics::TRANSACTIONS_DLQ, 2, Duration::from_secs(30), Duration::from_millis(500)).len(), 2);

    let all = stdout(&["dlq", "show", "--brokers", &brokers]);
    assert!(all.contains("validation from transactions/") && all.contains(&format!("key 10001 transaction {}", big.transaction_id)), "{all}");
    assert!(all.contains("\n  amount: must be at most 100\n"), "{all}");
    assert!(all.contains("decode from transactions/") && all.contains("key k (8 bytes)"), "{all}");
    assert!(all.contains("2 records in transactions.dlq: ") && all.contains("validation 1") && all.contains("decode 1"), "{all}");
    let decode = stdout(&["dlq", "show", "--brokers", &brokers, "--kind", "decode", "--limit", "0"]);
    assert_eq!(decode, "1 records in transactions.dlq: decode 1 (0 listed)\n");
    let json = stdout(&["dlq", "show", "--brokers", &brokers, "--kind", "validation", "--json"]);
    let record: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((&record["kind"], &record["error"], &record["source"]["topic"]), (&"validation".into(), &"amount: must be at most 100".into(), &"transactions".into()), "{record}");
    assert_eq!((&record["transaction_id"], &record["headers"]), (&big.transaction_id.as_str().into(), &serde_json::json!({"origin": "test"})), "{record}");
    let later = stdout(&["dlq", "show", "--brokers", &brokers, "--from", "2999-01-01T00:00:00Z"]);
    assert_eq!(later, "0 records in transactions.dlq\n");

    let dry = stdout(&["dlq", "redrive", "--brokers", &brokers, "--kind", "validation", "--dry-run"]);
    assert!(dry.starts_with("would send transactions.dlq/") && dry.contains(" back to transactions\n") && dry.ends_with("dry run: nothing sent\n"), "{dry}");

    // Fixed: a scorer with the default limit. The payment sent back is decided, with its own
    // headers and where it was in the dead-letter topic.
    strict.signal("TERM");
    strict.wait(Duration::from_secs(30));
    let _lenient = scorer(&[]);
    let sent = stdout(&["dlq", "redrive", "--brokers", &brokers, "--kind", "validation"]);
    let resume = sent.strip_prefix("sent 1 records back: transactions 1; to send back only records dead-lettered later: --from ").unwrap_or_else(|| panic!("{sent}")).trim_end().to_string();
    // Sent back once: the same selection from the point it names finds nothing more to send.
    assert_eq!(stdout(&["dlq", "redrive", "--brokers", &brokers, "--kind", "validation", "--from", &resume, "--dry-run"]), "dry run: nothing sent\n");
    let decided = read(&brokers, topics::DECISIONS, 2, Duration::from_secs(60), Duration::from_millis(500));
    let ids: Vec<String> = decided.iter().map(|r| r.decode::<Decision>().transaction_id).collect();
    assert_eq!(ids.iter().filter(|id| **id == big.transaction_id).count(), 1, "{ids:?}");
    let resent = read(&brokers, topics::TRANSACTIONS, 4, Duration::from_secs(30), Duration::from_millis(500));
    let back = resent.iter().find(|r| r.headers.contains_key("redriven.from")).unwrap();
    assert_eq!((back.decode::<Transaction>(), back.key.as_deref()), (big.clone(), Some(&b"10001"[..])));
    assert_eq!(back.headers["origin"], "test");
    assert!(back.headers["redriven.from"].starts_with("transactions.dlq/"), "{:?}", back.headers);
    assert!(!back.headers.contains_key("error") && !back.headers.contains_key("source.offset"), "{:?}", back.headers);

    // Bytes no scorer can read are refused again, and say they were sent back before.
    assert!(stdout(&["dlq", "redrive", "--brokers", &brokers, "--kind", "decode"]).starts_with("sent 1 records back: transactions 1; "));
    assert_eq!(read(&brokers, topics::TRANSACTIONS_DLQ, 3, Duration::from_secs(30), Duration::from_millis(500)).len(), 3);
    let again = stdout(&["dlq", "show", "--brokers", &brokers, "--kind", "decode"]);
    assert!(again.contains("(sent back from transactions.dlq/") && again.contains("2 records in transactions.dlq: decode 2"), "{again}");

    // No source topic, no guess.
    producer.send(topics::TRANSACTIONS_DLQ, None, b"x", &[("error.kind", "schema")]);
    producer.flush();
    let out = fraudctl(&["dlq", "redrive", "--brokers", &brokers, "--kind", "schema"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("names no source topic (header `source.topic`): give --to-topic"), "{err}");
}

/// A broker that cannot be reached is named on stderr by librdkafka's own lines (as the services
/// log them), not only by the error the command ends with.
#[test]
fn a_broker_that_cannot_be_reached_is_told_on_stderr() {
    // Port 1: nothing listens there. A port found free a moment ago can be taken meanwhile by a
    // server of another test running in parallel, which then answers no connection refused.
    let brokers = "127.0.0.1:1".to_string();
    let out = fraudctl(&["dlq", "show", "--brokers", &brokers, "--idle-timeout-s", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let kafka_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('{') && l.contains("\"target\":\"librdkafka\"")).collect();
    assert!(kafka_lines.iter().any(|l| l.contains(&format!("Connect to ipv4#{brokers} failed"))), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing listed: {}", String::from_utf8_lossy(&out.stdout));
}
