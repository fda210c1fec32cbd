//! A table of entries named by small ids, whose released ids are reused first.
//!
//! The locked tiers name their records (best-fit blocks and segments, pool chunks) by
//! `u32` ids into one vector, so that lists and maps hold 4-byte ids instead of
//! pointers, and a released record's slot is taken by the next one instead of
//! growing the vector. An entry of a released id stays as it was until the id is
//! reused: tables whose entries must read as absent hold `Option<T>` and set `None`
//! before they release.
//!
//! `insert` names a value by an id (a released one first), indexing reads it, and
//! `release` gives the id back; the unit test at the end shows the order.

use std::ops::{Index, IndexMut};

/// Entries named by `u32` ids, released ids reused first.
#[derive(Debug, Clone)]
pub(crate) struct IdTable<T> {
    entries: Vec<T>,
    vacant: Vec<u32>,
}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        IdTable {
            entries: Vec::new(),
            vacant: Vec::new(),
        }
    }
}

impl<T> IdTable<T> {
    /// Stores `value` under a released id if there is one, else under a new one.
    pub(crate) fn insert(&mut self, value: T) -> u32 {
        match self.vacant.pop() {
            Some(id) => {
                self.entries[id as usize] = value;
                id
            }
            None => {
                let id = u32::try_from(self.entries.len()).expect("fewer than 2^32 records");
                self.entries.push(value);
                id
            }
        }
    }

    /// Makes `id` free for the next [`insert`](Self::insert). The caller no longer
    /// uses it (its entry stays until then).
    pub(crate) fn release(&mut self, id: u32) {
        debug_assert!(
            (id as usize) < self.entries.len(),
            "id {id} was never inserted"
        );
        debug_assert!(!self.vacant.contains(&id), "id {id} released twice");
        self.vacant.push(id);
    }

    /// Entries ever used, released ones included: ids are below it.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every entry, released ones included, in id order.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.entries.iter()
    }

    /// Takes every entry out, leaving the table empty.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        self.vacant.clear();
        std::mem::take(&mut self.entries)
    }
}

impl<T> Index<usize> for IdTable<T> {
    type Output = T;

    #[inline]
    fn index(&self, id: usize) -> &T {
        &self.entries[id]
    }
}

impl<T> IndexMut<usize> for IdTable<T> {
    #[inline]
    fn index_mut(&mut self, id: usize) -> &mut T {
        &mut self.entries[id]
    }
}

#[cfg(test)]
mod tests {
    use super::IdTable;

    #[test]
    fn released_ids_are_reused_first_and_others_keep_their_entries() {
        let mut table = IdTable::default();
        let a = table.insert("a");
        let b = table.insert("b");
        assert_eq!((a, b), (0, 1));
        table.release(a);
        assert_eq!(table.insert("c"), a);
        assert_eq!((table[0], table[1]), ("c", "b"));
        assert_eq!(table.insert("d"), 2, "no id is vacant: a new one");
        assert_eq!(table.len(), 3);
        assert_eq!(table.take_all(), ["c", "b", "d"]);
        assert_eq!(table.insert("e"), 0, "an emptied table starts again");
    }
}
