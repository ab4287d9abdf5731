//! Local rate limiting: token buckets per route (or per virtual host), optionally keyed.
//!
//! The lock is per limiter (one route's), never global; keyed limiters keep at most
//! `MAX_KEYS` buckets and drop full ones first when that is reached.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderName;

use tern_config as config;

use crate::message::Fields;

const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
enum Key {
    Route,
    Header(HeaderName),
    SourceIp,
}

/// A compiled `rate_limit` block.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    key: Key,
    buckets: Mutex<HashMap<Vec<u8>, Bucket>>,
}

impl RateLimiter {
    /// Compiles a checked `rate_limit` block.
    pub fn compile(r: &config::RateLimit) -> RateLimiter {
        let unit = match r.unit {
            config::RateUnit::Second => 1.0,
            config::RateUnit::Minute => 60.0,
        };
        let key = match &r.key {
            Some(k) if k.source_ip => Key::SourceIp,
            Some(k) => k
                .header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .map_or(Key::Route, Key::Header),
            None => Key::Route,
        };
        RateLimiter {
            per_sec: r.requests_per_unit.value as f64 / unit,
            burst: r
                .burst
                .as_ref()
                .map_or(r.requests_per_unit.value, |b| b.value) as f64,
            key,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for this request, or returns how long until one is available.
    pub fn check(&self, headers: &Fields, peer: IpAddr) -> Result<(), Duration> {
        let key: Vec<u8> = match &self.key {
            Key::Route => Vec::new(),
            Key::Header(h) => headers
                .get(h)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
            Key::SourceIp => peer.to_string().into_bytes(),
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            let (rate, burst) = (self.per_sec, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.last).as_secs_f64() * self.per_sec).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_with_wait() {
        let r: config::RateLimit =
            serde_saphyr::from_str("requests_per_unit: 1\nunit: minute\nburst: 3\n").unwrap();
        let l = RateLimiter::compile(&r);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(&Fields::new(), ip).is_ok());
        }
        let wait = l.check(&Fields::new(), ip).unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
    }

    #[test]
    fn keyed_buckets_are_separate() {
        let r: config::RateLimit = serde_saphyr::from_str(
            "requests_per_unit: 1\nunit: minute\nkey: { header: x-api-key }\n",
        )
        .unwrap();
        let l = RateLimiter::compile(&r);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut a = Fields::new();
        a.insert("x-api-key", "a".parse().unwrap());
        let mut b = Fields::new();
        b.insert("x-api-key", "b".parse().unwrap());
        assert!(l.check(&a, ip).is_ok());
        assert!(l.check(&a, ip).is_err());
        assert!(l.check(&b, ip).is_ok());
    }
}
