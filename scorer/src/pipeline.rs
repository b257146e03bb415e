//! The scorer's consume → score → produce loop. Each poll batch is decoded, looked up in the
//! feature store in one round trip, scored in one model call, and written to `decisions` and
//! `business-events` (bad records to the dead-letter topic). The batch's input offsets are
//! committed only together with (exactly-once: in the same Kafka transaction) or after
//! (at-least-once: after every output is acknowledged) its outputs. That commit runs on the
//! committer thread (`crate::commit`) while the loop polls and scores the next batch.
//!
//! A second record for a transaction id this scorer has decided (a client's retry published
//! again through another gateway, a record that landed after its producer gave up, a producer's
//! duplicate) is decided again — whoever published it may be waiting for a decision — but gets no
//! second business event, so business events count each transaction once; it is counted by
//! whether its payment is the same. Only transactions whose batch committed, or is committing
//! with the batch in hand tied to its fate, count as decided: an event is never left out in
//! favour of one that was rolled back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use telemetry::metrics::LATENCY_BUCKETS;
use telemetry::trace::SpanIds;

use schemas::{BusinessEvent, BusinessEventKind, Decision, PrehashedState, Transaction, TransactionLimits, headers, topics};

use crate::commit::{CommitFailure, CommitGate, CommitJob, Committed, Committer, DeliveryContext};
use crate::features::UserLookup;
use crate::metrics::{DECISION_LATENCY, PREDICTION_LATENCY, ScorerMetrics};
use crate::scoring::Scorer;
use crate::spans::{BatchSpans, RecordSource, SpanNaming};
use crate::store::FeatureStore;

/// How outputs and input offsets are tied together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    /// Kafka transactions: outputs and offsets commit atomically.
    ExactlyOnce,
    /// Offsets are committed after every output is acknowledged; a crash may repeat a batch.
    AtLeastOnce,
}

/// What the loop does with each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Work {
    /// Decode, look up features, score, and produce decisions and business events.
    Score,
    /// Forward each record unchanged to the decisions topic: the same loop, client settings and
    /// delivery with no processing, as the yardstick for benchmarks.
    Passthrough,
    /// Forward each record unchanged to both the decisions and the business-events topics: the
    /// passthrough with scoring's output volume (two records per input), for benchmarks.
    FanOut,
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub work: Work,
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub decisions_topic: String,
    pub events_topic: String,
    pub dlq_topic: String,
    pub delivery: Delivery,
    pub transactional_id: String,
    pub max_batch: usize,
    /// How many decided transactions are remembered to spot repeats.
    pub repeat_window: usize,
    /// How much of `decisions` is re-read on start to fill the repeat window.
    pub repeat_recall: Duration,
    pub poll_timeout: Duration,
    pub session_timeout_ms: u32,
    pub limits: TransactionLimits,
    /// Extra librdkafka settings (`key=value`), applied to both clients last.
    pub kafka_overrides: Vec<(String, String)>,
    /// A partition whose records wait this long without the consumer moving is logged.
    pub stall_after: Duration,
}

impl PipelineConfig {
    /// Defaults for the standard topics.
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>, transactional_id: impl Into<String>) -> Self {
        Self {
            work: Work::Score,
            brokers: brokers.into(),
            group_id: group_id.into(),
            input_topic: topics::TRANSACTIONS.into(),
            decisions_topic: topics::DECISIONS.into(),
            events_topic: topics::BUSINESS_EVENTS.into(),
            dlq_topic: topics::TRANSACTIONS_DLQ.into(),
            delivery: Delivery::ExactlyOnce,
            transactional_id: transactional_id.into(),
            max_batch: 500,
            // At 2,000 transactions/s, 100 s.
            repeat_window: 200_000,
            repeat_recall: Duration::from_secs(300),
            poll_timeout: Duration::from_millis(100),
            session_timeout_ms: 10_000,
            limits: TransactionLimits::default(),
            kafka_overrides: Vec::new(),
            stall_after: Duration::from_secs(30),
        }
    }
}

/// Tracks partitions revoked while a batch is being collected, so their records are dropped
/// from the batch instead of being committed by a consumer that no longer owns them; turns
/// librdkafka's statistics into the consumer lag gauge and warnings about stalled partitions.
pub struct PipelineContext {
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: AtomicBool,
    lag: prometheus::IntGaugeVec,
    stalls: telemetry::stall::Stalls,
    gate: Arc<CommitGate>,
    logs: telemetry::kafka::KafkaLogs,
}

