//! Money in reports: the amount and currency a provider states, read into
//! minor units and compared with what was tracked. A payment is never
//! marked as having taken money on evidence that names other money.
//!
//! Providers state amounts in report fields: `amount_minor` (an integer in
//! minor units, ConnPay's inquiry) or `amount` (a decimal in major units,
//! ConnPay's callback), with `currency` when they say it.

pub use crate::model::Mismatch;
use crate::model::{Payment, Report};
use crate::state::State;

/// The largest amount payrecon tracks, in minor units: 10^15 (ten trillion
/// units of a two-decimal currency). Anything larger is a bug or an attack,
/// and stays far from i64 overflow in sums.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// Checks a tracked amount: positive and at most [`MAX_AMOUNT_MINOR`].
pub fn check_tracked(amount_minor: i64) -> Result<(), String> {
    if amount_minor <= 0 {
        return Err(format!("amount_minor must be positive, not {amount_minor}"));
    }
    if amount_minor > MAX_AMOUNT_MINOR {
        return Err(format!(
            "amount_minor {amount_minor} is larger than payrecon tracks ({MAX_AMOUNT_MINOR})"
        ));
    }
    Ok(())
}

/// States that say money was taken or held: only these are refused on a
/// report with a mismatch. A decline or a reversal with another amount is
/// still news (and still recorded as a mismatch).
pub fn takes_money(s: State) -> bool {
    matches!(s, State::Authorized | State::Succeeded | State::Settled)
}

/// The mismatch a report shows against its payment, if any. A report that
/// names no money shows none; an amount that cannot be read is one.
pub fn mismatch(payment: &Payment, report: &Report, at_ms: u64) -> Option<Mismatch> {
    let f = &report.fields;
    let currency = f.get("currency").map(|c| c.trim().to_ascii_uppercase());
    let (text, amount) = if let Some(m) = f.get("amount_minor") {
        (m.clone(), m.trim().parse::<i64>().ok().filter(|v| *v > 0))
    } else if let Some(a) = f.get("amount") {
        let scale = currency_scale(currency.as_deref().or(payment.currency.as_deref()));
        (a.clone(), parse_amount(a.trim(), scale).ok())
    } else if currency.is_none() {
        return None;
    } else {
        (String::new(), None)
    };
    let amount_differs = !text.is_empty()
        && match (amount, payment.amount_minor) {
            (None, _) => true,
            (Some(r), Some(t)) => r != t,
            (Some(_), None) => false,
        };
    let currency_differs = matches!(
        (&currency, &payment.currency),
        (Some(r), Some(t)) if !r.eq_ignore_ascii_case(t)
    );
    if !amount_differs && !currency_differs {
        return None;
    }
    let reported = match &currency {
        Some(c) if !text.is_empty() => format!("{text} {c}"),
        Some(c) => c.clone(),
        None => text,
    };
    Some(Mismatch {
        reported,
        reported_minor: amount,
        reported_currency: currency,
        at_ms,
    })
}

/// Parses a decimal amount into units of 10^-`scale` ("100.5", 3 → 100500).
pub fn parse_amount(s: &str, scale: u32) -> Result<i64, String> {
    let bad = || format!("amount `{s}` is not a positive decimal with at most {scale} decimals");
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > scale as usize
    {
        return Err(bad());
    }
    let int: i64 = int.parse().map_err(|_| bad())?;
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let value = int
        .checked_mul(10i64.pow(scale))
        .and_then(|v| v.checked_add(frac_val * 10i64.pow(scale - frac.len() as u32)))
        .ok_or_else(bad)?;
    if value <= 0 {
        return Err(bad());
    }
    Ok(value)
}

/// Minor-unit exponent of a currency (ISO 4217): 3 for the Gulf dinars
/// and rial MyFatoorah serves, 2 otherwise.
pub fn currency_scale(currency: Option<&str>) -> u32 {
    match currency {
        Some("KWD" | "BHD" | "OMR" | "JOD" | "KD") => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_amount("100", 3), Ok(100_000));
        assert_eq!(parse_amount("100.5", 3), Ok(100_500));
        assert_eq!(parse_amount("0.001", 3), Ok(1));
        assert!(parse_amount("0.0001", 3).is_err());
        assert!(parse_amount("-1", 3).is_err());
        assert!(parse_amount("0", 3).is_err());
        assert!(parse_amount("1e3", 3).is_err());
        assert!(parse_amount(".5", 3).is_err());
    }
    use crate::model::{ProviderId, Source};

    fn payment() -> Payment {
        Payment {
            id: "pay_1".into(),
            provider: ProviderId::Connpay,
            keys: Default::default(),
            amount_minor: Some(1250),
            currency: Some("EUR".into()),
            state: State::Pending,
            raw_status: None,
            created_ms: 0,
            updated_ms: 0,
            final_ms: None,
            final_source: None,
            window: None,
            observations: 0,
            mismatch: None,
        }
    }

    fn report(fields: &[(&str, &str)]) -> Report {
        Report {
            source: Source::Callback,
            raw_status: "approved".into(),
            state: Some(State::Succeeded),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            learned_keys: vec![],
        }
    }

    #[test]
    fn the_same_money_is_no_mismatch_and_other_money_is() {
        let p = payment();
        for same in [
            &[("amount", "12.50"), ("currency", "EUR")][..],
            &[("amount", "12.5"), ("currency", "eur")],
            &[("amount_minor", "1250")],
            &[],
        ] {
            assert_eq!(mismatch(&p, &report(same), 1), None, "{same:?}");
        }
        for (other, minor) in [
            (&[("amount", "-100"), ("currency", "EUR")][..], None),
            (&[("amount", "1e308"), ("currency", "EUR")], None),
            (&[("amount", "abc")], None),
            (&[("amount", "0.01"), ("currency", "EUR")], Some(1)),
            (&[("amount", "12.50"), ("currency", "USD")], Some(1250)),
            (&[("amount_minor", "0")], None),
            (
                &[("amount", "100000000000000000000000000000000000000")],
                None,
            ),
        ] {
            let m = mismatch(&p, &report(other), 7).expect("a mismatch");
            assert_eq!(m.reported_minor, minor, "{other:?}");
            assert_eq!(m.at_ms, 7);
        }
    }

    #[test]
    fn tracked_amounts_are_positive_and_bounded() {
        assert!(check_tracked(1).is_ok());
        assert!(check_tracked(MAX_AMOUNT_MINOR).is_ok());
        for bad in [0, -1, MAX_AMOUNT_MINOR + 1, i64::MAX, i64::MIN] {
            assert!(check_tracked(bad).is_err(), "{bad}");
        }
    }
}
