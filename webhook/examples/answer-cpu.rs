//! CPU cost of the admission decision alone (decode, decide, encode; no TLS,
//! no HTTP), per fixture, on one thread: the figure `bench/webhook.sh`
//! prints first, because unlike latency it does not depend on how busy the
//! machine is. CPU time is this thread's time on a CPU
//! (`/proc/thread-self/schedstat`, nanoseconds), not wall time.
//!
//! Usage: answer-cpu [fixture-dir] [iterations]

use std::path::PathBuf;

use webhook::mutate::InjectConfig;

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "../shared/fixtures/admission".to_owned()),
    );
    let iters: u64 = args.next().map_or(Ok(20_000), |s| s.parse())?;
    let state = webhook::testing::busy_state();
    webhook::testing::populate(&state, 10_000);
    let cfg = InjectConfig::default();
    for fixture in [
        "pod-create-statefulset-web-1.json",
        "pod-create-deployment.json",
        "pod-create-dryrun.json",
    ] {
        let path = dir.join(fixture);
        let body =
            std::fs::read(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let warm = webhook::review::answer(&body, &state, &cfg);
        for _ in 0..iters / 10 {
            std::hint::black_box(webhook::review::answer(&body, &state, &cfg));
        }
        let t0 = thread_cpu_ns();
        for _ in 0..iters {
            std::hint::black_box(webhook::review::answer(
                std::hint::black_box(&body),
                &state,
                &cfg,
            ));
        }
        let ns = (thread_cpu_ns() - t0) as f64 / iters as f64;
        println!(
            "{fixture:<36} {:<16} {:>7.1} us CPU/answer  ({} B in, {} B out)",
            warm.outcome.as_str(),
            ns / 1000.0,
            body.len(),
            warm.body.len()
        );
    }
    Ok(())
}
