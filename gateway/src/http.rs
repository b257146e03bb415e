//! The HTTP API: `POST /v1/predict`, `GET /v1/decisions/{transaction_id}`, `/openapi.json`,
//! plus the shared `/metrics` and `/health` routes. Every error body is JSON:
//! `{"error": "<summary>", "details": [{"field": "...", "reason": "..."}]}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use rdkafka::producer::{FutureProducer, FutureRecord};
use telemetry::kafka::LoggingContext;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::Instrument;

use schemas::{FieldError, Payment, Transaction, TransactionLimits};
use telemetry::trace::{Span as _, SpanIds, Status, Tracer as _};

use crate::decisions::{Claim, Decided, DecisionBoard, Publishing, WaitError};
use crate::metrics::{GatewayMetrics, HTTP_DURATION};
use crate::request::{BodyError, Object, parse_transaction, read_object};

/// The bundled OpenAPI document, with the default limits.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The OpenAPI document a gateway serves: the bundled one with the limits it runs with (the
/// largest amount it accepts), so that the spec a client reads is the one its requests are
/// held to.
pub fn openapi_document(limits: &TransactionLimits) -> String {
    let mut doc: Value = serde_json::from_str(OPENAPI).expect("the bundled openapi.json is JSON (tested)");
    if let Some(amount) = doc.pointer_mut("/components/schemas/PredictRequest/properties/amount") {
        let max = limits.max_amount;
        // Written as the bundled document writes it: a whole number without a fraction.
        amount["maximum"] = if max.fract() == 0.0 && max.abs() < 9.0e15 { json!(max as i64) } else { json!(max) };
    }
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
}

/// The W3C Trace Context response header: `00-<trace id>-<server span id>-<flags>`.
pub const TRACERESPONSE: &str = "traceresponse";

pub struct AppState {
    pub producer: FutureProducer<LoggingContext>,
    pub board: Arc<DecisionBoard>,
    pub metrics: GatewayMetrics,
    pub limits: TransactionLimits,
    pub transactions_topic: String,
    pub decision_deadline: Duration,
    pub produce_timeout: Duration,
    pub max_body_bytes: usize,
    /// How long a request's body may take to arrive once its head has.
    pub body_read_timeout: Duration,
    /// `openapi_document(&limits)`, served at `/openapi.json`.
    pub openapi: String,
    /// At most one "not acknowledged" line a second while Kafka is down.
    pub produce_warnings: telemetry::logs::Throttle,
    /// At most one "pending" line a second when the scorers fall behind.
    pub pending_notices: telemetry::logs::Throttle,
}

/// The answer to a prediction: the seed's response shape plus the explanation.
#[derive(Debug, Serialize)]
pub struct PredictResponse {
    pub transaction_id: String,
    pub decision: &'static str,
    pub fraud_probability: f64,
    pub risk_level: &'static str,
    pub latency_ms: f64,
    pub model_version: String,
    pub trace_id: String,
    pub top_features: Vec<TopFeature>,
    pub degraded: bool,
}

#[derive(Debug, Serialize)]
pub struct TopFeature {
    pub name: String,
    pub value: f64,
    pub contribution: f64,
}

impl PredictResponse {
    /// `trace_id`: the trace the decision was made in, else the current request's.
    fn new(decided: &Decided, latency_ms: f64, request_trace: &RequestTrace) -> Self {
        let d = &decided.decision;
        let trace_id = decided.trace_id.clone().unwrap_or_else(|| request_trace.trace_id());
        Self {
            transaction_id: d.transaction_id.clone(),
            decision: d.decision.as_str(),
            fraud_probability: d.fraud_probability,
            risk_level: d.risk_level.as_str(),
            latency_ms,
            model_version: d.model_version.clone(),
            trace_id,
            top_features: d
                .top_features
                .iter()
                .map(|t| TopFeature { name: t.name.to_string(), value: t.value, contribution: t.contribution })
                .collect(),
            degraded: d.degraded,
        }
    }
}

