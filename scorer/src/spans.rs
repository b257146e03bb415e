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
//! or not exported has nothing to show). Unsampled new traces (records without a context) get
//! ids for their outputs to carry, and nothing else.
//!
//! The spans are not built with the OpenTelemetry SDK: the scoring thread keeps only what they
//! need (ids, times, the record's key and transaction id, the decision) and the export thread
//! writes them into the OTLP request (`telemetry::otlp::EncodeSpans`). Building five SDK spans
//! per sampled record cost the scoring thread several microseconds; this costs it a fraction of
//! one. The sampling decisions are still the configured sampler's.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceState};
use rdkafka::message::OwnedHeaders;

use schemas::Decision;
use telemetry::otlp::{EncodeSpans, EncodedAttributes, SpanHead, SpanWriter};
use telemetry::trace::{SpanIds, kafka_headers};

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

/// A record's span: recorded (an index into the batch's traced records) or only a context its
/// outputs carry on.
enum RecordSpan {
    Recording(usize),
    Unsampled(SpanContext),
}

/// A sampled record: what its spans need when the batch ends.
struct Traced {
    /// The record's `process` span.
    cx: SpanContext,
    /// The producer's span, when the record came with one.
    parent: Option<SpanId>,
    /// The `send` span once the record's outputs are produced: its id, start and record key.
    send: Option<(SpanId, u64, String)>,
    partition: i32,
    offset: i64,
    key: String,
    transaction_id: String,
}

/// The batch's names, owned: they go to the export thread with the spans.
struct Naming {
    input_topic: String,
    output_topic: String,
    group: String,
    process: String,
    send: String,
}

pub struct BatchSpans {
    process: Vec<RecordSpan>,
    traced: Vec<Traced>,
    /// The `score batch` span and the names the spans carry, when any record is sampled.
    batch: Option<(SpanContext, Naming)>,
    started: u64,
    records: usize,
}

