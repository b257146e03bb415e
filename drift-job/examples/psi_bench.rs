//! PSI throughput and memory: feature values binned per second on one core, and the process's
//! resident memory as windows open and close. Prints numbers; asserts nothing.
//!
//!   cargo run --release -p drift-job --example psi_bench [decisions per window] [windows]

use std::borrow::Cow;
use std::time::Instant;

use drift_job::window::{PsiWindow, Reference};
use schemas::{Decision, FeatureValue, PaymentMethod, RiskLevel, Verdict};
use scorer::{FEATURE_NAMES, ModelCard};

fn rss_mib() -> f64 {
    fraudctl::stack::resident_bytes("self").expect("/proc/self/statm") / (1024.0 * 1024.0)
}

fn main() {
    let per_window: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let windows: usize = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(50);
    let card = ModelCard::load(&ModelCard::bundled_path()).expect("model card");
    let reference = Reference::from_card(&card);
    let monitored = reference.features.len();

    // A pool of realistic decisions (values spread over the bins), reused round robin.
    let pool: Vec<Decision> = (0..4096u32)
        .map(|i| {
            let x = f64::from(i) / 4096.0;
            Decision {
                transaction_id: format!("t{i}"),
                user_id: "u".into(),
                decision: Verdict::Approve,
                fraud_probability: x,
                risk_level: RiskLevel::Low,
                model_version: card.model_version.clone(),
                features: FEATURE_NAMES
                    .iter()
                    .enumerate()
                    .map(|(j, n)| FeatureValue { name: Cow::Borrowed(*n), value: (x * 9.0 + j as f64 * 0.37) % 8.0 })
                    .collect(),
                top_features: vec![],
                degraded: false,
                user_features_found: true,
                amount: 10.0,
                currency: "USD".into(),
                payment_method: PaymentMethod::ALL[i as usize % 4],
                transaction_timestamp: 0,
                decided_at: 0,
                processing_latency_ms: 0.0,
            }
        })
        .collect();

    println!("monitored features: {monitored}; {per_window} decisions per window; {windows} windows");
    println!("| windows closed | feature values binned | values/s (1 core) | RSS MiB |");
    println!("| ---: | ---: | ---: | ---: |");
    let rss_start = rss_mib();
    let mut values = 0u64;
    let mut busy = 0f64;
    let mut psi_sum = 0.0;
    for w in 0..windows {
        let mut window = PsiWindow::new(&reference, w as i64, w as i64 + 1);
        let started = Instant::now();
        for i in 0..per_window {
            window.observe(&reference, &pool[i % pool.len()]);
        }
        psi_sum += window.psi(&reference).iter().sum::<f64>();
        busy += started.elapsed().as_secs_f64();
        values += (per_window * monitored) as u64;
        if w == 0 || (w + 1) % (windows / 5).max(1) == 0 {
            println!("| {} | {values} | {:.0} | {:.1} |", w + 1, values as f64 / busy, rss_mib());
        }
    }
    println!("\nRSS at start {rss_start:.1} MiB, at end {:.1} MiB (checksum {psi_sum:.3})", rss_mib());
}
