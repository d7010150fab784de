//! A fixed table of recent values, for what the data plane reads on every request: a value
//! is kept in the slot its hash falls in, the latest to need a slot replacing the one
//! before. The slot count bounds the memory kept, and a lookup is one index and one
//! uncontended lock, where a cache with an eviction policy costs a clock read and a
//! bookkeeping message per lookup.

use std::sync::{Arc, Mutex, PoisonError};

/// A power-of-two number of slots, each holding at most one shared value.
pub struct Slots<T> {
    slots: Box<[Mutex<Option<Arc<T>>>]>,
}

impl<T> Slots<T> {
    /// `count` empty slots, rounded up to a power of two.
    pub fn new(count: usize) -> Self {
        Slots {
            slots: (0..count.next_power_of_two())
                .map(|_| Mutex::new(None))
                .collect(),
        }
    }

    /// The value in `hash`'s slot, if `sought` says it is the one looked for.
    pub fn get(&self, hash: u64, sought: impl FnOnce(&T) -> bool) -> Option<Arc<T>> {
        let kept = self
            .slot(hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        kept.filter(|value| sought(value))
    }

    /// Keeps `value` in `hash`'s slot, in place of what it held.
    pub fn put(&self, hash: u64, value: Arc<T>) {
        let mut slot = self
            .slot(hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let replaced = slot.replace(value);
        drop(slot);
        drop(replaced);
    }

    /// Empties every slot.
    pub fn clear(&self) {
        for slot in &self.slots {
            let emptied = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            drop(emptied);
        }
    }

    fn slot(&self, hash: u64) -> &Mutex<Option<Arc<T>>> {
        &self.slots[hash as usize & (self.slots.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_answers_only_for_the_value_sought_and_keeps_the_latest() {
        let slots = Slots::new(3);
        assert_eq!(slots.slots.len(), 4, "rounded up to a power of two");
        slots.put(1, Arc::new("a"));
        assert_eq!(slots.get(1, |v| *v == "a").as_deref(), Some(&"a"));
        assert_eq!(
            slots.get(1, |v| *v == "b"),
            None,
            "another value is not found"
        );
        assert_eq!(slots.get(2, |_| true), None, "other slots are empty");
        // 5 falls in the slot of 1: the later value replaces the earlier.
        slots.put(5, Arc::new("b"));
        assert_eq!(slots.get(1, |v| *v == "a"), None);
        assert_eq!(slots.get(5, |v| *v == "b").as_deref(), Some(&"b"));
        slots.clear();
        assert_eq!(slots.get(5, |_| true), None);
    }
}
