//! Amounts and dates from outside: decimal amounts at every scale, money
//! compared with a tracked payment, config durations, export dates and
//! MyFatoorah's expiry (`date|time`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use payrecon::model::{Payment, ProviderId, Report, Source};
use payrecon::providers::myfatoorah::{expired, expiry_ms, Invoice};
use payrecon::state::State;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    for scale in 0..=3 {
        let _ = payrecon::money::parse_amount(&s, scale);
    }
    let _ = payrecon::config::parse_duration(&s);
    let _ = payrecon::export::parse_since(&s);
    let (date, time) = s.split_once('|').unwrap_or((&s, "00:00:00.000"));
    let inv = Invoice {
        expiry_date: Some(date.into()),
        expiry_time: Some(time.into()),
        ..Default::default()
    };
    let _ = expiry_ms(&inv);
    let _ = expired(&inv, 1_800_000_000_000);
    let payment = Payment {
        id: "pay_fuzz".into(),
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
    };
    let (amount, currency) = s.split_once(' ').unwrap_or((&s, "EUR"));
    for name in ["amount", "amount_minor"] {
        let report = Report {
            source: Source::Callback,
            raw_status: "approved".into(),
            state: Some(State::Succeeded),
            fields: [
                (name.to_string(), amount.to_string()),
                ("currency".to_string(), currency.to_string()),
            ]
            .into(),
            learned_keys: vec![],
        };
        let _ = payrecon::money::mismatch(&payment, &report, 0);
    }
});
