//! Retries, in one place: the compiled policy (which outcomes are retried, how many times, the
//! back-off) and the decisions the request path makes with it, as pure functions: does the
//! policy apply to this request, how does its body go up, is this outcome retried, how long to
//! wait. The retry budget is a circuit breaker and lives with the cluster's limits.
//!
//! gRPC conditions (`unavailable`, ...) are read from `grpc-status` in the response headers, a
//! trailers-only response, as Envoy's `RetryStateImpl` reads them; a status in the trailers
//! comes after the response started and is never retried. A gRPC request (a POST) gets a policy
//! that has gRPC conditions: naming one is the route's opt-in to retrying gRPC calls, as Envoy
//! retries them whatever the method.

use std::time::Duration;

use http::Method;
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
    /// gRPC status codes retried, one bit per code.
    grpc_on: u32,
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
        let mut grpc_on = 0u32;
        for c in on.split(',').map(str::trim) {
            if let Some(code) = crate::grpc::retry_condition(c) {
                grpc_on |= 1 << code;
            }
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
            grpc_on,
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

    /// Whether a response with gRPC status `code` in its headers is retried.
    pub fn on_grpc(&self, code: u8) -> bool {
        code < 32 && self.grpc_on & (1 << code) != 0
    }

    /// Whether the policy names a gRPC condition.
    pub fn has_grpc(&self) -> bool {
        self.grpc_on != 0
    }

    /// Whether a failed connect is retried (`5xx` and `gateway-error` include it, as in Envoy).
    pub fn on_connect_failure(&self) -> bool {
        self.on & (ON_5XX | ON_GATEWAY | ON_CONNECT) != 0
    }

    /// Whether a reset before response headers (or a per-try timeout) is retried.
    pub fn on_reset(&self) -> bool {
        self.on & (ON_5XX | ON_GATEWAY | ON_RESET) != 0
    }

    /// Whether a stream the upstream refused (`REFUSED_STREAM`: not processed) is retried:
    /// `refused-stream`, or any condition that retries resets (Envoy's).
    pub fn on_refused_stream(&self) -> bool {
        self.on_reset() || self.on & ON_REFUSED != 0
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

/// What a try ended with, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// Response headers with this status.
    Status(u16),
    /// Response headers with this HTTP status and this `grpc-status` (trailers-only gRPC).
    Grpc(u16, u8),
    /// The connection could not be made.
    ConnectFailure,
    /// The upstream closed or reset before response headers.
    Reset,
    /// The upstream refused the stream (HTTP/2 `REFUSED_STREAM`) before processing it.
    RefusedStream,
    /// No response headers in time (a per-try timeout, or the route deadline).
    Timeout,
    /// Refused locally (a circuit breaker): never retried.
    Refused,
}

impl RetryPolicy {
    /// Whether `outcome` is retried. A timeout is retried like a reset, but only while the route
    /// deadline has not passed (a per-try timeout; the route timeout ends the request).
    pub fn retries(&self, outcome: TryOutcome, deadline_passed: bool) -> bool {
        match outcome {
            TryOutcome::Status(s) => self.on_status(s),
            TryOutcome::Grpc(s, code) => self.on_status(s) || self.on_grpc(code),
            TryOutcome::ConnectFailure => self.on_connect_failure(),
            TryOutcome::Reset => self.on_reset(),
            TryOutcome::RefusedStream => self.on_refused_stream(),
            TryOutcome::Timeout => self.on_reset() && !deadline_passed,
            TryOutcome::Refused => false,
        }
    }
}

/// Methods that are safe to repeat (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The policy that applies to a request: none unless it allows a retry and the method may be
/// repeated (or the policy retries non-idempotent methods too, or the request is gRPC and the
/// policy has gRPC conditions).
pub fn policy_for<'a>(
    p: Option<&'a RetryPolicy>,
    method: &Method,
    grpc: bool,
) -> Option<&'a RetryPolicy> {
    p.filter(|p| {
        p.num_retries > 0 && (p.non_idempotent || is_idempotent(method) || (grpc && p.has_grpc()))
    })
}

/// How a request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// No body: every try sends none.
    Empty,
    /// Read it into memory first, so every try can send it again.
    Buffer,
    /// Stream it through: one try only.
    Stream,
}

/// A retry needs the body again, so it is buffered when a policy applies and the body is known
/// to fit `limit` (a declared length); a body of unknown or larger size streams in one try.
pub fn body_plan(retried: bool, end_stream: bool, declared: Option<u64>, limit: u64) -> BodyPlan {
    match (retried, end_stream) {
        (false, _) => BodyPlan::Stream,
        (true, true) => BodyPlan::Empty,
        (true, false) if declared.is_some_and(|n| n <= limit) => BodyPlan::Buffer,
        (true, false) => BodyPlan::Stream,
    }
}

