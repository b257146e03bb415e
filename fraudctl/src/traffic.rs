//! The traffic generator: synthetic payments at a steady rate (open loop: the schedule does not
//! wait for answers), through the gateway's HTTP API and straight to the `transactions` topic,
//! with a live one-line summary of what came back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;
use serde_json::json;
use telemetry::kafka::LoggingContext;
use tokio::sync::{Mutex, Semaphore};

use schemas::{Decision, Transaction, Verdict, topics};

use crate::synth::{Drift, Generator};

#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub gateway: Option<String>,
    pub brokers: Option<String>,
    pub rate: f64,
    pub duration: Option<Duration>,
    /// Share of payments produced straight to Kafka instead of through HTTP.
    pub direct_share: f64,
    pub users: u64,
    pub seed: u64,
    pub drift: Drift,
    pub max_in_flight: usize,
    pub run_id: String,
    /// Publish each payment's ground truth to `labels` this long after sending it.
    pub label_delay: Option<Duration>,
    /// Append each payment's ground truth to this file (for `fraudctl labels`).
    pub truth_file: Option<std::path::PathBuf>,
    /// Lines from elsewhere (`fraudctl run`'s broker watch) to print above the live summary.
    pub notices: Option<Notices>,
}

/// Lines waiting to be printed by whoever owns the terminal (the traffic loop's live line, or
/// `fraudctl run` without traffic); clones share the lines.
#[derive(Debug, Clone, Default)]
pub struct Notices(Arc<std::sync::Mutex<Vec<String>>>);

impl Notices {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// The lines pushed since the last call, oldest first.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Counters the summary line is made of.
#[derive(Default)]
pub struct TrafficStats {
    pub sent_http: AtomicU64,
    pub sent_direct: AtomicU64,
    pub http_ok: AtomicU64,
    pub http_pending: AtomicU64,
    pub http_errors: AtomicU64,
    pub skipped: AtomicU64,
    pub labels: AtomicU64,
    pub approve: AtomicU64,
    pub review: AtomicU64,
    pub block: AtomicU64,
    /// Decisions for a transaction already counted (a scorer batch decided twice): not counted.
    pub duplicates: AtomicU64,
    /// Decisions made on the model card's default features (the feature store down or slow).
    pub degraded: AtomicU64,
    latencies: std::sync::Mutex<VecDeque<f64>>,
    /// Why the latest payment that failed did: the gateway's answer, or what kept it from one.
    last_error: std::sync::Mutex<Option<String>>,
}

const LATENCY_WINDOW: usize = 5000;

impl TrafficStats {
    /// A payment not sent, or refused, and why (`errors` in the summary, with the latest reason).
    fn failed(&self, reason: String) {
        self.http_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    fn record_latency(&self, ms: f64) {
        let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() == LATENCY_WINDOW {
            l.pop_front();
        }
        l.push_back(ms);
    }

    /// p50 and p99 of the last `LATENCY_WINDOW` HTTP answers, in ms.
    pub fn percentiles(&self) -> Option<(f64, f64)> {
        let l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = l.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.99)))
    }

    pub fn summary(&self, elapsed: Duration) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sent = get(&self.sent_http) + get(&self.sent_direct);
        let latency = self.percentiles().map_or_else(|| "-".to_string(), |(p50, p99)| format!("p50 {p50:.1} ms p99 {p99:.1} ms"));
        let last_error = match self.last_error.lock().unwrap_or_else(|p| p.into_inner()).as_deref() {
            Some(why) if get(&self.http_errors) > 0 => format!(" (latest: {why})"),
            _ => String::new(),
        };
        let duplicates = match get(&self.duplicates) {
            0 => String::new(),
            n => format!(" | duplicate decisions {n}"),
        };
        let degraded = match get(&self.degraded) {
            0 => String::new(),
            n => format!(" | degraded {n}"),
        };
        format!(
            "{:.1}/s | sent {sent} (http {}, direct {}) | approve {} review {} block {} | http {latency} | pending {} errors {}{last_error} skipped {} | labels {}{degraded}{duplicates}",
            sent as f64 / elapsed.as_secs_f64().max(1e-9),
            get(&self.sent_http),
            get(&self.sent_direct),
            get(&self.approve),
            get(&self.review),
            get(&self.block),
            get(&self.http_pending),
            get(&self.http_errors),
            get(&self.skipped),
            get(&self.labels),
        )
    }
}

