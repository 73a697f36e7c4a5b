#!/usr/bin/env bash
# The node agent: one BackupSession over 20 pods' volumes on one node, against
# the engine alone on the same data (same run, alternating who goes first).
# Builds only nodeagent's bench-agent example (release), generates the dataset
# once, then runs `bench-agent agent` and `bench-agent engine` under
# /usr/bin/time and prints a markdown table of ratios.
# Knobs: BENCH_SCALE (1.0 = ~2 GiB), BENCH_RUNS (1), BENCH_SEED (1),
# BENCH_DIR (/tmp/hoard-agent-bench), BENCH_TRANSFERS (1, the agent's
# --max-transfers), BENCH_AGENT (an existing bench-agent binary: skips the
# build), BENCH_AGENT_ENV (environment of the agent runs; default
# MALLOC_ARENA_MAX=4 as manifests/base/agent.yaml sets it; the engine runs
# get none, as `hoard backup` would), CARGO_TARGET_DIR. See bench/README.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

SCALE="${BENCH_SCALE:-1}"
RUNS="${BENCH_RUNS:-1}"
SEED="${BENCH_SEED:-1}"
DIR="${BENCH_DIR:-/tmp/hoard-agent-bench}"
TRANSFERS="${BENCH_TRANSFERS:-1}"
AGENT_ENV="${BENCH_AGENT_ENV-MALLOC_ARENA_MAX=4}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if [ ! -x /usr/bin/time ]; then
  echo "bench: installing GNU time (peak RSS measurement) from Debian" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq time >/dev/null
fi

if [ -z "${BENCH_AGENT:-}" ]; then
  cargo build --release -p nodeagent --example bench-agent >&2
  BENCH_AGENT="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench-agent"
fi

mkdir -p "$DIR/logs"
load_before="$(cut -d' ' -f1 /proc/loadavg)"
start=$(date +%s)
"$BENCH_AGENT" generate --data "$DIR/data" --scale "$SCALE" --seed "$SEED"

: > "$DIR/runs.jsonl"
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then order="agent engine"; else order="engine agent"; fi
  for mode in $order; do
    work="$DIR/work-$mode"
    rm -rf "$work"
    log="$DIR/logs/$mode-$run.log"
    echo "bench: run $run/$RUNS: $mode" >&2
    if [ "$mode" = agent ]; then menv="$AGENT_ENV"; else menv=""; fi
    # shellcheck disable=SC2086 # word splitting of NAME=VALUE pairs wanted
    if ! env $menv /usr/bin/time -f '%e %U %S %M' -o "$DIR/time" \
        "$BENCH_AGENT" "$mode" --data "$DIR/data" --work "$work" \
        $([ "$mode" = agent ] && echo --transfers "$TRANSFERS") \
        > "$DIR/out.json" 2> "$log"; then
      echo "bench: $mode failed; see $log" >&2
      tail -5 "$log" >&2
      exit 1
    fi
    read -r wall user sys rss_kib < "$DIR/time"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r.update(run=int(sys.argv[2]), proc_wall_s=float(sys.argv[3]), cpu_s=float(sys.argv[4])+float(sys.argv[5]), peak_rss_kib=int(sys.argv[6])); print(json.dumps(r))' \
      "$DIR/out.json" "$run" "$wall" "$user" "$sys" "$rss_kib" >> "$DIR/runs.jsonl"
    rm -rf "$work"
  done
done
load_after="$(cut -d' ' -f1 /proc/loadavg)"
took=$(( $(date +%s) - start ))

AGENT_ENV="$AGENT_ENV" python3 - "$DIR" "$SCALE" "$SEED" "$RUNS" "$TRANSFERS" "$load_before" "$load_after" "$took" <<'EOF'
import json, statistics, sys, datetime, os
d, scale, seed, runs, transfers, lb, la, took = sys.argv[1:]
rows = [json.loads(l) for l in open(os.path.join(d, "runs.jsonl"))]
def med(mode, key):
    v = [r[key] for r in rows if r["mode"] == mode and r.get(key) is not None]
    return statistics.median(v) if v else None
a = {k: med("agent", k) for k in ("wall_s", "cpu_s", "peak_rss_kib", "first_read_s")}
e = {k: med("engine", k) for k in ("wall_s", "cpu_s", "peak_rss_kib", "first_read_s")}
r0 = rows[0]
mib = r0["bytes"] / 2**20
mbs = lambda s: r0["bytes"] / 1e6 / s
api = [r["api"] for r in rows if r["mode"] == "agent"][-1]
ok = lambda c: "met" if c else "**not met**"
out = []
out.append(f"Dataset: {mib:.0f} MiB, {r0['files']} files in {r0['hosts']} pods' volumes (BENCH_SCALE={scale}, seed {seed}); "
           f"{runs} run(s) alternating, median shown; agent --max-transfers {transfers}, environment {os.environ.get('AGENT_ENV') or 'none'}.")
out.append(f"Machine: {os.cpu_count()} CPUs; load average {lb} before, {la} after; took {took}s; "
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.")
out.append("")
out.append("| | agent (1 BackupSession) | engine alone | agent / engine | target |")
out.append("|---|---|---|---|---|")
out.append(f"| throughput (wall) | {mbs(a['wall_s']):.1f} MB/s ({a['wall_s']:.1f} s) | {mbs(e['wall_s']):.1f} MB/s ({e['wall_s']:.1f} s) | "
           f"{a['wall_s']/e['wall_s']:.3f}× time | overhead < 10 %: {ok(a['wall_s']/e['wall_s'] < 1.10)} |")
out.append(f"| CPU (user+sys, whole process) | {a['cpu_s']:.1f} s | {e['cpu_s']:.1f} s | {a['cpu_s']/e['cpu_s']:.3f}× | overhead < 10 %: {ok(a['cpu_s']/e['cpu_s'] < 1.10)} |")
out.append(f"| peak RSS | {a['peak_rss_kib']/1024:.0f} MiB | {e['peak_rss_kib']/1024:.0f} MiB | {a['peak_rss_kib']/e['peak_rss_kib']:.2f}× | ≤ 256 MiB: {ok(a['peak_rss_kib'] <= 256*1024)} |")
fa, fe = a["first_read_s"], e["first_read_s"]
fmt = lambda v: "not seen" if v is None else f"{v*1000:.0f} ms"
out.append(f"| session created → first byte read | {fmt(fa)} | {fmt(fe)} (start → first read) | | < 1 s: {ok(fa is not None and fa < 1.0)} |")
out.append("")
out.append(f"API traffic of one agent run: {api['requests']} requests, {api['status_patches']} status patches "
           f"({api['status_conflicts']} rejected as stale), {api['events']} events, {api['session_watch_events']} session watch events.")
text = "\n".join(out)
print(text)
open(os.path.join(d, "results.md"), "w").write(text + "\n")
json.dump({"agent": a, "engine": e, "runs": rows}, open(os.path.join(d, "results.json"), "w"), indent=1)
EOF
