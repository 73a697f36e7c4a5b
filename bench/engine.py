#!/usr/bin/env python3
"""hoard vs restic on one generated dataset: backup, re-backups, restore.

Data flow: generate (or reuse) a seeded dataset under BENCH_DIR -> for each run,
reset the dataset to state A -> both tools back it up into fresh repositories
(initial, then unchanged) -> 1 % of the small files are rewritten (state B) ->
both back up again -> both restore into empty directories, which are compared
with the source (a difference fails the script) -> optional check/prune ->
median over the runs -> markdown table on stdout and in BENCH_DIR/results.md.

Every operation runs under `/usr/bin/time -f '%e %M'` (wall seconds, peak RSS
in KiB). The two tools alternate which goes first in each run, so neither one
always gets the warmer page cache. Page caches cannot be dropped without
privileges, so all figures are warm-cache figures.

Knobs (environment): BENCH_SCALE (1.0 = ~2 GiB), BENCH_RUNS (1), BENCH_SEED (1),
BENCH_DIR (/tmp/hoard-bench), HOARD (path to the hoard binary), RESTIC
(restic), BENCH_EXTRA (1 = also check --read-data and prune after forget when hoard
has them).
"""

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time

MiB = 1 << 20

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
RUNS = int(os.environ.get("BENCH_RUNS", "1"))
SEED = int(os.environ.get("BENCH_SEED", "1"))
BASE = os.path.abspath(os.environ.get("BENCH_DIR", "/tmp/hoard-bench"))
HOARD = os.environ.get("HOARD", "hoard")
RESTIC = os.environ.get("RESTIC", "restic")
EXTRA = os.environ.get("BENCH_EXTRA", "1") == "1"

N_SMALL = max(100, int(100_000 * SCALE))
BIG_SIZE = max(1 * MiB, int(256 * MiB * SCALE))
N_BIG = 3
FILES_PER_DIR = 100
CHANGED_EVERY = 100  # 1 % of the small files change between backup 2 and 3

DATA = os.path.join(BASE, "data")
PASSWORD_FILE = os.path.join(BASE, "password")


# --------------------------------------------------------------------------
# dataset


WORDS = (
    "request response handler worker queue cache miss hit flush commit "
    "rollback retry timeout connection established closed reset upstream "
    "downstream volume snapshot backup restore chunk pack index blob tree "
    "user admin session token expired renewed latency bytes items "
    "reconcile controller pod node namespace deployment"
).split()
LEVELS = ["INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR"]
COMPONENTS = ["api", "scheduler", "store", "auth", "proxy", "agent", "gc"]


def small_path(i):
    leaf = i // FILES_PER_DIR
    return os.path.join(
        "small", f"a{leaf % 10}", f"b{(leaf // 10) % 10}", f"c{leaf // 100:04d}",
        f"f{i:06d}." + ("bin" if i % 2 == 0 else "log"),
    )


def log_pool(seed):
    """20k distinct log lines; log files are random draws from it, so they
    compress like real logs (zstd ~4x) while being generated quickly."""
    r = random.Random(seed)
    pool = []
    t = r.randrange(86_400_000)
    for _ in range(20_000):
        t += r.randrange(1, 2000)
        s, ms = divmod(t, 1000)
        pool.append(
            f"2026-11-{1 + (s // 86400) % 28:02d}T{(s // 3600) % 24:02d}:{(s // 60) % 60:02d}:"
            f"{s % 60:02d}.{ms:03d}Z {r.choice(LEVELS):5} [{r.choice(COMPONENTS)}-{r.randrange(16)}] "
            f"{' '.join(r.choices(WORDS, k=r.randrange(3, 9)))} "
            f"id={r.getrandbits(32):08x} took={r.randrange(2000)}ms\n".encode()
        )
    return pool


_POOL = []


