//! The drift job's engine on a long stream of decisions, each followed by its label after a
//! delay: records per second on one core and the process's resident memory as the stream goes
//! on, with the job's default join and quality settings (a week's TTL, a million entries).
//! Prints numbers; asserts nothing.
//!
//!   cargo run --release -p drift-job --example join_bench [transactions] [label delay in transactions]

use std::time::Instant;

use drift_job::engine::{Engine, EngineConfig};
use drift_job::metrics::DriftMetrics;
use drift_job::window::Reference;
use fraudctl::synth::{Drift, Generator};
use schemas::{Decision, FirstSeen, Label, Transaction};
use scorer::{ModelCard, Scorer, UserLookup};

fn rss_mib() -> f64 {
    fraudctl::stack::resident_bytes("self").expect("/proc/self/statm") / (1024.0 * 1024.0)
}

/// Decisions arrive at this rate (simulated clock).
const PER_SECOND: u64 = 2_000;

fn main() {
    let total: u64 = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let delay: u64 = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(60_000);
    let card = ModelCard::load(&ModelCard::bundled_path()).expect("model card");
    let version = card.model_version.clone();
    let metrics = DriftMetrics::new(&prometheus::Registry::new(), std::slice::from_ref(&version));
    let cfg = EngineConfig {
        window_ms: 300_000,
        min_samples: 500,
        join_max_entries: 1_000_000,
        join_ttl_ms: 7 * 86_400_000,
        quality_window: 10_000,
        dedupe_ids: FirstSeen::DEFAULT_CAPACITY,
    };
    let mut engine = Engine::new(cfg, vec![Reference::from_card(&card)], metrics.clone());

    // A pool of real decisions, reused round robin under fresh transaction ids.
    let mut core = Scorer::from_card(card, 1).expect("scorer");
    let mut generator = Generator::new(7, Drift::None, "bench");
    let (inputs, truth): (Vec<(Transaction, UserLookup)>, Vec<bool>) = (0..4096)
        .map(|n| {
            let user = Generator::user(7, n % 500);
            let payment = generator.payment(&user, 1_764_000_000_000);
            ((payment.transaction, UserLookup::Found(user.features)), payment.is_fraud)
        })
        .unzip();
    let pool: Vec<Decision> = core.decide_batch(inputs, Instant::now()).expect("scoring");

    println!("{total} transactions at {PER_SECOND}/s (simulated), each labelled {delay} transactions later");
    println!("| transactions | labels joined | waiting for a label | records/s (1 core) | RSS MiB |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let start_ms: i64 = 1_764_000_000_000;
    let rss_start = rss_mib();
    let started = Instant::now();
    let mut decision = pool[0].clone();
    for i in 0..total {
        let now = start_ms + (i * 1_000 / PER_SECOND) as i64;
        let d = &pool[(i % pool.len() as u64) as usize];
        decision.clone_from(d);
        decision.transaction_id = format!("txn-{i:012}");
        engine.on_decision(&decision, now);
        if i >= delay {
            let j = i - delay;
            let label = Label { transaction_id: format!("txn-{j:012}"), is_fraud: truth[(j % pool.len() as u64) as usize], labelled_at: now };
            engine.on_label(&label, now);
        }
        if i % PER_SECOND == 0 {
            engine.tick(now);
        }
        if (i + 1) % (total / 10).max(1) == 0 {
            let records = (i + 1) + (i + 1).saturating_sub(delay);
            println!(
                "| {} | {} | {} | {:.0} | {:.1} |",
                i + 1,
                metrics.labels_joined.get(),
                engine.join_pending().0,
                records as f64 / started.elapsed().as_secs_f64(),
                rss_mib()
            );
        }
    }
    println!("\nRSS at start {rss_start:.1} MiB, at end {:.1} MiB", rss_mib());
}
