//! The store's symbols: short strings that recur in every payment (key and
//! field names, provider statuses, currencies), each kept once in the
//! store and written in records as its number.
//!
//! Only strings that name things are made symbols, never values such as
//! order ids: the table stays as small as the providers' vocabularies.
//! It is bounded ([`MAX`] entries of at most [`MAX_LEN`] bytes) all the
//! same; a string that does not fit is written in full.
//!
//! A symbol is added by whoever writes a record that uses it, and kept on
//! disk in the same atomic batch as that record: every batch carries the
//! symbols not yet saved ([`Symbols::unsaved`]), and they count as saved
//! only once a batch that carries them was applied
//! ([`Symbols::saved_up_to`]). A record on disk never names a symbol that
//! is not.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Symbols kept at most.
pub const MAX: usize = 4096;
/// The longest string made a symbol, in bytes.
pub const MAX_LEN: usize = 48;

#[derive(Debug, Default)]
pub struct Symbols(RwLock<Table>);

#[derive(Debug, Default)]
pub struct Table {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, u32>,
    /// Symbols below this number are on disk.
    saved: usize,
}

impl Table {
    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(|n| &**n)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Symbols {
    /// The symbols a store holds, numbered from 0 without a gap.
    pub fn from_saved(saved: impl IntoIterator<Item = (u32, String)>) -> Result<Symbols, String> {
        let mut t = Table::default();
        for (id, name) in saved {
            if id as usize != t.names.len() {
                return Err(format!(
                    "symbol {} is missing (the next stored is {id})",
                    t.names.len()
                ));
            }
            let name: Box<str> = name.into();
            t.ids.insert(name.clone(), id);
            t.names.push(name);
        }
        t.saved = t.names.len();
        Ok(Symbols(RwLock::new(t)))
    }

    /// The table, for reading records. A writer adds symbols only while no
    /// reader holds it, briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of `s`, made a symbol now if it is new and there is room.
    pub fn id(&self, s: &str) -> Option<u32> {
        if s.len() > MAX_LEN {
            return None;
        }
        {
            let t = self.read();
            if let Some(&id) = t.ids.get(s) {
                return Some(id);
            }
            if t.names.len() >= MAX {
                return None;
            }
        }
        let mut t = self.write();
        if let Some(&id) = t.ids.get(s) {
            return Some(id);
        }
        if t.names.len() >= MAX {
            return None;
        }
        let id = t.names.len() as u32;
        t.names.push(s.into());
        t.ids.insert(s.into(), id);
        Some(id)
    }

    /// Symbols made since the last batch that saved them, to write in the
    /// next batch (with the number to pass to `saved_up_to` once it is
    /// applied).
    pub fn unsaved(&self) -> (Vec<(u32, Box<str>)>, usize) {
        let t = self.read();
        let new = (t.saved..t.names.len())
            .map(|i| (i as u32, t.names[i].clone()))
            .collect();
        (new, t.names.len())
    }

    /// A batch that carried every symbol below `n` was applied.
    pub fn saved_up_to(&self, n: usize) {
        let mut t = self.write();
        t.saved = t.saved.max(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_gets_one_number_and_new_ones_wait_to_be_saved() {
        let s = Symbols::from_saved([(0, "invoice_id".to_string())]).unwrap();
        assert_eq!(s.id("invoice_id"), Some(0));
        assert_eq!(s.id("APPROVED"), Some(1));
        assert_eq!(s.id("APPROVED"), Some(1));
        assert_eq!(s.id(&"x".repeat(MAX_LEN + 1)), None);
        let (new, n) = s.unsaved();
        assert_eq!(new, vec![(1, "APPROVED".into())]);
        s.saved_up_to(n);
        assert!(s.unsaved().0.is_empty());
        assert_eq!(s.read().name(1), Some("APPROVED"));
        assert_eq!(s.read().name(2), None);
    }

    #[test]
    fn the_table_is_bounded_and_a_gap_on_disk_is_refused() {
        let s = Symbols::default();
        for i in 0..MAX {
            assert_eq!(s.id(&i.to_string()), Some(i as u32));
        }
        assert_eq!(s.id("one more"), None);
        assert_eq!(s.id("7"), Some(7));
        let err = Symbols::from_saved([(0, "a".into()), (2, "c".into())]).unwrap_err();
        assert!(err.contains("symbol 1 is missing"), "{err}");
    }
}
