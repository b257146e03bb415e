//! The OTLP/HTTP span exporter: a batch of spans written straight into the protobuf bytes of an
//! `ExportTraceServiceRequest` and POSTed to the collector's `/v1/traces` — the SDK's spans
//! (`SpanData`, [`encode_request`]) and spans a hot path keeps without the SDK
//! ([`EncodeSpans`], written with [`SpanWriter`]; byte for byte what the SDK path writes).
//!
//! Written by hand rather than through opentelemetry-otlp's conversion into generated message
//! structs: that conversion allocates a string for every attribute key and value and costs
//! about 2.5 µs per span, which at 10 % sampling was a sizeable share of the scorer's CPU. The
//! bytes are tested to decode to exactly what that conversion produces.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::trace::TraceConfigError;

/// Where and how spans are sent, from the standard variables.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// The full URL spans are POSTed to.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// PEM file of the CA certificates that an https:// collector's certificate is verified
    /// against, besides the system's; with the variable that named it, for errors.
    pub certificate: Option<(&'static str, std::path::PathBuf)>,
}

impl OtlpSettings {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (plus
    /// `/v1/traces`), default `http://localhost:4318`, `http://` or `https://`;
    /// `OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE` (a PEM file of CA certificates trusted for an
    /// https:// collector, besides the system's); `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`
    /// (`k=v,k2=v2`, values percent-decoded); `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT` (ms,
    /// default 10 s); `OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION` may only be `none`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, TraceConfigError> {
        let either = |specific: &str, general: &str| env(specific).or_else(|| env(general));
        let (url_var, url) = match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(u) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", u.trim().to_string()),
            None => {
                let base = env("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|| "http://localhost:4318".into());
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{}/v1/traces", base.trim().trim_end_matches('/')))
            }
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(TraceConfigError::Invalid { var: url_var, value: url, reason: "must be an http:// or https:// URL" });
        }
        let certificate = ["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"]
            .into_iter()
            .find_map(|var| env(var).map(|path| (var, path.trim().into())));
        for var in ["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"] {
            if let Some(value) = env(var) {
                // Said at start-up rather than found out from a collector refusing every export.
                return Err(TraceConfigError::Invalid { var, value, reason: "client certificates (mutual TLS) are not supported" });
            }
        }
        let mut headers = Vec::new();
        if let Some(h) = either("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") {
            for pair in h.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(TraceConfigError::Invalid { var: "OTEL_EXPORTER_OTLP_HEADERS", value: h.clone(), reason: "must be key=value pairs separated by commas" });
                };
                headers.push((k.trim().to_string(), percent_decode(v.trim())));
            }
        }
        let timeout = match either("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            None => Duration::from_secs(10),
            Some(t) => Duration::from_millis(t.trim().parse().map_err(|_| TraceConfigError::Invalid {
                var: "OTEL_EXPORTER_OTLP_TIMEOUT",
                value: t.clone(),
                reason: "must be milliseconds",
            })?),
        };
        if let Some(c) = either("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
            && c.trim() != "none"
        {
            return Err(TraceConfigError::Invalid { var: "OTEL_EXPORTER_OTLP_COMPRESSION", value: c, reason: "supported: none" });
        }
        Ok(Self { url, headers, timeout, certificate })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends each batch once; a batch the collector does not accept within the timeout fails (and
/// is counted as dropped by the caller), so a dead collector never holds spans in memory.
/// Clones share one HTTP client.
#[derive(Debug, Clone)]
pub struct OtlpHttpExporter {
    settings: OtlpSettings,
    client: reqwest::blocking::Client,
    resource: Vec<KeyValue>,
}

impl OtlpHttpExporter {
    pub fn new(settings: OtlpSettings) -> Result<Self, TraceConfigError> {
        // The blocking client runs a runtime of its own; build it outside any async context.
        let timeout = settings.timeout;
        let roots = match &settings.certificate {
            Some((var, path)) => trusted_certificates(var, path)?,
            None => Vec::new(),
        };
        let client = std::thread::spawn(move || roots.into_iter().fold(reqwest::blocking::Client::builder().timeout(timeout), |b, c| b.add_root_certificate(c)).build())
            .join()
            .map_err(|_| TraceConfigError::Exporter("building the HTTP client panicked".into()))?
            .map_err(|e| TraceConfigError::Exporter(e.to_string()))?;
        Ok(Self { settings, client, resource: Vec::new() })
    }

    /// The resource attributes every request carries.
    pub fn with_resource(mut self, resource: &Resource) -> Self {
        self.resource = resource_attributes(resource);
        self
    }

    /// Encodes spans built without the SDK (see [`EncodeSpans`]) as one request under the
    /// instrumentation scope `scope` and sends it.
    pub fn export_encoded(&self, scope: &str, batches: &[Box<dyn EncodeSpans>]) -> Result<(), String> {
        let spans: usize = batches.iter().map(|b| b.spans()).sum();
        self.post(encode_request_with(&self.resource, scope, spans, |w| {
            for b in batches {
                b.encode(w);
            }
        }))
    }

    fn post(&self, body: impl Into<reqwest::blocking::Body>) -> Result<(), String> {
        let mut request = self.client.post(&self.settings.url).header("content-type", "application/x-protobuf").body(body);
        for (k, v) in &self.settings.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        match request.send() {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("collector answered {}", r.status())),
            // With its causes (`outer: inner: innermost`): reqwest's own text names only the URL,
            // while the reason (refused, timed out, certificate not trusted) is in its causes.
            Err(e) => Err(format!("{:#}", anyhow::Error::new(e))),
        }
    }
}

/// The CA certificates in the PEM file `path` (named by the variable `var`); an error naming the
/// setting when it cannot be read or holds none.
fn trusted_certificates(var: &'static str, path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, TraceConfigError> {
    let unusable = |reason: String| TraceConfigError::File { var, path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| unusable(e.to_string()))?;
    if certificates.is_empty() {
        return Err(unusable("holds no PEM certificate".into()));
    }
    Ok(certificates)
}

impl SpanExporter for OtlpHttpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut body = Vec::with_capacity(batch.len() * 320);
        encode_request(&mut body, &self.resource, &batch);
        drop(batch);
        self.post(body).map_err(OTelSdkError::InternalFailure)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource_attributes(resource);
    }
}

