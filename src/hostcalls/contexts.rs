//! The contexts of one instance, by id: a table whose slot is the id's low
//! bits, so that a lookup (every callback and every hostcall makes one or
//! more) is an index and one comparison instead of hashing and probing.
//!
//! Ids stay what the ABI needs: a `u32`, never 0, unique among the live
//! contexts of the instance, handed out in increasing order (wrapping after
//! `u32::MAX`) as proxy-wasm-cpp-host does. An id whose slot a live context
//! (a root context lives as long as its plugin) still holds is skipped: ids
//! need not be consecutive, only unique.

use super::state::Context;

/// Slots of a new table: a few root contexts and the streams of the requests
/// in flight fit without growing.
const INITIAL_SLOTS: usize = 16;

pub struct Contexts {
    /// `slots.len()` is a power of two; a context with id `id` is at
    /// `id & (slots.len() - 1)`.
    slots: Vec<Option<(u32, Context)>>,
    len: usize,
}

impl Default for Contexts {
    fn default() -> Contexts {
        Contexts::new()
    }
}

impl Contexts {
    pub fn new() -> Contexts {
        Contexts { slots: std::iter::repeat_with(|| None).take(INITIAL_SLOTS).collect(), len: 0 }
    }

    fn slot(&self, id: u32) -> usize {
        id as usize & (self.slots.len() - 1)
    }

    pub fn get(&self, id: &u32) -> Option<&Context> {
        match &self.slots[self.slot(*id)] {
            Some((i, c)) if i == id => Some(c),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: &u32) -> Option<&mut Context> {
        let slot = self.slot(*id);
        match &mut self.slots[slot] {
            Some((i, c)) if i == id => Some(c),
            _ => None,
        }
    }

    pub fn contains_key(&self, id: &u32) -> bool {
        self.get(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn remove(&mut self, id: &u32) -> Option<Context> {
        let slot = self.slot(*id);
        match &self.slots[slot] {
            Some((i, _)) if i == id => {
                self.len -= 1;
                self.slots[slot].take().map(|(_, c)| c)
            }
            _ => None,
        }
    }

    /// Drops the context `id` where it lies (without moving it out first);
    /// whether there was one.
    pub fn delete(&mut self, id: &u32) -> bool {
        let slot = self.slot(*id);
        match &self.slots[slot] {
            Some((i, _)) if i == id => {
                self.len -= 1;
                self.slots[slot] = None;
                true
            }
            _ => false,
        }
    }

    /// Stores `context` under a fresh id, the first from `*next_id` on whose
    /// slot is free, and advances `*next_id` past it.
    pub fn insert_new(&mut self, next_id: &mut u32, context: Context) -> u32 {
        // At most half full: a free slot is a few ids away.
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        loop {
            let id = *next_id;
            *next_id = next_id.wrapping_add(1).max(1);
            if id == 0 {
                continue;
            }
            let slot = self.slot(id);
            if self.slots[slot].is_none() {
                self.slots[slot] = Some((id, context));
                self.len += 1;
                return id;
            }
        }
    }

    /// Doubles the table. Ids in distinct slots differ in their low bits, so
    /// they differ in one more low bit too: no two land in the same new slot.
    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, std::iter::repeat_with(|| None).take(size).collect());
        for (id, context) in old.into_iter().flatten() {
            let slot = self.slot(id);
            self.slots[slot] = Some((id, context));
        }
    }

    /// The live contexts' ids, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().flatten().map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hostcalls::state::RootContext;

    fn root() -> Context {
        Context::Root(RootContext {
            plugin: Arc::new(crate::plugin::PluginInfo::new("p", "", "", Vec::new())),
            tick_period: None,
            awaiting_done: false,
            properties: Default::default(),
        })
    }

    #[test]
    fn ids_are_unique_increasing_and_never_zero() {
        let mut c = Contexts::new();
        let mut next = 1;
        let first = c.insert_new(&mut next, root());
        assert_eq!(first, 1);
        // A long-lived context (a root) keeps its slot: the ids that would
        // land there are skipped, the others follow in order.
        let mut last = first;
        for _ in 0..100 {
            let id = c.insert_new(&mut next, root());
            assert!(id > last && id != 0 && (id as usize) % INITIAL_SLOTS != 1);
            assert!(c.contains_key(&id) && c.contains_key(&first));
            assert!(c.delete(&id) && !c.contains_key(&id));
            last = id;
        }
        assert_eq!(c.len(), 1);
        // Wrapping past u32::MAX skips 0.
        let mut next = u32::MAX;
        let mut c = Contexts::new();
        assert_eq!(c.insert_new(&mut next, root()), u32::MAX);
        assert_eq!(c.insert_new(&mut next, root()), 1);
    }

    #[test]
    fn grows_and_keeps_every_context() {
        let mut c = Contexts::new();
        let mut next = 1;
        let ids: Vec<u32> = (0..1000).map(|_| c.insert_new(&mut next, root())).collect();
        assert_eq!(c.len(), 1000);
        assert!(ids.iter().all(|id| c.get(id).is_some()));
        assert!(c.get(&5000).is_none() && c.remove(&5000).is_none());
        for id in ids.iter().step_by(2) {
            assert!(c.remove(id).is_some());
        }
        assert_eq!(c.len(), 500);
        assert!(ids.iter().skip(1).step_by(2).all(|id| c.contains_key(id)));
        let mut live: Vec<u32> = c.ids().collect();
        live.sort_unstable();
        assert_eq!(live, ids.iter().skip(1).step_by(2).copied().collect::<Vec<_>>());
    }
}
