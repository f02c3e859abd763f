//! The reactor's table of token grant sets, interned: connections whose tokens grant
//! the same rooms and patterns share one copy (a million connections minted from one
//! template cost one entry), and a connection keeps only a 4-byte id. An entry is
//! freed when its last connection stops being open.

use std::sync::Arc;

use slab::Slab;
use std::collections::HashMap;

use crate::auth::Grants;

/// "No grants": authentication is off for this connection.
pub const NONE: u32 = u32::MAX;

#[derive(Default)]
pub struct GrantTable {
    by_value: HashMap<Arc<Grants>, u32>,
    /// The grant set and how many connections hold it.
    slots: Slab<(Arc<Grants>, u32)>,
}

impl GrantTable {
    /// The id of `g`, one more holder counted.
    pub fn intern(&mut self, g: Grants) -> u32 {
        if let Some(&id) = self.by_value.get(&g) {
            if let Some(slot) = self.slots.get_mut(id as usize) {
                slot.1 += 1;
                return id;
            }
        }
        let g = Arc::new(g);
        let id = self.slots.insert((g.clone(), 1));
        let id = u32::try_from(id).unwrap_or(NONE);
        self.by_value.insert(g, id);
        id
    }

    pub fn get(&self, id: u32) -> Option<&Grants> {
        self.slots.get(id as usize).map(|(g, _)| &**g)
    }

    /// The shared copy of `id`, for a caller that must change the reactor while it
    /// reads the grants.
    pub fn shared(&self, id: u32) -> Option<Arc<Grants>> {
        self.slots.get(id as usize).map(|(g, _)| g.clone())
    }

    /// One holder of `id` fewer; the entry goes with its last one.
    pub fn release(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(id as usize) else {
            return;
        };
        slot.1 -= 1;
        if slot.1 == 0 {
            let (g, _) = self.slots.remove(id as usize);
            self.by_value.remove(&g);
        }
    }

    /// Distinct grant sets held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RoomPattern;

    fn g(join: &str) -> Grants {
        Grants::new(vec![], vec![RoomPattern::parse(join).unwrap()])
    }

    #[test]
    fn equal_grants_share_one_entry_until_the_last_holder_leaves() {
        let mut t = GrantTable::default();
        let a = t.intern(g("news.*"));
        let b = t.intern(g("news.*"));
        let c = t.intern(g("sport.*"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(t.len(), 2);
        t.release(a);
        assert!(t.get(b).is_some());
        t.release(b);
        assert!(t.get(a).is_none());
        t.release(c);
        assert_eq!(t.len(), 0);
        t.release(NONE);
    }
}
