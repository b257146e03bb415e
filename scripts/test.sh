#!/usr/bin/env bash
# Runs every test of fraudstream: installs what the tests need first (scripts/setup.sh test),
# then the whole workspace's tests against the real ONNX Runtime, Redis and Tansu broker.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/setup.sh test)"
cargo test --workspace --locked "$@"
