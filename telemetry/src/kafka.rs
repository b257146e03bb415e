//! librdkafka's own log lines and error events in the service's logs.
//!
//! librdkafka reports trouble it handles itself — a broker connection refused or lost, a request
//! timed out, all brokers down — through its log callback and its error events, not through the
//! calls the services make. These go to the JSON logs with target `librdkafka`, so that an operator
//! sees why a service is slow or not ready. While a broker is down the same failure comes many
//! times a second (from every client of the process), so each client writes at most one log line
//! a second per librdkafka facility and one error event a second per error code, with how many of
//! that kind were left out: a second trouble starting meanwhile still gets its line.

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::logs::KeyedThrottle;
use crate::stall::Stalls;

/// The throttled log lines (per facility) and error events (per error code) of one librdkafka
/// client.
#[derive(Debug)]
pub struct KafkaLogs {
    lines: KeyedThrottle,
    errors: KeyedThrottle,
}

impl Default for KafkaLogs {
    fn default() -> Self {
        Self { lines: KeyedThrottle::per_second(), errors: KeyedThrottle::per_second() }
    }
}

impl KafkaLogs {
    /// A log line from librdkafka (`facility` is its subsystem, e.g. `FAIL`, `REQTMOUT`).
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // Debug lines (the `debug` setting) are for someone who asked for them: never held back.
        // The services give one list of Kafka overrides to their producer and their consumer
        // alike, so each client saying it ignores the other's properties is expected: debug too.
        let other_role = facility == "CONFWARN" && message.contains(" property and will be ignored by this ");
        if matches!(level, RDKafkaLogLevel::Debug) || other_role {
            tracing::debug!(target: "librdkafka", facility, "{message}");
            return;
        }
        let Some(suppressed) = self.lines.allow(facility) else { return };
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, suppressed, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, suppressed, "{message}"),
            _ => tracing::info!(target: "librdkafka", facility, suppressed, "{message}"),
        }
    }

    /// An error event: something the client will retry or recover from on its own, or a fatal
    /// error (which the calls the service makes then return as well).
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        // A consumer asked to be told when it reaches the end of a partition: news, not trouble.
        if code == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        let kind = code.map_or_else(|| "other".to_string(), |c| format!("{c:?}"));
        if let Some(suppressed) = self.errors.allow(&kind) {
            tracing::warn!(target: "librdkafka", %error, suppressed, "{reason}");
        }
    }
}

/// A client context that sends librdkafka's logs and errors to the service's logs and, for a
/// consumer built [`LoggingContext::watching`] its partitions, feeds its statistics to stall
/// detection; for clients that need nothing else from their context.
#[derive(Debug, Default)]
pub struct LoggingContext {
    logs: KafkaLogs,
    stalls: Option<Stalls>,
}

impl LoggingContext {
    /// A consumer's context that also watches its partitions for stalls: its poll loop calls
    /// [`LoggingContext::check_stalls`].
    pub fn watching(stalls: Stalls) -> Self {
        Self { logs: KafkaLogs::default(), stalls: Some(stalls) }
    }

    /// See [`Stalls::check`]; nothing for a context that does not watch.
    pub fn check_stalls(&self, consumer: &BaseConsumer<Self>) {
        if let Some(stalls) = &self.stalls {
            stalls.check(consumer);
        }
    }
}

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logs.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(&error, reason);
    }

    /// Statistics feed stall detection where there is one, and are not used otherwise (if
    /// `statistics.interval.ms` is among a service's overrides; rdkafka would log each report
    /// whole).
    fn stats_raw(&self, statistics: &[u8]) {
        let Some(stalls) = &self.stalls else { return };
        match serde_json::from_slice::<rdkafka::Statistics>(statistics) {
            Ok(stats) => stalls.on_stats(&stats),
            Err(e) => tracing::debug!(target: "kafka", error = %e, "unreadable librdkafka statistics"),
        }
    }
}

impl ConsumerContext for LoggingContext {}

/// `consumer.fetch_metadata(topic, timeout)` for a consumer that may not have been polled yet
/// (nothing assigned): when it fails, the events librdkafka queued meanwhile — its log lines and
/// error events, which reach the context (and so the logs) only when the consumer is polled —
/// are served first, so that why (a broker refusing connections, say) is logged. Otherwise it
/// would be only if dropping the consumer happened to serve them.
pub fn fetch_metadata<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: Option<&str>, timeout: Duration) -> KafkaResult<Metadata> {
    consumer.fetch_metadata(topic, timeout).inspect_err(|_| serve_queued_events(consumer, Duration::from_millis(100)))
}

/// Polls `consumer` for `within`, serving its queued events. Only for a consumer with nothing
/// assigned: a record polled here would be skipped.
fn serve_queued_events<C: ConsumerContext>(consumer: &BaseConsumer<C>, within: Duration) {
    let until = Instant::now() + within;
    while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        // Error events come back as `Some(Err)` after reaching the context; log lines do not.
        let _ = consumer.poll(left);
    }
}

/// Delivery reports are left to the caller (a `FutureProducer`'s futures, or nothing).
impl ProducerContext for LoggingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_one_line_a_second_and_expected_notices_are_not_warnings() {
        let logs = KafkaLogs::default();
        let lines = crate::logs::tests::capture(|| {
            // First, so that only its own filter can keep it out.
            logs.error(&KafkaError::Global(RDKafkaErrorCode::PartitionEOF), "Fetch from broker 111 reached end of partition at offset 0");
            for i in 0..100 {
                logs.log(RDKafkaLogLevel::Error, "FAIL", "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused");
                logs.error(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
                // Another trouble in the same second, amid the first one's repeats.
                if i == 50 {
                    logs.log(RDKafkaLogLevel::Warning, "REQTMOUT", "127.0.0.1:9092/111: Timed out ProduceRequest in flight (after 800ms, timeout #0)");
                    logs.error(&KafkaError::Global(RDKafkaErrorCode::MessageTimedOut), "1 message timed out");
                }
            }
            for i in 0..3 {
                logs.log(RDKafkaLogLevel::Debug, "FETCH", &format!("fetch {i}"));
            }
            logs.log(RDKafkaLogLevel::Warning, "CONFWARN", "[thrd:app]: Configuration property fetch.wait.max.ms is a consumer property and will be ignored by this producer instance");
        });
        let of = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
        assert_eq!(of("Connection refused"), 1, "{lines:#?}");
        assert_eq!(of("brokers are down"), 1, "{lines:#?}");
        assert_eq!(of("Timed out ProduceRequest"), 1, "{lines:#?}");
        assert_eq!(of("message timed out"), 1, "{lines:#?}");
        assert_eq!(of("\"fetch "), 3, "{lines:#?}");
        assert_eq!(of("end of partition"), 0, "{lines:#?}");
        let ignored: Vec<&String> = lines.iter().filter(|l| l.contains("will be ignored")).collect();
        assert!(ignored.len() == 1 && ignored[0].contains("\"level\":\"DEBUG\""), "{lines:#?}");
        assert!(lines.iter().all(|l| l.contains("\"target\":\"librdkafka\"")), "{lines:#?}");
    }
}
