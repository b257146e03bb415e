use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use schemas::TransactionLimits;
use scorer::config::{ScorerArgs, hostname, mask_url};
use scorer::metrics::ScorerMetrics;
use scorer::pipeline::{Pipeline, PipelineConfig};
use scorer::store::FeatureStore;
use scorer::{FraudModel, ModelCard, Rules, Scorer};
use telemetry::ops::Readiness;

/// The scoring loop allocates and frees a batch's records, features and outputs every few
/// milliseconds; mimalloc's thread-local free lists make that markedly cheaper than glibc's malloc
/// (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args = ScorerArgs::parse();
    telemetry::init_logging("scorer");
    let registry = telemetry::metrics::registry();
    let tracing_guard = telemetry::init_tracing("scorer", &registry)?;
    let transactional_id = args.transactional_id.clone().unwrap_or_else(|| format!("fraudstream-scorer-{}", hostname()));
    tracing::info!(
        brokers = %args.brokers,
        kafka_config = %telemetry::config::show_key_values(&args.kafka_config),
        group_id = %args.group_id,
        transactional_id = %transactional_id,
        delivery = ?args.delivery,
        redis_url = %mask_url(&args.redis_url),
        feature_key_prefix = %args.feature_key_prefix,
        redis_timeout_ms = args.redis_timeout_ms,
        redis_backoff_ms = args.redis_backoff_ms,
        model_card = %args.model_card.display(),
        model_intra_threads = args.model_intra_threads,
        max_batch = args.max_batch,
        repeat_window = args.repeat_window,
        max_amount = args.max_amount,
        review_above_amount = args.review_above_amount,
        session_timeout_ms = args.session_timeout_ms,
        stall_after_s = args.stall_after_s,
        listen = %args.listen,
        transactions_topic = %args.transactions_topic,
        decisions_topic = %args.decisions_topic,
        business_events_topic = %args.business_events_topic,
        dlq_topic = %args.dlq_topic,
        "scorer starting"
    );
    if !(args.max_amount.is_finite() && args.max_amount > 0.0) {
        bail!("--max-amount (MAX_AMOUNT) must be a positive number, got {}", args.max_amount);
    }

    let card = ModelCard::load(&args.model_card).context("loading the model card (--model-card / MODEL_CARD)")?;
    let model = FraudModel::load(&card, args.model_intra_threads).context("loading the ONNX model")?;
    let rules = Rules::new(card.thresholds, Some(args.review_above_amount)).context("--review-above-amount")?;
    let metrics = ScorerMetrics::new(&registry, &card.model_version);
    let store = FeatureStore::new(
        &args.redis_url,
        &args.feature_key_prefix,
        Duration::from_millis(args.redis_timeout_ms),
        Duration::from_millis(args.redis_backoff_ms),
        card.default_user_features.clone(),
    )
    .context("--redis-url (REDIS_URL)")?;
    tracing::info!(model_version = %card.model_version, "model loaded");
    let scorer = Scorer::new(card, model, rules);

    let stop = Arc::new(AtomicBool::new(false));
    let readiness = Readiness::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("scorer-ops")
        .enable_all()
        .build()
        .context("starting the ops runtime")?;
    let ops = telemetry::ops::router(registry, readiness.clone());
    let listen = args.listen;
    let http_stop = stop.clone();
    runtime.spawn(async move {
        if let Err(e) = telemetry::ops::serve(listen, ops, telemetry::ops::stopped(http_stop)).await {
            tracing::error!(error = %e, %listen, "ops http server failed");
        }
    });
    let signal_stop = stop.clone();
    runtime.spawn(async move {
        telemetry::ops::shutdown_signal().await;
        tracing::info!("shutdown requested: finishing the batch in hand");
        signal_stop.store(true, Ordering::Relaxed);
    });

    let mut cfg = PipelineConfig::new(&args.brokers, &args.group_id, transactional_id);
    cfg.input_topic = args.transactions_topic;
    cfg.decisions_topic = args.decisions_topic;
    cfg.events_topic = args.business_events_topic;
    cfg.dlq_topic = args.dlq_topic;
    cfg.delivery = args.delivery;
    cfg.work = args.work;
    cfg.max_batch = args.max_batch as usize;
    cfg.repeat_window = args.repeat_window as usize;
    cfg.session_timeout_ms = args.session_timeout_ms;
    cfg.limits = TransactionLimits { max_amount: args.max_amount };
    cfg.kafka_overrides = args.kafka_config;
    cfg.stall_after = Duration::from_secs(args.stall_after_s);
    let mut pipeline = Pipeline::new(cfg, scorer, store, metrics).context("connecting to Kafka")?;
    // Ready for traffic (`/health/ready`) once the group assigns partitions, a few seconds later.
    tracing::info!("scorer ready");
    let result = pipeline.run(&stop, &readiness);
    readiness.set(false);
    stop.store(true, Ordering::Relaxed);
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(tracing_guard);
    result.context("scoring stopped")?;
    tracing::info!("scorer stopped");
    Ok(())
}