/// Runs until `duration` passes or `stop` is set; returns the final counters.
pub async fn run(cfg: TrafficConfig, stop: Arc<AtomicBool>, live: bool) -> Result<Arc<TrafficStats>> {
    anyhow::ensure!(cfg.rate > 0.0 && cfg.rate.is_finite(), "--rate must be > 0");
    anyhow::ensure!((0.0..=1.0).contains(&cfg.direct_share), "--direct-share must be within 0..1");
    let stats = Arc::new(TrafficStats::default());
    let producer: Option<FutureProducer<LoggingContext>> = match &cfg.brokers {
        Some(b) => Some(crate::kafka::create(b, &[("enable.idempotence", "true"), ("linger.ms", "5")]).context("creating the Kafka producer")?),
        None => None,
    };
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = match &cfg.brokers {
        Some(b) => Some(spawn_decision_counter(b, Generator::id_prefix(&cfg.run_id), stats.clone(), reader_stop.clone())?),
        None => None,
    };
    let labeler = cfg.label_delay.map(|d| Arc::new(std::sync::Mutex::new(crate::labels::Labeler::new(d, 1_000_000))));
    let label_task = match (&labeler, &cfg.brokers) {
        (Some(l), Some(b)) => {
            let sink = crate::labels::LabelSink::new(b)?;
            let l = l.clone();
            let stats = stats.clone();
            let stop = reader_stop.clone();
            Some(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let due = l.lock().unwrap_or_else(|p| p.into_inner()).due(schemas::now_millis());
                    if let Err(e) = sink.send(&due) {
                        tracing::warn!(error = %e, "labels not sent");
                    } else {
                        stats.labels.fetch_add(due.len() as u64, Ordering::Relaxed);
                    }
                }
                if let Err(e) = sink.flush() {
                    tracing::warn!(error = %e, "labels not delivered");
                }
            }))
        }
        (Some(_), None) => anyhow::bail!("--label-delay needs --brokers"),
        _ => None,
    };
    let mut truth_file = match &cfg.truth_file {
        Some(p) => Some(crate::labels::TruthFile::create(p)?),
        None => None,
    };
    let http = reqwest::Client::builder().pool_max_idle_per_host(cfg.max_in_flight).build()?;
    let generator = Arc::new(Mutex::new(Generator::new(cfg.seed, cfg.drift, cfg.run_id.clone())));
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight));

    // On a terminal the summary is one live line; otherwise (logs, CI) a line every 5 s.
    let bar = (live && std::io::IsTerminal::is_terminal(&std::io::stdout())).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n: u64 = 0;
    let mut last_print = Instant::now();
    while !stop.load(Ordering::Relaxed) && cfg.duration.is_none_or(|d| started.elapsed() < d) {
        ticker.tick().await;
        n += 1;
        let user = Generator::user(cfg.seed, n % cfg.users.max(1));
        let payment = generator.lock().await.payment(&user, schemas::now_millis());
        let direct = (n as f64 * cfg.direct_share).floor() != ((n - 1) as f64 * cfg.direct_share).floor();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // Only a payment that goes out has a truth to tell (a label for a skipped one would wait
        // in the drift job's join for a decision that never comes).
        let truth = crate::labels::Truth { transaction_id: payment.transaction.transaction_id.clone(), is_fraud: payment.is_fraud, sent_at: schemas::now_millis() };
        if let Some(f) = truth_file.as_mut() {
            f.write(&truth)?;
        }
        if let Some(l) = &labeler {
            l.lock().unwrap_or_else(|p| p.into_inner()).push(truth);
        }
        let task_stats = stats.clone();
        match (direct, &producer, &cfg.gateway) {
            (true, Some(p), _) | (false, Some(p), None) => {
                let p = p.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    produce(&p, &payment.transaction, &task_stats).await;
                });
            }
            (_, _, Some(gw)) => {
                // `http://host:8000/` names the same gateway as `http://host:8000`.
                let url = format!("{}/v1/predict", gw.trim_end_matches('/'));
                let http = http.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    post(&http, &url, &payment.transaction, &task_stats).await;
                });
            }
            (_, None, None) => anyhow::bail!("nowhere to send traffic: give --gateway or --brokers"),
        }
        let due = match &bar {
            Some(_) => last_print.elapsed() >= Duration::from_millis(500),
            None => live && last_print.elapsed() >= Duration::from_secs(5),
        };
        if due {
            // Notices from elsewhere go above the summary, when it is written.
            for line in cfg.notices.iter().flat_map(Notices::take) {
                match &bar {
                    Some(bar) => bar.println(line),
                    None => println!("{line}"),
                }
            }
            let summary = stats.summary(started.elapsed());
            match &bar {
                Some(bar) => bar.set_message(summary),
                None => println!("{summary}"),
            }
            last_print = Instant::now();
        }
    }
    // Let answers in flight come back.
    let _ = tokio::time::timeout(Duration::from_secs(5), permits.acquire_many(cfg.max_in_flight as u32)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader_stop.store(true, Ordering::Relaxed);
    if let Some(f) = truth_file.as_mut() {
        f.flush()?;
    }
    if let Some(t) = label_task {
        let _ = t.await;
    }
    if let Some(r) = reader {
        let _ = tokio::task::spawn_blocking(move || r.join()).await;
    }
    match bar {
        Some(bar) => bar.finish_with_message(stats.summary(started.elapsed())),
        None if live => println!("{}", stats.summary(started.elapsed())),
        None => {}
    }
    Ok(stats)
}

