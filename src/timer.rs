//! The process clock, and lazy deadlines for one HTTP/1 connection.
//!
//! [`now_ms`] is a monotonic millisecond clock that fits an atomic: ejection deadlines and the
//! last request of a connection are stored as its values.
//!
//! An HTTP/1 request's header-read and route timeouts almost never fire, yet a timer-wheel entry
//! for each (insert, then remove) is about 7 % of a proxied request's user-space instructions.
//! Here a deadline is a plain instant that is checked whenever its task polls it; it records
//! itself in the connection's [`LazyTimer`], and the connection task keeps one real timer (an
//! [`Alarm`]) armed no later than the earliest deadline recorded. When the alarm fires the task
//! polls the connection, so every deadline still waiting is checked and records itself again.
//!
//! This only works for futures polled by the connection's own task: the HTTP/1 engine
//! ([`crate::http1::server`]) polls its request's service future there; HTTP/2 streams run as
//! tasks of their own and use tokio's timers. A future using a connection's [`LazyTimer`] must never be spawned: its deadline
//! would be recorded, but nothing would poll it when the alarm goes off.
//!
//! Deadlines are checked against the real clock (`std::time::Instant`), so they do not follow
//! `tokio::time::pause()`; the alarm would keep waking the task until real time catches up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Milliseconds since the first call (monotonic, never 0: 0 can mean "unset").
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] for an instant already read (saves a clock read on the request path).
pub fn ms_at(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    t.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
        + 1
}

/// No deadline recorded.
const NONE: u64 = u64::MAX;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds after the epoch, rounded up: an alarm set for it fires no earlier than `t`.
fn ceil_ms(t: Instant) -> u64 {
    let d = t.saturating_duration_since(epoch());
    d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
}

fn at_ms(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + Duration::from_millis(ms))
}

/// The earliest deadline that a connection's pending futures wait for.
#[derive(Debug, Clone)]
pub struct LazyTimer(Arc<AtomicU64>);

impl Default for LazyTimer {
    fn default() -> LazyTimer {
        LazyTimer(Arc::new(AtomicU64::new(NONE)))
    }
}

impl LazyTimer {
    fn want(&self, ms: u64) {
        self.0.fetch_min(ms, Relaxed);
    }

    /// A future that resolves once `deadline` has passed.
    pub fn sleep_until(&self, deadline: Instant) -> LazySleep {
        LazySleep {
            deadline,
            ms: ceil_ms(deadline),
            timer: self.clone(),
            recorded: false,
            ahead: false,
        }
    }

    /// [`Self::sleep_until`] for a deadline counted from `now`, a clock reading just taken: if
    /// `deadline` is after it, the first poll records the deadline without reading the clock
    /// again. (Should that poll come late, past the deadline, the alarm, armed for a time
    /// already gone, wakes the task at once, and the next poll sees it.)
    pub fn sleep_until_from(&self, deadline: Instant, now: Instant) -> LazySleep {
        LazySleep {
            ahead: deadline > now,
            ..self.sleep_until(deadline)
        }
    }
}

/// Resolves once its deadline has passed, as seen when its task polls it.
#[derive(Debug)]
pub struct LazySleep {
    deadline: Instant,
    ms: u64,
    timer: LazyTimer,
    recorded: bool,
    /// Known not to have passed when made: the first poll need not read the clock.
    ahead: bool,
}

impl Future for LazySleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        // While a deadline no later than this one is recorded, the alarm has not gone off since
        // this one was recorded, so it cannot have passed: no clock read.
        if self.recorded && self.timer.0.load(Relaxed) <= self.ms {
            return Poll::Pending;
        }
        if !std::mem::take(&mut self.ahead) && Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        // No waker: the connection's alarm wakes the task by this time.
        self.timer.want(self.ms);
        self.recorded = true;
        Poll::Pending
    }
}

impl hyper::rt::Sleep for LazySleep {}

impl hyper::rt::Timer for LazyTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazyTimer::sleep_until(self, deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        *sleep = hyper::rt::Timer::sleep_until(self, new_deadline);
    }
}