fn resource_attributes(resource: &Resource) -> Vec<KeyValue> {
    resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect()
}

// Protobuf wire format.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

#[inline]
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

#[inline]
fn bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        key(buf, field, LEN);
        varint(buf, b.len() as u64);
        buf.extend_from_slice(b);
    }
}

#[inline]
fn varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

#[inline]
fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

#[inline]
fn fixed32_field(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A length-delimited sub-message, written in place: one byte is reserved for its length and the
/// body is moved only when the length needs more.
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    message_reserving(buf, field, 1, body);
}

/// The same with `reserved` bytes for the length: the body is moved only when its length needs
/// another number of bytes.
fn message_reserving(buf: &mut Vec<u8>, field: u32, reserved: usize, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + reserved, 0);
    body(buf);
    let len = buf.len() - at - reserved;
    let (prefix, n) = varint_bytes(len as u64);
    if n > reserved {
        buf.resize(buf.len() + n - reserved, 0);
        buf.copy_within(at + reserved..at + reserved + len, at + n);
    } else if n < reserved {
        buf.copy_within(at + reserved..at + reserved + len, at + n);
        buf.truncate(at + n + len);
    }
    buf[at..at + n].copy_from_slice(&prefix[..n]);
}

fn trace_state(buf: &mut Vec<u8>, field: u32, state: &TraceState) {
    if *state != TraceState::NONE {
        bytes_field(buf, field, state.header().as_bytes());
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn any_value(buf: &mut Vec<u8>, v: &Value) {
    match (Scalar::of(v), v) {
        (Some(scalar), _) => scalar.write(buf),
        (None, Value::Array(a)) => message(buf, 5, |buf| {
            let items: Vec<Scalar<'_>> = match a {
                Array::Bool(v) => v.iter().map(|x| Scalar::Bool(*x)).collect(),
                Array::I64(v) => v.iter().map(|x| Scalar::I64(*x)).collect(),
                Array::F64(v) => v.iter().map(|x| Scalar::F64(*x)).collect(),
                Array::String(v) => v.iter().map(|x| Scalar::Str(x.as_str())).collect(),
                _ => Vec::new(),
            };
            for item in items {
                message(buf, 1, |buf| item.write(buf));
            }
        }),
        _ => {}
    }
}

/// A scalar attribute value: an `AnyValue` whose length is known before it is written.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Str(&'a str),
    Bool(bool),
    I64(i64),
    F64(f64),
}

