//! The Kafka clients fraudctl makes: the settings each one needs, then what the cluster needs
//! (`fraudctl --kafka-config`, `FRAUDCTL_KAFKA_CONFIG`: e.g. `security.protocol`, `sasl.*`),
//! applied last so that they win. librdkafka's log lines and errors go to fraudctl's log on
//! stderr, at most one a second of each kind (see `telemetry::kafka`).

use std::sync::OnceLock;

use rdkafka::ClientConfig;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaResult;
use telemetry::kafka::LoggingContext;

static OVERRIDES: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// Sets the overrides every client of this process gets; the first call wins (fraudctl's `main`
/// makes it, from its command line).
pub fn set_overrides(overrides: Vec<(String, String)>) {
    let _ = OVERRIDES.set(overrides);
}

/// The overrides set for this process (none unless `main` set them).
pub fn overrides() -> &'static [(String, String)] {
    OVERRIDES.get().map_or(&[], Vec::as_slice)
}

/// A client of `brokers` with `settings`, then the process's overrides.
pub fn client(brokers: &str, settings: &[(&str, &str)]) -> ClientConfig {
    with_overrides(brokers, settings, overrides())
}

/// A client of `brokers` with `settings` and the process's overrides, whose librdkafka logs and
/// errors are logged (throttled) rather than printed as they come.
pub fn create<T: FromClientConfigAndContext<LoggingContext>>(brokers: &str, settings: &[(&str, &str)]) -> KafkaResult<T> {
    client(brokers, settings).create_with_context(LoggingContext::default())
}

fn with_overrides(brokers: &str, settings: &[(&str, &str)], overrides: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    for (k, v) in overrides {
        config.set(k, v);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_come_last_and_win() {
        let overrides = [("linger.ms".to_string(), "50".to_string()), ("security.protocol".to_string(), "ssl".to_string())];
        let c = with_overrides("b:9092", &[("linger.ms", "5"), ("enable.idempotence", "true")], &overrides);
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("security.protocol"), Some("ssl"));
    }
}