/// A [`Timed`] future whose deadline passed.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// When a [`Timed`] future gives up.
#[derive(Debug)]
pub enum Deadline {
    /// Never.
    None,
    /// At a lazy deadline (a future polled by an HTTP/1 connection's task).
    Lazy(LazySleep),
    /// At a tokio timer (any other task).
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl Deadline {
    /// A deadline at `at`: lazy when `lazy` (the connection's timer) is given, else tokio's.
    pub fn at(at: Instant, lazy: Option<&LazyTimer>) -> Deadline {
        match lazy {
            Some(l) => Deadline::Lazy(l.sleep_until(at)),
            None => Deadline::Tokio(Box::pin(tokio::time::sleep_until(at.into()))),
        }
    }

    /// [`Self::at`] for a deadline counted from `now`, a clock reading just taken (a lazy one's
    /// first poll then reads no clock: [`LazyTimer::sleep_until_from`]).
    pub fn at_from(at: Instant, now: Instant, lazy: Option<&LazyTimer>) -> Deadline {
        match lazy {
            Some(l) => Deadline::Lazy(l.sleep_until_from(at, now)),
            None => Deadline::Tokio(Box::pin(tokio::time::sleep_until(at.into()))),
        }
    }

    /// Whether it has passed (registering `cx` to be woken when it does).
    pub fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Deadline::None => false,
            Deadline::Lazy(s) => Pin::new(s).poll(cx).is_ready(),
            Deadline::Tokio(s) => s.as_mut().poll(cx).is_ready(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A future bounded by a [`Deadline`]; one type for every kind, so a caller's future holds
    /// one slot for it rather than one per kind.
    #[derive(Debug)]
    pub struct Timed<F> {
        #[pin]
        inner: F,
        deadline: Deadline,
    }
}

impl<F> Timed<F> {
    /// `inner`, or [`Elapsed`] once `deadline` has passed.
    pub fn new(inner: F, deadline: Deadline) -> Timed<F> {
        Timed { inner, deadline }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.inner.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if this.deadline.poll_passed(cx) {
            Poll::Ready(Err(Elapsed))
        } else {
            Poll::Pending
        }
    }
}

/// The connection task's one real timer, armed no later than the earliest recorded deadline.
#[derive(Debug)]
pub struct Alarm {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: u64,
}

impl Default for Alarm {
    fn default() -> Alarm {
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(at_ms(0))),
            armed: NONE,
        }
    }
}

impl Alarm {
    /// Call after polling the connection: moves the alarm earlier when an earlier deadline was
    /// recorded, registering it with `cx`.
    pub fn update(&mut self, timer: &LazyTimer, cx: &mut Context<'_>) {
        let want = timer.0.load(Relaxed);
        if want < self.armed {
            self.armed = want;
            self.sleep.as_mut().reset(at_ms(want));
            if self.sleep.as_mut().poll(cx).is_ready() {
                // Already due (no waker was registered): make the task look at it now.
                cx.waker().wake_by_ref();
            }
        }
    }

