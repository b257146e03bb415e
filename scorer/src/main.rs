use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use schemas::TransactionLimits;
use scorer::config::{Command, ReplayArgs, ScorerArgs, hostname, mask_url};
use scorer::metrics::ScorerMetrics;
use scorer::pipeline::{Pipeline, PipelineConfig};
use scorer::replay::{Backtest, Reader, Source};
use scorer::store::FeatureStore;
use scorer::Scorer;
use telemetry::ops::Readiness;

/// The scoring loop allocates and frees a batch's records, features and outputs every few
/// milliseconds; mimalloc's thread-local free lists make that markedly cheaper than glibc's malloc
/// (BENCHMARKS.md). With the crate's `override` feature (Cargo.toml) mimalloc is also the C
/// `malloc` of the process, so librdkafka's messages — allocated on this thread, freed on its
/// broker threads, the worst case for glibc's arenas — get it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args = ScorerArgs::parse();
    if let Some(Command::Replay(replay_args)) = args.command {
        return replay(replay_args);
    }
    telemetry::init_logging("scorer");
    let registry = telemetry::metrics::registry();
    let tracing_guard = telemetry::init_tracing("scorer", &registry)?;
    let transactional_id = args.transactional_id.clone().unwrap_or_else(|| format!("fraudstream-scorer-{}", hostname()));
    tracing::info!(
        brokers = %args.kafka.brokers,
        kafka_config = %telemetry::config::show_key_values(&args.kafka.kafka_config),
        group_id = %args.group_id,
        transactional_id = %transactional_id,
        delivery = ?args.delivery,
        redis_url = %mask_url(&args.store.redis_url),
        feature_key_prefix = %args.store.feature_key_prefix,
        redis_timeout_ms = args.store.redis_timeout_ms,
        redis_backoff_ms = args.redis_backoff_ms,
        model_card = %args.model.model_card.display(),
        model_intra_threads = args.model.model_intra_threads,
        max_batch = args.max_batch,
        repeat_window = args.repeat_window,
        repeat_recall_seconds = args.repeat_recall_seconds,
        max_amount = args.model.max_amount,
        review_above_amount = args.model.review_above_amount,
        session_timeout_ms = args.session_timeout_ms,
        stall_after_s = args.stall_after_s,
        listen = %args.listen,
        transactions_topic = %args.topics.transactions_topic,
        decisions_topic = %args.topics.decisions_topic,
        business_events_topic = %args.business_events_topic,
        dlq_topic = %args.dlq_topic,
        "scorer starting"
    );
    let scorer = Scorer::load(&args.model.model_card, args.model.model_intra_threads, Some(args.model.review_above_amount))
        .context("loading the model (--model-card / MODEL_CARD, --review-above-amount)")?;
    let card = scorer.card();
    let metrics = ScorerMetrics::new(&registry, &card.model_version);
    let store = FeatureStore::new(
        &args.store.redis_url,
        &args.store.feature_key_prefix,
        Duration::from_millis(args.store.redis_timeout_ms),
        Duration::from_millis(args.redis_backoff_ms),
        card.default_user_features.clone(),
    )
    .context("--redis-url (REDIS_URL)")?;
    tracing::info!(model_version = %card.model_version, "model loaded");

    let stop = Arc::new(AtomicBool::new(false));
    let readiness = Readiness::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("scorer-ops")
        .enable_all()
        .build()
        .context("starting the ops runtime")?;
    let ops = telemetry::ops::router(registry, readiness.clone());
    telemetry::ops::serve_until_stopped(&runtime, args.listen, ops, stop.clone(), "shutdown requested: finishing the batch in hand");

    let mut cfg = PipelineConfig::new(&args.kafka.brokers, &args.group_id, transactional_id);
    cfg.input_topic = args.topics.transactions_topic;
    cfg.decisions_topic = args.topics.decisions_topic;
    cfg.events_topic = args.business_events_topic;
    cfg.dlq_topic = args.dlq_topic;
    cfg.delivery = args.delivery;
    cfg.work = args.work;
    cfg.max_batch = args.max_batch as usize;
    cfg.repeat_window = args.repeat_window as usize;
    cfg.repeat_recall = Duration::from_secs(args.repeat_recall_seconds);
    cfg.session_timeout_ms = args.session_timeout_ms;
    cfg.limits = TransactionLimits { max_amount: args.model.max_amount };
    cfg.kafka_overrides = args.kafka.kafka_config;
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

/// `scorer replay`: the backtest report on stdout (and as JSON in `--report`), logs on stderr.
fn replay(args: ReplayArgs) -> Result<()> {
    telemetry::init_command_logging("scorer");
    let (intra, review_above) = (args.model.model_intra_threads, Some(args.model.review_above_amount));
    let baseline = Scorer::load(&args.model.model_card, intra, review_above)
        .context("loading the baseline (--model-card / MODEL_CARD, --review-above-amount)")?;
    let candidate = Scorer::load(&args.candidate_card, intra, review_above)
        .context("loading the candidate (--candidate-card / REPLAY_CANDIDATE_CARD)")?;
    let store = FeatureStore::new(
        &args.store.redis_url,
        &args.store.feature_key_prefix,
        Duration::from_millis(args.store.redis_timeout_ms),
        Duration::ZERO,
        baseline.default_user_features().clone(),
    )
    .context("--redis-url (REDIS_URL)")?;
    let mut backtest = Backtest {
        baseline,
        candidate,
        baseline_card: args.model.model_card.clone(),
        candidate_card: args.candidate_card.clone(),
        from_ms: args.from,
        to_ms: args.to.unwrap_or_else(schemas::now_millis),
        limits: TransactionLimits { max_amount: args.model.max_amount },
        store: Some(store),
        examples: args.examples,
        max_transactions: usize::try_from(args.max_transactions).unwrap_or(usize::MAX),
        sample: args.sample,
        output: match &args.output {
            Some(path) => Some(Box::new(std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("creating {} (--output)", path.display()))?,
            ))),
            None => None,
        },
    };
    let source = Source {
        reader: Reader {
            brokers: args.kafka.brokers.clone(),
            kafka_overrides: args.kafka.kafka_config.clone(),
            idle_timeout: Duration::from_secs(args.idle_timeout_s),
            progress: std::io::stderr().is_terminal(),
        },
        transactions_topic: args.topics.transactions_topic.clone(),
        decisions_topic: args.topics.decisions_topic.clone(),
        labels_topic: args.labels_topic.clone(),
    };
    let report = backtest.run(&source).context("replaying")?;
    if let Some(out) = backtest.output.as_mut() {
        out.flush().context("writing the per-transaction output (--output)")?;
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).context("writing the report as JSON")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing the report to {} (--report)", path.display()))?;
    }
    print!("{}", report.render());
    Ok(())
}