impl ClientContext for PipelineContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logs.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(&error, reason);
    }

    fn stats(&self, stats: rdkafka::Statistics) {
        // The high watermark comes from fetch responses (right even where ListOffsets is not);
        // lag is measured to the application's position, because offsets are committed through
        // the producer's transactions, which librdkafka's own `consumer_lag` does not see.
        // Only partitions this consumer currently fetches; revoked ones leave the gauge.
        self.lag.reset();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || !p.desired {
                    continue;
                }
                let lag = if p.hi_offset >= 0 && p.app_offset >= 0 { (p.hi_offset - p.app_offset).max(0) } else { p.consumer_lag };
                if lag >= 0 {
                    self.lag.with_label_values(&[topic.as_str(), &partition.to_string()]).set(lag);
                }
            }
        }
        self.stalls.on_stats(&stats);
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // The batch committing now may hold these partitions' offsets.
                self.gate.wait_idle(TXN_TIMEOUT);
                let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
                revoked.extend(tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())));
                tracing::info!(partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                self.assigned.store(true, Ordering::Relaxed);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// One input record after decoding.
struct Incoming {
    partition: i32,
    offset: i64,
    kind: IncomingKind,
}

enum IncomingKind {
    /// `parent`: the trace context from the record's headers (empty when it had none).
    Good { tx: Transaction, parent: opentelemetry::Context, record_ms: Option<i64> },
    Bad(DeadLetter),
}

/// A transaction id and its payment (user, amount, currency, method), each hashed: what tells a
/// repeated transaction from a new one, and a retry from another payment under a reused id.
type Fingerprint = (u64, u64);

/// `keys`: this scorer's random hash keys, so that nobody can choose ids whose hashes collide in
/// the maps below, which take the hashes as they are.
fn fingerprint(keys: &std::hash::RandomState, tx: &Transaction) -> Fingerprint {
    use std::hash::BuildHasher;
    (keys.hash_one(&tx.transaction_id), tx.payment_hash())
}

/// Fills the repeat window from the last `cfg.repeat_recall` of `decisions` (every partition:
/// whichever this scorer is given, a repeat of a transaction decided there is known). A recall
/// that fails is logged and the scorer starts with what it read.
fn recall_decided(cfg: &PipelineConfig, keys: &std::hash::RandomState, decided: &mut schemas::RecentMap<u64, u64, PrehashedState>) {
    use std::hash::BuildHasher;
    let started = Instant::now();
    let now = schemas::now_millis();
    let reader = crate::replay::Reader::for_recall(&cfg.brokers, &cfg.kafka_overrides);
    let mut read = 0u64;
    let outcome = reader.read_since(&cfg.decisions_topic, Some(crate::replay::recall_start(now, cfg.repeat_recall)), now, |msg| {
        if let Ok(d) = schemas::decode::<Decision>(msg.payload().unwrap_or_default()) {
            decided.insert_first(keys.hash_one(&d.transaction_id), d.payment_hash());
            read += 1;
        }
        std::ops::ControlFlow::Continue(())
    });
    if let Err(e) = outcome {
        tracing::warn!(error = %e, topic = %cfg.decisions_topic, "cannot re-read recent decisions; the repeat window starts with what was read");
    }
    tracing::info!(decisions = read, remembered = decided.len(), took_ms = started.elapsed().as_millis() as u64, "recalled the last {} s of decisions into the repeat window", cfg.repeat_recall.as_secs());
}

/// Transaction ids' fingerprints and their payments' (`fingerprint`), hashed as they are.
type Fingerprints = HashMap<u64, u64, PrehashedState>;

/// Whether a record's transaction id was decided before, and with which payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    First,
    SamePayment,
    OtherPayment,
}

/// A record bound for the dead-letter topic: its original bytes and headers plus the reason.
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub error: String,
    pub kind: &'static str,
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The batch was rolled back and will be read again.
    #[error("batch rolled back: {0}")]
    Retry(String),
    /// The client can no longer be used (fenced, fatal broker error).
    #[error("fatal: {0}")]
    Fatal(String),
}

pub(crate) const TXN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Pipeline {
    store_warnings: telemetry::logs::Throttle,
    record_warnings: telemetry::logs::Throttle,
    dlq_warnings: telemetry::logs::Throttle,
    cfg: PipelineConfig,
    consumer: Arc<BaseConsumer<PipelineContext>>,
    producer: Arc<ThreadedProducer<DeliveryContext>>,
    committer: Committer,
    /// The previous batch: produced, its commit under way on the committer thread.
    in_flight: Option<InFlight>,
    /// Output records handed to librdkafka so far; the committer waits for as many reports.
    sent: u64,
    scorer: Scorer,
    store: FeatureStore,
    metrics: ScorerMetrics,
    /// The last batch's encoded outputs, kept for their buffers' capacity.
    encoded: Encoded,
    /// Transactions whose decisions committed: id hash → payment hash.
    decided: schemas::RecentMap<u64, u64, PrehashedState>,
    fingerprint_keys: std::hash::RandomState,
    repeat_warnings: telemetry::logs::Throttle,
    consume_warnings: telemetry::logs::Throttle,
}

/// A batch's encoded outputs: per decision, where its `Decision` and then its `BusinessEvent`
/// end in `bytes` (each starts where the previous record ended; a repeat has no event, so both
/// ends are the same), and their trace headers.
#[derive(Default)]
struct Encoded {
    bytes: Vec<u8>,
    records: Vec<(usize, usize, OwnedHeaders)>,
}

/// A batch whose outputs are produced and whose commit runs on the committer thread, with what
/// the loop does once it is settled.
struct InFlight {
    records: usize,
    rewind: HashMap<i32, i64>,
    scored: Option<Scored>,
    /// The transactions it decides first (id hash → payment hash); decided once it commits.
    deciding: Fingerprints,
}

