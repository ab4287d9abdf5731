//! Retry policy, compiled: which outcomes are retried, how many times, and the back-off.

use std::time::Duration;

use rand::Rng;

use tern_config as config;

const ON_5XX: u8 = 1;
const ON_GATEWAY: u8 = 2;
const ON_RESET: u8 = 4;
const ON_CONNECT: u8 = 8;
const ON_4XX: u8 = 16;
const ON_REFUSED: u8 = 32;
const ON_STATUS: u8 = 64;

/// A compiled `retry_policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    on: u8,
    /// Retries after the first try.
    pub num_retries: u32,
    /// Timeout of each try.
    pub per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    statuses: Vec<u16>,
    /// Whether POST/PATCH/CONNECT may be retried.
    pub non_idempotent: bool,
}

impl RetryPolicy {
    /// Compiles a checked policy (unknown conditions were rejected at load).
    pub fn compile(p: &config::RetryPolicy) -> RetryPolicy {
        let on = p.retry_on.as_ref().map_or("5xx", |s| s.as_str());
        let mut bits = 0;
        for c in on.split(',').map(str::trim) {
            bits |= match c {
                "5xx" => ON_5XX,
                "gateway-error" => ON_GATEWAY,
                "reset" => ON_RESET,
                "connect-failure" => ON_CONNECT,
                "retriable-4xx" => ON_4XX,
                "refused-stream" => ON_REFUSED,
                "retriable-status-codes" => ON_STATUS,
                _ => 0,
            };
        }
        let base = p
            .retry_back_off
            .as_ref()
            .and_then(|b| b.base_interval.as_ref())
            .map_or(Duration::from_millis(25), |d| d.0);
        let max = p
            .retry_back_off
            .as_ref()
            .and_then(|b| b.max_interval.as_ref())
            .map_or(base * 10, |d| d.0);
        RetryPolicy {
            on: bits,
            num_retries: p
                .num_retries
                .as_ref()
                .map_or(config::defaults::NUM_RETRIES, |n| n.value),
            per_try_timeout: p.per_try_timeout.as_ref().map(|d| d.0),
            base,
            max,
            statuses: p.retriable_status_codes.iter().map(|s| s.value).collect(),
            non_idempotent: p.retry_non_idempotent,
        }
    }

    /// Whether a response with `status` is retried.
    pub fn on_status(&self, status: u16) -> bool {
        (self.on & ON_5XX != 0 && status >= 500)
            || (self.on & ON_GATEWAY != 0 && matches!(status, 502..=504))
            || (self.on & ON_4XX != 0 && status == 409)
            || (self.on & ON_STATUS != 0 && self.statuses.contains(&status))
    }

    /// Whether a failed connect is retried (`5xx` and `gateway-error` include it, as in Envoy).
    pub fn on_connect_failure(&self) -> bool {
        self.on & (ON_5XX | ON_GATEWAY | ON_CONNECT) != 0
    }

    /// Whether a reset before response headers (or a per-try timeout) is retried.
    pub fn on_reset(&self) -> bool {
        self.on & (ON_5XX | ON_GATEWAY | ON_RESET | ON_REFUSED) != 0
    }

    /// Full-jitter back-off before retry `n` (1-based): random in [0, min(max, (2^n - 1) × base)].
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = (1u64 << n.min(20)) - 1;
        let upper = self.base.saturating_mul(factor as u32).min(self.max);
        if upper.is_zero() {
            return upper;
        }
        Duration::from_nanos(rand::rng().random_range(0..=upper.as_nanos() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RetryPolicy {
        RetryPolicy::compile(&serde_saphyr::from_str(yaml).unwrap())
    }

    #[test]
    fn conditions() {
        let p = policy("retry_on: gateway-error\n");
        assert!(p.on_status(503) && !p.on_status(500) && p.on_connect_failure());
        let p = policy(
            "retry_on: retriable-status-codes,retriable-4xx\nretriable_status_codes: [429]\n",
        );
        assert!(p.on_status(429) && p.on_status(409) && !p.on_status(503) && !p.on_reset());
        let p = policy("{}");
        assert_eq!(p.num_retries, 1);
        assert!(p.on_status(500) && p.on_reset() && p.on_connect_failure());
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = policy("retry_back_off: { base_interval: 10ms, max_interval: 50ms }\n");
        for n in 1..10 {
            let b = p.backoff(n);
            assert!(b <= Duration::from_millis(10 * ((1 << n) - 1)).min(Duration::from_millis(50)));
        }
    }
}
