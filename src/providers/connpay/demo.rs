//! ConnPay in `payrecon demo`: the transfers the demo tracks, each on a
//! script of its sandbox (settled on a poll or after its window, by
//! callback or not, with redirects, reversals and delayed callbacks). The
//! demo's frame, in `cli/demo`, runs them through polls and callbacks.

use super::sim::{CallbackMode, Outcome, Script, Settle};

/// The scripts the demo's transfers cycle through, with a label for each.
pub fn transfer_scripts() -> Vec<(&'static str, Script)> {
    let s = Script::default;
    vec![
        (
            "approved on the 2nd poll",
            Script {
                settle: Settle::AfterPolls(2),
                ..s()
            },
        ),
        (
            "declined on the 3rd poll",
            Script {
                outcome: Outcome::Declined,
                settle: Settle::AfterPolls(3),
                ..s()
            },
        ),
        (
            "3-D Secure redirect, then approved",
            Script {
                redirect: true,
                settle: Settle::AfterPolls(4),
                ..s()
            },
        ),
        (
            "approved after its window",
            Script {
                settle: Settle::AfterMs(6500),
                ..s()
            },
        ),
        (
            "declined after its window",
            Script {
                outcome: Outcome::Declined,
                settle: Settle::AfterMs(7000),
                ..s()
            },
        ),
        (
            "after its window, callback sent 3 times",
            Script {
                settle: Settle::AfterMs(6000),
                callback: CallbackMode::Duplicate,
                ..s()
            },
        ),
        (
            "after its window, stale callback last",
            Script {
                settle: Settle::AfterMs(5800),
                callback: CallbackMode::OutOfOrder,
                ..s()
            },
        ),
        (
            "approved, then a reversal (unsigned: held)",
            Script {
                settle: Settle::AfterPolls(2),
                reversal: true,
                ..s()
            },
        ),
        (
            "approved, callback never comes",
            Script {
                settle: Settle::AfterPolls(3),
                callback: CallbackMode::Never,
                ..s()
            },
        ),
        (
            "approved, callback 1 s late",
            Script {
                settle: Settle::AfterPolls(2),
                callback_delay_ms: 1000,
                ..s()
            },
        ),
        (
            "after its window, then a reversal (held)",
            Script {
                settle: Settle::AfterMs(6200),
                reversal: true,
                ..s()
            },
        ),
        (
            "approved on the 1st poll",
            Script {
                settle: Settle::AfterPolls(1),
                ..s()
            },
        ),
    ]
}