impl<'a> Scalar<'a> {
    /// `v` when it is a scalar (not an array).
    fn of(v: &'a Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::I64(i) => Some(Scalar::I64(*i)),
            Value::F64(f) => Some(Scalar::F64(*f)),
            Value::String(s) => Some(Scalar::Str(s.as_str())),
            _ => None,
        }
    }

    /// Bytes of the `AnyValue` message's body.
    #[inline]
    fn len(self) -> usize {
        match self {
            Scalar::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
            Scalar::Bool(_) => 2,
            Scalar::I64(i) => 1 + varint_len(i as u64),
            Scalar::F64(_) => 9,
        }
    }

    #[inline]
    fn write(self, buf: &mut Vec<u8>) {
        match self {
            Scalar::Str(s) => {
                key(buf, 1, LEN);
                varint(buf, s.len() as u64);
                buf.extend_from_slice(s.as_bytes());
            }
            Scalar::Bool(b) => {
                key(buf, 2, VARINT);
                buf.push(u8::from(b));
            }
            Scalar::I64(i) => {
                key(buf, 3, VARINT);
                varint(buf, i as u64);
            }
            Scalar::F64(f) => {
                key(buf, 4, FIXED64);
                buf.extend_from_slice(&f.to_le_bytes());
            }
        }
    }
}

/// One `KeyValue` with a scalar value as field `field`, its lengths worked out first rather than
/// filled in afterwards (attributes are most of a span's bytes).
#[inline]
fn scalar_attribute(buf: &mut Vec<u8>, field: u32, name: &str, value: Scalar<'_>) {
    let value_len = value.len();
    let name_part = if name.is_empty() { 0 } else { 1 + varint_len(name.len() as u64) + name.len() };
    let body = name_part + 1 + varint_len(value_len as u64) + value_len;
    buf.reserve(2 + varint_len(body as u64) + body);
    key(buf, field, LEN);
    varint(buf, body as u64);
    bytes_field(buf, 1, name.as_bytes());
    key(buf, 2, LEN);
    varint(buf, value_len as u64);
    value.write(buf);
}

fn attributes(buf: &mut Vec<u8>, field: u32, attrs: &[KeyValue]) {
    for kv in attrs {
        let name = kv.key.as_str();
        match Scalar::of(&kv.value) {
            Some(scalar) => scalar_attribute(buf, field, name, scalar),
            None => message(buf, field, |buf| {
                bytes_field(buf, 1, name.as_bytes());
                message(buf, 2, |buf| any_value(buf, &kv.value));
            }),
        }
    }
}

/// W3C flags plus OTLP's "is the parent remote" bits.
fn flags(trace_flags: TraceFlags, parent_is_remote: bool) -> u32 {
    u32::from(trace_flags.to_u8()) | 0x100 | if parent_is_remote { 0x200 } else { 0 }
}

/// A span's fields 1 to 8 (ids, trace state, parent, name, kind, times), for SDK spans and
/// spans written directly alike.
fn span_head(buf: &mut Vec<u8>, head: &SpanHead<'_>) {
    bytes_field(buf, 1, &head.trace_id.to_bytes());
    bytes_field(buf, 2, &head.span_id.to_bytes());
    trace_state(buf, 3, head.trace_state);
    if let Some((parent, _)) = head.parent {
        bytes_field(buf, 4, &parent.to_bytes());
    }
    bytes_field(buf, 5, head.name.as_bytes());
    varint_field(buf, 6, kind(&head.kind));
    fixed64_field(buf, 7, head.start);
    fixed64_field(buf, 8, head.end);
}

