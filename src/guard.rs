//! Panic containment for units of background work: one poll, one sweep
//! inquiry, one action, one notification delivery. A panic in one unit is
//! caught at its edge, logged with an `alert`, and turned into an error the
//! loop handles (retry or park); the loop itself goes on.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A future that turns a panic while polling `inner` into `Err(message)`.
pub struct CatchPanic<F> {
    inner: Pin<Box<F>>,
}

/// Runs `fut`, catching a panic in it. Nothing of the unit is shared
/// across the unwind except through the store and the engine's locks,
/// which take a poisoned lock as it is (crate::sync), so asserting
/// unwind-safety is sound here.
pub fn catch<F: Future>(fut: F) -> CatchPanic<F> {
    CatchPanic {
        inner: Box::pin(fut),
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(message(&*payload))),
        }
    }
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a
/// `String`).
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".into()
    }
}

/// Routes panic reports through tracing (one JSON line with
/// `alert=panic`) instead of the default hook's plain stderr text. The
/// location says where; the unit's own alert says what was affected.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            alert = "panic",
            location = %location,
            error = %message(info.payload()),
            "a unit of work panicked; it is retried or parked"
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_and_a_value_passes_through() {
        assert_eq!(catch(async { 7 }).await, Ok(7));
        let r = catch(async {
            tokio::task::yield_now().await;
            let v: Vec<u8> = vec![];
            #[allow(clippy::useless_vec)]
            v[3]
        })
        .await;
        assert!(r.unwrap_err().contains("index out of bounds"));
        let r = catch(async { panic!("{}", String::from("owned")) }).await;
        assert_eq!(r, Err::<(), _>("owned".into()));
    }
}
