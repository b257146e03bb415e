//! Backtests: a time range of `transactions` replayed through a candidate model beside the
//! baseline (the model in production), without writing anything to Kafka.
//!
//! Each transaction is scored on the features it was decided with: the feature vector its
//! `Decision` carries. A transaction without a decision (not yet scored, or decided by a build
//! with other features) is scored on the feature store's features of now, or on the baseline
//! card's defaults when the store has none; the report says how many came from where. Both
//! models see the same rows, so every difference between them is the models' (and their
//! thresholds'). The baseline's probabilities are compared with the recorded ones of its model
//! version: a replay that does not reproduce production says so before anyone trusts it. Labels
//! from `labels` give each model's precision, recall and F1 on the labelled part of the range.
//!
//! The range is one of record time: the transactions written to the topic from `--from` to
//! `--to`. Each topic is read from the offsets of the range's start (a broker that cannot look
//! offsets up by time is read from its first record) to each partition's end, or to its first
//! record written `END_GRACE_MS` past the range's end, whichever comes first. Decisions and labels
//! are written after their transactions: they are read from the same start up to the replay's
//! start (and decisions only until every transaction has one). The range is read a second time,
//! over exactly the offsets of the first read, to score it: what is held in memory meanwhile is
//! only what was joined to each transaction, not the transactions.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;

use schemas::{Decision, FeatureContribution, Label, Transaction, TransactionLimits, Verdict};
use telemetry::kafka::LoggingContext;

use crate::features::{FEATURE_NAMES, N_FEATURES, UserLookup, feature_vector};
use crate::fx::to_usd;
use crate::quality::{Confusion, Threshold};
use crate::scoring::{Scorer, top_contributions};
use crate::store::FeatureStore;

/// A partition is read until its end, or until a record written this long after the time it is
/// read up to: one partition's records can carry times a few seconds out of order (producers'
/// clocks, batching, retries), and on a topic that is being written to, the end of a partition
/// only shows in a fetch that finds nothing new for `fetch.wait.max.ms`, which steady traffic
/// never leaves.
pub const END_GRACE_MS: i64 = 5_000;
/// Rows per model call.
const CHUNK: usize = 1_000;
/// Two probabilities this close are the same score (one model, one input, other batch sizes).
pub const REPRODUCED_WITHIN: f64 = 1e-6;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the range is empty: --from {from} is not before --to {to}")]
    EmptyRange { from: String, to: String },
    #[error("more than {max} transactions in the range (what is joined to each is held in memory, about 0.4 KiB): narrow --from/--to, replay a sample (--sample 0.1) or raise --max-transactions")]
    TooMany { max: usize },
    #[error("topic `{topic}` does not exist on {brokers}")]
    NoTopic { topic: String, brokers: String },
    #[error("Kafka, reading `{topic}`: {source}")]
    Kafka { topic: String, source: KafkaError },
    #[error("no record and no end of partition from `{topic}` partitions {partitions:?} for {waited_s} s (brokers {brokers}); raise --idle-timeout-s if the broker is slow")]
    Idle { topic: String, partitions: Vec<i32>, waited_s: u64, brokers: String },
    #[error("model: {0}")]
    Model(#[from] crate::Error),
    #[error("feature store: {0}")]
    Store(#[from] redis::RedisError),
    #[error("writing the per-transaction output (--output): {0}")]
    Output(#[from] std::io::Error),
}

/// Where the topics are and how to read them.
#[derive(Debug, Clone)]
pub struct Source {
    pub reader: Reader,
    pub transactions_topic: String,
    pub decisions_topic: String,
    pub labels_topic: String,
}

/// Reads a range of a topic from Kafka, outside any consumer group (it commits nothing).
#[derive(Debug, Clone)]
pub struct Reader {
    pub brokers: String,
    pub kafka_overrides: Vec<(String, String)>,
    /// Give up when no partition sends a record or its end for this long.
    pub idle_timeout: Duration,
    /// Show a progress line on a terminal.
    pub progress: bool,
}

/// What of a topic [`Source::read`] reads.
#[derive(Debug, Clone)]
pub enum Bounds {
    /// From the offsets of `start_ms` (record time; the first record when `None`) to each
    /// partition's end, or to its first record written `END_GRACE_MS` after `end_ms`.
    Time { start_ms: Option<i64>, end_ms: i64 },
    /// Exactly these offsets, as an earlier read reported them.
    Offsets(Vec<PartitionRead>),
}

/// What to replay, and through what.
pub struct Backtest {
    pub baseline: Scorer,
    pub candidate: Scorer,
    /// The card each was loaded from, for the report.
    pub baseline_card: PathBuf,
    pub candidate_card: PathBuf,
    /// The range of record times, `[from, to)`, in ms; `None` = from the first record.
    pub from_ms: Option<i64>,
    pub to_ms: i64,
    pub limits: TransactionLimits,
    /// Where transactions without a recorded decision get their features; `None` = the card's
    /// defaults for all of them.
    pub store: Option<FeatureStore>,
    pub examples: usize,
    /// Refuse a range with more transactions than this (what is joined to each is held in memory).
    pub max_transactions: usize,
    /// The share of the range's transactions replayed, chosen by [`sampled`]; 1 = all.
    pub sample: f64,
    /// One JSON line per replayed transaction ([`Line`]) is written here.
    pub output: Option<Box<dyn Write>>,
}

/// The decision a transaction got in production, as its first `Decision` record says.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    /// The decision's model version, as an index in the replay's list of them.
    version: usize,
    probability: f64,
    degraded: bool,
    features: Option<[f32; N_FEATURES]>,
}

/// Where a transaction's feature vector came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSource {
    /// The vector its recorded decision carries.
    Recorded,
    /// The feature store, now.
    Store,
    /// The baseline card's defaults: the store has no features for the user.
    DefaultsUserUnknown,
    /// The baseline card's defaults: the store holds something for the user that cannot be read
    /// as features (a key of another type).
    DefaultsUserUnreadable,
    /// The baseline card's defaults: the store did not answer (or none was given).
    DefaultsStoreUnavailable,
}

/// One model's score and verdict for a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    pub decision: Verdict,
    pub fraud_probability: f64,
}

/// Everything the report counts about one replayed transaction.
#[derive(Debug)]
pub struct Outcome<'a> {
    pub tx: &'a Transaction,
    pub source: FeatureSource,
    /// The recorded decision's model version and probability, when there is one.
    pub recorded: Option<(&'a str, f64)>,
    pub recorded_degraded: bool,
    pub is_fraud: Option<bool>,
    pub baseline: Scored,
    pub candidate: Scored,
    /// The candidate's largest contributions, for the examples.
    pub candidate_top: Vec<FeatureContribution>,
}

