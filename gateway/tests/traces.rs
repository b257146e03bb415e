//! Telemetry end to end: one `/v1/predict` is one trace from the gateway's HTTP span through
//! Kafka into the scorer, exported over OTLP to a receiver inside the test; log lines carry the
//! ids of their spans and no personal data; a dead collector costs no request and its drops are
//! counted; a collector behind TLS is reached with the CA that signed its certificate.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use fraudctl::synth::{Drift, Generator};
use testkit::otlp::{BlackHole, CONSUMER, PRODUCER, ReceivedSpan, Receiver, SERVER};
use testkit::{free_port, sample, unique};

mod common;
use common::{SEED, Stack, seed_body};

fn otel_env(endpoint: String) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("RUST_LOG", "info,gateway=debug,scorer=debug".into()),
    ]
}

/// The regex Grafana's Loki datasource takes a log line's trace id out with (its `derivedFields`
/// link from a log line to the trace in Jaeger).
fn grafana_trace_id_matcher() -> regex::Regex {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/grafana/provisioning/datasources/datasources.yaml");
    let doc = yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap().remove(0);
    let loki = doc["datasources"].as_vec().unwrap().iter().find(|d| d["type"].as_str() == Some("loki")).expect("a Loki datasource");
    let field = loki["jsonData"]["derivedFields"].as_vec().unwrap().iter().find(|f| f["name"].as_str() == Some("trace_id")).expect("a trace_id derived field");
    regex::Regex::new(field["matcherRegex"].as_str().unwrap()).unwrap()
}

fn log_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
        .collect()
}

