//! DESIGN.md: every setting of a service has a flag and an environment variable and is printed at
//! start-up. Each service's `--help` lists its flags; its first log line must name every one.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use testkit::process::{Service, bin};

/// The long flags of `service --help`, as the log's field names (`--max-batch` → `max_batch`).
fn flags(service: &str) -> BTreeSet<String> {
    let help = Command::new(bin(service)).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    help.lines()
        .filter_map(|l| l.trim_start().split(' ').find(|w| w.starts_with("--")).map(|w| w.trim_start_matches("--").trim_end_matches(',').replace('-', "_")))
        .filter(|f| !f.is_empty() && f != "help" && f != "version")
        .collect()
}

/// The fields of the service's start-up line.
fn printed(service: &str, message: &str) -> BTreeSet<String> {
    // Nothing listens on port 1: the services print their settings before they connect.
    let args = ["--brokers", "127.0.0.1:1", "--listen", &format!("127.0.0.1:{}", testkit::free_port())].map(String::from);
    let mut s = Service::start(service, &args, &[]);
    s.log_fields(message, Duration::from_secs(30)).keys().cloned().collect()
}

#[test]
fn every_flag_of_every_service_is_printed_at_start_up() {
    let none: &[(&str, &str)] = &[];
    for (service, message, aliases) in [
        ("scorer", "scorer starting", none),
        ("gateway", "gateway starting", none),
        ("drift-job", "drift-job starting", &[("model_card", "model_cards")]),
    ] {
        let flags = flags(service);
        assert!(flags.len() >= 8, "{service}: {flags:?}");
        let printed = printed(service, message);
        // A flag is printed under its own name, or (`aliases`) a plural one for a repeatable flag.
        let missing: Vec<&str> = flags
            .iter()
            .map(|f| aliases.iter().find(|(flag, _)| flag == f).map_or(f.as_str(), |(_, field)| *field))
            .filter(|f| !printed.contains(*f))
            .collect();
        assert!(missing.is_empty(), "{service} does not print {missing:?} at start-up (it prints {printed:?})");
    }
}