def log_text(r, size):
    if not _POOL:
        _POOL.extend(log_pool(SEED))
    out = b""
    while len(out) < size:
        out += b"".join(r.choices(_POOL, k=size // 60 + 4))
    return out[:size]


def small_size(r):
    return r.randint(1024, 16 * 1024)


def changed_content(i):
    """File i's bytes after the 1 % change (state B)."""
    r = random.Random(SEED * 1_000_003 + i)
    size = small_size(r)
    return r.randbytes(size) if i % 2 == 0 else log_text(r, size)


class RandomStream:
    """Seeded pseudo-random bytes at disk speed: AES-256-CTR of zeros by openssl
    (Python's own PRNG makes ~50 MB/s here, too slow for 2 GiB)."""

    def __init__(self, seed):
        self.zero = open("/dev/zero", "rb")
        self.p = subprocess.Popen(
            ["openssl", "enc", "-aes-256-ctr", "-nosalt", "-K", f"{seed:064x}", "-iv", "0" * 32],
            stdin=self.zero, stdout=subprocess.PIPE, bufsize=0,
        )

    def read(self, n):
        chunks, left = [], n
        while left:
            b = self.p.stdout.read(left)
            if not b:
                raise BenchError("openssl stopped producing random bytes")
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)

    def close(self):
        self.p.kill()
        self.p.wait()
        self.p.stdout.close()
        self.zero.close()


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def generate():
    """Create the dataset unless one with the same parameters exists."""
    params = {"scale": SCALE, "seed": SEED, "n_small": N_SMALL, "big": BIG_SIZE, "v": 2}
    marker = os.path.join(BASE, "dataset.json")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == params and os.path.isdir(DATA):
                log(f"reusing dataset in {DATA}")
                return
    shutil.rmtree(DATA, ignore_errors=True)
    if os.path.exists(marker):
        os.remove(marker)
    t0 = time.time()
    made = set()
    r = random.Random(SEED)
    rnd = RandomStream(SEED)
    orig = os.path.join(BASE, "orig")
    shutil.rmtree(orig, ignore_errors=True)
    os.makedirs(orig)
    for i in range(N_SMALL):
        p = os.path.join(DATA, small_path(i))
        d = os.path.dirname(p)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        size = small_size(r)
        data = rnd.read(size) if i % 2 == 0 else log_text(r, size)
        write_file(p, data)
        if i % CHANGED_EVERY == 0:
            # state A of the files that change, to reset them before each run
            write_file(os.path.join(orig, str(i)), data)
    rnd.close()
    big = os.path.join(DATA, "big")
    os.makedirs(big, exist_ok=True)
    for k in range(N_BIG):
        rnd = RandomStream(SEED * 1000 + k + 1)
        with open(os.path.join(big, f"random{k}.bin"), "wb") as f:
            left = BIG_SIZE
            while left:
                n = min(4 * MiB, left)
                f.write(rnd.read(n))
                left -= n
        rnd.close()
    # An exact duplicate: must cost (almost) nothing in the repository.
    shutil.copyfile(os.path.join(big, "random0.bin"), os.path.join(big, "random0-copy.bin"))
    # A shifted partial copy: the first half of random1.bin with 4099 bytes
    # inserted 1000 bytes from its start; content-defined chunking must
    # re-synchronise after the insertion and deduplicate the rest.
    r = random.Random(SEED * 31 + 99)
    with open(os.path.join(big, "random1.bin"), "rb") as src, open(
        os.path.join(big, "random1-shifted.bin"), "wb"
    ) as dst:
        dst.write(src.read(1000))
        dst.write(r.randbytes(4099))
        left = BIG_SIZE // 2 - 1000
        while left:
            buf = src.read(min(4 * MiB, left))
            dst.write(buf)
            left -= len(buf)
    with open(marker, "w") as f:
        json.dump(params, f)
    log(f"generated {tree_size(DATA) / MiB:.0f} MiB in {time.time() - t0:.1f}s")


def set_state(version):
    """Rewrite the changing 1 % of the small files: version 0 = as generated
    (state A), 1 = changed (state B)."""
    for i in range(0, N_SMALL, CHANGED_EVERY):
        if version == 0:
            with open(os.path.join(BASE, "orig", str(i)), "rb") as f:
                data = f.read()
        else:
            data = changed_content(i)
        write_file(os.path.join(DATA, small_path(i)), data)


def tree_size(root):
    total = 0
    for d, _, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(d, name)).st_size
    return total


