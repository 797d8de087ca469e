//! The one keyspace: every record lives in one sled tree under a one-byte
//! prefix naming its kind.
//!
//! | prefix | key after it | value |
//! |---|---|---|
//! | `P` | payment id | Payment, then its history (codec.rs, `History`) |
//! | `H` | payment id, 0x00, seq (u32 BE) | Observation (format 2 only; moved into `P` at open) |
//! | `K` | lookup key (`connpay\|inv\|…`, `action\|idem\|…`) | payment or action id ([`id_value`]) |
//! | `I` | callback de-duplication key | InboxEntry |
//! | `W` | payment id (open windows only) | next poll as written (u64 BE), provider code |
//! | `A` | action id | Action |
//! | `X` | action id (not final) | empty |
//! | `N` | notice seq (u64 BE) | Notice, waiting |
//! | `D` | notice seq (u64 BE) | Notice, given up on |
//! | `O` | orphan id (u64 BE) | CallbackRecord |
//! | `Q` | lookup key | the orphan ids waiting under it (u64 BE each) |
//! | `S` | payment id | SweepMark |
//! | `Y` | symbol number (u32 BE) | the symbol (UTF-8; codec/symbols.rs) |
//! | `M` | name | meta value (UTF-8); `M\0format` is the store format |
//! | `C` | kind's prefix | how many records of that kind (u64 BE) |

use crate::store::codec::{corrupt, Symbols};
use crate::store::StoreError;

/// A record kind. The first ones are counted (their counts are kept
/// under `C`, so gauges need no scan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Payment = 0,
    Inbox = 1,
    Notice = 2,
    Dead = 3,
    Orphan = 4,
    History,
    Key,
    Window,
    Action,
    Outbox,
    OrphanIndex,
    Sweep,
    Symbol,
    Meta,
}

impl Kind {
    pub const COUNTED: usize = 5;

    pub fn prefix(self) -> u8 {
        match self {
            Kind::Payment => b'P',
            Kind::Inbox => b'I',
            Kind::Notice => b'N',
            Kind::Dead => b'D',
            Kind::Orphan => b'O',
            Kind::History => b'H',
            Kind::Key => b'K',
            Kind::Window => b'W',
            Kind::Action => b'A',
            Kind::Outbox => b'X',
            Kind::OrphanIndex => b'Q',
            Kind::Sweep => b'S',
            Kind::Symbol => b'Y',
            Kind::Meta => b'M',
        }
    }
}

const COUNTED: [Kind; Kind::COUNTED] = [
    Kind::Payment,
    Kind::Inbox,
    Kind::Notice,
    Kind::Dead,
    Kind::Orphan,
];

/// The store format this release writes, kept under `M\0format`.
pub const FORMAT: &str = "5";
pub const FORMAT_KEY: &[u8] = b"M\0format";

pub fn of(kind: Kind, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind.prefix());
    k.extend_from_slice(rest);
    k
}

/// The prefixes of the ids payrecon makes (`new_id`), by their tag in
/// [`id_value`].
const ID_PREFIXES: [&str; 2] = ["pay_", "act_"];
/// Hex digits in an id after its prefix: the 48-bit counter, then 16
/// random bits.
const ID_DIGITS: usize = 16;

/// A `K` record's value: the id it points to. An id payrecon made (a
/// prefix of [`ID_PREFIXES`], then 16 lowercase hex digits) is written in
/// 9 bytes: the prefix's tag (below 0x20), then the digits' 8 bytes. Any
/// other id is written as its text, which never starts with a byte below
/// 0x20 (store format 4 wrote every id as text; both read the same).
pub fn id_value(id: &str) -> Vec<u8> {
    let packed = ID_PREFIXES.iter().enumerate().find_map(|(tag, prefix)| {
        let digits = id.strip_prefix(prefix)?;
        let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if digits.len() != ID_DIGITS || !digits.bytes().all(|b| lower_hex(&b)) {
            return None;
        }
        let n = u64::from_str_radix(digits, 16).ok()?;
        let mut v = Vec::with_capacity(9);
        v.push(tag as u8);
        v.extend_from_slice(&n.to_be_bytes());
        Some(v)
    });
    packed.unwrap_or_else(|| id.as_bytes().to_vec())
}

