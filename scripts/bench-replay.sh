#!/usr/bin/env bash
# Benchmarks `scorer replay`: a fresh local stack (`fraudctl run --no-traffic`) is sent RATE x
# SECONDS payments straight to `transactions`, with their labels a second later; once the scorer
# has decided them all, they are replayed through a candidate (the bundled card with lower
# thresholds), timed with GNU time: wall clock, CPU and peak memory. Not a test: no pass/fail.
#
#   scripts/bench-replay.sh            RATE=5000 SECONDS_OF_TRAFFIC=40 by default (200,000 payments)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/setup.sh run)"
cargo build --release --locked -p fraudctl -p scorer -p gateway -p drift-job >&2
[[ -x /usr/bin/time ]] || { echo "[bench] installing GNU time" >&2; apt-get install -y -q time >&2; }
rate=${RATE:-5000}
seconds=${SECONDS_OF_TRAFFIC:-40}
work=$(mktemp -d)
stack_pid=
cleanup() {
  [[ -z $stack_pid ]] || { kill -INT "$stack_pid" 2>/dev/null; wait "$stack_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

target/release/fraudctl run --no-traffic > "$work/stack.log" 2>&1 &
stack_pid=$!
for _ in $(seq 1 300); do
  grep -q '^try ' "$work/stack.log" && break
  sleep 0.2
done
brokers=$(awk '$1 == "kafka" { print $2; exit }' "$work/stack.log")
redis=$(awk '$1 == "redis" { print $2; exit }' "$work/stack.log")
scorer_metrics=$(awk '$1 == "scorer" { print $2; exit }' "$work/stack.log")
[[ -n $brokers && -n $redis && -n $scorer_metrics ]] || { cat "$work/stack.log"; exit 1; }
sleep 5 # past the scorer's first group join

echo "[bench] sending $((rate * seconds)) payments at $rate/s straight to $brokers" >&2
target/release/fraudctl traffic --brokers "$brokers" --direct-share 1 --rate "$rate" --duration "$seconds" \
  --label-delay 1 > "$work/traffic.log" 2>&1
tail -1 "$work/traffic.log" >&2
decided() { curl -s "$scorer_metrics" | awk '$1 ~ /^scorer_records_total/ { s += $2 } END { print s + 0 }'; }
sent=$(grep -o 'sent [0-9]*' "$work/traffic.log" | tail -1 | cut -d' ' -f2)
for _ in $(seq 1 600); do
  (($(decided) >= sent)) && break
  sleep 1
done
echo "[bench] decided $(decided) of $sent" >&2

python3 - "$work/candidate.json" <<'PY'
import json, sys
from pathlib import Path
card_path = Path("model/model_card.json").resolve()
card = json.loads(card_path.read_text())
card.update(model_version="1.0.0-lower-thresholds", thresholds={"review": 0.2, "block": 0.5},
            onnx_file=str(card_path.parent / card["onnx_file"]))
Path(sys.argv[1]).write_text(json.dumps(card))
PY
echo "[bench] target/release/scorer replay --candidate-card (bundled card, review 0.2, block 0.5) --brokers $brokers --redis-url $redis" >&2
/usr/bin/time -f 'replay: %e s wall, %U s user, %S s system, %M KiB peak resident' \
  target/release/scorer replay --brokers "$brokers" --redis-url "$redis" --candidate-card "$work/candidate.json" \
  --idle-timeout-s 120 --examples 3
