//! Distinct ids numbered in order of first sight, in a hash table laid out for lookups that
//! miss the CPU caches.
//!
//! With a million ids the table is far larger than the caches, so a lookup costs main-memory
//! reads. The table is open addressing with linear probing, and each slot stores the id's
//! number, bits of its hash and the id itself when it is at most `INLINE_LEN` bytes long. A
//! lookup of a short id then reads one slot and nothing else. Callers with many ids at hand
//! hash them first and call `prefetch` a few ids ahead, so that the reads of several lookups
//! overlap instead of following one another.

use std::hash::BuildHasher;
use std::sync::Arc;

/// The maximum length in bytes of an id stored inside its slot. Longer ids are compared
/// through a shared pointer.
const INLINE_LEN: usize = 22;
/// The `number` of an empty slot.
pub(crate) const EMPTY: u32 = u32::MAX;
/// The smallest table allocated.
pub(crate) const MIN_SLOTS: usize = 16;

/// An id as a slot stores it.
#[derive(Debug, Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_LEN] },
    Shared(Arc<str>),
}

impl Key {
    fn new(id: &str, text: &Arc<str>) -> Self {
        if id.len() <= INLINE_LEN {
            let mut bytes = [0; INLINE_LEN];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            Key::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            Key::Shared(text.clone())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Shared(text) => text.as_bytes(),
        }
    }
}

/// One table entry, 32 bytes, so that two share a cache line.
#[derive(Debug, Clone)]
struct Slot {
    /// The id's number, or `EMPTY`.
    number: u32,
    /// The high 32 bits of the id's hash, compared before the id itself.
    tag: u32,
    key: Key,
}

const EMPTY_SLOT: Slot = Slot {
    number: EMPTY,
    tag: 0,
    key: Key::Inline {
        len: 0,
        bytes: [0; INLINE_LEN],
    },
};

/// Distinct ids numbered in order of first sight. The table hashes with foldhash, which is
/// faster than the standard SipHash on short ids and, like it, takes a random seed per
/// process, so clients cannot choose ids that collide on purpose.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// A power of two long, or empty, and at most three quarters full.
    slots: Vec<Slot>,
    ids: Vec<Arc<str>>,
    hasher: foldhash::fast::RandomState,
}

impl Interner {
    /// Returns the hash that `get_hashed`, `intern_hashed` and `prefetch` take.
    pub(crate) fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Prefetches the slot where the lookup of the id with `hash` starts.
    pub(crate) fn prefetch(&self, hash: u64) {
        if self.slots.is_empty() {
            return;
        }
        let slot = &self.slots[self.home(hash)];
        prefetch_read(slot);
    }

    /// Prefetches the text of the long id that the lookup of `hash` compares first.
    /// Call it after `prefetch` for the same hash has had time to complete.
    pub(crate) fn prefetch_text(&self, hash: u64) {
        if self.slots.is_empty() {
            return;
        }
        let slot = &self.slots[self.home(hash)];
        if let Key::Shared(text) = &slot.key {
            if slot.tag == tag(hash) {
                prefetch_read(text.as_bytes());
            }
        }
    }

    /// Returns the number of `id`, numbering it if it is new.
    #[cfg(test)]
    pub(crate) fn intern(&mut self, id: &str) -> u32 {
        self.intern_hashed(id, self.hash(id))
    }

    /// Returns the number of `id`, whose hash is `hash`, numbering it if it is new.
    pub(crate) fn intern_hashed(&mut self, id: &str, hash: u64) -> u32 {
        if let Some(number) = self.get_hashed(id, hash) {
            return number;
        }
        if (self.ids.len() + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let number = u32::try_from(self.ids.len())
            .ok()
            .filter(|&n| n != EMPTY)
            .expect("fewer than 2^32 - 1 distinct ids");
        let text: Arc<str> = Arc::from(id);
        let key = Key::new(id, &text);
        self.ids.push(text);
        let position = self.free_position(hash);
        self.slots[position] = Slot {
            number,
            tag: tag(hash),
            key,
        };
        number
    }

    /// Returns the number of `id`, whose hash is `hash`, if it has one.
    pub(crate) fn get_hashed(&self, id: &str, hash: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let tag = tag(hash);
        let mut position = self.home(hash);
        loop {
            let slot = &self.slots[position];
            if slot.number == EMPTY {
                return None;
            }
            if slot.tag == tag && slot.key.as_bytes() == id.as_bytes() {
                return Some(slot.number);
            }
            position = (position + 1) & mask;
        }
    }

    pub(crate) fn text(&self, number: u32) -> &str {
        &self.ids[number as usize]
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    /// Returns the first empty slot on the probe path of `hash`.
    fn free_position(&self, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut position = self.home(hash);
        while self.slots[position].number != EMPTY {
            position = (position + 1) & mask;
        }
        position
    }

    /// Doubles the table and places every id again.
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; size]);
        for slot in old {
            if slot.number == EMPTY {
                continue;
            }
            let hash = self.hasher.hash_one(self.text(slot.number));
            let position = self.free_position(hash);
            self.slots[position] = slot;
        }
    }
}

fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// Prefetches the cache line at the start of `value` into the CPU caches. Elsewhere than on
/// x86-64 it does nothing.
pub(crate) fn prefetch_read<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and changes no memory, and `value` is a
    // live reference, so the address is valid.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(ids: &Interner, id: &str) -> Option<u32> {
        ids.get_hashed(id, ids.hash(id))
    }

    #[test]
    fn interner_numbers_in_order_of_first_sight() {
        let mut ids = Interner::default();
        assert_eq!(ids.intern("b"), 0);
        assert_eq!(ids.intern("a"), 1);
        assert_eq!(ids.intern("b"), 0);
        assert_eq!(ids.len(), 2);
        assert_eq!(ids.text(1), "a");
    }

    #[test]
    fn interner_finds_short_long_and_empty_ids() {
        let long = "$device:0f9d2c1e-5b7a-4c3e-9a1d-6e8f7b2c4d5a";
        let mut ids = Interner::default();
        assert_eq!(lookup(&ids, "u1"), None);
        let short = ids.intern("u1");
        let exactly_inline = ids.intern(&"x".repeat(INLINE_LEN));
        let one_longer = ids.intern(&"x".repeat(INLINE_LEN + 1));
        let long_number = ids.intern(long);
        let empty = ids.intern("");
        assert_eq!(lookup(&ids, "u1"), Some(short));
        assert_eq!(lookup(&ids, &"x".repeat(INLINE_LEN)), Some(exactly_inline));
        assert_eq!(lookup(&ids, &"x".repeat(INLINE_LEN + 1)), Some(one_longer));
        assert_eq!(lookup(&ids, long), Some(long_number));
        assert_eq!(lookup(&ids, ""), Some(empty));
        assert_eq!(lookup(&ids, "u2"), None);
        assert_eq!(lookup(&ids, &long[..long.len() - 1]), None);
        assert_eq!(ids.text(long_number), long);
    }

    #[test]
    fn interner_keeps_numbers_across_growth() {
        let mut ids = Interner::default();
        for n in 0..10_000u32 {
            let id = if n % 3 == 0 {
                format!("$device:{n:040}")
            } else {
                format!("u{n}")
            };
            assert_eq!(ids.intern(&id), n);
        }
        for n in 0..10_000u32 {
            let id = if n % 3 == 0 {
                format!("$device:{n:040}")
            } else {
                format!("u{n}")
            };
            let hash = ids.hash(&id);
            ids.prefetch(hash);
            ids.prefetch_text(hash);
            assert_eq!(ids.get_hashed(&id, hash), Some(n), "id {id}");
            assert_eq!(ids.text(n), id);
        }
        assert_eq!(lookup(&ids, "u10000"), None);
        assert!(ids.slots.len() * 3 >= ids.len() * 4);
    }

    #[test]
    fn interner_keeps_long_and_non_ascii_ids() {
        let id_of = |n: u32| match n % 3 {
            0 => format!("u{n}"),
            1 => format!("$device:{n:040}"),
            _ => format!("ü-é-{n}-ñ-Ω-長いユーザー"),
        };
        let mut ids = Interner::default();
        for n in 0..1000u32 {
            assert_eq!(ids.intern(&id_of(n)), n);
        }
        for n in 0..1000u32 {
            assert_eq!(lookup(&ids, &id_of(n)), Some(n));
            assert_eq!(ids.text(n), id_of(n));
        }
        assert_eq!(lookup(&ids, "ü-é-2-ñ-Ω-長いユーザ"), None);
    }

    #[test]
    fn slot_fills_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }
}
