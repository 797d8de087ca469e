//! The record codec: each record reads back as written, is smaller than
//! its JSON, and a cut or unknown record is refused by name.

use super::*;

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

#[test]
fn records_read_back_as_written() {
    let p = payment();
    assert_eq!(Payment::decode(b"p", &p.encode()).unwrap(), p);
    let mut bare = p.clone();
    (bare.amount_minor, bare.window, bare.mismatch, bare.final_ms) = (None, None, None, None);
    assert_eq!(Payment::decode(b"p", &bare.encode()).unwrap(), bare);
    let o = Observation {
        seq: 7,
        source: Source::Poll,
        at_ms: 9,
        raw_status: "PROCESSING".into(),
        state: Some(State::Pending),
        decision: Some(Decision::Same),
        fields: BTreeMap::from([("orderId".to_string(), "o-1".to_string())]),
        repeats: 41,
        last_ms: Some(200),
    };
    assert_eq!(Observation::decode(b"h", &o.encode()).unwrap(), o);
    let e = InboxEntry {
        payment_id: None,
        received_ms: 5,
    };
    assert_eq!(InboxEntry::decode(b"i", &e.encode()).unwrap(), e);
}

#[test]
fn a_payment_record_carries_its_history_and_a_cut_history_is_corrupt() {
    let p = payment();
    let mut obs = vec![];
    let mut h = History::default();
    for (seq, raw) in ["PROCESSING", "APPROVED"].into_iter().enumerate() {
        let o = Observation {
            seq: seq as u32,
            source: Source::Poll,
            at_ms: 10 + seq as u64,
            raw_status: raw.into(),
            state: None,
            decision: None,
            fields: BTreeMap::from([("orderId".to_string(), "o-1".to_string())]),
            repeats: seq as u32 * 3,
            last_ms: None,
        };
        h.push(&o);
        obs.push(o);
    }
    let raw = payment_record(&p, &h);
    // Readers of the payment alone never look at the history.
    assert_eq!(Payment::decode(b"P", &raw).unwrap(), p);
    let (back, hist) = split_payment(b"P", &raw).unwrap();
    assert_eq!((back, hist.read().unwrap()), (p.clone(), obs.clone()));
    assert_eq!(History::from_observations(&obs), h);
    assert_eq!(history_of(b"P", &p.encode()).unwrap(), vec![]);
    match history_of(b"Ppay_1", &raw[..raw.len() - 1]) {
        Err(StoreError::Corrupt { key, reason }) => {
            assert_eq!(key, "Ppay_1");
            assert!(reason.contains("history entry 1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_record_is_smaller_than_its_json() {
    let p = payment();
    let (bin, json) = (p.encode().len(), serde_json::to_vec(&p).unwrap().len());
    assert!(bin * 3 < json, "{bin} bytes binary vs {json} JSON");
}

#[test]
fn an_unknown_encoding_or_a_cut_record_is_corrupt_and_named() {
    let raw = payment().encode();
    for bad in [&b"{\"id\":1}"[..], &raw[..raw.len() / 2], &[]] {
        match Payment::decode(b"Ppay_1", bad) {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "Ppay_1"),
            other => panic!("{other:?}"),
        }
    }
}
