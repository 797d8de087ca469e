//! A provider's request budget: at most `rate` status inquiries per second,
//! shared by everything that asks (polls, sweeps, action confirmations).
//! Each caller reserves the next free slot and sleeps until it; callers are
//! served in arrival order and nobody holds a lock while waiting.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Pacer {
    gap: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    /// `rate` requests per second (> 0).
    pub fn new(rate: f64) -> Pacer {
        Pacer {
            gap: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Resolves at this caller's slot.
    pub async fn wait(&self) {
        let at = {
            let mut next = crate::sync::lock(&self.next);
            let at = (*next).max(Instant::now());
            *next = at + self.gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_callers_by_the_rate() {
        let p = std::sync::Arc::new(Pacer::new(10.0));
        let start = Instant::now();
        let mut tasks = vec![];
        for _ in 0..5 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                p.wait().await;
                Instant::now()
            }));
        }
        let mut at = vec![];
        for t in tasks {
            at.push(t.await.unwrap() - start);
        }
        at.sort();
        let ms: Vec<u128> = at.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 100, 200, 300, 400]);
        // An idle pacer does not bank slots: the next caller goes at once.
        tokio::time::advance(Duration::from_secs(5)).await;
        let t = Instant::now();
        p.wait().await;
        assert_eq!(Instant::now(), t);
    }
}
