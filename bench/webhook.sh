#!/usr/bin/env bash
# Load test of the admission webhook (issue 5 benchmark; not a test).
#
# Starts webhook/examples/bench-server (real TLS and service, caches with
# $WORKLOADS Deployments + $WORKLOADS StatefulSets, each with a
# BackupConfiguration, a finished RestoreSession and, for Deployments, a
# ReplicaSet) and sends pod-CREATE AdmissionReviews from
# shared/fixtures/admission over TLS with keep-alive using `oha`
# (crates.io: `cargo install oha`): first at a fixed 1,000 req/s, then flat
# out. Without oha it uses `h2load` (Debian: `apt-get install nghttp2-client`)
# for the fixed rate, over HTTP/2 as the kube-apiserver calls webhooks, and
# `wrk` (Debian: `apt-get install wrk`) flat out over HTTP/1.1 keep-alive.
# Prints p50/p99/max latency, throughput and the server's RSS.
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
if command -v "$OHA" >/dev/null; then GEN=oha
elif command -v wrk >/dev/null; then GEN=wrk
  echo "oha not found (cargo install oha): using wrk flat out and h2load (if installed) at a fixed rate" >&2
else echo "need oha (cargo install oha) or wrk (apt-get install wrk nghttp2-client)" >&2; exit 1; fi

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

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status"; }
echo "server ready: $((WORKLOADS * 2)) workloads cached, RSS $(( $(rss_kib) / 1024 )) MiB"

run_wrk() { # label, fixture, connections
  local label="$1" fixture="$2" conns="$3"
  cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$FIXTURES/$fixture", "rb"); wrk.body = f:read("*a"); f:close()
LUA
  local cpu0; cpu0="$(cpu_ticks)"
  wrk -t "$(( conns < 2 ? conns : 2 ))" -c "$conns" -d "${DURATION}s" --latency -s "$WORK/post.lua" \
    "https://127.0.0.1:$PORT/mutate/pods?timeout=10s" > "$WORK/wrk.txt"
  local cpu=$(( $(cpu_ticks) - cpu0 ))
  python3 - "$label" "$WORK/wrk.txt" "$cpu" "$(getconf CLK_TCK)" <<'PY'
import re, sys
label, text = sys.argv[1], open(sys.argv[2]).read()
cpu_s = int(sys.argv[3]) / int(sys.argv[4])
n = max(int(re.search(r"(\d+) requests in", text).group(1)), 1)
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
p = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
mx = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", text, re.M).group(1)
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
err = re.search(r"Socket errors: (.*)", text)
print(f"{label:<34} {float(rps):>9.0f} req/s  p50 {ms(p['50']):.3f} ms  p99 {ms(p['99']):.3f} ms"
      f"  max {ms(mx):.3f} ms  non-2xx {bad.group(1) if bad else 0}  {err.group(0) if err else ''}"
      f"  server CPU {cpu_s * 1e6 / n:.0f} us/req")
PY
}

run_h2load() { # label, fixture, clients, requests/s per client (0: flat out), extra h2load args...
  local label="$1" fixture="$2" clients="$3" rps="$4"; shift 4
  local rate=(); [ "$rps" -gt 0 ] && rate=(--rps "$rps")
  rm -f "$WORK/h2load.log"
  local cpu0; cpu0="$(cpu_ticks)"
  h2load -c "$clients" -t 1 "${rate[@]}" -D "$DURATION" -d "$FIXTURES/$fixture" \
    -H 'content-type: application/json' --log-file "$WORK/h2load.log" "$@" \
    "https://127.0.0.1:$PORT/mutate/pods?timeout=10s" > "$WORK/h2load.txt"
  local cpu=$(( $(cpu_ticks) - cpu0 ))
  python3 - "$label" "$WORK/h2load.log" "$WORK/h2load.txt" "$DURATION" "$cpu" "$(getconf CLK_TCK)" <<'PY'
import re, sys
label, log, text, duration = sys.argv[1], sys.argv[2], open(sys.argv[3]).read(), float(sys.argv[4])
cpu_s = int(sys.argv[5]) / int(sys.argv[6])
rows = [line.split("\t") for line in open(log) if line.strip()]
lat = sorted(int(r[2]) / 1000 for r in rows)
bad = sum(1 for r in rows if r[1] != "200")
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
proto = re.search(r"Application protocol: (\S+)", text)
print(f"{label:<34} {len(rows) / duration:>9.0f} req/s  p50 {pct(0.50):.3f} ms  p99 {pct(0.99):.3f} ms"
      f"  max {lat[-1]:.3f} ms  non-200 {bad}  server CPU {cpu_s * 1e6 / max(len(rows), 1):.0f} us/req"
      f"  ({proto.group(1) if proto else '?'})")
PY
}

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

if [ "$GEN" = oha ]; then
  echo "--- oha: fixed rate 1000 req/s, ${DURATION}s, 10 connections"
  run "statefulset pod (patched-restore)" pod-create-statefulset-web-1.json -q 1000 -c 10
  run "bare pod (skipped)"                pod-create-dryrun.json            -q 1000 -c 10
  echo "--- oha: flat out, ${DURATION}s, $CONNECTIONS connections"
  run "statefulset pod (patched-restore)" pod-create-statefulset-web-1.json -c "$CONNECTIONS"
  run "deployment pod (patched)"          pod-create-deployment.json        -c "$CONNECTIONS"
  run "bare pod (skipped)"                pod-create-dryrun.json            -c "$CONNECTIONS"
else
  if command -v h2load >/dev/null; then
    # One connection, one request in flight, paced to 1,000 req/s. (h2load
    # paces in bursts: with -m 10, or 10 connections x 100 req/s, ~10
    # requests start within microseconds of each other every 10 ms, which
    # measures a queue of 10, not a steady rate.)
    echo "--- h2load: fixed rate 1000 req/s, 1 connection, 1 request in flight, ${DURATION}s"
    run_h2load "statefulset pod (patched-restore) h2" pod-create-statefulset-web-1.json 1 1000 -m 1
    run_h2load "deployment pod (patched) h2"          pod-create-deployment.json        1 1000 -m 1
    run_h2load "bare pod (skipped) h2"                pod-create-dryrun.json            1 1000 -m 1
    run_h2load "statefulset pod http/1.1"             pod-create-statefulset-web-1.json 1 1000 --h1
    echo "--- h2load: flat out, ${DURATION}s, $CONNECTIONS connections, 1 stream each"
    run_h2load "statefulset pod (patched-restore) h2" pod-create-statefulset-web-1.json "$CONNECTIONS" 0
  else
    echo "h2load not found (apt-get install nghttp2-client): no fixed-rate run" >&2
  fi
  echo "--- wrk: flat out, ${DURATION}s, 2 threads"
  for c in 1 "$CONNECTIONS"; do
    run_wrk "statefulset pod (patched-restore) c=$c" pod-create-statefulset-web-1.json "$c"
  done
  run_wrk "deployment pod (patched) c=$CONNECTIONS" pod-create-deployment.json "$CONNECTIONS"
  run_wrk "bare pod (skipped) c=$CONNECTIONS"       pod-create-dryrun.json     "$CONNECTIONS"
fi
echo "server RSS now $(( $(rss_kib) / 1024 )) MiB, peak $(( $(hwm_kib) / 1024 )) MiB"
curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^hoard_webhook_reviews_total|^hoard_webhook_cache_objects'
