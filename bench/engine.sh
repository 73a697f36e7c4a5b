#!/usr/bin/env bash
# hoard vs restic: backup, unchanged re-backup, re-backup after 1 % changed,
# full restore (and check/prune when hoard has them) on one generated dataset.
# Installs what it needs, builds hoard in release mode, then runs bench/engine.py.
# Knobs: BENCH_SCALE (1.0 = ~2 GiB), BENCH_RUNS, BENCH_SEED, BENCH_DIR,
# HOARD (an existing hoard binary: skips the build), CARGO_TARGET_DIR.
# See bench/README.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if [ ! -x /usr/bin/time ]; then
  echo "bench: installing GNU time (peak RSS measurement) from Debian" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq time >/dev/null
fi
scripts/install-deps

if [ -z "${HOARD:-}" ]; then
  cargo build --release -p hoard >&2
  HOARD="${CARGO_TARGET_DIR:-$root/target}/release/hoard"
fi
export HOARD
export RESTIC="${RESTIC:-$(command -v restic)}"
exec python3 "$root/bench/engine.py"
