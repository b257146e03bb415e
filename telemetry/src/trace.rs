//! OpenTelemetry tracing for every service: configured by the standard `OTEL_*` variables,
//! exported over OTLP/HTTP by a batch processor whose bounded queue drops (and counts) spans
//! rather than ever slowing the caller, and W3C trace context carried in Kafka record headers
//! and HTTP headers.
//!
//! Spans are made with the OpenTelemetry API directly (not through `tracing` spans); log lines
//! carry the ids of the span they belong to as fields (see [`SpanIds`]). The scorer's hot path
//! goes further: for its five spans per sampled record it keeps only their values and hands a
//! batch's worth to [`submit_spans`], and the export thread writes them into the OTLP request
//! ([`crate::otlp::EncodeSpans`]) — same sampler, queue, counters and collector as the SDK's
//! spans, at a third of the cost (BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rdkafka::message::{Header, Headers, OwnedHeaders};

pub use opentelemetry::trace::{Span, Status, Tracer};
pub use opentelemetry_sdk::trace::Span as SdkSpan;

/// The default share of new traces that are recorded (`OTEL_TRACES_SAMPLER_ARG` overrides it).
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    #[error("{var}={value:?}: {reason}")]
    Invalid { var: &'static str, value: String, reason: &'static str },
    #[error("{var}={path:?}: {reason}")]
    File { var: &'static str, path: String, reason: String },
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
}

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static SAMPLER: OnceLock<LinkedSampler> = OnceLock::new();

/// What the export path shares: the processor's gate, the exporter's pause, the hot paths'
/// "should I build spans" question and the counters.
#[derive(Debug)]
struct ExportState {
    /// Spans handed to the batch processor and not yet given to the exporter.
    queued: AtomicUsize,
    capacity: usize,
    breaker: Breaker,
    counters: ExportCounters,
}

/// After a failed export the collector counts as down for a while (1 s, doubling up to 30 s):
/// batches in that time are dropped without being encoded or sent, and hot paths stop building
/// spans, so a dead collector costs nothing. The first export after the pause tries again.
#[derive(Debug)]
struct Breaker {
    /// Times are milliseconds since `epoch` (monotonic).
    epoch: Instant,
    down_until_ms: AtomicU64,
    backoff_ms: AtomicU64,
}