/// A replayed transaction as `--output` writes it: one JSON object per line, for a notebook.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub transaction_id: &'a str,
    pub user_id: &'a str,
    pub amount: f64,
    pub currency: &'a str,
    pub payment_method: &'static str,
    pub timestamp: i64,
    pub features_from: &'static str,
    /// The decision production recorded: its model version and probability.
    pub recorded_model_version: Option<&'a str>,
    pub recorded_probability: Option<f64>,
    pub baseline: Scored,
    pub candidate: Scored,
    pub is_fraud: Option<bool>,
}

impl<'a> Line<'a> {
    pub fn of(o: &Outcome<'a>) -> Self {
        Line {
            transaction_id: &o.tx.transaction_id,
            user_id: &o.tx.user_id,
            amount: o.tx.amount,
            currency: &o.tx.currency,
            payment_method: o.tx.payment_method.as_str(),
            timestamp: o.tx.timestamp,
            features_from: o.source.as_str(),
            recorded_model_version: o.recorded.map(|(v, _)| v),
            recorded_probability: o.recorded.map(|(_, p)| p),
            baseline: o.baseline,
            candidate: o.candidate,
            is_fraud: o.is_fraud,
        }
    }
}

impl FeatureSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureSource::Recorded => "recorded",
            FeatureSource::Store => "store",
            FeatureSource::DefaultsUserUnknown => "defaults_user_unknown",
            FeatureSource::DefaultsUserUnreadable => "defaults_user_unreadable",
            FeatureSource::DefaultsStoreUnavailable => "defaults_store_unavailable",
        }
    }
}

