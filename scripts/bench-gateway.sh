#!/usr/bin/env bash
# Benchmarks the synchronous path (HTTP → Kafka → scorer → Kafka → HTTP) under open-loop load
# with oha (-q fixed rate, --latency-correction against coordinated omission), against the local
# stack of `fraudctl run --no-traffic`, started afresh for each rate (the embedded broker's fetches slow
# down as its partitions fill, so a rate run after another would pay for the earlier rate's records).
# Prints oha's summary and each process's CPU use per rate. Not a test: no pass/fail.
#
#   scripts/bench-gateway.sh [RATE ...]     default rates: 500 1000 2000; DURATION=20s, PARTITIONS=2 by default
#
# With KAFKA_BROKERS set, `fraudctl run` uses that cluster instead of the embedded broker (its
# topics are created when missing), so the same load can be measured on a broker off these cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/setup.sh run)"
OHA_ROOT=${FRAUDSTREAM_CACHE:-$HOME/.cache/fraudstream}/oha
if [[ ! -x $OHA_ROOT/bin/oha ]]; then
  echo "[bench] installing oha (HTTP load generator) into $OHA_ROOT" >&2
  cargo install oha --version 1.16.0 --locked --root "$OHA_ROOT" >&2
fi
cargo build --release --locked -p fraudctl -p scorer -p gateway -p drift-job >&2
rates=("$@"); ((${#rates[@]})) || rates=(500 1000 2000)
# The scorer as it runs in production (10 ms fetch wait), not the 50 ms fetch wait `fraudctl run`
# gives it on the embedded broker for long local sessions; runs here are short, on a fresh broker.
export SCORER_KAFKA_CONFIG=${SCORER_KAFKA_CONFIG-fetch.wait.max.ms=10}
duration=${DURATION:-20s}
work=$(mktemp -d)
stack_pid=
stop_stack() {
  [[ -n $stack_pid ]] || return 0
  kill -INT "$stack_pid" 2>/dev/null; wait "$stack_pid" 2>/dev/null || true
  stack_pid=
}
trap 'stop_stack; rm -rf "$work"' EXIT

# Every request a distinct transaction (oha picks body lines at random; enough lines keep repeats,
# which the gateway answers from its cache without Kafka, to about 1 %).
python3 - "$work/bodies.jsonl" <<'PY'
import json, random, sys
rnd = random.Random(1)
methods = ["card"] * 6 + ["bank_transfer"] * 2 + ["wallet"] * 2 + ["crypto"]
with open(sys.argv[1], "w") as f:
    for i in range(1_500_000):
        f.write(json.dumps({"transaction_id": f"bench-{i}", "user_id": 10000 + rnd.randrange(5000),
                            "amount": round(rnd.lognormvariate(4.0, 0.9), 2), "payment_method": rnd.choice(methods),
                            "merchant_id": f"merchant_{rnd.randrange(500)}", "country": "US"}) + "\n")
PY

start_stack() {
  # fraudctl run moves to another port when 8000 is taken; the load would then hit whatever holds it.
  if curl -s -o /dev/null http://127.0.0.1:8000/; then
    echo "port 8000 is in use (a stack left running?); stop it first" >&2
    exit 1
  fi
  target/release/fraudctl run --no-traffic --gateway-port 8000 --partitions "${PARTITIONS:-2}" > "$work/stack.log" 2>&1 &
  stack_pid=$!
  for _ in $(seq 1 300); do
    curl -sf http://127.0.0.1:8000/health/ready >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -sf http://127.0.0.1:8000/health/ready >/dev/null || { cat "$work/stack.log"; exit 1; }
  sleep 5  # past the scorer's first group join
}

# CPU ticks (user + system) of each of the stack's processes, as "name ticks" lines.
stack_ticks() {
  local pid
  for pid in $(pgrep -P "$stack_pid"); do
    awk '{ sub(/^[0-9]+ \(/, ""); name = $0; sub(/\).*/, "", name); sub(/^[^)]*\) /, ""); print name, $12 + $13 }' "/proc/$pid/stat" 2>/dev/null
  done
}

for rate in "${rates[@]}"; do
  start_stack
  echo "=== $rate requests/s for $duration (fresh stack) ==="
  before=$(stack_ticks); started=$(date +%s.%N)
  "$OHA_ROOT/bin/oha" --no-tui -q "$rate" --latency-correction -z "$duration" -c 500 \
    -m POST -H "content-type: application/json" -Z "$work/bodies.jsonl" \
    http://127.0.0.1:8000/v1/predict | sed -n '/Summary/,/Details/p'
  after=$(stack_ticks); finished=$(date +%s.%N)
  curl -s http://127.0.0.1:8000/metrics | grep -E '^gateway_predictions_total'
  # Share of one core each process used while the load ran.
  join <(sort <<<"$before") <(sort <<<"$after") |
    awk -v hz="$(getconf CLK_TCK)" -v s="$started" -v f="$finished" \
      '{ printf "%s %s %.0f%%", (NR == 1 ? "CPU:" : ""), $1, ($3 - $2) * 100 / hz / (f - s) } END { print "" }'
  stop_stack
done
