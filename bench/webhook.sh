#!/usr/bin/env bash
# Load test of the admission webhook (issue 5 benchmark; not a test).
# Runs unattended in about 2 minutes (8 load runs of $DURATION s) and ends
# with one table; see bench/README.md ("webhook.sh") for what each row means.
#
# 1. `answer-cpu`: CPU per review of the decision alone (decode, decide,
#    encode; no TLS/HTTP), one thread: the figure least affected by a busy
#    machine.
# 2. Starts webhook/examples/bench-server (real TLS and service, caches with
#    $WORKLOADS Deployments + $WORKLOADS StatefulSets, each with a
#    BackupConfiguration, a finished RestoreSession and, for Deployments, a
#    ReplicaSet) and sends pod-CREATE AdmissionReviews from
#    shared/fixtures/admission over TLS with keep-alive:
#    - at a fixed 1,000 req/s over HTTP/2 with h2load (Debian
#      `nghttp2-client`), as the kube-apiserver calls webhooks: one
#      connection (one API server), then three connections of 333 req/s
#      (an HA control plane of three API servers);
#    - flat out with wrk (Debian `wrk`, HTTP/1.1 keep-alive, 50
#      connections) and h2load (HTTP/2, 50 connections).
#    Every row gives the server's CPU time per request (/proc/<pid>/stat).
#
# Usage: bench/webhook.sh [duration-seconds]
#   BENCH_SERVER=/path/bench-server ANSWER_CPU=/path/answer-cpu: use these
#   binaries instead of building them (to compare two builds).
#   Missing h2load/wrk are installed with apt-get (root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-10}"
WORKLOADS="${WORKLOADS:-10000}"
CONNECTIONS="${CONNECTIONS:-50}"
PORT="${PORT:-18443}"
ADMIN_PORT="${ADMIN_PORT:-19090}"
FIXTURES=shared/fixtures/admission
[ -d "$FIXTURES" ] || FIXTURES=../shared/fixtures/admission

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing ${need[*]} from Debian" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if [ -z "${BENCH_SERVER:-}" ] || [ -z "${ANSWER_CPU:-}" ]; then
  cargo build --release -q -p webhook --example bench-server --example answer-cpu
fi
BIN="${BENCH_SERVER:-$CARGO_TARGET_DIR/release/examples/bench-server}"
CPU_BIN="${ANSWER_CPU:-$CARGO_TARGET_DIR/release/examples/answer-cpu}"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT
TABLE="$WORK/table.md"
: > "$TABLE"

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "--- decision alone (answer-cpu, 1 thread, 20,000 reviews per fixture)"
"$CPU_BIN" "$FIXTURES" 20000 | tee "$WORK/cpu.txt"

"$BIN" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --dir "$WORK" --workloads "$WORKLOADS" &
SERVER_PID=$!
for _ in $(seq 1 200); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status"; }
echo "server ready: $((WORKLOADS * 2)) workloads cached, RSS $(( $(rss_kib) / 1024 )) MiB"

# Prints one row and appends it to the table. Args: run, fixture, req/s,
# p50 ms, p99 ms, max ms, errors, requests, server CPU ticks.
row() {
  python3 - "$@" "$(getconf CLK_TCK)" "$TABLE" <<'PY'
import sys
run, fixture, rps, p50, p99, mx, errors, n, ticks, hz, table = sys.argv[1:]
cpu_us = int(ticks) / int(hz) * 1e6 / max(int(n), 1)
line = (f"| {run} | {fixture} | {float(rps):,.0f} | {float(p50):.3f} ms | {float(p99):.3f} ms"
        f" | {float(mx):.2f} ms | {errors} | {cpu_us:.0f} µs |")
print(line)
open(table, "a").write(line + "\n")
PY
}

run_wrk() { # run label, fixture, connections
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
  # shellcheck disable=SC2046
  row "$label" "$fixture" $(python3 - "$WORK/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
p = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
mx = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", text, re.M).group(1)
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
n = re.search(r"(\d+) requests in", text).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, err.groups())) if err else 0)
print(rps, ms(p["50"]), ms(p["99"]), ms(mx), errors, n)
PY
) "$cpu"
}

run_h2load() { # run label, fixture, clients, requests/s per client (0: flat out), extra h2load args...
  local label="$1" fixture="$2" clients="$3" rps="$4"; shift 4
  local rate=(); [ "$rps" -gt 0 ] && rate=(--rps "$rps")
  rm -f "$WORK/h2load.log"
  local cpu0; cpu0="$(cpu_ticks)"
  h2load -c "$clients" -t 1 "${rate[@]}" -D "$DURATION" -d "$FIXTURES/$fixture" \
    -H 'content-type: application/json' --log-file "$WORK/h2load.log" "$@" \
    "https://127.0.0.1:$PORT/mutate/pods?timeout=10s" > "$WORK/h2load.txt"
  local cpu=$(( $(cpu_ticks) - cpu0 ))
  grep -q "Application protocol: h2" "$WORK/h2load.txt" || { echo "h2load did not speak HTTP/2" >&2; exit 1; }
  # shellcheck disable=SC2046
  row "$label" "$fixture" $(python3 - "$WORK/h2load.log" "$DURATION" <<'PY'
import sys
rows = [line.split("\t") for line in open(sys.argv[1]) if line.strip()]
lat = sorted(int(r[2]) / 1000 for r in rows)
bad = sum(1 for r in rows if r[1] != "200")
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(len(rows) / float(sys.argv[2]), pct(0.50), pct(0.99), lat[-1], bad, len(rows))
PY
) "$cpu"
}

echo "--- fixed 1,000 req/s over HTTP/2 (h2load), ${DURATION}s each"
# h2load starts each client's requests on a timer, so requests of one
# client never overlap (-m 1) and those of several clients arrive
# independently: see bench/README.md for why this is the API server's
# pattern and why more streams per connection are not.
run_h2load "1,000/s, h2, 1 conn" pod-create-statefulset-web-1.json 1 1000 -m 1
run_h2load "1,000/s, h2, 1 conn" pod-create-deployment.json        1 1000 -m 1
run_h2load "1,000/s, h2, 1 conn" pod-create-dryrun.json            1 1000 -m 1
run_h2load "1,000/s, h2, 3 conns × 333/s" pod-create-statefulset-web-1.json 3 333 -m 1
echo "--- flat out, ${DURATION}s each"
run_wrk "flat out, wrk, $CONNECTIONS conns" pod-create-statefulset-web-1.json "$CONNECTIONS"
run_wrk "flat out, wrk, $CONNECTIONS conns" pod-create-deployment.json        "$CONNECTIONS"
run_wrk "flat out, wrk, $CONNECTIONS conns" pod-create-dryrun.json            "$CONNECTIONS"
run_h2load "flat out, h2, $CONNECTIONS conns" pod-create-statefulset-web-1.json "$CONNECTIONS" 0

rss_now=$(( $(rss_kib) / 1024 )); rss_peak=$(( $(hwm_kib) / 1024 ))
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "decision alone (decode + decide + encode, 1 thread):"
sed 's/^/  /' "$WORK/cpu.txt"
echo
echo "| run | fixture | req/s | p50 | p99 | max | errors | server CPU/req |"
echo "|---|---|---|---|---|---|---|---|"
cat "$TABLE"
echo
echo "server RSS now ${rss_now} MiB, peak ${rss_peak} MiB"
curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^hoard_webhook_reviews_total' | sed 's/^/  /'
