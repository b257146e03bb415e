use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use telemetry::kafka::LoggingContext;

use drift_job::engine::{Engine, EngineConfig};
use drift_job::metrics::DriftMetrics;
use drift_job::window::Reference;
use schemas::{Decision, Label, topics};
use scorer::config::MonitoredCards;
use scorer::replay::{PartitionRead, Reader, recall_start};
use telemetry::ops::Readiness;

#[derive(Debug, Parser)]
#[command(name = "drift-job", version, about = "PSI per feature against the training reference, and model quality from delayed labels")]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092", value_parser = telemetry::config::parse_brokers)]
    brokers: String,
    #[arg(long, env = "DRIFT_GROUP_ID", default_value = "fraudstream-drift-job")]
    group_id: String,
    #[command(flatten)]
    cards: MonitoredCards,
    /// Length of a tumbling drift window, in seconds.
    #[arg(long, env = "DRIFT_WINDOW_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    window_seconds: u64,
    /// Fewest decisions in a window for its PSI to be reported.
    #[arg(long, env = "DRIFT_MIN_SAMPLES", default_value_t = 500)]
    min_samples: u64,
    /// Most decisions (and, separately, labels) waiting for their partner.
    #[arg(long, env = "LABEL_JOIN_MAX_ENTRIES", default_value_t = 1_000_000)]
    join_max_entries: usize,
    /// How long a decision or label waits for its partner, in seconds.
    #[arg(long, env = "LABEL_JOIN_TTL_SECONDS", default_value_t = 7 * 86_400)]
    join_ttl_seconds: u64,
    /// On start, re-read this many seconds of decisions and labels (by record time) to rebuild
    /// the label join, the quality windows and the open drift window, which live in memory: a
    /// label that comes after a restart still finds a decision made up to this long before it.
    /// Nothing re-read is counted again. 0: start with empty state. On a broker that cannot look
    /// offsets up by time (the embedded test broker) the topics are read from their start.
    #[arg(long, env = "DRIFT_RECALL_SECONDS", default_value_t = 3_600)]
    recall_seconds: u64,
    /// Labelled decisions per model version that quality is computed over.
    #[arg(long, env = "QUALITY_WINDOW", default_value_t = 10_000)]
    quality_window: usize,
    /// Transaction ids remembered to keep only the first decision per transaction (repeats come
    /// from a scorer batch decided twice, within seconds).
    #[arg(long, env = "DECISION_DEDUPE_IDS", default_value_t = schemas::FirstSeen::DEFAULT_CAPACITY as u64, value_parser = clap::value_parser!(u64).range(1..))]
    dedupe_ids: u64,
    /// Consumer group session timeout, in ms (a shorter one also makes the broker settle the
    /// group faster).
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    session_timeout_ms: u32,
    /// Extra librdkafka settings for both clients (e.g. `security.protocol`, `sasl.*`),
    /// `key=value`, repeatable (env: comma-separated).
    #[arg(long = "kafka-config", env = "DRIFT_KAFKA_CONFIG", value_delimiter = ',', value_parser = telemetry::config::parse_key_value)]
    kafka_config: Vec<(String, String)>,
    /// Warn when a partition's records wait this long, in seconds, without the job fetching any
    /// (checked at each librdkafka statistics report, every 5 s).
    #[arg(long, env = "KAFKA_STALL_AFTER_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    stall_after_s: u64,
    #[arg(long, env = "DRIFT_LISTEN", default_value = "0.0.0.0:9102")]
    listen: std::net::SocketAddr,
    #[arg(long, env = "DECISIONS_TOPIC", default_value = topics::DECISIONS)]
    decisions_topic: String,
    #[arg(long, env = "LABELS_TOPIC", default_value = topics::LABELS)]
    labels_topic: String,
    #[arg(long, env = "DRIFT_REPORTS_TOPIC", default_value = topics::DRIFT_REPORTS)]
    drift_reports_topic: String,
}


