//! The dispatcher's view of where recipients are: connection counts per
//! (room, reactor), (user, reactor) and per reactor.
//!
//! Kept from the reactors' events, so a push skips reactors with no recipient and a
//! PUBLISH is answered with its recipient count without asking any reactor.

use std::collections::HashMap;
use std::sync::Arc;

/// Connection counts of one room or user, per reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub per_reactor: Box<[u32]>,
    pub total: u64,
}

impl Counts {
    fn new(reactors: usize) -> Counts {
        Counts {
            per_reactor: vec![0; reactors].into_boxed_slice(),
            total: 0,
        }
    }

    /// Reactors that have at least one connection here.
    pub fn reactors(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_reactor
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(r, _)| r)
    }

    fn apply(&mut self, reactor: usize, delta: i32) {
        let Some(n) = self.per_reactor.get_mut(reactor) else {
            return;
        };
        let new = (*n as i64 + delta as i64).max(0) as u32;
        self.total = self.total + new as u64 - *n as u64;
        *n = new;
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
        let reactors = self.reactors;
        let counts = self
            .map
            .entry(name.clone())
            .or_insert_with(|| Counts::new(reactors));
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
