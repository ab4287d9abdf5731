//! A route's `max_stream_duration` (Envoy's `RouteAction.MaxStreamDuration`): the limit on one
//! stream, from the request's start to the response's end, and how a client's `grpc-timeout`
//! sets it, as a pure function of the configuration and the header.
//!
//! Envoy's `ConnectionManagerImpl::ActiveStream::refreshDurationTimeout`: without a
//! `grpc-timeout` header, or without `grpc_timeout_header_max`, the limit is
//! `max_stream_duration` (0: none). With both, it is the header's value, capped at
//! `grpc_timeout_header_max` unless that is 0, less `grpc_timeout_header_offset` (an offset as
//! long as the timeout leaves no time at all).

use std::time::Duration;

use tern_config as config;

/// A compiled `max_stream_duration` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamDuration {
    /// `max_stream_duration` (`None`: unset or 0).
    pub max: Option<Duration>,
    /// `grpc_timeout_header_max` (`Some(ZERO)`: the header without a cap).
    pub header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`.
    pub offset: Option<Duration>,
}

impl StreamDuration {
    /// Compiles a checked block.
    pub fn compile(m: &config::MaxStreamDuration) -> StreamDuration {
        StreamDuration {
            max: m
                .max_stream_duration
                .as_ref()
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
            header_max: m.grpc_timeout_header_max.as_ref().map(|d| d.0),
            offset: m.grpc_timeout_header_offset.as_ref().map(|d| d.0),
        }
    }

    /// The stream's limit for a request whose valid `grpc-timeout` is `header` (`None`: no
    /// header, or one that did not parse); `None` is no limit.
    pub fn limit(&self, header: Option<Duration>) -> Option<Duration> {
        let (Some(mut t), Some(cap)) = (header, self.header_max) else {
            return self.max;
        };
        if !cap.is_zero() && t > cap {
            t = cap;
        }
        if let Some(off) = self.offset.filter(|_| !t.is_zero()) {
            t = t.saturating_sub(off);
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sd(max: Option<u64>, header_max: Option<u64>, offset: Option<u64>) -> StreamDuration {
        StreamDuration {
            max: max.map(ms).filter(|d| !d.is_zero()),
            header_max: header_max.map(ms),
            offset: offset.map(ms),
        }
    }

    #[test]
    fn without_header_max_the_header_is_not_used() {
        let s = sd(Some(500), None, None);
        assert_eq!(s.limit(None), Some(ms(500)));
        assert_eq!(s.limit(Some(ms(100))), Some(ms(500)));
        assert_eq!(sd(None, None, Some(50)).limit(Some(ms(100))), None);
        assert_eq!(sd(Some(0), None, None).limit(None), None, "0 is no limit");
    }

    #[test]
    fn the_header_is_capped_at_header_max() {
        let s = sd(Some(9000), Some(1000), None);
        assert_eq!(s.limit(Some(ms(300))), Some(ms(300)));
        assert_eq!(s.limit(Some(ms(5000))), Some(ms(1000)));
        // No header: max_stream_duration applies.
        assert_eq!(s.limit(None), Some(ms(9000)));
        assert_eq!(sd(None, Some(1000), None).limit(None), None);
    }

    #[test]
    fn header_max_zero_takes_the_header_as_it_is() {
        let s = sd(None, Some(0), None);
        assert_eq!(s.limit(Some(ms(300_000))), Some(ms(300_000)));
        assert_eq!(s.limit(None), None);
    }

    #[test]
    fn the_offset_comes_off_after_the_cap() {
        let s = sd(None, Some(1000), Some(100));
        assert_eq!(s.limit(Some(ms(300))), Some(ms(200)));
        assert_eq!(s.limit(Some(ms(5000))), Some(ms(900)));
        // An offset as long as the timeout leaves none: the deadline has passed.
        assert_eq!(s.limit(Some(ms(100))), Some(Duration::ZERO));
        assert_eq!(s.limit(Some(ms(40))), Some(Duration::ZERO));
        // A zero header is a deadline already passed; the offset does not apply.
        assert_eq!(s.limit(Some(Duration::ZERO)), Some(Duration::ZERO));
    }
}
