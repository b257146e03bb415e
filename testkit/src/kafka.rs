//! Kafka helpers for tests: create topics, produce records, read a topic back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer, DefaultProducerContext};
use rdkafka::{ClientConfig, Message, Offset};

use schemas::{Record, Transaction};

pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
    let brokers = brokers.to_string();
    // A thread of its own, so that async tests can call this too.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fraudctl::topics::create(&brokers, &topics))
            .expect("create topics");
    })
    .join()
    .expect("create topics thread");
}

/// Every standard topic, `partitions` each.
pub fn create_standard_topics(brokers: &str, partitions: i32) {
    let topics = fraudctl::topics::standard(partitions);
    let refs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    create_topics(brokers, &refs);
}

pub struct TestProducer(ThreadedProducer<DefaultProducerContext>);

impl TestProducer {
    pub fn new(brokers: &str) -> Self {
        Self(
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .create()
                .expect("producer"),
        )
    }

    pub fn send(&self, topic: &str, key: Option<&[u8]>, payload: &[u8], headers: &[(&str, &str)]) {
        let h = headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_bytes()) }));
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload).headers(h);
        if let Some(k) = key {
            record = record.key(k);
        }
        scorer::pipeline::send_record(&self.0, record).expect("produce");
    }

    pub fn send_transactions<'a>(&self, topic: &str, txs: impl IntoIterator<Item = &'a Transaction>) {
        for tx in txs {
            self.send(topic, Some(tx.user_id.as_bytes()), &schemas::encode(tx).unwrap(), &[]);
        }
    }

    pub fn flush(&self) {
        self.0.flush(Duration::from_secs(30)).expect("flush");
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Received {
    pub fn decode<T: Record>(&self) -> T {
        schemas::decode(&self.payload).expect("decode")
    }
}

/// Reads `topic` from the beginning (read_committed) until at least `min` records arrived, then
/// until nothing new came for `settle`; panics on `timeout`.
pub fn read(brokers: &str, topic: &str, min: usize, timeout: Duration, settle: Duration) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    fraudctl::topics::assign_all(&consumer, topic, Offset::Beginning, Duration::from_secs(10)).expect("assign every partition");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut last_new = Instant::now();
    loop {
        if out.len() >= min && last_new.elapsed() >= settle {
            return out;
        }
        if Instant::now() > deadline {
            panic!("{topic}: {} of {min} records after {timeout:?}", out.len());
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                last_new = Instant::now();
                out.push(Received {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            Some(Err(e)) => eprintln!("{topic}: consume error {e}"),
            None => {}
        }
    }
}