/// A scored batch's decisions and spans, kept until its commit settles.
struct Scored {
    started: Instant,
    decisions: Vec<Decision>,
    record_times: Vec<Option<i64>>,
    spans: BatchSpans,
    fetch_times: (SystemTime, SystemTime),
    stages: crate::scoring::StageTimes,
    dead: Vec<(i32, i64, DeadLetter)>,
    /// Per decision: was its transaction decided before.
    seen: Vec<Seen>,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, scorer: Scorer, store: FeatureStore, metrics: ScorerMetrics) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut consumer_cfg = ClientConfig::new();
        consumer_cfg
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (cfg.session_timeout_ms / 4).max(100).to_string())
            // A fetch returns as soon as there is data or after 10 ms: the broker round trip,
            // not a half-second wait, bounds both latency and throughput.
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "1")
            .set("statistics.interval.ms", "5000");
        let mut producer_cfg = ClientConfig::new();
        producer_cfg
            .set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A batch's outputs are encoded first and handed over back to back (~1 ms for 1,000
            // records); a 1 ms linger packs them into a few requests, and few requests keep the
            // broker's transaction commit short (BENCHMARKS.md).
            .set("linger.ms", "1")
            .set("compression.type", "none");
        if cfg.delivery == Delivery::ExactlyOnce {
            producer_cfg.set("transactional.id", &cfg.transactional_id).set("transaction.timeout.ms", "30000");
        }
        for (k, v) in &cfg.kafka_overrides {
            consumer_cfg.set(k, v);
            producer_cfg.set(k, v);
        }
        let gate = Arc::new(CommitGate::default());
        let stalls = telemetry::stall::Stalls::new(
            cfg.stall_after,
            metrics.stalled_partitions.clone(),
            &mut consumer_cfg,
            "raise the scorer's fetch wait, e.g. SCORER_KAFKA_CONFIG=fetch.wait.max.ms=50",
        );
        let consumer: BaseConsumer<PipelineContext> = consumer_cfg
            .create_with_context(PipelineContext {
                revoked: Mutex::new(Vec::new()),
                assigned: AtomicBool::new(false),
                lag: metrics.consumer_lag.clone(),
                stalls,
                gate: Arc::clone(&gate),
                logs: telemetry::kafka::KafkaLogs::default(),
            })
            .context("creating the Kafka consumer")?;
        let producer: ThreadedProducer<DeliveryContext> =
            producer_cfg.create_with_context(DeliveryContext::default()).context("creating the Kafka producer")?;
        if cfg.delivery == Delivery::ExactlyOnce {
            producer
                .init_transactions(Duration::from_secs(30))
                .context("initialising Kafka transactions (is transactional.id unique per scorer?)")?;
        }
        // After `init_transactions`: a predecessor's open transaction is settled, so the recall
        // (read committed) neither waits for it nor misses what it committed.
        let fingerprint_keys = std::hash::RandomState::new();
        let mut decided = schemas::RecentMap::with_hasher(cfg.repeat_window, PrehashedState::default());
        if cfg.work == Work::Score && !cfg.repeat_recall.is_zero() {
            recall_decided(&cfg, &fingerprint_keys, &mut decided);
        }
        consumer.subscribe(&[&cfg.input_topic]).context("subscribing to the transactions topic")?;
        let (consumer, producer) = (Arc::new(consumer), Arc::new(producer));
        let committer = Committer::start(Arc::clone(&producer), Arc::clone(&consumer), gate)?;
        Ok(Self {
            fingerprint_keys,
            store_warnings: telemetry::logs::Throttle::per_second(),
            record_warnings: telemetry::logs::Throttle::per_second(),
            dlq_warnings: telemetry::logs::Throttle::per_second(),
            cfg,
            consumer,
            producer,
            committer,
            in_flight: None,
            sent: 0,
            scorer,
            store,
            metrics,
            encoded: Encoded::default(),
            decided,
            repeat_warnings: telemetry::logs::Throttle::per_second(),
            consume_warnings: telemetry::logs::Throttle::per_second(),
        })
    }

    pub fn has_assignment(&self) -> bool {
        self.consumer.context().assigned.load(Ordering::Relaxed)
    }

    /// Runs until `stop` is set, then settles the batch in hand, commits it and leaves the group.
    /// `readiness` turns true once the consumer group has given this scorer its partitions.
    pub fn run(&mut self, stop: &AtomicBool, readiness: &telemetry::ops::Readiness) -> Result<(), StepError> {
        // A lasting failure (a missing output topic, a broker gone) retries ten times a second.
        let retry_lines = telemetry::logs::Throttle::per_second();
        while !stop.load(Ordering::Relaxed) {
            if !readiness.is_ready() && self.has_assignment() {
                readiness.set(true);
            }
            self.consumer.context().stalls.check(&self.consumer);
            match self.step() {
                Ok(_) => {}
                Err(StepError::Retry(reason)) => {
                    if let Some(suppressed) = retry_lines.allow() {
                        tracing::warn!(%reason, suppressed, "batch will be read again");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(fatal) => return Err(fatal),
            }
        }
        if let Err(e) = self.settle(&HashMap::new()) {
            tracing::warn!(error = %e, "the last batch did not commit; it will be read again");
        }
        self.close();
        Ok(())
    }

    /// Leaves the consumer group so that partitions move to other scorers at once.
    pub fn close(&mut self) {
        self.consumer.unsubscribe();
        self.producer.flush(Duration::from_secs(5)).ok();
        tracing::info!("scorer left the consumer group");
    }

    /// Collects and scores a batch while the previous one commits, then produces it and starts its
    /// commit. Returns how many input records the settled previous batch covered.
    ///
    /// Two batches overlap: batch N+1 is polled, decoded, looked up in Redis and scored while
    /// batch N's outputs are acknowledged and its transaction commits on the committer thread.
    /// N+1's transaction begins only after N's commit settles; if N's fails, N+1 is discarded
    /// unproduced and both are read again.
    pub fn step(&mut self) -> Result<usize, StepError> {
        if self.cfg.work != Work::Score {
            return self.step_passthrough();
        }
        let batch = self.collect();
        if batch.is_empty() {
            return self.settle(&HashMap::new());
        }
        let started = Instant::now();
        let started_at = SystemTime::now();
        let n = batch.len();
        self.metrics.batch_records.observe(n as f64);
        let mut bounds = BatchOffsets::default();
        for i in &batch {
            bounds.add(i.partition, i.offset);
        }
        let offsets = bounds.to_commit(&self.cfg.input_topic);
        let rewind = bounds.rewind();

        let mut good = Vec::with_capacity(n);
        let mut parents = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut record_times = Vec::with_capacity(n);
        let mut dead = Vec::new();
        for item in batch {
            match item.kind {
                IncomingKind::Good { tx, parent, record_ms } => {
                    good.push(tx);
                    parents.push(parent);
                    positions.push((item.partition, item.offset));
                    record_times.push(record_ms);
                }
                IncomingKind::Bad(d) => dead.push((item.partition, item.offset, d)),
            }
        }
        let (seen, deciding) = self.seen_before(&good);
        let sources: Vec<RecordSource<'_>> = good
            .iter()
            .zip(&positions)
            .map(|(tx, &(partition, offset))| RecordSource { partition, offset, key: &tx.user_id, transaction_id: &tx.transaction_id })
            .collect();
        let naming = SpanNaming { input_topic: &self.cfg.input_topic, output_topic: &self.cfg.decisions_topic, group: &self.cfg.group_id };
        let mut spans = BatchSpans::start(started_at, &sources, &parents, &naming);
        drop((sources, parents));

        let fetch_started = SystemTime::now();
        let fetched = self.store.fetch(good.iter().map(|t| t.user_id.as_str()));
        let fetch_times = (fetch_started, SystemTime::now());
        self.metrics.feature_fetch_latency.observe(fetched.elapsed.as_secs_f64());
        self.metrics.cache_hits.inc_by(fetched.hits);
        self.metrics.cache_misses.inc_by(fetched.misses);
        if let Some(e) = &fetched.error {
            self.metrics.errors.with_label_values(&["feature_store"]).inc();
            if let Some(suppressed) = self.store_warnings.allow() {
                tracing::warn!(error = %e, records = good.len(), suppressed, "feature store unavailable; scoring on default features");
            }
        }
        if let Some(first) = &fetched.unreadable_detail {
            self.metrics.errors.with_label_values(&["feature_record"]).inc_by(fetched.unreadable);
            if let Some(suppressed) = self.record_warnings.allow() {
                tracing::warn!(records = fetched.unreadable, first = %first, suppressed, "users' stored features unreadable; scoring their records on default features");
            }
        }
        let inputs: Vec<(Transaction, UserLookup)> = good.into_iter().zip(fetched.lookups).collect();
        let inference_started = Instant::now();
        let decisions = match self.scorer.decide_batch(inputs, started) {
            Ok(d) => d,
            Err(e) => {
                spans.fail(&e.to_string());
                return Err(StepError::Fatal(e.to_string()));
            }
        };
        self.metrics.model_inference.observe(inference_started.elapsed().as_secs_f64());

        let encoded = match self.encode_outputs(&decisions, &seen, &mut spans) {
            Ok(e) => e,
            Err(e) => {
                spans.fail(&e.to_string());
                return Err(StepError::Fatal(e.to_string()));
            }
        };
        // The previous batch's transaction must be settled before this one's begins.
        let settled = match self.settle(&rewind) {
            Ok(n) => n,
            Err(e) => {
                spans.fail("an earlier batch was rolled back");
                return Err(e);
            }
        };
        if let Err(e) = self.begin() {
            spans.fail(&e.to_string());
            return Err(self.classify(e, &rewind));
        }
        if let Err(e) = self.produce_outputs(&decisions, encoded, &dead) {
            spans.fail(&e.to_string());
            return Err(self.roll_back(e, &rewind));
        }
        let scored = Scored { started, decisions, record_times, spans, fetch_times, stages: self.scorer.last_stages(), dead, seen };
        self.start_commit(offsets, InFlight { records: n, rewind, scored: Some(scored), deciding })?;
        Ok(settled)
    }

    /// A consumer error (a broker gone, a partition's leader moving) ends the batch's poll; while it
    /// lasts it comes back at every poll, so it is counted each time and logged once a second.
    fn consume_error(&self, e: &KafkaError) {
        self.metrics.errors.with_label_values(&["consume"]).inc();
        if let Some(suppressed) = self.consume_warnings.allow() {
            tracing::warn!(error = %e, suppressed, "consume error");
        }
    }

    /// The passthrough loop: the same shape as `step` — poll a batch, settle the previous one,
    /// produce, hand the commit over — with every record forwarded as it is.
    fn step_passthrough(&mut self) -> Result<usize, StepError> {
        let consumer = Arc::clone(&self.consumer);
        let mut messages = Vec::with_capacity(self.cfg.max_batch);
        let mut timeout = self.cfg.poll_timeout;
        while messages.len() < self.cfg.max_batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    self.consume_error(&e);
                    break;
                }
                Some(Ok(m)) => messages.push(m),
            }
            timeout = Duration::ZERO;
        }
        let revoked = self.take_revoked();
        messages.retain(|m| !revoked.contains(&m.partition()));
        if messages.is_empty() {
            return self.settle(&HashMap::new());
        }
        self.metrics.batch_records.observe(messages.len() as f64);
        let mut bounds = BatchOffsets::default();
        for m in &messages {
            bounds.add(m.partition(), m.offset());
        }
        let rewind = bounds.rewind();
        let settled = self.settle(&rewind)?;
        if let Err(e) = self.begin() {
            return Err(self.classify(e, &rewind));
        }
        if let Err(e) = self.forward(&messages) {
            return Err(self.roll_back(e, &rewind));
        }
        let n = messages.len();
        drop(messages);
        self.start_commit(bounds.to_commit(&self.cfg.input_topic), InFlight { records: n, rewind, scored: None, deciding: Fingerprints::default() })?;
        Ok(settled)
    }

    /// Produces each record unchanged (key, payload, headers) to the passthrough's output topic,
    /// or to both output topics for the fan-out.
    fn forward(&mut self, messages: &[BorrowedMessage<'_>]) -> Result<(), KafkaError> {
        let topics: &[&str] = match self.cfg.work {
            Work::FanOut => &[&self.cfg.decisions_topic, &self.cfg.events_topic],
            Work::Passthrough | Work::Score => &[&self.cfg.decisions_topic],
        };
        for m in messages {
            for topic in topics {
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                if let Some(h) = m.headers() {
                    record = record.headers(h.detach());
                }
                send_record(&self.producer, record)?;
                self.sent += 1;
            }
        }
        Ok(())
    }

    /// Polls until `max_batch` records are in hand or nothing more is buffered.
    fn collect(&mut self) -> Vec<Incoming> {
        let mut batch = Vec::new();
        let mut timeout = self.cfg.poll_timeout;
        while batch.len() < self.cfg.max_batch {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(msg)) => batch.push(decode(&msg, &self.cfg.limits)),
                Some(Err(e)) => {
                    self.consume_error(&e);
                    break;
                }
            }
            // Take what is already buffered, without waiting for more.
            timeout = Duration::ZERO;
        }
        let revoked = self.take_revoked();
        if !revoked.is_empty() {
            let before = batch.len();
            batch.retain(|i| !revoked.contains(&i.partition));
            if before != batch.len() {
                tracing::info!(dropped = before - batch.len(), "records of revoked partitions left for their new owner");
            }
        }
        batch
    }

    /// For each of the batch's transactions, whether this scorer decided its id before —
    /// committed, in the batch committing now (if that one fails, the batch in hand is dropped and
    /// both are read again), or earlier in this batch — and the ids this batch decides first.
    fn seen_before(&self, txs: &[Transaction]) -> (Vec<Seen>, Fingerprints) {
        let committing = self.in_flight.as_ref().map(|f| &f.deciding);
        let mut deciding = Fingerprints::with_capacity_and_hasher(txs.len(), PrehashedState::default());
        let seen = txs
            .iter()
            .map(|tx| {
                let (id, payment) = fingerprint(&self.fingerprint_keys, tx);
                let known = deciding.get(&id).or_else(|| committing.and_then(|c| c.get(&id))).or_else(|| self.decided.get(&id));
                match known {
                    None => {
                        deciding.insert(id, payment);
                        Seen::First
                    }
                    Some(p) if *p == payment => Seen::SamePayment,
                    Some(_) => Seen::OtherPayment,
                }
            })
            .collect();
        (seen, deciding)
    }

    /// Input partitions revoked since the last call: records of theirs still in hand belong to
    /// their new owner.
    fn take_revoked(&self) -> Vec<i32> {
        let revoked = std::mem::take(&mut *self.consumer.context().revoked.lock().unwrap_or_else(|p| p.into_inner()));
        revoked.into_iter().filter(|(t, _)| *t == self.cfg.input_topic).map(|(_, p)| p).collect()
    }

    fn begin(&mut self) -> Result<(), KafkaError> {
        if self.cfg.delivery == Delivery::ExactlyOnce {
            self.producer.begin_transaction()?;
        }
        Ok(())
    }

    /// Hands the batch's commit to the committer thread.
    fn start_commit(&mut self, offsets: TopicPartitionList, batch: InFlight) -> Result<(), StepError> {
        let group = match self.cfg.delivery {
            Delivery::ExactlyOnce => Some(self.consumer.group_metadata().ok_or_else(|| StepError::Fatal("consumer has no group metadata".into()))?),
            Delivery::AtLeastOnce => None,
        };
        self.committer.submit(CommitJob { offsets, group, delivered: self.sent })?;
        self.in_flight = Some(batch);
        Ok(())
    }

    /// Waits for the batch in flight to commit and finishes it (metrics, decision logs, spans).
    /// If it failed, it is rolled back and read again from its first offsets, together with the
    /// batch in hand (whose first offsets are `also_rewind`). Returns how many records it covered.
    fn settle(&mut self, also_rewind: &HashMap<i32, i64>) -> Result<usize, StepError> {
        let Some(batch) = self.in_flight.take() else { return Ok(0) };
        match self.committer.result() {
            Ok(committed) => {
                self.remember(batch.deciding);
                if let Some(scored) = batch.scored {
                    self.finish(scored, committed);
                }
                self.metrics.records.inc_by(batch.records as u64);
                Ok(batch.records)
            }
            Err(failure) => {
                if let Some(scored) = batch.scored {
                    scored.spans.fail(&failure.to_string());
                }
                let rewind = earliest(batch.rewind, also_rewind);
                Err(match failure {
                    CommitFailure::Outputs(e) => self.roll_back(e, &rewind),
                    CommitFailure::Offsets(e) => {
                        // Outputs are out but offsets are not: the batch is read again (at least
                        // once), its business events already written.
                        self.remember(batch.deciding);
                        self.metrics.errors.with_label_values(&["commit"]).inc();
                        self.rewind(&rewind);
                        StepError::Retry(format!("offset commit failed: {e}"))
                    }
                    CommitFailure::Stopped => StepError::Fatal(CommitFailure::Stopped.to_string()),
                })
            }
        }
    }

    /// Transactions whose decisions and business events are out.
    fn remember(&mut self, decided: Fingerprints) {
        for (id, payment) in decided {
            self.decided.insert_first(id, payment);
        }
    }

    fn finish(&mut self, scored: Scored, committed: Committed) {
        let Scored { started, decisions, record_times, spans, fetch_times, stages, dead, seen } = scored;
        let now_ms = schemas::now_millis();
        let latency = committed.0.saturating_duration_since(started).as_secs_f64();
        self.observe(&decisions, &seen, &record_times, latency, now_ms, &spans);
        for (d, s) in decisions.iter().zip(&seen) {
            let payment = match s {
                Seen::First => continue,
                Seen::SamePayment => "same",
                Seen::OtherPayment => "different",
            };
            self.metrics.repeated_transactions.with_label_values(&[payment]).inc();
            if *s == Seen::OtherPayment
                && let Some(suppressed) = self.repeat_warnings.allow()
            {
                tracing::warn!(transaction_id = %d.transaction_id, suppressed, "transaction id decided before for a different payment; decided again, no second business event");
            }
        }
        for (i, d) in decisions.iter().enumerate() {
            log_decision(d, || spans.ids(i));
        }
        spans.finish(&decisions, fetch_times, stages, committed.1);
        for (partition, offset, d) in &dead {
            self.metrics.dlq.with_label_values(&[d.kind]).inc();
            self.metrics.errors.with_label_values(&[d.kind]).inc();
            if let Some(suppressed) = self.dlq_warnings.allow() {
                tracing::warn!(partition, offset, kind = d.kind, error = %d.error, suppressed, "record sent to the dead-letter topic");
            }
        }
    }

    /// Encodes the batch's decisions and business events, with their trace headers, ahead of
    /// their transaction: handed to librdkafka back to back afterwards, they leave in a few large
    /// produce requests instead of many small ones, which is what makes the commit quick.
    fn encode_outputs(&mut self, decisions: &[Decision], seen: &[Seen], spans: &mut BatchSpans) -> Result<Encoded, KafkaError> {
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.bytes.clear();
        encoded.records.clear();
        for (i, (d, s)) in decisions.iter().zip(seen).enumerate() {
            let trace = spans.output_headers(i, &d.user_id);
            schemas::encode_into(d, &mut encoded.bytes).map_err(|e| encode_error(&e))?;
            let decision_end = encoded.bytes.len();
            if *s == Seen::First {
                schemas::encode_into(&business_event(d), &mut encoded.bytes).map_err(|e| encode_error(&e))?;
            }
            encoded.records.push((decision_end, encoded.bytes.len(), trace));
        }
        Ok(encoded)
    }

    fn produce_outputs(&mut self, decisions: &[Decision], mut encoded: Encoded, dead: &[(i32, i64, DeadLetter)]) -> Result<(), KafkaError> {
        let mut start = 0;
        for (d, (decision_end, event_end, trace)) in decisions.iter().zip(encoded.records.drain(..)) {
            let key = d.user_id.as_bytes();
            send(&self.producer, &self.cfg.decisions_topic, key, &encoded.bytes[start..decision_end], trace.clone())?;
            self.sent += 1;
            if event_end > decision_end {
                send(&self.producer, &self.cfg.events_topic, key, &encoded.bytes[decision_end..event_end], trace)?;
                self.sent += 1;
            }
            start = event_end;
        }
        self.encoded = encoded;
        for (partition, offset, d) in dead {
            let mut h = OwnedHeaders::new_with_capacity(d.headers.len() + 5);
            for (k, v) in &d.headers {
                h = h.insert(Header { key: k, value: v.as_deref() });
            }
            let partition = partition.to_string();
            let offset = offset.to_string();
            h = h
                .insert(Header { key: headers::ERROR, value: Some(d.error.as_bytes()) })
                .insert(Header { key: headers::ERROR_KIND, value: Some(d.kind.as_bytes()) })
                .insert(Header { key: headers::SOURCE_TOPIC, value: Some(self.cfg.input_topic.as_bytes()) })
                .insert(Header { key: headers::SOURCE_PARTITION, value: Some(partition.as_bytes()) })
                .insert(Header { key: headers::SOURCE_OFFSET, value: Some(offset.as_bytes()) });
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.cfg.dlq_topic).headers(h);
            if let Some(k) = &d.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &d.payload {
                record = record.payload(p.as_slice());
            }
            send_record(&self.producer, record)?;
            self.sent += 1;
        }
        Ok(())
    }

    /// Aborts the open transaction (exactly-once) and seeks back to the batch's first offsets, so
    /// the batch is read and scored again.
    fn roll_back(&mut self, e: KafkaError, rewind: &HashMap<i32, i64>) -> StepError {
        self.metrics.errors.with_label_values(&["produce"]).inc();
        if let KafkaError::Transaction(t) = &e
            && t.is_fatal()
        {
            return StepError::Fatal(e.to_string());
        }
        if self.cfg.delivery == Delivery::ExactlyOnce {
            self.metrics.transactions_aborted.inc();
            if let Err(abort) = self.producer.abort_transaction(TXN_TIMEOUT) {
                return StepError::Fatal(format!("{e}; abort failed: {abort}"));
            }
        }
        self.rewind(rewind);
        StepError::Retry(e.to_string())
    }

    fn classify(&mut self, e: KafkaError, rewind: &HashMap<i32, i64>) -> StepError {
        self.rewind(rewind);
        match &e {
            KafkaError::Transaction(t) if t.is_fatal() => StepError::Fatal(e.to_string()),
            _ => StepError::Retry(e.to_string()),
        }
    }

    fn rewind(&mut self, rewind: &HashMap<i32, i64>) {
        for (&partition, &offset) in rewind {
            if let Err(e) = self.consumer.seek(&self.cfg.input_topic, partition, Offset::Offset(offset), Duration::from_secs(5)) {
                tracing::warn!(partition, offset, error = %e, "seek back failed; the group's committed offset will be used after the next rebalance");
            }
        }
    }

    /// A committed batch's decisions in the metrics. Counters are added up per batch: one label
    /// lookup per (decision, risk level, model) seen rather than one per record. The amounts, like
    /// business events, count each transaction once. Records traced and exported also leave their
    /// latencies as exemplars.
    fn observe(&self, decisions: &[Decision], seen: &[Seen], record_times: &[Option<i64>], latency_seconds: f64, now_ms: i64, spans: &BatchSpans) {
        let m = &self.metrics;
        let mut predictions: Vec<((schemas::Verdict, schemas::RiskLevel, &str), u64)> = Vec::new();
        let (mut degraded, mut revenue, mut blocked, mut review) = (0, 0.0, 0.0, 0.0);
        for (i, ((d, record_ms), s)) in decisions.iter().zip(record_times).zip(seen).enumerate() {
            let key = (d.decision, d.risk_level, d.model_version.as_str());
            match predictions.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => predictions.push((key, 1)),
            }
            m.prediction_score.observe(d.fraud_probability);
            m.prediction_latency.observe(latency_seconds);
            let decision_latency = record_ms.map(|ts| ((now_ms - ts).max(0) as f64) / 1e3);
            if let Some(seconds) = decision_latency {
                m.decision_latency.observe(seconds);
            }
            if let Some(trace_id) = spans.exported_trace(i) {
                let exemplars = telemetry::metrics::exemplars();
                exemplars.record(PREDICTION_LATENCY, &[], LATENCY_BUCKETS, latency_seconds, &trace_id);
                if let Some(seconds) = decision_latency {
                    exemplars.record(DECISION_LATENCY, &[], LATENCY_BUCKETS, seconds, &trace_id);
                }
            }
            degraded += u64::from(d.degraded);
            if *s != Seen::First {
                continue;
            }
            let (usd, _) = crate::fx::to_usd(d.amount, &d.currency);
            match BusinessEventKind::for_verdict(d.decision) {
                BusinessEventKind::Revenue => revenue += usd,
                BusinessEventKind::FraudBlocked => blocked += usd,
                BusinessEventKind::ReviewQueued => review += usd,
            }
        }
        for ((verdict, risk, model), n) in predictions {
            m.predictions.with_label_values(&[verdict.as_str(), risk.as_str(), model]).inc_by(n);
        }
        m.degraded.inc_by(degraded);
        m.revenue_usd.inc_by(revenue);
        m.fraud_blocked_usd.inc_by(blocked);
        m.review_queued_usd.inc_by(review);
    }
}

