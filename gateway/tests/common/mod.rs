//! The stack the end-to-end tests run: a real Tansu broker and Redis, the scorer and gateway as
//! processes.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly
#![allow(dead_code)] // each test file uses part of it

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use testkit::process::Service;
use testkit::{Broker, RedisServer, free_port, unique};

pub mod spec;
use spec::Spec;

pub const SEED: u64 = 11;
pub const USERS: u64 = 100;

pub struct Stack {
    pub broker: Broker,
    pub redis: RedisServer,
    pub group: String,
}

impl Stack {
    pub fn start() -> Self {
        let (broker, redis) = testkit::servers(2, USERS, SEED);
        Self { broker, redis, group: unique("scorers") }
    }

    pub fn scorer(&self) -> Service {
        self.scorer_with(&[], free_port())
    }

    /// A scorer with extra environment (e.g. OpenTelemetry settings) serving its metrics and
    /// health on `ops_port`.
    pub fn scorer_with(&self, env: &[(&str, String)], ops_port: u16) -> Service {
        let args = vec![
            "--brokers".into(), self.broker.bootstrap(),
            "--redis-url".into(), self.redis.url(),
            "--group-id".into(), self.group.clone(),
            "--transactional-id".into(), format!("{}-a", self.group),
            "--listen".into(), format!("127.0.0.1:{ops_port}"),
            "--session-timeout-ms".into(), "6000".into(),
        ];
        let mut s = Service::start("scorer", &args, env);
        s.wait_for_log("scorer ready", Duration::from_secs(30));
        // Ready means the group gave it partitions: requests from now on are scored at once.
        assert!(testkit::wait_ready(ops_port, Duration::from_secs(60)), "scorer not ready within 60 s");
        s
    }

    pub fn gateway(&self, extra: &[&str]) -> Gateway {
        self.gateway_with(extra, &[])
    }

    pub fn gateway_with(&self, extra: &[&str], env: &[(&str, String)]) -> Gateway {
        let port = free_port();
        let mut args = vec!["--brokers".to_string(), self.broker.bootstrap(), "--listen".into(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        let service = Service::start("gateway", &args, env);
        Gateway { service, port, client: Client { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), spec: Arc::new(Spec::load()) } }
    }
}

pub struct Gateway {
    pub service: Service,
    pub port: u16,
    pub client: Client,
}

impl std::ops::Deref for Gateway {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Gateway {
    pub async fn wait_ready(&self) {
        let port = self.port;
        let ready = tokio::task::spawn_blocking(move || testkit::wait_ready(port, Duration::from_secs(30))).await.unwrap();
        assert!(ready, "gateway not ready within 30 s:\n{}", self.service.logs());
    }
}

/// An HTTP client of one gateway; cheap to clone into concurrent requests.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    /// Every answer read through `predict` and `raw*` is checked against `openapi.json`.
    pub spec: Arc<Spec>,
}

impl Client {
    pub async fn predict(&self, body: &Value) -> (StatusCode, Value) {
        let (status, _, json) = self.raw_with_headers(reqwest::Method::POST, "/v1/predict", Some("application/json"), serde_json::to_vec(body).unwrap()).await;
        (status, json)
    }

    pub async fn raw(&self, method: reqwest::Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let (status, _, json) = self.raw_with_headers(method, path, content_type, body).await;
        (status, json)
    }

    pub async fn raw_with_headers(&self, method: reqwest::Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: body is not JSON: {text:?}"));
        self.spec.assert_answer(&method, path, status, &headers, &json);
        (status, headers, json)
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }
}

pub fn seed_body(tx: &schemas::Transaction) -> Value {
    json!({
        "transaction_id": tx.transaction_id,
        "user_id": tx.user_id.parse::<u64>().unwrap(),
        "amount": tx.amount,
        "payment_method": tx.payment_method.as_str(),
        "merchant_id": tx.merchant_id,
        "country": tx.country,
        "timestamp": tx.timestamp,
    })
}

