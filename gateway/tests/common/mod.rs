//! The stack the end-to-end tests run: a real Tansu broker and Redis, the scorer and gateway as
//! processes.
#![allow(dead_code)] // each test file uses part of it

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use testkit::kafka::create_standard_topics;
use testkit::process::Service;
use testkit::{Broker, RedisServer, free_port, unique};

pub const SEED: u64 = 11;
pub const USERS: u64 = 100;

pub struct Stack {
    pub broker: Broker,
    pub redis: RedisServer,
    pub group: String,
}

impl Stack {
    pub fn start() -> Self {
        let broker = Broker::start();
        let redis = RedisServer::start();
        create_standard_topics(&broker.bootstrap(), 2);
        let mut store = fraudctl::features::store(&redis.url(), "features:user:").unwrap();
        fraudctl::features::load_synthetic(&mut store, USERS, SEED).unwrap();
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
        wait_ready_blocking(ops_port, "scorer");
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
        let g = Gateway { service, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        g
    }
}

/// Waits until the service answering on `port` reports ready (`GET /health/ready` → 200).
fn wait_ready_blocking(port: u16, what: &str) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut c| {
                c.write_all(b"GET /health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut head = [0u8; 12];
                c.read_exact(&mut head)?;
                Ok(head.ends_with(b"200"))
            })
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Gateway {
    pub service: Service,
    pub base: String,
    pub http: reqwest::Client,
}

impl Gateway {
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/health/ready", self.base)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "gateway not ready:\n{}", self.service.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn predict(&self, body: &Value) -> (StatusCode, Value) {
        let r = self.http.post(format!("{}/v1/predict", self.base)).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    pub async fn raw(&self, method: reqwest::Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: body is not JSON: {text:?}")))
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