/// Reviews and blocks are logged at info with their explanation (an auditor's or a customer's
/// "why"); approvals, the bulk, at debug. The ids are those of the record's `process` span, in
/// the trace the request started.
fn log_decision(d: &Decision, ids: impl FnOnce() -> SpanIds) {
    // Format the ids and the explanation only for a line that is wanted: approvals (most
    // decisions) log at debug, reviews and blocks at info (off when a scorer runs at warn).
    let wanted = if d.decision == schemas::Verdict::Approve {
        tracing::enabled!(tracing::Level::DEBUG)
    } else {
        tracing::enabled!(tracing::Level::INFO)
    };
    if !wanted {
        return;
    }
    let SpanIds { trace_id, span_id } = ids();
    if d.decision == schemas::Verdict::Approve {
        tracing::debug!(trace_id, span_id, transaction_id = %d.transaction_id, user_id = %d.user_id, decision = d.decision.as_str(), fraud_probability = d.fraud_probability, model_version = %d.model_version, degraded = d.degraded, "decision");
    } else {
        let top: Vec<String> = d.top_features.iter().map(|t| format!("{}={:.3} ({:+.3})", t.name, t.value, t.contribution)).collect();
        tracing::info!(trace_id, span_id, transaction_id = %d.transaction_id, user_id = %d.user_id, decision = d.decision.as_str(), fraud_probability = d.fraud_probability, model_version = %d.model_version, degraded = d.degraded, top_features = %top.join(", "), "decision");
    }
}