fn span(buf: &mut Vec<u8>, s: &SpanData) {
    span_head(
        buf,
        &SpanHead {
            trace_id: s.span_context.trace_id(),
            span_id: s.span_context.span_id(),
            parent: (s.parent_span_id != SpanId::INVALID).then_some((s.parent_span_id, s.parent_span_is_remote)),
            trace_state: s.span_context.trace_state(),
            name: &s.name,
            kind: s.span_kind.clone(),
            start: nanos(s.start_time),
            end: nanos(s.end_time),
        },
    );
    attributes(buf, 9, &s.attributes);
    varint_field(buf, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        message(buf, 11, |buf| {
            fixed64_field(buf, 1, nanos(e.timestamp));
            bytes_field(buf, 2, e.name.as_bytes());
            attributes(buf, 3, &e.attributes);
            varint_field(buf, 4, u64::from(e.dropped_attributes_count));
        });
    }
    varint_field(buf, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        message(buf, 13, |buf| {
            bytes_field(buf, 1, &l.span_context.trace_id().to_bytes());
            bytes_field(buf, 2, &l.span_context.span_id().to_bytes());
            trace_state(buf, 3, l.span_context.trace_state());
            attributes(buf, 4, &l.attributes);
            varint_field(buf, 5, u64::from(l.dropped_attributes_count));
            fixed32_field(buf, 6, flags(l.span_context.trace_flags(), l.span_context.is_remote()));
        });
    }
    varint_field(buf, 14, u64::from(s.links.dropped_count));
    message(buf, 15, |buf| {
        let (code, text) = match &s.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        bytes_field(buf, 2, text.as_bytes());
        varint_field(buf, 3, code);
    });
    fixed32_field(buf, 16, flags(s.span_context.trace_flags(), s.parent_span_is_remote));
}

fn scope(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    bytes_field(buf, 1, scope.name().as_bytes());
    bytes_field(buf, 2, scope.version().unwrap_or_default().as_bytes());
    let attrs: Vec<KeyValue> = scope.attributes().cloned().collect();
    attributes(buf, 3, &attrs);
}

/// Appends the `ExportTraceServiceRequest` for `spans` to `buf`: one resource, one scope
/// entry per instrumentation scope in order of first appearance.
pub fn encode_request(buf: &mut Vec<u8>, resource: &[KeyValue], spans: &[SpanData]) {
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    for s in spans {
        if !scopes.contains(&&s.instrumentation_scope) {
            scopes.push(&s.instrumentation_scope);
        }
    }
    message(buf, 1, |buf| {
        message(buf, 1, |buf| attributes(buf, 1, resource));
        for sc in &scopes {
            message(buf, 2, |buf| {
                message(buf, 1, |buf| scope(buf, sc));
                for s in spans.iter().filter(|s| &s.instrumentation_scope == *sc) {
                    message(buf, 2, |buf| span(buf, s));
                }
                bytes_field(buf, 3, sc.schema_url().unwrap_or_default().as_bytes());
            });
        }
    });
}

/// A batch of spans that a hot path built without the SDK, written into the request only on the
/// export thread: the hot path keeps the few values each span needs, and the encoding — the
/// larger cost — happens off it. Handed over with [`crate::trace::submit_spans`].
pub trait EncodeSpans: Send {
    /// How many spans [`EncodeSpans::encode`] writes.
    fn spans(&self) -> usize;
    /// Writes every span with [`SpanWriter::span`].
    fn encode(&self, w: &mut SpanWriter<'_>);
}

/// What every span has: ids, name, kind and times. Spans written this way are sampled.
#[derive(Debug, Clone)]
pub struct SpanHead<'a> {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The parent span, and whether it is remote (in another process); `None` for a root span.
    pub parent: Option<(SpanId, bool)>,
    pub trace_state: &'a TraceState,
    pub name: &'a str,
    pub kind: SpanKind,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
}