impl Breaker {
    fn new() -> Self {
        Self { epoch: Instant::now(), down_until_ms: AtomicU64::new(0), backoff_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_open(&self) -> bool {
        self.now_ms() < self.down_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self) -> Duration {
        let backoff = (self.backoff_ms.load(Ordering::Relaxed) * 2).clamp(1_000, 30_000);
        self.backoff_ms.store(backoff, Ordering::Relaxed);
        self.down_until_ms.store(self.now_ms() + backoff, Ordering::Relaxed);
        Duration::from_millis(backoff)
    }

    fn succeeded(&self) {
        self.backoff_ms.store(0, Ordering::Relaxed);
    }
}

impl ExportState {
    /// Takes `n` spans off the queue for export; true (and counted as failed) while the
    /// collector is given a pause after a failure.
    fn paused(&self, n: usize) -> bool {
        self.queued.fetch_sub(n, Ordering::AcqRel);
        let paused = self.breaker.is_open();
        if paused {
            self.counters.export_failed.inc_by(n as u64);
        }
        paused
    }

    /// Counts an export of `n` spans; a failure pauses exports and is logged (throttled).
    fn settle(&self, n: usize, result: Result<(), String>, warnings: &crate::logs::Throttle) {
        match result {
            Ok(()) => {
                self.breaker.succeeded();
                self.counters.exported.inc_by(n as u64);
            }
            Err(e) => {
                let pause = self.breaker.failed();
                self.counters.export_failed.inc_by(n as u64);
                if let Some(suppressed) = warnings.allow() {
                    tracing::warn!(error = %e, spans = n, pause_ms = pause.as_millis() as u64, suppressed, "span export failed; spans are dropped until the collector answers");
                }
            }
        }
    }
}

/// The export state of the configured exporter, for the hot paths.
static EXPORT: OnceLock<Arc<ExportState>> = OnceLock::new();

/// True while spans cannot be exported: the export queue is full (the collector is silent or
/// slower than the spans come) or the collector failed and is being given a pause. Hot paths
/// check it before building spans: a span that would be dropped is not worth building, and
/// freeing thousands of them costs the hot thread more than it seems.
pub fn export_saturated() -> bool {
    EXPORT.get().is_some_and(|e| e.breaker.is_open() || e.queued.load(Ordering::Relaxed) >= e.capacity)
}

/// Whether spans are exported (an exporter is configured): only then does a sampled trace lead
/// somewhere, e.g. from a metric's exemplar.
pub fn exporting() -> bool {
    EXPORT.get().is_some()
}

/// The trace id (lowercase hex) of `sc` when that span is recorded and goes to the collector
/// (not while the export path drops spans): what an exemplar may name.
pub fn exported_trace_id(sc: &SpanContext) -> Option<String> {
    (sc.is_sampled() && sc.is_valid() && exporting() && !export_saturated()).then(|| sc.trace_id().to_string())
}

/// Counts `n` spans a hot path did not build because of [`export_saturated`], under the reason
/// that applies (`telemetry_spans_dropped_total{reason="export_failed"|"queue_full"}`).
pub fn count_unbuilt_spans(n: u64) {
    if let Some(e) = EXPORT.get() {
        if e.breaker.is_open() { e.counters.export_failed.inc_by(n) } else { e.counters.queue_full.inc_by(n) }
    }
}

/// Whether a span named `name` of `kind` is recorded and exported, as the configured sampler
/// decides for it as a child of `parent` (an empty context: a new trace, `trace_id`); for hot
/// paths that build their spans themselves ([`submit_spans`]). Without [`init_tracing`],
/// nothing new is recorded and a parent's decision is followed.
pub fn should_record(parent: &Context, trace_id: TraceId, name: &str, kind: SpanKind) -> bool {
    let span = parent.span();
    let parent_sc = span.span_context();
    match SAMPLER.get() {
        // What a parent-based sampler answers for a span with a parent, without asking it.
        Some(LinkedSampler(s)) if parent_sc.is_valid() && matches!(**s, Sampler::ParentBased(_)) => parent_sc.is_sampled(),
        Some(s) => s.should_sample(Some(parent), trace_id, name, &kind, &[], &[]).decision == SamplingDecision::RecordAndSample,
        None => parent_sc.is_sampled(),
    }
}

/// A new random trace id, for a span built without the SDK.
pub fn new_trace_id() -> TraceId {
    RandomIdGenerator::default().new_trace_id()
}

/// A new random span id, for a span built without the SDK.
pub fn new_span_id() -> SpanId {
    RandomIdGenerator::default().new_span_id()
}

/// Hands a batch of spans built without the SDK to the exporter. They share the SDK spans'
/// bounded queue and are dropped and counted (`telemetry_spans_dropped_total{reason="queue_full"}`)
/// when it is full; nothing happens when spans are not exported. A batch is admitted while the
/// queue has room, so one larger than the whole queue (every record sampled) still goes.
pub fn submit_spans(batch: Box<dyn crate::otlp::EncodeSpans>) {
    let (Some(state), Some(tx)) = (EXPORT.get(), direct::sender()) else { return };
    let n = batch.spans();
    if n == 0 {
        return;
    }
    if state.queued.fetch_add(n, Ordering::AcqRel) >= state.capacity || tx.try_send(direct::Message::Spans(batch)).is_err() {
        state.queued.fetch_sub(n, Ordering::AcqRel);
        state.counters.queue_full.inc_by(n as u64);
    }
}

/// The export thread of spans built without the SDK: batches are gathered up to
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans (default 512) or for `OTEL_BSP_SCHEDULE_DELAY` ms
/// (default 5,000), whichever comes first, and sent as one request.
mod direct {
    use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use super::{ExportState, TraceConfigError};
    use crate::otlp::{EncodeSpans, OtlpHttpExporter};

    pub(super) enum Message {
        Spans(Box<dyn EncodeSpans>),
        /// Export what is gathered now, then answer.
        Flush(mpsc::Sender<()>),
    }

    static SENDER: OnceLock<SyncSender<Message>> = OnceLock::new();

    pub(super) fn sender() -> Option<&'static SyncSender<Message>> {
        SENDER.get()
    }

    /// Starts the thread (once per process: a second call keeps the first).
    pub(super) fn start(exporter: OtlpHttpExporter, scope: &'static str, state: Arc<ExportState>) -> Result<(), TraceConfigError> {
        let (tx, rx) = mpsc::sync_channel(4096);
        if SENDER.set(tx).is_err() {
            return Ok(());
        }
        let max_batch = super::bsp_setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).max(1) as usize;
        let delay = Duration::from_millis(super::bsp_setting("OTEL_BSP_SCHEDULE_DELAY", 5_000));
        let warnings = crate::logs::Throttle::new(Duration::from_secs(30));
        let export = move |pending: &mut Vec<Box<dyn EncodeSpans>>| {
            let n: usize = pending.iter().map(|b| b.spans()).sum();
            if n > 0 && !state.paused(n) {
                state.settle(n, exporter.export_encoded(scope, pending), &warnings);
            }
            pending.clear();
        };
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let mut pending: Vec<Box<dyn EncodeSpans>> = Vec::new();
                // When the first of the pending batches came.
                let mut since = Instant::now();
                loop {
                    let wait = if pending.is_empty() { Duration::from_secs(3600) } else { delay.saturating_sub(since.elapsed()) };
                    let due = match rx.recv_timeout(wait) {
                        Ok(Message::Spans(b)) => {
                            if pending.is_empty() {
                                since = Instant::now();
                            }
                            pending.push(b);
                            pending.iter().map(|b| b.spans()).sum::<usize>() >= max_batch
                        }
                        Ok(Message::Flush(done)) => {
                            export(&mut pending);
                            let _ = done.send(());
                            false
                        }
                        Err(RecvTimeoutError::Timeout) => true,
                        Err(RecvTimeoutError::Disconnected) => return export(&mut pending),
                    };
                    if due {
                        export(&mut pending);
                    }
                }
            })
            .map_err(|e| TraceConfigError::Exporter(format!("starting the export thread: {e}")))?;
        Ok(())
    }

    /// Exports what is gathered, waiting at most `timeout` (a dead collector cannot hold up a
    /// shutdown).
    pub(super) fn flush(timeout: Duration) {
        let Some(tx) = SENDER.get() else { return };
        let (done, answered) = mpsc::channel();
        if tx.try_send(Message::Flush(done)).is_ok() {
            let _ = answered.recv_timeout(timeout);
        }
    }
}

