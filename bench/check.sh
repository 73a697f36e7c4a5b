#!/usr/bin/env bash
# hoard vs restic: `check --read-data` on the same repositories, wall time and
# peak RSS. Two repositories hold the same generated dataset (engine.py's
# generator): one written by hoard, one by restic; each tool checks both, so
# every comparison is on identical files. Installs what it needs, builds hoard
# in release mode (or uses $HOARD), prints a markdown table.
# Knobs: BENCH_SCALE (1.0 = ~2 GiB; 0.1 = ~200 MiB), BENCH_RUNS (1; median),
# BENCH_SEED, BENCH_DIR (/tmp/hoard-bench-check), HOARD, RESTIC, CARGO_TARGET_DIR.
# See bench/README.md ("check.sh").
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
command -v restic >/dev/null || scripts/install-deps

if [ -z "${HOARD:-}" ]; then
  cargo build --release -p hoard >&2
  HOARD="${CARGO_TARGET_DIR:-$root/target}/release/hoard"
fi
export HOARD
export RESTIC="${RESTIC:-$(command -v restic)}"
export BENCH_DIR="${BENCH_DIR:-/tmp/hoard-bench-check}"

exec python3 - "$root/bench" <<'EOF'
import os, platform, shutil, statistics, sys, time

sys.path.insert(0, sys.argv[1])
import engine as E  # the dataset generator and the timing helper

RUNS = E.RUNS


def init_and_backup(name, base, init_args):
    repo = os.path.join(E.BASE, f"repo-{name}-made")
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(os.environ, RESTIC_CACHE_DIR=os.path.join(E.BASE, "restic-cache"))
    E.run_plain(base + ["--repo", repo, "--password-file", E.PASSWORD_FILE] + init_args, env)
    E.log(f"{name}: backup into {repo}")
    E.timed(f"{name} backup", base + ["--repo", repo, "--password-file", E.PASSWORD_FILE, "backup", E.DATA], env)
    return repo


def main():
    os.makedirs(E.BASE, exist_ok=True)
    with open(E.PASSWORD_FILE, "w") as f:
        f.write("hoard-bench-password\n")
    hv = E.run_plain([E.HOARD, "--version"]).strip()
    rv = E.run_plain([E.RESTIC, "version"]).strip()
    E.generate()
    E.set_state(0)
    data_bytes = E.tree_size(E.DATA)
    repos = {
        "hoard": init_and_backup("hoard", [E.HOARD], ["init"]),
        "restic": init_and_backup("restic", [E.RESTIC], ["init", "--repository-version", "2"]),
    }
    env = dict(os.environ)
    tools = {
        "hoard": lambda repo: [E.HOARD, "--repo", repo, "--password-file", E.PASSWORD_FILE, "-q", "check", "--read-data"],
        # restic check uses a fresh temporary cache by default: no cache effects.
        "restic": lambda repo: [E.RESTIC, "--repo", repo, "--password-file", E.PASSWORD_FILE, "check", "--read-data"],
    }
    res = {}
    load0 = os.getloadavg()[0]
    t0 = time.time()
    for run in range(RUNS):
        for made, repo in repos.items():
            order = ["hoard", "restic"] if (run % 2 == 0) else ["restic", "hoard"]
            for tool in order:
                E.log(f"run {run + 1}: {tool} check --read-data on the {made}-made repository")
                res.setdefault((made, tool), []).append(
                    E.timed(f"{tool} check {made}-made run{run}", tools[tool](repo), env))
    load1 = os.getloadavg()[0]
    rows = []
    for made, repo in repos.items():
        size = E.tree_size(repo)
        h = [statistics.median(x[i] for x in res[(made, "hoard")]) for i in (0, 1)]
        r = [statistics.median(x[i] for x in res[(made, "restic")]) for i in (0, 1)]
        rows.append(
            f"| {made}-made ({size / E.MiB:.0f} MiB) | {h[0]:.2f} s | {r[0]:.2f} s | "
            f"{r[0] / h[0]:.2f}× | {h[1]:.0f} MiB | {r[1]:.0f} MiB | {h[1] / r[1]:.2f}× |"
        )
    out = (
        f"Dataset: {data_bytes / E.MiB:.0f} MiB (BENCH_SCALE={E.SCALE}, seed {E.SEED}); {RUNS} run(s), median shown.\n"
        f"Tools: {hv}; {rv}.\n"
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}; load average {load0:.1f} before, "
        f"{load1:.1f} after; warm page cache; checks took {time.time() - t0:.0f}s; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        "| repository | hoard | restic | speed-up (restic/hoard time) | hoard RSS | restic RSS | RSS hoard/restic |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(out)
    with open(os.path.join(E.BASE, "check-results.md"), "w") as f:
        f.write(out)


try:
    main()
except E.BenchError as e:
    print(f"bench: FAILED: {e}", file=sys.stderr)
    sys.exit(1)
EOF
