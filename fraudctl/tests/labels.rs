//! `fraudctl labels` against a real Tansu broker, and against none: it says it published only
//! what Kafka acknowledged.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::time::Duration;

use schemas::{Label, topics};
use testkit::kafka::{create_topics, read};
use testkit::unique;

mod common;
use common::fraudctl;

#[test]
fn labels_are_published_and_ones_kafka_does_not_acknowledge_are_said_to_be_lost() {
    let broker = testkit::Broker::start();
    let brokers = broker.bootstrap();
    let run = unique("labels");
    let truth = std::env::temp_dir().join(format!("{run}.jsonl"));
    std::fs::write(&truth, format!("{{\"transaction_id\":\"{run}-a\",\"is_fraud\":true,\"sent_at\":0}}\n{{\"transaction_id\":\"{run}-b\",\"is_fraud\":false,\"sent_at\":0}}\n")).unwrap();
    let labels = |brokers: &str| fraudctl(&["--kafka-config", "message.timeout.ms=1500", "labels", "--brokers", brokers, "--truth-file", truth.to_str().unwrap(), "--delay", "0"]);

    // A broker that does not answer acknowledges nothing: the command fails and says so.
    let out = labels(&format!("127.0.0.1:{}", testkit::free_port()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("2 labels were not acknowledged by Kafka"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));

    create_topics(&brokers, &[(topics::LABELS, 1)]);
    let out = labels(&brokers);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "published 2 labels to labels\n");
    let got: Vec<Label> = read(&brokers, topics::LABELS, 2, Duration::from_secs(30), Duration::from_millis(300)).iter().map(|r| r.decode()).collect();
    assert_eq!(got.iter().map(|l| (l.transaction_id.clone(), l.is_fraud)).collect::<Vec<_>>(), [(format!("{run}-a"), true), (format!("{run}-b"), false)]);
    std::fs::remove_file(&truth).unwrap();
}
