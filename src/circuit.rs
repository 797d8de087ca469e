//! One circuit breaker per provider. After `failures` transport errors or
//! 5xx answers in a row the circuit opens: polls, sweeps and actions for
//! that provider pause. After `cool_down` one probe call is let through;
//! its success closes the circuit, its failure opens it again. Other
//! providers are not affected. Times are tokio instants, so tests can
//! pause the clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::ProviderId;

/// What the metrics export: 0 closed, 1 open, 2 half-open (probing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_gauge(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; nothing else goes until it answers, or until
    /// `until` if it never does (a cancelled call).
    HalfOpen {
        until: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    provider: ProviderId,
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<Inner>,
    /// Times the circuit opened.
    pub opened: AtomicU64,
    /// Calls refused while open.
    pub refused: AtomicU64,
}

impl Breaker {
    pub fn new(provider: ProviderId, threshold: u32, cool_down: Duration) -> Breaker {
        Breaker {
            provider,
            threshold: threshold.max(1),
            cool_down,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            opened: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// May a call go to the provider now? While open, no; once the
    /// cool-down is over, exactly one caller gets `true` (the probe).
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => true,
            Inner::Open { until } | Inner::HalfOpen { until } if Instant::now() >= until => {
                *inner = Inner::HalfOpen {
                    until: Instant::now() + self.cool_down,
                };
                tracing::info!(provider = %self.provider, "circuit half-open: sending one probe");
                true
            }
            Inner::Open { .. } | Inner::HalfOpen { .. } => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The provider answered (any answer that is not a 5xx).
    pub fn success(&self) {
        let mut inner = self.lock();
        if !matches!(*inner, Inner::Closed { .. }) {
            tracing::info!(resolves = "circuit_open", provider = %self.provider, "circuit closed: the provider answers again; calls resume");
        }
        *inner = Inner::Closed { failures: 0 };
    }

    /// A transport error, timeout or 5xx.
    pub fn failure(&self) {
        let mut inner = self.lock();
        let open = match *inner {
            Inner::Closed { failures } if failures + 1 >= self.threshold => true,
            Inner::Closed { failures } => {
                *inner = Inner::Closed {
                    failures: failures + 1,
                };
                false
            }
            Inner::HalfOpen { .. } => true,
            // A call that started before the circuit opened.
            Inner::Open { .. } => false,
        };
        if open {
            *inner = Inner::Open {
                until: Instant::now() + self.cool_down,
            };
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                alert = "circuit_open",
                provider = %self.provider,
                failures = self.threshold,
                cool_down_ms = self.cool_down.as_millis() as u64,
                "circuit open: the provider keeps failing; its polls, sweeps and actions pause"
            );
        }
    }

    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_failures_probes_after_the_cool_down() {
        let b = Breaker::new(ProviderId::Connpay, 3, Duration::from_secs(30));
        b.failure();
        b.failure();
        b.success(); // a success resets the count
        b.failure();
        b.failure();
        assert!(b.allow());
        b.failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!b.allow());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow(), "the probe");
        assert!(!b.allow(), "only one probe at a time");
        b.failure();
        assert_eq!(b.state(), CircuitState::Open, "a failed probe reopens");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.allow());
        assert_eq!(b.opened.load(Ordering::Relaxed), 2);
    }
}
