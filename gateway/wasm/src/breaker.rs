//! A per-plugin circuit breaker. A plugin that keeps failing (a loop that
//! hits its deadline on every request, say) would otherwise take its whole
//! deadline from a worker on every request, and slow every other route on
//! that worker. After `THRESHOLD` failures within `WINDOW`, the plugin is
//! not called for `COOL_DOWN`: its streams get its fail policy at once.
//! Then one call probes it: success closes the circuit, failure opens it
//! again.
//!
//! Shared by every worker thread through the `Plugin`; atomics only, and a
//! closed circuit costs one load per call.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const THRESHOLD: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(10);
pub const COOL_DOWN: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Breaker {
    /// Failures counted since `window_start_ms`.
    failures: AtomicU32,
    window_start_ms: AtomicU64,
    /// While set (non-zero), calls are refused until this time.
    open_until_ms: AtomicU64,
    /// A probe call is on its way after the cool-down.
    probing: AtomicBool,
}

/// What a failure did to the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    No,
    /// It opened: the plugin is not called for the cool-down.
    Opened,
}

/// Milliseconds since the first use, for the breaker's clock (non-zero).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Breaker {
    /// Whether a call may go to the plugin now (`now()`, read only when
    /// the circuit is open: a clock read costs more than a small call's
    /// bookkeeping, and the circuit is almost always closed): the circuit
    /// is closed, or its cool-down is over and no other probe is running.
    pub fn allow(&self, now: impl FnOnce() -> u64) -> bool {
        let open_until = self.open_until_ms.load(Ordering::Relaxed);
        if open_until == 0 {
            return true;
        }
        now() >= open_until && !self.probing.swap(true, Ordering::AcqRel)
    }

    /// A call succeeded: a probe closes the circuit. Whether it did.
    pub fn success(&self) -> bool {
        if self.open_until_ms.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.open_until_ms.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.probing.store(false, Ordering::Release);
        true
    }

    /// A call failed at `now`.
    pub fn failure(&self, now: u64) -> Tripped {
        let cool_down = COOL_DOWN.as_millis() as u64;
        if self.probing.swap(false, Ordering::AcqRel) {
            self.open_until_ms.store(now + cool_down, Ordering::Relaxed);
            return Tripped::Opened;
        }
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) > WINDOW.as_millis() as u64 {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= THRESHOLD && self.open_until_ms.load(Ordering::Relaxed) == 0 {
            self.open_until_ms.store(now + cool_down, Ordering::Relaxed);
            return Tripped::Opened;
        }
        Tripped::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: u64 = COOL_DOWN.as_millis() as u64;

    #[test]
    fn opens_after_threshold_failures_in_the_window_and_refuses_calls() {
        let b = Breaker::default();
        for i in 1..THRESHOLD {
            assert_eq!(b.failure(1000 + u64::from(i)), Tripped::No);
            assert!(b.allow(|| 1000 + u64::from(i)));
        }
        assert_eq!(b.failure(1100), Tripped::Opened);
        assert!(!b.allow(|| 1101));
        assert!(!b.allow(|| 1100 + COOL - 1));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_open_it() {
        let b = Breaker::default();
        let gap = WINDOW.as_millis() as u64 / 2 + 1;
        for i in 0..(3 * THRESHOLD) {
            assert_eq!(
                b.failure(1 + u64::from(i) * gap),
                Tripped::No,
                "failure {i}"
            );
        }
    }

    #[test]
    fn after_the_cool_down_one_probe_decides() {
        let b = Breaker::default();
        for i in 0..THRESHOLD {
            b.failure(10 + u64::from(i));
        }
        let after = 14 + COOL;
        assert!(b.allow(|| after), "the probe goes through");
        assert!(!b.allow(|| after), "only one probe at a time");
        // The probe fails: open again for a whole cool-down.
        assert_eq!(b.failure(after + 1), Tripped::Opened);
        assert!(!b.allow(|| after + 2));
        // The next probe succeeds: closed, calls flow.
        assert!(b.allow(|| after + 1 + COOL));
        assert!(b.success());
        assert!(b.allow(|| after + 2 + COOL));
        assert!(b.allow(|| after + 3 + COOL));
        assert!(!b.success(), "nothing to close");
    }
}