/// The backtest's findings; printed by [`Report::render`], written whole as JSON.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub baseline: ModelSide,
    pub candidate: ModelSide,
    pub range: Range,
    /// The share of the range's transactions replayed (`--sample`; 1 = all).
    pub sample: f64,
    pub read: ReadCounts,
    /// Transactions scored: in the range, valid, each id once.
    pub transactions: u64,
    pub features: FeatureCounts,
    pub reproduced: Reproduced,
    /// Verdicts changed from the baseline's to the candidate's, by (from, to).
    pub changes: Vec<Change>,
    pub changed: u64,
    pub labelled: Labelled,
    /// The changed decisions with the largest change in probability (then the largest amount).
    pub examples: Vec<Example>,
    /// How many examples to keep.
    #[serde(skip)]
    examples_wanted: usize,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModelSide {
    pub model_version: String,
    pub card: String,
    pub review_threshold: f64,
    pub block_threshold: f64,
    /// Verdict counts, in `Verdict::ALL` order.
    pub approve: u64,
    pub review: u64,
    pub block: u64,
    /// Amounts in USD, by verdict.
    pub approved_usd: f64,
    pub reviewed_usd: f64,
    pub blocked_usd: f64,
    pub mean_probability: f64,
    #[serde(skip)]
    probability_sum: f64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Range {
    pub from_ms: Option<i64>,
    pub to_ms: i64,
    pub topic: String,
    pub partitions: Vec<PartitionRead>,
}

/// What was read of one partition.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PartitionRead {
    pub partition: i32,
    /// The first offset read and one past the last (the partition's end when it was reached).
    pub start_offset: i64,
    pub end_offset: i64,
    pub records: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReadCounts {
    pub transaction_records: u64,
    /// Records written outside the range.
    pub outside_range: u64,
    /// Records that are not a `Transaction` (dead-lettered in production).
    pub undecodable: u64,
    /// Transactions with invalid fields (dead-lettered in production).
    pub invalid: u64,
    /// Further records of a transaction id already in the range (the first one is replayed).
    pub repeated: u64,
    /// Valid records of the range left out of the sample (`--sample`).
    pub not_sampled: u64,
    pub decision_records: u64,
    pub undecodable_decisions: u64,
    pub label_records: u64,
    pub undecodable_labels: u64,
    /// Transactions of the range's first read that its second did not find (the broker deleted
    /// them in between, as retention does): left out of the report.
    pub gone_before_scoring: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FeatureCounts {
    pub recorded: u64,
    /// Of the recorded, decided on the card's defaults because the store was down then.
    pub recorded_degraded: u64,
    pub store: u64,
    pub defaults_user_unknown: u64,
    pub defaults_user_unreadable: u64,
    pub defaults_store_unavailable: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Reproduced {
    /// Recorded decisions of the baseline's model version, and how many of them the baseline's
    /// replayed probability matches (within `REPRODUCED_WITHIN`).
    pub recorded_by_baseline: u64,
    pub matching: u64,
    pub largest_difference: f64,
    /// Recorded decisions of other model versions (not compared).
    pub recorded_by_others: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub from: Verdict,
    pub to: Verdict,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Labelled {
    pub transactions: u64,
    pub fraud: u64,
    pub baseline: Quality,
    pub candidate: Quality,
}

/// One model on the labelled transactions.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Quality {
    /// Positive = review or block.
    pub at_review: Rates,
    /// Positive = block.
    pub at_block: Rates,
    /// Fraud approved (the loss), and legitimate payments blocked, in USD.
    pub fraud_approved_usd: f64,
    pub legitimate_blocked_usd: f64,
    #[serde(skip)]
    review: Confusion,
    #[serde(skip)]
    block: Confusion,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Rates {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub false_positive_rate: f64,
}

impl From<Confusion> for Rates {
    fn from(c: Confusion) -> Self {
        Rates {
            tp: c.tp,
            fp: c.fp,
            fn_: c.fn_,
            tn: c.tn,
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            false_positive_rate: c.false_positive_rate(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Example {
    pub transaction_id: String,
    pub user_id: String,
    pub amount: f64,
    pub currency: String,
    pub baseline: Scored,
    pub candidate: Scored,
    pub candidate_top_features: Vec<(String, f64)>,
}

impl ModelSide {
    fn new(scorer: &Scorer, card: &std::path::Path) -> Self {
        let t = scorer.rules().thresholds;
        ModelSide {
            model_version: scorer.model_version().to_string(),
            card: card.display().to_string(),
            review_threshold: t.review,
            block_threshold: t.block,
            ..Default::default()
        }
    }

    fn add(&mut self, s: Scored, usd: f64) {
        let (count, amount) = match s.decision {
            Verdict::Approve => (&mut self.approve, &mut self.approved_usd),
            Verdict::Review => (&mut self.review, &mut self.reviewed_usd),
            Verdict::Block => (&mut self.block, &mut self.blocked_usd),
        };
        *count += 1;
        *amount += usd;
        self.probability_sum += s.fraud_probability;
    }

    pub fn count(&self, v: Verdict) -> u64 {
        match v {
            Verdict::Approve => self.approve,
            Verdict::Review => self.review,
            Verdict::Block => self.block,
        }
    }
}

impl Quality {
    fn add(&mut self, s: Scored, is_fraud: bool, usd: f64) {
        self.review.add(Threshold::Review.positive(s.decision), is_fraud);
        self.block.add(Threshold::Block.positive(s.decision), is_fraud);
        match (s.decision, is_fraud) {
            (Verdict::Approve, true) => self.fraud_approved_usd += usd,
            (Verdict::Block, false) => self.legitimate_blocked_usd += usd,
            _ => {}
        }
    }

    fn finish(&mut self) {
        self.at_review = self.review.into();
        self.at_block = self.block.into();
    }
}

impl Report {
    /// An empty report for these two models over this range, to list `examples` changes.
    pub fn new(baseline: ModelSide, candidate: ModelSide, from_ms: Option<i64>, to_ms: i64, topic: &str, examples: usize) -> Self {
        Report {
            baseline,
            candidate,
            range: Range { from_ms, to_ms, topic: topic.to_string(), partitions: Vec::new() },
            sample: 1.0,
            examples_wanted: examples,
            ..Default::default()
        }
    }

    /// Counts one replayed transaction.
    pub fn add(&mut self, o: &Outcome<'_>) {
        self.transactions += 1;
        match o.source {
            FeatureSource::Recorded => self.features.recorded += 1,
            FeatureSource::Store => self.features.store += 1,
            FeatureSource::DefaultsUserUnknown => self.features.defaults_user_unknown += 1,
            FeatureSource::DefaultsUserUnreadable => self.features.defaults_user_unreadable += 1,
            FeatureSource::DefaultsStoreUnavailable => self.features.defaults_store_unavailable += 1,
        }
        if o.source == FeatureSource::Recorded && o.recorded_degraded {
            self.features.recorded_degraded += 1;
        }
        // Only a decision's own features can reproduce its probability.
        if let Some((version, probability)) = o.recorded
            && o.source == FeatureSource::Recorded
        {
            if version == self.baseline.model_version {
                self.reproduced.recorded_by_baseline += 1;
                let diff = (probability - o.baseline.fraud_probability).abs();
                if diff <= REPRODUCED_WITHIN {
                    self.reproduced.matching += 1;
                }
                self.reproduced.largest_difference = self.reproduced.largest_difference.max(diff);
            } else {
                self.reproduced.recorded_by_others += 1;
            }
        }
        let usd = to_usd(o.tx.amount, &o.tx.currency).0;
        self.baseline.add(o.baseline, usd);
        self.candidate.add(o.candidate, usd);
        if o.baseline.decision != o.candidate.decision {
            self.changed += 1;
            match self.changes.iter_mut().find(|c| c.from == o.baseline.decision && c.to == o.candidate.decision) {
                Some(c) => c.count += 1,
                None => self.changes.push(Change { from: o.baseline.decision, to: o.candidate.decision, count: 1 }),
            }
            if self.examples_wanted > 0 {
                self.examples.push(Example {
                    transaction_id: o.tx.transaction_id.clone(),
                    user_id: o.tx.user_id.clone(),
                    amount: o.tx.amount,
                    currency: o.tx.currency.clone(),
                    baseline: o.baseline,
                    candidate: o.candidate,
                    candidate_top_features: o.candidate_top.iter().map(|c| (c.name.to_string(), c.contribution)).collect(),
                });
                if self.examples.len() >= self.examples_wanted.saturating_mul(4).max(64) {
                    self.keep_largest_examples();
                }
            }
        }
        if let Some(is_fraud) = o.is_fraud {
            self.labelled.transactions += 1;
            self.labelled.fraud += u64::from(is_fraud);
            self.labelled.baseline.add(o.baseline, is_fraud, usd);
            self.labelled.candidate.add(o.candidate, is_fraud, usd);
        }
    }

    fn keep_largest_examples(&mut self) {
        // Largest change in probability first; among equal ones (a candidate that differs only in
        // its thresholds changes none), the largest payment.
        let change = |e: &Example| (e.candidate.fraud_probability - e.baseline.fraud_probability).abs();
        let usd = |e: &Example| to_usd(e.amount, &e.currency).0;
        self.examples.sort_by(|a, b| {
            change(b).total_cmp(&change(a)).then_with(|| usd(b).total_cmp(&usd(a))).then_with(|| a.transaction_id.cmp(&b.transaction_id))
        });
        self.examples.truncate(self.examples_wanted);
    }

    /// Derives the means, rates and orderings once everything is counted.
    pub fn finish(&mut self) {
        let n = self.transactions.max(1) as f64;
        self.baseline.mean_probability = self.baseline.probability_sum / n;
        self.candidate.mean_probability = self.candidate.probability_sum / n;
        self.labelled.baseline.finish();
        self.labelled.candidate.finish();
        let order = |v: Verdict| Verdict::ALL.iter().position(|&x| x == v);
        self.changes.sort_by_key(|c| (order(c.from), order(c.to)));
        self.keep_largest_examples();
    }

    /// The report for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let side = |m: &ModelSide| format!("{} (review ≥ {}, block ≥ {})", m.model_version, m.review_threshold, m.block_threshold);
        out += &format!("Backtest of candidate {} against baseline {}\n", side(&self.candidate), side(&self.baseline));
        let from = self.range.from_ms.map_or_else(|| "the first record".to_string(), show_time);
        let r = &self.read;
        out += &format!(
            "Range: `{}` written from {} to {}: {} transactions scored ({} records read from {} partitions; {} outside the range, {} undecodable, {} invalid, {} repeated)\n",
            self.range.topic,
            from,
            show_time(self.range.to_ms),
            self.transactions,
            r.transaction_records,
            self.range.partitions.len(),
            r.outside_range,
            r.undecodable,
            r.invalid,
            r.repeated,
        );
        if self.sample < 1.0 {
            out += &format!(
                "  sampled: {}% of the range's transactions, chosen by id ({} left out); counts and amounts are the sample's, rates estimate the range's\n",
                (self.sample * 1e6).round() / 1e4,
                r.not_sampled
            );
        }
        if r.gone_before_scoring > 0 {
            out += &format!("  {} of them were gone from the broker when the range was read again (retention?): left out\n", r.gone_before_scoring);
        }
        let f = &self.features;
        out += &format!(
            "Features: {} as recorded with their decision ({} of them degraded then), {} from the feature store now, {} on the card's defaults ({} users unknown to the store, {} with unreadable stored features, {} with the store unavailable)\n",
            f.recorded,
            f.recorded_degraded,
            f.store,
            f.defaults_user_unknown + f.defaults_user_unreadable + f.defaults_store_unavailable,
            f.defaults_user_unknown,
            f.defaults_user_unreadable,
            f.defaults_store_unavailable,
        );
        let p = &self.reproduced;
        out += &format!(
            "Reproduced: {} of {} decisions recorded by {} (largest probability difference {:.1e}); {} recorded by other versions, not compared\n",
            p.matching, p.recorded_by_baseline, self.baseline.model_version, p.largest_difference, p.recorded_by_others,
        );
        if p.matching < p.recorded_by_baseline {
            out += "  WARNING: the baseline does not reproduce every decision of its version: the card or the ONNX file differs from production's\n";
        }
        let (b_name, c_name) = (format!("baseline {}", self.baseline.model_version), format!("candidate {}", self.candidate.model_version));
        let w = 2 + b_name.chars().count().max(c_name.chars().count()).max(22);
        let row = |name: &str, b: String, c: String| format!("{name:<26}{b:>w$}{c:>w$}\n");
        out += "\n";
        out += &row("", b_name, c_name);
        let share = |k: u64| 100.0 * k as f64 / self.transactions.max(1) as f64;
        for v in Verdict::ALL {
            let (b, c) = (self.baseline.count(v), self.candidate.count(v));
            out += &row(v.as_str(), format!("{b} ({:.1}%)", share(b)), format!("{c} ({:.1}%)", share(c)));
        }
        out += &row("blocked amount (USD)", format!("{:.2}", self.baseline.blocked_usd), format!("{:.2}", self.candidate.blocked_usd));
        out += &row("reviewed amount (USD)", format!("{:.2}", self.baseline.reviewed_usd), format!("{:.2}", self.candidate.reviewed_usd));
        out += &row("mean probability", format!("{:.4}", self.baseline.mean_probability), format!("{:.4}", self.candidate.mean_probability));
        let changes: Vec<String> = self.changes.iter().map(|c| format!("{}→{} {}", c.from.as_str(), c.to.as_str(), c.count)).collect();
        out += &format!(
            "\nChanged: {} of {} ({:.1}%){}{}\n",
            self.changed,
            self.transactions,
            share(self.changed),
            if changes.is_empty() { "" } else { ": " },
            changes.join(", ")
        );
        let l = &self.labelled;
        if l.transactions == 0 {
            out += "\nLabelled: none of these transactions has a label yet: no precision, recall or F1\n";
        } else {
            out += &format!("\nLabelled: {} ({} fraud)\n", l.transactions, l.fraud);
            let prf = |r: &Rates| format!("{:.3} / {:.3} / {:.3}", r.precision, r.recall, r.f1);
            out += &row("precision / recall / F1", String::new(), String::new());
            out += &row("  at block", prf(&l.baseline.at_block), prf(&l.candidate.at_block));
            out += &row("  at review", prf(&l.baseline.at_review), prf(&l.candidate.at_review));
            out += &row("fraud approved (USD)", format!("{:.2}", l.baseline.fraud_approved_usd), format!("{:.2}", l.candidate.fraud_approved_usd));
            out += &row("legitimate blocked (USD)", format!("{:.2}", l.baseline.legitimate_blocked_usd), format!("{:.2}", l.candidate.legitimate_blocked_usd));
        }
        if !self.examples.is_empty() {
            out += "\nLargest changes:\n";
            for e in &self.examples {
                let top: Vec<String> = e.candidate_top_features.iter().map(|(n, c)| format!("{n} {c:+.2}")).collect();
                out += &format!(
                    "  {} user {} {:.2} {}: {} {:.3} → {} {:.3} (candidate's top: {})\n",
                    e.transaction_id,
                    e.user_id,
                    e.amount,
                    e.currency,
                    e.baseline.decision.as_str(),
                    e.baseline.fraud_probability,
                    e.candidate.decision.as_str(),
                    e.candidate.fraud_probability,
                    top.join(", "),
                );
            }
        }
        out
    }
}

/// A time in ms since the epoch, as RFC 3339.
pub fn show_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// A replayed transaction, before scoring.
struct Case {
    tx: Transaction,
    recorded: Option<Recorded>,
    is_fraud: Option<(bool, i64)>,
}

/// What the replay keeps of a transaction of the range between its two reads of the range: what
/// is joined to it, not the transaction itself (~110 bytes with its key, plus the hash map's room
/// to grow: 0.2–0.4 KiB in all, where a `Transaction` and its id as a key took ~1 KiB).
#[derive(Debug, Default)]
struct Joined {
    recorded: Option<Recorded>,
    is_fraud: Option<(bool, i64)>,
    replayed: bool,
}

/// Transaction ids are kept as 128-bit hashes (two SipHash keys drawn for this replay): two ids
/// of one range share one with a chance of about n² / 2¹²⁹, nil for any range that fits in memory.
struct IdKeys([std::collections::hash_map::RandomState; 2]);

impl IdKeys {
    fn new() -> Self {
        IdKeys([Default::default(), Default::default()])
    }

    fn of(&self, id: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.0[0].hash_one(id)) << 64) | u128::from(self.0[1].hash_one(id))
    }
}

/// Whether a transaction is in a replay's sample of `share` (0–1): decided by its id alone
/// (FNV-1a, then SplitMix64's finalizer to spread ids that differ in a digit), so every replay and
/// every build picks the same transactions for one share, and a smaller share's are among a
/// larger one's.
pub fn sampled(transaction_id: &str, share: f64) -> bool {
    if share >= 1.0 {
        return true;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in transaction_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    ((h >> 11) as f64 / (1u64 << 53) as f64) < share
}

/// Why a record of the transactions topic is not one of the range's transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skipped {
    OutsideRange,
    /// Not a `Transaction` (dead-lettered in production).
    Undecodable,
    /// Fields that break the contract (dead-lettered in production).
    Invalid,
}

/// The transaction a record written at `written` holds, if it is a valid one of the range
/// `[from, to)`: placed by the time it was written, or, for a record without one (an old
/// producer's), by the transaction's own. Both reads of the range judge each record by this.
fn range_transaction(written: Option<i64>, payload: &[u8], from: i64, to: i64, limits: &TransactionLimits) -> Result<Transaction, Skipped> {
    let outside = |t: i64| t < from || t >= to;
    if written.is_some_and(outside) {
        return Err(Skipped::OutsideRange);
    }
    let tx = schemas::decode::<Transaction>(payload).map_err(|_| Skipped::Undecodable)?;
    if written.is_none() && outside(tx.timestamp) {
        Err(Skipped::OutsideRange)
    } else if !tx.field_errors(limits).is_empty() {
        Err(Skipped::Invalid)
    } else {
        Ok(tx)
    }
}

impl Backtest {
    /// Reads the range, scores it with both models and counts what happened.
    ///
    /// The range is read twice: first to know its transactions (their ids, as [`IdKeys`]), which
    /// says what to keep of the decisions and labels read next; then, over exactly the offsets of
    /// the first read, to score each transaction with what was joined to it. Only the joined parts
    /// are held in memory, never the range's transactions.
    pub fn run(&mut self, source: &Source) -> Result<Report, ReplayError> {
        if let Some(from) = self.from_ms
            && from >= self.to_ms
        {
            return Err(ReplayError::EmptyRange { from: show_time(from), to: show_time(self.to_ms) });
        }
        let mut report = Report::new(
            ModelSide::new(&self.baseline, &self.baseline_card),
            ModelSide::new(&self.candidate, &self.candidate_card),
            self.from_ms,
            self.to_ms,
            &source.transactions_topic,
            self.examples,
        );
        let start = self.from_ms;
        let (from, to, limits, max, share) = (self.from_ms.unwrap_or(i64::MIN), self.to_ms, self.limits, self.max_transactions, self.sample);
        report.sample = share;
        // Decisions and labels of the range's transactions come after them: read up to now.
        let now = schemas::now_millis().max(to);
        let keys = IdKeys::new();
        // The model versions of the recorded decisions, which each keeps as an index in here.
        let mut versions = Vec::<String>::new();
        let mut index = HashMap::<u128, Joined>::new();
        let read = &mut report.read;
        let mut too_many = false;
        let range = Bounds::Time { start_ms: start, end_ms: to };
        report.range.partitions = source.reader.read(&source.transactions_topic, &range, |msg| {
            read.transaction_records += 1;
            let tx = match range_transaction(msg.timestamp().to_millis(), msg.payload().unwrap_or_default(), from, to, &limits) {
                Ok(tx) => tx,
                Err(skipped) => {
                    *match skipped {
                        Skipped::OutsideRange => &mut read.outside_range,
                        Skipped::Undecodable => &mut read.undecodable,
                        Skipped::Invalid => &mut read.invalid,
                    } += 1;
                    return ControlFlow::Continue(());
                }
            };
            if !sampled(&tx.transaction_id, share) {
                read.not_sampled += 1;
            } else {
                let key = keys.of(&tx.transaction_id);
                if index.contains_key(&key) {
                    read.repeated += 1;
                } else if index.len() == max {
                    too_many = true;
                    return ControlFlow::Break(());
                } else {
                    index.insert(key, Joined::default());
                }
            }
            ControlFlow::Continue(())
        })?;
        if too_many {
            return Err(ReplayError::TooMany { max });
        }
        tracing::info!(transactions = index.len(), "transactions of the range read");
        if index.is_empty() {
            report.finish();
            return Ok(report);
        }

        let joined = Bounds::Time { start_ms: start, end_ms: now };
        let mut undecided = index.len();
                source.reader.read(&source.decisions_topic, &joined, |msg| {
            read.decision_records += 1;
            let Ok(d) = schemas::decode::<Decision>(msg.payload().unwrap_or_default()) else {
                read.undecodable_decisions += 1;
                return ControlFlow::Continue(());
            };
            if let Some(j) = index.get_mut(&keys.of(&d.transaction_id))
                && j.recorded.is_none()
            {
                let version = match versions.iter().position(|v| *v == d.model_version) {
                    Some(i) => i,
                    None => {
                        versions.push(d.model_version.clone());
                        versions.len() - 1
                    }
                };
                j.recorded = Some(Recorded { version, probability: d.fraud_probability, degraded: d.degraded, features: recorded_features(&d) });
                undecided -= 1;
            }
            if undecided == 0 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        match source.reader.read(&source.labels_topic, &joined, |msg| {
            read.label_records += 1;
            let Ok(l) = schemas::decode::<Label>(msg.payload().unwrap_or_default()) else {
                read.undecodable_labels += 1;
                return ControlFlow::Continue(());
            };
            if let Some(j) = index.get_mut(&keys.of(&l.transaction_id)) {
                // A later label corrects an earlier one.
                if j.is_fraud.is_none_or(|(_, at)| l.labelled_at >= at) {
                    j.is_fraud = Some((l.is_fraud, l.labelled_at));
                }
            }
            ControlFlow::Continue(())
        }) {
            Ok(_) => {}
            Err(ReplayError::NoTopic { topic, .. }) => tracing::warn!(%topic, "no labels topic: the report has no precision, recall or F1"),
            Err(e) => return Err(e),
        }

        // The same records again: each transaction of the index, the first time it comes.
        let offsets = Bounds::Offsets(report.range.partitions.clone());
        let mut chunk = Vec::<Case>::with_capacity(CHUNK);
        let mut failed = None;
        source.reader.read(&source.transactions_topic, &offsets, |msg| {
            let Ok(tx) = range_transaction(msg.timestamp().to_millis(), msg.payload().unwrap_or_default(), from, to, &limits) else {
                return ControlFlow::Continue(());
            };
            let Some(j) = index.get_mut(&keys.of(&tx.transaction_id)).filter(|j| !j.replayed) else {
                return ControlFlow::Continue(());
            };
            j.replayed = true;
            chunk.push(Case { tx, recorded: j.recorded, is_fraud: j.is_fraud });
            if chunk.len() == CHUNK {
                if let Err(e) = self.score_chunk(&chunk, &versions, &mut report) {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
                chunk.clear();
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if !chunk.is_empty() {
            self.score_chunk(&chunk, &versions, &mut report)?;
        }
        report.read.gone_before_scoring = index.values().filter(|j| !j.replayed).count() as u64;
        if report.read.gone_before_scoring > 0 {
            tracing::warn!(
                transactions = report.read.gone_before_scoring,
                "transactions of the first read were gone from the broker when read again (retention?): left out of the report"
            );
        }
        report.finish();
        Ok(report)
    }

    fn score_chunk(&mut self, chunk: &[Case], versions: &[String], report: &mut Report) -> Result<(), ReplayError> {
        let mut sources = vec![FeatureSource::Recorded; chunk.len()];
        let mut rows = vec![0f32; chunk.len() * N_FEATURES];
        let unrecorded: Vec<usize> = (0..chunk.len()).filter(|&i| chunk[i].recorded.as_ref().and_then(|r| r.features).is_none()).collect();
        // The store answered but could not read some users' features: those lookups are
        // `Unavailable` too, and are told apart by the store having answered.
        let (lookups, store_answered) = match (&mut self.store, unrecorded.is_empty()) {
            (Some(store), false) => {
                let fetched = store.fetch(unrecorded.iter().map(|&i| chunk[i].tx.user_id.as_str()));
                if let Some(error) = &fetched.error {
                    tracing::warn!(%error, transactions = unrecorded.len(), "feature store unavailable: scoring these on the card's defaults");
                }
                if let Some(first) = &fetched.unreadable_detail {
                    tracing::warn!(transactions = fetched.unreadable, first = %first, "users' stored features unreadable: scoring these on the card's defaults");
                }
                (fetched.lookups, fetched.error.is_none())
            }
            _ => (vec![UserLookup::Unavailable; unrecorded.len()], false),
        };
        let defaults = self.baseline.default_user_features();
        for (&i, lookup) in unrecorded.iter().zip(&lookups) {
            let (user, source) = match lookup {
                UserLookup::Found(u) => (u, FeatureSource::Store),
                UserLookup::Missing => (defaults, FeatureSource::DefaultsUserUnknown),
                UserLookup::Unavailable if store_answered => (defaults, FeatureSource::DefaultsUserUnreadable),
                UserLookup::Unavailable => (defaults, FeatureSource::DefaultsStoreUnavailable),
            };
            sources[i] = source;
            rows[i * N_FEATURES..(i + 1) * N_FEATURES].copy_from_slice(&feature_vector(&chunk[i].tx, user));
        }
        for (i, case) in chunk.iter().enumerate() {
            if let Some(f) = case.recorded.as_ref().and_then(|r| r.features) {
                rows[i * N_FEATURES..(i + 1) * N_FEATURES].copy_from_slice(&f);
            }
        }
        let base = self.baseline.score_rows(&rows)?;
        let cand = self.candidate.score_rows(&rows)?;
        for (i, case) in chunk.iter().enumerate() {
            let scored = |scorer: &Scorer, p: f64| Scored { decision: scorer.rules().verdict(p, &case.tx), fraud_probability: p };
            let outcome = Outcome {
                tx: &case.tx,
                source: sources[i],
                recorded: case.recorded.as_ref().map(|r| (versions[r.version].as_str(), r.probability)),
                recorded_degraded: case.recorded.as_ref().is_some_and(|r| r.degraded),
                is_fraud: case.is_fraud.map(|(f, _)| f),
                baseline: scored(&self.baseline, base.probabilities[i]),
                candidate: scored(&self.candidate, cand.probabilities[i]),
                candidate_top: top_contributions(&rows[i * N_FEATURES..(i + 1) * N_FEATURES], cand.contributions(i)),
            };
            report.add(&outcome);
            if let Some(out) = self.output.as_mut() {
                serde_json::to_writer(&mut *out, &Line::of(&outcome)).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }
}

/// The feature vector a decision carries, in this build's order; `None` if its names differ.
fn recorded_features(d: &Decision) -> Option<[f32; N_FEATURES]> {
    if d.features.len() != N_FEATURES || d.features.iter().zip(FEATURE_NAMES).any(|(f, name)| f.name != name) {
        return None;
    }
    Some(std::array::from_fn(|i| d.features[i].value as f32))
}

/// Where a service's start-up recall of the last `window` before `now_ms` starts, by record time:
/// never before the epoch, however long the window.
pub fn recall_start(now_ms: i64, window: Duration) -> i64 {
    now_ms - i64::try_from(window.as_millis()).unwrap_or(i64::MAX).min(now_ms)
}

impl Reader {
    /// The reader of a service's start-up recall of its own recent records: no progress line,
    /// and a partition that sends nothing for 15 s is taken as read.
    pub fn for_recall(brokers: &str, kafka_overrides: &[(String, String)]) -> Self {
        Reader { brokers: brokers.to_string(), kafka_overrides: kafka_overrides.to_vec(), idle_timeout: Duration::from_secs(15), progress: false }
    }

    /// Each partition of `topic` and where a read from `start_ms` (record time; the first record
    /// when `None`) begins there; partitions without a record at or after it are left out.
    fn time_offsets(&self, consumer: &BaseConsumer<LoggingContext>, topic: &str, start_ms: Option<i64>) -> Result<Vec<(i32, Offset)>, ReplayError> {
        let kafka = |source| ReplayError::Kafka { topic: topic.to_string(), source };
        let metadata = telemetry::kafka::fetch_metadata(consumer, Some(topic), self.idle_timeout).map_err(kafka)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(ReplayError::NoTopic { topic: topic.to_string(), brokers: self.brokers.clone() });
        }
        let Some(start_ms) = start_ms else {
            return Ok(partitions.into_iter().map(|p| (p, Offset::Beginning)).collect());
        };
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            // Negative offsets are librdkafka's special ones: no time lookup before the epoch.
            tpl.add_partition_offset(topic, p, Offset::Offset(start_ms.max(0))).map_err(kafka)?;
        }
        match consumer.offsets_for_times(tpl, self.idle_timeout) {
            Ok(found) => Ok(found
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    // No record at or after the start: nothing to read there.
                    Offset::End => None,
                    Offset::Offset(o) if o >= 0 => Some((e.partition(), Offset::Offset(o))),
                    _ => Some((e.partition(), Offset::Beginning)),
                })
                .collect()),
            Err(e) => {
                tracing::info!(%topic, error = %e, "offsets by time not available: reading from the first record");
                Ok(partitions.into_iter().map(|p| (p, Offset::Beginning)).collect())
            }
        }
    }

    fn consumer(&self) -> Result<BaseConsumer<LoggingContext>, KafkaError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("fraudstream-read-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &self.kafka_overrides {
            cfg.set(k, v);
        }
        cfg.create_with_context(LoggingContext::default())
    }

    /// Reads `topic` as [`Reader::read`] does from `start_ms` (its first record when `None`) to
    /// `end_ms`, passing over records written before `start_ms`: a broker that cannot look
    /// offsets up by time (the embedded one) starts at the partitions' start. Records written
    /// past `end_ms` within the read's grace are passed on (the caller tells).
    pub fn read_since(
        &self,
        topic: &str,
        start_ms: Option<i64>,
        end_ms: i64,
        mut each: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
    ) -> Result<Vec<PartitionRead>, ReplayError> {
        self.read(topic, &Bounds::Time { start_ms, end_ms }, |msg| {
            if msg.timestamp().to_millis().is_some_and(|ms| start_ms.is_some_and(|start| ms < start)) {
                return ControlFlow::Continue(());
            }
            each(msg)
        })
    }

    /// Reads every partition of `topic` within `bounds`, calling `each` for every record in
    /// them; `each` breaks off the whole read.
    pub fn read(
        &self,
        topic: &str,
        bounds: &Bounds,
        mut each: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
    ) -> Result<Vec<PartitionRead>, ReplayError> {
        let started = Instant::now();
        let kafka = |source| ReplayError::Kafka { topic: topic.to_string(), source };
        let consumer = self.consumer().map_err(kafka)?;
        let timeout = self.idle_timeout;
        let mut reads: HashMap<i32, PartitionRead> = HashMap::new();
        let mut assign = TopicPartitionList::new();
        match bounds {
            Bounds::Time { start_ms, .. } => {
                for (partition, start) in self.time_offsets(&consumer, topic, *start_ms)? {
                    assign.add_partition_offset(topic, partition, start).map_err(kafka)?;
                    reads.insert(partition, PartitionRead { partition, start_offset: -1, end_offset: -1, records: 0 });
                }
            }
            Bounds::Offsets(ranges) => {
                for r in ranges.iter().filter(|r| r.start_offset < r.end_offset) {
                    assign.add_partition_offset(topic, r.partition, Offset::Offset(r.start_offset)).map_err(kafka)?;
                    reads.insert(r.partition, PartitionRead { partition: r.partition, start_offset: -1, end_offset: -1, records: 0 });
                }
            }
        }
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        consumer.assign(&assign).map_err(kafka)?;
        // Where each partition's read stops: a record past it is not passed on.
        let past_end = |msg: &BorrowedMessage<'_>| match bounds {
            Bounds::Time { end_ms, .. } => msg.timestamp().to_millis().is_some_and(|ms| ms >= end_ms.saturating_add(END_GRACE_MS)),
            Bounds::Offsets(ranges) => ranges.iter().any(|r| r.partition == msg.partition() && msg.offset() >= r.end_offset),
        };
        let last_of_range = |msg: &BorrowedMessage<'_>| match bounds {
            Bounds::Time { .. } => false,
            Bounds::Offsets(ranges) => ranges.iter().any(|r| r.partition == msg.partition() && msg.offset() + 1 >= r.end_offset),
        };

        let bar = self.progress.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}: {human_pos} records ({per_sec})") {
                bar.set_style(style);
            }
            bar.set_message(format!("reading {topic}"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let mut pending: HashSet<i32> = reads.keys().copied().collect();
        let mut last_news = Instant::now();
        while !pending.is_empty() {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => {
                    last_news = Instant::now();
                    if !pending.contains(&msg.partition()) {
                        continue; // written after its partition's end was reached
                    }
                    if past_end(&msg) {
                        pending.remove(&msg.partition());
                        if let Some(r) = reads.get_mut(&msg.partition())
                            && r.start_offset < 0
                        {
                            (r.start_offset, r.end_offset) = (msg.offset(), msg.offset());
                        }
                        continue;
                    }
                    if let Some(r) = reads.get_mut(&msg.partition()) {
                        if r.start_offset < 0 {
                            r.start_offset = msg.offset();
                        }
                        r.end_offset = msg.offset() + 1;
                        r.records += 1;
                    }
                    if each(&msg).is_break() {
                        break;
                    }
                    if last_of_range(&msg) {
                        pending.remove(&msg.partition());
                    }
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    last_news = Instant::now();
                    if pending.remove(&p)
                        && let Some(r) = reads.get_mut(&p)
                        && r.start_offset < 0
                    {
                        r.start_offset = r.end_offset.max(0);
                    }
                }
                // librdkafka retries what it can; the idle timeout ends a wait that goes nowhere.
                Some(Err(e)) => tracing::debug!(%topic, error = %e, "consumer error while replaying"),
                None => {}
            }
            if last_news.elapsed() >= timeout {
                let mut partitions: Vec<i32> = pending.into_iter().collect();
                partitions.sort_unstable();
                return Err(ReplayError::Idle { topic: topic.to_string(), partitions, waited_s: timeout.as_secs(), brokers: self.brokers.clone() });
            }
        }
        if let Some(bar) = bar {
            bar.finish_with_message(format!("read {topic}"));
        }
        let mut out: Vec<PartitionRead> = reads.into_values().collect();
        out.sort_by_key(|r| r.partition);
        tracing::info!(%topic, records = out.iter().map(|r| r.records).sum::<u64>(), elapsed_ms = started.elapsed().as_millis() as u64, "topic read");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_recall_starts_its_window_before_now_and_never_before_the_epoch() {
        assert_eq!(recall_start(1_000_000, Duration::from_secs(300)), 700_000);
        assert_eq!(recall_start(1_000_000, Duration::ZERO), 1_000_000);
        assert_eq!(recall_start(1_000_000, Duration::from_secs(u64::MAX)), 0);
    }
    use super::*;
    use schemas::PaymentMethod;

    fn tx(id: &str, amount: f64) -> Transaction {
        Transaction {
            transaction_id: id.into(),
            user_id: "u".into(),
            amount,
            currency: "EUR".into(),
            payment_method: PaymentMethod::Card,
            merchant_id: None,
            country: None,
            timestamp: 0,
        }
    }

    fn side(version: &str) -> ModelSide {
        ModelSide { model_version: version.into(), ..Default::default() }
    }

    fn scored(decision: Verdict, p: f64) -> Scored {
        Scored { decision, fraud_probability: p }
    }

    fn outcome<'a>(tx: &'a Transaction, baseline: Scored, candidate: Scored) -> Outcome<'a> {
        Outcome { tx, source: FeatureSource::Recorded, recorded: None, recorded_degraded: false, is_fraud: None, baseline, candidate, candidate_top: Vec::new() }
    }

    #[test]
    fn counts_changes_amounts_reproduction_and_quality() {
        let mut r = Report::new(side("1"), side("2"), None, 10, "transactions", 2);
        let (a, b, c, d, e) = (tx("a", 100.0), tx("b", 10.0), tx("c", 50.0), tx("d", 1.0), tx("e", 2.0));
        r.add(&Outcome { recorded: Some(("1", 0.1)), is_fraud: Some(false), ..outcome(&a, scored(Verdict::Approve, 0.1), scored(Verdict::Review, 0.4)) });
        r.add(&Outcome { recorded: Some(("1", 0.8)), is_fraud: Some(true), ..outcome(&b, scored(Verdict::Block, 0.8000001), scored(Verdict::Block, 0.9)) });
        r.add(&Outcome { recorded: Some(("0.9", 0.5)), ..outcome(&c, scored(Verdict::Approve, 0.2), scored(Verdict::Block, 0.95)) });
        r.add(&Outcome { source: FeatureSource::DefaultsUserUnknown, is_fraud: Some(true), ..outcome(&d, scored(Verdict::Approve, 0.05), scored(Verdict::Approve, 0.06)) });
        // Recorded by a build with other features: scored on the store's, so not comparable.
        r.add(&Outcome { recorded: Some(("1", 0.7)), source: FeatureSource::Store, ..outcome(&e, scored(Verdict::Approve, 0.01), scored(Verdict::Approve, 0.01)) });
        r.finish();

        assert_eq!(r.transactions, 5);
        assert_eq!((r.baseline.approve, r.baseline.review, r.baseline.block), (4, 0, 1));
        assert_eq!((r.candidate.approve, r.candidate.review, r.candidate.block), (2, 1, 2));
        assert!((r.candidate.blocked_usd - 60.0 * 1.08).abs() < 1e-9, "EUR counted in USD");
        assert!((r.baseline.mean_probability - (0.1 + 0.8000001 + 0.2 + 0.05 + 0.01) / 5.0).abs() < 1e-12);
        assert_eq!(r.changed, 2);
        assert_eq!(r.changes, [Change { from: Verdict::Approve, to: Verdict::Review, count: 1 }, Change { from: Verdict::Approve, to: Verdict::Block, count: 1 }]);
        assert_eq!(r.examples.iter().map(|e| e.transaction_id.as_str()).collect::<Vec<_>>(), ["c", "a"], "largest change first");
        assert_eq!((r.reproduced.recorded_by_baseline, r.reproduced.matching, r.reproduced.recorded_by_others), (2, 2, 1));
        assert_eq!((r.features.recorded, r.features.store, r.features.defaults_user_unknown), (3, 1, 1));

        assert_eq!((r.labelled.transactions, r.labelled.fraud), (3, 2));
        // baseline: a approve/legit (tn), b block/fraud (tp), d approve/fraud (fn)
        assert_eq!(r.labelled.baseline.at_block, Confusion { tp: 1, fp: 0, fn_: 1, tn: 1 }.into());
        // candidate at review: a review/legit (fp), b block/fraud (tp), d approve/fraud (fn)
        assert_eq!(r.labelled.candidate.at_review, Confusion { tp: 1, fp: 1, fn_: 1, tn: 0 }.into());
        assert!((r.labelled.baseline.fraud_approved_usd - 1.08).abs() < 1e-9);
        assert_eq!(r.labelled.candidate.legitimate_blocked_usd, 0.0);

        let text = r.render();
        assert!(text.contains("Changed: 2 of 5 (40.0%): approve→review 1, approve→block 1"), "{text}");
        assert!(text.contains("Reproduced: 2 of 2 decisions recorded by 1"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        assert!(!text.contains("sampled"), "{text}");
        (r.sample, r.read.not_sampled) = (0.1, 45);
        assert!(r.render().contains("  sampled: 10% of the range's transactions, chosen by id (45 left out)"), "{}", r.render());
    }

    #[test]
    fn a_baseline_that_does_not_reproduce_production_is_called_out() {
        let mut r = Report::new(side("1"), side("2"), Some(0), 10, "transactions", 0);
        let a = tx("a", 1.0);
        r.add(&Outcome { recorded: Some(("1", 0.5)), ..outcome(&a, scored(Verdict::Review, 0.4), scored(Verdict::Review, 0.4)) });
        r.finish();
        assert_eq!((r.reproduced.matching, r.reproduced.recorded_by_baseline), (0, 1));
        assert!((r.reproduced.largest_difference - 0.1).abs() < 1e-12);
        assert!(r.render().contains("WARNING"));
        assert!(r.examples.is_empty());
    }

    #[test]
    fn examples_stay_bounded_and_ordered() {
        let mut r = Report::new(side("1"), side("2"), None, 10, "transactions", 3);
        let txs: Vec<Transaction> = (0..500).map(|i| tx(&format!("t{i:03}"), 1.0)).collect();
        for (i, t) in txs.iter().enumerate() {
            r.add(&outcome(t, scored(Verdict::Approve, 0.0), scored(Verdict::Block, i as f64 / 1000.0)));
            assert!(r.examples.len() <= 64);
        }
        r.finish();
        assert_eq!(r.examples.iter().map(|e| e.transaction_id.as_str()).collect::<Vec<_>>(), ["t499", "t498", "t497"]);
    }

    #[test]
    fn among_equal_changes_the_largest_payments_are_the_examples() {
        let mut r = Report::new(side("1"), side("2"), None, 10, "transactions", 2);
        let txs = [tx("a-small", 5.0), tx("c-large", 900.0), tx("b-middle", 50.0), tx("d-moved", 1.0)];
        for t in &txs[..3] {
            r.add(&outcome(t, scored(Verdict::Approve, 0.25), scored(Verdict::Review, 0.25)));
        }
        r.add(&outcome(&txs[3], scored(Verdict::Approve, 0.1), scored(Verdict::Review, 0.3)));
        r.finish();
        assert_eq!(r.examples.iter().map(|e| e.transaction_id.as_str()).collect::<Vec<_>>(), ["d-moved", "c-large"]);
    }

    #[test]
    fn recorded_features_need_this_builds_names() {
        let mut d = Decision {
            transaction_id: "t".into(),
            user_id: "u".into(),
            decision: Verdict::Approve,
            fraud_probability: 0.1,
            risk_level: schemas::RiskLevel::Low,
            model_version: "1".into(),
            features: FEATURE_NAMES.iter().enumerate().map(|(i, n)| schemas::FeatureValue { name: (*n).into(), value: i as f64 }).collect(),
            top_features: Vec::new(),
            degraded: false,
            user_features_found: true,
            amount: 1.0,
            currency: "USD".into(),
            payment_method: PaymentMethod::Card,
            transaction_timestamp: 0,
            decided_at: 0,
            processing_latency_ms: 0.0,
        };
        assert_eq!(recorded_features(&d).map(|f| f[11]), Some(11.0));
        d.features[3].name = "something_else".into();
        assert_eq!(recorded_features(&d), None);
        d.features.pop();
        assert_eq!(recorded_features(&d), None);
    }

    #[test]
    fn times_show_as_rfc3339() {
        assert_eq!(show_time(1_764_151_200_000), "2025-11-26T10:00:00Z");
    }

    #[test]
    fn a_record_is_placed_by_its_write_time_else_by_the_transaction_time() {
        let limits = TransactionLimits::default();
        let at = |ms: i64| schemas::encode(&Transaction { timestamp: ms, ..tx("a", 10.0) }).unwrap();
        let judge = |written: Option<i64>, payload: &[u8]| range_transaction(written, payload, 100, 200, &limits).map(|t| t.timestamp);
        assert_eq!(judge(Some(100), &at(5)), Ok(5), "written in the range: its own time does not matter");
        assert_eq!(judge(Some(200), &at(150)), Err(Skipped::OutsideRange));
        assert_eq!(judge(Some(99), b"not avro"), Err(Skipped::OutsideRange), "outside, whatever it holds");
        assert_eq!(judge(None, &at(150)), Ok(150));
        assert_eq!(judge(None, &at(250)), Err(Skipped::OutsideRange));
        assert_eq!(judge(Some(150), b"not avro"), Err(Skipped::Undecodable));
        let negative = schemas::encode(&tx("a", -1.0)).unwrap();
        assert_eq!(judge(Some(150), &negative), Err(Skipped::Invalid));
    }

    /// The first ids of `txn-0`, `txn-1`, ... in a 1 % sample, as an implementation of the same
    /// hash outside this code (Python, 64-bit wrapping arithmetic) computed them.
    const FIRST_SAMPLED: [&str; 3] = ["txn-190", "txn-240", "txn-266"];

    #[test]
    fn a_sample_is_its_share_of_the_ids_and_the_same_ones_every_time() {
        let ids: Vec<String> = (0..100_000).map(|i| format!("txn-{i}")).collect();
        let count = |share: f64| ids.iter().filter(|id| sampled(id, share)).count();
        for share in [0.01, 0.1, 0.5] {
            let n = count(share) as f64;
            assert!((n / 100_000.0 - share).abs() < 0.01, "{share}: {n}");
        }
        assert_eq!(count(1.0), 100_000);
        // A smaller share's transactions are among a larger one's, and the choice is fixed: these
        // values hold for every build, so that reports of two builds compare.
        assert!(ids.iter().all(|id| !sampled(id, 0.1) || sampled(id, 0.5)));
        let first: Vec<&str> = ids.iter().filter(|id| sampled(id, 0.01)).take(3).map(String::as_str).collect();
        assert_eq!(first, FIRST_SAMPLED, "the sample changed: replays of this build and earlier ones no longer compare");
    }

    #[test]
    fn id_keys_are_stable_within_a_replay_and_tell_ids_apart() {
        let keys = IdKeys::new();
        assert_eq!(keys.of("txn-1"), keys.of("txn-1"));
        let distinct: HashSet<u128> = (0..100_000).map(|i| keys.of(&format!("txn-{i}"))).collect();
        assert_eq!(distinct.len(), 100_000);
    }
}