pub fn error(status: StatusCode, summary: impl Into<String>, details: Vec<FieldError>) -> Response {
    let mut response = (status, axum::Json(json!({"error": summary.into(), "details": details}))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Kafka unreachable or too many requests waiting: both pass; say when to try again.
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

pub fn router(state: Arc<AppState>, ops: Router) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/decisions/{transaction_id}", get(get_decision))
        .route("/openapi.json", get(openapi))
        .with_state(state)
        .merge(ops)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(metrics, track))
}

/// The request's server span, as a context for its children. API routes only: scrapes and
/// health checks are not traced.
#[derive(Clone)]
pub struct RequestTrace(pub Context);

impl RequestTrace {
    pub fn trace_id(&self) -> String {
        self.0.span().span_context().trace_id().to_string()
    }
}

async fn track(State(metrics): State<GatewayMetrics>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let method_name = known_method(&method);
    // The trace an exemplar of this request's duration may name (sampled and exported only).
    let mut exemplar_trace: Option<String> = None;
    let response = if route.starts_with("/v1/") {
        // Continue the caller's trace (W3C headers) or start one; a bad header starts one.
        let parent = telemetry::trace::extract_from_http(req.headers());
        let mut attributes = vec![
            KeyValue::new("http.request.method", method_name),
            KeyValue::new("http.route", route.clone()),
            KeyValue::new("url.path", req.uri().path().to_string()),
            KeyValue::new("url.scheme", "http"),
        ];
        if method_name == OTHER_METHOD {
            attributes.push(KeyValue::new("http.request.method_original", method.to_string()));
        }
        let span_name = if method_name == OTHER_METHOD { format!("HTTP {route}") } else { format!("{method_name} {route}") };
        let span = telemetry::trace::tracer()
            .span_builder(span_name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(telemetry::trace::tracer(), &parent);
        let ids = SpanIds::of(span.span_context());
        let cx = parent.with_span(span);
        req.extensions_mut().insert(RequestTrace(cx.clone()));
        let log_span = tracing::info_span!("request", trace_id = %ids.trace_id, span_id = %ids.span_id);
        let mut response = next.run(req).instrument(log_span).await;
        // W3C `traceresponse`: every API answer, errors included, names its trace, so a caller
        // can hand it to on-call (or look it up itself) without parsing the body.
        let span = cx.span();
        exemplar_trace = telemetry::trace::exported_trace_id(span.span_context());
        if span.span_context().is_valid()
            && let Ok(value) = HeaderValue::from_bytes(&telemetry::trace::traceparent(span.span_context()))
        {
            response.headers_mut().insert(TRACERESPONSE, value);
        }
        let status = response.status();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        if status.is_server_error() {
            span.set_status(Status::error(status.canonical_reason().unwrap_or("server error")));
        }
        span.end();
        response
    } else {
        next.run(req).await
    };
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), method_name, response.status().as_str()])
        .inc();
    let seconds = started.elapsed().as_secs_f64();
    metrics.http_duration.with_label_values(&[route.as_str()]).observe(seconds);
    if let Some(trace_id) = exemplar_trace {
        telemetry::metrics::exemplars().record(HTTP_DURATION, &[("route", route.as_str())], telemetry::metrics::LATENCY_BUCKETS, seconds, &trace_id);
    }
    response
}

/// What stands for a method HTTP does not define, in metrics and spans (OpenTelemetry's
/// convention).
const OTHER_METHOD: &str = "_OTHER";

/// The method's name if HTTP defines it, else `_OTHER`: a client may send any token as a
/// method, and each would otherwise add a series to `http_requests_total`.
fn known_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => OTHER_METHOD,
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route", vec![])
}

async fn method_not_allowed(method: Method) -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} not allowed on this route"), vec![])
}

async fn openapi(State(app): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], app.openapi.clone()).into_response()
}