def tree_listing(root):
    """(relative path, mode, size, mtime_ns) of every entry below root."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            size = st.st_size if not os.path.isdir(p) else 0
            out[os.path.relpath(p, root)] = (st.st_mode, size, st.st_mtime_ns if not os.path.isdir(p) else 0)
    return out


# --------------------------------------------------------------------------
# running the tools


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def timed(name, cmd, env=None, ok_codes=(0,)):
    """Run cmd under /usr/bin/time; return (wall seconds, peak RSS MiB)."""
    tf = os.path.join(BASE, "time.out")
    lf = os.path.join(BASE, "logs", name.replace(" ", "_") + ".log")
    os.makedirs(os.path.dirname(lf), exist_ok=True)
    with open(lf, "w") as out:
        p = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", tf] + cmd,
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    if p.returncode not in ok_codes:
        with open(lf) as f:
            tail = f.read()[-3000:]
        raise BenchError(f"{name}: `{' '.join(cmd)}` exited {p.returncode}; log {lf}:\n{tail}")
    with open(tf) as f:
        last = f.read().strip().splitlines()[-1]
    secs, kib = last.split()
    return float(secs), int(kib) / 1024


def run_plain(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, env=env, text=True)
    if p.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` exited {p.returncode}: {p.stderr[-2000:]}")
    return p.stdout


class Tool:
    def __init__(self, name):
        self.name = name
        self.repo = os.path.join(BASE, f"repo-{name}")
        self.target = os.path.join(BASE, f"restore-{name}")
        self.env = dict(os.environ)

    def fresh(self):
        shutil.rmtree(self.repo, ignore_errors=True)
        run_plain(self.init_cmd(), self.env)

    def run(self, op, cmd, ok_codes=(0,)):
        log(f"{self.name}: {op}")
        return timed(f"{self.name} {op}", cmd, self.env, ok_codes)

    def has(self, sub):
        p = subprocess.run(self.base + [sub, "--help"], capture_output=True, env=self.env)
        return p.returncode == 0


class Hoard(Tool):
    def __init__(self):
        super().__init__("hoard")
        self.base = [HOARD, "--repo", self.repo, "--password-file", PASSWORD_FILE]

    def init_cmd(self):
        return self.base + ["init"]

    def backup(self, op):
        return self.run(op, self.base + ["backup", DATA])

    def restore(self):
        return self.run("restore", self.base + ["restore", "latest", "--target", self.target])

    def check(self):
        return self.run("check --read-data", self.base + ["check", "--read-data"])

    def snapshots(self):
        return self.run("snapshots", self.base + ["snapshots"])

    def forget_prune(self):
        return forget_then_prune(self)


class Restic(Tool):
    def __init__(self):
        super().__init__("restic")
        self.base = [RESTIC, "--repo", self.repo, "--password-file", PASSWORD_FILE]
        # restic's local metadata cache lives with the benchmark, not in ~/.cache.
        self.env["RESTIC_CACHE_DIR"] = os.path.join(BASE, "restic-cache")

    def init_cmd(self):
        return self.base + ["init", "--repository-version", "2"]

    def backup(self, op):
        return self.run(op, self.base + ["backup", DATA])

    def restore(self):
        return self.run("restore", self.base + ["restore", "latest", "--target", self.target])

    def check(self):
        return self.run("check --read-data", self.base + ["check", "--read-data"])

    def snapshots(self):
        return self.run("snapshots", self.base + ["snapshots"])

    def forget_prune(self):
        return forget_then_prune(self)


def forget_then_prune(tool):
    """Forget the older half of the snapshots (untimed), then time `prune`.

    The repository holds three snapshots: two of state A (the initial backup
    and the unchanged re-backup) and one of state B (1 % of the small files
    rewritten). `forget --keep-last 1` drops state A, so prune must walk all
    trees, delete the packs and trees only A used and repack the packs where
    A's versions of the changed files sit next to data B still needs (when
    their unused share is over both tools' default --max-unused 5 %).
    """
    log(f"{tool.name}: forget --keep-last 1 (untimed)")
    run_plain(tool.base + ["forget", "--keep-last", "1"], tool.env)
    before = repo_size(tool)
    r = tool.run("prune", tool.base + ["prune"])
    log(f"{tool.name}: prune freed {(before - repo_size(tool)) / MiB:.1f} MiB")
    # Then the unused space prune tolerated: --max-unused 0% repacks every
    # partly used pack (the repack path, which the default mostly skips).
    before = repo_size(tool)
    r0 = tool.run("prune max-unused 0", tool.base + ["prune", "--max-unused", "0%"])
    log(f"{tool.name}: prune --max-unused 0% freed {(before - repo_size(tool)) / MiB:.1f} MiB")
    return r, r0


def verify_restore(tool, source_listing):
    """The restored tree must equal the source: names, modes, sizes, mtimes, bytes."""
    candidates = [os.path.join(tool.target, DATA.lstrip("/")), tool.target]
    root = next((c for c in candidates if os.path.isfile(os.path.join(c, "big", "random0.bin"))), None)
    if root is None:
        raise BenchError(f"{tool.name}: restore wrote no big/random0.bin under {tool.target}")
    got = tree_listing(root)
    if got != source_listing:
        missing = sorted(set(source_listing) - set(got))[:5]
        extra = sorted(set(got) - set(source_listing))[:5]
        differ = sorted(k for k in set(got) & set(source_listing) if got[k] != source_listing[k])[:5]
        details = [f"{k}: source {source_listing[k]} restored {got[k]}" for k in differ]
        raise BenchError(
            f"{tool.name}: restored tree differs from the source: missing {missing}, "
            f"extra {extra}, different (mode,size,mtime_ns) {details}"
        )
    p = subprocess.run(["diff", "-r", "--no-dereference", "-q", DATA, root], capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError(f"{tool.name}: restored content differs from the source:\n{p.stdout[-2000:]}{p.stderr[-500:]}")
    log(f"{tool.name}: restore verified ({len(got)} entries identical)")


def repo_size(tool):
    return tree_size(tool.repo)


# --------------------------------------------------------------------------
# the benchmark


OPS = ["initial backup", "unchanged re-backup", "re-backup, 1% changed", "full restore"]
# Fixed cost of every command: key derivation (scrypt), reading the index.
OPEN_OP = "list snapshots (repository open cost)"
EXTRA_OPS = ["check --read-data", "prune after forgetting half", "then prune --max-unused 0%"]


def one_run(run, tools, results, data_bytes, extra):
    order = tools if run % 2 == 0 else tools[::-1]
    log(f"run {run + 1}/{RUNS}: order {' then '.join(t.name for t in order)}; load {os.getloadavg()}")
    set_state(0)
    for t in order:
        t.fresh()
        shutil.rmtree(t.target, ignore_errors=True)
    for t in order:
        results[(t.name, OPS[0])].append(t.backup("initial backup"))
    for t in order:
        results[(t.name, OPS[1])].append(t.backup("unchanged re-backup"))
    set_state(1)
    for t in order:
        results[(t.name, OPS[2])].append(t.backup("re-backup 1pct changed"))
    source_listing = tree_listing(DATA)
    for t in order:
        os.makedirs(t.target)
        results[(t.name, OPS[3])].append(t.restore())
        verify_restore(t, source_listing)
        shutil.rmtree(t.target)
    for t in order:
        results[(t.name, OPEN_OP)].append(t.snapshots())
    for t in order:
        results[(t.name, "repo size")].append(repo_size(t))
    if "check" in extra:
        for t in order:
            results[(t.name, EXTRA_OPS[0])].append(t.check())
    if "prune" in extra:
        for t in order:
            r, r0 = t.forget_prune()
            results[(t.name, EXTRA_OPS[1])].append(r)
            results[(t.name, EXTRA_OPS[2])].append(r0)
            results[(t.name, "repo size after prune")].append(repo_size(t))


def fmt_ratio(x):
    return f"{x:.2f}×"


def table(results, data_bytes, ops, hoard_missing):
    mb = data_bytes / 1e6
    rows = [
        "| operation | hoard | restic | ratio | target |",
        "|---|---|---|---|---|",
    ]
    targets = {
        OPS[0]: ("speed-up", 2.0),
        OPS[1]: ("speed-up", 3.0),
        OPS[3]: ("speed-up", 2.0),
        EXTRA_OPS[0]: ("speed-up", 1.0),
        EXTRA_OPS[1]: ("speed-up", 1.0),
        EXTRA_OPS[2]: ("speed-up", 1.0),
    }
    verdicts = []
    for op in ops:
        h = results.get(("hoard", op))
        r = results.get(("restic", op))
        if not h or not r:
            continue
        ht = statistics.median(x[0] for x in h)
        rt = statistics.median(x[0] for x in r)
        hm = statistics.median(x[1] for x in h)
        rm = statistics.median(x[1] for x in r)
        speedup = rt / ht if ht > 0 else float("inf")
        tgt = targets.get(op)
        tgt_s = f"≥ {tgt[1]:g}× ({'met' if speedup >= tgt[1] else 'NOT met'})" if tgt else "—"
        if tgt:
            verdicts.append((op, "time", speedup >= tgt[1]))
        rows.append(f"| {op}: wall time | {ht:.2f} s | {rt:.2f} s | speed-up {fmt_ratio(speedup)} | {tgt_s} |")
        if op == OPEN_OP:
            pass
        elif op in (OPS[0], OPS[3], EXTRA_OPS[0]):
            rows.append(
                f"| {op}: throughput | {mb / ht:.0f} MB/s | {mb / rt:.0f} MB/s | {fmt_ratio(speedup)} | — |"
            )
        else:
            rows.append(
                f"| {op}: scan rate | {mb / ht:.0f} MB/s | {mb / rt:.0f} MB/s | {fmt_ratio(speedup)} | — |"
            )
        ok = hm <= rm
        verdicts.append((op, "rss", ok))
        rows.append(
            f"| {op}: peak RSS | {hm:.0f} MiB | {rm:.0f} MiB | hoard/restic {fmt_ratio(hm / rm)} "
            f"| ≤ 1× ({'met' if ok else 'NOT met'}) |"
        )
    hs = results.get(("hoard", "repo size"))
    rs = results.get(("restic", "repo size"))
    if hs and rs:
        h, r = statistics.median(hs), statistics.median(rs)
        rows.append(f"| repository size after 3 backups | {h / MiB:.0f} MiB | {r / MiB:.0f} MiB | hoard/restic {fmt_ratio(h / r)} | — |")
    hs = results.get(("hoard", "repo size after prune"))
    rs = results.get(("restic", "repo size after prune"))
    if hs and rs:
        h, r = statistics.median(hs), statistics.median(rs)
        rows.append(f"| repository size after prune | {h / MiB:.0f} MiB | {r / MiB:.0f} MiB | hoard/restic {fmt_ratio(h / r)} | — |")
    for m in hoard_missing:
        rows.append(f"| {m} | not measured: `hoard {m.split()[0]}` does not exist yet | | | |")
    return "\n".join(rows), verdicts


def main():
    if not os.path.exists("/usr/bin/time"):
        sys.exit("bench: /usr/bin/time is missing (apt-get install time); engine.sh installs it")
    os.makedirs(BASE, exist_ok=True)
    with open(PASSWORD_FILE, "w") as f:
        f.write("hoard-bench-password\n")
    hoard_version = run_plain([HOARD, "--version"]).strip()
    restic_version = run_plain([RESTIC, "version"]).strip()
    log(f"{hoard_version} vs {restic_version}; scale {SCALE}, runs {RUNS}, dir {BASE}")

    generate()
    set_state(0)
    data_bytes = tree_size(DATA)
    n_files = sum(len(f) for _, _, f in os.walk(DATA))

    tools = [Hoard(), Restic()]
    extra, missing = [], []
    if EXTRA:
        if tools[0].has("check"):
            extra.append("check")
        else:
            missing.append(EXTRA_OPS[0])
        if tools[0].has("forget") and tools[0].has("prune"):
            extra.append("prune")
        else:
            missing += EXTRA_OPS[1:]

    results = {}
    for t in tools:
        for op in OPS + [OPEN_OP] + EXTRA_OPS + ["repo size", "repo size after prune"]:
            results[(t.name, op)] = []
    load_before = os.getloadavg()
    started = time.time()
    for run in range(RUNS):
        one_run(run, tools, results, data_bytes, extra)
    load_after = os.getloadavg()

    tab, verdicts = table(results, data_bytes, OPS + [OPEN_OP] + EXTRA_OPS, missing)
    header = (
        f"Dataset: {data_bytes / MiB:.0f} MiB ({data_bytes / 1e6:.0f} MB), {n_files} files "
        f"(BENCH_SCALE={SCALE}, seed {SEED}); {RUNS} run(s), median shown.\n"
        f"Tools: {hoard_version}; {restic_version} (repository version 2, compression auto).\n"
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; warm page cache; "
        f"took {time.time() - started:.0f}s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"
    )
    out = header + "\n" + tab + "\n"
    print(out)
    with open(os.path.join(BASE, "results.md"), "w") as f:
        f.write(out)
    raw = {f"{k[0]}/{k[1]}": v for k, v in results.items() if v}
    with open(os.path.join(BASE, "results.json"), "w") as f:
        json.dump({"scale": SCALE, "runs": RUNS, "data_bytes": data_bytes, "results": raw}, f, indent=1)
    unmet = [f"{op} ({kind})" for op, kind, ok in verdicts if not ok]
    log("targets not met: " + (", ".join(unmet) if unmet else "none"))


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"bench: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