fn main() -> Result<()> {
    let args = Args::parse();
    telemetry::init_logging("drift-job");
    tracing::info!(
        brokers = %args.brokers,
        kafka_config = %telemetry::config::show_key_values(&args.kafka_config),
        group_id = %args.group_id,
        model_cards = ?args.cards.model_cards,
        window_seconds = args.window_seconds,
        min_samples = args.min_samples,
        join_max_entries = args.join_max_entries,
        join_ttl_seconds = args.join_ttl_seconds,
        recall_seconds = args.recall_seconds,
        quality_window = args.quality_window,
        dedupe_ids = args.dedupe_ids,
        session_timeout_ms = args.session_timeout_ms,
        stall_after_s = args.stall_after_s,
        listen = %args.listen,
        decisions_topic = %args.decisions_topic,
        labels_topic = %args.labels_topic,
        drift_reports_topic = %args.drift_reports_topic,
        "drift-job starting"
    );
    let references: Vec<Reference> = args.cards.load()?.iter().map(Reference::from_card).collect();
    let versions: Vec<String> = references.iter().map(|r| r.model_version.clone()).collect();
    let registry = telemetry::metrics::registry();
    // No spans of its own yet; the same start-up gives it the propagator and export metrics.
    let _tracing = telemetry::init_tracing("drift-job", &registry)?;
    let metrics = DriftMetrics::new(&registry, &versions);
    let mut engine = Engine::new(
        EngineConfig {
            window_ms: (args.window_seconds * 1000) as i64,
            min_samples: args.min_samples,
            join_max_entries: args.join_max_entries,
            join_ttl_ms: (args.join_ttl_seconds * 1000) as i64,
            quality_window: args.quality_window,
            dedupe_ids: usize::try_from(args.dedupe_ids).unwrap_or(usize::MAX),
        },
        references,
        metrics.clone(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let readiness = Readiness::default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let ops = telemetry::ops::router(registry, readiness.clone());
    telemetry::ops::serve_until_stopped(&runtime, args.listen, ops, stop.clone(), "shutdown requested");

    let mut consumer_cfg = ClientConfig::new();
    consumer_cfg
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group_id)
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "latest")
        .set("session.timeout.ms", args.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (args.session_timeout_ms / 4).max(100).to_string())
        // The job's state is in memory and rebuilt from new traffic after a restart; committing
        // as it goes only avoids re-reading what it already counted.
        .set("enable.auto.commit", "true")
        // Windows span minutes: fetch at most twice a second, in large responses, instead of
        // once per broker round trip. Every fetch that returns records costs the broker in
        // proportion to the batches stored in the partition (BENCHMARKS.md, "The embedded
        // broker"), and the scorer and the gateway's reader need that broker quick.
        .set("fetch.wait.max.ms", "500")
        .set("fetch.min.bytes", "1048576");
    let mut producer_cfg = ClientConfig::new();
    producer_cfg.set("bootstrap.servers", &args.brokers).set("enable.idempotence", "true").set("linger.ms", "20");
    for (k, v) in &args.kafka_config {
        consumer_cfg.set(k, v);
        producer_cfg.set(k, v);
    }
    let stalls = telemetry::stall::Stalls::new(
        Duration::from_secs(args.stall_after_s),
        metrics.stalled_partitions.clone(),
        &mut consumer_cfg,
        "give the drift job a longer wait, e.g. DRIFT_KAFKA_CONFIG=fetch.wait.max.ms=2000",
    );
    let consumer: BaseConsumer<LoggingContext> =
        consumer_cfg.create_with_context(LoggingContext::watching(stalls)).context("creating the Kafka consumer")?;
    // Where the recall stopped in each partition: the group's committed offsets are older, and
    // what the recall read must not be counted twice. A new group starts at the partitions' end,
    // past what was written since the recall: the first record read there sends it back.
    let mut recalled = recall(&args, &mut engine);
    consumer.subscribe(&[&args.decisions_topic, &args.labels_topic]).context("subscribing")?;
    let producer: ThreadedProducer<LoggingContext> =
        producer_cfg.create_with_context(LoggingContext::default()).context("creating the Kafka producer")?;
    readiness.set(true);
    tracing::info!("drift-job ready");

    let mut last_tick = Instant::now();
    // Per-record troubles come in floods (a broker gone, a bad producer): a line a second.
    let (error_lines, undecodable_lines) = (telemetry::logs::Throttle::per_second(), telemetry::logs::Throttle::per_second());
    while !stop.load(Ordering::Relaxed) {
        consumer.context().check_stalls(&consumer);
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => {
                metrics.errors.with_label_values(&["consume"]).inc();
                if let Some(suppressed) = error_lines.allow() {
                    tracing::warn!(error = %e, suppressed, "consume error");
                }
            }
            Some(Ok(msg)) if !after_recall(&consumer, &mut recalled, (msg.topic() == args.labels_topic, msg.partition()), &msg) => {}
            Some(Ok(msg)) => {
                let payload = msg.payload().unwrap_or_default();
                let now = schemas::now_millis();
                if msg.topic() == args.labels_topic {
                    match schemas::decode::<Label>(payload) {
                        Ok(l) => engine.on_label(&l, now),
                        Err(e) => {
                            metrics.errors.with_label_values(&["decode"]).inc();
                            if let Some(suppressed) = undecodable_lines.allow() {
                                tracing::warn!(error = %e, topic = msg.topic(), offset = msg.offset(), suppressed, "undecodable label skipped");
                            }
                        }
                    }
                } else {
                    match schemas::decode::<Decision>(payload) {
                        Ok(d) => engine.on_decision(&d, now),
                        Err(e) => {
                            metrics.errors.with_label_values(&["decode"]).inc();
                            if let Some(suppressed) = undecodable_lines.allow() {
                                tracing::warn!(error = %e, topic = msg.topic(), offset = msg.offset(), suppressed, "undecodable decision skipped");
                            }
                        }
                    }
                }
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            last_tick = Instant::now();
            for report in engine.tick(schemas::now_millis()) {
                match schemas::encode(&report) {
                    Ok(bytes) => {
                        let record = BaseRecord::<str, [u8]>::to(&args.drift_reports_topic).key(report.feature.as_str()).payload(&bytes);
                        if let Err((e, _)) = producer.send(record) {
                            metrics.errors.with_label_values(&["produce"]).inc();
                            tracing::warn!(error = %e, "drift report not sent");
                        } else {
                            metrics.reports.inc();
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode a drift report"),
                }
            }
        }
    }
    tracing::info!("drift-job stopping");
    readiness.set(false);
    consumer.unsubscribe();
    let _ = producer.flush(Duration::from_secs(5));
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Re-reads the last `--recall-seconds` of decisions, then of labels, into the engine (see
/// [`Engine::recall_decision`]); answers where live reading resumes in each partition, keyed by
/// (is the labels topic, partition). A recall that fails is logged and the job starts with what
/// it has.
fn recall(args: &Args, engine: &mut Engine) -> HashMap<(bool, i32), Resume> {
    let mut ends = HashMap::new();
    if args.recall_seconds == 0 {
        return ends;
    }
    let started = Instant::now();
    let now = schemas::now_millis();
    let reader = Reader::for_recall(&args.brokers, &args.kafka_config);
    let start_ms = recall_start(now, Duration::from_secs(args.recall_seconds));
    let (mut counts, mut evicted) = ([0u64; 2], 0u64);
    for (labels, topic) in [(false, &args.decisions_topic), (true, &args.labels_topic)] {
        let read = reader.read_since(topic, Some(start_ms), now, |msg| {
            let written = msg.timestamp().to_millis().unwrap_or(now);
            let payload = msg.payload().unwrap_or_default();
            let outcome = if labels {
                schemas::decode::<Label>(payload).map(|l| engine.recall_label(&l, written))
            } else {
                schemas::decode::<Decision>(payload).map(|d| engine.recall_decision(&d, written, now))
            };
            if let Ok(evicting) = outcome {
                counts[usize::from(labels)] += 1;
                evicted += u64::from(evicting);
            }
            ControlFlow::Continue(())
        });
        match read {
            Ok(partitions) => ends.extend(partitions.iter().map(|p| ((labels, p.partition), Resume::after(p)))),
            Err(e) => {
                tracing::warn!(error = %e, %topic, "cannot re-read recent records; starting with what was read so far");
                break;
            }
        }
    }
    let (decisions_waiting, labels_waiting) = engine.join_pending();
    if evicted > 0 {
        tracing::warn!(evicted, join_max_entries = args.join_max_entries, "the recall held more than the label join keeps: its oldest decisions or labels were let go (LABEL_JOIN_MAX_ENTRIES, DRIFT_RECALL_SECONDS)");
    }
    tracing::info!(
        decisions = counts[0],
        labels = counts[1],
        decisions_waiting,
        labels_waiting,
        evicted,
        took_ms = started.elapsed().as_millis() as u64,
        "recalled the last {} s of decisions and labels",
        args.recall_seconds
    );
    ends
}

/// Where live reading of a partition resumes after the recall.
#[derive(Debug, PartialEq)]
struct Resume {
    /// One past the last record the recall read there; never negative (a negative offset is
    /// librdkafka's for "the end").
    end: i64,
    /// Whether the consumer was sent back to `end` once already.
    sent_back: bool,
}

impl Resume {
    /// After what the recall read of a partition: one past its last record, or where the read
    /// began when it found none there (an empty partition: from its start).
    fn after(read: &PartitionRead) -> Self {
        let end = if read.end_offset >= 0 { read.end_offset } else { read.start_offset.max(0) };
        Resume { end, sent_back: false }
    }
}

/// Whether `msg`, read live, comes after what the recall read of its partition (`key`: is the
/// labels topic, partition). Records the recall read are not: the group's committed offsets are
/// older than the recall's end. A first record past the end (a new group starts at the
/// partitions' end, past what was written since the recall) sends the consumer back to it once;
/// a record past it after that is the next one there (the offsets between hold transaction
/// markers, which are never delivered). Once a partition is past its end it reads as the group's.
fn after_recall(consumer: &BaseConsumer<LoggingContext>, recalled: &mut HashMap<(bool, i32), Resume>, key: (bool, i32), msg: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    let Some(resume) = recalled.get_mut(&key) else { return true };
    let offset = msg.offset();
    if offset < resume.end {
        return false;
    }
    if offset > resume.end && !resume.sent_back {
        resume.sent_back = true;
        match consumer.seek(msg.topic(), msg.partition(), rdkafka::Offset::Offset(resume.end), Duration::from_secs(5)) {
            Ok(()) => return false,
            Err(e) => tracing::warn!(error = %e, topic = msg.topic(), partition = msg.partition(), from = resume.end, to = offset, "cannot go back to where the recall stopped; the records between are not read"),
        }
    }
    recalled.remove(&key);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_reading_resumes_past_what_the_recall_read_and_never_at_a_negative_offset() {
        let read = |start_offset, end_offset, records| PartitionRead { partition: 0, start_offset, end_offset, records };
        assert_eq!(Resume::after(&read(10, 42, 32)).end, 42);
        // A record written past the range was the first one there: resume at it.
        assert_eq!(Resume::after(&read(42, 42, 0)).end, 42);
        // An empty partition read from its start (its end was reached before any record).
        assert_eq!(Resume::after(&read(0, -1, 0)).end, 0);
        assert_eq!(Resume::after(&read(-1, -1, 0)).end, 0);
    }
}