/// A batch processor setting (`OTEL_BSP_*`), `default` when unset or not a number.
fn bsp_setting(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// The service's tracer: the one [`init_tracing`] configured, or one that records nothing (for
/// code run without it, such as benchmarks and unit tests).
pub fn tracer() -> &'static SdkTracer {
    use opentelemetry::trace::TracerProvider as _;
    TRACER.get_or_init(|| SdkTracerProvider::builder().with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))).build().tracer("fraudstream"))
}

/// Keeps the tracer provider alive; dropping it exports what is queued (bounded by a short
/// timeout, so a dead collector cannot hold up shutdown).
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        direct::flush(Duration::from_secs(2));
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown_with_timeout(Duration::from_secs(2));
        }
    }
}

/// What `init_tracing` made of the environment, for the start-up log line.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Where spans go (`None`: not exported; ids are still made and propagated).
    pub endpoint: Option<String>,
    pub sampler: String,
}

/// Spans dropped by the exporter path, by reason, and spans handed to the collector.
#[derive(Clone)]
struct ExportCounters {
    queue_full: IntCounter,
    export_failed: IntCounter,
    exported: IntCounter,
}

impl ExportCounters {
    fn register(registry: &Registry) -> Self {
        let dropped = IntCounterVec::new(
            Opts::new("telemetry_spans_dropped_total", "Spans not exported: the export queue was full, or the collector failed or timed out"),
            &["reason"],
        )
        .expect("valid metric");
        let exported = IntCounter::new("telemetry_spans_exported_total", "Spans accepted by the OTLP collector").expect("valid metric");
        // A second registration (a test calling init twice) keeps the first counters.
        let _ = registry.register(Box::new(dropped.clone()));
        let _ = registry.register(Box::new(exported.clone()));
        Self {
            queue_full: dropped.with_label_values(&["queue_full"]),
            export_failed: dropped.with_label_values(&["export_failed"]),
            exported,
        }
    }
}

