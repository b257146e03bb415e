//! The scorer's settings: each one a flag and an environment variable, with a local default.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::card::ModelCard;
use crate::pipeline::{Delivery, Work};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "scorer", version, about = "Scores transactions from Kafka: features from Redis, ONNX model, rules, explanations")]
pub struct ScorerArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
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
    /// Feature store.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Prefix of each user's feature hash key.
    #[arg(long, env = "FEATURE_KEY_PREFIX", default_value = "features:user:")]
    pub feature_key_prefix: String,
    /// Bound on connecting to and each round trip with the feature store, in ms.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 50)]
    pub redis_timeout_ms: u64,
    /// After a feature store failure, score on defaults for this long before trying again, in ms.
    #[arg(long, env = "REDIS_BACKOFF_MS", default_value_t = 500)]
    pub redis_backoff_ms: u64,
    /// Model card; the ONNX model is read from beside it.
    #[arg(long, env = "MODEL_CARD", default_value_os_t = ModelCard::bundled_path())]
    pub model_card: PathBuf,
    /// ONNX Runtime threads per model call.
    #[arg(long, env = "MODEL_INTRA_THREADS", default_value_t = 1)]
    pub model_intra_threads: usize,
    /// Most records per poll batch (one feature store round trip and one model call each).
    #[arg(long, env = "SCORER_MAX_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,
    /// How many decided transactions (their ids and payments, ~50 bytes each) the scorer remembers,
    /// so that a record of one it decided already gets no second business event.
    #[arg(long, env = "SCORER_REPEAT_WINDOW", default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..=20_000_000))]
    pub repeat_window: u32,
    /// Largest amount accepted; larger ones go to the dead-letter topic.
    #[arg(long, env = "MAX_AMOUNT", default_value_t = 1_000_000.0)]
    pub max_amount: f64,
    /// Amounts above this are reviewed rather than approved, whatever the score.
    #[arg(long, env = "REVIEW_ABOVE_AMOUNT", default_value_t = 10_000.0)]
    pub review_above_amount: f64,
    /// Warn when a partition's records wait this long, in seconds, without the scorer fetching or
    /// taking any of them (checked at each librdkafka statistics report, every 5 s).
    #[arg(long, env = "KAFKA_STALL_AFTER_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_after_s: u64,
    /// Consumer group session timeout, in ms.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u32,
    /// Extra librdkafka settings for both clients, `key=value`, repeatable (env: comma-separated).
    #[arg(long = "kafka-config", env = "SCORER_KAFKA_CONFIG", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_config: Vec<(String, String)>,
    /// Address of /metrics and /health.
    #[arg(long, env = "SCORER_LISTEN", default_value = "0.0.0.0:9101")]
    pub listen: SocketAddr,
    #[arg(long, env = "TRANSACTIONS_TOPIC", default_value = schemas::topics::TRANSACTIONS)]
    pub transactions_topic: String,
    #[arg(long, env = "DECISIONS_TOPIC", default_value = schemas::topics::DECISIONS)]
    pub decisions_topic: String,
    #[arg(long, env = "BUSINESS_EVENTS_TOPIC", default_value = schemas::topics::BUSINESS_EVENTS)]
    pub business_events_topic: String,
    #[arg(long, env = "DLQ_TOPIC", default_value = schemas::topics::TRANSACTIONS_DLQ)]
    pub dlq_topic: String,
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
        assert_eq!(a.kafka_config, [("a".into(), "1".into()), ("b".into(), "2".into())]);
        let err = ScorerArgs::try_parse_from(["scorer", "--max-batch", "0"]).unwrap_err().to_string();
        assert!(err.contains("--max-batch"), "{err}");
        let err = ScorerArgs::try_parse_from(["scorer", "--repeat-window", "0"]).unwrap_err().to_string();
        assert!(err.contains("--repeat-window"), "{err}");
        assert_eq!(ScorerArgs::try_parse_from(["scorer"]).unwrap().repeat_window, 200_000);
        let err = ScorerArgs::try_parse_from(["scorer", "--kafka-config", "oops"]).unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
    }
}
