//! The scorer's trace spans for one batch. Each record gets a `process transactions` span
//! (CONSUMER) whose parent is the context its producer put in the record headers, and — when
//! that span is sampled — children for the stages it went through: `fetch_features`,
//! `model_inference`, `apply_business_rules` and `send decisions` (PRODUCER, whose context the
//! output records carry on). The stages run once per batch, so these children share the batch's
//! stage times, and each sampled record's span links to one `score batch` span for the batch
//! (which links back to them).
//!
//! A record whose producer's trace is not sampled, or that arrives while this scorer exports no
//! spans, gets no span: its outputs carry the producer's context on (a span that is not recorded
//! or not exported has nothing to show). Unsampled new traces (records without a context) get a
//! non-recording span for their ids.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{Link, SpanContext, SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use rdkafka::message::OwnedHeaders;

use schemas::{Decision, topics};
use telemetry::trace::{SdkSpan, Span as _, SpanIds, Status, Tracer as _, kafka_headers, tracer};

use crate::scoring::StageTimes;

/// What the spans say about where a record came from.
pub struct RecordSource<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: &'a str,
    pub transaction_id: &'a str,
}

/// Names shared by a batch's spans.
pub struct SpanNaming<'a> {
    pub input_topic: &'a str,
    pub output_topic: &'a str,
    pub group: &'a str,
}

/// A record's `process` span and, once its outputs are sent, its `send` span — or, when its
/// producer's trace is not sampled, just the context its outputs carry on (a span that would not
/// be recorded is not built).
enum RecordSpan {
    /// Boxed: most records are unsampled, and spans are large.
    Recording(Box<(SdkSpan, Option<SdkSpan>)>),
    Unsampled(SpanContext),
}

impl RecordSpan {
    fn context(&self) -> &SpanContext {
        match self {
            RecordSpan::Recording(s) => s.0.span_context(),
            RecordSpan::Unsampled(sc) => sc,
        }
    }
}

pub struct BatchSpans {
    process: Vec<RecordSpan>,
    batch: Option<SdkSpan>,
    output_topic: String,
    send_name: Cow<'static, str>,
}

