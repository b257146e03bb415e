//! `fraudctl bench scorer --brokers` on a cluster it shares: every run uses topics of its own,
//! leaves the cluster's pipeline topics alone and deletes its topics when it ends. (The numbers
//! it prints are not checked: benchmarks print, tests do not time.)

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

mod common;
use common::fraudctl;

#[test]
fn on_a_cluster_each_run_has_topics_of_its_own_and_deletes_them() {
    let broker = testkit::Broker::start();
    let b = broker.bootstrap();
    let created = fraudctl(&["topics", "create", "--brokers", &b]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));

    let out = fraudctl(&["bench", "scorer", "--brokers", &b, "--records", "20000", "--users", "200", "--repeat", "2"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let rows: Vec<Vec<&str>> = stdout.lines().skip(2).take_while(|l| l.starts_with("| ")).map(|l| l.split('|').map(str::trim).collect()).collect();
    let order: Vec<(&str, &str)> = rows.iter().map(|cells| (cells[1], cells[12])).collect();
    assert_eq!(
        order,
        [("passthrough", "1"), ("fan-out", "1"), ("scorer", "1"), ("scorer", "2"), ("fan-out", "2"), ("passthrough", "2")],
        "the second repetition runs in reverse:\n{stdout}"
    );
    for cells in &rows {
        let measured: u64 = cells[2].parse().unwrap();
        assert!(measured > 0, "{cells:?}");
        let per_batch: f64 = cells[7].parse().unwrap();
        assert!((1.0..=500.0).contains(&per_batch), "records per batch, at most --max-batch: {cells:?}");
        assert_eq!(cells[8], "", "no broker CPU for a cluster's broker: {cells:?}");
        // The ratio is to the passthrough of the same repetition, wherever it ran in it (within
        // the rounding of the printed rates, whole records per second, and of the ratio itself).
        let passthrough = rows.iter().find(|c| c[1] == "passthrough" && c[12] == cells[12]).unwrap();
        let (rate, base): (f64, f64) = (cells[3].parse().unwrap(), passthrough[3].parse().unwrap());
        let expected = rate / base;
        let rounding = 0.005 + expected * (0.5 / rate + 0.5 / base) + 1e-9;
        assert!((cells[5].parse::<f64>().unwrap() - expected).abs() <= rounding, "{cells:?} against {passthrough:?}");
        // Measured over most of the run (5 % to 95 % of its records), not a few batches of it.
        assert!(measured >= 20000 / 2, "{cells:?}");
        if cells[1] == "passthrough" {
            assert_eq!(cells[5], "1.00", "{cells:?}");
        }
    }
    assert!(stdout.contains(&format!("brokers {b})")), "{stdout}");
    let prefix = format!("fraudstream-bench-{}-", out_pid(&stderr));
    for run in 0..6 {
        assert!(stderr.contains(&format!("transactions to {prefix}{run}-transactions ")), "run {run} produces to a topic of its own:\n{stderr}");
    }

    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    let md = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let names: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    assert!(!names.iter().any(|n| n.starts_with("fraudstream-bench-")), "the runs' topics are deleted: {names:?}");
    for (standard, _) in fraudctl::topics::standard(1) {
        assert!(names.contains(&standard.as_str()), "{standard} is still there: {names:?}");
        let meta = md.topics().iter().find(|t| t.name() == standard).unwrap();
        for p in 0..i32::try_from(meta.partitions().len()).unwrap() {
            let (_, high) = consumer.fetch_watermarks(&standard, p, Duration::from_secs(10)).unwrap();
            assert_eq!(high, 0, "nothing was written to {standard}[{p}]");
        }
    }
}

/// The benchmark's process id, from the topic names it printed.
fn out_pid(stderr: &str) -> u32 {
    let at = stderr.find("transactions to fraudstream-bench-").unwrap_or_else(|| panic!("no topic named in\n{stderr}"));
    let rest = &stderr[at + "transactions to fraudstream-bench-".len()..];
    rest.split('-').next().unwrap().parse().unwrap()
}
