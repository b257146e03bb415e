//! `fraudctl bench broker`: what the embedded broker costs per request as its partitions fill.
//!
//! The gateway benchmark runs everything on one machine, so the broker's CPU is part of every
//! answer's latency. This measures the broker alone: an idempotent producer sends small records
//! at a fixed rate, one per request by default (as the gateway does), first with nobody reading, then on a
//! fresh broker with a consumer following the topic (as the scorer does); after each step it
//! prints how many records the topic holds and the broker's CPU use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Offset;

use crate::stack;

const TOPIC: &str = "bench-broker";

pub struct BrokerBench {
    /// Records per second.
    pub rate: u32,
    /// Measured steps per phase.
    pub steps: u32,
    pub step_seconds: f64,
    pub partitions: i32,
    /// The producer's `linger.ms` (0: one record per request, as the gateway sends them).
    pub linger_ms: u32,
}

/// One measured step.
#[derive(Debug, Clone)]
pub struct Step {
    pub followed: bool,
    /// Records in the topic at the end of the step.
    pub stored: u64,
    /// Broker CPU during the step, in cores (1.0 = one core busy).
    pub broker_cores: f64,
    /// Records the follower read during the step.
    pub read: u64,
}

/// Runs both phases; `stop` (Ctrl-C) ends them early with an error, the broker stopped.
pub fn run(b: &BrokerBench, stop: &AtomicBool) -> Result<Vec<Step>> {
    let dir = std::env::temp_dir().join(format!("fraudstream-broker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut steps = Vec::new();
    for followed in [false, true] {
        // A fresh broker per phase: both start from an empty topic.
        let port = stack::free_port()?;
        let broker = stack::start_tansu(port, &dir)?;
        let brokers = format!("127.0.0.1:{port}");
        rt.block_on(crate::topics::create(&brokers, &[(TOPIC.to_string(), b.partitions)]))?;
        let follower_stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let follower = followed.then(|| follow(&brokers, Arc::clone(&follower_stop), Arc::clone(&read))).transpose()?;
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", b.linger_ms.to_string())
            .create()
            .context("creating the producer")?;
        let payload = vec![b'x'; 150];
        let mut sent = 0u64;
        for _ in 0..b.steps {
            let (cpu0, read0) = (broker.cpu_seconds()?, read.load(Ordering::Relaxed));
            let started = Instant::now();
            let n = (f64::from(b.rate) * b.step_seconds) as u64;
            for i in 0..n {
                if stop.load(Ordering::Relaxed) {
                    follower_stop.store(true, Ordering::Relaxed);
                    anyhow::bail!("interrupted");
                }
                let due = started + Duration::from_secs_f64(i as f64 / f64::from(b.rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let key = (sent % 5000).to_string();
                // The queue is bounded; wait for room rather than drop a record.
                scorer::pipeline::send_record(&producer, BaseRecord::to(TOPIC).key(key.as_bytes()).payload(payload.as_slice())).context("producing")?;
                sent += 1;
            }
            producer.flush(Duration::from_secs(30)).context("flushing the producer")?;
            let step = Step {
                followed,
                stored: sent,
                broker_cores: (broker.cpu_seconds()? - cpu0) / started.elapsed().as_secs_f64(),
                read: read.load(Ordering::Relaxed) - read0,
            };
            eprintln!(
                "{}: {} records stored, broker {:.0} % of a core",
                if followed { "followed" } else { "not read" },
                step.stored,
                step.broker_cores * 100.0
            );
            steps.push(step);
        }
        follower_stop.store(true, Ordering::Relaxed);
        if let Some(f) = follower {
            f.join().map_err(|_| anyhow::anyhow!("the follower thread panicked"))?;
        }
        drop(producer);
        drop(broker);
    }
    Ok(steps)
}

/// A consumer reading every partition of the topic from the start, as a tailing service does
/// (`read_committed`, 5 ms fetch wait — the gateway's decisions reader's settings).
fn follow(brokers: &str, stop: Arc<AtomicBool>, read: Arc<AtomicU64>) -> Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-broker-follower")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .create()
        .context("creating the follower")?;
    crate::topics::assign_all(&consumer, TOPIC, Offset::Beginning, Duration::from_secs(5))?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                read.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
}
