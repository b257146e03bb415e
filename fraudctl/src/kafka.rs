//! The Kafka clients fraudctl makes: the settings each one needs, then what the cluster needs
//! (`fraudctl --kafka-config`, `FRAUDCTL_KAFKA_CONFIG`: e.g. `security.protocol`, `sasl.*`),
//! applied last so that they win. librdkafka's log lines and errors go to fraudctl's log on
//! stderr, at most one a second of each kind (see `telemetry::kafka`).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message};
use scorer::replay::{Reader, ReplayError};
use telemetry::kafka::{KafkaLogs, LoggingContext};

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

/// A reader of topics outside any consumer group (reading commits nothing), with the process's
/// overrides; it gives up when a topic sends nothing, not even its end, for `idle_timeout`.
pub fn reader(brokers: &str, idle_timeout: Duration) -> Reader {
    Reader { brokers: brokers.to_string(), kafka_overrides: overrides().to_vec(), idle_timeout, progress: false }
}

/// Calls `each` with every record of `topic` written from `from_ms` (its first record when
/// `None`) to before `to_ms`, partition by partition in offset order.
pub fn read_written(
    reader: &Reader,
    topic: &str,
    from_ms: Option<i64>,
    to_ms: i64,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
) -> Result<(), ReplayError> {
    reader.read_since(topic, from_ms, to_ms, |msg| {
        // The read runs a little past `to_ms`: the range is exact here.
        if msg.timestamp().to_millis().is_some_and(|ms| ms >= to_ms) {
            return ControlFlow::Continue(());
        }
        each(msg)
    })?;
    Ok(())
}

/// How long fraudctl's producers give a record to be acknowledged (`message.timeout.ms`, unless
/// the overrides set it): long enough for a partition's leader to move, short enough for an
/// operator to wait for.
const DELIVERY_TIMEOUT_MS: &str = "20000";

/// A producer client of `brokers` with `settings`: records get [`DELIVERY_TIMEOUT_MS`] to be
/// acknowledged (unless `settings` or the overrides say otherwise).
pub fn acked_client(brokers: &str, settings: &[(&str, &str)]) -> ClientConfig {
    client(brokers, &[&[("message.timeout.ms", DELIVERY_TIMEOUT_MS)], settings].concat())
}

/// A producer made with `config` that counts what Kafka did not acknowledge ([`Acks`]), and how
/// long a flush of it waits: longer than any record can wait, so that by its end every record was
/// acknowledged or reported failed.
pub fn acked_producer<P: FromClientConfigAndContext<Acks>>(config: &ClientConfig) -> KafkaResult<(P, Duration)> {
    Ok((config.create_with_context(Acks::default())?, flush_timeout(config)))
}

fn flush_timeout(config: &ClientConfig) -> Duration {
    let delivery = config.get("message.timeout.ms").and_then(|ms| ms.parse().ok()).map_or(Duration::from_secs(300), Duration::from_millis);
    delivery + Duration::from_secs(5)
}

/// A producer's context that counts the records Kafka did not acknowledge, with the first one's
/// reason, so that a command can say how many of those it sent did not arrive; librdkafka's own
/// lines are logged as for every fraudctl client.
#[derive(Default)]
pub struct Acks {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    logs: KafkaLogs,
}

impl Acks {
    /// How many records were not acknowledged so far, and why the first was not; `None` if all
    /// were (or are still on their way).
    pub fn failures(&self) -> Option<(u64, String)> {
        let failed = self.failed.load(Ordering::Relaxed);
        (failed > 0).then(|| (failed, self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()))
    }
}

impl ClientContext for Acks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logs.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(&error, reason);
    }
}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
        }
    }
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