impl BatchSpans {
    /// Starts the records' spans (`parents[i]` is record i's extracted context) as of `started`.
    pub fn start(started: SystemTime, sources: &[RecordSource<'_>], parents: &[Context], naming: &SpanNaming<'_>) -> Self {
        let tracer = tracer();
        let name = operation_name("process", naming.input_topic, topics::TRANSACTIONS, "process transactions");
        // With the export queue full, sampled records are not traced here (their spans would
        // only be dropped); their context passes on so later services can still trace them.
        // Without an exporter no span would go anywhere: the caller's context passes on as it came.
        let saturated = telemetry::trace::export_saturated();
        let exporting = telemetry::trace::exporting();
        let mut unbuilt = 0u64;
        let mut process: Vec<RecordSpan> = Vec::with_capacity(sources.len());
        for (src, parent) in sources.iter().zip(parents) {
            let parent_sc = parent.span().span_context().clone();
            if parent_sc.is_valid() && (!parent_sc.is_sampled() || saturated || !exporting) {
                unbuilt += u64::from(parent_sc.is_sampled()) * SPANS_PER_RECORD;
                process.push(RecordSpan::Unsampled(parent_sc));
                continue;
            }
            let mut span = tracer
                .span_builder(name.clone())
                .with_kind(SpanKind::Consumer)
                .with_start_time(started)
                .start_with_context(tracer, parent);
            if !span.is_recording() || saturated {
                // A recording span dropped here is counted by the queue; its children are not built.
                unbuilt += u64::from(span.is_recording()) * (SPANS_PER_RECORD - 1);
                process.push(RecordSpan::Unsampled(span.span_context().clone()));
                continue;
            }
            span.set_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.name", "process"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", naming.input_topic.to_string()),
                KeyValue::new("messaging.destination.partition.id", src.partition.to_string()),
                KeyValue::new("messaging.kafka.offset", src.offset),
                KeyValue::new("messaging.kafka.message.key", src.key.to_string()),
                KeyValue::new("messaging.consumer.group.name", naming.group.to_string()),
                KeyValue::new("fraudstream.transaction_id", src.transaction_id.to_string()),
            ]);
            process.push(RecordSpan::Recording(Box::new((span, None))));
        }
        if unbuilt > 0 {
            telemetry::trace::count_unbuilt_spans(unbuilt);
        }
        let sampled: Vec<Link> = process
            .iter()
            .filter(|s| matches!(s, RecordSpan::Recording(_)))
            .map(|s| Link::with_context(s.context().clone()))
            .collect();
        let batch = (!sampled.is_empty()).then(|| {
            let span = tracer
                .span_builder("score batch")
                .with_kind(SpanKind::Internal)
                .with_start_time(started)
                .with_links(sampled)
                .with_attributes([
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.destination.name", naming.input_topic.to_string()),
                    KeyValue::new("messaging.consumer.group.name", naming.group.to_string()),
                    KeyValue::new("messaging.batch.message_count", sources.len() as i64),
                ])
                .start_with_context(tracer, &Context::new());
            let batch_cx = span.span_context().clone();
            for s in &mut process {
                if let RecordSpan::Recording(s) = s {
                    s.0.add_link(batch_cx.clone(), vec![KeyValue::new("fraudstream.link", "batch")]);
                }
            }
            span
        });
        let send_name = operation_name("send", naming.output_topic, topics::DECISIONS, "send decisions");
        Self { process, batch, output_topic: naming.output_topic.to_string(), send_name }
    }

    /// The trace headers for record i's outputs: the `send decisions` span's context when the
    /// record is sampled (the span starts now), otherwise the record's own span context.
    pub fn output_headers(&mut self, i: usize, key: &str) -> OwnedHeaders {
        let traced = match &mut self.process[i] {
            RecordSpan::Recording(s) => s,
            RecordSpan::Unsampled(sc) => return kafka_headers(sc),
        };
        let tracer = tracer();
        let span = tracer
            .span_builder(self.send_name.clone())
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", self.output_topic.clone()),
                KeyValue::new("messaging.kafka.message.key", key.to_string()),
            ])
            .start_with_context(tracer, &child_of(traced.0.span_context()));
        let headers = kafka_headers(span.span_context());
        traced.1 = Some(span);
        headers
    }

    /// Record i's trace id when its span is recorded and exported, for exemplars.
    pub fn exported_trace(&self, i: usize) -> Option<String> {
        match &self.process[i] {
            RecordSpan::Recording(s) => telemetry::trace::exported_trace_id(s.0.span_context()),
            RecordSpan::Unsampled(_) => None,
        }
    }

    /// Record i's span ids, for its log lines.
    pub fn ids(&self, i: usize) -> SpanIds {
        SpanIds::of(self.process[i].context())
    }

    /// Ends every span after the batch committed at `ended`: stage children with the batch's
    /// stage times, decision attributes on each record's span.
    pub fn finish(mut self, decisions: &[Decision], fetch: (SystemTime, SystemTime), stages: StageTimes, ended: SystemTime) {
        let tracer = tracer();
        for (record, d) in self.process.iter_mut().zip(decisions) {
            let RecordSpan::Recording(traced) = record else { continue };
            let (span, send) = &mut **traced;
            let parent = child_of(span.span_context());
            let stage = |name: &'static str, (from, to): (SystemTime, SystemTime), attributes: Vec<KeyValue>| {
                let mut s = tracer.span_builder(name).with_start_time(from).with_attributes(attributes).start_with_context(tracer, &parent);
                s.end_with_timestamp(to);
            };
            stage(
                "fetch_features",
                fetch,
                vec![
                    KeyValue::new("db.system.name", "redis"),
                    KeyValue::new("fraudstream.user_features_found", d.user_features_found),
                    KeyValue::new("fraudstream.degraded", d.degraded),
                ],
            );
            stage("model_inference", stages.inference, vec![KeyValue::new("fraudstream.model_version", d.model_version.clone())]);
            stage(
                "apply_business_rules",
                stages.rules,
                vec![
                    KeyValue::new("fraudstream.decision", d.decision.as_str()),
                    KeyValue::new("fraudstream.fraud_probability", d.fraud_probability),
                ],
            );
            span.set_attributes([
                KeyValue::new("fraudstream.decision", d.decision.as_str()),
                KeyValue::new("fraudstream.risk_level", d.risk_level.as_str()),
                KeyValue::new("fraudstream.fraud_probability", d.fraud_probability),
                KeyValue::new("fraudstream.model_version", d.model_version.clone()),
                KeyValue::new("fraudstream.degraded", d.degraded),
            ]);
            if let Some(send) = send {
                send.end_with_timestamp(ended);
            }
            span.end_with_timestamp(ended);
        }
        if let Some(mut batch) = self.batch.take() {
            let degraded = decisions.iter().filter(|d| d.degraded).count();
            batch.set_attribute(KeyValue::new("fraudstream.degraded_records", degraded as i64));
            batch.end_with_timestamp(ended);
        }
    }

    /// Ends every span with an error: the batch was rolled back and will be processed again.
    pub fn fail(mut self, reason: &str) {
        let recording = self.process.iter_mut().filter_map(|s| match s {
            RecordSpan::Recording(s) => Some(&mut **s),
            RecordSpan::Unsampled(_) => None,
        });
        let spans = recording.flat_map(|(process, send)| send.iter_mut().chain(std::iter::once(process)));
        for span in spans.chain(self.batch.iter_mut()) {
            span.set_status(Status::error(reason.to_string()));
            span.end();
        }
    }
}

/// `process transactions` and its four children.
const SPANS_PER_RECORD: u64 = 5;

/// A context whose parent is `sc`, a span of this process.
fn child_of(sc: &SpanContext) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), false, sc.trace_state().clone()))
}

/// The messaging span name `<operation> <topic>` (OpenTelemetry's convention), without an
/// allocation per batch for the standard topic, whose name is given spelled out.
fn operation_name(operation: &str, topic: &str, standard_topic: &str, standard_name: &'static str) -> Cow<'static, str> {
    debug_assert_eq!(standard_name, format!("{operation} {standard_topic}"));
    if topic == standard_topic { Cow::Borrowed(standard_name) } else { Cow::Owned(format!("{operation} {topic}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_names_follow_operation_and_topic() {
        assert_eq!(operation_name("process", topics::TRANSACTIONS, topics::TRANSACTIONS, "process transactions"), "process transactions");
        assert!(matches!(operation_name("send", topics::DECISIONS, topics::DECISIONS, "send decisions"), Cow::Borrowed(_)));
        assert_eq!(operation_name("send", "decisions-eu", topics::DECISIONS, "send decisions"), "send decisions-eu");
    }
}
