#!/usr/bin/env bash
# Load test of the admission webhook (issue 5 benchmark; not a test).
#
# Starts webhook/examples/bench-server (real TLS and service, caches with
# $WORKLOADS Deployments + $WORKLOADS StatefulSets, each with a
# BackupConfiguration, a finished RestoreSession and, for Deployments, a
# ReplicaSet) and sends pod-CREATE AdmissionReviews from
# shared/fixtures/admission over TLS with keep-alive using `oha`
# (crates.io: `cargo install oha`): first at a fixed 1,000 req/s, then flat
# out. Prints p50/p99/max latency, throughput and the server's RSS.
#
# Usage: bench/webhook.sh [duration-seconds]   (OHA=/path/to/oha to override)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-20}"
WORKLOADS="${WORKLOADS:-10000}"
CONNECTIONS="${CONNECTIONS:-50}"
OHA="${OHA:-oha}"
PORT="${PORT:-18443}"
ADMIN_PORT="${ADMIN_PORT:-19090}"
FIXTURES=shared/fixtures/admission
[ -d "$FIXTURES" ] || FIXTURES=../shared/fixtures/admission
command -v "$OHA" >/dev/null || { echo "oha not found: cargo install oha (or OHA=/path/to/oha)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p webhook --example bench-server
BIN="$CARGO_TARGET_DIR/release/examples/bench-server"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --dir "$WORK" --workloads "$WORKLOADS" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status"; }
echo "server ready: $((WORKLOADS * 2)) workloads cached, RSS $(( $(rss_kib) / 1024 )) MiB"

run() { # label, fixture, extra oha args...
  local label="$1" fixture="$2"; shift 2
  "$OHA" --no-tui --output-format json -z "${DURATION}s" -m POST \
    -T application/json -D "$FIXTURES/$fixture" --cacert "$WORK/ca.crt" "$@" \
    "https://127.0.0.1:$PORT/mutate/pods?timeout=10s" > "$WORK/out.json"
  python3 - "$label" "$WORK/out.json" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
errors = r.get("errorDistribution", {})
ms = lambda v: f"{v * 1000:.3f} ms"
print(f"{label:<34} {s['requestsPerSec']:>9.0f} req/s  p50 {ms(p['p50'])}  p99 {ms(p['p99'])}"
      f"  max {ms(s['slowest'])}  status {codes}  errors {errors or 0}")
PY
}

echo "--- fixed rate 1000 req/s, ${DURATION}s, 10 connections"
run "statefulset pod (patched-restore)" pod-create-statefulset-web-1.json -q 1000 -c 10
run "bare pod (skipped)"                pod-create-dryrun.json            -q 1000 -c 10
echo "--- flat out, ${DURATION}s, $CONNECTIONS connections"
run "statefulset pod (patched-restore)" pod-create-statefulset-web-1.json -c "$CONNECTIONS"
run "deployment pod (patched)"          pod-create-deployment.json        -c "$CONNECTIONS"
run "bare pod (skipped)"                pod-create-dryrun.json            -c "$CONNECTIONS"
echo "server RSS now $(( $(rss_kib) / 1024 )) MiB, peak $(( $(hwm_kib) / 1024 )) MiB"
curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^hoard_webhook_reviews_total|^hoard_webhook_cache_objects'
