//! Delayed ground truth: the traffic generator knows which payments are fraud; the labeler
//! publishes that truth to `labels` after a delay, as a chargeback or review process would.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde::{Deserialize, Serialize};

use schemas::{Label, topics};

use crate::kafka::Acks;

/// One payment's ground truth, as `fraudctl traffic --truth-file` writes it (one JSON per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub transaction_id: String,
    pub is_fraud: bool,
    pub sent_at: i64,
}

/// Labels waiting for their time, bounded: past `max_pending` the oldest are dropped and counted.
pub struct Labeler {
    delay_ms: i64,
    pending: VecDeque<Truth>,
    max_pending: usize,
    pub dropped: u64,
}

impl Labeler {
    pub fn new(delay: Duration, max_pending: usize) -> Self {
        Self { delay_ms: delay.as_millis() as i64, pending: VecDeque::new(), max_pending: max_pending.max(1), dropped: 0 }
    }

    pub fn push(&mut self, truth: Truth) {
        if self.pending.len() == self.max_pending {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(truth);
    }

    /// The labels due at `now_ms` (sent at least the delay ago), oldest first.
    pub fn due(&mut self, now_ms: i64) -> Vec<Label> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|t| t.sent_at + self.delay_ms <= now_ms) {
            if let Some(t) = self.pending.pop_front() {
                out.push(Label { transaction_id: t.transaction_id, is_fraud: t.is_fraud, labelled_at: now_ms });
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Publishes labels to `labels`, keyed by transaction id.
pub struct LabelSink {
    producer: ThreadedProducer<Acks>,
    flush_timeout: Duration,
}

impl LabelSink {
    pub fn new(brokers: &str) -> Result<Self> {
        let config = crate::kafka::acked_client(brokers, &[("enable.idempotence", "true"), ("linger.ms", "20")]);
        let (producer, flush_timeout) = crate::kafka::acked_producer(&config).context("creating the labels producer")?;
        Ok(Self { producer, flush_timeout })
    }

    pub fn send(&self, labels: &[Label]) -> Result<()> {
        for l in labels {
            let bytes = schemas::encode(l)?;
            let record = BaseRecord::<[u8], [u8]>::to(topics::LABELS).key(l.transaction_id.as_bytes()).payload(&bytes);
            scorer::pipeline::send_record(&self.producer, record).context("sending a label")?;
        }
        Ok(())
    }

    /// Waits until Kafka acknowledged every label sent, or gave up on it; an error says how many
    /// it did not acknowledge.
    pub fn flush(&self) -> Result<()> {
        self.producer.flush(self.flush_timeout).context("flushing labels")?;
        match self.producer.context().failures() {
            Some((failed, first)) => anyhow::bail!("{failed} labels were not acknowledged by Kafka (first: {first})"),
            None => Ok(()),
        }
    }
}

/// Appends truth lines to a file.
pub struct TruthFile(std::io::BufWriter<std::fs::File>);

impl TruthFile {
    pub fn create(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self(std::io::BufWriter::new(f)))
    }

    pub fn write(&mut self, t: &Truth) -> Result<()> {
        serde_json::to_writer(&mut self.0, t)?;
        self.0.write_all(b"\n")?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        Ok(self.0.flush()?)
    }
}

/// Reads a truth file; a bad line is an error naming it.
pub fn read_truth(path: &Path) -> Result<Vec<Truth>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("{}:{}: not a truth line", path.display(), i + 1))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth(id: &str, sent_at: i64) -> Truth {
        Truth { transaction_id: id.into(), is_fraud: id.ends_with('f'), sent_at }
    }

    #[test]
    fn labels_come_out_after_the_delay_in_order() {
        let mut l = Labeler::new(Duration::from_secs(10), 100);
        l.push(truth("a", 0));
        l.push(truth("bf", 5_000));
        assert!(l.due(9_999).is_empty());
        let due = l.due(10_000);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].transaction_id.as_str(), due[0].is_fraud, due[0].labelled_at), ("a", false, 10_000));
        assert!(l.due(15_000)[0].is_fraud);
        assert!(l.is_empty());
    }

    #[test]
    fn pending_labels_are_bounded() {
        let mut l = Labeler::new(Duration::ZERO, 2);
        for i in 0..5 {
            l.push(truth(&i.to_string(), i));
        }
        assert_eq!((l.len(), l.dropped), (2, 3));
        assert_eq!(l.due(100)[0].transaction_id, "3");
    }

    #[test]
    fn truth_files_round_trip() {
        let path = std::env::temp_dir().join(format!("truth-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = TruthFile::create(&path).unwrap();
        f.write(&truth("x", 1)).unwrap();
        f.write(&truth("yf", 2)).unwrap();
        f.flush().unwrap();
        assert_eq!(read_truth(&path).unwrap(), vec![truth("x", 1), truth("yf", 2)]);
        std::fs::write(&path, "{\"oops\": 1}\n").unwrap();
        assert!(read_truth(&path).unwrap_err().to_string().contains(":1:"));
        std::fs::remove_file(&path).unwrap();
    }
}
