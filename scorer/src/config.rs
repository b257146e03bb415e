//! The scorer's settings: each one a flag and an environment variable, with a local default.
//! Settings that the scoring service and `scorer replay` share are declared once, in groups.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::card::ModelCard;
use crate::pipeline::{Delivery, Work};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "scorer",
    version,
    about = "Scores transactions from Kafka: features from Redis, ONNX model, rules, explanations",
    args_conflicts_with_subcommands = true
)]
pub struct ScorerArgs {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group shared by all scorers.
    #[arg(long, env = "SCORER_GROUP_ID", default_value = "fraudstream-scorer")]
    pub group_id: String,
    /// Kafka transactional id; unique per scorer instance and stable across its restarts.
    /// Default: `fraudstream-scorer-<hostname>`.
    #[arg(long, env = "SCORER_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
    /// exactly-once (Kafka transactions) or at-least-once.
    #[arg(long, env = "SCORER_DELIVERY", value_enum, default_value_t = Delivery::ExactlyOnce)]
    pub delivery: Delivery,
    /// `passthrough` forwards records unscored, `fan-out` forwards each to both output topics
    /// (benchmark yardsticks for the same loop).
    #[arg(long, env = "SCORER_WORK", value_enum, default_value_t = Work::Score, hide = true)]
    pub work: Work,
    #[command(flatten)]
    pub store: StoreArgs,
    /// After a feature store failure, score on defaults for this long before trying again, in ms.
    #[arg(long, env = "REDIS_BACKOFF_MS", default_value_t = 500)]
    pub redis_backoff_ms: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Most records per poll batch (one feature store round trip and one model call each).
    #[arg(long, env = "SCORER_MAX_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,
    /// How many decided transactions (their ids and payments, ~50 bytes each) the scorer remembers,
    /// so that a record of one it decided already gets no second business event.
    #[arg(long, env = "SCORER_REPEAT_WINDOW", default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..=20_000_000))]
    pub repeat_window: u32,
    /// On start, re-read this many seconds of `decisions` (by record time) into the repeat
    /// window, so that a restarted scorer still knows the transactions decided shortly before: a
    /// retry of one gets its decision but no second business event. 0: start with an empty
    /// window.
    #[arg(long, env = "SCORER_REPEAT_RECALL_SECONDS", default_value_t = 300)]
    pub repeat_recall_seconds: u64,
    /// Warn when a partition's records wait this long, in seconds, without the scorer fetching or
    /// taking any of them (checked at each librdkafka statistics report, every 5 s).
    #[arg(long, env = "KAFKA_STALL_AFTER_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_after_s: u64,
    /// Consumer group session timeout, in ms.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u32,
    /// Address of /metrics and /health.
    #[arg(long, env = "SCORER_LISTEN", default_value = "0.0.0.0:9101")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub topics: InputTopics,
    #[arg(long, env = "BUSINESS_EVENTS_TOPIC", default_value = schemas::topics::BUSINESS_EVENTS)]
    pub business_events_topic: String,
    #[arg(long, env = "DLQ_TOPIC", default_value = schemas::topics::TRANSACTIONS_DLQ)]
    pub dlq_topic: String,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Backtest: replays a time range of `transactions` through a candidate model beside the
    /// baseline (`--model-card`, the model in production), on the features each transaction was
    /// decided with, and reports how the decisions change and how each model does against the
    /// labels. Writes nothing to Kafka.
    Replay(ReplayArgs),
}

/// Where Kafka is.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092", value_parser = telemetry::config::parse_brokers)]
    pub brokers: String,
    /// Extra librdkafka settings for every Kafka client, `key=value`, repeatable (env: comma-separated).
    #[arg(long = "kafka-config", env = "SCORER_KAFKA_CONFIG", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_config: Vec<(String, String)>,
}

/// The feature store.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Feature store.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Prefix of each user's feature hash key.
    #[arg(long, env = "FEATURE_KEY_PREFIX", default_value = "features:user:")]
    pub feature_key_prefix: String,
    /// Bound on connecting to and each round trip with the feature store, in ms.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,
}

