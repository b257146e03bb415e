//! Telemetry start-up shared by every fraudstream service: JSON logs on stdout, the Prometheus
//! registry and its histogram buckets, and the operational HTTP routes (metrics, health).

pub mod config;
pub mod metrics;
pub mod ops;

use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber for `service`: one object per line on stdout, filtered by
/// `RUST_LOG` (default `info`). Later calls are no-ops, so tests and binaries can both call it.
pub fn init_logging(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
    tracing::debug!(service, "logging started");
}