    /// Whether the alarm went off (polled with the waker it was registered with). Then the
    /// recorded deadlines are cleared: the connection must be polled, and whatever still waits
    /// records its deadline again.
    pub fn fired(&mut self, timer: &LazyTimer, cx: &mut Context<'_>) -> bool {
        if self.armed == NONE || self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.armed = NONE;
        timer.0.store(NONE, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_ms_never_rounds_down() {
        let t = epoch() + Duration::from_micros(1500);
        assert_eq!(ceil_ms(t), 2);
        assert_eq!(ceil_ms(epoch() + Duration::from_millis(3)), 3);
        assert!(at_ms(ceil_ms(t)).into_std() >= t);
    }

    #[test]
    fn a_pending_sleep_records_the_earliest_deadline() {
        let timer = LazyTimer::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let late = Instant::now() + Duration::from_secs(60);
        let early = Instant::now() + Duration::from_secs(30);
        let mut a = timer.sleep_until(late);
        let mut b = timer.sleep_until(early);
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert_eq!(timer.0.load(Relaxed), ceil_ms(late));
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        assert_eq!(timer.0.load(Relaxed), ceil_ms(early));
        let mut past = timer.sleep_until(Instant::now() - Duration::from_millis(1));
        assert!(Pin::new(&mut past).poll(&mut cx).is_ready());
    }

    #[test]
    fn a_sleep_made_ahead_of_its_deadline_records_it_without_the_clock() {
        let timer = LazyTimer::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let now = Instant::now();
        let mut ahead = timer.sleep_until_from(now + Duration::from_secs(30), now);
        assert!(Pin::new(&mut ahead).poll(&mut cx).is_pending());
        assert_eq!(
            timer.0.load(Relaxed),
            ceil_ms(now + Duration::from_secs(30))
        );
        // Made after its deadline: the first poll sees it has passed.
        let past = now - Duration::from_millis(1);
        let mut due = timer.sleep_until_from(past, now);
        assert!(Pin::new(&mut due).poll(&mut cx).is_ready());
        // Polled late (the deadline passed since): recorded first, then seen once the alarm
        // has cleared the record.
        let soon = Instant::now() + Duration::from_millis(2);
        let mut late = timer.sleep_until_from(soon, Instant::now());
        while Instant::now() < soon + Duration::from_millis(1) {
            std::hint::spin_loop();
        }
        assert!(Pin::new(&mut late).poll(&mut cx).is_pending());
        timer.0.store(NONE, Relaxed);
        assert!(Pin::new(&mut late).poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn the_alarm_wakes_the_task_for_a_lazy_timeout() {
        let timer = LazyTimer::default();
        let mut alarm = Alarm::default();
        let sleep = timer.sleep_until(Instant::now() + Duration::from_millis(20));
        let mut t = Box::pin(Timed::new(
            std::future::pending::<()>(),
            Deadline::Lazy(sleep),
        ));
        let r = std::future::poll_fn(|cx| loop {
            if let Poll::Ready(r) = t.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            alarm.update(&timer, cx);
            if !alarm.fired(&timer, cx) {
                return Poll::Pending;
            }
        })
        .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(alarm.armed, NONE);
    }

    #[tokio::test]
    async fn timed_with_a_tokio_deadline_or_none() {
        let sleep = Box::pin(tokio::time::sleep(Duration::from_millis(10)));
        let r = Timed::new(std::future::pending::<()>(), Deadline::Tokio(sleep)).await;
        assert_eq!(r, Err(Elapsed));
        let sleep = Box::pin(tokio::time::sleep(Duration::from_secs(60)));
        assert_eq!(Timed::new(async { 7 }, Deadline::Tokio(sleep)).await, Ok(7));
        assert_eq!(Timed::new(async { 8 }, Deadline::None).await, Ok(8));
    }

    #[tokio::test]
    async fn a_deadline_already_due_when_armed_still_fires() {
        let timer = LazyTimer::default();
        let mut alarm = Alarm::default();
        let mut sleep = Box::pin(timer.sleep_until(Instant::now() + Duration::from_millis(5)));
        let noop = std::task::Waker::noop();
        assert!(sleep
            .as_mut()
            .poll(&mut Context::from_waker(noop))
            .is_pending());
        // The deadline passes between recording and arming.
        let due = Instant::now() + Duration::from_millis(10);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let woken = Arc::new(Flag::default());
        let flag_waker = std::task::Waker::from(woken.clone());
        let done = std::future::poll_fn(|cx| {
            // Wakes are seen through the flag, as the listener does with its signal waker.
            let mut fcx = Context::from_waker(&flag_waker);
            loop {
                if sleep.as_mut().poll(&mut fcx).is_ready() {
                    return Poll::Ready(());
                }
                alarm.update(&timer, &mut fcx);
                if !woken.0.swap(false, Relaxed) {
                    woken.1.register(cx.waker());
                    return Poll::Pending;
                }
                alarm.fired(&timer, &mut fcx);
            }
        });
        tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("the alarm wakes the task for a deadline that was already due");
    }

    #[derive(Default)]
    struct Flag(
        std::sync::atomic::AtomicBool,
        futures_util::task::AtomicWaker,
    );

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Relaxed);
            self.1.wake();
        }
    }
}
