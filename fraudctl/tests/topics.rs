//! `fraudctl topics create` against the real broker: partitions, copies and topic settings of the
//! topics it creates, topics already there left alone and said so, and settings that cannot work
//! refused before anything is created.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

mod common;
use common::fraudctl;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Each fraudstream topic the cluster has: (partitions, copies of partition 0).
fn topics(brokers: &str) -> BTreeMap<String, (usize, usize)> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let md = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    md.topics()
        .iter()
        .filter(|t| fraudctl::topics::standard(1).iter().any(|(name, _)| name == t.name()))
        .map(|t| (t.name().to_string(), (t.partitions().len(), t.partitions()[0].replicas().len())))
        .collect()
}

/// The settings the cluster reports for `topic` (this broker reports those given at creation).
fn settings(brokers: &str, topic: &str) -> BTreeMap<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let results = rt.block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())).unwrap();
    let resource = results.into_iter().next().unwrap().unwrap();
    resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect()
}

#[test]
fn topics_are_created_with_their_settings_and_existing_ones_are_left_alone() {
    let broker = testkit::Broker::start();
    let b = broker.bootstrap();
    let out = fraudctl(&[
        "topics", "create", "--brokers", &b, "--partitions", "3",
        "--config", "retention.ms=86400000",
        "--config", "decisions:retention.ms=2592000000",
        "--config", "labels:cleanup.policy=compact",
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    // One copy: auto on a cluster of one broker.
    for line in [
        "topic transactions: created, 3 partitions, 1 copy each, retention.ms=86400000",
        "topic decisions: created, 3 partitions, 1 copy each, retention.ms=2592000000",
        "topic labels: created, 3 partitions, 1 copy each, retention.ms=86400000, cleanup.policy=compact",
        "topic transactions.dlq: created, 3 partitions, 1 copy each, retention.ms=86400000",
    ] {
        assert!(said.lines().any(|l| l == line), "no line `{line}` in\n{said}");
    }
    let created = topics(&b);
    assert_eq!(created.len(), 6, "{created:?}");
    assert!(created.values().all(|&t| t == (3, 1)), "{created:?}");
    assert_eq!(settings(&b, "decisions").get("retention.ms").map(String::as_str), Some("2592000000"));
    assert_eq!(settings(&b, "business-events").get("retention.ms").map(String::as_str), Some("86400000"));
    let labels = settings(&b, "labels");
    assert_eq!(labels.get("cleanup.policy").map(String::as_str), Some("compact"), "{labels:?}");

    // Again, asking for more partitions and other settings: nothing changes, and it says so.
    let out = fraudctl(&["topics", "create", "--brokers", &b, "--partitions", "6", "--config", "retention.ms=1000"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.lines().any(|l| l == "topic decisions: exists with 3 partitions, 1 copy each; left as it is (not the 6 partitions asked for)"),
        "{said}"
    );
    assert_eq!(said.lines().filter(|l| l.ends_with("(not the 6 partitions asked for)")).count(), 6, "{said}");
    assert_eq!(topics(&b), created);
    assert_eq!(settings(&b, "transactions").get("retention.ms").map(String::as_str), Some("86400000"));
}

#[test]
fn settings_that_cannot_work_are_refused_before_anything_is_created() {
    let broker = testkit::Broker::start();
    let b = broker.bootstrap();

    let out = fraudctl(&["topics", "create", "--brokers", &b, "--replication-factor", "3"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("--replication-factor 3: the cluster has 1 broker,"), "{said}");

    let out = fraudctl(&["topics", "create", "--brokers", &b, "--config", "decision:retention.ms=1"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("no topic decision among transactions, decisions"), "{said}");

    for (flag, value, expected) in [("--config", "retention.ms", "[TOPIC:]KEY=VALUE"), ("--replication-factor", "0", "auto"), ("--partitions", "0", "0")] {
        let out = fraudctl(&["topics", "create", "--brokers", &b, flag, value]);
        let said = text(&out);
        assert!(!out.status.success() && said.contains(flag) && said.contains(expected), "{flag} {value}: {said}");
    }
    assert!(topics(&b).is_empty(), "{:?}", topics(&b));
}
