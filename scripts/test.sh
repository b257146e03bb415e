#!/usr/bin/env bash
# Runs every test of fraudstream: installs what the tests need first (scripts/setup.sh test),
# then the whole workspace's tests against the real ONNX Runtime, Redis and Tansu broker.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/setup.sh test)"
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --no-fail-fast "$@"
fi
cargo test --workspace --locked --no-fail-fast --lib --bins --tests "$@"
