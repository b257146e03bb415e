//! The gateway's settings: each one a flag and an environment variable, with a local default.

use std::net::SocketAddr;

use telemetry::config::parse_key_value;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about = "fraudstream's HTTP API: publishes transactions to Kafka and answers with their decisions")]
pub struct GatewayArgs {
    /// Address to serve the API, /metrics and /health on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092", value_parser = telemetry::config::parse_brokers)]
    pub brokers: String,
    /// How long /v1/predict waits for the decision before answering 202 pending, in ms.
    #[arg(long, env = "DECISION_DEADLINE_MS", default_value_t = 2000)]
    pub decision_deadline_ms: u64,
    /// How long Kafka may take to acknowledge a transaction before the request fails with 503, in ms.
    #[arg(long, env = "PRODUCE_TIMEOUT_MS", default_value_t = 800, value_parser = clap::value_parser!(u64).range(10..=300_000))]
    pub produce_timeout_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(64..=16 * 1024 * 1024))]
    pub max_body_bytes: usize,
    /// How long a request's body may take to arrive once its head has, in ms; slower: 408.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub body_read_timeout_ms: u64,
    /// How long a request's head (request line and headers) may take to arrive, in ms, counted
    /// from when the connection is ready for one: the connection is closed past it. This is also
    /// how long an idle kept-alive connection stays open, so behind a load balancer that keeps
    /// idle connections to the gateway longer, set it above the balancer's idle timeout.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub header_read_timeout_ms: u64,
    /// Largest amount accepted.
    #[arg(long, env = "MAX_AMOUNT", default_value_t = 1_000_000.0, value_parser = telemetry::config::parse_positive_amount)]
    pub max_amount: f64,
    /// Most requests waiting for a decision at once; beyond it requests get 503.
    #[arg(long, env = "MAX_WAITERS", default_value_t = 20_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_waiters: usize,
    /// How many recent decisions to keep for GET /v1/decisions/{id} and duplicate detection.
    #[arg(long, env = "RECENT_DECISIONS", default_value_t = 200_000)]
    pub recent_decisions: usize,
    /// How long a fetch of the decisions reader may wait at the broker for data, in ms. Kafka
    /// answers as soon as data arrives, so this bounds only empty fetches; a larger value cuts
    /// the request rate on a broker whose fetch cost grows with the data it holds.
    #[arg(long, env = "DECISIONS_FETCH_WAIT_MS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    pub decisions_fetch_wait_ms: u32,
    /// How far back, in seconds, the decisions reader starts on start-up, so that a restarted
    /// gateway still answers retries and lookups of transactions decided shortly before (it is
    /// ready once it has caught up). 0: only decisions made from now on. On a broker that cannot
    /// look offsets up by time (the embedded test broker) it reads the topic from its start.
    #[arg(long, env = "DECISIONS_RECALL_SECONDS", default_value_t = 300)]
    pub decisions_recall_seconds: u64,
    /// Warn when a partition of decisions has records waiting this long, in seconds, without the
    /// reader fetching any (checked at each librdkafka statistics report, every 5 s).
    #[arg(long, env = "KAFKA_STALL_AFTER_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_after_s: u64,
    /// Extra librdkafka settings for both clients, `key=value`, repeatable (env: comma-separated).
    #[arg(long = "kafka-config", env = "GATEWAY_KAFKA_CONFIG", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_config: Vec<(String, String)>,
    #[arg(long, env = "TRANSACTIONS_TOPIC", default_value = schemas::topics::TRANSACTIONS)]
    pub transactions_topic: String,
    #[arg(long, env = "DECISIONS_TOPIC", default_value = schemas::topics::DECISIONS)]
    pub decisions_topic: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn an_amount_limit_that_is_not_positive_is_refused_naming_the_setting() {
        assert_eq!(GatewayArgs::try_parse_from(["gateway", "--max-amount", "500"]).unwrap().max_amount, 500.0);
        for bad in ["0", "NaN"] {
            let err = GatewayArgs::try_parse_from(["gateway", "--max-amount", bad]).unwrap_err().to_string();
            assert!(err.contains("--max-amount") && err.contains("not a positive amount"), "{err}");
        }
    }

    #[test]
    fn the_head_deadline_defaults_to_ten_seconds_and_is_bounded() {
        assert_eq!(GatewayArgs::try_parse_from(["gateway"]).unwrap().header_read_timeout_ms, 10_000);
        assert_eq!(GatewayArgs::try_parse_from(["gateway", "--header-read-timeout-ms", "75000"]).unwrap().header_read_timeout_ms, 75_000);
        // No client could send a head in time: every request refused.
        let err = GatewayArgs::try_parse_from(["gateway", "--header-read-timeout-ms", "0"]).unwrap_err().to_string();
        assert!(err.contains("--header-read-timeout-ms"), "{err}");
    }

    #[test]
    fn limits_that_would_refuse_every_request_are_refused_at_start() {
        // No body fits in 0 bytes, and no request may wait with 0 waiters: every prediction would
        // be refused.
        for (flag, bad) in [("--max-body-bytes", "0"), ("--max-waiters", "0")] {
            let err = GatewayArgs::try_parse_from(["gateway", flag, bad]).unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        let err = GatewayArgs::try_parse_from(["gateway", "--brokers", ""]).unwrap_err().to_string();
        assert!(err.contains("--brokers") && err.contains("not a list of brokers"), "{err}");
        let a = GatewayArgs::try_parse_from(["gateway", "--max-body-bytes", "1024", "--max-waiters", "5"]).unwrap();
        assert_eq!((a.max_body_bytes, a.max_waiters), (1024, 5));
    }
}
