//! What a room or user name may be, and the table that interns them.
//!
//! Names arrive from three places — the upgrade query string, client JSON
//! messages and control commands — and must mean the same thing in all of them.
//! A name is 1 to 128 bytes of printable ASCII (0x21..=0x7E) except `,`: no
//! spaces, so it survives inline control commands unquoted, and no comma, so
//! every room can be named in the `rooms=a,b` list of the upgrade request.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;
use slab::Slab;

/// The longest room or user name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// True if `name` is a valid room or user name.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Names interned to small integer ids, each with a value.
///
/// A million users must not cost a million fat hash-map entries: the index holds only
/// 4-byte ids (hashed by the name they point to), and each name is stored once, as an
/// `Arc<str>` that events and pushes share instead of copying.
///
/// The hasher is std's `RandomState` (SipHash-1-3 with random keys per table), kept
/// although it is most of the cost of a lookup (measured with callgrind: ~170
/// instructions for a short name): names are chosen by clients (`rooms=`, `user=`,
/// joins), and with a faster hash of weaker DoS resistance (foldhash, FxHash) a client
/// that learns the table's behaviour could pick colliding names.
pub struct NameTable<T> {
    hasher: RandomState,
    /// Ids, found by the hash of their name.
    index: HashTable<u32>,
    /// Id → (name, value).
    entries: Slab<(Arc<str>, T)>,
}

impl<T> Default for NameTable<T> {
    fn default() -> Self {
        NameTable {
            hasher: RandomState::new(),
            index: HashTable::new(),
            entries: Slab::new(),
        }
    }
}

impl<T> NameTable<T> {
    /// The id of `name`, if present.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.find(name, self.hasher.hash_one(name))
    }

    fn find(&self, name: &str, hash: u64) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(hash, |&id| &*entries[id as usize].0 == name)
            .copied()
    }

    /// Name and value of `id`.
    pub fn get(&self, id: u32) -> Option<(&Arc<str>, &T)> {
        self.entries.get(id as usize).map(|(n, v)| (n, v))
    }

    /// Every id in use is below this (ids are reused, so the bound tracks the peak).
    pub fn id_bound(&self) -> u32 {
        self.entries.capacity() as u32
    }

    /// Value of `id`, mutably.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.entries.get_mut(id as usize).map(|(_, v)| v)
    }

    /// The value stored under `name`.
    pub fn by_name(&self, name: &str) -> Option<&T> {
        self.id(name).and_then(|id| self.get(id)).map(|(_, v)| v)
    }

    /// The id of `name`, inserting it with `make()` if absent. `name` is copied into a
    /// new `Arc<str>` only when inserted.
    pub fn intern(&mut self, name: &str, make: impl FnOnce() -> T) -> u32 {
        // Hashed once for the lookup and the insert: names are client-chosen, so the
        // hasher is SipHash (std's RandomState), and it is most of this call's cost.
        let hash = self.hasher.hash_one(name);
        match self.find(name, hash) {
            Some(id) => id,
            None => self.insert(hash, Arc::from(name), make()),
        }
    }

    /// Like `intern`, sharing the caller's `Arc<str>` instead of copying the name.
    pub fn intern_shared(&mut self, name: &Arc<str>, make: impl FnOnce() -> T) -> u32 {
        let hash = self.hasher.hash_one(&**name);
        match self.find(name, hash) {
            Some(id) => id,
            None => self.insert(hash, name.clone(), make()),
        }
    }

    fn insert(&mut self, hash: u64, name: Arc<str>, value: T) -> u32 {
        let id = self.entries.insert((name, value)) as u32;
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index
            .insert_unique(hash, id, |&i| hasher.hash_one(&*entries[i as usize].0));
        id
    }

    /// Removes `id`, returning its name and value.
    pub fn remove(&mut self, id: u32) -> Option<(Arc<str>, T)> {
        let name = self.entries.get(id as usize)?.0.clone();
        let hash = self.hasher.hash_one(&*name);
        if let Ok(entry) = self.index.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        self.entries.try_remove(id as usize)
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &T)> {
        self.entries.iter().map(|(_, (n, v))| (n, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_table_interns_finds_and_removes() {
        let mut t: NameTable<u32> = NameTable::default();
        let a = t.intern("alpha", || 1);
        let b = t.intern("beta", || 2);
        assert_ne!(a, b);
        assert_eq!(t.intern("alpha", || 99), a);
        assert_eq!(t.by_name("alpha"), Some(&1));
        assert_eq!(t.id("gamma"), None);
        assert_eq!(
            t.remove(a).map(|(n, v)| (n.to_string(), v)),
            Some(("alpha".into(), 1))
        );
        assert_eq!(t.id("alpha"), None);
        assert_eq!(t.by_name("beta"), Some(&2));
        assert_eq!(t.len(), 1);
        assert!(t.remove(a).is_none());
    }

    #[test]
    fn name_table_survives_many_inserts_and_removals() {
        let mut t: NameTable<usize> = NameTable::default();
        for round in 0..3 {
            let ids: Vec<u32> = (0..5000)
                .map(|i| t.intern(&format!("n{i}"), || i))
                .collect();
            for (i, &id) in ids.iter().enumerate() {
                assert_eq!(t.id(&format!("n{i}")), Some(id), "round {round}");
            }
            for id in ids.into_iter().step_by(2) {
                t.remove(id);
            }
            for i in (0..5000).step_by(2) {
                assert_eq!(t.id(&format!("n{i}")), None);
            }
            for i in (1..5000).step_by(2) {
                t.remove(t.id(&format!("n{i}")).unwrap());
            }
            assert!(t.is_empty());
        }
    }

    #[test]
    fn accepts_printable_ascii_up_to_128_bytes() {
        assert!(is_valid_name(b"news"));
        assert!(is_valid_name(b"user:42/feed-#1"));
        assert!(is_valid_name(&[b'a'; MAX_NAME_LEN]));
    }

    #[test]
    fn rejects_empty_long_space_comma_and_non_ascii() {
        assert!(!is_valid_name(b""));
        assert!(!is_valid_name(&[b'a'; MAX_NAME_LEN + 1]));
        assert!(!is_valid_name(b"two words"));
        assert!(!is_valid_name(b"a,b"));
        assert!(!is_valid_name("caf\u{e9}".as_bytes()));
        assert!(!is_valid_name(b"tab\there"));
    }
}
