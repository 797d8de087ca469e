//! The payment state machine: the normalized states and the one rule that
//! decides whether an observation may move a payment. Pure code: no I/O, no
//! clock. `docs/states.md` is the same table in prose.

use serde::{Deserialize, Serialize};

/// A payment's normalized state, the same for every provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Known to the provider, not decided yet.
    Pending,
    /// Waiting on someone outside the provider: the payer (3-D Secure
    /// redirect) or the merchant (ConnPay's transfer-fee choice).
    ActionRequired,
    /// Funds are held and wait for a capture or a release.
    Authorized,
    /// The money moved. Final, but may still be reversed or settle.
    Succeeded,
    /// Succeeded and settled (connectFi ACH `Settled`). Final, may be returned.
    Settled,
    /// Declined, filtered or errored. Final for good.
    Failed,
    /// The money went back: reversal, chargeback, return or release. Final for good.
    Reversed,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Pending,
        State::ActionRequired,
        State::Authorized,
        State::Succeeded,
        State::Settled,
        State::Failed,
        State::Reversed,
    ];

    /// Whether the provider considers the payment decided.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::Settled | State::Failed | State::Reversed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::ActionRequired => "action_required",
            State::Authorized => "authorized",
            State::Succeeded => "succeeded",
            State::Settled => "settled",
            State::Failed => "failed",
            State::Reversed => "reversed",
        }
    }

    /// Progress order. Every allowed transition strictly raises it, which is
    /// what makes "never backwards" and "no cycles" true by construction.
    pub fn rank(self) -> u8 {
        match self {
            State::Pending => 0,
            State::ActionRequired => 1,
            State::Authorized => 2,
            State::Succeeded | State::Failed => 3,
            State::Settled => 4,
            State::Reversed => 5,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown state `{s}`"))
    }
}

/// What an observation does to a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The payment moves to the observed state.
    Advance,
    /// The payment is already there: a repeat changes nothing.
    Same,
    /// The observation is older news than the payment's state (a late
    /// PROCESSING after APPROVED). Kept in the history, changes nothing.
    Backwards,
    /// The payment is final and this is not one of the documented later
    /// transitions. Kept in the history, changes nothing.
    FinalLocked,
    /// A callback claims a move on fields the provider did not sign
    /// (ConnPay's `type`). Kept in the history, changes nothing; a status
    /// inquiry decides. Never returned by [`decide`].
    Unconfirmed,
    /// The provider reports an amount or currency other than the tracked
    /// one for a move that says money was taken. Kept in the history,
    /// changes nothing, alerted. Never returned by [`decide`].
    AmountMismatch,
}

/// Decides whether a payment in `from` may move to the observed `to`.
///
/// The only moves out of a final state are the documented later ones:
/// succeeded → settled, succeeded → reversed and settled → reversed
/// (reversal, chargeback, ACH return).
pub fn decide(from: State, to: State) -> Decision {
    use State::*;
    if from == to {
        return Decision::Same;
    }
    match (from, to) {
        (Succeeded, Settled | Reversed) | (Settled, Reversed) => Decision::Advance,
        (Succeeded | Settled | Failed | Reversed, _) if to.rank() > from.rank() => {
            Decision::FinalLocked
        }
        (Succeeded | Settled | Failed | Reversed, _) => {
            if to.is_final() {
                Decision::FinalLocked
            } else {
                Decision::Backwards
            }
        }
        // In flight: any move that makes progress is allowed.
        _ if to.rank() > from.rank() => Decision::Advance,
        _ => Decision::Backwards,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    /// The transition table of docs/states.md, written out by hand so the
    /// test does not re-derive the code it checks. A = advance, S = same,
    /// B = backwards, F = final locked.
    const TABLE: [(State, [char; 7]); 7] = [
        //                 pend act  auth succ sett fail rev
        (Pending, ['S', 'A', 'A', 'A', 'A', 'A', 'A']),
        (ActionRequired, ['B', 'S', 'A', 'A', 'A', 'A', 'A']),
        (Authorized, ['B', 'B', 'S', 'A', 'A', 'A', 'A']),
        (Succeeded, ['B', 'B', 'B', 'S', 'A', 'F', 'A']),
        (Settled, ['B', 'B', 'B', 'F', 'S', 'F', 'A']),
        (Failed, ['B', 'B', 'B', 'F', 'F', 'S', 'F']),
        (Reversed, ['B', 'B', 'B', 'F', 'F', 'F', 'S']),
    ];

    fn code(d: Decision) -> char {
        match d {
            Decision::Advance => 'A',
            Decision::Same => 'S',
            Decision::Backwards => 'B',
            Decision::FinalLocked => 'F',
            Decision::Unconfirmed | Decision::AmountMismatch => '?',
        }
    }

    #[test]
    fn every_pair_matches_the_documented_table() {
        for (from, row) in TABLE {
            for (to, want) in State::ALL.into_iter().zip(row) {
                assert_eq!(code(decide(from, to)), want, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn every_advance_raises_the_rank() {
        for from in State::ALL {
            for to in State::ALL {
                if decide(from, to) == Decision::Advance {
                    assert!(to.rank() > from.rank(), "{from} -> {to}");
                }
            }
        }
    }

    #[test]
    fn final_states_leave_only_by_documented_transitions() {
        let allowed = [
            (Succeeded, Settled),
            (Succeeded, Reversed),
            (Settled, Reversed),
        ];
        for from in State::ALL.into_iter().filter(|s| s.is_final()) {
            for to in State::ALL {
                let advances = decide(from, to) == Decision::Advance;
                assert_eq!(advances, allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    fn step(cur: State, obs: State) -> State {
        match decide(cur, obs) {
            Decision::Advance => obs,
            _ => cur,
        }
    }

    /// Folds a sequence of observations the way the store applies them.
    fn fold(seq: &[State]) -> State {
        seq.iter().fold(Pending, |cur, &obs| step(cur, obs))
    }

    #[test]
    fn repeats_change_nothing_and_rank_never_falls() {
        for a in State::ALL {
            for b in State::ALL {
                for c in State::ALL {
                    let seq = [a, b, c];
                    assert_eq!(fold(&seq), fold(&[a, a, b, b, c, c]), "{seq:?}");
                    let mut cur = Pending;
                    for s in seq {
                        let next = step(cur, s);
                        assert!(next.rank() >= cur.rank(), "{seq:?}");
                        cur = next;
                    }
                }
            }
        }
    }

    #[test]
    fn late_processing_after_approval_is_kept_out() {
        assert_eq!(decide(Succeeded, Pending), Decision::Backwards);
        assert_eq!(fold(&[Succeeded, Pending, ActionRequired]), Succeeded);
        assert_eq!(fold(&[Succeeded, Reversed, Succeeded]), Reversed);
        assert_eq!(fold(&[Succeeded, Settled, Reversed]), Reversed);
        assert_eq!(fold(&[Failed, Succeeded]), Failed);
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("approved".parse::<State>().is_err());
    }
}