async fn post(http: &reqwest::Client, url: &str, tx: &Transaction, stats: &TrafficStats) {
    stats.sent_http.fetch_add(1, Ordering::Relaxed);
    let body = json!({
        "transaction_id": tx.transaction_id,
        "user_id": tx.user_id,
        "amount": tx.amount,
        "currency": tx.currency,
        "payment_method": tx.payment_method.as_str(),
        "merchant_id": tx.merchant_id,
        "country": tx.country,
        "timestamp": tx.timestamp,
    });
    let started = Instant::now();
    match http.post(url).json(&body).timeout(Duration::from_secs(10)).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::OK => {
            stats.http_ok.fetch_add(1, Ordering::Relaxed);
            stats.record_latency(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
            stats.http_pending.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r) => {
            let status = r.status();
            let why = r.json::<serde_json::Value>().await.ok().and_then(|v| v["error"].as_str().map(str::to_string));
            stats.failed(format!("HTTP {}{}", status.as_u16(), why.map(|w| format!(" {w}")).unwrap_or_default()));
        }
        Err(e) => stats.failed(transport_error(&e)),
    }
}

/// What kept a request from an answer, in a few words: the innermost cause (`Connection refused`)
/// rather than reqwest's "error sending request for url".
fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer within 10 s".to_string();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if e.is_connect() { format!("cannot connect to the gateway: {cause}") } else { cause.to_string() }
}

async fn produce(p: &FutureProducer<LoggingContext>, tx: &Transaction, stats: &TrafficStats) {
    let Ok(payload) = schemas::encode(tx) else { return };
    let record = FutureRecord::to(topics::TRANSACTIONS).key(tx.user_id.as_bytes()).payload(&payload);
    match p.send(record, Duration::from_secs(1)).await {
        Ok(_) => {
            stats.sent_direct.fetch_add(1, Ordering::Relaxed);
        }
        Err((e, _)) => stats.failed(format!("Kafka: {e}")),
    }
}

