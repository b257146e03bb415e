//! The cost of turning spans into an OTLP request body: opentelemetry-proto's conversion into
//! generated structs plus prost encoding, against `telemetry::otlp::encode_request` writing the
//! same bytes directly. 25,000 spans shaped like the scorer's. Prints numbers; asserts nothing.
//!
//!   cargo run --release -p telemetry --example otlp_encode_bench
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, Sampler};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::Resource;
use prost::Message;

#[derive(Debug, Clone, Default)]
struct Capture(Arc<Mutex<Vec<SpanData>>>);
impl SpanExporter for Capture {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult { self.0.lock().unwrap().extend(batch); Ok(()) }
}

fn main() {
    let cap = Capture::default();
    let provider = SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOn).with_simple_exporter(cap.clone()).build();
    let tracer = provider.tracer("scorer");
    let now = SystemTime::now();
    for i in 0..5000i64 {
        let mut p = tracer.span_builder("process transactions").with_kind(SpanKind::Consumer).with_start_time(now).start_with_context(&tracer, &Context::new());
        p.set_attributes([
            KeyValue::new("messaging.system", "kafka"), KeyValue::new("messaging.operation.name", "process"), KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", "transactions".to_string()), KeyValue::new("messaging.destination.partition.id", "1".to_string()),
            KeyValue::new("messaging.kafka.offset", i), KeyValue::new("messaging.kafka.message.key", "10042".to_string()),
            KeyValue::new("messaging.consumer.group.name", "fraudstream-scorers".to_string()), KeyValue::new("fraudstream.transaction_id", format!("txn-{i}")),
            KeyValue::new("fraudstream.decision", "approve"), KeyValue::new("fraudstream.risk_level", "low"), KeyValue::new("fraudstream.fraud_probability", 0.12),
            KeyValue::new("fraudstream.model_version", "1.0.0".to_string()), KeyValue::new("fraudstream.degraded", false),
        ]);
        p.add_link(p.span_context().clone(), vec![KeyValue::new("fraudstream.link", "batch")]);
        let cx = Context::new().with_remote_span_context(p.span_context().clone());
        for n in ["fetch_features", "model_inference", "apply_business_rules", "send decisions"] {
            let mut c = tracer.span_builder(n).with_start_time(now).with_attributes([KeyValue::new("a", "b"), KeyValue::new("c", true)]).start_with_context(&tracer, &cx);
            c.end();
        }
        p.end();
    }
    let spans = std::mem::take(&mut *cap.0.lock().unwrap());
    let n = spans.len();
    let resource = Resource::builder().with_service_name("scorer").build();
    println!("| encoder | µs per span | bytes per span |");
    println!("| --- | ---: | ---: |");
    let t = Instant::now();
    let mut bytes = 0;
    for chunk in spans.chunks(512) {
        let rs = opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(chunk.to_vec(), &(&resource).into());
        let req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest { resource_spans: rs };
        bytes += req.encode_to_vec().len();
    }
    let el = t.elapsed();
    let t2 = Instant::now();
    for chunk in spans.chunks(512) { std::hint::black_box(chunk.to_vec()); }
    let cl = t2.elapsed();
    let kvs: Vec<KeyValue> = resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    let t3 = Instant::now();
    let mut ours = 0;
    for chunk in spans.chunks(512) {
        let mut buf = Vec::with_capacity(chunk.len() * 320);
        telemetry::otlp::encode_request(&mut buf, &kvs, chunk);
        ours += buf.len();
    }
    let el3 = t3.elapsed();
    println!("| opentelemetry-proto conversion + prost encoding | {:.2} | {} |", (el.saturating_sub(cl)).as_secs_f64() * 1e6 / n as f64, bytes / n);
    println!("| telemetry::otlp::encode_request | {:.2} | {} |", el3.as_secs_f64() * 1e6 / n as f64, ours / n);
}
