//! The decisions reader: a thread that follows every partition of `decisions` from its end
//! (no consumer group) and delivers each decision to the board.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use schemas::Decision;

use crate::decisions::{DecisionBoard, Delivered};
use crate::metrics::GatewayMetrics;

pub struct ReaderConfig {
    pub brokers: String,
    pub topic: String,
    /// `fetch.wait.max.ms`.
    pub fetch_wait_ms: u32,
    pub overrides: Vec<(String, String)>,
}

/// Starts the reader thread; `ready` turns true once it follows every partition.
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
    let consumer: BaseConsumer = client.create()?;
    let handle = std::thread::Builder::new().name("decisions-reader".into()).spawn(move || {
        let mut assigned: HashSet<i32> = HashSet::new();
        let mut last_check = Instant::now() - Duration::from_secs(3600);
        while !stop.load(Ordering::Relaxed) {
            let check_every = if assigned.is_empty() { Duration::from_millis(500) } else { Duration::from_secs(10) };
            if last_check.elapsed() >= check_every {
                last_check = Instant::now();
                follow_new_partitions(&consumer, &cfg.topic, &mut assigned);
                ready.store(!assigned.is_empty(), Ordering::Relaxed);
            }
            if assigned.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => {
                    metrics.errors.with_label_values(&["consume"]).inc();
                    tracing::warn!(error = %e, "decisions reader error");
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
                        tracing::warn!(error = %e, partition = msg.partition(), offset = msg.offset(), "undecodable decision skipped");
                    }
                },
            }
        }
    })?;
    Ok(handle)
}

/// Assigns partitions not yet followed: at their end on start-up, from their beginning when they
/// appear later (they are new, so everything in them is news).
fn follow_new_partitions(consumer: &BaseConsumer, topic: &str, assigned: &mut HashSet<i32>) {
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
    match consumer.incremental_assign(&tpl) {
        Ok(()) => {
            assigned.extend(tpl.elements().iter().map(|e| e.partition()));
            tracing::info!(topic, partitions = assigned.len(), "following decisions");
        }
        Err(e) => tracing::warn!(error = %e, topic, "cannot follow the decisions topic"),
    }
}