/// The wait before the next try: the back-off, cut short at the route deadline (`remaining`:
/// the time left before it, when there is one).
pub fn backoff_within(backoff: Duration, remaining: Option<Duration>) -> Duration {
    match remaining {
        Some(r) => backoff.min(r),
        None => backoff,
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
    fn grpc_conditions_read_the_header_status() {
        let p = policy("retry_on: unavailable,resource-exhausted\n");
        assert!(p.has_grpc());
        assert!(p.retries(TryOutcome::Grpc(200, 14), false));
        assert!(p.retries(TryOutcome::Grpc(200, 8), false));
        assert!(!p.retries(TryOutcome::Grpc(200, 13), false));
        assert!(!p.retries(TryOutcome::Grpc(200, 0), false));
        assert!(
            !p.retries(TryOutcome::Status(503), false),
            "HTTP statuses need an HTTP condition"
        );
        let all = policy(
            "retry_on: cancelled,deadline-exceeded,internal,resource-exhausted,unavailable,5xx\n",
        );
        for code in [1, 4, 8, 13, 14] {
            assert!(all.on_grpc(code), "{code}");
        }
        for code in [0, 2, 3, 5, 7, 12, 16] {
            assert!(!all.on_grpc(code), "{code}");
        }
        // An HTTP condition still applies to a gRPC response's HTTP status.
        assert!(all.retries(TryOutcome::Grpc(503, 0), false));
        assert!(!policy("retry_on: 5xx\n").has_grpc());
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = policy("retry_back_off: { base_interval: 10ms, max_interval: 50ms }\n");
        for n in 1..10 {
            let b = p.backoff(n);
            assert!(b <= Duration::from_millis(10 * ((1 << n) - 1)).min(Duration::from_millis(50)));
        }
    }

    #[test]
    fn outcomes_map_to_conditions() {
        let p = policy("retry_on: reset\n");
        assert!(p.retries(TryOutcome::Reset, false));
        assert!(p.retries(TryOutcome::Timeout, false));
        // The route deadline passed: the request is over, whatever the policy says.
        assert!(!p.retries(TryOutcome::Timeout, true));
        assert!(!p.retries(TryOutcome::Status(503), false));
        assert!(!p.retries(TryOutcome::ConnectFailure, false));
        assert!(!p.retries(TryOutcome::Refused, false));
        let p = policy("retry_on: connect-failure\n");
        assert!(
            p.retries(TryOutcome::ConnectFailure, false) && !p.retries(TryOutcome::Reset, false)
        );
        let p = policy("retry_on: 5xx\n");
        assert!(
            p.retries(TryOutcome::Status(500), false) && !p.retries(TryOutcome::Status(404), false)
        );
        assert!(!p.retries(TryOutcome::Refused, false));
        // `refused-stream` is about REFUSED_STREAM only; resets and timeouts are `reset`'s.
        let p = policy("retry_on: refused-stream\n");
        assert!(p.retries(TryOutcome::RefusedStream, false));
        assert!(!p.retries(TryOutcome::Reset, false));
        assert!(!p.retries(TryOutcome::Timeout, false));
        for on in ["reset", "5xx", "gateway-error"] {
            let p = policy(&format!("retry_on: {on}\n"));
            assert!(p.retries(TryOutcome::RefusedStream, false), "{on}");
        }
        let p = policy("retry_on: connect-failure\n");
        assert!(!p.retries(TryOutcome::RefusedStream, false));
    }

    #[test]
    fn only_repeatable_requests_get_the_policy() {
        let p = policy("{}");
        assert!(policy_for(Some(&p), &Method::GET, false).is_some());
        assert!(policy_for(Some(&p), &Method::PUT, false).is_some());
        assert!(policy_for(Some(&p), &Method::POST, false).is_none());
        assert!(policy_for(Some(&p), &Method::PATCH, false).is_none());
        let any = policy("retry_non_idempotent: true\n");
        assert!(policy_for(Some(&any), &Method::POST, false).is_some());
        let none = policy("num_retries: 0\n");
        assert!(policy_for(Some(&none), &Method::GET, false).is_none());
        assert!(policy_for(None, &Method::GET, false).is_none());
        // A gRPC call (a POST) is retried by a policy with gRPC conditions, not by others.
        let grpc = policy("retry_on: unavailable\n");
        assert!(policy_for(Some(&grpc), &Method::POST, true).is_some());
        assert!(policy_for(Some(&grpc), &Method::POST, false).is_none());
        assert!(policy_for(Some(&p), &Method::POST, true).is_none());
    }

    #[test]
    fn bodies_are_buffered_only_when_retried_and_known_to_fit() {
        use BodyPlan::*;
        assert_eq!(body_plan(false, false, Some(10), 100), Stream);
        assert_eq!(body_plan(false, true, None, 100), Stream);
        assert_eq!(body_plan(true, true, None, 100), Empty);
        assert_eq!(body_plan(true, false, Some(100), 100), Buffer);
        assert_eq!(body_plan(true, false, Some(101), 100), Stream);
        // Chunked: the size is unknown until it has all arrived.
        assert_eq!(body_plan(true, false, None, 100), Stream);
    }

    #[test]
    fn backoff_never_passes_the_deadline() {
        let ms = Duration::from_millis;
        assert_eq!(backoff_within(ms(200), None), ms(200));
        assert_eq!(backoff_within(ms(200), Some(ms(50))), ms(50));
        assert_eq!(
            backoff_within(ms(200), Some(Duration::ZERO)),
            Duration::ZERO
        );
        assert_eq!(backoff_within(ms(10), Some(ms(50))), ms(10));
    }
}