/// The model and the rules around it.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model card; the ONNX model is read from beside it.
    #[arg(long, env = "MODEL_CARD", default_value_os_t = ModelCard::bundled_path())]
    pub model_card: PathBuf,
    /// ONNX Runtime threads per model call.
    #[arg(long, env = "MODEL_INTRA_THREADS", default_value_t = 1)]
    pub model_intra_threads: usize,
    /// Largest amount accepted; larger ones go to the dead-letter topic.
    #[arg(long, env = "MAX_AMOUNT", default_value_t = 1_000_000.0, value_parser = telemetry::config::parse_positive_amount)]
    pub max_amount: f64,
    /// Amounts above this, in USD (other currencies converted at their reference rate), are
    /// reviewed rather than approved, whatever the score.
    #[arg(long, env = "REVIEW_ABOVE_AMOUNT", default_value_t = 10_000.0)]
    pub review_above_amount: f64,
}

/// The model cards whose decisions the drift job monitors, as it and `fraudctl drift show` take
/// them.
#[derive(Debug, Clone, clap::Args)]
pub struct MonitoredCards {
    /// Model cards whose decisions are monitored (repeatable; env: comma-separated).
    #[arg(long = "model-card", env = "MODEL_CARDS", value_delimiter = ',', default_values_os_t = vec![ModelCard::bundled_path()])]
    pub model_cards: Vec<PathBuf>,
}

impl MonitoredCards {
    /// Every card, in the order given; the first that cannot be read fails, named with its flag.
    pub fn load(&self) -> anyhow::Result<Vec<ModelCard>> {
        use anyhow::Context as _;
        self.model_cards.iter().map(|path| ModelCard::load(path).with_context(|| format!("--model-card {}", path.display()))).collect()
    }
}

/// The topics the scorer reads and writes decisions to.
#[derive(Debug, Clone, clap::Args)]
pub struct InputTopics {
    #[arg(long, env = "TRANSACTIONS_TOPIC", default_value = schemas::topics::TRANSACTIONS)]
    pub transactions_topic: String,
    #[arg(long, env = "DECISIONS_TOPIC", default_value = schemas::topics::DECISIONS)]
    pub decisions_topic: String,
}

/// `scorer replay`'s settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Model card of the candidate; its ONNX model is read from beside it.
    #[arg(long, env = "REPLAY_CANDIDATE_CARD")]
    pub candidate_card: PathBuf,
    /// Start of the range (when the records were written to the topic, inclusive): RFC 3339
    /// (`2026-11-26T09:00:00Z`) or an age (`90m`, `6h`, `7d`). Default: the oldest record kept.
    #[arg(long, env = "REPLAY_FROM", value_parser = parse_instant)]
    pub from: Option<i64>,
    /// End of the range (exclusive), written as `--from`. Default: when the replay starts.
    #[arg(long, env = "REPLAY_TO", value_parser = parse_instant)]
    pub to: Option<i64>,
    /// Write the whole report as JSON to this file.
    #[arg(long, env = "REPLAY_REPORT")]
    pub report: Option<PathBuf>,
    /// Write one JSON line per replayed transaction to this file: its recorded decision, both
    /// models' probability and verdict, where its features came from, its label.
    #[arg(long, env = "REPLAY_OUTPUT")]
    pub output: Option<PathBuf>,
    /// How many changed decisions the report lists (largest change in probability first, then
    /// largest amount).
    #[arg(long, env = "REPLAY_EXAMPLES", default_value_t = 10)]
    pub examples: usize,
    /// Refuse a range of more transactions than this: what is joined to each (its recorded
    /// decision and label) is held in memory, about 0.4 KiB.
    #[arg(long, env = "REPLAY_MAX_TRANSACTIONS", default_value_t = 5_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_transactions: u64,
    /// Replay this share of the range's transactions (0 < share ≤ 1), chosen by transaction id:
    /// the same ones on every replay, so that two candidates backtested with one share meet the
    /// same transactions. For ranges too large to hold (`--max-transactions`).
    #[arg(long, env = "REPLAY_SAMPLE", default_value_t = 1.0, value_parser = parse_share)]
    pub sample: f64,
    /// Give up on a topic whose partitions send nothing for this long, in seconds.
    #[arg(long, env = "REPLAY_IDLE_TIMEOUT_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_s: u64,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub topics: InputTopics,
    #[arg(long, env = "LABELS_TOPIC", default_value = schemas::topics::LABELS)]
    pub labels_topic: String,
}

/// A share of a whole: a number above 0 and at most 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("`{s}` is not a share above 0 and at most 1 (0.1 replays a tenth)")),
    }
}