/// Sets up tracing for `service` from the standard variables:
///
/// - `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the collector
///   (OTLP/HTTP, port 4318). With neither set (and `OTEL_TRACES_EXPORTER` not `otlp`) spans are
///   not exported, but trace ids are still made and propagated, so logs and responses carry them.
/// - `OTEL_EXPORTER_OTLP_PROTOCOL` / `..._TRACES_PROTOCOL`: `http/protobuf` (the one built in).
/// - `OTEL_TRACES_EXPORTER` (`otlp` | `none`), `OTEL_SDK_DISABLED`.
/// - `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`: default parent-based, 10 % of new traces.
/// - `OTEL_SERVICE_NAME` (default: `service`), `OTEL_RESOURCE_ATTRIBUTES`.
/// - `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`:
///   the batch processor; `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`, `_TIMEOUT`: the exporter
///   (see [`crate::otlp::OtlpSettings`]).
///
/// Registers the W3C trace-context propagator globally and `telemetry_spans_dropped_total` /
/// `telemetry_spans_exported_total` in `registry`.
pub fn init_tracing(service: &'static str, registry: &Registry) -> Result<(TracingGuard, TraceSettings), TraceConfigError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let counters = ExportCounters::register(registry);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());

    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let export = match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        _ if disabled => false,
        Some("none") => false,
        Some("otlp") => true,
        None => endpoint.is_some(),
        Some(other) => {
            return Err(TraceConfigError::Invalid {
                var: "OTEL_TRACES_EXPORTER",
                value: other.into(),
                reason: "supported: otlp, none",
            });
        }
    };
    // The signal-specific variable wins over the general one.
    if let Some((var, p)) = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"].into_iter().find_map(|v| env(v).map(|p| (v, p)))
        && p.trim() != "http/protobuf"
    {
        return Err(TraceConfigError::Invalid { var, value: p, reason: "this build exports OTLP over http/protobuf (collector port 4318)" });
    }

    let (sampler, sampler_text) = if export {
        sampler_from(env("OTEL_TRACES_SAMPLER").as_deref(), env("OTEL_TRACES_SAMPLER_ARG").as_deref())?
    } else {
        // Nothing new is recorded, but a caller's sampled flag passes on to whoever exports.
        (Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), "parentbased_always_off (not exporting)".to_string())
    };

    let mut resource = Resource::builder().with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    if !env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.instance.id=")) {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", format!("{}-{}", crate::config::hostname(), std::process::id())));
    }
    let resource = resource.build();
    let sampler = LinkedSampler(Box::new(sampler));
    let _ = SAMPLER.set(sampler.clone());
    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone()).with_sampler(sampler);
    let mut exporting_to = None;
    if export {
        let otlp = crate::otlp::OtlpSettings::from_env(env)?;
        exporting_to = Some(otlp.url.clone());
        let exporter = crate::otlp::OtlpHttpExporter::new(otlp)?;
        let processor = DroppingProcessor::new(exporter.clone(), counters);
        processor.publish();
        if let Some(state) = EXPORT.get() {
            direct::start(exporter.with_resource(&resource), service, state.clone())?;
        }
        builder = builder.with_span_processor(processor);
    }
    let provider = builder.build();
    {
        use opentelemetry::trace::TracerProvider as _;
        // A second call (tests) keeps the first tracer; the provider it belongs to stays alive.
        let _ = TRACER.set(provider.tracer(service));
    }
    opentelemetry::global::set_tracer_provider(provider.clone());
    let settings = TraceSettings {
        endpoint: exporting_to,
        sampler: sampler_text,
    };
    Ok((TracingGuard { provider: Some(provider) }, settings))
}

/// The sampler named by `OTEL_TRACES_SAMPLER` (default: parent-based, [`DEFAULT_SAMPLE_RATIO`]).
fn sampler_from(name: Option<&str>, arg: Option<&str>) -> Result<(Sampler, String), TraceConfigError> {
    let ratio = |default: f64| -> Result<f64, TraceConfigError> {
        match arg {
            None => Ok(default),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or(TraceConfigError::Invalid { var: "OTEL_TRACES_SAMPLER_ARG", value: a.into(), reason: "must be a number from 0 to 1" }),
        }
    };
    let name = name.map(str::trim).unwrap_or("parentbased_traceidratio");
    let default_ratio = if arg.is_none() && name == "parentbased_traceidratio" { DEFAULT_SAMPLE_RATIO } else { 1.0 };
    let sampler = match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio(1.0)?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio(default_ratio)?))),
        other => {
            return Err(TraceConfigError::Invalid {
                var: "OTEL_TRACES_SAMPLER",
                value: other.into(),
                reason: "supported: always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
            });
        }
    };
    let text = match name {
        "traceidratio" | "parentbased_traceidratio" => format!("{name} {}", ratio(default_ratio)?),
        _ => name.to_string(),
    };
    Ok((sampler, text))
}

