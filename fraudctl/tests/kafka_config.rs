//! `fraudctl --kafka-config` (FRAUDCTL_KAFKA_CONFIG): what a cluster needs reaches every Kafka
//! client fraudctl makes, after the client's own settings.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

mod common;
use common::fraudctl;
use testkit::tls::{ClientCheck, TlsBroker};

#[test]
fn overrides_reach_the_clients_and_win_over_their_own_settings() {
    let broker = testkit::Broker::start();
    // The override names the real broker; the flag a port where nothing listens. Only an
    // override applied last gets the topics created.
    let out = fraudctl(&["--kafka-config", &format!("bootstrap.servers={}", broker.bootstrap()), "topics", "create", "--brokers", "127.0.0.1:1", "--partitions", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l == "topic transactions: created, 1 partition, 1 copy each"), "{stdout}");
}

#[test]
fn an_unknown_setting_is_a_clear_error() {
    let out = fraudctl(&["--kafka-config", "no.such.setting=1", "topics", "create", "--brokers", "127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("creating a Kafka client") && stderr.contains("no.such.setting"), "{stderr}");
    let out = fraudctl(&["topics", "create", "--kafka-config", "oops", "--brokers", "127.0.0.1:1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("key=value"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn brokers_that_cannot_be_reached_are_an_error_naming_them_not_a_hang() {
    let started = std::time::Instant::now();
    let out = fraudctl(&["topics", "create", "--brokers", "127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("creating topics on the Kafka brokers 127.0.0.1:1"), "{stderr}");
    // And why, in librdkafka's own words, though the client was never polled.
    assert!(stderr.lines().any(|l| l.contains("\"target\":\"librdkafka\"") && l.contains("Connect to ipv4#127.0.0.1:1 failed")), "{stderr}");
    println!("failed after {:?}: {stderr}", started.elapsed());
}

/// A cluster reached over TLS, as managed Kafka services are: with the CA that signed the broker's
/// certificate (`ssl.ca.location`), fraudctl's clients connect and work; without it the
/// certificate is refused and the error says so. A cluster that also asks for SASL/SCRAM gets
/// the exchange, over TLS, and an unknown user is refused in words; one that asks for a client
/// certificate gets the one given in the settings.
#[test]
fn a_cluster_behind_tls_is_reached_with_its_ca_and_refused_without() {
    let dir = testkit::tls::certificates("kafka-tls");
    let ca = format!("ssl.ca.location={}", dir.join("ca.pem").display());
    let create = |brokers: &str, settings: &[&str]| {
        let mut args: Vec<&str> = settings.iter().flat_map(|s| ["--kafka-config", s]).collect();
        args.extend(["topics", "create", "--partitions", "1", "--brokers", brokers]);
        let out = fraudctl(&args);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let tls = TlsBroker::start(&dir, ClientCheck::None);
    let (ok, stdout, stderr) = create(&tls.bootstrap(), &["security.protocol=ssl", &ca]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l == "topic transactions: created, 1 partition, 1 copy each"), "{stdout}");
    // Done over TLS: the same broker does not answer Kafka in the clear.
    let (ok, _, stderr) = create(&tls.bootstrap(), &[]);
    assert!(!ok, "{stderr}");

    let (ok, _, stderr) = create(&tls.bootstrap(), &["security.protocol=ssl"]);
    assert!(!ok);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");

    let scram = TlsBroker::start(&dir, ClientCheck::Sasl);
    let (ok, _, stderr) = create(&scram.bootstrap(), &["security.protocol=sasl_ssl", &ca, "sasl.mechanism=SCRAM-SHA-512", "sasl.username=nobody", "sasl.password=secret"]);
    assert!(!ok);
    assert!(stderr.contains("SASL SCRAM authentication failed") && stderr.contains("unknown-user"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password is never printed: {stderr}");

    // A cluster that asks for a client certificate (mutual TLS): given, the topics are created;
    // without one the handshake is refused.
    let mutual = TlsBroker::start(&dir, ClientCheck::Certificate);
    let (cert, key) = (format!("ssl.certificate.location={}", dir.join("client.pem").display()), format!("ssl.key.location={}", dir.join("client.key").display()));
    let (ok, stdout, stderr) = create(&mutual.bootstrap(), &["security.protocol=ssl", &ca, &cert, &key]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l == "topic transactions: created, 1 partition, 1 copy each"), "{stdout}");
    let (ok, _, stderr) = create(&mutual.bootstrap(), &["security.protocol=ssl", &ca]);
    assert!(!ok);
    assert!(stderr.contains("certificate required"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