/// The id a `K` record's value names (see [`id_value`]).
pub fn id_of(v: &[u8]) -> String {
    match v {
        [tag, digits @ ..] if (*tag as usize) < ID_PREFIXES.len() && digits.len() == 8 => {
            let n = u64::from_be_bytes(digits.try_into().unwrap_or_default());
            format!("{}{n:016x}", ID_PREFIXES[*tag as usize])
        }
        _ => String::from_utf8_lossy(v).into_owned(),
    }
}

pub fn history_prefix(id: &str) -> Vec<u8> {
    let mut k = of(Kind::History, id.as_bytes());
    k.push(0);
    k
}

/// A format 2 history record's key (tests write format 2 stores).
#[cfg(test)]
pub fn history(id: &str, seq: u32) -> Vec<u8> {
    let mut k = history_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn seq_key(kind: Kind, seq: u64) -> Vec<u8> {
    of(kind, &seq.to_be_bytes())
}

pub fn symbol(id: u32) -> Vec<u8> {
    of(Kind::Symbol, &id.to_be_bytes())
}

/// The symbols a store holds.
pub fn load_symbols(tree: &sled::Tree) -> Result<Symbols, StoreError> {
    let mut saved = vec![];
    for kv in tree.scan_prefix([Kind::Symbol.prefix()]) {
        let (k, v) = kv?;
        let id = rest(&k)
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| corrupt(&k, "a symbol's key is not 4 bytes".into()))?;
        let name = String::from_utf8(v.to_vec()).map_err(|e| corrupt(&k, e.to_string()))?;
        saved.push((id, name));
    }
    Symbols::from_saved(saved).map_err(|reason| corrupt(&[Kind::Symbol.prefix()], reason))
}

/// Puts the symbols not yet saved in `batch`; the number to mark saved
/// once it is applied.
pub fn save_symbols(symbols: &Symbols, batch: &mut sled::Batch) -> usize {
    let (new, upto) = symbols.unsaved();
    for (id, name) in new {
        batch.insert(symbol(id), name.as_bytes());
    }
    upto
}

pub fn meta(name: &str) -> Vec<u8> {
    of(Kind::Meta, name.as_bytes())
}

/// The counter of the `i`th counted kind.
pub fn counter(i: usize) -> Vec<u8> {
    vec![b'C', COUNTED[i].prefix()]
}

/// The part of a key after its prefix.
pub fn rest(key: &[u8]) -> &[u8] {
    key.get(1..).unwrap_or_default()
}

/// The window value: next poll (u64 BE) and the provider's code.
pub fn window_value(next_ms: u64, provider: crate::model::ProviderId) -> Vec<u8> {
    let mut v = next_ms.to_be_bytes().to_vec();
    v.push(provider.code());
    v
}

pub fn read_u64(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

pub fn read_ids(v: Option<&[u8]>) -> Vec<u64> {
    v.unwrap_or_default()
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

pub fn write_ids(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_payrecon_makes_are_packed_and_read_back_exactly() {
        for id in [
            "pay_00000000002a1f3c",
            "act_ffffffffffffffff",
            "pay_0000000000000000",
        ] {
            let v = id_value(id);
            assert_eq!(v.len(), 9, "{id}");
            assert_eq!(id_of(&v), id);
        }
    }

    #[test]
    fn other_ids_stay_text_and_format_4_values_still_read() {
        for id in [
            "pay_00000000002A1F3C", // upper case would not read back the same
            "pay_2a1f3c",
            "pay_bench7",
            "ord_00000000002a1f3c",
            "",
        ] {
            assert_eq!(id_value(id), id.as_bytes(), "{id}");
            assert_eq!(id_of(&id_value(id)), id);
        }
        // What format 4 wrote for an id payrecon made.
        assert_eq!(id_of(b"pay_00000000002a1f3c"), "pay_00000000002a1f3c");
    }
}
