use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use telemetry::kafka::LoggingContext;

use gateway::config::GatewayArgs;
use gateway::decisions::DecisionBoard;
use gateway::http::{AppState, openapi_document, router};
use gateway::metrics::GatewayMetrics;
use gateway::reader::{self, ReaderConfig};
use schemas::TransactionLimits;
use telemetry::ops::Readiness;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = GatewayArgs::parse();
    telemetry::init_logging("gateway");
    let registry = telemetry::metrics::registry();
    let _tracing = telemetry::init_tracing("gateway", &registry)?;
    tracing::info!(
        listen = %args.listen,
        brokers = %args.brokers,
        kafka_config = %telemetry::config::show_key_values(&args.kafka_config),
        decision_deadline_ms = args.decision_deadline_ms,
        decisions_fetch_wait_ms = args.decisions_fetch_wait_ms,
        decisions_recall_seconds = args.decisions_recall_seconds,
        stall_after_s = args.stall_after_s,
        produce_timeout_ms = args.produce_timeout_ms,
        max_body_bytes = args.max_body_bytes,
        body_read_timeout_ms = args.body_read_timeout_ms,
        header_read_timeout_ms = args.header_read_timeout_ms,
        max_amount = args.max_amount,
        max_waiters = args.max_waiters,
        recent_decisions = args.recent_decisions,
        transactions_topic = %args.transactions_topic,
        decisions_topic = %args.decisions_topic,
        "gateway starting"
    );
    let metrics = GatewayMetrics::new(&registry);
    let board = Arc::new(DecisionBoard::new(args.max_waiters, args.recent_decisions));

    let mut producer_cfg = ClientConfig::new();
    producer_cfg
        .set("bootstrap.servers", &args.brokers)
        // A 2xx means Kafka has the transaction: idempotent, acknowledged by all replicas.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Requests are answered one by one, so each waits for its own record: send at once.
        .set("linger.ms", "0")
        .set("message.timeout.ms", args.produce_timeout_ms.to_string())
        .set("socket.connection.setup.timeout.ms", "1000");
    for (k, v) in &args.kafka_config {
        producer_cfg.set(k, v);
    }
    let producer: FutureProducer<LoggingContext> = producer_cfg.create_with_context(LoggingContext::default()).context("creating the Kafka producer")?;

    let stop = Arc::new(AtomicBool::new(false));
    let reader_ready = Arc::new(AtomicBool::new(false));
    let reader = reader::spawn(
        ReaderConfig {
            brokers: args.brokers.clone(),
            topic: args.decisions_topic.clone(),
            fetch_wait_ms: args.decisions_fetch_wait_ms,
            recall: Duration::from_secs(args.decisions_recall_seconds),
            stall_after: Duration::from_secs(args.stall_after_s),
            overrides: args.kafka_config.clone(),
        },
        board.clone(),
        metrics.clone(),
        reader_ready.clone(),
        stop.clone(),
    )
    .context("starting the decisions reader")?;

    // Ready when the producer can reach the brokers and the reader follows `decisions`.
    let readiness = Readiness::default();
    {
        let readiness = readiness.clone();
        let producer = producer.clone();
        let topic = args.transactions_topic.clone();
        let reader_ready = reader_ready.clone();
        tokio::spawn(async move {
            loop {
                let p = producer.clone();
                let t = topic.clone();
                let producer_ok = tokio::task::spawn_blocking(move || p.client().fetch_metadata(Some(&t), Duration::from_secs(1)).is_ok())
                    .await
                    .unwrap_or(false);
                let ready = producer_ok && reader_ready.load(Ordering::Relaxed);
                if ready != readiness.is_ready() {
                    tracing::info!(ready, producer_ok, "readiness changed");
                }
                readiness.set(ready);
                tokio::time::sleep(Duration::from_secs(if ready { 5 } else { 1 })).await;
            }
        });
    }

    let limits = TransactionLimits { max_amount: args.max_amount };
    let state = Arc::new(AppState {
        producer: producer.clone(),
        board,
        metrics,
        openapi: openapi_document(&limits),
        limits,
        transactions_topic: args.transactions_topic.clone(),
        decision_deadline: Duration::from_millis(args.decision_deadline_ms),
        produce_timeout: Duration::from_millis(args.produce_timeout_ms),
        max_body_bytes: args.max_body_bytes,
        body_read_timeout: Duration::from_millis(args.body_read_timeout_ms),
        produce_warnings: telemetry::logs::Throttle::per_second(),
        pending_notices: telemetry::logs::Throttle::per_second(),
    });
    let app = router(state, telemetry::ops::router(registry, readiness));
    telemetry::ops::serve(args.listen, app, telemetry::ops::shutdown_signal(), Duration::from_millis(args.header_read_timeout_ms)).await.with_context(|| format!("serving on {}", args.listen))?;

    tracing::info!("gateway stopping");
    stop.store(true, Ordering::Relaxed);
    let _ = producer.flush(Duration::from_secs(5));
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    Ok(())
}
