//! Counters for logs, metrics and benchmarks: callbacks, polls by outcome,
//! and the poll lag histogram.

use super::*;

/// Counters for logs, metrics and benchmarks.
#[derive(Default, Debug)]
pub struct Counters {
    pub callbacks_received: AtomicU64,
    pub callbacks_rejected: AtomicU64,
    pub callbacks_duplicate: AtomicU64,
    pub callbacks_orphaned: AtomicU64,
    /// Callbacks refused because too many orphans wait (503).
    pub orphans_refused: AtomicU64,
    pub orphans_expired: AtomicU64,
    /// Polls per provider (indexed by [`ProviderId::index`]) and outcome
    /// (indexed by [`PollOutcome`]); [`Counters::polls`] sums providers.
    pub polls_by_provider: [[AtomicU64; 3]; ProviderId::COUNT],
    pub sweeps: AtomicU64,
    pub drift: AtomicU64,
    pub stale: AtomicU64,
    pub notices_delivered: AtomicU64,
    pub notices_failed: AtomicU64,
    pub transitions: AtomicU64,
    /// Polls left to another instance, which held the window's lease.
    pub windows_leased_elsewhere: AtomicU64,
    /// Windows no instance held (new, or their instance died) claimed here.
    pub windows_taken_over: AtomicU64,
    /// Poll schedule lag: start of the inquiry minus its due time.
    pub poll_lag: LagHistogram,
}

/// How a poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    Ok = 0,
    Failed = 1,
    /// Not sent: the provider's circuit was open.
    Skipped = 2,
}

impl PollOutcome {
    pub const ALL: [PollOutcome; 3] = [PollOutcome::Ok, PollOutcome::Failed, PollOutcome::Skipped];

    pub fn as_str(self) -> &'static str {
        match self {
            PollOutcome::Ok => "ok",
            PollOutcome::Failed => "failed",
            PollOutcome::Skipped => "skipped",
        }
    }
}

impl Counters {
    pub(super) fn count_poll(&self, pid: ProviderId, outcome: PollOutcome) {
        self.polls_by_provider[pid.index()][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Polls of one provider that ended so.
    pub fn polls_of(&self, pid: ProviderId, outcome: PollOutcome) -> u64 {
        self.polls_by_provider[pid.index()][outcome as usize].load(Ordering::Relaxed)
    }

    /// Polls of every provider that ended so.
    pub fn polls(&self, outcome: PollOutcome) -> u64 {
        self.polls_by_provider
            .iter()
            .map(|p| p[outcome as usize].load(Ordering::Relaxed))
            .sum()
    }
}

/// A lock-free histogram of durations in microseconds: four buckets per
/// power of two (±10%), enough for percentiles in logs and benchmarks.
#[derive(Debug)]
pub struct LagHistogram {
    buckets: [AtomicU64; LagHistogram::BUCKETS],
    max_us: AtomicU64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max_us: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    /// Up to 2^40 µs (about 12 days) in quarter powers of two.
    const BUCKETS: usize = 160;

    /// Exact below 8 µs; above, four buckets per power of two.
    pub(super) fn index(us: u64) -> usize {
        if us < 8 {
            return us as usize;
        }
        let log2 = 63 - us.leading_zeros() as usize; // >= 3
        let quarter = ((us >> (log2 - 2)) & 3) as usize;
        (8 + (log2 - 3) * 4 + quarter).min(Self::BUCKETS - 1)
    }

    /// The smallest value that falls in bucket `i`.
    pub(super) fn lower(i: usize) -> u64 {
        if i < 8 {
            return i as u64;
        }
        let log2 = 3 + (i - 8) / 4;
        let quarter = ((i - 8) % 4) as u64;
        (1u64 << log2) + quarter * (1u64 << (log2 - 2))
    }

    pub fn record(&self, us: u64) {
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0..=1), to the bucket's lower bound.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::lower(i).min(self.max_us());
            }
        }
        self.max_us()
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.max_us.store(0, Ordering::Relaxed);
    }
}

/// The engine's side of `/metrics` (rendered in src/metrics.rs).
mod prom {
    use std::time::Duration;

    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

    use crate::model::ProviderId;
    use crate::state::State;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    pub(crate) struct ByProvider {
        pub(crate) provider: &'static str,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    pub(crate) struct ProviderCall {
        provider: &'static str,
        call: &'static str,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    pub(crate) struct Transition {
        provider: &'static str,
        to: &'static str,
    }