fn decode(msg: &BorrowedMessage<'_>, limits: &TransactionLimits) -> Incoming {
    let partition = msg.partition();
    let offset = msg.offset();
    let payload = msg.payload().unwrap_or_default();
    let result = schemas::decode::<Transaction>(payload)
        .map_err(|e| (e.to_string(), e.kind()))
        .and_then(|tx| {
            let errors = tx.field_errors(limits);
            if errors.is_empty() {
                Ok(tx)
            } else {
                let reason = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                Err((reason, "validation"))
            }
        });
    let kind = match result {
        Ok(tx) => IncomingKind::Good { tx, parent: telemetry::trace::extract_from_kafka(msg.headers()), record_ms: msg.timestamp().to_millis() },
        Err((error, kind)) => IncomingKind::Bad(DeadLetter {
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers: msg
                .headers()
                .map(|h| h.iter().map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec))).collect())
                .unwrap_or_default(),
            error,
            kind,
        }),
    };
    Incoming { partition, offset, kind }
}

fn send(producer: &ThreadedProducer<DeliveryContext>, topic: &str, key: &[u8], payload: &[u8], headers: OwnedHeaders) -> Result<(), KafkaError> {
    send_record(producer, BaseRecord::to(topic).key(key).payload(payload).headers(headers))
}

