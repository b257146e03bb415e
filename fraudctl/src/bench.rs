//! Benchmarks that print numbers (never pass/fail): the scorer against a plain passthrough with
//! the same loop, client and broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use schemas::topics;

use crate::stack::{self, Process, metric};
use crate::synth::{Drift, Generator};

pub struct ScorerBench {
    pub records: usize,
    pub partitions: i32,
    pub max_batch: u32,
    pub delivery: String,
    pub users: u64,
    /// One scorer run per entry, after the passthrough and the fan-out.
    pub tracing: Vec<Tracing>,
    /// Then one scorer run whose feature store is unreachable.
    pub store_down: bool,
    /// How many times to repeat the sequence (passthrough, fan-out, then the scorer runs); every
    /// second repetition runs it in reverse (see [`sequence`]).
    pub repeat: usize,
    /// Processes per run, sharing the input in one consumer group.
    pub instances: u32,
    /// A Kafka cluster to run on instead of a fresh private broker per run. Each run then gets
    /// topics, a consumer group and transactional ids of its own, and its topics are deleted
    /// when it ends.
    pub brokers: Option<String>,
}

/// How the scorer's spans are exported during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tracing {
    /// No exporter (the default of a service without `OTEL_EXPORTER_OTLP_ENDPOINT`).
    Off,
    /// The default sampler (parent-based, 10 %) exporting to a collector that accepts everything.
    Sampled,
    /// The same sampler exporting to a port where nothing listens.
    Dead,
}

impl Tracing {
    fn label(self) -> &'static str {
        match self {
            Tracing::Off => "scorer",
            Tracing::Sampled => "scorer, 10 % traced",
            Tracing::Dead => "scorer, 10 % traced, collector down",
        }
    }
}

/// What one run of the scorer binary does with the records.
#[derive(Debug, Clone, Copy)]
enum Run {
    /// Each record forwarded unchanged to one topic.
    Passthrough,
    /// Each record forwarded unchanged to two topics: the scorer's output volume, no processing.
    FanOut,
    Score(Tracing),
    /// Scoring with no feature store to reach (no tracing): every batch on the card's defaults.
    ScoreStoreDown,
}

impl Run {
    /// The scorer's `--work` value.
    fn work(self) -> &'static str {
        match self {
            Run::Passthrough => "passthrough",
            Run::FanOut => "fan-out",
            Run::Score(_) | Run::ScoreStoreDown => "score",
        }
    }

    fn process_name(self) -> &'static str {
        match self {
            Run::Passthrough => "scorer-passthrough",
            Run::FanOut => "scorer-fanout",
            Run::Score(_) => "scorer-score",
            Run::ScoreStoreDown => "scorer-store-down",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Run::Passthrough => "passthrough",
            Run::FanOut => "fan-out",
            Run::Score(t) => t.label(),
            Run::ScoreStoreDown => "scorer, feature store down",
        }
    }
}

/// The names one run uses: its input, output and dead-letter topics, its consumer group and the
/// stem of its transactional ids, all starting with `prefix` (unique per run on a shared cluster).
#[derive(Debug)]
struct RunNames {
    input: String,
    decisions: String,
    events: String,
    dlq: String,
    group: String,
}

impl RunNames {
    fn new(prefix: &str, run: Run) -> Self {
        let work = run.work();
        Self {
            input: format!("{prefix}{}", topics::TRANSACTIONS),
            decisions: format!("{prefix}{work}-{}", topics::DECISIONS),
            events: format!("{prefix}{work}-{}", topics::BUSINESS_EVENTS),
            dlq: format!("{prefix}{}", topics::TRANSACTIONS_DLQ),
            group: format!("{prefix}{work}"),
        }
    }

    fn topics(&self) -> [&str; 4] {
        [&self.input, &self.decisions, &self.events, &self.dlq]
    }
}

/// Deletes a run's topics from a shared cluster when the run ends, however it ends.
struct DeleteOnDrop<'a> {
    brokers: &'a str,
    topics: Vec<String>,
    rt: &'a tokio::runtime::Runtime,
}