fn one<'a>(spans: &'a [ReceivedSpan], trace_id: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id && s.name == name).collect();
    assert_eq!(found.len(), 1, "want one {name:?} in trace {trace_id}, have {found:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_is_one_trace_from_http_through_kafka_into_the_scorer() {
    let receiver = Receiver::start();
    let stack = Stack::start();
    let scorer_port = free_port();
    let scorer = stack.scorer_with(&otel_env(receiver.endpoint()), scorer_port);
    let gw = stack.gateway_with(&["--decision-deadline-ms", "5000"], &otel_env(receiver.endpoint()));
    gw.wait_ready().await;

    let mut g = Generator::new(SEED, Drift::None, unique("traced"));
    let user = Generator::user(SEED, 7);
    // An e-mail address as the user id: personal data that must not reach the logs.
    let pii_user = "jane.doe@example.com";
    let mut body = seed_body(&g.payment(&user, 1_764_000_000_000).transaction);
    body["user_id"] = pii_user.into();
    body["amount"] = 25_000.0.into(); // reviewed or blocked: logged at info with its explanation
    let (status, answer) = gw.predict(&body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let decision = answer["decision"].as_str().unwrap().to_string();
    assert!(decision == "review" || decision == "block", "{answer}");
    let trace_id = answer["trace_id"].as_str().unwrap().to_string();
    let tx_id = answer["transaction_id"].as_str().unwrap().to_string();

    // A caller's trace is continued: same trace id, the server span is the caller's child.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let continued = seed_body(&g.payment(&user, 1_764_000_000_000).transaction);
    let r = gw
        .http
        .post(format!("{}/v1/predict", gw.base))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&continued)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let traceresponse = r.headers()["traceresponse"].to_str().unwrap().to_string();
    let continued_answer: Value = r.json().await.unwrap();
    assert_eq!(continued_answer["trace_id"], caller_trace);

    let names = ["POST /v1/predict", "send transactions", "process transactions", "fetch_features", "model_inference", "apply_business_rules", "send decisions"];
    let spans = receiver.wait_for(Duration::from_secs(30), |spans| {
        [trace_id.as_str(), caller_trace].iter().all(|t| names.iter().all(|n| spans.iter().any(|s| &s.trace_id == t && s.name == *n)))
            && spans.iter().any(|s| s.name == "score batch")
    });

    // The tree of the first request.
    let server = one(&spans, &trace_id, "POST /v1/predict");
    assert_eq!((server.service.as_str(), server.kind, server.parent_span_id.as_str()), ("gateway", SERVER, ""));
    assert_eq!(server.attr("http.request.method"), Some("POST"));
    assert_eq!(server.attr("http.route"), Some("/v1/predict"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("fraudstream.decision"), Some(decision.as_str()));
    let send = one(&spans, &trace_id, "send transactions");
    assert_eq!((send.service.as_str(), send.kind, send.parent_span_id.as_str()), ("gateway", PRODUCER, server.span_id.as_str()));
    let process = one(&spans, &trace_id, "process transactions");
    assert_eq!((process.service.as_str(), process.kind, process.parent_span_id.as_str()), ("scorer", CONSUMER, send.span_id.as_str()));
    for (span, operation, topic) in [(send, "send", "transactions"), (process, "process", "transactions")] {
        assert_eq!(span.attr("messaging.system"), Some("kafka"));
        assert_eq!(span.attr("messaging.operation.name"), Some(operation));
        assert_eq!(span.attr("messaging.operation.type"), Some(operation));
        assert_eq!(span.attr("messaging.destination.name"), Some(topic));
        assert_eq!(span.attr("messaging.kafka.message.key"), Some(pii_user));
        assert_eq!(span.attr("fraudstream.transaction_id"), Some(tx_id.as_str()));
        assert_eq!(span.attr("messaging.destination.partition.id"), process.attr("messaging.destination.partition.id"));
        assert_eq!(span.attr("messaging.kafka.offset"), process.attr("messaging.kafka.offset"));
    }
    assert!(process.attr("messaging.kafka.offset").unwrap().parse::<i64>().unwrap() >= 0);
    assert_eq!(process.attr("messaging.consumer.group.name"), Some(stack.group.as_str()));
    assert_eq!(process.attr("fraudstream.decision"), Some(decision.as_str()));
    assert_eq!(process.attr("fraudstream.model_version"), Some("1.0.0"));
    assert_eq!(process.attr("fraudstream.degraded"), Some("false"));
    for name in ["fetch_features", "model_inference", "apply_business_rules", "send decisions"] {
        let child = one(&spans, &trace_id, name);
        assert_eq!((child.service.as_str(), child.parent_span_id.as_str()), ("scorer", process.span_id.as_str()), "{name}");
        assert!(child.start_unix_nano >= process.start_unix_nano && child.end_unix_nano <= process.end_unix_nano, "{name} outside its parent");
    }
    let out = one(&spans, &trace_id, "send decisions");
    assert_eq!((out.kind, out.attr("messaging.destination.name")), (PRODUCER, Some("decisions")));
    // The decision record carries that span's context on.
    let decided = tokio::task::block_in_place(|| testkit::kafka::read(&stack.broker.bootstrap(), "decisions", 2, Duration::from_secs(30), Duration::from_millis(500)));
    let record = decided.iter().find(|r| r.decode::<schemas::Decision>().transaction_id == tx_id).expect("the decision record");
    assert_eq!(record.headers["traceparent"], format!("00-{trace_id}-{}-01", out.span_id));
    // The batch the record was scored in: linked from the record's span, and back.
    assert_eq!(process.links.len(), 1, "{process:?}");
    let batch = spans.iter().find(|s| (s.trace_id.clone(), s.span_id.clone()) == process.links[0]).expect("the linked batch span was exported");
    assert_eq!(batch.name, "score batch");
    assert!(batch.links.contains(&(process.trace_id.clone(), process.span_id.clone())));
    assert!(batch.attr("messaging.batch.message_count").unwrap().parse::<i64>().unwrap() >= 1);

    // The continued trace.
    let continued_server = one(&spans, caller_trace, "POST /v1/predict");
    assert_eq!(continued_server.parent_span_id, caller_span);
    // The answer names the gateway's server span (W3C `traceresponse`).
    assert_eq!(traceresponse, format!("00-{caller_trace}-{}-01", continued_server.span_id));

    // An error names its trace too: the 422's server span is exported with the same ids.
    let r = gw.http.post(format!("{}/v1/predict", gw.base)).json(&serde_json::json!({"amount": -1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let parts: Vec<String> = r.headers()["traceresponse"].to_str().unwrap().split('-').map(String::from).collect();
    assert_eq!(parts.len(), 4, "{parts:?}");
    let rejected = receiver.wait_for(Duration::from_secs(30), |spans| spans.iter().any(|s| s.trace_id == parts[1] && s.span_id == parts[2]));
    let rejected = rejected.iter().find(|s| s.trace_id == parts[1] && s.span_id == parts[2]).unwrap();
    assert_eq!((rejected.name.as_str(), rejected.attr("http.response.status_code")), ("POST /v1/predict", Some("422")));
    assert_eq!(one(&spans, caller_trace, "process transactions").parent_span_id, one(&spans, caller_trace, "send transactions").span_id);

    // Logs: JSON lines carrying their span's ids, no personal data.
    let scorer_logs = scorer.logs();
    let gateway_logs = gw.service.logs();
    for text in [&scorer_logs, &gateway_logs] {
        assert!(!text.contains(pii_user), "personal data in the logs");
    }
    let decision_line = log_lines(&scorer_logs)
        .into_iter()
        .find(|l| l["message"] == "decision" && l["transaction_id"] == tx_id.as_str())
        .expect("the review or block is logged");
    assert_eq!(decision_line["level"], "INFO");
    assert_eq!(decision_line["trace_id"], trace_id.as_str());
    assert_eq!(decision_line["span_id"], process.span_id.as_str());
    assert_eq!(decision_line["user_id"], "[email]");
    assert_eq!(decision_line["decision"], decision.as_str());
    assert_eq!(decision_line["top_features"].as_str().unwrap().split(", ").count(), 3, "{decision_line}");
    // From the log line to its trace, as Grafana goes: the Loki datasource's regex finds the id.
    let matcher = grafana_trace_id_matcher();
    let raw_line = scorer_logs.lines().find(|l| l.contains(r#""message":"decision""#) && l.contains(tx_id.as_str())).unwrap();
    assert_eq!(matcher.captures(raw_line).map(|c| c[1].to_string()), Some(trace_id.clone()), "{raw_line}");
    let answered_line = log_lines(&gateway_logs)
        .into_iter()
        .find(|l| l["message"] == "decision returned" && l["transaction_id"] == tx_id.as_str())
        .expect("the gateway logs the answer at debug");
    assert_eq!(answered_line["trace_id"], trace_id.as_str());
    assert_eq!(answered_line["span_id"], server.span_id.as_str());

    // Both services counted what they exported and dropped nothing.
    let scorer_metrics = gw.http.get(format!("http://127.0.0.1:{scorer_port}/metrics")).send().await.unwrap().text().await.unwrap();
    let gateway_metrics = gw.metrics().await;
    for text in [&scorer_metrics, &gateway_metrics] {
        assert!(sample(text, "telemetry_spans_exported_total") > 0.0, "{text}");
        assert_eq!(sample(text, r#"telemetry_spans_dropped_total{reason="queue_full"}"#), 0.0);
        assert!(text.contains(r#"telemetry_spans_dropped_total{reason="export_failed"} 0"#), "{text}");
    }
}

/// What a collector that fails does to the services: requests are all answered, nothing is
/// exported, and the spans lost are counted under the reason (`gateway_reason` for the gateway's
/// SDK spans, `scorer_reason` for the scorer's own).
async fn failing_collectors_cost_no_request(gateway_collector: String, gateway_reason: &str, scorer_collector: String, scorer_reason: &str) {
    let stack = Stack::start();
    let with = |endpoint: String| {
        let mut env = otel_env(endpoint);
        env.extend([("OTEL_BSP_MAX_QUEUE_SIZE", "16".to_string()), ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".to_string())]);
        env
    };
    let scorer_port = free_port();
    let _scorer = stack.scorer_with(&with(scorer_collector), scorer_port);
    let gw = stack.gateway_with(&["--decision-deadline-ms", "5000"], &with(gateway_collector));
    gw.wait_ready().await;

    let mut g = Generator::new(SEED, Drift::None, unique("nocollector"));
    let mut answers: HashMap<StatusCode, usize> = HashMap::new();
    for i in 0..120u64 {
        let (status, _) = gw.predict(&seed_body(&g.payment(&Generator::user(SEED, i % 50), 1_764_000_000_000).transaction)).await;
        *answers.entry(status).or_default() += 1;
    }
    assert_eq!(answers.get(&StatusCode::OK), Some(&120), "{answers:?}");

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let gateway_metrics = gw.metrics().await;
        let scorer_metrics = gw.http.get(format!("http://127.0.0.1:{scorer_port}/metrics")).send().await.unwrap().text().await.unwrap();
        let gateway_dropped = sample(&gateway_metrics, &format!(r#"telemetry_spans_dropped_total{{reason="{gateway_reason}"}}"#));
        let scorer_dropped = sample(&scorer_metrics, &format!(r#"telemetry_spans_dropped_total{{reason="{scorer_reason}"}}"#));
        if gateway_dropped > 0.0 && scorer_dropped > 0.0 {
            assert_eq!(sample(&gateway_metrics, "telemetry_spans_exported_total"), 0.0);
            assert_eq!(sample(&scorer_metrics, "telemetry_spans_exported_total"), 0.0);
            println!("failing collectors: gateway dropped {gateway_dropped} spans ({gateway_reason}), scorer {scorer_dropped} ({scorer_reason})");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "drops not counted:\n{gateway_metrics}\n{scorer_metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The gateway's exporter hangs on a silent collector, so its queue fills; the scorer's is
/// refused, so its batches fail.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_or_silent_collector_costs_no_request_and_its_drops_are_counted() {
    let silent = BlackHole::start();
    let refused = format!("http://127.0.0.1:{}", free_port());
    failing_collectors_cost_no_request(silent.endpoint(), "queue_full", refused, "export_failed").await;
}

/// The other way round: the scorer's spans (written without the SDK) fill their queue while a
/// silent collector holds the export, and the gateway's fail against a refusing one.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_collector_fills_the_scorers_queue_and_a_refusing_one_fails_the_gateways_exports() {
    let silent = BlackHole::start();
    let refused = format!("http://127.0.0.1:{}", free_port());
    failing_collectors_cost_no_request(refused, "export_failed", silent.endpoint(), "queue_full").await;
}

/// A collector reached over HTTPS, its certificate signed by a private CA: with that CA in
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` the spans arrive; without it the collector is not trusted,
/// the lost spans are counted, and requests are answered all the same.
#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_collector_over_https_verified_against_the_configured_ca() {
    let dir = testkit::tls::certificates("otlp-tls");
    let receiver = Receiver::start();
    let tls = testkit::tls::TlsTerminator::start(&dir, receiver.port);
    let endpoint = format!("https://127.0.0.1:{}", tls.port());
    let stack = Stack::start();
    let mut env = otel_env(endpoint.clone());
    env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", dir.join("ca.pem").display().to_string()));
    let gw = stack.gateway_with(&[], &env);
    gw.wait_ready().await;
    let traced = |headers: &reqwest::header::HeaderMap| headers["traceresponse"].to_str().unwrap().split('-').nth(1).unwrap().to_string();
    let (status, headers, _) = gw.raw_with_headers(reqwest::Method::GET, "/v1/decisions/not-seen", None, Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let trace_id = traced(&headers);
    let spans = receiver.wait_for(Duration::from_secs(20), |spans| spans.iter().any(|s| s.trace_id == trace_id));
    let span = one(&spans, &trace_id, "GET /v1/decisions/{transaction_id}");
    assert_eq!((span.service.as_str(), span.kind), ("gateway", SERVER));

    let mut untrusting_env = otel_env(endpoint);
    untrusting_env.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".into()));
    let untrusting = stack.gateway_with(&[], &untrusting_env);
    untrusting.wait_ready().await;
    let (status, headers, _) = untrusting.raw_with_headers(reqwest::Method::GET, "/v1/decisions/not-seen", None, Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let untrusted_trace = traced(&headers);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = untrusting.metrics().await;
        if sample(&metrics, r#"telemetry_spans_dropped_total{reason="export_failed"}"#) > 0.0 {
            assert_eq!(sample(&metrics, "telemetry_spans_exported_total"), 0.0, "{metrics}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "failed export not counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(receiver.spans().iter().all(|s| s.trace_id != untrusted_trace), "a span went to a collector its exporter should not trust");
    // The log says why, not only which URL.
    let logs = untrusting.service.logs();
    assert!(logs.lines().any(|l| l.contains("span export failed") && l.contains("certificate verify failed")), "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_trace_settings_stop_a_service_at_start_with_the_reason() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://collector:4317"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/collector-ca.pem"),
    ] {
        let mut env = vec![(var, value.to_string())];
        if var != "OTEL_EXPORTER_OTLP_ENDPOINT" {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318".into()));
        }
        let args = ["--listen".to_string(), format!("127.0.0.1:{}", free_port())];
        let out = std::process::Command::new(testkit::process::bin("gateway")).args(&args).envs(env).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var) && stderr.contains(value), "{var}={value}: {stderr}");
    }
}