/// Writes spans into an OTLP `ScopeSpans` message.
pub struct SpanWriter<'a> {
    buf: &'a mut Vec<u8>,
}

impl SpanWriter<'_> {
    /// One span: `head`, then what `body` adds (attributes, links, an error status).
    pub fn span(&mut self, head: &SpanHead<'_>, body: impl FnOnce(&mut SpanBody<'_>)) {
        // A span takes 128 bytes or more (ids, name, times, a few attributes): two for its length.
        message_reserving(self.buf, 2, 2, |buf| {
            span_head(buf, head);
            let mut b = SpanBody { buf, status: false };
            body(&mut b);
            if !b.status {
                message(buf, 15, |_| {});
            }
            let remote = head.parent.is_some_and(|(_, remote)| remote);
            fixed32_field(buf, 16, flags(TraceFlags::SAMPLED, remote));
        });
    }
}

/// A span's attributes, links and status, written in place.
pub struct SpanBody<'a> {
    buf: &'a mut Vec<u8>,
    status: bool,
}

impl SpanBody<'_> {
    pub fn attributes(&mut self) -> Attributes<'_> {
        Attributes { buf: self.buf, field: 9 }
    }

    /// Attributes encoded once for many spans.
    pub fn encoded(&mut self, attributes: &EncodedAttributes) {
        self.buf.extend_from_slice(&attributes.0);
    }

    /// A link to a sampled span, with attributes.
    pub fn link(&mut self, trace_id: TraceId, span_id: SpanId, remote: bool, attributes: impl FnOnce(&mut Attributes<'_>)) {
        message(self.buf, 13, |buf| {
            bytes_field(buf, 1, &trace_id.to_bytes());
            bytes_field(buf, 2, &span_id.to_bytes());
            attributes(&mut Attributes { buf, field: 4 });
            fixed32_field(buf, 6, flags(TraceFlags::SAMPLED, remote));
        });
    }

    /// Status `error` with `description` (otherwise the status is unset).
    pub fn error(&mut self, description: &str) {
        self.status = true;
        message(self.buf, 15, |buf| {
            bytes_field(buf, 2, description.as_bytes());
            varint_field(buf, 3, 2);
        });
    }
}

/// Key-value attributes of a span or a link.
pub struct Attributes<'a> {
    buf: &'a mut Vec<u8>,
    field: u32,
}

impl Attributes<'_> {
    #[inline]
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        scalar_attribute(self.buf, self.field, name, Scalar::Str(value));
        self
    }

    #[inline]
    pub fn i64(&mut self, name: &str, value: i64) -> &mut Self {
        scalar_attribute(self.buf, self.field, name, Scalar::I64(value));
        self
    }

    #[inline]
    pub fn f64(&mut self, name: &str, value: f64) -> &mut Self {
        scalar_attribute(self.buf, self.field, name, Scalar::F64(value));
        self
    }

    #[inline]
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        scalar_attribute(self.buf, self.field, name, Scalar::Bool(value));
        self
    }
}

/// Span attributes encoded once, for the many spans of a batch that share them.
#[derive(Debug, Clone, Default)]
pub struct EncodedAttributes(Vec<u8>);