impl BatchSpans {
    /// Starts the records' spans (`parents[i]` is record i's extracted context) as of `started`.
    pub fn start(started: SystemTime, sources: &[RecordSource<'_>], parents: &[Context], naming: &SpanNaming<'_>) -> Self {
        let process_name = operation_name("process", naming.input_topic);
        // With the export queue full, sampled records are not traced here (their spans would
        // only be dropped); their context passes on so later services can still trace them.
        // Without an exporter no span would go anywhere: the caller's context passes on as it came.
        let saturated = telemetry::trace::export_saturated();
        let exporting = telemetry::trace::exporting();
        let mut unbuilt = 0u64;
        let mut process: Vec<RecordSpan> = Vec::with_capacity(sources.len());
        let mut traced = Vec::new();
        for (src, parent) in sources.iter().zip(parents) {
            let span = parent.span();
            let parent_sc = span.span_context();
            if parent_sc.is_valid() && (!parent_sc.is_sampled() || saturated || !exporting) {
                unbuilt += u64::from(parent_sc.is_sampled()) * SPANS_PER_RECORD;
                process.push(RecordSpan::Unsampled(parent_sc.clone()));
                continue;
            }
            let (trace_id, state) = if parent_sc.is_valid() {
                (parent_sc.trace_id(), parent_sc.trace_state().clone())
            } else {
                (telemetry::trace::new_trace_id(), TraceState::NONE)
            };
            let sampled = telemetry::trace::should_record(parent, trace_id, &process_name, SpanKind::Consumer);
            let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let cx = SpanContext::new(trace_id, telemetry::trace::new_span_id(), flags, false, state);
            if !sampled || saturated || !exporting {
                unbuilt += u64::from(sampled) * SPANS_PER_RECORD;
                process.push(RecordSpan::Unsampled(cx));
                continue;
            }
            process.push(RecordSpan::Recording(traced.len()));
            traced.push(Traced {
                cx,
                parent: parent_sc.is_valid().then(|| parent_sc.span_id()),
                send: None,
                partition: src.partition,
                offset: src.offset,
                key: src.key.to_string(),
                transaction_id: src.transaction_id.to_string(),
            });
        }
        if unbuilt > 0 {
            telemetry::trace::count_unbuilt_spans(unbuilt);
        }
        // Kept whenever a record it links to is: the links from their traces lead somewhere.
        let batch = (!traced.is_empty()).then(|| {
            let cx = SpanContext::new(telemetry::trace::new_trace_id(), telemetry::trace::new_span_id(), TraceFlags::SAMPLED, false, TraceState::NONE);
            let names = Naming {
                input_topic: naming.input_topic.to_string(),
                output_topic: naming.output_topic.to_string(),
                group: naming.group.to_string(),
                process: process_name,
                send: operation_name("send", naming.output_topic),
            };
            (cx, names)
        });
        Self { process, traced, batch, started: nanos(started), records: sources.len() }
    }

    /// The trace headers for record i's outputs: the `send decisions` span's context when the
    /// record is sampled (the span starts now), otherwise the record's own span context.
    pub fn output_headers(&mut self, i: usize, key: &str) -> OwnedHeaders {
        let traced = match &self.process[i] {
            RecordSpan::Recording(t) => &mut self.traced[*t],
            RecordSpan::Unsampled(sc) => return kafka_headers(sc),
        };
        let id = telemetry::trace::new_span_id();
        traced.send = Some((id, nanos(SystemTime::now()), key.to_string()));
        let cx = &traced.cx;
        kafka_headers(&SpanContext::new(cx.trace_id(), id, cx.trace_flags(), false, cx.trace_state().clone()))
    }

    /// Record i's trace id when its span is recorded and exported, for exemplars.
    pub fn exported_trace(&self, i: usize) -> Option<String> {
        match &self.process[i] {
            RecordSpan::Recording(t) => telemetry::trace::exported_trace_id(&self.traced[*t].cx),
            RecordSpan::Unsampled(_) => None,
        }
    }

    /// Record i's span ids, for its log lines.
    pub fn ids(&self, i: usize) -> SpanIds {
        SpanIds::of(match &self.process[i] {
            RecordSpan::Recording(t) => &self.traced[*t].cx,
            RecordSpan::Unsampled(sc) => sc,
        })
    }

    /// Ends every span after the batch committed at `ended`: stage children with the batch's
    /// stage times, decision attributes on each record's span.
    pub fn finish(self, decisions: &[Decision], fetch: (SystemTime, SystemTime), stages: StageTimes, ended: SystemTime) {
        if self.batch.is_none() {
            return; // no record sampled: nothing to end
        }
        // Sized up front: a filtered iterator would grow the vector from four, one copy per doubling.
        let mut outcomes = Vec::with_capacity(self.traced.len());
        outcomes.extend(self.process.iter().zip(decisions).filter(|(record, _)| matches!(record, RecordSpan::Recording(_))).map(|(_, d)| Outcome {
            decision: d.decision.as_str(),
            risk_level: d.risk_level.as_str(),
            fraud_probability: d.fraud_probability,
            model_version: d.model_version.clone(),
            degraded: d.degraded,
            user_features_found: d.user_features_found,
        }));
        let degraded = decisions.iter().filter(|d| d.degraded).count();
        let times = Times { ended: nanos(ended), fetch: pair(fetch), inference: pair(stages.inference), rules: pair(stages.rules) };
        self.submit(Ending::Scored { outcomes, degraded, times });
    }

    /// Ends every span with an error: the batch was rolled back and will be processed again.
    pub fn fail(self, reason: &str) {
        if self.batch.is_none() {
            return;
        }
        self.submit(Ending::Failed { reason: reason.to_string(), ended: nanos(SystemTime::now()) });
    }

    fn submit(self, ending: Ending) {
        let Some((batch, naming)) = self.batch else { return };
        telemetry::trace::submit_spans(Box::new(Ended { traced: self.traced, batch, started: self.started, records: self.records, naming, ending }));
    }
}

/// What the decision says, on the record's spans.
struct Outcome {
    decision: &'static str,
    risk_level: &'static str,
    fraud_probability: f64,
    model_version: String,
    degraded: bool,
    user_features_found: bool,
}

/// When the batch's stages ran, in nanoseconds since the epoch.
struct Times {
    ended: u64,
    fetch: (u64, u64),
    inference: (u64, u64),
    rules: (u64, u64),
}

enum Ending {
    /// Committed: an outcome for each traced record in order (fewer only if the batch had
    /// fewer decisions than records).
    Scored { outcomes: Vec<Outcome>, degraded: usize, times: Times },
    Failed { reason: String, ended: u64 },
}

/// A batch's spans on their way to the export thread.
struct Ended {
    traced: Vec<Traced>,
    batch: SpanContext,
    started: u64,
    records: usize,
    naming: Naming,
    ending: Ending,
}

impl EncodeSpans for Ended {
    fn spans(&self) -> usize {
        let sends = self.traced.iter().filter(|t| t.send.is_some()).count();
        let stages = match &self.ending {
            Ending::Scored { outcomes, .. } => 3 * outcomes.len(),
            Ending::Failed { .. } => 0,
        };
        1 + self.traced.len() + sends + stages
    }