/// 422 for a transaction id this gateway knows for another payment: answering with that
/// payment's decision would approve (or block) what was not scored.
fn reused_id(differ: &[&'static str]) -> Response {
    let details = differ.iter().map(|f| FieldError::new(*f, "differs from the payment this transaction_id was first used for")).collect();
    error(StatusCode::UNPROCESSABLE_ENTITY, "transaction_id already used for a different payment", details)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
}

/// A request's interest in its decision. However the request ends (answered, refused, timed
/// out, or dropped by a disconnecting client), dropping this closes its receiver first and then
/// withdraws it from the board, so waiters never leak.
struct Waiting<'a> {
    board: &'a DecisionBoard,
    transaction_id: String,
    decision: Option<oneshot::Receiver<Arc<Decided>>>,
    gauge: &'a prometheus::IntGauge,
}

impl<'a> Waiting<'a> {
    /// Registers the interest; `Err` when too many requests wait already.
    fn register(board: &'a DecisionBoard, transaction_id: &str, gauge: &'a prometheus::IntGauge) -> Result<Self, WaitError> {
        let decision = board.wait_for(transaction_id)?;
        gauge.set(board.waiting() as i64);
        Ok(Self { board, transaction_id: transaction_id.to_string(), decision: Some(decision), gauge })
    }

    /// The decision, if it comes within `deadline`.
    async fn decision(&mut self, deadline: Duration) -> Option<Arc<Decided>> {
        let rx = self.decision.as_mut()?;
        tokio::time::timeout(deadline, rx).await.ok().and_then(Result::ok)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Closed first: `forget` withdraws the waiters whose receiver is gone.
        drop(self.decision.take());
        self.board.forget(&self.transaction_id);
        // Kept current as requests leave too, so an idle gateway shows none waiting.
        self.gauge.set(self.board.waiting() as i64);
    }
}