/// An instant as milliseconds since the Unix epoch: RFC 3339, or an age before now written as a
/// whole number and a unit (`s`, `m`, `h`, `d`).
pub fn parse_instant(s: &str) -> Result<i64, String> {
    parse_instant_at(s, schemas::now_millis())
}

fn parse_instant_at(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let unit_ms = match s.chars().last() {
        Some('s') => 1_000,
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => 86_400_000,
        _ => 0,
    };
    match s[..s.len().saturating_sub(1)].parse::<u32>() {
        Ok(n) if unit_ms > 0 => Ok(now_ms - i64::from(n) * unit_ms),
        _ => Err(format!("`{s}` is neither an RFC 3339 time (2026-11-26T09:00:00Z) nor an age such as 90m, 6h or 7d")),
    }
}

pub use telemetry::config::{hostname, mask_url, parse_key_value};

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_parse_and_invalid_values_name_the_setting() {
        let a = ScorerArgs::try_parse_from(["scorer", "--delivery", "at-least-once", "--kafka-config", "a=1", "--kafka-config", "b = 2"]).unwrap();
        assert_eq!(a.delivery, Delivery::AtLeastOnce);
        assert_eq!(a.kafka.kafka_config, [("a".into(), "1".into()), ("b".into(), "2".into())]);
        let err = ScorerArgs::try_parse_from(["scorer", "--max-batch", "0"]).unwrap_err().to_string();
        assert!(err.contains("--max-batch"), "{err}");
        let err = ScorerArgs::try_parse_from(["scorer", "--repeat-window", "0"]).unwrap_err().to_string();
        assert!(err.contains("--repeat-window"), "{err}");
        assert_eq!(ScorerArgs::try_parse_from(["scorer"]).unwrap().repeat_window, 200_000);
        // A zero timeout would make every feature store read fail: every decision degraded.
        let err = ScorerArgs::try_parse_from(["scorer", "--redis-timeout-ms", "0"]).unwrap_err().to_string();
        assert!(err.contains("--redis-timeout-ms"), "{err}");
        let err = ScorerArgs::try_parse_from(["scorer", "--kafka-config", "oops"]).unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
    }

    #[test]
    fn shares_are_above_zero_and_at_most_one() {
        assert_eq!(parse_share("0.1"), Ok(0.1));
        assert_eq!(parse_share(" 1 "), Ok(1.0));
        for bad in ["0", "-0.5", "1.01", "10%", "NaN", "inf", ""] {
            assert!(parse_share(bad).unwrap_err().contains("not a share above 0 and at most 1"), "{bad}");
        }
    }

    #[test]
    fn instants_are_rfc3339_or_an_age() {
        let now = 1_764_151_200_000; // 2025-11-26T10:00:00Z
        assert_eq!(parse_instant_at("2025-11-26T09:00:00Z", now), Ok(now - 3_600_000));
        assert_eq!(parse_instant_at("2025-11-26T10:00:00+01:00", now), Ok(now - 3_600_000));
        assert_eq!(parse_instant_at("90m", now), Ok(now - 90 * 60_000));
        assert_eq!(parse_instant_at("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_instant_at("30s", now), Ok(now - 30_000));
        for bad in ["", "h", "5w", "-3h", "yesterday", "2025-11-26"] {
            let err = parse_instant_at(bad, now).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn replay_is_a_subcommand_with_its_own_flags() {
        let a = ScorerArgs::try_parse_from(["scorer", "replay", "--candidate-card", "c.json", "--from", "2h", "--brokers", "b:1", "--labels-topic", "l"]).unwrap();
        let Some(Command::Replay(r)) = a.command else { panic!("no replay") };
        assert_eq!((r.kafka.brokers.as_str(), r.labels_topic.as_str()), ("b:1", "l"));
        assert!(r.from.is_some() && r.to.is_none());
        let err = ScorerArgs::try_parse_from(["scorer", "replay", "--candidate-card", "c.json", "--from", "soon"]).unwrap_err().to_string();
        assert!(err.contains("--from"), "{err}");
        let err = ScorerArgs::try_parse_from(["scorer", "replay"]).unwrap_err().to_string();
        assert!(err.contains("--candidate-card"), "{err}");
        let err = ScorerArgs::try_parse_from(["scorer", "--max-amount", "0"]).unwrap_err().to_string();
        assert!(err.contains("--max-amount"), "{err}");
        assert!(ScorerArgs::try_parse_from(["scorer", "--group-id", "g"]).unwrap().command.is_none());
    }
}