/// Enqueues a record, waiting for room when librdkafka's queue is full (backpressure, not an
/// unbounded buffer).
pub fn send_record<'a, C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

fn encode_error(e: &schemas::Error) -> KafkaError {
    tracing::error!(error = %e, "cannot encode an output record");
    KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord)
}

/// The business outcome of a decision.
pub fn business_event(d: &Decision) -> BusinessEvent {
    BusinessEvent {
        transaction_id: d.transaction_id.clone(),
        user_id: d.user_id.clone(),
        kind: BusinessEventKind::for_verdict(d.decision),
        amount: d.amount,
        currency: d.currency.clone(),
        model_version: d.model_version.clone(),
        timestamp: d.decided_at,
    }
}

/// Per partition, the earlier of two batches' first offsets: where to seek back to when both
/// must be read again.
fn earliest(mut a: HashMap<i32, i64>, b: &HashMap<i32, i64>) -> HashMap<i32, i64> {
    for (&partition, &offset) in b {
        a.entry(partition).and_modify(|first| *first = (*first).min(offset)).or_insert(offset);
    }
    a
}

/// The first and last offset a batch holds per partition.
#[derive(Default)]
struct BatchOffsets(HashMap<i32, (i64, i64)>);

impl BatchOffsets {
    fn add(&mut self, partition: i32, offset: i64) {
        let e = self.0.entry(partition).or_insert((offset, offset));
        e.0 = e.0.min(offset);
        e.1 = e.1.max(offset);
    }

