//! The dashboards' and rules' PromQL against a real Prometheus that scrapes the running pipeline
//! (gateway, scorer, drift job on a real broker and Redis, with traffic and labels): every
//! expression parses and evaluates, and every dashboard query and recording rule has data. Also
//! lints each service's /metrics with `promtool check metrics`, and follows the latency
//! histograms' exemplars (Prometheus scrapes OpenMetrics) to traces the services exported.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fraudctl::synth::Drift;
use fraudctl::traffic::TrafficConfig;
use testkit::process::Service;
use testkit::{free_port, unique};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn get(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
}

fn query(prom: u16, expr: &str) -> serde_json::Value {
    api(prom, "query", &[("query", expr)])
}

fn api(prom: u16, endpoint: &str, params: &[(&str, &str)]) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = reqwest::Url::parse_with_params(&format!("http://127.0.0.1:{prom}/api/v1/{endpoint}"), params).unwrap();
        reqwest::Client::new()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

/// (where, expression, must have data) for every PromQL expression of the rules — as the running
/// Prometheus loaded them — and of the dashboards.
fn expressions(prom: u16) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let rules: serde_json::Value = serde_json::from_str(&get(&format!("http://127.0.0.1:{prom}/api/v1/rules"))).unwrap();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap();
            let expr = rule["query"].as_str().unwrap().to_string();
            if rule["type"] == "recording" {
                out.push((format!("record {name}"), expr, true));
                // The recorded series itself must exist too.
                out.push((format!("recorded {name}"), name.to_string(), true));
            } else {
                // Alerts are quiet in a healthy run: they must parse and evaluate, not return data.
                out.push((format!("alert {name}"), expr, false));
            }
        }
    }
    for entry in std::fs::read_dir(root().join("infra/grafana/dashboards")).unwrap() {
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                out.push((format!("{} / {}", d["title"].as_str().unwrap(), p["title"].as_str().unwrap()), t["expr"].as_str().unwrap().to_string(), true));
            }
        }
    }
    out
}

