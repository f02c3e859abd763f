//! The dispatcher's view of where recipients are: connection counts per
//! (room, reactor), (user, reactor) and per reactor.
//!
//! Kept from the reactors' events, so a push skips reactors with no recipient and a
//! PUBLISH is answered with its recipient count without asking any reactor.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

/// Connection counts of one room or user: `(reactor, count)` pairs with count > 0,
/// sorted by reactor. Inline for the common case of one reactor (most users hold one
/// connection), so a million users cost no extra heap block each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    per_reactor: SmallVec<[(u32, u32); 1]>,
    /// Sum of the counts.
    pub total: u64,
}

impl Counts {
    /// Reactors that have at least one connection here.
    pub fn reactors(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_reactor.iter().map(|&(r, _)| r as usize)
    }

    /// Connections in `reactor`.
    pub fn in_reactor(&self, reactor: usize) -> u32 {
        self.per_reactor
            .iter()
            .find(|&&(r, _)| r as usize == reactor)
            .map_or(0, |&(_, n)| n)
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
        self.total = self.total + new as u64 - *n as u64;
        *n = new;
        if new == 0 {
            self.per_reactor.remove(i);
        }
    }
}

/// Counts keyed by name; an entry disappears when its total reaches zero.
pub struct CountTable {
    reactors: usize,
    map: HashMap<Arc<str>, Counts>,
}

impl CountTable {
    pub fn new(reactors: usize) -> CountTable {
        CountTable {
            reactors,
            map: HashMap::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Counts> {
        self.map.get(name)
    }

    /// The table's own copy of `name` (shared with pushes), if present.
    pub fn key(&self, name: &str) -> Option<Arc<str>> {
        self.map.get_key_value(name).map(|(k, _)| k.clone())
    }

    pub fn total(&self, name: &str) -> u64 {
        self.map.get(name).map_or(0, |c| c.total)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sum of all totals.
    pub fn sum_totals(&self) -> u64 {
        self.map.values().map(|c| c.total).sum()
    }

    pub fn apply(&mut self, name: &Arc<str>, reactor: usize, delta: i32) {
        if reactor >= self.reactors {
            return;
        }
        let counts = self.map.entry(name.clone()).or_default();
        counts.apply(reactor, delta);
        if counts.total == 0 {
            self.map.remove(name);
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
        t.apply(&news, 0, 1);
        t.apply(&news, 2, 1);
        t.apply(&news, 2, 1);
        let c = t.get("news").unwrap();
        assert_eq!(c.total, 3);
        assert_eq!(c.reactors().collect::<Vec<_>>(), vec![0, 2]);
        t.apply(&news, 0, -1);
        t.apply(&news, 2, -2);
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
