//! The dispatcher's view of where recipients are: connection counts per
//! (room, reactor), (user, reactor) and per reactor.
//!
//! Kept from the reactors' events, so a push skips reactors with no recipient and a
//! PUBLISH is answered with its recipient count without asking any reactor.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::names::NameTable;

/// Connection counts of one room or user: `(reactor, count)` pairs with count > 0,
/// sorted by reactor. Inline for the common case of one reactor (most users hold one
/// connection), so a million users cost no extra heap block each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    per_reactor: SmallVec<[(u32, u32); 1]>,
}

impl Counts {
    /// Connections over all reactors (summed on demand: a handful of pairs, and one
    /// field less per user).
    pub fn total(&self) -> u64 {
        self.per_reactor.iter().map(|&(_, n)| n as u64).sum()
    }

    /// Reactors that have at least one connection here.
    pub fn reactors(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_reactor.iter().map(|&(r, _)| r as usize)
    }

    fn apply(&mut self, reactor: usize, delta: i32) {
        let r = reactor as u32;
        let i = match self.per_reactor.binary_search_by_key(&r, |&(r, _)| r) {
            Ok(i) => i,
            Err(i) if delta > 0 => {
                self.per_reactor.insert(i, (r, 0));
                i
            }
            Err(_) => return,
        };
        let n = &mut self.per_reactor[i].1;
        let new = (*n as i64 + delta as i64).max(0) as u32;
        *n = new;
        if new == 0 {
            self.per_reactor.remove(i);
        }
    }
}

/// What a delta did to a name's presence on this node: the cluster subscribes a
/// channel when its name appears and unsubscribes after it vanishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The first connection arrived (total 0 → 1).
    Appeared,
    /// The last connection left (total → 0).
    Vanished,
    /// The total changed, or nothing did.
    Same,
}

/// Counts keyed by name; an entry disappears when its total reaches zero.
pub struct CountTable {
    reactors: usize,
    table: NameTable<Counts>,
}

impl CountTable {
    pub fn new(reactors: usize) -> CountTable {
        CountTable {
            reactors,
            table: NameTable::default(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Counts> {
        self.table.by_name(name)
    }

    /// The table's own copy of `name` (shared with pushes), if present.
    pub fn key(&self, name: &str) -> Option<Arc<str>> {
        let id = self.table.id(name)?;
        self.table.get(id).map(|(n, _)| n.clone())
    }

    pub fn total(&self, name: &str) -> u64 {
        self.get(name).map_or(0, Counts::total)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Sum of all totals.
    pub fn sum_totals(&self) -> u64 {
        self.table.iter().map(|(_, c)| c.total()).sum()
    }

    /// The name and total of entry `id` (for walking the table a slice at a time).
    pub fn by_id(&self, id: u32) -> Option<(&Arc<str>, u64)> {
        self.table.get(id).map(|(n, c)| (n, c.total()))
    }

    /// Every name with its total.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.table.iter().map(|(n, c)| (&**n, c.total()))
    }

    /// Every name with a count.
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.table.iter().map(|(n, _)| n)
    }

    /// Every entry's id is below this.
    pub fn id_bound(&self) -> u32 {
        self.table.id_bound()
    }

    pub fn apply(&mut self, name: &Arc<str>, reactor: usize, delta: i32) -> Transition {
        if reactor >= self.reactors {
            return Transition::Same;
        }
        let (id, new) = match self.table.id(name) {
            Some(id) => (id, false),
            None if delta > 0 => (self.table.intern_shared(name, Counts::default), true),
            None => return Transition::Same,
        };
        let Some(counts) = self.table.get_mut(id) else {
            return Transition::Same;
        };
        counts.apply(reactor, delta);
        if counts.per_reactor.is_empty() {
            self.table.remove(id);
            return if new {
                Transition::Same
            } else {
                Transition::Vanished
            };
        }
        if new {
            Transition::Appeared
        } else {
            Transition::Same
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_deltas_and_vanish_at_zero() {
        let mut t = CountTable::new(3);
        let news: Arc<str> = "news".into();
        assert_eq!(t.apply(&news, 0, 1), Transition::Appeared);
        assert_eq!(t.apply(&news, 2, 1), Transition::Same);
        t.apply(&news, 2, 1);
        let c = t.get("news").unwrap();
        assert_eq!(c.total(), 3);
        assert_eq!(c.reactors().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(t.apply(&news, 0, -1), Transition::Same);
        assert_eq!(t.apply(&news, 2, -2), Transition::Vanished);
        assert!(t.get("news").is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn a_stray_negative_delta_never_underflows() {
        let mut t = CountTable::new(1);
        let x: Arc<str> = "x".into();
        t.apply(&x, 0, -1);
        assert_eq!(t.total("x"), 0);
        t.apply(&x, 5, 1);
        assert_eq!(t.total("x"), 0);
    }
}