async fn predict(State(app): State<Arc<AppState>>, Extension(trace): Extension<RequestTrace>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let outcome = |o: &str| app.metrics.predictions.with_label_values(&[o]).inc();

    if !is_json(&headers) {
        outcome("rejected");
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content type must be application/json", vec![]);
    }
    let bytes = match tokio::time::timeout(app.body_read_timeout, axum::body::to_bytes(body, app.max_body_bytes)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            outcome("rejected");
            return error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {} bytes", app.max_body_bytes), vec![]);
        }
        Err(_) => {
            // A client trickling its body would otherwise hold the request (and its connection).
            outcome("rejected");
            return error(StatusCode::REQUEST_TIMEOUT, format!("body not received within {} ms", app.body_read_timeout.as_millis()), vec![]);
        }
    };
    let Object { body, repeated } = match read_object(&bytes) {
        Ok(object) => object,
        Err(BodyError::Malformed(e)) => {
            outcome("rejected");
            return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"), vec![]);
        }
        Err(BodyError::NotAnObject) => {
            outcome("rejected");
            return error(StatusCode::BAD_REQUEST, "body must be a JSON object", vec![]);
        }
    };
    let tx = match parse_transaction(&body, &app.limits, schemas::now_millis()) {
        Ok(tx) if repeated.is_empty() => tx,
        parsed => {
            outcome("rejected");
            let mut details: Vec<FieldError> = repeated.into_iter().map(|key| FieldError::new(key, "is given more than once")).collect();
            details.extend(parsed.err().unwrap_or_default());
            return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid transaction", details);
        }
    };

    // The transaction id is the idempotency key: a retry of a decided transaction gets the same
    // decision without publishing it twice (and one still undecided waits for it, below); the id
    // reused for another payment is refused.
    let payment = Payment::of(&tx);
    // Another payment's decision under this id is never the answer.
    let refuse_other = |d: &Decided| {
        let differ = d.differences(&payment);
        (!differ.is_empty()).then(|| {
            outcome("rejected");
            reused_id(&differ)
        })
    };
    if let Some(d) = app.board.recent(&tx.transaction_id) {
        if let Some(refused) = refuse_other(&d) {
            return refused;
        }
        outcome("replayed");
        return axum::Json(PredictResponse::new(&d, ms(started), &trace)).into_response();
    }
    // Registered before publishing, so that a quick decision cannot slip past.
    let mut waiting = match Waiting::register(&app.board, &tx.transaction_id, &app.metrics.waiting) {
        Ok(w) => w,
        Err(WaitError::Full) => {
            outcome("unavailable");
            return error(StatusCode::SERVICE_UNAVAILABLE, "too many requests waiting for decisions; retry later", vec![]);
        }
    };

    // Publish the transaction, unless a request here already has (a retry after a timeout or a
    // 202) or is doing so now: then wait for that publish and the same decision.
    let decided_already = loop {
        match app.board.claim(&tx.transaction_id, &trace.trace_id(), &payment) {
            // Decided since the first look, perhaps before this request was registered.
            Claim::Decided(d) => break Some(d),
            Claim::Conflict(differ) => {
                outcome("rejected");
                return reused_id(&differ);
            }
            Claim::Publish(claim) => {
                // Published in a task of its own, so that a client disconnecting now does not
                // cancel a publish Kafka may already have: the claim is reported as the publish
                // really ended, and a retry waits for the decision instead of publishing again.
                let (app, tx, trace) = (Arc::clone(&app), tx.clone(), trace.clone());
                let task = tokio::spawn(async move {
                    let published = publish(&app, &tx, &trace).await;
                    claim.report(published.is_ok());
                    published
                });
                let published = match task.await {
                    Ok(published) => published,
                    Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("publishing the transaction failed: {e}"), vec![])),
                };
                if let Err(response) = published {
                    outcome("unavailable");
                    return response;
                }
                break None;
            }
            Claim::Accepted => {
                app.metrics.repeated.inc();
                break None;
            }
            Claim::InFlight(mut state) => {
                // Settles within the other request's produce timeout; a dropped request counts as
                // failed. Then look again: decided, accepted, or to be published here.
                let _ = state.wait_for(|s| *s != Publishing::InFlight).await;
            }
        }
    };

    let server_span = trace.0.span();
    server_span.set_attribute(KeyValue::new("fraudstream.transaction_id", tx.transaction_id.clone()));
    let decided = match decided_already {
        Some(d) => Some(d),
        None => waiting.decision(app.decision_deadline).await,
    };
    // The first decision for this id may be another payment's (produced straight to Kafka under
    // the same id).
    if let Some(refused) = decided.as_deref().and_then(refuse_other) {
        return refused;
    }
    match decided {
        Some(decided) => {
            let d = &decided.decision;
            outcome("decided");
            server_span.set_attributes([
                KeyValue::new("fraudstream.decision", d.decision.as_str()),
                KeyValue::new("fraudstream.model_version", d.model_version.clone()),
                KeyValue::new("fraudstream.degraded", d.degraded),
            ]);
            tracing::debug!(transaction_id = %d.transaction_id, user_id = %d.user_id, decision = d.decision.as_str(), model_version = %d.model_version, degraded = d.degraded, latency_ms = ms(started), "decision returned");
            axum::Json(PredictResponse::new(&decided, ms(started), &trace)).into_response()
        }
        None => {
            outcome("pending");
            let id = tx.transaction_id;
            server_span.set_attribute(KeyValue::new("fraudstream.decision", "pending"));
            if let Some(suppressed) = app.pending_notices.allow() {
                tracing::info!(transaction_id = %id, deadline_ms = app.decision_deadline.as_millis() as u64, suppressed, "no decision by the deadline; answered pending");
            }
            // A retry's answer names the trace the transaction was published in.
            pending(&id, app.board.accepted(&id).unwrap_or_else(|| trace.trace_id()))
        }
    }
}

