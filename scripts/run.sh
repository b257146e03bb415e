#!/usr/bin/env bash
# Runs fraudstream locally: an in-memory Tansu broker and a local Redis (unless KAFKA_BROKERS /
# REDIS_URL point elsewhere), the scorer, the gateway on :8000, the drift job, and synthetic
# traffic (with delayed labels) and a live summary. Ctrl-C stops everything it started. Extra arguments go to `fraudctl run`
# (e.g. --rate 200, --no-traffic, --drift amount).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/setup.sh run)"
cargo build --release --locked -p fraudctl -p scorer -p gateway -p drift-job
exec target/release/fraudctl run "$@"
