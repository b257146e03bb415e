use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use fraudctl::synth::{Drift, Generator};
use schemas::{Decision, Verdict};
use scorer::{ModelCard, Scorer, UserLookup};

#[derive(Parser)]
#[command(name = "fraudctl", version, about = "Operate fraudstream: demo scoring, features, traffic")]
struct Cli {
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
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every fraudstream topic (existing ones are left alone).
    Create {
        #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 2)]
        partitions: i32,
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
        /// JSON lines: {"user_id": "42", "account_age_days": 12, "home_country": "US", ...}.
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
    match cli.command {
        Command::Score(args) => score(args),
        Command::Topics(TopicsCommand::Create { brokers, partitions }) => {
            let topics = fraudctl::topics::standard(partitions);
            runtime()?.block_on(fraudctl::topics::create(&brokers, &topics))?;
            for (t, p) in &topics {
                println!("topic {t} ({p} partitions)");
            }
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

fn score(args: ScoreArgs) -> Result<()> {
    let card = ModelCard::load(&args.model_card).context("loading the model card")?;
    let mut scorer = Scorer::from_card(card, 1).context("loading the model")?;
    let mut generator = Generator::new(args.seed, args.drift, "demo");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;

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