/// Publishes `tx` to Kafka as a child span of the request; `Err` is the answer to give when Kafka
/// did not acknowledge it in time.
async fn publish(app: &AppState, tx: &Transaction, trace: &RequestTrace) -> Result<(), Response> {
    let payload = match schemas::encode(tx) {
        Ok(p) => p,
        Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the transaction: {e}"), vec![])),
    };
    // The record carries the producer span's context, so the scorer's spans continue this trace.
    let mut send_span = telemetry::trace::tracer()
        .span_builder(format!("send {}", app.transactions_topic))
        .with_kind(SpanKind::Producer)
        .start_with_context(telemetry::trace::tracer(), &trace.0);
    if send_span.is_recording() {
        send_span.set_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", app.transactions_topic.clone()),
            KeyValue::new("messaging.kafka.message.key", tx.user_id.clone()),
            KeyValue::new("fraudstream.transaction_id", tx.transaction_id.clone()),
        ]);
    }
    let record = FutureRecord::to(&app.transactions_topic)
        .key(tx.user_id.as_bytes())
        .payload(&payload)
        .headers(telemetry::trace::kafka_headers(send_span.span_context()));
    // librdkafka checks message timeouts about once a second; the request's own bound is exact.
    // A record that times out here may still land later: the client sees 503, retries with the
    // same transaction id, and readers keep the first decision.
    let acked = match tokio::time::timeout(app.produce_timeout, app.producer.send(record, Duration::from_millis(100))).await {
        Ok(Ok(delivery)) => Ok(delivery),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err(format!("no acknowledgement within {} ms", app.produce_timeout.as_millis())),
    };
    match &acked {
        Ok(delivery) => send_span.set_attributes([
            KeyValue::new("messaging.destination.partition.id", delivery.partition.to_string()),
            KeyValue::new("messaging.kafka.offset", delivery.offset),
        ]),
        Err(e) => send_span.set_status(Status::error(e.clone())),
    }
    send_span.end();
    if let Err(e) = acked {
        app.metrics.errors.with_label_values(&["produce"]).inc();
        if let Some(suppressed) = app.produce_warnings.allow() {
            tracing::warn!(error = %e, transaction_id = %tx.transaction_id, suppressed, "transaction not acknowledged by Kafka");
        }
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("transaction not accepted: Kafka did not acknowledge it ({e})"), vec![]));
    }
    Ok(())
}

async fn get_decision(State(app): State<Arc<AppState>>, Extension(trace): Extension<RequestTrace>, id: Result<Path<String>, PathRejection>) -> Response {
    // A segment whose percent-escapes are no UTF-8 names no transaction id there can be.
    let Ok(Path(id)) = id else {
        return error(StatusCode::BAD_REQUEST, "invalid path", vec![FieldError::new("transaction_id", "must be UTF-8 once percent-decoded")]);
    };
    if let Some(d) = app.board.recent(&id) {
        return axum::Json(PredictResponse::new(&d, to_microseconds(d.decision.processing_latency_ms), &trace)).into_response();
    }
    match app.board.accepted(&id) {
        // Published here, acknowledged by Kafka, not decided yet.
        Some(trace_id) => pending(&id, trace_id),
        None => error(StatusCode::NOT_FOUND, format!("no recent decision for transaction {id}"), vec![]),
    }
}

/// 202: accepted by Kafka, no decision yet.
fn pending(transaction_id: &str, trace_id: String) -> Response {
    let body = json!({
        "status": "pending",
        "transaction_id": transaction_id,
        "trace_id": trace_id,
        "decision_url": decision_url(transaction_id),
    });
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// Where a transaction's decision is found: its id as one path segment, every byte but an
/// unreserved character percent-encoded (an id may hold `/`, `?`, `#`, `%` or spaces).
fn decision_url(transaction_id: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    format!("/v1/decisions/{}", percent_encoding::utf8_percent_encode(transaction_id, RESERVED))
}

fn ms(started: Instant) -> f64 {
    to_microseconds(started.elapsed().as_secs_f64() * 1e3)
}

/// Milliseconds to the microsecond, as answers give them (`0.420287000001` is `0.42`).
fn to_microseconds(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_url_holds_any_id_as_one_segment() {
        assert_eq!(decision_url("txn_1-a.b~c"), "/v1/decisions/txn_1-a.b~c");
        assert_eq!(decision_url("a/b?c#d%e f"), "/v1/decisions/a%2Fb%3Fc%23d%25e%20f");
        assert_eq!(decision_url("é✓"), "/v1/decisions/%C3%A9%E2%9C%93");
    }

    #[test]
    fn latencies_are_given_to_the_microsecond() {
        assert_eq!(to_microseconds(0.420_286_999_999_999_97).to_string(), "0.42");
        assert_eq!(to_microseconds(12.345_678).to_string(), "12.346");
    }
}