/// Stops a child process however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dashboards_and_rules_query_a_prometheus_scraping_the_running_pipeline() {
    let (broker, redis) = testkit::servers(2, 500, 1);
    let (gw_port, sc_port, dj_port, prom_port) = (free_port(), free_port(), free_port(), free_port());
    let group = unique("scorer");
    // Traces go to a collector (10 % of new traces, the default sampling); exemplars must name them.
    let collector = testkit::otlp::Receiver::start();
    let tracing = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()), ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string())];
    let mut scorer = Service::start(
        "scorer",
        &["--brokers", &broker.bootstrap(), "--redis-url", &redis.url(), "--group-id", &group, "--transactional-id", &group, "--listen", &format!("127.0.0.1:{sc_port}")].map(String::from),
        &tracing,
    );
    let _gateway = Service::start("gateway", &["--brokers", &broker.bootstrap(), "--listen", &format!("127.0.0.1:{gw_port}")].map(String::from), &tracing);
    let mut drift = Service::start(
        "drift-job",
        &["--brokers", &broker.bootstrap(), "--listen", &format!("127.0.0.1:{dj_port}"), "--window-seconds", "2", "--min-samples", "20", "--group-id", &unique("drift")].map(String::from),
        &[],
    );
    scorer.wait_for_log("scorer ready", Duration::from_secs(30));
    drift.wait_for_log("drift-job ready", Duration::from_secs(30));

    // Prometheus with fraudstream's rules, scraping the three services every second.
    let dir = std::env::temp_dir().join(unique("prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{rules:?}]\nscrape_configs:\n  - {{job_name: gateway, static_configs: [{{targets: ['127.0.0.1:{gw_port}']}}]}}\n  - {{job_name: scorer, static_configs: [{{targets: ['127.0.0.1:{sc_port}']}}]}}\n  - {{job_name: drift-job, static_configs: [{{targets: ['127.0.0.1:{dj_port}']}}]}}\n",
        rules = root().join("infra/prometheus/rules/fraudstream.yml").canonicalize().unwrap().display().to_string(),
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let _prometheus = KillOnDrop(Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus not runnable; run scripts/setup.sh test"));

    // Traffic through HTTP and straight to Kafka, with labels a second later.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    assert!(testkit::wait_ready(sc_port, Duration::from_secs(60)), "scorer not ready within 60 s");
    let cfg = TrafficConfig {
        gateway: Some(format!("http://127.0.0.1:{gw_port}")),
        brokers: Some(broker.bootstrap()),
        rate: 100.0,
        duration: Some(Duration::from_secs(20)),
        direct_share: 0.2,
        users: 600,
        seed: 1,
        drift: Drift::None,
        max_in_flight: 64,
        run_id: unique("live"),
        label_delay: Some(Duration::from_secs(1)),
        truth_file: None,
        notices: None,
    };
    let stats = rt.block_on(fraudctl::traffic::run(cfg, Arc::new(AtomicBool::new(false)), false)).unwrap();
    assert!(stats.http_ok.load(std::sync::atomic::Ordering::Relaxed) > 1000);
    std::thread::sleep(Duration::from_secs(3));

    // Every service's exposition passes promtool's lint.
    for (job, port) in [("gateway", gw_port), ("scorer", sc_port), ("drift-job", dj_port)] {
        let text = get(&format!("http://127.0.0.1:{port}/metrics"));
        let mut lint = Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        lint.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = lint.wait_with_output().unwrap();
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && report.trim().is_empty(), "{job} /metrics fails promtool check metrics:\n{report}");
    }

    // Recording rules run every 30 s, all in one group: wait for an evaluation after the traffic
    // ended (the timestamp of a recorded sample is its evaluation's). An evaluation during or
    // before the traffic can lack series the first requests created, such as the gateway's
    // per-route request counters.
    let traffic_ended = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let evaluated_at = || -> Option<f64> {
        let r = query(prom_port, "timestamp(slo:decision_latency:error_ratio_rate5m)");
        r["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(75);
    while evaluated_at().is_none_or(|t| t <= traffic_ended) {
        assert!(Instant::now() < deadline, "recording rules not evaluated after the traffic within 75 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let up = query(prom_port, "sum(up)");
    assert_eq!(up["data"]["result"][0]["value"][1], "3", "all three services scraped: {up}");
    let mut missing = Vec::new();
    let exprs = expressions(prom_port);
    assert!(exprs.len() > 80, "{} expressions", exprs.len());
    for (what, expr, data) in &exprs {
        let r = query(prom_port, expr);
        assert_eq!(r["status"], "success", "{what}: `{expr}` failed: {r}");
        let empty = r["data"]["result"].as_array().is_none_or(Vec::is_empty);
        if *data && empty {
            missing.push(format!("{what}: {expr}"));
        }
    }
    assert!(missing.is_empty(), "queries without data:\n{}", missing.join("\n"));

    // From a latency spike to a trace: the latency histograms' exemplars name traces the
    // collector received, and only those.
    let exported: std::collections::HashSet<String> = collector.spans().into_iter().map(|s| s.trace_id).collect();
    assert!(!exported.is_empty(), "no spans exported");
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let start = (end.parse::<u64>().unwrap() - 600).to_string();
    for selector in [r#"http_request_duration_seconds_bucket{job="gateway",route="/v1/predict"}"#, r#"decision_latency_seconds_bucket{job="scorer"}"#, r#"prediction_latency_seconds_bucket{job="scorer"}"#] {
        let r = api(prom_port, "query_exemplars", &[("query", selector), ("start", &start), ("end", &end)]);
        assert_eq!(r["status"], "success", "{selector}: {r}");
        let exemplars: Vec<&serde_json::Value> =
            r["data"].as_array().unwrap().iter().flat_map(|series| series["exemplars"].as_array().unwrap()).collect();
        assert!(!exemplars.is_empty(), "no exemplars for {selector}: {r}");
        for e in &exemplars {
            let trace_id = e["labels"]["trace_id"].as_str().unwrap_or_default();
            assert!(exported.contains(trace_id), "{selector}: exemplar {e} names a trace the collector never received");
        }
        println!("{selector}: {} exemplars, each naming an exported trace", exemplars.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
