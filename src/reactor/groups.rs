//! Per-reactor membership tables: room → connections and user → connections.
//!
//! Names are interned once per reactor (name → small integer id), so a connection
//! stores `(group id, position)` pairs instead of strings, and a push to a room walks
//! one dense `Vec<u32>` of slab keys. Removal is O(1): the last member is swapped into
//! the hole and its stored position fixed by the caller. A group that empties is freed,
//! so tables never keep names nobody uses.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::names::NameTable;

/// Where one connection sits in one group: the group's id and its index in the
/// group's member list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    /// Group (room or user) id in this reactor's table.
    pub group: u32,
    /// Index of the connection in that group's member list.
    pub pos: u32,
}

impl Membership {
    /// "In no group" — used for connections without a user id.
    pub const NONE: Membership = Membership {
        group: u32::MAX,
        pos: u32::MAX,
    };

    pub fn is_none(self) -> bool {
        self.group == u32::MAX
    }
}

/// Slab keys of a group's member connections, in no particular order. Inline up to
/// two: most users have one or two connections, and a million users must not mean a
/// million tiny heap blocks.
type Members = SmallVec<[u32; 2]>;

/// One kind of group (rooms, or users) in one reactor.
#[derive(Default)]
pub struct Groups {
    table: NameTable<Members>,
}

impl Groups {
    /// The id of the group called `name`, if it has members here.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.table.id(name)
    }

    /// The interned name of group `id`.
    pub fn name(&self, id: u32) -> Option<&Arc<str>> {
        self.table.get(id).map(|(n, _)| n)
    }

    /// Member connections of group `id`.
    pub fn members(&self, id: u32) -> &[u32] {
        self.table.get(id).map_or(&[], |(_, m)| m.as_slice())
    }

    /// Number of groups with at least one member.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Adds connection `conn` to the group called `name`, creating it if needed.
    pub fn add(&mut self, name: &str, conn: u32) -> (Membership, Arc<str>) {
        let id = self.table.intern(name, Members::new);
        let pos = match self.table.get_mut(id) {
            Some(members) => {
                members.push(conn);
                (members.len() - 1) as u32
            }
            None => u32::MAX,
        };
        let name = self.name(id).cloned().unwrap_or_else(|| Arc::from(name));
        (Membership { group: id, pos }, name)
    }

    /// Removes the member at `m`. Returns the group's name and, if another connection
    /// was moved into the freed position, that connection's key: the caller must set its
    /// stored position for this group to `m.pos`.
    pub fn remove(&mut self, m: Membership) -> Option<(Arc<str>, Option<u32>)> {
        let members = self.table.get_mut(m.group)?;
        let pos = m.pos as usize;
        if pos >= members.len() {
            return None;
        }
        members.swap_remove(pos);
        let moved = members.get(pos).copied();
        let empty = members.is_empty();
        let name = self.name(m.group).cloned()?;
        if empty {
            self.table.remove(m.group);
        }
        Some((name, moved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_interns_names_and_remove_swaps_the_last_member_in() {
        let mut g = Groups::default();
        let (a, _) = g.add("news", 10);
        let (b, _) = g.add("news", 11);
        let (c, _) = g.add("news", 12);
        assert_eq!(a.group, b.group);
        assert_eq!((a.pos, b.pos, c.pos), (0, 1, 2));
        assert_eq!(g.members(a.group), &[10, 11, 12]);
        let (name, moved) = g.remove(a).unwrap();
        assert_eq!(&*name, "news");
        assert_eq!(moved, Some(12));
        assert_eq!(g.members(a.group), &[12, 11]);
    }

    #[test]
    fn an_emptied_group_is_freed() {
        let mut g = Groups::default();
        let (m, _) = g.add("solo", 1);
        assert_eq!(g.len(), 1);
        assert_eq!(g.remove(m).map(|(_, moved)| moved), Some(None));
        assert_eq!(g.len(), 0);
        assert_eq!(g.id("solo"), None);
    }

    #[test]
    fn removing_a_stale_membership_is_harmless() {
        let mut g = Groups::default();
        let (m, _) = g.add("x", 1);
        g.remove(m);
        assert!(g.remove(m).is_none());
    }
}
