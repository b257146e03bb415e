//! `fraudctl dlq`: what the dead-letter topic holds and why, and sending records back to the
//! topic they came from once what refused them is fixed (a scorer that now knows a schema id, a
//! limit raised). Records are read outside any consumer group: reading commits nothing.

use std::ops::ControlFlow;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message};

use schemas::headers;
use scorer::replay::{Reader, ReplayError, show_time};

use crate::kafka::Acks;

/// The header a record sent back carries: where in the dead-letter topic it was
/// (`transactions.dlq/0@17`), so that one refused again can be told from a new one.
pub const REDRIVEN_FROM: &str = "redriven.from";

/// The headers the scorer adds when it dead-letters a record; the rest are the record's own.
const DEAD_LETTER_HEADERS: [&str; 5] =
    [headers::ERROR, headers::ERROR_KIND, headers::SOURCE_TOPIC, headers::SOURCE_PARTITION, headers::SOURCE_OFFSET];

/// Which dead-lettered records a command takes.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Written at or after this (ms since the epoch); `None`: from the first record kept.
    pub from_ms: Option<i64>,
    /// Written before this.
    pub to_ms: i64,
    /// Only this `error.kind` (`decode`, `schema`, `validation`).
    pub kind: Option<String>,
}

/// A dead-lettered record, as read from the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub written_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    fn of(msg: &BorrowedMessage<'_>) -> Self {
        let headers = msg
            .headers()
            .map(|h| h.iter().map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        DeadLetter {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            written_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The last value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref()).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Why it was refused: `decode`, `schema` or `validation`.
    pub fn kind(&self) -> &str {
        self.header(headers::ERROR_KIND).unwrap_or("unknown")
    }

    /// The record's own headers: all but the dead-letter ones.
    pub fn original_headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers.iter().filter(|(k, _)| !DEAD_LETTER_HEADERS.contains(&k.as_str())).map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Where it came from, as its `source.*` headers say: topic, partition, offset.
    pub fn source(&self) -> Option<(&str, &str, &str)> {
        Some((self.header(headers::SOURCE_TOPIC)?, self.header(headers::SOURCE_PARTITION)?, self.header(headers::SOURCE_OFFSET)?))
    }

    /// Where it is in the dead-letter topic: `transactions.dlq/0@17`.
    pub fn place(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }

    /// The record as one JSON object, for tools: the same facts as [`Self::describe`] and the
    /// record's own headers (values as text); the payload by its size only.
    pub fn to_json(&self) -> serde_json::Value {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let source = self.source().map(|(t, p, o)| serde_json::json!({"topic": t, "partition": p.parse::<i32>().ok(), "offset": o.parse::<i64>().ok()}));
        let own: serde_json::Map<String, serde_json::Value> =
            self.original_headers().map(|(k, v)| (k.to_string(), v.map_or(serde_json::Value::Null, |v| text(v).into()))).collect();
        serde_json::json!({
            "place": self.place(),
            "partition": self.partition,
            "offset": self.offset,
            "written_at": self.written_ms.map(show_time),
            "kind": self.kind(),
            "error": self.header(headers::ERROR),
            "source": source,
            "key": self.key.as_deref().map(text),
            "transaction_id": self.transaction_id(),
            "bytes": self.payload.as_ref().map_or(0, Vec::len),
            "headers": own,
        })
    }

    /// The transaction id, when the payload is a transaction (one refused for its values).
    pub fn transaction_id(&self) -> Option<String> {
        self.payload.as_deref().and_then(|p| schemas::decode::<schemas::Transaction>(p).ok()).map(|t| t.transaction_id)
    }

    /// Two lines for a person: where it is, when, why, where it came from, and the reason.
    pub fn describe(&self) -> String {
        let when = self.written_ms.map_or_else(|| "-".to_string(), show_time);
        let from = self.source().map_or_else(|| "unknown".to_string(), |(t, p, o)| format!("{t}/{p}@{o}"));
        let key = self.key.as_deref().map_or_else(|| "none".to_string(), |k| String::from_utf8_lossy(k).into_owned());
        let size = self.payload.as_ref().map_or(0, Vec::len);
        // A record refused for its values is still a transaction: its id helps find it elsewhere.
        let transaction = self.transaction_id().map(|id| format!(" transaction {id}")).unwrap_or_default();
        let again = self.header(REDRIVEN_FROM).map(|p| format!(" (sent back from {p} before)")).unwrap_or_default();
        format!(
            "{} {when} {} from {from} key {key}{transaction} ({size} bytes){again}\n  {}",
            self.place(),
            self.kind(),
            self.header(headers::ERROR).unwrap_or("(no error header)"),
        )
    }
}

