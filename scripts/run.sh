#!/usr/bin/env bash
# Runs fraudstream locally. Installs what running needs first (scripts/setup.sh run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/setup.sh run)"
cargo build --release --locked -p fraudctl
exec target/release/fraudctl score "$@"
