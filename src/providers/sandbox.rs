//! What every provider sandbox (`providers/<name>/sim.rs`) shares: the
//! fault knobs applied before a request is read.

use std::time::Duration;

/// The fault knobs every sandbox shares, applied before a request is read.
#[derive(Debug, Clone, Default)]
pub struct CommonFaults {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Share of requests answered 5xx before anything is applied.
    pub error_rate: f64,
    /// Share of requests whose connection is closed before anything is applied.
    pub drop_rate: f64,
}

/// What the shared knobs decide for one request.
pub enum Fault {
    None,
    Error,
    Drop,
}

impl CommonFaults {
    /// Sleeps the latency, then draws the error and drop rates.
    pub async fn apply(&self) -> Fault {
        if self.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.latency_ms)).await;
        }
        if fastrand::f64() < self.drop_rate {
            Fault::Drop
        } else if fastrand::f64() < self.error_rate {
            Fault::Error
        } else {
            Fault::None
        }
    }
}