/// Counts the decisions of this run's payments (both paths; their ids start with `id_prefix`)
/// appearing on `decisions` from now on, the first per transaction; later ones are counted as
/// duplicates. Decisions of other payments (another `traffic`, the README's curl) are not this
/// run's to count — nor are older ones, should reading start before now: a broker may answer
/// "the end" of a partition with its start (the embedded one sometimes does for `read_committed`).
fn spawn_decision_counter(brokers: &str, id_prefix: String, stats: Arc<TrafficStats>, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    // Counts for a once-a-second summary: a fetch at most twice a second spares the broker (as in
    // drift-job).
    let consumer: BaseConsumer<LoggingContext> = crate::kafka::create(
        brokers,
        &[
            ("group.id", "fraudctl-traffic"),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
            ("fetch.wait.max.ms", "500"),
            ("fetch.min.bytes", "1048576"),
        ],
    )?;
    crate::topics::assign_all(&consumer, topics::DECISIONS, Offset::End, Duration::from_secs(5))?;
    Ok(std::thread::spawn(move || {
        let mut seen = schemas::FirstSeen::new(schemas::FirstSeen::DEFAULT_CAPACITY);
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
                && let Ok(d) = schemas::decode::<Decision>(m.payload().unwrap_or_default())
                && d.transaction_id.starts_with(&id_prefix)
            {
                if !seen.first(&d.transaction_id) {
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if d.degraded {
                    stats.degraded.fetch_add(1, Ordering::Relaxed);
                }
                let c = match d.decision {
                    Verdict::Approve => &stats.approve,
                    Verdict::Review => &stats.review,
                    Verdict::Block => &stats.block,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_duplicate_and_degraded_decisions_only_when_there_are_some() {
        let stats = TrafficStats::default();
        stats.approve.store(9, Ordering::Relaxed);
        let line = stats.summary(Duration::from_secs(1));
        assert!(line.contains("approve 9 review 0 block 0") && !line.contains("duplicate"), "{line}");
        stats.duplicates.store(2, Ordering::Relaxed);
        assert!(stats.summary(Duration::from_secs(1)).ends_with("| labels 0 | duplicate decisions 2"));
        stats.degraded.store(5, Ordering::Relaxed);
        assert!(stats.summary(Duration::from_secs(1)).ends_with("| labels 0 | degraded 5 | duplicate decisions 2"));
    }

    #[tokio::test]
    async fn the_summary_says_why_payments_failed() {
        let stats = TrafficStats::default();
        assert!(stats.summary(Duration::from_secs(1)).contains("errors 0 skipped"));
        // Nothing listens on the port; then a gateway that answers 503.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let http = reqwest::Client::new();
        let tx = Generator::new(1, Drift::None, "why").payment(&Generator::user(1, 1), 1_764_000_000_000).transaction;
        post(&http, &format!("http://{closed}/v1/predict"), &tx, &stats).await;
        let line = stats.summary(Duration::from_secs(1));
        assert!(line.contains("errors 1 (latest: cannot connect to the gateway: ") && line.contains("refused"), "{line}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let app = axum::Router::new().route(
                "/v1/predict",
                axum::routing::post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"error": "Kafka did not acknowledge the transaction", "details": []}))) }),
            );
            axum::serve(listener, app).await.unwrap();
        });
        post(&http, &format!("http://{addr}/v1/predict"), &tx, &stats).await;
        let line = stats.summary(Duration::from_secs(1));
        assert!(line.contains("errors 2 (latest: HTTP 503 Kafka did not acknowledge the transaction) skipped 0"), "{line}");
    }

    #[tokio::test]
    async fn payments_skipped_for_want_of_room_get_no_truth() {
        // A gateway that takes connections and never answers: two requests fill the room.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(4).collect();
            std::thread::sleep(Duration::from_secs(30));
            drop(held);
        });
        let dir = std::env::temp_dir().join(format!("traffic-truth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let truth = dir.join("truth.jsonl");
        let cfg = TrafficConfig {
            gateway: Some(format!("http://{addr}")),
            brokers: None,
            rate: 100.0,
            duration: Some(Duration::from_millis(300)),
            direct_share: 0.0,
            users: 10,
            seed: 1,
            drift: Drift::None,
            max_in_flight: 2,
            run_id: "skip".into(),
            label_delay: None,
            truth_file: Some(truth.clone()),
            notices: None,
        };
        let stats = run(cfg, Arc::new(AtomicBool::new(false)), false).await.unwrap();
        let lines = std::fs::read_to_string(&truth).unwrap().lines().count() as u64;
        assert!(stats.skipped.load(Ordering::Relaxed) > 10);
        assert_eq!(lines, stats.sent_http.load(Ordering::Relaxed));
        assert_eq!(lines, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
