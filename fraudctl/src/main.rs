use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use fraudctl::synth::{Drift, Generator};
use fraudctl::traffic::TrafficConfig;
use schemas::{Decision, Verdict};
use scorer::{ModelCard, Scorer, UserLookup};

#[derive(Parser)]
#[command(name = "fraudctl", version, about = "Operate fraudstream: demo scoring, features, traffic")]
struct Cli {
    /// librdkafka settings for every Kafka client fraudctl makes (what a cluster needs, e.g.
    /// `security.protocol=ssl`), `key=value`, repeatable (env: comma-separated). The services
    /// take theirs from SCORER_KAFKA_CONFIG, GATEWAY_KAFKA_CONFIG and DRIFT_KAFKA_CONFIG.
    #[arg(long = "kafka-config", env = "FRAUDCTL_KAFKA_CONFIG", global = true, value_delimiter = ',', value_parser = telemetry::config::parse_key_value)]
    kafka_config: Vec<(String, String)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score synthetic payments with the ONNX model in-process and print each decision.
    Score(ScoreArgs),
    /// Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// The feature store.
    #[command(subcommand)]
    Features(FeaturesCommand),
    /// Send synthetic payments through the gateway and straight to Kafka, at a steady rate.
    Traffic(TrafficArgs),
    /// Run the whole pipeline locally (broker and Redis included unless configured) with traffic.
    Run(RunArgs),
    /// Publish delayed ground-truth labels for payments recorded by `traffic --truth-file`.
    Labels {
        #[command(flatten)]
        kafka: Kafka,
        /// The truth file written by `fraudctl traffic --truth-file`.
        #[arg(long)]
        truth_file: PathBuf,
        /// Seconds between a payment being sent and its label.
        #[arg(long, default_value_t = 30.0)]
        delay: f64,
    },
    /// The dead-letter topic: what it holds and why, and sending records back once fixed.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The drift job's reports: which features moved away from the training data, and where.
    #[command(subcommand)]
    Drift(DriftCommand),
    /// Benchmarks that print numbers.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered records (where each is, when, why, where it came from) and count them by
    /// kind.
    Show {
        #[command(flatten)]
        selection: DlqSelection,
        /// List at most this many (the count covers all).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// One JSON object per record on stdout (the count goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Send dead-lettered records back to the topic each came from, with its key, bytes and
    /// headers (and `redriven.from`), once what refused them is fixed: a scorer that now knows a
    /// schema id, a raised --max-amount. One refused again is dead-lettered again. Narrow the
    /// selection first with `show`: a record sent back twice is scored twice.
    Redrive {
        #[command(flatten)]
        selection: DlqSelection,
        /// Send them here instead of to their source topic.
        #[arg(long)]
        to_topic: Option<String>,
        /// Say what would be sent, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum DriftCommand {
    /// The latest window of each model version: every feature's PSI, and for each feature that
    /// drifted, the share of decisions in each bin against the training data's.
    Show {
        #[command(flatten)]
        kafka: Kafka,
        /// The reports' topic.
        #[arg(long, default_value = schemas::topics::DRIFT_REPORTS)]
        topic: String,
        /// Reports written from: RFC 3339 or an age (`90m`, `6h`, `7d`). Default: the first kept.
        #[arg(long, value_parser = scorer::config::parse_instant)]
        from: Option<i64>,
        /// Reports written before: as --from. Default: now.
        #[arg(long, value_parser = scorer::config::parse_instant)]
        to: Option<i64>,
        /// Only this model version.
        #[arg(long)]
        model_version: Option<String>,
        /// Only this feature, with its bins whether it drifted or not.
        #[arg(long)]
        feature: Option<String>,
        /// The latest this many windows of each model version.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        windows: u64,
        /// One JSON object per report on stdout, as the drift job wrote it.
        #[arg(long)]
        json: bool,
        /// Give up when the topic sends nothing, not even its end, for this many seconds.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
        idle_timeout_s: u64,
        // The drift job's model cards: a window of a card's model version with fewer reports
        // than the card monitors features is said to be incomplete.
        #[command(flatten)]
        cards: scorer::config::MonitoredCards,
    },
}

/// The Kafka cluster a command talks to.
#[derive(clap::Args)]
struct Kafka {
    /// Kafka brokers, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092", value_parser = telemetry::config::parse_brokers)]
    brokers: String,
}

#[derive(clap::Args)]
struct DlqSelection {
    #[command(flatten)]
    kafka: Kafka,
    /// The dead-letter topic.
    #[arg(long, default_value = schemas::topics::TRANSACTIONS_DLQ)]
    topic: String,
    /// Records written from: RFC 3339 or an age (`90m`, `6h`, `7d`). Default: the first kept.
    #[arg(long, value_parser = scorer::config::parse_instant)]
    from: Option<i64>,
    /// Records written before: as --from. Default: now.
    #[arg(long, value_parser = scorer::config::parse_instant)]
    to: Option<i64>,
    /// Only records dead-lettered for this reason.
    #[arg(long, value_parser = ["decode", "schema", "validation"])]
    kind: Option<String>,
    /// Give up when the topic sends nothing, not even its end, for this many seconds.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_s: u64,
}

impl DlqSelection {
    fn reader(&self) -> scorer::replay::Reader {
        fraudctl::kafka::reader(&self.kafka.brokers, Duration::from_secs(self.idle_timeout_s))
    }

    fn selection(&self) -> fraudctl::dlq::Selection {
        fraudctl::dlq::Selection { from_ms: self.from, to_ms: self.to.unwrap_or_else(schemas::now_millis), kind: self.kind.clone() }
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The scorer (Redis and model included) against a passthrough with the same loop, side by side
    /// (and a fan-out: the passthrough writing each record to two topics, as scoring does).
    Scorer {
        #[arg(long, default_value_t = 300_000)]
        records: usize,
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        #[arg(long, default_value_t = 500)]
        max_batch: u32,
        /// exactly-once or at-least-once.
        #[arg(long, default_value = "exactly-once")]
        delivery: String,
        #[arg(long, default_value_t = 5000)]
        users: u64,
        /// Scorer runs after the passthrough, one per value: off, sampled (10 % to a collector
        /// that accepts everything), dead (10 % to a port where nothing listens).
        #[arg(long, value_delimiter = ',', default_value = "off")]
        tracing: Vec<fraudctl::bench::Tracing>,
        /// One more scorer run, with its feature store unreachable (every batch scored on the model
        /// card's defaults, as during a Redis outage): what the Redis lookups cost.
        #[arg(long)]
        store_down: bool,
        /// Repeat the whole sequence this many times (run-to-run spread); every second
        /// repetition runs it in reverse, so that no kind of run is always first or last.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Processes per run, in one consumer group (each with its own transactional id): the
        /// passthrough, the fan-out and the scorer alike. Records/s and CPU are their sums.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        instances: u32,
        /// Run on this Kafka cluster instead of a fresh private in-memory broker per run: each run
        /// gets topics, a consumer group and transactional ids of its own (named
        /// `fraudstream-bench-<pid>-<run>-…`) and its topics are deleted when it ends. Redis is
        /// still a private one.
        #[arg(long, value_parser = telemetry::config::parse_brokers)]
        brokers: Option<String>,
    },
    /// The embedded broker's CPU per step as its topic fills, with and without a consumer
    /// following it (what the gateway benchmark's numbers rest on).
    Broker {
        /// Records per second, one per produce request (as the gateway sends them).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        #[arg(long, default_value_t = 4)]
        steps: u32,
        #[arg(long, default_value_t = 10.0)]
        step_seconds: f64,
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        /// The producer's linger.ms; above 0, records share requests and stored batches.
        #[arg(long, default_value_t = 0)]
        linger_ms: u32,
    },
}

#[derive(clap::Args, Clone)]
struct TrafficShape {
    /// Payments per second (open loop: the schedule does not wait for answers).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Share of payments produced straight to `transactions` instead of through HTTP.
    #[arg(long, default_value_t = 0.2)]
    direct_share: f64,
    /// Users the payments come from (ids 10000..10000+N; load their features with the same seed).
    #[arg(long, default_value_t = 5000)]
    users: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shift the traffic away from the training distribution (drift injection).
    #[arg(long, value_enum, default_value_t = Drift::None)]
    drift: Drift,
    /// Most requests in flight; payments beyond it are skipped and counted.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Publish each payment's ground truth to `labels` this many seconds after sending it.
    #[arg(long)]
    label_delay: Option<f64>,
    /// Append each payment's ground truth to this JSON-lines file (input of `fraudctl labels`).
    #[arg(long)]
    truth_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TrafficArgs {
    /// Gateway base URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8000")]
    gateway: String,
    /// The Kafka cluster, for the direct path and the decision counts.
    #[command(flatten)]
    kafka: Kafka,
    #[command(flatten)]
    shape: TrafficShape,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Use these brokers instead of starting an in-memory Tansu broker.
    #[arg(long, env = "KAFKA_BROKERS", value_parser = telemetry::config::parse_brokers)]
    brokers: Option<String>,
    /// Use this Redis instead of starting one.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Gateway port (another free port is used when taken).
    #[arg(long, default_value_t = 8000)]
    gateway_port: u16,
    /// Partitions per topic.
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    /// Start the services but send no traffic.
    #[arg(long)]
    no_traffic: bool,
    /// The drift job's window, in seconds (shorter than production's 5 minutes so that the local
    /// run shows PSI soon).
    #[arg(long, default_value_t = 60)]
    drift_window: u64,
    #[command(flatten)]
    shape: TrafficShape,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every fraudstream topic (existing ones are left alone) and say what became of each.
    Create {
        #[command(flatten)]
        kafka: Kafka,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: i32,
        /// Copies of each partition: a number, or `auto` for three (one per broker on a cluster of
        /// fewer). With three or more, topics get `min.insync.replicas=2` unless --config says
        /// otherwise.
        #[arg(long, default_value = "auto")]
        replication_factor: fraudctl::topics::Replication,
        /// A topic setting, `KEY=VALUE` for every topic or `TOPIC:KEY=VALUE` for one (e.g.
        /// `decisions:retention.ms=2592000000` to backtest over 30 days); repeatable. Only topics
        /// created now get them.
        #[arg(long = "config", value_name = "[TOPIC:]KEY=VALUE")]
        settings: Vec<fraudctl::topics::TopicSetting>,
    },
}

#[derive(Subcommand)]
enum FeaturesCommand {
    /// Write user features to Redis: a synthetic population (--users) or a JSON-lines file (--file).
    Load {
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
        redis_url: String,
        #[arg(long, env = "FEATURE_KEY_PREFIX", default_value = "features:user:")]
        key_prefix: String,
        /// Synthetic users 0..N (ids 10000..10000+N), consistent with the training data.
        #[arg(long, default_value_t = 1000, conflicts_with = "file")]
        users: u64,
        /// Seed of the synthetic population (use the same one for `traffic`).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// JSON lines: {"user_id": "42", "account_age_days": 12, "home_country": "US", ...}; fields
        /// left out take the model card's defaults. The file is checked first: a bad line (unknown
        /// field, a value that is not a number >= 0, no user_id) stops the load, naming the line,
        /// before anything is written.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Model card whose defaults fill fields a file leaves out.
        #[arg(long, env = "MODEL_CARD", default_value_os_t = ModelCard::bundled_path())]
        model_card: PathBuf,
    },
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// How many payments to score.
    #[arg(long, default_value_t = 2000, env = "FRAUDCTL_COUNT")]
    count: usize,
    /// How many decisions to print: the first few approvals, then reviews and blocks.
    #[arg(long, default_value_t = 30)]
    show: usize,
    /// Seed for the synthetic users and payments.
    #[arg(long, default_value_t = 1, env = "FRAUDCTL_SEED")]
    seed: u64,
    /// How many distinct users the payments come from.
    #[arg(long, default_value_t = 1000, env = "FRAUDCTL_USERS")]
    users: u64,
    /// Shift the traffic away from the training distribution.
    #[arg(long, value_enum, default_value_t = Drift::None, env = "FRAUDCTL_DRIFT")]
    drift: Drift,
    /// Model card; the ONNX model is read from beside it.
    #[arg(long, env = "MODEL_CARD", default_value_os_t = ModelCard::bundled_path())]
    model_card: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Warnings and errors (librdkafka's among them) on stderr; stdout is the commands' output.
    telemetry::init_command_logging("fraudctl");
    fraudctl::kafka::set_overrides(cli.kafka_config);
    match cli.command {
        Command::Score(args) => score(args),
        Command::Topics(TopicsCommand::Create { kafka, partitions, replication_factor, settings }) => {
            let plan = fraudctl::topics::Plan { topics: fraudctl::topics::standard(partitions), replication: replication_factor, settings };
            for outcome in runtime()?.block_on(fraudctl::topics::apply(&kafka.brokers, &plan))? {
                println!("{outcome}");
            }
            Ok(())
        }
        Command::Dlq(command) => dlq(command),
        Command::Drift(DriftCommand::Show { kafka, topic, from, to, model_version, feature, windows, json, idle_timeout_s, cards }) => {
            let monitored = fraudctl::drift::monitored(&cards.load()?, feature.as_deref());
            let reader = fraudctl::kafka::reader(&kafka.brokers, Duration::from_secs(idle_timeout_s));
            let all_bins = feature.is_some();
            let windows = usize::try_from(windows).unwrap_or(usize::MAX);
            let selection = fraudctl::drift::Selection { from_ms: from, to_ms: to.unwrap_or_else(schemas::now_millis), model_version, feature, windows };
            let found = fraudctl::drift::read(&reader, &topic, &selection).with_context(|| format!("reading {topic}"))?;
            let latest = found.latest(windows, &monitored);
            if latest.is_empty() {
                let none = format!("no drift reports in {topic} for this selection (the drift job writes one per feature and window of at least DRIFT_MIN_SAMPLES decisions)");
                if json { eprintln!("{none}") } else { println!("{none}") }
            }
            for window in latest {
                if json {
                    for r in &window.reports {
                        println!("{}", serde_json::to_string(r)?);
                    }
                } else {
                    print!("{}", fraudctl::drift::describe(&window, all_bins));
                }
            }
            if found.undecodable > 0 {
                eprintln!("{} records of {topic} are not drift reports and were skipped", found.undecodable);
            }
            Ok(())
        }
        Command::Traffic(args) => {
            let rt = runtime()?;
            let stop = ctrl_c_flag(&rt);
            let cfg = traffic_config(&args.shape, Some(args.gateway), Some(args.kafka.brokers));
            rt.block_on(fraudctl::traffic::run(cfg, stop, true))?;
            Ok(())
        }
        Command::Run(args) => run_stack(args),
        Command::Labels { kafka, truth_file, delay } => {
            let truths = fraudctl::labels::read_truth(&truth_file)?;
            let total = truths.len();
            let mut labeler = fraudctl::labels::Labeler::new(Duration::from_secs_f64(delay), total.max(1));
            for t in truths {
                labeler.push(t);
            }
            let sink = fraudctl::labels::LabelSink::new(&kafka.brokers)?;
            let mut sent = 0;
            while !labeler.is_empty() {
                let due = labeler.due(schemas::now_millis());
                sink.send(&due)?;
                sent += due.len();
                if !labeler.is_empty() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            sink.flush()?;
            println!("published {sent} labels to {}", schemas::topics::LABELS);
            Ok(())
        }
        Command::Bench(BenchCommand::Scorer { records, partitions, max_batch, delivery, users, tracing, store_down, repeat, instances, brokers }) => {
            let on = brokers.as_deref().map_or_else(|| "a private broker per run".to_string(), |b| format!("brokers {b}"));
            let b = fraudctl::bench::ScorerBench { records, partitions, max_batch, delivery: delivery.clone(), users, tracing, store_down, repeat, instances, brokers };
            // Ctrl-C ends the run with its broker, Redis and scorer stopped, not left running.
            let signals = runtime()?;
            let results = fraudctl::bench::run(&b, &ctrl_c_flag(&signals))?;
            println!("| run | records | records/s | CPU-s per 100k records | / passthrough | / fan-out | records per batch | broker CPU-s per 100k | resident MiB | spans exported | spans dropped | repetition |");
            println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
            // Ratios are taken within one repetition.
            let rate_of = |mode: &str, repetition: usize| results.iter().find(|m| m.mode == mode && m.repetition == repetition).map(|m| m.rate());
            let ratio = |rate: f64, base: Option<f64>| base.map_or_else(String::new, |b| format!("{:.2}", rate / b));
            for m in &results {
                let (passthrough, fan_out) = (rate_of("passthrough", m.repetition), rate_of("fan-out", m.repetition));
                println!(
                    "| {} | {} | {:.0} | {:.3} | {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} |",
                    m.mode,
                    m.records,
                    m.rate(),
                    m.cpu_per_100k(),
                    ratio(m.rate(), passthrough),
                    ratio(m.rate(), fan_out),
                    m.records_per_batch(),
                    m.broker_cpu_per_100k().map_or_else(String::new, |c| format!("{c:.3}")),
                    m.rss_bytes / 1048576.0,
                    m.spans_exported,
                    m.spans_dropped,
                    m.repetition + 1
                );
            }
            let per_run = if instances == 1 { String::new() } else { format!(", {instances} processes per run") };
            println!("\n({records} records, {partitions} partitions, max batch {max_batch}, {delivery}{per_run}, {on})");
            Ok(())
        }
        Command::Bench(BenchCommand::Broker { rate, steps, step_seconds, partitions, linger_ms }) => {
            let b = fraudctl::broker_bench::BrokerBench { rate, steps, step_seconds, partitions, linger_ms };
            let signals = runtime()?;
            let results = fraudctl::broker_bench::run(&b, &ctrl_c_flag(&signals))?;
            println!("| topic | records stored | records read in the step | broker CPU (% of a core) |");
            println!("| --- | ---: | ---: | ---: |");
            for s in &results {
                let topic = if s.followed { "followed by a consumer" } else { "not read" };
                println!("| {topic} | {} | {} | {:.0} |", s.stored, s.read, s.broker_cores * 100.0);
            }
            println!("\n({rate} records/s, linger.ms {linger_ms}, {partitions} partitions, {step_seconds} s steps)");
            Ok(())
        }
        Command::Features(FeaturesCommand::Load { redis_url, key_prefix, users, seed, file, model_card }) => {
            let mut store = fraudctl::features::store(&redis_url, &key_prefix)?;
            let written = match file {
                Some(path) => {
                    let card = ModelCard::load(&model_card)?;
                    fraudctl::features::load_file(&mut store, &path, &card.default_user_features)?
                }
                None => fraudctl::features::load_synthetic(&mut store, users, seed)?,
            };
            println!("wrote features of {written} users under {key_prefix}*");
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// A flag set by the first Ctrl-C (or SIGTERM).
fn ctrl_c_flag(rt: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    telemetry::ops::stop_on_signal(rt, stop.clone(), None);
    stop
}

fn traffic_config(shape: &TrafficShape, gateway: Option<String>, brokers: Option<String>) -> TrafficConfig {
    TrafficConfig {
        gateway,
        brokers,
        rate: shape.rate,
        duration: shape.duration.map(Duration::from_secs_f64),
        direct_share: shape.direct_share,
        users: shape.users,
        seed: shape.seed,
        drift: shape.drift,
        max_in_flight: shape.max_in_flight,
        label_delay: shape.label_delay.map(Duration::from_secs_f64),
        truth_file: shape.truth_file.clone(),
        notices: None,
        run_id: format!("{:x}", schemas::now_millis()),
    }
}

fn run_stack(args: RunArgs) -> Result<()> {
    use fraudctl::stack::{self, Process};
    let rt = runtime()?;
    let stop = ctrl_c_flag(&rt);
    let log_dir = std::env::temp_dir().join(format!("fraudstream-run-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;
    let mut infra: Vec<Process> = Vec::new();

    let embedded_broker = args.brokers.is_none();
    let notices = fraudctl::traffic::Notices::default();
    let watch_stop = Arc::new(AtomicBool::new(false));
    let brokers = match args.brokers {
        Some(b) => {
            println!("kafka    {b} (KAFKA_BROKERS)");
            b
        }
        None => {
            let port = stack::port(9092)?;
            let tansu = stack::start_tansu(port, &log_dir)?;
            // Say so when the broker's growing cost starts to show, rather than let answers slow
            // down unexplained.
            let notices = notices.clone();
            let every = Duration::from_secs(10);
            stack::watch_cpu(tansu.pid(), every, watch_stop.clone(), stack::busy_broker_notice, move |line| notices.push(line));
            infra.push(tansu);
            println!("kafka    127.0.0.1:{port} — embedded Tansu broker, in-memory, for local use only: every record is gone when this stops");
            format!("127.0.0.1:{port}")
        }
    };
    let redis_url = match args.redis_url {
        Some(r) => {
            println!("redis    {} (REDIS_URL)", scorer::config::mask_url(&r));
            r
        }
        None => {
            let port = stack::port(6379)?;
            infra.push(stack::start_redis(port, &log_dir)?);
            println!("redis    redis://127.0.0.1:{port}/ — local, no persistence");
            format!("redis://127.0.0.1:{port}/")
        }
    };

    rt.block_on(fraudctl::topics::create(&brokers, &fraudctl::topics::standard(args.partitions)))?;
    let mut store = fraudctl::features::store(&redis_url, "features:user:")?;
    let users = fraudctl::features::load_synthetic(&mut store, args.shape.users, args.shape.seed)?;
    println!("features {users} synthetic users loaded (ids 10000..{})", 10_000 + users);

    let scorer_port = stack::port(9101)?;
    let drift_port = stack::port(9102)?;
    let gateway_port = stack::port(args.gateway_port)?;
    // What the cluster needs (fraudctl --kafka-config) goes to every service, their own variables
    // on top; `defaults` are settings run picks for the embedded broker.
    let kafka_flags = |var: &str, defaults: &[&str]| {
        let defaults = if embedded_broker { defaults } else { &[] };
        stack::service_kafka_flags(std::env::var(var).ok().as_deref(), fraudctl::kafka::overrides(), defaults)
    };
    let mut gateway_args = vec!["--listen".to_string(), format!("127.0.0.1:{gateway_port}")];
    gateway_args.extend(kafka_flags("GATEWAY_KAFKA_CONFIG", &[]));
    if embedded_broker && std::env::var_os("DECISIONS_FETCH_WAIT_MS").is_none() {
        // The embedded broker's fetch cost grows with the data it holds: fewer empty fetches from
        // the gateway's decisions reader keep it answering several times longer (BENCHMARKS.md).
        // DECISIONS_FETCH_WAIT_MS, when set, is left to the gateway.
        gateway_args.extend(["--decisions-fetch-wait-ms".to_string(), "50".to_string()]);
    }
    let mut scorer_args = vec!["--listen".to_string(), format!("127.0.0.1:{scorer_port}")];
    // The embedded broker answers a fetch with no records at all when reading through what the
    // partition holds takes longer than the fetch's wait: past some ten thousand records, the
    // scorer's 10 ms would starve it for good while its lag grows. 50 ms costs nothing
    // measurable at the default rate (BENCHMARKS.md).
    scorer_args.extend(kafka_flags("SCORER_KAFKA_CONFIG", &["fetch.wait.max.ms=50"]));
    let env = [("KAFKA_BROKERS", brokers.clone()), ("REDIS_URL", redis_url.clone())];
    let mut services = vec![
        Process::spawn("scorer", &stack::sibling("scorer")?, &scorer_args, &log_dir, &env)?,
        Process::spawn("gateway", &stack::sibling("gateway")?, &gateway_args, &log_dir, &env)?,
        Process::spawn(
            "drift-job",
            &stack::sibling("drift-job")?,
            &[["--listen".into(), format!("127.0.0.1:{drift_port}"), "--window-seconds".into(), args.drift_window.to_string()].to_vec(), kafka_flags("DRIFT_KAFKA_CONFIG", &[])].concat(),
            &log_dir,
            &env,
        )?,
    ];
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(stack::is_ready(gateway_port) && stack::is_ready(scorer_port)) {
        for s in services.iter_mut() {
            s.check_running().with_context(|| format!("see {}", log_dir.display()))?;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the gateway and scorer were not ready within 60 s; logs in {}", log_dir.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    if embedded_broker {
        // A consumer this broker starves says so in its log and metrics; say it here too.
        let watched = [("scorer", scorer_port), ("gateway", gateway_port)].map(|(name, port)| (name.to_string(), port, log_dir.join(format!("{name}.log"))));
        let notices = notices.clone();
        rt.spawn(stack::watch_stalls(watched.to_vec(), Duration::from_secs(10), watch_stop.clone(), move |line| notices.push(line)));
    }
    {
        // Drifted features as the drift job finds them, once per window (shifted traffic:
        // --drift).
        let notices = notices.clone();
        rt.spawn(stack::watch_drift(drift_port, brokers.clone(), Duration::from_secs(5), watch_stop.clone(), move |line| notices.push(line)));
    }
    println!("gateway  {gateway} — POST /v1/predict, GET /v1/decisions/{{id}}, /openapi.json, /metrics");
    println!("scorer   http://127.0.0.1:{scorer_port}/metrics");
    println!("drift    http://127.0.0.1:{drift_port}/metrics (feature_psi every {} s, model_performance from labels)", args.drift_window);
    println!("logs     {}/*.log", log_dir.display());
    println!(
        "try      curl -s -X POST {gateway}/v1/predict -H 'Content-Type: application/json' -d '{{\"transaction_id\": \"txn_demo_001\", \"user_id\": 12345, \"amount\": 149.99, \"payment_method\": \"card\", \"merchant_id\": \"merchant_42\"}}'"
    );
    println!(
        "backtest {} replay --brokers {brokers} --redis-url {redis_url} --from 10m --candidate-card CANDIDATE/model_card.json",
        stack::sibling("scorer")?.display()
    );
    if args.no_traffic {
        println!("running; Ctrl-C stops everything");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            for s in services.iter_mut() {
                s.check_running()?;
            }
            for line in notices.take() {
                println!("{line}");
            }
        }
    } else {
        println!(
            "traffic  {} payments/s, {:.0} % straight to Kafka; Ctrl-C stops everything",
            args.shape.rate,
            args.shape.direct_share * 100.0
        );
        let mut cfg = traffic_config(&args.shape, Some(gateway.clone()), Some(brokers.clone()));
        // Labels 10 s after each payment by default, so that model quality shows up locally.
        cfg.label_delay = cfg.label_delay.or(Some(Duration::from_secs(10)));
        cfg.notices = Some(notices.clone());
        rt.block_on(fraudctl::traffic::run(cfg, stop.clone(), true))?;
    }
    println!("stopping");
    watch_stop.store(true, Ordering::Relaxed);
    // Services first, then what they depend on.
    while let Some(s) = services.pop() {
        drop(s);
    }
    while let Some(p) = infra.pop() {
        drop(p);
    }
    Ok(())
}

fn score(args: ScoreArgs) -> Result<()> {
    let card = ModelCard::load(&args.model_card).context("loading the model card")?;
    let mut scorer = Scorer::from_card(card, 1).context("loading the model")?;
    let mut generator = Generator::new(args.seed, args.drift, "demo");
    let now_ms = schemas::now_millis();

    let mut batch = Vec::with_capacity(args.count);
    let mut truth = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let user = Generator::user(args.seed, i as u64 % args.users.max(1));
        let payment = generator.payment(&user, now_ms);
        truth.push(payment.is_fraud);
        batch.push((payment.transaction, UserLookup::Found(user.features)));
    }
    let started = Instant::now();
    let decisions = scorer.decide_batch(batch, started).context("scoring")?;
    let elapsed = started.elapsed();

    println!("model {} — {} synthetic payments scored in one batch\n", scorer.model_version(), decisions.len());
    let approvals_shown = args.show.min(5);
    let shown = decisions
        .iter()
        .enumerate()
        .filter(|(i, d)| *i < approvals_shown || d.decision != Verdict::Approve)
        .take(args.show);
    for (_, d) in shown {
        println!("{}", decision_line(d));
    }
    let count = |v: Verdict| decisions.iter().filter(|d| d.decision == v).count();
    let flagged_fraud = decisions.iter().zip(&truth).filter(|(d, f)| **f && d.decision != Verdict::Approve).count();
    let fraud = truth.iter().filter(|f| **f).count();
    println!(
        "\napprove {}  review {}  block {}  |  synthetic fraud caught (review or block): {flagged_fraud} of {fraud}  |  {:.1} µs per payment",
        count(Verdict::Approve),
        count(Verdict::Review),
        count(Verdict::Block),
        elapsed.as_secs_f64() * 1e6 / decisions.len().max(1) as f64,
    );
    Ok(())
}

fn decision_line(d: &Decision) -> String {
    let top: Vec<String> =
        d.top_features.iter().map(|t| format!("{}={:.2} ({:+.2})", t.name, t.value, t.contribution)).collect();
    format!(
        "{:<16} user {:<6} {:>10.2} {:<3} {:<13} {:<7} p={:.3} risk={:<6} top: {}",
        d.transaction_id,
        d.user_id,
        d.amount,
        d.currency,
        d.payment_method.as_str(),
        d.decision.as_str(),
        d.fraud_probability,
        d.risk_level.as_str(),
        top.join(", ")
    )
}

/// `fraudctl dlq show` and `fraudctl dlq redrive`.
fn dlq(command: DlqCommand) -> Result<()> {
    use fraudctl::dlq::{Redrive, Tally, read};
    use std::ops::ControlFlow;
    match command {
        DlqCommand::Show { selection, limit, json } => {
            let mut tally = Tally::default();
            read(&selection.reader(), &selection.topic, &selection.selection(), |letter| {
                if tally.total() < limit {
                    if json {
                        println!("{}", letter.to_json());
                    } else {
                        println!("{}", letter.describe());
                    }
                }
                tally.add(letter.kind());
                ControlFlow::Continue(())
            })
            .with_context(|| format!("reading {}", selection.topic))?;
            let shown = if tally.total() > limit { format!(" ({limit} listed)") } else { String::new() };
            let count = format!("{} records in {}{}{shown}", tally.total(), selection.topic, if tally.total() > 0 { format!(": {tally}") } else { String::new() });
            if json {
                eprintln!("{count}");
            } else {
                println!("{count}");
            }
            Ok(())
        }
        DlqCommand::Redrive { selection, to_topic, dry_run } => {
            let mut redrive = Redrive::new(&selection.kafka.brokers, to_topic).context("--brokers")?;
            let mut failed = None;
            let reading = read(&selection.reader(), &selection.topic, &selection.selection(), |letter| {
                let sent = if dry_run {
                    redrive.target(&letter).map(|topic| println!("would send {} back to {topic}", letter.place()))
                } else {
                    redrive.send(&letter)
                };
                match sent {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => {
                        failed = Some(e);
                        ControlFlow::Break(())
                    }
                }
            });
            // What was handed to Kafka is acknowledged (or counted as not) before any error is
            // told, so that the error can say how many records went back.
            let by_topic = redrive.by_topic.to_string();
            // A record sent back twice is scored twice: once all of the selection went back, say
            // where the next redrive starts (not after a failure: another partition's earlier
            // records may not have been read yet).
            let resume = redrive.resume_from().map(|from| format!("; to send back only records dead-lettered later: --from {from}")).unwrap_or_default();
            let sent = redrive.finish();
            let went_back = || sent.as_ref().map_or_else(|e| e.to_string(), |n| format!("{n} records sent back before it"));
            if let Err(e) = reading {
                return Err(e).context(format!("reading {} ({})", selection.topic, went_back()));
            }
            if let Some(e) = failed {
                return Err(e).context(format!("sending records back ({})", went_back()));
            }
            let sent = sent.context("sending records back")?;
            if dry_run {
                println!("dry run: nothing sent");
            } else {
                println!("sent {sent} records back{}", if sent > 0 { format!(": {by_topic}{resume}") } else { String::new() });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_that_talks_to_kafka_checks_its_broker_list() {
        let commands: [&[&str]; 8] = [
            &["topics", "create"],
            &["dlq", "show"],
            &["dlq", "redrive"],
            &["drift", "show"],
            &["traffic"],
            &["labels", "--truth-file", "truth.jsonl"],
            &["run"],
            &["bench", "scorer"],
        ];
        for command in commands {
            let with = |brokers: &str| Cli::try_parse_from(["fraudctl"].iter().chain(command).chain(&["--brokers", brokers]));
            assert!(with("a:9092, b:9092").is_ok(), "{command:?}: {:?}", with("a:9092").err());
            let err = with(" , ").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("not a list of brokers"), "{command:?}: {err}");
        }
    }
}
