//! Retry policy shared by the network back ends: transient failures (HTTP
//! 5xx, 408, 429, connection errors, timeouts) are retried with exponential
//! backoff and "decorrelated jitter" (each delay drawn uniformly between the
//! initial delay and three times the previous one, capped), so many agents
//! that failed together do not retry in lockstep. Everything else — 4xx
//! such as 403 (bad credentials) or 404 — fails at once: retrying cannot fix
//! it and only delays the error the user must see.
//!
//! The object-store back end hands the same numbers to `object_store`'s own
//! retry loop (which uses the same rules); the REST back end uses [`retry`].

use std::future::Future;
use std::time::Duration;

/// How hard to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: no retries).
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No retry starts after this much time since the first attempt.
    pub retry_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 10 retries over at most 3 minutes, delays 100 ms … 15 s: rides out a
    /// restarting S3 gateway or a load-balancer hiccup without hiding a
    /// real outage for long.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            retry_timeout: Duration::from_secs(180),
        }
    }
}

impl RetryPolicy {
    pub(crate) fn object_store(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: self.max_backoff,
                base: 3.0,
            },
            max_retries: self.max_retries as usize,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// Is this HTTP status worth retrying?
pub fn is_transient_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Decorrelated-jitter delays.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    prev: Duration,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            prev: policy.initial_backoff,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let lo = self.policy.initial_backoff.as_secs_f64();
        let hi = (self.prev.as_secs_f64() * 3.0).max(lo);
        let d = if hi > lo {
            lo + rand::random::<f64>() * (hi - lo)
        } else {
            lo
        };
        let d = Duration::from_secs_f64(d).min(self.policy.max_backoff);
        self.prev = d;
        d
    }
}

/// An attempt's failure, classified by the caller.
#[derive(Debug)]
pub enum Attempt<E> {
    Transient(E),
    Permanent(E),
}

/// Runs `op` until it succeeds, fails permanently, or the policy is used
/// up (then the last transient error is returned). Sleeps on tokio's clock.
pub async fn retry<T, E, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt<E>>>,
    E: std::fmt::Display,
{
    let start = tokio::time::Instant::now();
    let mut backoff = Backoff::new(policy);
    let mut retries = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Attempt::Permanent(e)) => return Err(e),
            Err(Attempt::Transient(e)) => {
                if retries >= policy.max_retries || start.elapsed() >= policy.retry_timeout {
                    return Err(e);
                }
                retries += 1;
                let delay = backoff.next_delay();
                tracing::warn!(%what, error = %e, retry = retries, delay_ms = delay.as_millis() as u64, "transient error; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn statuses() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(is_transient_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 416] {
            assert!(!is_transient_status(s), "{s}");
        }
    }

    #[test]
    fn delays_grow_with_jitter_and_stay_capped() {
        let p = RetryPolicy::default();
        let mut b = Backoff::new(p);
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= p.initial_backoff && *d <= p.max_backoff)
        );
        assert!(
            delays.iter().any(|d| *d > Duration::from_secs(1)),
            "{delays:?}"
        );
        let mut b2 = Backoff::new(p);
        let other: Vec<Duration> = (0..40).map(|_| b2.next_delay()).collect();
        assert_ne!(
            delays, other,
            "jitter: two clients do not retry in lockstep"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_permanent_ones_are_not() {
        let p = RetryPolicy::default();
        let n = AtomicU32::new(0);
        let r: Result<u32, String> = retry(p, "t", || async {
            let i = n.fetch_add(1, Ordering::SeqCst);
            if i < 3 {
                Err(Attempt::Transient(format!("503 #{i}")))
            } else {
                Ok(i)
            }
        })
        .await;
        assert_eq!(r, Ok(3));

        let n = AtomicU32::new(0);
        let r: Result<(), String> = retry(p, "t", || async {
            n.fetch_add(1, Ordering::SeqCst);
            Err(Attempt::Permanent("403".to_string()))
        })
        .await;
        assert_eq!(r, Err("403".into()));
        assert_eq!(n.load(Ordering::SeqCst), 1);

        let n = AtomicU32::new(0);
        let r: Result<(), String> = retry(p, "t", || async {
            n.fetch_add(1, Ordering::SeqCst);
            Err(Attempt::Transient("502".to_string()))
        })
        .await;
        assert!(r.is_err());
        let attempts = n.load(Ordering::SeqCst);
        assert!(
            (2..=p.max_retries + 1).contains(&attempts),
            "bounded by count and by time: {attempts}"
        );
    }
}