impl EncodedAttributes {
    pub fn new(attributes: impl FnOnce(&mut Attributes<'_>)) -> Self {
        let mut buf = Vec::new();
        attributes(&mut Attributes { buf: &mut buf, field: 9 });
        Self(buf)
    }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// An `ExportTraceServiceRequest` with one resource and one scope, `scope`, whose spans `spans`
/// writes; `spans_hint` of them are expected. The spans are written first, after room for what
/// precedes them, which is filled in once their length is known: nothing is moved, however
/// large the request.
pub fn encode_request_with(resource: &[KeyValue], scope: &str, spans_hint: usize, spans: impl FnOnce(&mut SpanWriter<'_>)) -> bytes::Bytes {
    let mut resource_field = Vec::new();
    message(&mut resource_field, 1, |buf| attributes(buf, 1, resource));
    let mut scope_field = Vec::new();
    message(&mut scope_field, 1, |buf| bytes_field(buf, 1, scope.as_bytes()));
    // Two keys and two lengths of at most 10 bytes each, besides the two fields.
    let room = 2 * 11 + resource_field.len() + scope_field.len();
    let mut buf = Vec::with_capacity(room + spans_hint * 400);
    buf.resize(room, 0);
    spans(&mut SpanWriter { buf: &mut buf });
    let scope_spans = scope_field.len() + buf.len() - room;
    let mut head = Vec::with_capacity(room);
    key(&mut head, 1, LEN);
    varint(&mut head, (resource_field.len() + 1 + varint_len(scope_spans as u64) + scope_spans) as u64);
    head.extend_from_slice(&resource_field);
    key(&mut head, 2, LEN);
    varint(&mut head, scope_spans as u64);
    head.extend_from_slice(&scope_field);
    let start = room - head.len();
    buf[start..room].copy_from_slice(&head);
    bytes::Bytes::from(buf).slice(start..)
}

/// How many bytes `v` takes as a varint.
#[inline]
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// `v` as a varint: its bytes and how many of them there are.
fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let (mut bytes, mut n) = ([0u8; 10], 0);
    while v >= 0x80 {
        bytes[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    bytes[n] = v as u8;
    (bytes, n + 1)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry::trace::{Event, Link, SpanContext};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn data(i: u64, status: Status, kind: SpanKind) -> SpanData {
        let sc = SpanContext::new(TraceId::from(u128::from(i) * 7919 + 1), SpanId::from(i + 1), TraceFlags::SAMPLED, false, TraceState::default());
        let linked = SpanContext::new(TraceId::from(99), SpanId::from(98), TraceFlags::default(), true, TraceState::from_key_value([("k", "v")]).unwrap());
        let mut events = SpanEvents::default();
        events.events.push(Event::new("retry", SystemTime::UNIX_EPOCH + Duration::from_millis(5), vec![KeyValue::new("n", 2)], 0));
        let mut links = SpanLinks::default();
        links.links.push(Link::new(linked, vec![KeyValue::new("fraudstream.link", "batch")], 0));
        SpanData {
            span_context: sc,
            parent_span_id: if i.is_multiple_of(2) { SpanId::from(7) } else { SpanId::INVALID },
            parent_span_is_remote: i.is_multiple_of(3),
            span_kind: kind,
            name: Cow::Owned(format!("span {i}")),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_000_000_000 + i),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_100_000_000 + i),
            attributes: vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.kafka.offset", i as i64 * 1000),
                KeyValue::new("messaging.kafka.offset.negative", -5i64),
                KeyValue::new("fraudstream.fraud_probability", 0.25),
                KeyValue::new("fraudstream.degraded", i.is_multiple_of(2)),
                KeyValue::new("long", "x".repeat(300)),
                KeyValue::new("longer", "y".repeat(20_000)),
                KeyValue::new("", "no name"),
                KeyValue::new("empty", ""),
                KeyValue::new("list", Value::Array(Array::I64(vec![1, 2, 3]))),
                KeyValue::new("names", Value::Array(Array::String(vec!["a".into(), "".into(), "z".repeat(200).into()]))),
                KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("ratios", Value::Array(Array::F64(vec![0.5, -1.0]))),
            ],
            dropped_attributes_count: u32::from(i == 3),
            events,
            links,
            status,
            instrumentation_scope: InstrumentationScope::builder(if i < 3 { "scorer" } else { "other" }).with_version("0.1.0").build(),
        }
    }

    #[test]
    fn encodes_what_the_opentelemetry_proto_conversion_produces() {
        let spans: Vec<SpanData> = (0..6)
            .map(|i| {
                let status = match i % 3 {
                    0 => Status::Unset,
                    1 => Status::Ok,
                    _ => Status::error("broker down"),
                };
                let kind = [SpanKind::Server, SpanKind::Producer, SpanKind::Consumer, SpanKind::Internal, SpanKind::Client][i as usize % 5].clone();
                data(i, status, kind)
            })
            .collect();
        let resource = Resource::builder_empty().with_service_name("scorer").with_attribute(KeyValue::new("service.version", "0.1.0")).build();
        let resource_kvs: Vec<KeyValue> = resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();

        let mut buf = Vec::new();
        encode_request(&mut buf, &resource_kvs, &spans);
        let ours = ExportTraceServiceRequest::decode(buf.as_slice()).expect("valid protobuf");
        let theirs = ExportTraceServiceRequest {
            resource_spans: opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(spans, &(&resource).into()),
        };
        assert_eq!(ours, theirs);
        // Byte for byte too: same fields, same order.
        assert_eq!(buf, theirs.encode_to_vec());
    }

    #[test]
    fn varint_lengths_match_the_varints_written() {
        for shift in 0..64 {
            for v in [(1u64 << shift) - 1, 1u64 << shift, (1u64 << shift) + 1, 0, u64::MAX] {
                let mut buf = Vec::new();
                varint(&mut buf, v);
                assert_eq!(varint_len(v), buf.len(), "{v}");
                assert_eq!(varint_bytes(v).1, buf.len(), "{v}");
            }
        }
    }

    /// The same span as the SDK hands it to the exporter, and written directly.
    struct Both {
        sdk: SpanData,
        direct: Box<dyn Fn(&mut SpanWriter<'_>)>,
    }

    fn both(i: u64, parent: Option<(SpanId, bool)>, long: usize, error: bool) -> Both {
        let state = if i.is_multiple_of(2) { TraceState::from_key_value([("vendor", "x")]).unwrap() } else { TraceState::NONE };
        let sc = SpanContext::new(TraceId::from(u128::from(i) * 7919 + 1), SpanId::from(i + 1), TraceFlags::SAMPLED, false, state);
        let batch = SpanContext::new(TraceId::from(99), SpanId::from(98), TraceFlags::SAMPLED, false, TraceState::NONE);
        let (start, end) = (1_764_000_000_000_000_000 + i, 1_764_000_000_100_000_000 + i);
        let mut links = SpanLinks::default();
        links.links.push(Link::new(batch.clone(), vec![KeyValue::new("fraudstream.link", "batch")], 0));
        let sdk = SpanData {
            span_context: sc.clone(),
            parent_span_id: parent.map_or(SpanId::INVALID, |(p, _)| p),
            parent_span_is_remote: parent.is_some_and(|(_, remote)| remote),
            span_kind: SpanKind::Consumer,
            name: Cow::Borrowed("process transactions"),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(start),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(end),
            attributes: vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", "transactions"),
                KeyValue::new("messaging.kafka.offset", i as i64 * 1000 - 5),
                KeyValue::new("fraudstream.fraud_probability", 0.25),
                KeyValue::new("fraudstream.degraded", i.is_multiple_of(3)),
                KeyValue::new("long", "x".repeat(long)),
                KeyValue::new("empty", ""),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status: if error { Status::error("rolled back") } else { Status::Unset },
            instrumentation_scope: InstrumentationScope::builder("scorer").build(),
        };
        let direct = Box::new(move |w: &mut SpanWriter<'_>| {
            let head = SpanHead {
                trace_id: sc.trace_id(),
                span_id: sc.span_id(),
                parent,
                trace_state: sc.trace_state(),
                name: "process transactions",
                kind: SpanKind::Consumer,
                start,
                end,
            };
            let shared = EncodedAttributes::new(|a| {
                a.str("messaging.system", "kafka").str("messaging.destination.name", "transactions");
            });
            w.span(&head, |b| {
                b.encoded(&shared);
                b.attributes()
                    .i64("messaging.kafka.offset", i as i64 * 1000 - 5)
                    .f64("fraudstream.fraud_probability", 0.25)
                    .bool("fraudstream.degraded", i.is_multiple_of(3))
                    .str("long", &"x".repeat(long))
                    .str("empty", "");
                b.link(batch.trace_id(), batch.span_id(), false, |a| {
                    a.str("fraudstream.link", "batch");
                });
                if error {
                    b.error("rolled back");
                }
            });
        });
        Both { sdk, direct }
    }

    #[test]
    fn spans_written_directly_are_the_bytes_the_sdk_path_writes() {
        // Lengths of one, two and three bytes (the span's length is given two bytes up front),
        // with and without a parent, remote or not, an error status and a trace state.
        let spans =
            [both(1, None, 0, false), both(2, Some((SpanId::from(7), true)), 300, true), both(3, Some((SpanId::from(8), false)), 20_000, false), both(4, None, 0, true)];
        let resource = Resource::builder_empty().with_service_name("scorer").with_attribute(KeyValue::new("service.version", "0.1.0")).build();
        let resource_kvs: Vec<KeyValue> = resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
        let sdk: Vec<SpanData> = spans.iter().map(|b| b.sdk.clone()).collect();
        let mut theirs = Vec::new();
        encode_request(&mut theirs, &resource_kvs, &sdk);
        let ours = encode_request_with(&resource_kvs, "scorer", 1, |w| {
            for b in &spans {
                (b.direct)(w);
            }
        });
        assert_eq!(ExportTraceServiceRequest::decode(ours.as_ref()).expect("valid protobuf"), ExportTraceServiceRequest::decode(theirs.as_slice()).unwrap());
        assert_eq!(ours.as_ref(), theirs.as_slice());
        // An empty request is still a request with its resource and scope.
        let empty = encode_request_with(&resource_kvs, "scorer", 0, |_| {});
        let decoded = ExportTraceServiceRequest::decode(empty.as_ref()).unwrap();
        assert_eq!(decoded.resource_spans[0].scope_spans[0].scope.as_ref().map(|s| s.name.as_str()), Some("scorer"));
    }

    #[test]
    fn settings_from_the_standard_variables() {
        let env = |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let s = OtlpSettings::from_env(env(&[])).unwrap();
        assert_eq!((s.url.as_str(), s.timeout), ("http://localhost:4318/v1/traces", Duration::from_secs(10)));
        let s = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"), ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x=1"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "500")])).unwrap();
        assert_eq!(s.url, "http://collector:4318/v1/traces");
        assert_eq!(s.headers, vec![("api-key".to_string(), "a b".to_string()), ("x".to_string(), "1".to_string())]);
        assert_eq!(s.timeout, Duration::from_millis(500));
        let s = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/custom")])).unwrap();
        assert_eq!(s.url, "http://b:4318/custom");
        assert!(OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")])).is_err());
        assert!(OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])).is_err());
        let s = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem")])).unwrap();
        assert_eq!(s.url, "https://collector:4318/v1/traces");
        assert_eq!(s.certificate, Some(("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem".into())));
        let s = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"), ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/traces-ca.pem")])).unwrap();
        assert_eq!(s.certificate, Some(("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/traces-ca.pem".into())));
        assert!(OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://collector:4317")])).unwrap_err().to_string().contains("https://"));
        let e = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318/v1/traces")])).unwrap_err().to_string();
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="), "{e}");
        let e = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/client.key")])).unwrap_err().to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY") && e.contains("mutual TLS"), "{e}");
        assert!(OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")])).is_err());
    }

    #[test]
    fn a_certificate_file_that_cannot_be_used_is_an_error_naming_it() {
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        let e = trusted_certificates("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", missing).unwrap_err().to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") && e.contains("/nonexistent/ca.pem"), "{e}");
        let not_pem = std::env::temp_dir().join(format!("otlp-not-a-certificate-{}.pem", std::process::id()));
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let e = trusted_certificates("OTEL_EXPORTER_OTLP_CERTIFICATE", &not_pem).unwrap_err().to_string();
        let _ = std::fs::remove_file(&not_pem);
        assert!(e.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && e.contains("no PEM certificate"), "{e}");
    }
}