/// Calls `each` with every record of `topic` the selection takes, partition by partition in
/// offset order.
pub fn read(reader: &Reader, topic: &str, selection: &Selection, mut each: impl FnMut(DeadLetter) -> ControlFlow<()>) -> Result<(), ReplayError> {
    crate::kafka::read_written(reader, topic, selection.from_ms, selection.to_ms, |msg| {
        let letter = DeadLetter::of(msg);
        if selection.kind.as_deref().is_some_and(|k| k != letter.kind()) {
            return ControlFlow::Continue(());
        }
        each(letter)
    })
}

/// Counts of records by `error.kind`, in the order first seen.
#[derive(Debug, Default)]
pub struct Tally(pub Vec<(String, u64)>);

impl Tally {
    pub fn add(&mut self, kind: &str) {
        match self.0.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => self.0.push((kind.to_string(), 1)),
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k} {n}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("{place} names no source topic (header `source.topic`): give --to-topic")]
    NoSource { place: String },
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{failed} of {sent} records sent back were not acknowledged (first: {first}); they are still in the dead-letter topic")]
    Undelivered { failed: u64, sent: u64, first: String },
}

/// Sends dead-lettered records back: each to `to_topic`, or to the topic it came from, with its
/// key, its bytes, its own headers and [`REDRIVEN_FROM`].
pub struct Redrive {
    producer: BaseProducer<Acks>,
    to_topic: Option<String>,
    sent: u64,
    /// When the latest record sent back was dead-lettered (ms since the epoch).
    last_written_ms: Option<i64>,
    /// How long to wait for every record to be acknowledged or reported failed.
    flush_timeout: Duration,
    /// Records sent per target topic.
    pub by_topic: Tally,
}

impl Redrive {
    pub fn new(brokers: &str, to_topic: Option<String>) -> Result<Self, RedriveError> {
        // Idempotent: a retried request writes a record once.
        Self::with_config(crate::kafka::acked_client(brokers, &[("enable.idempotence", "true"), ("linger.ms", "5")]), to_topic)
    }

    fn with_config(config: ClientConfig, to_topic: Option<String>) -> Result<Self, RedriveError> {
        let (producer, flush_timeout) = crate::kafka::acked_producer(&config)?;
        Ok(Redrive { producer, to_topic, sent: 0, last_written_ms: None, flush_timeout, by_topic: Tally::default() })
    }

    /// Where `letter` goes back to.
    pub fn target<'a>(&'a self, letter: &'a DeadLetter) -> Result<&'a str, RedriveError> {
        self.to_topic.as_deref().or_else(|| letter.header(headers::SOURCE_TOPIC)).ok_or_else(|| RedriveError::NoSource { place: letter.place() })
    }