    /// What became of a callback.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CallbackOutcome {
        /// Verified and recorded (a state change or not).
        Applied,
        /// Forged or malformed; nothing stored.
        Rejected,
        /// Seen before; acknowledged, nothing written.
        Duplicate,
        /// Kept until its payment is tracked.
        Orphaned,
        /// Refused for now (503): the store said no.
        Refused,
    }

    /// A provider call, for `payrecon_provider_request_seconds{call}`.
    #[derive(Debug, Clone, Copy)]
    pub enum Call {
        /// A status inquiry (poll, sweep, claim check, action settlement).
        Inquiry,
        /// An outbound action.
        Action,
    }

    fn seconds(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    /// Histograms, and the counters that carry a `provider` label, kept for
    /// the process's life. Cheap to update: one atomic add per bucket hit.
    #[derive(Debug)]
    pub struct Metrics {
        pub(crate) provider_request: Family<ProviderCall, Histogram>,
        pub(crate) callback: Family<ByProvider, Histogram>,
        pub(crate) delivery: Histogram,
        pub(crate) sweep: Family<ByProvider, Histogram>,
        pub(crate) poll_lag: Histogram,
        pub(crate) callbacks_received: Family<ByProvider, Counter>,
        pub(crate) callbacks_rejected: Family<ByProvider, Counter>,
        pub(crate) callbacks_duplicate: Family<ByProvider, Counter>,
        pub(crate) callbacks_orphaned: Family<ByProvider, Counter>,
        pub(crate) transitions: Family<Transition, Counter>,
        pub(crate) sweeps: Family<ByProvider, Counter>,
        pub(crate) drift: Family<ByProvider, Counter>,
        pub(crate) last_sweep: Family<ByProvider, Gauge<f64, std::sync::atomic::AtomicU64>>,
    }

    /// 5 ms to 41 s: provider calls and notification deliveries, whose
    /// timeouts are seconds.
    fn request_buckets() -> Histogram {
        Histogram::new(exponential_buckets(0.005, 2.0, 14))
    }

    /// 0.25 ms to 4 s: a callback's verification and durable commit.
    fn callback_buckets() -> Histogram {
        Histogram::new(exponential_buckets(0.00025, 2.0, 15))
    }

    /// 0.5 s to 68 min: a whole sweep.
    fn sweep_buckets() -> Histogram {
        Histogram::new(exponential_buckets(0.5, 2.0, 14))
    }

    /// 1 ms to 16 s: how late a poll starts.
    fn lag_buckets() -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 15))
    }

    impl Default for Metrics {
        fn default() -> Self {
            Metrics {
                provider_request: Family::new_with_constructor(request_buckets),
                callback: Family::new_with_constructor(callback_buckets),
                delivery: request_buckets(),
                sweep: Family::new_with_constructor(sweep_buckets),
                poll_lag: lag_buckets(),
                callbacks_received: Family::default(),
                callbacks_rejected: Family::default(),
                callbacks_duplicate: Family::default(),
                callbacks_orphaned: Family::default(),
                transitions: Family::default(),
                sweeps: Family::default(),
                drift: Family::default(),
                last_sweep: Family::default(),
            }
        }
    }

    impl Metrics {
        pub fn provider_call(&self, pid: ProviderId, call: Call, took: Duration) {
            let call = match call {
                Call::Inquiry => "inquiry",
                Call::Action => "action",
            };
            self.provider_request
                .get_or_create(&ProviderCall {
                    provider: pid.as_str(),
                    call,
                })
                .observe(seconds(took));
        }

        /// A callback handled: how long verification and commit took.
        pub fn callback(&self, pid: ProviderId, outcome: CallbackOutcome, took: Duration) {
            let p = ByProvider {
                provider: pid.as_str(),
            };
            self.callback.get_or_create(&p).observe(seconds(took));
            self.callbacks_received.get_or_create(&p).inc();
            let also = match outcome {
                CallbackOutcome::Applied | CallbackOutcome::Refused => None,
                CallbackOutcome::Rejected => Some(&self.callbacks_rejected),
                CallbackOutcome::Duplicate => Some(&self.callbacks_duplicate),
                CallbackOutcome::Orphaned => Some(&self.callbacks_orphaned),
            };
            if let Some(family) = also {
                family.get_or_create(&p).inc();
            }
        }

        pub fn delivery(&self, took: Duration) {
            self.delivery.observe(seconds(took));
        }

        pub fn transition(&self, pid: ProviderId, to: State) {
            self.transitions
                .get_or_create(&Transition {
                    provider: pid.as_str(),
                    to: to.as_str(),
                })
                .inc();
        }

        pub fn sweep_started(&self, pid: ProviderId) {
            self.sweeps
                .get_or_create(&ByProvider {
                    provider: pid.as_str(),
                })
                .inc();
        }

        /// A sweep that ran to its end: its time, and when it ended.
        pub fn sweep_done(&self, pid: ProviderId, took: Duration, now_ms: u64) {
            let p = ByProvider {
                provider: pid.as_str(),
            };
            self.sweep.get_or_create(&p).observe(seconds(took));
            self.last_sweep
                .get_or_create(&p)
                .set(now_ms as f64 / 1000.0);
        }

        pub fn drift(&self, pid: ProviderId) {
            self.drift
                .get_or_create(&ByProvider {
                    provider: pid.as_str(),
                })
                .inc();
        }

        pub fn poll_lag(&self, lag: Duration) {
            self.poll_lag.observe(seconds(lag));
        }
    }
}

pub(crate) use prom::ByProvider;
pub use prom::{Call, CallbackOutcome, Metrics};

#[cfg(test)]
mod tests {
    use super::LagHistogram;

    #[test]
    fn histogram_quantiles_are_within_a_quarter_power_of_two() {
        let h = LagHistogram::default();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max_us(), 10_000);
        for (q, want) in [(0.5, 5_000f64), (0.99, 9_900f64)] {
            let got = h.quantile_us(q) as f64;
            assert!(got <= want && got >= want * 0.75, "q{q}: {got} vs {want}");
        }
        for us in [0u64, 1, 2, 3, 5, 7, 100, 1 << 20, u64::MAX / 2] {
            let i = LagHistogram::index(us);
            assert!(LagHistogram::lower(i) <= us, "{us}");
        }
        h.reset();
        assert_eq!(h.quantile_us(0.5), 0);
    }
}
