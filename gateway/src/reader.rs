//! The decisions reader: a thread that follows every partition of `decisions` (no consumer
//! group) and delivers each decision to the board. It starts a recall window back (decisions of
//! the last few minutes, so that a restarted gateway still knows them) and reports ready once it
//! has caught up with every partition.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use telemetry::kafka::LoggingContext;

use schemas::Decision;

use crate::decisions::{DecisionBoard, Delivered};
use crate::metrics::GatewayMetrics;

pub struct ReaderConfig {
    pub brokers: String,
    pub topic: String,
    /// `fetch.wait.max.ms`.
    pub fetch_wait_ms: u32,
    /// How far back to start on start-up; zero: at the end.
    pub recall: Duration,
    /// A partition whose decisions wait this long without the reader moving is logged.
    pub stall_after: Duration,
    pub overrides: Vec<(String, String)>,
}

/// Starts the reader thread; `ready` turns true once it follows every partition and has read
/// each up to where it was when the reader started.
pub fn spawn(
    cfg: ReaderConfig,
    board: Arc<DecisionBoard>,
    metrics: GatewayMetrics,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &cfg.brokers)
        // Required by the client; no offsets are ever committed with it.
        .set("group.id", "fraudstream-gateway-decisions-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // Decisions are waited on by requests: fetch as soon as anything is there.
        .set("fetch.wait.max.ms", cfg.fetch_wait_ms.to_string())
        .set("fetch.min.bytes", "1");
    for (k, v) in &cfg.overrides {
        client.set(k, v);
    }
    let stalls = telemetry::stall::Stalls::new(
        cfg.stall_after,
        metrics.stalled_partitions.clone(),
        &mut client,
        "give the decisions reader a longer wait, e.g. DECISIONS_FETCH_WAIT_MS=50",
    );
    // Tells when the recall window has been read (readiness waits for it): not overridable.
    client.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<LoggingContext> = client.create_with_context(LoggingContext::watching(stalls))?;
    let handle = std::thread::Builder::new().name("decisions-reader".into()).spawn(move || {
        let mut assigned: HashSet<i32> = HashSet::new();
        // Partitions of the first assignment not yet read to their end.
        let mut catching_up: Option<HashSet<i32>> = None;
        let mut last_check = Instant::now() - Duration::from_secs(3600);
        // Per-record troubles come in floods (a broker gone, a bad producer): a line a second.
        let (error_lines, undecodable_lines) = (telemetry::logs::Throttle::per_second(), telemetry::logs::Throttle::per_second());
        while !stop.load(Ordering::Relaxed) {
            let check_every = if assigned.is_empty() { Duration::from_millis(500) } else { Duration::from_secs(10) };
            if last_check.elapsed() >= check_every {
                last_check = Instant::now();
                let first = assigned.is_empty();
                follow_new_partitions(&consumer, &cfg.topic, cfg.recall, &mut assigned);
                if first && !assigned.is_empty() {
                    catching_up = Some(assigned.clone());
                }
                ready.store(!assigned.is_empty() && catching_up.as_ref().is_some_and(HashSet::is_empty), Ordering::Relaxed);
            }
            if assigned.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            consumer.context().check_stalls(&consumer);
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(left) = catching_up.as_mut()
                        && left.remove(&partition)
                        && left.is_empty()
                    {
                        tracing::info!(topic = %cfg.topic, recall_s = cfg.recall.as_secs(), recalled = board.recent_count(), "decisions reader caught up");
                        ready.store(true, Ordering::Relaxed);
                    }
                }
                Some(Err(e)) => {
                    metrics.errors.with_label_values(&["consume"]).inc();
                    if let Some(suppressed) = error_lines.allow() {
                        tracing::warn!(error = %e, suppressed, "decisions reader error");
                    }
                }
                Some(Ok(msg)) => match schemas::decode::<Decision>(msg.payload().unwrap_or_default()) {
                    Ok(d) => {
                        let made_in = telemetry::trace::extract_from_kafka(msg.headers());
                        let span = made_in.span();
                        let sc = span.span_context();
                        let trace_id = sc.is_valid().then(|| sc.trace_id().to_string());
                        if board.deliver(d, trace_id) == Delivered::Duplicate {
                            metrics.duplicates.inc();
                        }
                    }
                    Err(e) => {
                        metrics.errors.with_label_values(&["decode"]).inc();
                        if let Some(suppressed) = undecodable_lines.allow() {
                            tracing::warn!(error = %e, partition = msg.partition(), offset = msg.offset(), suppressed, "undecodable decision skipped");
                        }
                    }
                },
            }
        }
    })?;
    Ok(handle)
}

/// Assigns partitions not yet followed: `recall` back from now on start-up (at the end when it
/// is zero, or when the broker cannot look offsets up by time), from their beginning when they
/// appear later (they are new, so everything in them is news).
fn follow_new_partitions(consumer: &BaseConsumer<LoggingContext>, topic: &str, recall: Duration, assigned: &mut HashSet<i32>) {
    let md = match consumer.fetch_metadata(Some(topic), Duration::from_secs(2)) {
        Ok(md) => md,
        Err(e) => {
            tracing::warn!(error = %e, topic, "cannot read the decisions topic's metadata");
            return;
        }
    };
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { return };
    let first_time = assigned.is_empty();
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        if !assigned.contains(&p.id()) {
            let start = if first_time { Offset::End } else { Offset::Beginning };
            let _ = tpl.add_partition_offset(topic, p.id(), start);
        }
    }
    if tpl.count() == 0 {
        return;
    }
    if first_time && !recall.is_zero() {
        tpl = recall_from(consumer, tpl, recall);
    }
    match consumer.incremental_assign(&tpl) {
        Ok(()) => {
            assigned.extend(tpl.elements().iter().map(|e| e.partition()));
            tracing::info!(topic, partitions = assigned.len(), "following decisions");
        }
        Err(e) => tracing::warn!(error = %e, topic, "cannot follow the decisions topic"),
    }
}

/// `tpl`'s partitions at the first offset written `recall` ago or later; as given when the broker
/// cannot say.
fn recall_from(consumer: &BaseConsumer<LoggingContext>, tpl: TopicPartitionList, recall: Duration) -> TopicPartitionList {
    let since = schemas::now_millis() - recall.as_millis() as i64;
    let mut at = TopicPartitionList::new();
    for e in tpl.elements() {
        let _ = at.add_partition_offset(e.topic(), e.partition(), Offset::Offset(since));
    }
    match consumer.offsets_for_times(at, Duration::from_secs(5)) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up where the recall window starts; following decisions from now on");
            tpl
        }
    }
}