/// Records a new root span when it links to a sampled span, otherwise defers to the configured
/// sampler: a batch span linked from sampled messages is kept whenever they are, so the links
/// from their traces always lead somewhere.
#[derive(Debug, Clone)]
struct LinkedSampler(Box<Sampler>);

impl ShouldSample for LinkedSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let has_parent = parent_context.is_some_and(|cx| cx.span().span_context().is_valid());
        if !has_parent && links.iter().any(|l| l.span_context.is_sampled()) {
            return SamplingResult { decision: SamplingDecision::RecordAndSample, attributes: Vec::new(), trace_state: TraceState::default() };
        }
        self.0.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// The SDK's batch processor behind a gate that keeps its queue bounded and counts what does not
/// fit: `on_end` never blocks, and every span is either exported or counted as dropped.
#[derive(Debug)]
struct DroppingProcessor {
    inner: BatchSpanProcessor,
    state: Arc<ExportState>,
}

impl std::fmt::Debug for ExportCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportCounters").finish_non_exhaustive()
    }
}

impl DroppingProcessor {
    fn new<E: SpanExporter + 'static>(exporter: E, counters: ExportCounters) -> Self {
        let capacity = bsp_setting("OTEL_BSP_MAX_QUEUE_SIZE", 2048).max(1) as usize;
        let state = Arc::new(ExportState { queued: AtomicUsize::new(0), capacity, breaker: Breaker::new(), counters });
        let exporter = CountingExporter { inner: exporter, state: state.clone(), warnings: crate::logs::Throttle::new(Duration::from_secs(30)) };
        // The gate admits at most `capacity` spans, so the SDK's own queue never overflows.
        let config = BatchConfigBuilder::default().with_max_queue_size(capacity).build();
        Self { inner: BatchSpanProcessor::new(exporter, config), state }
    }

    /// Makes this processor's export state the one [`export_saturated`] reports on.
    fn publish(&self) {
        let _ = EXPORT.set(self.state.clone());
    }
}

impl SpanProcessor for DroppingProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let s = &self.state;
        if s.queued.fetch_add(1, Ordering::AcqRel) >= s.capacity {
            s.queued.fetch_sub(1, Ordering::AcqRel);
            s.counters.queue_full.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    state: Arc<ExportState>,
    warnings: crate::logs::Throttle,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        if self.state.paused(n) {
            return Err(OTelSdkError::InternalFailure("collector paused after a failed export".into()));
        }
        let result = self.inner.export(batch).await;
        self.state.settle(n, result.as_ref().copied().map_err(ToString::to_string), &self.warnings);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span's ids as log fields (lowercase hex, as in `traceparent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: String,
    pub span_id: String,
}

impl SpanIds {
    pub fn of(sc: &SpanContext) -> Self {
        Self { trace_id: sc.trace_id().to_string(), span_id: sc.span_id().to_string() }
    }
}

/// Kafka record headers as the propagator reads them: the first header of a name, any case.
struct KafkaExtractor<'a, H>(&'a H);

impl<H: Headers> Extractor for KafkaExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|h| h.key.eq_ignore_ascii_case(key)).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// The trace context in Kafka record headers (`traceparent`, `tracestate`); a missing or
/// malformed header gives an empty context, so the record starts a new trace.
pub fn extract_from_kafka<H: Headers>(headers: Option<&H>) -> Context {
    let Some(h) = headers else { return Context::new() };
    let extractor = KafkaExtractor(h);
    // The common case — a version-00 traceparent as this project and most SDKs write it — is read
    // directly: the propagator's lookups and string splitting cost a microsecond per record.
    // Anything else goes to the propagator, which decides exactly as before.
    if let Some(sc) = extractor.get("traceparent").and_then(|tp| parse_traceparent_00(tp, extractor.get("tracestate"))) {
        return Context::current().with_remote_span_context(sc);
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&extractor))
}

