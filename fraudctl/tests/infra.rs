//! The operations configuration, checked with the real tools: Prometheus rules and their unit
//! tests (promtool), the Prometheus and Alertmanager configs and routes (promtool, amtool), and a runbook
//! for every alert; the OpenTelemetry Collector's config (which cannot run here) against what
//! the services send it.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a tool that `scripts/setup.sh test` installs; a missing tool fails the test.
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{tool} not runnable ({e}); run scripts/setup.sh test"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

fn rules_text() -> String {
    std::fs::read_to_string(root().join("infra/prometheus/rules/fraudstream.yml")).unwrap()
}

fn alert_names() -> Vec<String> {
    rules_text()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Alert `name`'s rule in `rules`: from its `- alert:` line to the next alert's.
fn alert_block<'a>(rules: &'a str, name: &str) -> &'a str {
    let block = &rules[rules.find(&format!("- alert: {name}\n")).unwrap()..];
    &block[..block[1..].find("- alert: ").map_or(block.len(), |i| i + 1)]
}

#[test]
fn rules_are_valid_and_their_unit_tests_pass() {
    let out = run("promtool", &["check", "rules", "infra/prometheus/rules/fraudstream.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run(
        "promtool",
        &["test", "rules", "infra/prometheus/tests/fraudstream_test.yml", "infra/prometheus/tests/fraudstream_daily_test.yml"],
    );
    assert_eq!(out.matches("SUCCESS").count(), 2, "{out}");
}

#[test]
fn prometheus_and_alertmanager_configs_are_valid() {
    run("promtool", &["check", "config", "--syntax-only", "infra/prometheus/prometheus.yml"]);
    let out = run("amtool", &["check-config", "infra/alertmanager.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_is_complete_has_a_runbook_and_fires_and_stays_quiet_in_tests() {
    let names = alert_names();
    assert!(names.len() >= 20, "{} alerts", names.len());
    let rules = rules_text();
    let tests = ["fraudstream_test.yml", "fraudstream_daily_test.yml"]
        .map(|f| std::fs::read_to_string(root().join("infra/prometheus/tests").join(f)).unwrap())
        .join("\n");
    for name in &names {
        let block = alert_block(&rules, name);
        for key in ["severity: ", "summary: ", "description: ", "runbook_url: "] {
            assert!(block.contains(key), "{name} has no {key}");
        }
        assert!(block.contains("severity: page") || block.contains("severity: ticket"), "{name}: severity is page or ticket");
        let runbook = format!("runbooks/{name}.md");
        assert!(block.contains(&format!("runbook_url: {runbook}")), "{name}: runbook_url is not {runbook}");
        let page = std::fs::read_to_string(root().join(&runbook)).unwrap_or_else(|_| panic!("{runbook} missing"));
        for section in ["## What it means", "## Confirm", "## Likely causes", "## Mitigation", "## Rollback", "## Escalation"] {
            assert!(page.contains(section), "{runbook} has no {section}");
        }
        assert!(tests.contains(&format!("name: {name} fires")), "no firing test for {name}");
        assert!(tests.contains(&format!("name: {name} stays quiet")), "no quiet test for {name}");
    }
}

#[test]
fn every_alert_reaches_the_receiver_its_severity_names() {
    let rules = rules_text();
    for name in alert_names() {
        let severity = alert_block(&rules, &name).lines().find_map(|l| l.trim().strip_prefix("severity: ")).unwrap().trim().to_string();
        let out = run(
            "amtool",
            &["config", "routes", "test", "--config.file=infra/alertmanager.yml", &format!("alertname={name}"), &format!("severity={severity}")],
        );
        let receiver = out.lines().find(|l| !l.starts_with("Warning")).unwrap_or_default().trim().to_string();
        assert_eq!(receiver, severity, "{name} (severity {severity}) is routed to {receiver}");
    }
}

#[test]
fn compose_file_is_valid() {
    run("docker-compose", &["-f", "docker-compose.yml", "config", "-q"]);
}

/// Every PromQL expression of the dashboards, as Grafana would send it.
fn dashboard_exprs() -> Vec<(String, String)> {
    let dir = root().join("infra/grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                out.push((format!("{} / {}", d["title"].as_str().unwrap(), p["title"].as_str().unwrap()), t["expr"].as_str().unwrap().to_string()));
            }
        }
    }
    out
}

#[test]
fn the_three_dashboards_exist_and_every_expression_parses() {
    let exprs = dashboard_exprs();
    let titles: std::collections::BTreeSet<&str> = exprs.iter().map(|(t, _)| t.split(" / ").next().unwrap()).collect();
    assert_eq!(titles.into_iter().collect::<Vec<_>>(), ["Business", "ML Model Performance", "Service Health & SLO"]);
    // promtool parses rule expressions: check the dashboards' as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        rules.push_str(&format!("      - record: dashboard:expr_{i}\n        expr: {}\n", serde_json::to_string(expr).unwrap()));
    }
    let path = std::env::temp_dir().join(format!("dashboard-exprs-{}.yml", std::process::id()));
    std::fs::write(&path, rules).unwrap();
    let out = run("promtool", &["check", "rules", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert!(out.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{out}");
}

fn yaml(text: &str) -> Yaml {
    YamlLoader::load_from_str(text).unwrap().remove(0)
}

fn keys(y: &Yaml) -> Vec<String> {
    y.as_hash().map(|h| h.keys().filter_map(|k| k.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec().map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[test]
fn the_collector_takes_what_the_services_send_and_keeps_every_span() {
    let collector = yaml(&std::fs::read_to_string(root().join("infra/otel-collector.yaml")).unwrap());
    // Every component a pipeline names is defined, and every defined one is used.
    let service = &collector["service"];
    for kind in ["receivers", "processors", "exporters"] {
        let defined: std::collections::BTreeSet<String> = keys(&collector[kind]).into_iter().collect();
        let mut used = std::collections::BTreeSet::new();
        for pipeline in keys(&service["pipelines"]) {
            for name in strings(&service["pipelines"][pipeline.as_str()][kind]) {
                assert!(defined.contains(&name), "pipeline {pipeline} names {kind} {name}, which is not defined");
                used.insert(name);
            }
        }
        assert_eq!(used, defined, "{kind} defined but unused");
    }
    for name in strings(&service["extensions"]) {
        assert!(keys(&collector["extensions"]).contains(&name), "extension {name} is not defined");
    }
    // The services sample at the head, and their exemplars and trace ids name the traces they
    // export: a sampling processor here would drop what those links lead to.
    let traces = strings(&service["pipelines"]["traces"]["processors"]);
    for p in &traces {
        let kind = p.split('/').next().unwrap();
        assert!(!kind.contains("sampl"), "the traces pipeline samples again ({p})");
    }
    assert_eq!(traces.first().map(String::as_str), Some("memory_limiter"), "the memory limiter comes first");

    // What the services are told to send to: OTLP over HTTP to the collector's HTTP receiver, at
    // a head-sampling ratio.
    let compose = yaml(&run("docker-compose", &["-f", "docker-compose.yml", "config"]));
    let http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].as_str().unwrap();
    let port = http.rsplit(':').next().unwrap();
    for name in ["gateway", "scorer", "drift-job"] {
        let env = &compose["services"][name]["environment"];
        assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(), Some(format!("http://otel-collector:{port}").as_str()), "{name}");
        assert_eq!(env["OTEL_EXPORTER_OTLP_PROTOCOL"].as_str(), Some("http/protobuf"), "{name}");
        assert_eq!(env["OTEL_TRACES_SAMPLER"].as_str(), Some("parentbased_traceidratio"), "{name}");
    }
    assert!(keys(&compose["services"]).contains(&"otel-collector".to_string()));
}