    fn encode(&self, w: &mut SpanWriter<'_>) {
        let n = &self.naming;
        let (ended, error, outcomes) = match &self.ending {
            Ending::Scored { outcomes, times, .. } => (times.ended, None, outcomes.as_slice()),
            Ending::Failed { reason, ended } => (*ended, Some(reason.as_str()), &[][..]),
        };
        let process = EncodedAttributes::new(|a| {
            a.str("messaging.system", "kafka")
                .str("messaging.operation.name", "process")
                .str("messaging.operation.type", "process")
                .str("messaging.destination.name", &n.input_topic)
                .str("messaging.consumer.group.name", &n.group);
        });
        let send = EncodedAttributes::new(|a| {
            a.str("messaging.system", "kafka")
                .str("messaging.operation.name", "send")
                .str("messaging.operation.type", "send")
                .str("messaging.destination.name", &n.output_topic);
        });
        let batch = &self.batch;
        // A batch's records come from a partition or two: each one's number is written once.
        let mut partition = (None, String::new());
        for (i, t) in self.traced.iter().enumerate() {
            if partition.0 != Some(t.partition) {
                partition = (Some(t.partition), t.partition.to_string());
            }
            let outcome = outcomes.get(i);
            let head = |span_id, parent, name, kind, (start, end)| SpanHead {
                trace_id: t.cx.trace_id(),
                span_id,
                parent,
                trace_state: t.cx.trace_state(),
                name,
                kind,
                start,
                end,
            };
            w.span(&head(t.cx.span_id(), t.parent.map(|p| (p, true)), &n.process, SpanKind::Consumer, (self.started, ended)), |b| {
                b.encoded(&process);
                let mut a = b.attributes();
                a.str("messaging.destination.partition.id", &partition.1)
                    .i64("messaging.kafka.offset", t.offset)
                    .str("messaging.kafka.message.key", &t.key)
                    .str("fraudstream.transaction_id", &t.transaction_id);
                if let Some(o) = outcome {
                    a.str("fraudstream.decision", o.decision)
                        .str("fraudstream.risk_level", o.risk_level)
                        .f64("fraudstream.fraud_probability", o.fraud_probability)
                        .str("fraudstream.model_version", &o.model_version)
                        .bool("fraudstream.degraded", o.degraded);
                }
                b.link(batch.trace_id(), batch.span_id(), false, |a| {
                    a.str("fraudstream.link", "batch");
                });
                if let Some(reason) = error {
                    b.error(reason);
                }
            });
            let child = Some((t.cx.span_id(), false));
            if let Some((id, start, key)) = &t.send {
                w.span(&head(*id, child, &n.send, SpanKind::Producer, (*start, ended)), |b| {
                    b.encoded(&send);
                    b.attributes().str("messaging.kafka.message.key", key);
                    if let Some(reason) = error {
                        b.error(reason);
                    }
                });
            }
            let (Some(o), Ending::Scored { times, .. }) = (outcome, &self.ending) else { continue };
            let new_id = telemetry::trace::new_span_id;
            w.span(&head(new_id(), child, "fetch_features", SpanKind::Internal, times.fetch), |b| {
                b.attributes()
                    .str("db.system.name", "redis")
                    .bool("fraudstream.user_features_found", o.user_features_found)
                    .bool("fraudstream.degraded", o.degraded);
            });
            w.span(&head(new_id(), child, "model_inference", SpanKind::Internal, times.inference), |b| {
                b.attributes().str("fraudstream.model_version", &o.model_version);
            });
            w.span(&head(new_id(), child, "apply_business_rules", SpanKind::Internal, times.rules), |b| {
                b.attributes().str("fraudstream.decision", o.decision).f64("fraudstream.fraud_probability", o.fraud_probability);
            });
        }
        let head = SpanHead {
            trace_id: batch.trace_id(),
            span_id: batch.span_id(),
            parent: None,
            trace_state: batch.trace_state(),
            name: "score batch",
            kind: SpanKind::Internal,
            start: self.started,
            end: ended,
        };
        w.span(&head, |b| {
            let mut a = b.attributes();
            a.str("messaging.system", "kafka")
                .str("messaging.destination.name", &n.input_topic)
                .str("messaging.consumer.group.name", &n.group)
                .i64("messaging.batch.message_count", self.records as i64);
            if let Ending::Scored { degraded, .. } = &self.ending {
                a.i64("fraudstream.degraded_records", *degraded as i64);
            }
            for t in &self.traced {
                b.link(t.cx.trace_id(), t.cx.span_id(), false, |_| {});
            }
            if let Some(reason) = error {
                b.error(reason);
            }
        });
    }
}

/// `process transactions` and its four children.
const SPANS_PER_RECORD: u64 = 5;

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn pair((from, to): (SystemTime, SystemTime)) -> (u64, u64) {
    (nanos(from), nanos(to))
}

/// The messaging span name `<operation> <topic>` (OpenTelemetry's convention).
fn operation_name(operation: &str, topic: &str) -> String {
    format!("{operation} {topic}")
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceId;
    use schemas::topics;
    use testkit::otlp::{CONSUMER, PRODUCER, ReceivedSpan};

    use super::*;

    #[test]
    fn span_names_follow_operation_and_topic() {
        assert_eq!(operation_name("process", topics::TRANSACTIONS), "process transactions");
        assert_eq!(operation_name("send", "decisions-eu"), "send decisions-eu");
    }

    fn traced(i: u64, parent: Option<SpanId>, sent: bool) -> Traced {
        Traced {
            cx: SpanContext::new(TraceId::from(u128::from(i) * 1_000_003), SpanId::from(i * 31), TraceFlags::SAMPLED, false, TraceState::NONE),
            parent,
            send: sent.then(|| (SpanId::from(i * 37), 5_000, format!("user-{i}"))),
            partition: i as i32,
            offset: 40 + i as i64,
            key: format!("user-{i}"),
            transaction_id: format!("tx-{i}"),
        }
    }

    fn ended(ending: Ending) -> Ended {
        Ended {
            traced: vec![traced(1, Some(SpanId::from(0xaa)), true), traced(2, None, false)],
            batch: SpanContext::new(TraceId::from(77), SpanId::from(78), TraceFlags::SAMPLED, false, TraceState::NONE),
            started: 1_000,
            records: 500,
            naming: Naming {
                input_topic: "transactions".into(),
                output_topic: "decisions".into(),
                group: "scorers".into(),
                process: "process transactions".into(),
                send: "send decisions".into(),
            },
            ending,
        }
    }

    /// The spans as a collector receives them.
    fn written(e: &Ended) -> Vec<ReceivedSpan> {
        let body = telemetry::otlp::encode_request_with(&[], "scorer", e.spans(), |w| e.encode(w));
        let spans = testkit::otlp::decode(&body).expect("a valid request");
        assert_eq!(spans.len(), e.spans(), "the count given to the export queue is what is written");
        spans
    }

    fn named<'a>(spans: &'a [ReceivedSpan], name: &str, parent: &str) -> &'a ReceivedSpan {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name && s.parent_span_id == parent).collect();
        assert_eq!(found.len(), 1, "one {name:?} under {parent:?} in {spans:#?}");
        found[0]
    }

    #[test]
    fn a_scored_batch_gives_each_sampled_record_its_spans_and_one_batch_span_linking_them() {
        let outcome = |degraded| Outcome {
            decision: "review",
            risk_level: "medium",
            fraud_probability: 0.625,
            model_version: "1.0.0".into(),
            degraded,
            user_features_found: !degraded,
        };
        let times = Times { ended: 9_000, fetch: (1_100, 1_200), inference: (1_300, 1_400), rules: (1_500, 1_600) };
        let e = ended(Ending::Scored { outcomes: vec![outcome(false), outcome(true)], degraded: 7, times });
        let spans = written(&e);
        // Record 1 came with its producer's context; record 2 started its trace here.
        let first = named(&spans, "process transactions", "00000000000000aa");
        let second = named(&spans, "process transactions", "");
        for (span, i) in [(first, 1u64), (second, 2)] {
            assert_eq!(span.kind, CONSUMER);
            assert_eq!((span.trace_id.as_str(), span.span_id.as_str()), (format!("{:032x}", u128::from(i) * 1_000_003).as_str(), format!("{:016x}", i * 31).as_str()));
            assert_eq!((span.start_unix_nano, span.end_unix_nano, span.status), (1_000, 9_000, 0));
            for (k, v) in [
                ("messaging.system", "kafka"),
                ("messaging.operation.name", "process"),
                ("messaging.destination.name", "transactions"),
                ("messaging.consumer.group.name", "scorers"),
                ("fraudstream.decision", "review"),
                ("fraudstream.risk_level", "medium"),
                ("fraudstream.fraud_probability", "0.625"),
                ("fraudstream.model_version", "1.0.0"),
            ] {
                assert_eq!(span.attr(k), Some(v), "{k} on {span:?}");
            }
            assert_eq!(span.attr("messaging.destination.partition.id"), Some(i.to_string().as_str()));
            assert_eq!(span.attr("messaging.kafka.offset"), Some((40 + i).to_string().as_str()));
            assert_eq!(span.attr("messaging.kafka.message.key"), Some(format!("user-{i}").as_str()));
            assert_eq!(span.attr("fraudstream.transaction_id"), Some(format!("tx-{i}").as_str()));
            assert_eq!(span.links, vec![(format!("{:032x}", 77), format!("{:016x}", 78))]);
            for (stage, (start, end)) in [("fetch_features", (1_100, 1_200)), ("model_inference", (1_300, 1_400)), ("apply_business_rules", (1_500, 1_600))] {
                let s = named(&spans, stage, &span.span_id);
                assert_eq!((s.trace_id.as_str(), s.start_unix_nano, s.end_unix_nano), (span.trace_id.as_str(), start, end));
            }
        }
        assert_eq!(named(&spans, "fetch_features", &first.span_id).attr("fraudstream.degraded"), Some("false"));
        assert_eq!(named(&spans, "fetch_features", &second.span_id).attr("fraudstream.user_features_found"), Some("false"));
        assert_eq!(named(&spans, "apply_business_rules", &first.span_id).attr("fraudstream.decision"), Some("review"));
        // Only record 1's outputs were produced: its send span, whose context they carry.
        let send = named(&spans, "send decisions", &first.span_id);
        assert_eq!((send.kind, send.span_id.as_str(), send.start_unix_nano), (PRODUCER, format!("{:016x}", 37).as_str(), 5_000));
        assert_eq!((send.attr("messaging.destination.name"), send.attr("messaging.kafka.message.key")), (Some("decisions"), Some("user-1")));
        assert!(spans.iter().all(|s| s.name != "send decisions" || s.parent_span_id == first.span_id));
        let batch = named(&spans, "score batch", "");
        assert_eq!(batch.links, vec![(first.trace_id.clone(), first.span_id.clone()), (second.trace_id.clone(), second.span_id.clone())]);
        assert_eq!((batch.attr("messaging.batch.message_count"), batch.attr("fraudstream.degraded_records")), (Some("500"), Some("7")));
    }

    #[test]
    fn a_rolled_back_batch_ends_its_spans_with_the_error_and_no_stages() {
        let e = ended(Ending::Failed { reason: "broker gone".into(), ended: 3_000 });
        let spans = written(&e);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["process transactions", "send decisions", "process transactions", "score batch"]);
        for s in &spans {
            assert_eq!((s.status, s.end_unix_nano), (2, 3_000), "{s:?}");
            assert_eq!(s.attr("fraudstream.decision"), None);
        }
    }
}