    pub fn send(&mut self, letter: &DeadLetter) -> Result<(), RedriveError> {
        let topic = self.target(letter)?.to_string();
        let place = letter.place();
        let mut h = OwnedHeaders::new();
        for (key, value) in letter.original_headers().filter(|(k, _)| *k != REDRIVEN_FROM) {
            h = h.insert(Header { key, value });
        }
        h = h.insert(Header { key: REDRIVEN_FROM, value: Some(place.as_bytes()) });
        let mut record = BaseRecord::<[u8], [u8]>::to(&topic).headers(h);
        if let Some(k) = letter.key.as_deref() {
            record = record.key(k);
        }
        if let Some(p) = letter.payload.as_deref() {
            record = record.payload(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    self.producer.poll(Duration::from_millis(50));
                    record = r;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        self.producer.poll(Duration::ZERO);
        self.sent += 1;
        self.by_topic.add(&topic);
        self.last_written_ms = self.last_written_ms.max(letter.written_ms);
        Ok(())
    }

    /// Where a later redrive of the same selection starts so as not to send these records again,
    /// once the whole selection was sent: `--from` just after the latest one sent.
    pub fn resume_from(&self) -> Option<String> {
        self.last_written_ms.map(|ms| show_time(ms + 1))
    }

    /// Waits until Kafka acknowledged every record sent, or librdkafka gave up on those it did
    /// not (past `message.timeout.ms`); an error says how many it did not.
    pub fn finish(self) -> Result<u64, RedriveError> {
        self.producer.flush(self.flush_timeout)?;
        if let Some((failed, first)) = self.producer.context().failures() {
            return Err(RedriveError::Undelivered { failed, sent: self.sent, first });
        }
        Ok(self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            topic: "transactions.dlq".into(),
            partition: 1,
            offset: 17,
            written_ms: Some(1_764_151_200_000),
            key: Some(b"u3".to_vec()),
            payload: Some(b"not avro".to_vec()),
            headers: headers.iter().map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec()))).collect(),
        }
    }

    #[test]
    fn a_dead_letter_keeps_its_own_headers_apart_from_the_reasons() {
        let l = letter(&[
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("error", "amount: must be > 0"),
            ("error.kind", "validation"),
            ("source.topic", "transactions"),
            ("source.partition", "0"),
            ("source.offset", "4521"),
        ]);
        assert_eq!(l.kind(), "validation");
        let own: Vec<&str> = l.original_headers().map(|(k, _)| k).collect();
        assert_eq!(own, ["traceparent"]);
        assert_eq!(l.place(), "transactions.dlq/1@17");
        assert_eq!(
            l.describe(),
            "transactions.dlq/1@17 2025-11-26T10:00:00Z validation from transactions/0@4521 key u3 (8 bytes)\n  amount: must be > 0"
        );
        assert_eq!(
            l.to_json(),
            serde_json::json!({
                "place": "transactions.dlq/1@17", "partition": 1, "offset": 17, "written_at": "2025-11-26T10:00:00Z",
                "kind": "validation", "error": "amount: must be > 0",
                "source": {"topic": "transactions", "partition": 0, "offset": 4521},
                "key": "u3", "transaction_id": null, "bytes": 8,
                "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            })
        );
        let unknown = letter(&[(REDRIVEN_FROM, "transactions.dlq/0@3")]);
        assert_eq!(unknown.kind(), "unknown");
        assert!(unknown.describe().contains("from unknown key u3 (8 bytes) (sent back from transactions.dlq/0@3 before)"), "{}", unknown.describe());
    }

    #[test]
    fn records_no_broker_acknowledges_are_counted_not_left_to_a_flush_timeout() {
        let mut config = crate::kafka::acked_client("127.0.0.1:1", &[("enable.idempotence", "true")]);
        let redrive = Redrive::with_config(config.clone(), None).unwrap();
        assert_eq!(redrive.flush_timeout, Duration::from_secs(25));
        // Nothing listens on port 1: librdkafka gives up on the records after their timeout.
        config.set("message.timeout.ms", "300");
        let mut redrive = Redrive::with_config(config, Some("transactions".into())).unwrap();
        let l = letter(&[("error", "unknown schema id 9"), ("error.kind", "schema")]);
        redrive.send(&l).unwrap();
        redrive.send(&l).unwrap();
        match redrive.finish() {
            Err(RedriveError::Undelivered { failed: 2, sent: 2, first }) => assert!(first.contains("timed out"), "{first}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tallies_count_by_kind_in_order_seen() {
        let mut t = Tally::default();
        for k in ["schema", "decode", "schema"] {
            t.add(k);
        }
        assert_eq!((t.to_string(), t.total()), ("schema 2, decode 1".to_string(), 3));
    }
}
