//! What the tests that run the `fraudctl` binary share.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::process::{Command, Output};

/// Runs `fraudctl args` to its end, without the environment's `FRAUDCTL_KAFKA_CONFIG`.
pub fn fraudctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fraudctl")).args(args).env_remove("FRAUDCTL_KAFKA_CONFIG").env("RUST_BACKTRACE", "0").output().unwrap()
}
