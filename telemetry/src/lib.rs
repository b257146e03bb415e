//! Telemetry start-up shared by every fraudstream service: JSON logs on stdout, OpenTelemetry
//! traces over OTLP with W3C context in Kafka and HTTP headers, the Prometheus registry and its
//! histogram buckets, the operational HTTP routes (metrics, health), and librdkafka's own logs.

pub mod config;
pub mod kafka;
pub mod logs;
pub mod metrics;
pub mod ops;
pub mod otlp;
pub mod scrub;
pub mod stall;
pub mod trace;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the log subscriber for `service`: one JSON object per line on stdout (see `logs`),
/// personal data scrubbed, filtered by `RUST_LOG` (default `info`). Later calls are no-ops, so
/// tests and binaries can both call it.
pub fn init_logging(service: &'static str) {
    install_logging(service, "info", std::io::stdout);
}

/// The same for a command whose own output is on stdout (a report): logs on stderr, warnings and
/// errors only unless `RUST_LOG` asks for more.
pub fn init_command_logging(service: &'static str) {
    install_logging(service, "warn", std::io::stderr);
}

fn install_logging<W>(service: &'static str, default_filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs::SpanFieldsLayer)
        .with(tracing_subscriber::fmt::layer().event_format(logs::JsonLines).with_writer(writer))
        .try_init();
    tracing::debug!(service, "logging started");
}

/// Sets up tracing (see [`trace::init_tracing`]) and logs what it made of the environment.
/// Keep the guard until the service stops: dropping it exports the spans still queued.
pub fn init_tracing(service: &'static str, registry: &prometheus::Registry) -> Result<trace::TracingGuard, trace::TraceConfigError> {
    let (guard, settings) = trace::init_tracing(service, registry)?;
    match &settings.endpoint {
        Some(endpoint) => tracing::info!(otlp_endpoint = %config::mask_url(endpoint), sampler = %settings.sampler, "exporting traces"),
        None => tracing::info!("traces not exported (set OTEL_EXPORTER_OTLP_ENDPOINT to export them); trace ids still propagate"),
    }
    Ok(guard)
}