/// A remote span context from a `traceparent` of exactly the form
/// `00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase hex>` with non-zero ids; `None` for
/// anything else, including values the W3C propagator would accept in another spelling. Flags
/// other than `sampled` are dropped and `tracestate` is read as the propagator does (an invalid one
/// is dropped too).
fn parse_traceparent_00(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    fn hex(bytes: &[u8]) -> Option<u128> {
        bytes.iter().try_fold(0u128, |acc, &b| {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            Some(acc << 4 | u128::from(digit))
        })
    }
    let tp = traceparent.as_bytes();
    if tp.len() != 55 || &tp[..3] != b"00-" || tp[35] != b'-' || tp[52] != b'-' {
        return None;
    }
    let trace_id = hex(&tp[3..35]).filter(|&id| id != 0)?;
    let span_id = hex(&tp[36..52]).filter(|&id| id != 0)?;
    let flags = hex(&tp[53..55])?;
    let state = tracestate.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
    Some(SpanContext::new(
        TraceId::from(trace_id),
        opentelemetry::trace::SpanId::from(span_id as u64),
        TraceFlags::new(flags as u8) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// Kafka record headers carrying `sc` (`traceparent`, and `tracestate` when it has entries),
/// exactly as the W3C propagator writes them; none for an invalid context. Written directly
/// rather than through the propagator's string map: this runs for every record the scorer
/// produces, sampled or not.
pub fn kafka_headers(sc: &SpanContext) -> OwnedHeaders {
    if !sc.is_valid() {
        return OwnedHeaders::new();
    }
    let state = sc.trace_state().header();
    let headers = OwnedHeaders::new_with_capacity(1 + usize::from(!state.is_empty()))
        .insert(Header { key: "traceparent", value: Some(&traceparent(sc)[..]) });
    if state.is_empty() { headers } else { headers.insert(Header { key: "tracestate", value: Some(state.as_bytes()) }) }
}

/// `00-<trace id>-<span id>-<flags>` in lowercase hex: a `traceparent` (or, for an HTTP
/// response, `traceresponse`) value for `sc`.
pub fn traceparent(sc: &SpanContext) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    };
    put(3, &sc.trace_id().to_bytes());
    put(36, &sc.span_id().to_bytes());
    put(53, &[sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()]);
    out
}

/// The trace context of an HTTP request's headers (empty when absent or malformed).
pub fn extract_from_http(headers: &axum::http::HeaderMap) -> Context {
    struct HttpExtractor<'a>(&'a axum::http::HeaderMap);
    impl Extractor for HttpExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpExtractor(headers)))
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::SpanId;
    use rdkafka::message::OwnedHeaders;

    use super::*;

    fn sc(sampled: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() },
            true,
            TraceState::default(),
        )
    }

    fn as_map(h: &OwnedHeaders) -> std::collections::HashMap<String, String> {
        h.iter().map(|x| (x.key.to_string(), String::from_utf8(x.value.unwrap().to_vec()).unwrap())).collect()
    }

    #[test]
    fn kafka_headers_are_what_the_w3c_propagator_writes() {
        let with_state = SpanContext::new(
            TraceId::from_hex("00f067aa0ba902b70af7651916cd43dd").unwrap(),
            SpanId::from_hex("00000000000000ff").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "x1"), ("other", "y")]).unwrap(),
        );
        for c in [sc(true), sc(false), with_state] {
            let mut want = std::collections::HashMap::new();
            TraceContextPropagator::new().inject_context(&Context::new().with_remote_span_context(c.clone()), &mut want);
            // The propagator writes an empty `tracestate`; a record has no header instead.
            want.retain(|_, v| !v.is_empty());
            assert_eq!(as_map(&kafka_headers(&c)), want);
        }
        assert_eq!(kafka_headers(&SpanContext::empty_context()).count(), 0);
    }

    #[test]
    fn kafka_headers_round_trip_and_bad_ones_start_a_new_trace() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let kafka = kafka_headers(&sc(true));
        assert_eq!(as_map(&kafka)["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let cx = extract_from_kafka(Some(&kafka));
        assert_eq!(cx.span().span_context().trace_id(), sc(true).trace_id());
        assert!(cx.span().span_context().is_sampled());

        for bad in ["", "garbage", "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "00-xyz-b7ad6b7169203331-01"] {
            let headers = OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(bad.as_bytes()) });
            assert!(!extract_from_kafka(Some(&headers)).span().span_context().is_valid(), "{bad}");
        }
        assert!(!extract_from_kafka::<OwnedHeaders>(None).span().span_context().is_valid());
    }

    /// The direct reader gives the propagator's answer for every header it accepts, and accepts
    /// the usual spellings; everything else is left to the propagator.
    #[test]
    fn traceparents_are_read_as_the_w3c_propagator_reads_them() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let propagator = TraceContextPropagator::new();
        let id = "0af7651916cd43dd8448eb211c80319c";
        let span = "b7ad6b7169203331";
        let traceparents = [
            format!("00-{id}-{span}-01"),
            format!("00-{id}-{span}-00"),
            format!("00-{id}-{span}-02"),
            format!("00-{id}-{span}-03"),
            format!("00-{id}-{span}-ff"),
            format!("00-{}-{span}-01", id.to_uppercase()),
            format!("00-{id}-{}-01", span.to_uppercase()),
            format!("00-{id}-{span}-0A"),
            format!("00-{}-{span}-01", "0".repeat(32)),
            format!("00-{id}-{}-01", "0".repeat(16)),
            format!("00-{id}-{span}-01-extra"),
            format!("01-{id}-{span}-01-extra"),
            format!("ff-{id}-{span}-01"),
            format!("00-{}-{span}-01", &id[1..]),
            format!("00-+{}-{span}-01", &id[1..]),
            format!("00-{id}-{span}"),
            format!("00_{id}-{span}-01"),
            format!("00-{id}-{span}-1"),
            format!("00-{id}x{span}-01"),
            "garbage".to_string(),
            String::new(),
        ];
        let tracestates = [None, Some(""), Some("vendor=opaque,other=1"), Some("not a valid state"), Some("a=1,a=2")];
        let mut direct = 0;
        for tp in &traceparents {
            for ts in tracestates {
                let mut h = OwnedHeaders::new().insert(Header { key: "TraceParent", value: Some(tp.as_bytes()) });
                if let Some(ts) = ts {
                    h = h.insert(Header { key: "tracestate", value: Some(ts.as_bytes()) });
                }
                // A second, later traceparent is ignored by both.
                h = h.insert(Header { key: "traceparent", value: Some(b"00-11111111111111111111111111111111-2222222222222222-01") });
                let expected = propagator.extract(&KafkaExtractor(&h));
                let expected = expected.span().span_context().clone();
                let got = extract_from_kafka(Some(&h)).span().span_context().clone();
                assert_eq!(got, expected, "traceparent {tp:?}, tracestate {ts:?}");
                assert_eq!(got.trace_state().header(), expected.trace_state().header());
                if parse_traceparent_00(tp, ts).is_some() {
                    direct += 1;
                }
            }
        }
        assert_eq!(direct, 5 * tracestates.len(), "the five valid lowercase spellings are read directly");
    }

    #[test]
    fn samplers_from_the_environment() {
        assert_eq!(sampler_from(None, None).unwrap().1, "parentbased_traceidratio 0.1");
        assert_eq!(sampler_from(Some("parentbased_traceidratio"), Some("0.5")).unwrap().1, "parentbased_traceidratio 0.5");
        assert_eq!(sampler_from(Some("traceidratio"), None).unwrap().1, "traceidratio 1");
        assert_eq!(sampler_from(Some("always_on"), None).unwrap().1, "always_on");
        assert!(sampler_from(Some("xray"), None).unwrap_err().to_string().contains("OTEL_TRACES_SAMPLER"));
        assert!(sampler_from(None, Some("1.5")).unwrap_err().to_string().contains("OTEL_TRACES_SAMPLER_ARG"));
    }

    #[test]
    fn a_root_span_linked_to_a_sampled_span_is_sampled() {
        let s = LinkedSampler(Box::new(Sampler::AlwaysOff));
        let id = TraceId::from_hex("1af7651916cd43dd8448eb211c80319c").unwrap();
        let root = Context::new();
        let decide = |links: &[Link]| s.should_sample(Some(&root), id, "b", &SpanKind::Internal, &[], links).decision;
        assert_eq!(decide(&[]), SamplingDecision::Drop);
        assert_eq!(decide(&[Link::with_context(sc(false))]), SamplingDecision::Drop);
        assert_eq!(decide(&[Link::with_context(sc(false)), Link::with_context(sc(true))]), SamplingDecision::RecordAndSample);
        // With a parent the parent's decision stands (here: the inner sampler).
        let child = Context::new().with_remote_span_context(sc(false));
        assert_eq!(s.should_sample(Some(&child), id, "c", &SpanKind::Internal, &[], &[Link::with_context(sc(true))]).decision, SamplingDecision::Drop);
    }

    #[derive(Debug, Clone)]
    struct Exporter {
        fail: bool,
        release: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
    }

    impl SpanExporter for Exporter {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            let _ = self.release.lock().unwrap().recv_timeout(Duration::from_secs(5));
            if self.fail { Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("down".into())) } else { Ok(()) }
        }
    }

    #[derive(Debug, Default)]
    struct Failing(AtomicUsize);

    impl SpanExporter for Failing {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(OTelSdkError::InternalFailure("refused".into()))
        }
    }

    #[test]
    fn after_a_failed_export_the_collector_gets_a_pause_and_batches_are_dropped_unsent() {
        let counters = ExportCounters::register(&Registry::new());
        let state = Arc::new(ExportState { queued: AtomicUsize::new(6), capacity: 8, breaker: Breaker::new(), counters: counters.clone() });
        let exporter = CountingExporter { inner: Failing::default(), state: state.clone(), warnings: crate::logs::Throttle::new(Duration::from_secs(30)) };
        let breaker = &state.breaker;
        let span = |name: &'static str| {
            SpanData {
                span_context: SpanContext::empty_context(),
                parent_span_id: opentelemetry::trace::SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: name.into(),
                start_time: std::time::SystemTime::UNIX_EPOCH,
                end_time: std::time::SystemTime::UNIX_EPOCH,
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: Default::default(),
                links: Default::default(),
                status: Status::Unset,
                instrumentation_scope: Default::default(),
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(!breaker.is_open());
        assert!(rt.block_on(exporter.export(vec![span("a"), span("b")])).is_err());
        assert!(breaker.is_open(), "the first failure opens the breaker");
        assert!(rt.block_on(exporter.export(vec![span("c"), span("d"), span("e"), span("f")])).is_err());
        assert_eq!(exporter.inner.0.load(Ordering::Relaxed), 1, "the second batch was not sent");
        assert_eq!(counters.export_failed.get(), 6);
        assert_eq!(state.queued.load(Ordering::Relaxed), 0);
        assert_eq!(breaker.failed(), Duration::from_secs(2), "pauses double");
    }

    fn ended_span(tracer: &SdkTracer) {
        let mut span = tracer.start_with_context("s", &Context::new());
        span.end();
    }

    #[test]
    fn a_stuck_exporter_fills_the_queue_and_every_span_is_counted_once() {
        use opentelemetry::trace::TracerProvider as _;
        let registry = Registry::new();
        let counters = ExportCounters::register(&registry);
        let (release, rx) = std::sync::mpsc::channel();
        let exporter = Exporter { fail: true, release: Arc::new(std::sync::Mutex::new(rx)) };
        // A gate of 8 in front of the SDK's default queue (2,048, batches of 512): nothing is
        // exported before the flush, so the gate alone decides what is dropped.
        let state = Arc::new(ExportState { queued: AtomicUsize::new(0), capacity: 8, breaker: Breaker::new(), counters: counters.clone() });
        let counting = CountingExporter { inner: exporter, state: state.clone(), warnings: crate::logs::Throttle::new(Duration::from_secs(30)) };
        let processor = DroppingProcessor { inner: BatchSpanProcessor::new(counting, BatchConfigBuilder::default().build()), state };
        let provider = SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOn).with_span_processor(processor).build();
        let tracer = provider.tracer("t");
        for _ in 0..50 {
            ended_span(&tracer);
        }
        for _ in 0..50 {
            let _ = release.send(());
        }
        let _ = provider.force_flush();
        // Eight fit the queue and fail to export; the other 42 never enter it.
        assert_eq!((counters.queue_full.get(), counters.export_failed.get()), (42, 8));
        assert_eq!(counters.exported.get(), 0);
        let text = crate::metrics::render(&registry);
        assert!(text.contains("telemetry_spans_dropped_total{reason=\"queue_full\"}"), "{text}");
        let _ = provider.shutdown();
    }
}
