//! Waiting for a condition by polling with a deadline, never with a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Generous deadline for readiness and reload waits: a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `f` every [`POLL`] until it returns `Some`, or panics after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_within(DEADLINE, what, f).await
}

/// [`wait_for`] with another deadline: for work that is heavy by design (a 100,000-route load in
/// a debug build on a shared machine), where [`DEADLINE`] could be missed under load.
pub async fn wait_for_within<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Blocking: polls `f` every [`POLL`] until it is true; panics with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_until_within(DEADLINE, what, f)
}

/// [`wait_until`] with another deadline.
pub fn wait_until_within(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        pause();
    }
}

/// The pause between two checks of a blocking deadline loop.
pub fn pause() {
    // The one blocking sleep of the kit: always inside a loop that checks a deadline.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(POLL);
}
