//! What tracing costs the scorer per record: the spans of batches of 500 records (start, output
//! headers, finish — exactly what the pipeline does) at 40,000 records a second, measured as
//! process CPU time (all threads, the exporter's included; also split into the scoring thread,
//! the export threads and the HTTP client's thread), with no
//! exporter, with the default 10 % sampling exported to a collector that accepts everything, and
//! with the same sampling exported to a port where nothing listens. Also the resident memory at
//! the end (a dead collector must not make it grow). Prints numbers; asserts nothing.
//!
//!   cargo run --release -p scorer --example trace_bench [batches]
//!
//! Each mode runs in a child process of its own (tracing is set up once per process); the
//! collector stand-in runs in this parent, so its CPU is not counted.

use std::process::Command;
use std::time::{Instant, SystemTime};

use fraudctl::synth::{Drift, Generator};
use scorer::spans::{BatchSpans, RecordSource, SpanNaming};
use scorer::{ModelCard, Scorer, UserLookup};

// The scorer's allocator, so that allocation costs are the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHILD: &str = "FRAUDSTREAM_TRACE_BENCH_MODE";
const BATCH: usize = 500;
const RATE: f64 = 40_000.0;

fn cpu_seconds() -> f64 {
    fraudctl::stack::cpu_seconds("self").expect("/proc/self/stat")
}

/// CPU seconds so far by thread role: the calling (scoring) thread, span export, the HTTP client.
fn cpu_by_role() -> [f64; 3] {
    let mut by_role = [0.0; 3];
    let me = std::fs::read_link("/proc/thread-self").ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let role = if tid == me {
            0
        } else if comm.starts_with("reqwest") {
            2
        } else if comm.starts_with("otlp") || comm.starts_with("OpenTelemetry") {
            1
        } else {
            continue;
        };
        by_role[role] += fraudctl::stack::cpu_seconds(&format!("self/task/{tid}")).unwrap_or(0.0);
    }
    by_role
}

fn rss_mib() -> f64 {
    fraudctl::stack::resident_bytes("self").expect("/proc/self/statm") / (1024.0 * 1024.0)
}

fn child(batches: usize) {
    let registry = telemetry::metrics::registry();
    let _guard = telemetry::trace::init_tracing("scorer", &registry).expect("tracing settings");
    let card = ModelCard::load(&ModelCard::bundled_path()).expect("model card");
    let mut scorer = Scorer::from_card(card, 1).expect("model");
    let mut g = Generator::new(1, Drift::None, "trace-bench");
    let users: Vec<_> = (0..100).map(|u| Generator::user(1, u)).collect();
    let txs: Vec<_> = (0..BATCH).map(|i| g.payment(&users[i % users.len()], 1_764_000_000_000).transaction).collect();
    let decisions = scorer
        .decide_batch(txs.iter().map(|t| (t.clone(), UserLookup::Missing)).collect(), Instant::now())
        .expect("decide");
    let stages = scorer.last_stages();
    // Records from the gateway carry its context, sampled by the same rule (1 in 10 when
    // exporting; none when not); records from the direct producer path carry none, so the
    // scorer's sampler decides.
    let via_gateway = std::env::var("FRAUDSTREAM_TRACE_BENCH_PATH").is_ok_and(|p| p == "gateway");
    let exporting = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok();
    let parents: Vec<opentelemetry::Context> = (0..BATCH)
        .map(|i| {
            if !via_gateway {
                return opentelemetry::Context::new();
            }
            use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
            let flags = if exporting && i % 10 == 0 { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let sc = SpanContext::new(TraceId::from((i as u128 + 1) * 7919), SpanId::from(i as u64 + 1), flags, true, TraceState::default());
            opentelemetry::Context::new().with_remote_span_context(sc)
        })
        .collect();
    let naming = SpanNaming { input_topic: "transactions", output_topic: "decisions", group: "fraudstream-scorers" };

    // Paced like a scorer decoding 40,000 records a second, so the exporter sees a real load.
    let every = std::time::Duration::from_secs_f64(BATCH as f64 / RATE);
    let (cpu0, roles0, t0) = (cpu_seconds(), cpu_by_role(), Instant::now());
    let mut header_bytes = 0usize;
    for b in 0..batches {
        let due = t0 + every * b as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sources: Vec<RecordSource<'_>> = txs
            .iter()
            .enumerate()
            .map(|(i, t)| RecordSource { partition: (i % 2) as i32, offset: (b * BATCH + i) as i64, key: &t.user_id, transaction_id: &t.transaction_id })
            .collect();
        let now = SystemTime::now();
        let mut spans = BatchSpans::start(now, &sources, &parents, &naming);
        for (i, d) in decisions.iter().enumerate() {
            let h = spans.output_headers(i, &d.user_id);
            header_bytes += rdkafka::message::Headers::count(&h);
        }
        spans.finish(&decisions, (now, now), stages, SystemTime::now());
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let records = (batches * BATCH) as f64;
    let roles: Vec<String> = cpu_by_role().iter().zip(roles0).map(|(now, then)| format!("{:.2}", (now - then) / records * 1e6)).collect();
    let text = telemetry::metrics::render(&registry);
    let value = |name: &str| -> f64 {
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    println!(
        "{:.3} {:.3} {:.1} {:.0} {:.0} {} {}",
        cpu / records * 1e6,
        cpu / wall * 100.0,
        rss_mib(),
        value("telemetry_spans_exported_total"),
        value("telemetry_spans_dropped_total"),
        header_bytes,
        roles.join("/")
    );
}

fn main() {
    let batches: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(800);
    if std::env::var(CHILD).is_ok() {
        return child(batches);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let sink = rt.block_on(fraudctl::bench::otlp_sink()).expect("collector stand-in");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port(); // closed again: refused
    let exe = std::env::current_exe().expect("exe");
    println!("{batches} batches of {BATCH} records at {RATE} records/s");
    println!("| records from | tracing | CPU µs per record | of which scoring / export / HTTP threads | CPU % of a core | resident MiB | spans exported | spans dropped |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for path in ["gateway", "direct"] {
    for (label, endpoint) in [
        ("none (no exporter)", None),
        ("10 % sampled, exported", Some(format!("http://127.0.0.1:{sink}"))),
        ("10 % sampled, collector refusing", Some(format!("http://127.0.0.1:{dead}"))),
    ] {
        let mut cmd = Command::new(&exe);
        cmd.arg(batches.to_string()).env(CHILD, "1").env("RUST_LOG", "warn").env("FRAUDSTREAM_TRACE_BENCH_PATH", path);
        if let Some(e) = endpoint {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", e);
        }
        let out = cmd.output().expect("child");
        let line = String::from_utf8_lossy(&out.stdout);
        let v: Vec<&str> = line.split_whitespace().collect();
        if v.len() < 7 {
            println!("| {path} | {label} | failed: {} |", String::from_utf8_lossy(&out.stderr));
            continue;
        }
        println!("| {path} | {label} | {} | {} | {} | {} | {} | {} |", v[0], v[6], v[1], v[2], v[3], v[4]);
    }
    }
}
