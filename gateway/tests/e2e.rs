//! The whole pipeline from HTTP to `decisions` and back: gateway and scorer processes against a
//! real Tansu broker and a real Redis.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use fraudctl::synth::{Drift, Generator};
use schemas::topics;
use scorer::{ModelCard, Scorer, UserLookup};
use testkit::kafka::{TestProducer, read};
use testkit::unique;

mod common;
use common::{SEED, Stack, USERS, seed_body};

#[tokio::test(flavor = "multi_thread")]
async fn http_predictions_get_the_scoring_cores_decisions_and_direct_records_are_decided_too() {
    let stack = Stack::start();
    let _scorer = stack.scorer();
    let gw = stack.gateway(&["--decision-deadline-ms", "5000"]);
    gw.wait_ready().await;

    let mut g = Generator::new(SEED, Drift::None, unique("http"));
    let users: Vec<_> = (0..USERS).map(|n| Generator::user(SEED, n)).collect();
    let txs: Vec<_> = (0..40).map(|i| g.payment(&users[i % USERS as usize], 1_764_000_000_000).transaction).collect();

    let mut answers = HashMap::new();
    for tx in &txs {
        let (status, body) = gw.predict(&seed_body(tx)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        answers.insert(tx.transaction_id.clone(), body);
    }

    let card = ModelCard::load(&ModelCard::bundled_path()).unwrap();
    let mut core = Scorer::from_card(card, 1).unwrap();
    let batch = txs
        .iter()
        .map(|tx| (tx.clone(), UserLookup::Found(users[(tx.user_id.parse::<u64>().unwrap() - 10_000) as usize].features.clone())))
        .collect();
    for want in core.decide_batch(batch, Instant::now()).unwrap() {
        let got = &answers[&want.transaction_id];
        assert!((got["fraud_probability"].as_f64().unwrap() - want.fraud_probability).abs() < 1e-6);
        assert_eq!(got["model_version"], "1.0.0");
        assert_eq!(got["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(got["top_features"].as_array().unwrap().len(), 3);
        assert_eq!(got["degraded"], false);
        assert!(got["latency_ms"].as_f64().unwrap() > 0.0);
        if want.amount <= 10_000.0 {
            assert_eq!(got["decision"], want.decision.as_str());
            assert_eq!(got["risk_level"], want.risk_level.as_str());
        }
    }

    // The trace id answered is the one carried on the transaction record.
    let records = read(&stack.broker.bootstrap(), topics::TRANSACTIONS, txs.len(), Duration::from_secs(30), Duration::ZERO);
    for r in &records {
        let tx: schemas::Transaction = r.decode();
        let trace_id = answers[&tx.transaction_id]["trace_id"].as_str().unwrap().to_string();
        assert!(r.headers["traceparent"].contains(&trace_id));
    }

    // A retry of a decided transaction gets the same decision and is not published again.
    let (status, again) = gw.predict(&seed_body(&txs[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["fraud_probability"], answers[&txs[0].transaction_id]["fraud_probability"]);
    assert_eq!(again["trace_id"], answers[&txs[0].transaction_id]["trace_id"], "the trace the decision was made in");
    // The same transaction id for another payment is refused, not answered with this decision.
    let mut other = seed_body(&txs[0]);
    other["amount"] = json!(txs[0].amount + 1.0);
    let (status, refused) = gw.predict(&other).await;
    assert_reused_id(status, &refused, "amount");

    // A record produced straight to Kafka is decided and can be looked up.
    let direct = g.payment(&users[3], 1_764_000_000_000).transaction;
    let p = TestProducer::new(&stack.broker.bootstrap());
    p.send_transactions(topics::TRANSACTIONS, [&direct]);
    p.flush();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = format!("/v1/decisions/{}", direct.transaction_id);
        let (status, headers, body) = gw.raw_with_headers(reqwest::Method::GET, &path, None, vec![]).await;
        if status == StatusCode::OK {
            assert_eq!(body["transaction_id"], direct.transaction_id.as_str());
            // The trace the scorer started for it (the record came without one), not the lookup's.
            let made_in = body["trace_id"].as_str().unwrap();
            assert_eq!(made_in.len(), 32);
            assert!(!headers["traceresponse"].to_str().unwrap().contains(made_in));
            let (_, again) = gw.raw(reqwest::Method::GET, &path, None, vec![]).await;
            assert_eq!(again["trace_id"], made_in);
            // The scorer's latency, to the microsecond like every answer's.
            let latency = body["latency_ms"].to_string();
            assert!(latency.split_once('.').is_none_or(|(_, decimals)| decimals.len() <= 3), "{latency}");
            break;
        }
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(Instant::now() < deadline, "direct transaction never decided");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An id produced straight to Kafka for one payment, then sent over HTTP for another: refused,
    // not answered with the direct record's decision (here usually in before the request).
    let first = g.payment(&users[4], 1_764_000_000_000).transaction;
    p.send_transactions(topics::TRANSACTIONS, [&first]);
    p.flush();
    let mut other = seed_body(&first);
    other["amount"] = json!(first.amount + 1.0);
    let (status, refused) = gw.predict(&other).await;
    assert_reused_id(status, &refused, "amount");

    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"gateway_predictions_total{outcome="decided"} 40"#), "{metrics}");
    assert!(metrics.contains(r#"gateway_predictions_total{outcome="replayed"} 1"#));
    assert!(metrics.contains(r#"gateway_predictions_total{outcome="rejected"} 2"#));
    assert!(metrics.contains(r#"http_requests_total{method="POST",route="/v1/predict",status="200"} 41"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors_naming_the_fields() {
    let stack = Stack::start();
    let gw = stack.gateway(&["--max-body-bytes", "1024", "--body-read-timeout-ms", "300"]);
    gw.wait_ready().await;
    use reqwest::Method;

    // (method, path, content type, body, expected status)
    type Case = (Method, &'static str, Option<&'static str>, Vec<u8>, StatusCode);
    let cases: Vec<Case> = vec![
        (Method::POST, "/v1/predict", Some("application/json"), b"{\"amount\": ".to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, "/v1/predict", Some("application/json"), b"[1, 2]".to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, "/v1/predict", Some("text/plain"), b"{}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (Method::POST, "/v1/predict", None, b"{}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (Method::POST, "/v1/predict", Some("application/json"), vec![b' '; 2048], StatusCode::PAYLOAD_TOO_LARGE),
        (Method::GET, "/v1/predict", None, vec![], StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/v1/decisions/never-seen", None, vec![], StatusCode::NOT_FOUND),
        (Method::GET, "/v1/decisions/%FF%FE", None, vec![], StatusCode::BAD_REQUEST),
    ];
    for (method, path, ct, body, want) in cases {
        let (status, headers, json) = gw.raw_with_headers(method.clone(), path, ct, body).await;
        assert_eq!(status, want, "{method} {path} {ct:?}: {json}");
        assert!(headers.contains_key("traceresponse"), "{method} {path}: no traceresponse");
        assert!(json["error"].is_string() && json["details"].is_array(), "{json}");
    }

    let invalid = [
        (json!({"user_id": 1, "amount": 10, "payment_method": "card"}), vec![("transaction_id", "is required")]),
        (json!({"transaction_id": "t", "user_id": 1, "amount": -3, "payment_method": "card"}), vec![("amount", "must be > 0")]),
        (json!({"transaction_id": "t", "user_id": 1, "amount": 1e9, "payment_method": "card"}), vec![("amount", "must be at most 1000000")]),
        (json!({"transaction_id": "t", "user_id": 1, "amount": "ten", "payment_method": "card"}), vec![("amount", "must be a number")]),
        (json!({"transaction_id": "t", "user_id": [1], "amount": 1, "payment_method": "cheque"}), vec![("user_id", "must be a string or an integer"), ("payment_method", "must be one of card, bank_transfer, wallet, crypto")]),
        (json!({"transaction_id": "t", "user_id": "u", "amount": 1, "payment_method": "card", "timestamp": "noon"}), vec![("timestamp", "must be RFC 3339 (2026-01-15T14:30:00Z) or epoch milliseconds")]),
        (json!({"transaction_id": "t", "user_id": "u", "amount": 1, "payment_method": "card", "currency": "XYZ", "country": "XX"}), vec![("currency", "must be an ISO 4217 currency code such as USD"), ("country", "must be an ISO 3166-1 alpha-2 country code such as US")]),
    ];
    for (body, want) in invalid {
        let (status, json) = gw.predict(&body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(json["error"], "invalid transaction");
        let got: Vec<(String, String)> = json["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["field"].as_str().unwrap().to_string(), d["reason"].as_str().unwrap().to_string()))
            .collect();
        let want: Vec<(String, String)> = want.iter().map(|(f, r)| (f.to_string(), r.to_string())).collect();
        assert_eq!(got, want, "{body}");
    }
    // A number beyond a double's range is an absurd amount, named like any other; deeper inside
    // the body it leaves the JSON malformed.
    for (body, want, reason) in [
        (&br#"{"transaction_id": "t", "user_id": 1, "amount": 1e400, "payment_method": "card"}"#[..], StatusCode::UNPROCESSABLE_ENTITY, Some("must be at most 1000000")),
        (br#"{"transaction_id": "t", "user_id": 1, "amount": -1e400, "payment_method": "card"}"#, StatusCode::UNPROCESSABLE_ENTITY, Some("must be > 0")),
        (br#"{"transaction_id": "t", "user_id": 1, "amount": 1, "payment_method": "card", "x": [1e400]}"#, StatusCode::BAD_REQUEST, None),
        // A payment that gives its amount twice says two things: neither is taken.
        (br#"{"transaction_id": "t", "user_id": 1, "amount": 10, "payment_method": "card", "amount": 20}"#, StatusCode::UNPROCESSABLE_ENTITY, Some("is given more than once")),
        (br#"{"transaction_id": "t", "user_id": 1, "amount": 1e400, "payment_method": "card", "amount": 20}"#, StatusCode::UNPROCESSABLE_ENTITY, Some("is given more than once")),
    ] {
        let (status, _, json) = gw.raw_with_headers(Method::POST, "/v1/predict", Some("application/json"), body.to_vec()).await;
        assert_eq!(status, want, "{json}");
        if let Some(reason) = reason {
            assert_eq!(json["details"], json!([{"field": "amount", "reason": reason}]), "{json}");
        }
    }
    // Every API answer names its trace (W3C `traceresponse`), errors included, with no collector
    // configured; scrapes and health checks are not traced.
    let r = gw.http.post(format!("{}/v1/predict", gw.base)).json(&json!({"amount": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let value = r.headers()["traceresponse"].to_str().unwrap().to_string();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 32, 16, 2], "{value}");
    assert!(parts[1].chars().all(|c| c.is_ascii_hexdigit()) && parts[1] != "0".repeat(32), "{value}");
    for path in ["/health/live", "/health/ready", "/openapi.json"] {
        let (status, headers, _) = gw.raw_with_headers(Method::GET, path, None, vec![]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(headers.get("traceresponse").is_none(), "{path}");
    }

    // Any token is a method to HTTP: methods it does not define are answered like any wrong
    // method and counted as `_OTHER`, so that no client can add series to the metrics.
    for (i, path) in ["/v1/predict", "/v1/decisions/x"].into_iter().enumerate() {
        let method = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let (status, headers, json) = gw.raw_with_headers(method, path, None, vec![]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}: {json}");
        assert!(headers.contains_key("traceresponse"), "{path}");
    }
    let r = gw.http.request(Method::from_bytes(b"BREW").unwrap(), format!("{}/no/such/route", gw.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Nothing invalid reached Kafka.
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"gateway_predictions_total{outcome="rejected"} 18"#), "{metrics}");
    assert!(!metrics.contains("BREW"), "{metrics}");
    assert!(metrics.contains(r#"http_requests_total{method="_OTHER",route="/v1/predict",status="405"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"http_requests_total{method="_OTHER",route="unmatched",status="404"} 1"#), "{metrics}");

    // A body that stops arriving is answered 408 once the body read timeout passes, as the spec
    // documents, instead of holding the request for as long as the client likes.
    let addr = gw.base.trim_start_matches("http://").to_string();
    let (raw, _) = tokio::task::spawn_blocking(move || {
        let head = "POST /v1/predict HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
        testkit::raw_exchange(&addr, format!("{head}{{\"amount\": ").as_bytes(), Duration::from_secs(5))
    })
    .await
    .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {raw:?}"));
    assert!(head.starts_with("HTTP/1.1 408"), "{raw}");
    let mut headers = reqwest::header::HeaderMap::new();
    for line in head.lines().skip(1) {
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(), value.trim().parse().unwrap());
    }
    let json: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{raw}"));
    assert_eq!(json["error"], "body not received within 300 ms");
    gw.spec.assert_answer(&Method::POST, "/v1/predict", StatusCode::REQUEST_TIMEOUT, &headers, &json);

    // A gateway with another amount limit documents the limit it enforces (and one with a
    // shorter head deadline closes idle connections sooner: below).
    let strict = stack.gateway(&["--max-amount", "500", "--header-read-timeout-ms", "600"]);
    strict.wait_ready().await;
    let (_, spec) = strict.raw(Method::GET, "/openapi.json", None, vec![]).await;
    assert_eq!(spec["components"]["schemas"]["PredictRequest"]["properties"]["amount"]["maximum"], 500);
    let (status, refused) = strict.predict(&json!({"transaction_id": "t", "user_id": 1, "amount": 500.5, "payment_method": "card"})).await;
    assert_eq!((status, &refused["details"][0]["reason"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("must be at most 500")));

    // A connection that sends nothing is closed at the head deadline the gateway was given.
    let addr = strict.base.trim_start_matches("http://").to_string();
    let (_, took) = tokio::task::spawn_blocking(move || testkit::raw_exchange(&addr, b"", Duration::from_secs(8))).await.unwrap();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(5), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_decision_in_time_is_pending_then_found_and_a_dead_broker_is_a_quick_503() {
    let mut stack = Stack::start();
    let gw = stack.gateway(&["--decision-deadline-ms", "300", "--produce-timeout-ms", "800"]);
    gw.wait_ready().await;
    let mut g = Generator::new(SEED, Drift::None, unique("pending"));
    let mut tx = g.payment(&Generator::user(SEED, 1), 1_764_000_000_000).transaction;
    // Characters a path segment must escape: the decision_url polled below still finds it.
    tx.transaction_id.push_str("/a?b#c%d é");

    // No scorer yet: accepted by Kafka, no decision within the deadline.
    let (status, pending) = gw.predict(&seed_body(&tx)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["transaction_id"], tx.transaction_id.as_str());

    // Retries of an undecided transaction — after the 202, and five at once for another — wait
    // for the decision of the one publish instead of publishing again.
    let (status, retry) = gw.predict(&seed_body(&tx)).await;
    assert_eq!((status, &retry["status"]), (StatusCode::ACCEPTED, &json!("pending")));
    assert_eq!(retry["trace_id"], pending["trace_id"], "the trace it was published in");
    // Looked up before its decision: accepted, pending — not unknown.
    let (status, looked_up) = gw.raw(reqwest::Method::GET, pending["decision_url"].as_str().unwrap(), None, vec![]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{looked_up}");
    assert_eq!((&looked_up["status"], &looked_up["trace_id"]), (&json!("pending"), &pending["trace_id"]));
    // Published, not decided: the id reused for another payment is refused and not published.
    let mut other = seed_body(&tx);
    other["user_id"] = json!("someone-else");
    let (status, refused) = gw.predict(&other).await;
    assert_reused_id(status, &refused, "user_id");
    let burst = g.payment(&Generator::user(SEED, 3), 1_764_000_000_000).transaction;
    let burst_answers = predict_concurrently(&gw, &burst, 5).await;
    assert!(burst_answers.iter().all(|(s, b)| *s == StatusCode::ACCEPTED && b["status"] == "pending"), "{burst_answers:?}");
    let published = published(&stack, 2);
    let mut ids: Vec<&str> = published.iter().map(|t| t.transaction_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![tx.transaction_id.as_str(), burst.transaction_id.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "each transaction published once");
    assert!(gw.metrics().await.contains("gateway_repeated_requests_total 5"), "{}", gw.metrics().await);

    // An id produced straight to Kafka for one payment, then sent over HTTP for another (same
    // user: the direct record comes first in the partition) to a gateway with time to wait: the
    // direct record's decision reaches the waiting request first and is not given as its answer.
    let patient = stack.gateway(&["--decision-deadline-ms", "30000"]);
    patient.wait_ready().await;
    let direct = g.payment(&Generator::user(SEED, 5), 1_764_000_000_000).transaction;
    let producer = TestProducer::new(&stack.broker.bootstrap());
    producer.send_transactions(topics::TRANSACTIONS, [&direct]);
    producer.flush();
    let reused = schemas::Transaction { amount: direct.amount + 1.0, ..direct.clone() };
    let refused = spawn_predictions(&patient, [&reused]);
    wait_until_waiting(&patient, 1).await;
    let _scorer = stack.scorer();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = gw.raw(reqwest::Method::GET, pending["decision_url"].as_str().unwrap(), None, vec![]).await;
        if status == StatusCode::OK {
            assert!(body["decision"].is_string());
            assert_eq!(body["trace_id"], pending["trace_id"], "the pending answer's trace is the decision's");
            break;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "accepted and not decided yet: {body}");
        assert!(Instant::now() < deadline, "pending transaction never decided");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = answers(refused).await.remove(0);
    assert_reused_id(status, &body, "amount");

    stack.broker.stop();
    let tx = g.payment(&Generator::user(SEED, 2), 1_764_000_000_000).transaction;
    let started = Instant::now();
    let (status, headers, body) = gw.raw_with_headers(reqwest::Method::POST, "/v1/predict", Some("application/json"), serde_json::to_vec(&seed_body(&tx)).unwrap()).await;
    let took = started.elapsed();
    assert_eq!(headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"), "a 503 says when to retry");
    println!("broker down: {status} after {took:?}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Kafka did not acknowledge"));
    assert!(took < Duration::from_secs(5), "the request hung for {took:?}");
    // Two at once for one transaction: the one that waited on the other's failed publish tries
    // itself, and neither is told it was accepted.
    let twice = g.payment(&Generator::user(SEED, 4), 1_764_000_000_000).transaction;
    let answers = predict_concurrently(&gw, &twice, 2).await;
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE), "{answers:?}");
    // Requests that were refused wait for nothing: no waiter is left behind to fill the board.
    assert!(gw.metrics().await.contains("gateway_waiting_requests 0"), "{}", gw.metrics().await);

    // Readiness follows: a gateway that cannot reach Kafka leaves the load balancer's rotation.
    let port = gw.port;
    let unready = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !fraudctl::stack::is_ready(port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    })
    .await
    .unwrap();
    assert!(unready, "still ready 20 s after the broker stopped:\n{}", gw.service.logs());
    assert!(gw.service.logs().contains("readiness changed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scorer_killed_mid_stream_leaves_every_request_answered_once_with_one_decision() {
    let stack = Stack::start();
    let mut first = stack.scorer();
    let gw = std::sync::Arc::new(stack.gateway(&["--decision-deadline-ms", "20000"]));
    gw.wait_ready().await;

    let mut g = Generator::new(SEED, Drift::None, unique("kill"));
    let txs: Vec<_> = (0..400).map(|i| g.payment(&Generator::user(SEED, i % USERS), 1_764_000_000_000).transaction).collect();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for tx in txs.clone() {
        let gw = gw.clone();
        let counter = answered.clone();
        tasks.push(tokio::spawn(async move {
            let r = gw.predict(&seed_body(&tx)).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (tx.transaction_id, r)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        if answered.load(std::sync::atomic::Ordering::Relaxed) >= 100 && first.is_running() {
            first.signal("KILL");
        }
    }
    if first.is_running() {
        first.signal("KILL");
    }
    first.wait(Duration::from_secs(10));
    let _second = stack.scorer();

    let mut answers = HashMap::new();
    for t in tasks {
        let (id, (status, body)) = t.await.unwrap();
        assert!(status == StatusCode::OK || status == StatusCode::ACCEPTED, "{status}: {body}");
        assert!(answers.insert(id, (status, body)).is_none(), "one answer per request");
    }
    assert_eq!(answers.len(), txs.len());
    // Every transaction has a decision, and the gateway reports the first one consistently.
    for (id, (status, body)) in &answers {
        let deadline = Instant::now() + Duration::from_secs(60);
        let found = loop {
            let (s, b) = gw.raw(reqwest::Method::GET, &format!("/v1/decisions/{id}"), None, vec![]).await;
            if s == StatusCode::OK {
                break b;
            }
            assert!(Instant::now() < deadline, "{id} never decided");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if *status == StatusCode::OK {
            assert_eq!(found["fraud_probability"], body["fraud_probability"], "{id}");
            assert_eq!(found["decision"], body["decision"], "{id}");
        }
    }
    let metrics = gw.metrics().await;
    let dups = metrics.lines().find(|l| l.starts_with("duplicate_decisions_total")).unwrap_or("duplicate_decisions_total ?");
    let pending = answers.values().filter(|(s, _)| *s == StatusCode::ACCEPTED).count();
    println!("scorer SIGKILL under HTTP load: {} requests, {pending} answered pending, {dups}", answers.len());
}

/// The 422 for a transaction id this gateway knows for another payment, naming `field` first.
fn assert_reused_id(status: StatusCode, body: &Value, field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "transaction_id already used for a different payment", "{body}");
    assert_eq!(body["details"][0]["field"], field, "{body}");
}

/// The transactions in `transactions` once at least `min` are there and no more came for 2 s.
fn published(stack: &Stack, min: usize) -> Vec<schemas::Transaction> {
    read(&stack.broker.bootstrap(), topics::TRANSACTIONS, min, Duration::from_secs(30), Duration::from_secs(2)).iter().map(|r| r.decode()).collect()
}

/// Starts one prediction per transaction, all at once; `answers` joins them.
fn spawn_predictions<'a>(gw: &common::Gateway, txs: impl IntoIterator<Item = &'a schemas::Transaction>) -> Vec<tokio::task::JoinHandle<(StatusCode, Value)>> {
    txs.into_iter()
        .map(|tx| {
            let (client, body) = (gw.client.clone(), seed_body(tx));
            tokio::spawn(async move { client.predict(&body).await })
        })
        .collect()
}

async fn answers(handles: Vec<tokio::task::JoinHandle<(StatusCode, Value)>>) -> Vec<(StatusCode, Value)> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// `n` concurrent predictions of the same transaction.
async fn predict_concurrently(gw: &common::Gateway, tx: &schemas::Transaction, n: usize) -> Vec<(StatusCode, Value)> {
    answers(spawn_predictions(gw, std::iter::repeat_n(tx, n))).await
}

/// Waits until `n` requests wait for their decisions on `gw`.
async fn wait_until_waiting(gw: &common::Gateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.metrics().await.contains(&format!("gateway_waiting_requests {n}")) {
        assert!(Instant::now() < deadline, "never {n} requests waiting:\n{}", gw.metrics().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that gives up while its transaction is being published does not cancel the publish:
/// once Kafka acknowledges it, a retry waits for its decision instead of publishing it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_publish_leaves_its_transaction_published_once() {
    let stack = Stack::start();
    let _scorer = stack.scorer();
    let gw = stack.gateway(&["--produce-timeout-ms", "20000", "--decision-deadline-ms", "20000"]);
    gw.wait_ready().await;
    let mut g = Generator::new(SEED, Drift::None, unique("gone"));
    let warm = g.payment(&Generator::user(SEED, 1), 1_764_000_000_000).transaction;
    assert_eq!(gw.predict(&seed_body(&warm)).await.0, StatusCode::OK);

    // The broker stalls with the record on its way; the client gives up and its request ends.
    let tx = g.payment(&Generator::user(SEED, 2), 1_764_000_000_000).transaction;
    stack.broker.pause();
    let given_up = gw.http.post(format!("{}/v1/predict", gw.base)).json(&seed_body(&tx)).timeout(Duration::from_millis(300)).send().await;
    assert!(given_up.as_ref().is_err_and(reqwest::Error::is_timeout), "{given_up:?}");
    wait_until_waiting(&gw, 0).await;
    stack.broker.resume();

    let (status, body) = gw.predict(&seed_body(&tx)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["transaction_id"], tx.transaction_id.as_str());
    let published = published(&stack, 2);
    let copies = published.iter().filter(|t| t.transaction_id == tx.transaction_id).count();
    assert_eq!(copies, 1, "published once");
    // The retry waited for the first publish, or (had its decision come first) was answered from
    // the decisions seen.
    let metrics = gw.metrics().await;
    let waited = testkit::sample(&metrics, "gateway_repeated_requests_total");
    let replayed = testkit::sample(&metrics, r#"gateway_predictions_total{outcome="replayed"}"#);
    assert_eq!(waited + replayed, 1.0, "{metrics}");
}

/// A broker that stalls (accepts connections, answers nothing) is a quick 503, not a hang. The
/// record may still land once the broker goes on; the client's retry is then published a second
/// time, and the answer, the decisions readers keep and the business events still count the
/// transaction once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_broker_is_a_quick_503_and_a_record_that_lands_late_is_counted_once() {
    let stack = Stack::start();
    let _scorer = stack.scorer();
    let gw = stack.gateway(&["--produce-timeout-ms", "800", "--decision-deadline-ms", "20000"]);
    gw.wait_ready().await;
    let mut g = Generator::new(SEED, Drift::None, unique("stalled"));
    let warm = g.payment(&Generator::user(SEED, 1), 1_764_000_000_000).transaction;
    assert_eq!(gw.predict(&seed_body(&warm)).await.0, StatusCode::OK);

    let tx = g.payment(&Generator::user(SEED, 2), 1_764_000_000_000).transaction;
    stack.broker.pause();
    let started = Instant::now();
    let (status, body) = gw.predict(&seed_body(&tx)).await;
    let took = started.elapsed();
    stack.broker.resume();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");

    // The producer is usable again once the broker is: the retry and a new payment are decided.
    let (status, body) = gw.predict(&seed_body(&tx)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let next = g.payment(&Generator::user(SEED, 3), 1_764_000_000_000).transaction;
    assert_eq!(gw.predict(&seed_body(&next)).await.0, StatusCode::OK);
    let published = published(&stack, 3);
    let copies = published.iter().filter(|t| t.transaction_id == tx.transaction_id).count();
    println!("the stalled transaction was published {copies} times");
    assert!((1..=2).contains(&copies), "{copies}");
    let events: Vec<schemas::BusinessEvent> = read(&stack.broker.bootstrap(), topics::BUSINESS_EVENTS, 3, Duration::from_secs(30), Duration::from_secs(2)).iter().map(|r| r.decode()).collect();
    let mut ids: Vec<&str> = events.iter().map(|e| e.transaction_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![warm.transaction_id.as_str(), tx.transaction_id.as_str(), next.transaction_id.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "one business event per transaction");
}

/// This broker answers a fetch with no records when it cannot read the partition within the
/// fetch's wait; with no wait at all that is every fetch of the decisions reader (as with a short
/// wait on large partitions). Every answer is then pending although the scorer decides; the
/// gateway says which partitions stall and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_decisions_reader_whose_fetches_come_back_empty_says_its_partitions_are_stalled() {
    let stack = Stack::start();
    let _scorer = stack.scorer();
    let starved = [
        // Never ready (its reader never catches up), so the first publish may meet a producer
        // still starting: a generous produce timeout.
        "--decision-deadline-ms", "300", "--produce-timeout-ms", "10000", "--decisions-recall-seconds", "0", "--stall-after-s", "2",
        "--kafka-config", "fetch.wait.max.ms=0", "--kafka-config", "statistics.interval.ms=500",
    ];
    let mut gw = stack.gateway(&starved);
    gw.service.wait_for_log("following decisions", Duration::from_secs(30));
    let mut g = Generator::new(SEED, Drift::None, unique("starved-reader"));
    let mut pending = 0;
    for user in 0..8 {
        let tx = g.payment(&Generator::user(SEED, user), 1_764_000_000_000).transaction;
        let (status, body) = gw.predict(&seed_body(&tx)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        pending += 1;
    }
    let decided = read(&stack.broker.bootstrap(), topics::DECISIONS, pending, Duration::from_secs(30), Duration::from_secs(1));
    assert_eq!(decided.len(), pending, "the scorer decides; the gateway does not see it");

    let fields = gw.service.log_fields("partition stalled", Duration::from_secs(60));
    let line = Value::Object(fields.clone());
    assert_eq!(fields["level"], "WARN", "{line}");
    assert_eq!(fields["topic"], topics::DECISIONS, "{line}");
    assert_eq!(fields["fetch_wait_ms"], "0", "{line}");
    assert!(fields["waiting"].as_i64().unwrap() >= 1, "{line}");
    assert!(fields["remedy"].as_str().unwrap().contains("DECISIONS_FETCH_WAIT_MS"), "{line}");
    let metrics = gw.metrics().await;
    assert!(testkit::sample(&metrics, "kafka_consumer_stalled_partitions") >= 1.0, "{metrics}");
}

/// A gateway started after others decided transactions reads the last minutes of `decisions`
/// before it reports ready: a retry of a transaction decided before it started gets that
/// decision without being published again, and lookups find it. With no recall window it knows
/// only what is decided after its start.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_gateway_still_answers_retries_and_lookups_of_recent_decisions() {
    let stack = Stack::start();
    let _scorer = stack.scorer();
    let mut g = Generator::new(SEED, Drift::None, unique("recall"));
    let txs: Vec<_> = (0..3).map(|i| g.payment(&Generator::user(SEED, i), 1_764_000_000_000).transaction).collect();
    let mut first = stack.gateway(&["--decision-deadline-ms", "10000"]);
    first.wait_ready().await;
    let mut decided = Vec::new();
    for tx in &txs {
        let (status, body) = first.predict(&seed_body(tx)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        decided.push(body);
    }
    first.service.signal("TERM");
    assert_eq!(tokio::task::block_in_place(|| first.service.wait(Duration::from_secs(15))), Some(0));

    let restarted = stack.gateway(&[]);
    restarted.wait_ready().await;
    for (tx, before) in txs.iter().zip(&decided) {
        let (status, again) = restarted.predict(&seed_body(tx)).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!((&again["fraud_probability"], &again["trace_id"]), (&before["fraud_probability"], &before["trace_id"]));
        let (status, found) = restarted.raw(reqwest::Method::GET, &format!("/v1/decisions/{}", tx.transaction_id), None, vec![]).await;
        assert_eq!((status, &found["decision"]), (StatusCode::OK, &before["decision"]));
    }
    let metrics = restarted.metrics().await;
    assert!(metrics.contains(r#"gateway_predictions_total{outcome="replayed"} 3"#), "{metrics}");
    let published = read(&stack.broker.bootstrap(), topics::TRANSACTIONS, txs.len(), Duration::from_secs(30), Duration::from_secs(1));
    assert_eq!(published.len(), txs.len(), "no retry was published again");

    let forgetful = stack.gateway(&["--decisions-recall-seconds", "0"]);
    forgetful.wait_ready().await;
    let (status, _) = forgetful.raw(reqwest::Method::GET, &format!("/v1/decisions/{}", txs[0].transaction_id), None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// SIGTERM stops a gateway gracefully: requests already accepted by Kafka are still answered
/// (here 202 pending: no scorer runs), the process exits 0, and every transaction it
/// acknowledged is in `transactions`.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_the_requests_in_flight_and_loses_no_accepted_transaction() {
    let stack = Stack::start();
    let mut gw = stack.gateway(&["--decision-deadline-ms", "3000"]);
    gw.wait_ready().await;
    let mut g = Generator::new(SEED, Drift::None, unique("sigterm"));
    let txs: Vec<_> = (0..5).map(|i| g.payment(&Generator::user(SEED, i), 1_764_000_000_000).transaction).collect();

    let in_flight = spawn_predictions(&gw, &txs);
    // Every request published and waiting for its decision, then the stop.
    wait_until_waiting(&gw, 5).await;
    gw.service.signal("TERM");

    for (status, body) in answers(in_flight).await {
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "pending");
    }
    let code = tokio::task::block_in_place(|| gw.service.wait(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "graceful stop exits 0:\n{}", gw.service.logs());
    assert!(gw.service.logs().contains("gateway stopping"));

    let published = published(&stack, txs.len());
    let mut got: Vec<&str> = published.iter().map(|t| t.transaction_id.as_str()).collect();
    let mut want: Vec<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "every acknowledged transaction is in Kafka, once");
}

/// The map of requests waiting for decisions is bounded: past `--max-waiters` a request is
/// refused at once (503, Retry-After) and its transaction is not published; the others are
/// answered, and the map empties as they leave.
#[tokio::test(flavor = "multi_thread")]
async fn past_max_waiters_requests_are_refused_unpublished_and_the_board_empties() {
    let stack = Stack::start();
    let gw = stack.gateway(&["--max-waiters", "2", "--decision-deadline-ms", "1500"]);
    gw.wait_ready().await;
    let mut g = Generator::new(SEED, Drift::None, unique("full"));
    let txs: Vec<_> = (0..3).map(|i| g.payment(&Generator::user(SEED, i), 1_764_000_000_000).transaction).collect();

    // No scorer: the first two wait for decisions that do not come.
    let waiting = spawn_predictions(&gw, &txs[..2]);
    wait_until_waiting(&gw, 2).await;
    let (status, headers, body) = gw.raw_with_headers(reqwest::Method::POST, "/v1/predict", Some("application/json"), serde_json::to_vec(&seed_body(&txs[2])).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("too many requests waiting"), "{body}");
    assert_eq!(headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));

    for (status, body) in answers(waiting).await {
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains("gateway_waiting_requests 0"), "{metrics}");
    assert!(metrics.contains(r#"gateway_predictions_total{outcome="unavailable"} 1"#), "{metrics}");
    let published = published(&stack, 2);
    assert_eq!(published.len(), 2);
    assert!(published.iter().all(|t| t.transaction_id != txs[2].transaction_id), "the refused transaction was not published");
}