impl Drop for DeleteOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.rt.block_on(crate::topics::delete(self.brokers, &self.topics)) {
            eprintln!("warning: {e:#}; delete them by hand");
        }
    }
}

/// A stand-in OTLP/HTTP collector that accepts every export (the exporting process's cost is
/// what is measured). Serves on the current tokio runtime; returns its port.
pub async fn otlp_sink() -> Result<u16> {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route("/v1/traces", post(|_: axum::body::Bytes| async { ([("content-type", "application/x-protobuf")], Vec::<u8>::new()) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Measured {
    pub mode: &'static str,
    /// The repetition it belongs to, from 0; ratios are taken within one.
    pub repetition: usize,
    pub records: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// At the end of the measured part.
    pub rss_bytes: f64,
    pub spans_exported: f64,
    pub spans_dropped: f64,
    /// Poll batches the scorers took over the whole run, and the records in them.
    pub batches: f64,
    pub batched_records: f64,
    /// The embedded broker's CPU while measured; `None` on a cluster.
    pub broker_cpu_seconds: Option<f64>,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn cpu_per_100k(&self) -> f64 {
        self.cpu_seconds * 100_000.0 / self.records as f64
    }

    pub fn records_per_batch(&self) -> f64 {
        self.batched_records / self.batches
    }

    pub fn broker_cpu_per_100k(&self) -> Option<f64> {
        self.broker_cpu_seconds.map(|c| c * 100_000.0 / self.records as f64)
    }
}

/// Runs the sequence; `stop` (Ctrl-C) ends it early with an error, its processes stopped.
pub fn run(b: &ScorerBench, stop: &AtomicBool) -> Result<Vec<Measured>> {
    let dir = std::env::temp_dir().join(format!("fraudstream-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let redis_port = stack::free_port()?;
    let redis = stack::start_redis(redis_port, &dir)?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/");
    let mut store = crate::features::store(&redis_url, "features:user:")?;
    crate::features::load_synthetic(&mut store, b.users, 1)?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let sink = rt.block_on(otlp_sink())?;
    let mut results = Vec::new();
    for (n, (repetition, run)) in sequence(b).into_iter().enumerate() {
        // Without a cluster every run gets a fresh broker holding the same records: the in-memory
        // broker slows down as its topics grow, which would otherwise favour whichever run goes
        // first. On a cluster every run gets topics of its own, deleted when it ends.
        let (broker, brokers, prefix) = match &b.brokers {
            Some(brokers) => (None, brokers.clone(), format!("fraudstream-bench-{}-{n}-", std::process::id())),
            None => {
                let kafka_port = stack::free_port()?;
                (Some(stack::start_tansu(kafka_port, &dir)?), format!("127.0.0.1:{kafka_port}"), "bench-".to_string())
            }
        };
        let names = RunNames::new(&prefix, run);
        let mode = run.work();
        let all: Vec<(String, i32)> = names.topics().iter().map(|t| (t.to_string(), b.partitions)).collect();
        let _cleanup = b.brokers.is_some().then(|| DeleteOnDrop { brokers: &brokers, topics: all.iter().map(|(t, _)| t.clone()).collect(), rt: &rt });
        rt.block_on(crate::topics::create(&brokers, &all))?;
        eprintln!("producing {} transactions to {} ({} partitions)", b.records, names.input, b.partitions);
        preload(&brokers, &names.input, b.records, b.users, stop)?;

        let run_redis_url = match run {
            Run::ScoreStoreDown => format!("redis://127.0.0.1:{}/", stack::free_port()?),
            _ => redis_url.clone(),
        };
        let mut env = vec![("RUST_LOG", "warn".to_string())];
        match run {
            Run::Score(Tracing::Sampled) => env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{sink}"))),
            Run::Score(Tracing::Dead) => env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", stack::free_port()?))),
            _ => {}
        }
        let mut instances = Vec::new();
        for i in 0..b.instances.max(1) {
            let port = stack::free_port()?;
            let mut args: Vec<String> = [
                "--work", mode,
                "--brokers", &brokers,
                "--redis-url", &run_redis_url,
                "--group-id", &names.group,
                "--transactional-id", &format!("{}-{i}", names.group),
                "--delivery", &b.delivery,
                "--max-batch", &b.max_batch.to_string(),
                "--listen", &format!("127.0.0.1:{port}"),
                "--transactions-topic", &names.input,
                "--decisions-topic", &names.decisions,
                "--business-events-topic", &names.events,
                "--dlq-topic", &names.dlq,
            ]
            .map(String::from)
            .to_vec();
            // What the cluster needs (fraudctl's --kafka-config), then the scorer's own variable.
            args.extend(stack::service_kafka_flags(std::env::var("SCORER_KAFKA_CONFIG").ok().as_deref(), crate::kafka::overrides(), &[]));
            let name = format!("{}-{i}", run.process_name());
            instances.push((port, Process::spawn(&name, &stack::sibling("scorer")?, &args, &dir, &env)?));
        }
        let m = rt.block_on(measure(&mut instances, broker.as_ref(), b.records as u64, stop)).with_context(|| format!("{mode} run; logs in {}", dir.display()))?;
        let label = run.label();
        eprintln!(
            "{label}: {:.0} records/s, {:.3} CPU-s per 100k, {:.0} records per batch, {:.0} MiB resident, spans exported {:.0}, dropped {:.0}",
            m.rate(),
            m.cpu_per_100k(),
            m.records_per_batch(),
            m.rss_bytes / 1048576.0,
            m.spans_exported,
            m.spans_dropped
        );
        results.push(Measured { mode: label, repetition, ..m });
        drop(instances);
        drop(broker);
    }
    drop(redis);
    Ok(results)
}

/// The runs in the order they are made, each with its repetition. On this machine a run is on
/// average slower when it comes later in a sequence, so every second repetition runs the sequence
/// in reverse: over an even number of repetitions each kind of run is first as often as it is
/// last, and comparisons between them are not biased by position.
fn sequence(b: &ScorerBench) -> Vec<(usize, Run)> {
    let scored = b.tracing.iter().copied().map(Run::Score).chain(b.store_down.then_some(Run::ScoreStoreDown));
    let once: Vec<Run> = [Run::Passthrough, Run::FanOut].into_iter().chain(scored).collect();
    (0..b.repeat.max(1))
        .flat_map(|r| {
            let mut runs = once.clone();
            if r % 2 == 1 {
                runs.reverse();
            }
            runs.into_iter().map(move |run| (r, run))
        })
        .collect()
}

fn preload(brokers: &str, topic: &str, n: usize, users: u64, stop: &AtomicBool) -> Result<()> {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer, DefaultProducerContext};
    let p: ThreadedProducer<DefaultProducerContext> =
        crate::kafka::client(brokers, &[("linger.ms", "20"), ("batch.num.messages", "10000"), ("queue.buffering.max.messages", "1000000")]).create()?;
    let mut g = Generator::new(1, Drift::None, "bench");
    let now = 1_764_000_000_000;
    let population: Vec<_> = (0..users).map(|u| Generator::user(1, u)).collect();
    for i in 0..n {
        if i % 10_000 == 0 && stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let tx = g.payment(&population[i % population.len()], now).transaction;
        let payload = schemas::encode(&tx)?;
        // As the gateway's: one context in ten sampled (its default ratio).
        let flags = if i % 10 == 0 { "01" } else { "00" };
        let traceparent = format!("00-{:032x}-{:016x}-{flags}", i + 1, i + 1);
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header { key: "traceparent", value: Some(traceparent.as_bytes()) });
        let record = BaseRecord::<[u8], [u8]>::to(topic).key(tx.user_id.as_bytes()).payload(&payload).headers(headers);
        scorer::pipeline::send_record(&p, record)?;
    }
    p.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Samples the scorers' /metrics until together they processed `n` records; measures between 5 %
/// and 95 % of them, past group joining (every process has records) and before the tail. Rates,
/// CPU, memory and spans are sums over the processes. CPU comes from /proc (10 ms resolution)
/// at the moment of each sample, for the scorers and the embedded `broker` alike.
async fn measure(instances: &mut [(u16, Process)], broker: Option<&Process>, n: u64, stop: &AtomicBool) -> Result<Measured> {
    let http = reqwest::Client::new();
    let (lo, hi) = (n / 20, n - n / 20);
    let mut start: Option<(Instant, Sample, Option<f64>)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!("not done within 600 s");
        }
        let mut sample = Sample::default();
        let mut complete = true;
        for (port, p) in instances.iter_mut() {
            p.check_running()?;
            let text = match http.get(format!("http://127.0.0.1:{port}/metrics")).send().await {
                Ok(r) => r.text().await.ok(),
                Err(_) => None,
            };
            match text.as_deref().and_then(|t| Some((t, metric(t, "scorer_records_total")?))) {
                Some((text, done)) => sample.add(text, done, p.cpu_seconds()?),
                None => complete = false,
            }
        }
        let now = Instant::now();
        // Read only for the two samples that bound the measured span.
        let broker_cpu = || broker.map(Process::cpu_seconds).transpose();
        if complete {
            match &start {
                None if sample.done as u64 >= lo && sample.idle == 0 => start = Some((now, sample, broker_cpu()?)),
                Some((t0, s0, b0)) if sample.done as u64 >= hi => {
                    let broker_cpu = broker_cpu()?;
                    return Ok(Measured {
                        mode: "",
                        repetition: 0,
                        records: (sample.done - s0.done) as u64,
                        seconds: (now - *t0).as_secs_f64(),
                        cpu_seconds: sample.cpu - s0.cpu,
                        rss_bytes: sample.rss,
                        spans_exported: sample.spans_exported,
                        spans_dropped: sample.spans_dropped,
                        batches: sample.batches,
                        batched_records: sample.batched_records,
                        broker_cpu_seconds: broker_cpu.zip(*b0).map(|(b, b0)| b - b0),
                    });
                }
                _ => {}
            }
        }
        // Fine enough that a short run (20,000 records pass through in a quarter of a second) is
        // measured over most of its records, not between two samples a few batches apart.
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// How often `measure` reads the scorers' /metrics.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// One reading of every process of a run, summed.
#[derive(Default)]
struct Sample {
    done: f64,
    cpu: f64,
    rss: f64,
    spans_exported: f64,
    spans_dropped: f64,
    batches: f64,
    batched_records: f64,
    /// Processes that have not handled a record yet (still joining the group).
    idle: usize,
}

impl Sample {
    fn add(&mut self, text: &str, done: f64, cpu: f64) {
        self.done += done;
        self.cpu += cpu;
        self.idle += usize::from(done == 0.0);
        self.rss += metric(text, "process_resident_memory_bytes").unwrap_or(0.0);
        self.spans_exported += metric(text, "telemetry_spans_exported_total").unwrap_or(0.0);
        self.batches += metric(text, "scorer_batch_records_count").unwrap_or(0.0);
        self.batched_records += metric(text, "scorer_batch_records_sum").unwrap_or(0.0);
        self.spans_dropped +=
            text.lines().filter(|l| l.starts_with("telemetry_spans_dropped_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(tracing: Vec<Tracing>, store_down: bool, repeat: usize) -> ScorerBench {
        ScorerBench { records: 1, partitions: 1, max_batch: 1, delivery: "exactly-once".into(), users: 1, tracing, store_down, repeat, instances: 1, brokers: None }
    }

    fn labels(b: &ScorerBench) -> Vec<(usize, &'static str)> {
        sequence(b).into_iter().map(|(r, run)| (r, run.label())).collect()
    }

    #[test]
    fn every_second_repetition_runs_the_sequence_in_reverse() {
        let b = bench(vec![Tracing::Off, Tracing::Sampled], false, 2);
        assert_eq!(
            labels(&b),
            [
                (0, "passthrough"),
                (0, "fan-out"),
                (0, "scorer"),
                (0, "scorer, 10 % traced"),
                (1, "scorer, 10 % traced"),
                (1, "scorer"),
                (1, "fan-out"),
                (1, "passthrough"),
            ]
        );
    }

    #[test]
    fn one_repetition_is_the_sequence_as_given() {
        assert_eq!(labels(&bench(vec![Tracing::Off], true, 0)), [(0, "passthrough"), (0, "fan-out"), (0, "scorer"), (0, "scorer, feature store down")]);
    }
}
