//! Telemetry start-up shared by every fraudstream service: JSON logs on stdout, the Prometheus
//! registry and its histogram buckets, and the operational HTTP routes (metrics, health).

pub mod config;
pub mod logs;
pub mod metrics;
pub mod ops;
pub mod scrub;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the log subscriber for `service`: one JSON object per line on stdout (see `logs`),
/// personal data scrubbed, filtered by `RUST_LOG` (default `info`). Later calls are no-ops, so
/// tests and binaries can both call it.
pub fn init_logging(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs::SpanFieldsLayer)
        .with(tracing_subscriber::fmt::layer().event_format(logs::JsonLines).with_writer(std::io::stdout))
        .try_init();
    tracing::debug!(service, "logging started");
}
