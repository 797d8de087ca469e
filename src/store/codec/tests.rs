//! The record codec: each record reads back as written, is smaller than
//! its JSON, and a cut or unknown record is refused by name.

use super::*;
use crate::model::{Keys, Mismatch, Observation, Payment, PollWindow};
use crate::state::Decision;

fn payment() -> Payment {
    Payment {
        id: "pay_0000000000010abc".into(),
        provider: ProviderId::Myfatoorah,
        keys: Keys::from([("invoice_id".to_string(), "123456".to_string())]),
        amount_minor: Some(1250),
        currency: Some("KWD".into()),
        state: State::Succeeded,
        raw_status: Some("Paid".into()),
        created_ms: 1_700_000_000_000,
        updated_ms: 1_700_000_009_000,
        final_ms: Some(1_700_000_009_000),
        final_source: Some(Source::Callback),
        window: Some(PollWindow {
            ends_ms: 1_700_000_180_000,
            next_ms: 1_700_000_012_000,
            polls: 3,
            open: false,
        }),
        observations: 4,
        mismatch: Some(Mismatch {
            reported: "12.60 KWD".into(),
            reported_minor: Some(1260),
            reported_currency: None,
            at_ms: 1_700_000_005_000,
        }),
    }
}

fn observation(seq: u32, at_ms: u64, raw: &str, repeats: u32) -> Observation {
    Observation {
        seq,
        source: Source::Poll,
        at_ms,
        raw_status: raw.into(),
        state: Some(State::Pending),
        decision: Some(Decision::Same),
        fields: BTreeMap::from([
            ("orderId".to_string(), "o-1".to_string()),
            ("amount".to_string(), "12.50".to_string()),
        ]),
        repeats,
        last_ms: (repeats > 0).then_some(at_ms + 4_000),
    }
}

#[test]
fn records_read_back_as_written() {
    let symbols = Symbols::default();
    let p = payment();
    let empty = History::new(p.created_ms);
    let raw = payment_record(&p, &empty, &symbols);
    assert_eq!(payment_of(b"p", &raw, &symbols).unwrap(), p);
    let mut bare = p.clone();
    (bare.amount_minor, bare.window, bare.mismatch, bare.final_ms) = (None, None, None, None);
    (bare.currency, bare.raw_status, bare.keys) = (None, None, Keys::new());
    let raw = payment_record(&bare, &empty, &symbols);
    assert_eq!(payment_of(b"p", &raw, &symbols).unwrap(), bare);
    // Times before the payment's creation (a clock stepped back) too.
    let mut early = p.clone();
    early.updated_ms = 5;
    early.window.as_mut().unwrap().next_ms = 0;
    let raw = payment_record(&early, &empty, &symbols);
    assert_eq!(payment_of(b"p", &raw, &symbols).unwrap(), early);
    let o = observation(7, 9, "PROCESSING", 41);
    assert_eq!(Observation::decode(b"h", &o.encode()).unwrap(), o);
    let e = InboxEntry {
        payment_id: None,
        received_ms: 5,
    };
    assert_eq!(InboxEntry::decode(b"i", &e.encode()).unwrap(), e);
}

#[test]
fn a_payment_record_carries_its_history_and_a_cut_history_is_corrupt() {
    let symbols = Symbols::default();
    let p = payment();
    let mut obs = vec![];
    let mut h = History::new(p.created_ms);
    for (seq, raw) in ["PROCESSING", "APPROVED", "APPROVED"]
        .into_iter()
        .enumerate()
    {
        let o = observation(
            seq as u32,
            p.created_ms + 10 - seq as u64,
            raw,
            seq as u32 * 3,
        );
        h.push(&o, &symbols).unwrap();
        obs.push(o);
    }
    let raw = payment_record(&p, &h, &symbols);
    // Readers of the payment alone never look at the history.
    assert_eq!(payment_of(b"P", &raw, &symbols).unwrap(), p);
    let (back, mut hist) = split_payment(b"P", &raw, &symbols).unwrap();
    assert_eq!(
        (back, hist.read(&symbols).unwrap()),
        (p.clone(), obs.clone())
    );
    assert_eq!(History::from_observations(p.created_ms, &obs, &symbols), h);
    // Appending to a history read from a record: the same bytes as
    // appending to the one still in hand.
    let next = observation(3, p.created_ms + 99, "SETTLED", 0);
    hist.push(&next, &symbols).unwrap();
    h.push(&next, &symbols).unwrap();
    assert_eq!(hist, h);
    let empty = payment_record(&p, &History::new(p.created_ms), &symbols);
    assert_eq!(history_of(b"P", &empty, &symbols).unwrap(), vec![]);
    match history_of(b"Ppay_1", &raw[..raw.len() - 1], &symbols) {
        Err(StoreError::Corrupt { key, reason }) => {
            assert_eq!(key, "Ppay_1");
            assert!(reason.contains("history entry 2"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn names_are_symbols_and_repeated_values_are_written_once() {
    let symbols = Symbols::default();
    let p = payment();
    let obs: Vec<_> = (0..5)
        .map(|i| observation(i, p.created_ms + 4_000 * u64::from(i), "PROCESSING", 0))
        .collect();
    let h = History::from_observations(p.created_ms, &obs, &symbols);
    let raw = payment_record(&p, &h, &symbols);
    let once = |s: &str| raw.windows(s.len()).filter(|w| *w == s.as_bytes()).count();
    // Names are symbols: not in the record at all (the currency is, in
    // the mismatch's text "12.60 KWD").
    for name in ["orderId", "amount", "PROCESSING", "invoice_id", "Paid"] {
        assert_eq!(once(name), 0, "{name}");
    }
    // A value the history repeats is written once.
    assert_eq!(once("o-1"), 1);
    assert_eq!(once("12.50"), 1);
    // A repeated observation costs a few bytes.
    let first = History::from_observations(p.created_ms, &obs[..1], &symbols);
    let per_repeat =
        (payment_record(&p, &h, &symbols).len() - payment_record(&p, &first, &symbols).len()) / 4;
    assert!(
        per_repeat <= 16,
        "{per_repeat} bytes per repeated observation"
    );
    // Another store's reader without the symbols refuses the record by name.
    match payment_of(b"Ppay_2", &raw, &Symbols::default()) {
        Err(StoreError::Corrupt { key, reason }) => {
            assert_eq!(key, "Ppay_2");
            assert!(reason.contains("symbol"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_record_is_smaller_than_its_json() {
    let p = payment();
    let raw = payment_record(&p, &History::new(p.created_ms), &Symbols::default());
    let json = serde_json::to_vec(&p).unwrap().len();
    assert!(
        raw.len() * 3 < json,
        "{} bytes binary vs {json} JSON",
        raw.len()
    );
}

#[test]
fn an_unknown_encoding_or_a_cut_record_is_corrupt_and_named() {
    let symbols = Symbols::default();
    let p = payment();
    let raw = payment_record(&p, &History::new(p.created_ms), &symbols);
    let old = v3::record(&p, &[]);
    for bad in [&b"{\"id\":1}"[..], &raw[..raw.len() / 2], &old, &[]] {
        match payment_of(b"Ppay_1", bad, &symbols) {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "Ppay_1"),
            other => panic!("{other:?}"),
        }
    }
    // The encodings before read back through the migration's reader.
    let o = observation(0, 1, "PROCESSING", 0);
    assert_eq!(
        v3::split(b"P", &v3::record(&p, std::slice::from_ref(&o))).unwrap(),
        (p, vec![o])
    );
}