    /// Per partition, the offset after the batch's last record: what the group commits.
    fn to_commit(&self, topic: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(self.0.len());
        for (&p, &(_, last)) in &self.0 {
            // Adding a partition to a fresh list with a valid offset cannot fail.
            let _ = tpl.add_partition_offset(topic, p, Offset::Offset(last + 1));
        }
        tpl
    }

    /// Per partition, the batch's first offset: where to seek back to when the batch must be redone.
    fn rewind(&self) -> HashMap<i32, i64> {
        self.0.iter().map(|(&p, &(first, _))| (p, first)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_batches_are_read_again_from_the_earlier_first_offset_of_each_partition() {
        let committing = HashMap::from([(0, 100), (1, 40)]);
        let in_hand = HashMap::from([(0, 120), (2, 7)]);
        assert_eq!(earliest(committing, &in_hand), HashMap::from([(0, 100), (1, 40), (2, 7)]));
    }

    #[test]
    fn batch_offsets_commit_after_the_last_and_rewind_to_the_first() {
        let mut b = BatchOffsets::default();
        for (p, o) in [(0, 7), (1, 3), (0, 5), (0, 9), (1, 4)] {
            b.add(p, o);
        }
        assert_eq!(b.rewind(), HashMap::from([(0, 5), (1, 3)]));
        let tpl = b.to_commit("t");
        let mut commit: Vec<(i32, Offset)> = tpl.elements().iter().map(|e| (e.partition(), e.offset())).collect();
        commit.sort_by_key(|(p, _)| *p);
        assert_eq!(commit, [(0, Offset::Offset(10)), (1, Offset::Offset(5))]);
    }
}
