//! Distinct ids numbered in order of first sight, in a hash table of 16 bytes per slot, for
//! reading the rows of one evaluation.
//!
//! `Interner` stores ids of up to 22 bytes inside 32-byte slots so that a live cohort's
//! lookups read one cache line. An evaluation reads each profile's id once and then drops the
//! table, so there the table's size counts more: with a million ids it takes 32 MiB here
//! instead of 64 MiB. A slot stores ids of up to 8 bytes inline, and otherwise the offset of
//! the id's text in `IdTexts`, so a lookup of a longer id reads the slot and the text.

use std::hash::BuildHasher;

use super::interner::{EMPTY, MIN_SLOTS};

/// The maximum length in bytes of an id stored inside its slot.
const INLINE_LEN: usize = 8;
/// The `len` of a slot whose id is at least this long; its length is read from `IdTexts`.
const LONG_LEN: u16 = u16::MAX;

/// The texts of numbered ids, one after the other in one buffer.
#[derive(Debug, Default)]
pub(crate) struct IdTexts {
    bytes: String,
    /// End offset of each id's text in `bytes`. Id `n` starts at the end of id `n - 1`.
    ends: Vec<u64>,
}

impl IdTexts {
    /// Returns the text of id `number`.
    pub(crate) fn get(&self, number: u32) -> &str {
        let number = number as usize;
        let start = match number {
            0 => 0,
            _ => self.ends[number - 1] as usize,
        };
        &self.bytes[start..self.ends[number] as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Returns `len` bytes of text from byte `start` on.
    pub(crate) fn bytes(&self, start: u64, len: usize) -> &[u8] {
        let start = start as usize;
        &self.bytes.as_bytes()[start..start + len]
    }

    /// Reserves room for `additional` more ids.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.ends.reserve(additional);
    }

    /// Appends `id` and returns where its text starts.
    pub(crate) fn push(&mut self, id: &str) -> u64 {
        let start = self.bytes.len() as u64;
        self.bytes.push_str(id);
        self.ends.push(self.bytes.len() as u64);
        start
    }
}

/// One table entry.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The id's number, or `EMPTY`.
    number: u32,
    /// The high 16 bits of the id's hash, compared before the id itself.
    tag: u16,
    /// The id's length in bytes, or `LONG_LEN` for longer ids.
    len: u16,
    /// The id's bytes, zero-padded, when it is at most `INLINE_LEN` bytes long; otherwise
    /// where its text starts in `IdTexts`.
    key: u64,
}

const EMPTY_SLOT: Slot = Slot {
    number: EMPTY,
    tag: 0,
    len: 0,
    key: 0,
};

/// Distinct ids numbered in order of first sight, hashed with foldhash and a random seed per
/// process like `Interner`.
#[derive(Debug, Default)]
pub(crate) struct CompactInterner {
    /// A power of two long, or empty, and at most three quarters full.
    slots: Vec<Slot>,
    ids: IdTexts,
    hasher: foldhash::fast::RandomState,
}

impl CompactInterner {
    /// Reserves room for `additional` more ids, growing the table now instead of doubling it
    /// step by step as they arrive.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let required = self.ids.len().saturating_add(additional);
        self.ids.reserve(additional);
        if required.saturating_mul(4) > self.slots.len().saturating_mul(3) {
            let size = required
                .saturating_mul(4)
                .div_ceil(3)
                .checked_next_power_of_two()
                .expect("a table of fewer than 2^63 slots")
                .max(MIN_SLOTS);
            self.resize(size);
        }
    }

    /// Returns the number of `id`, numbering it if it is new.
    pub(crate) fn intern(&mut self, id: &str) -> u32 {
        let hash = self.hasher.hash_one(id);
        if let Some(number) = self.get_hashed(id, hash) {
            return number;
        }
        if (self.ids.len() + 1) * 4 > self.slots.len() * 3 {
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
        let number = u32::try_from(self.ids.len())
            .ok()
            .filter(|&n| n != EMPTY)
            .expect("fewer than 2^32 - 1 distinct ids");
        let start = self.ids.push(id);
        let key = if id.len() <= INLINE_LEN {
            inline_key(id)
        } else {
            start
        };
        let position = self.free_position(hash);
        self.slots[position] = Slot {
            number,
            tag: tag(hash),
            len: len_field(id),
            key,
        };
        number
    }

    /// Returns the number of `id`, if it has one.
    #[cfg(test)]
    pub(crate) fn get(&self, id: &str) -> Option<u32> {
        self.get_hashed(id, self.hasher.hash_one(id))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Drops the table and returns the texts of the ids, by number.
    pub(crate) fn into_texts(self) -> IdTexts {
        self.ids
    }

    fn get_hashed(&self, id: &str, hash: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let tag = tag(hash);
        let len = len_field(id);
        let mut position = hash as usize & mask;
        loop {
            let slot = &self.slots[position];
            if slot.number == EMPTY {
                return None;
            }
            if slot.tag == tag && slot.len == len && self.key_matches(slot, id) {
                return Some(slot.number);
            }
            position = (position + 1) & mask;
        }
    }

    /// Compares `id` with the id of `slot`, whose tag and length field already match.
    fn key_matches(&self, slot: &Slot, id: &str) -> bool {
        if id.len() <= INLINE_LEN {
            slot.key == inline_key(id)
        } else if slot.len == LONG_LEN {
            self.ids.get(slot.number) == id
        } else {
            self.ids.bytes(slot.key, id.len()) == id.as_bytes()
        }
    }

    /// Returns the first empty slot on the probe path of `hash`.
    fn free_position(&self, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut position = hash as usize & mask;
        while self.slots[position].number != EMPTY {
            position = (position + 1) & mask;
        }
        position
    }

    /// Replaces the table with one of `size` slots, a power of two, and places every id again.
    fn resize(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; size]);
        for slot in old {
            if slot.number == EMPTY {
                continue;
            }
            let hash = self.hasher.hash_one(self.ids.get(slot.number));
            let position = self.free_position(hash);
            self.slots[position] = slot;
        }
    }
}

fn tag(hash: u64) -> u16 {
    (hash >> 48) as u16
}

fn len_field(id: &str) -> u16 {
    u16::try_from(id.len()).unwrap_or(LONG_LEN)
}

/// Packs an id of at most `INLINE_LEN` bytes into a word, zero-padded. Ids of different
/// lengths can pack alike, which is why slots compare the length too.
fn inline_key(id: &str) -> u64 {
    let mut bytes = [0u8; INLINE_LEN];
    bytes[..id.len()].copy_from_slice(id.as_bytes());
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn slot_takes_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn compact_interner_tells_similar_ids_apart() {
        let long = "x".repeat(usize::from(LONG_LEN) + 3);
        let ids = [
            "",
            "a",
            "a\0",
            "\0",
            "12345678",
            "123456789",
            "12345678\0",
            "ü-ñ",
            "$device:0f9d2c1e-5b7a-4c3e-9a1d-6e8f7b2c4d5a",
            "$device:0f9d2c1e-5b7a-4c3e-9a1d-6e8f7b2c4d5b",
            &long[..usize::from(LONG_LEN) - 1],
            &long[..usize::from(LONG_LEN)],
            &long[..usize::from(LONG_LEN) + 1],
            &long,
        ];
        let mut table = CompactInterner::default();
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(table.intern(id), n as u32, "id {n}");
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(table.get(id), Some(n as u32), "id {n}");
            assert_eq!(table.intern(id), n as u32, "id {n}");
        }
        assert_eq!(table.get("b"), None);
        assert_eq!(table.get("1234567"), None);
        assert_eq!(table.get(&long[..usize::from(LONG_LEN) + 2]), None);
        let texts = table.into_texts();
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(texts.get(n as u32), *id);
        }
    }

    #[test]
    fn compact_interner_reserve_keeps_size() {
        let mut table = CompactInterner::default();
        table.reserve(3000);
        let slots = table.slots.len();
        assert!(slots * 3 >= 3000 * 4);
        for n in 0..3000u32 {
            assert_eq!(table.intern(&format!("user-{n}")), n);
        }
        assert_eq!(table.slots.len(), slots, "reserved table grew");
        assert_eq!(table.len(), 3000);
    }

    proptest! {
        #[test]
        fn compact_interner_numbers_like_a_map(
            ids in prop::collection::vec(
                prop_oneof!["[ab]{0,10}", ".{0,30}", "\\$device:[0-9a-f]{0,40}"],
                0..300,
            )
        ) {
            let mut table = CompactInterner::default();
            let mut expected = std::collections::HashMap::new();
            for id in &ids {
                let next = expected.len() as u32;
                let number = *expected.entry(id.clone()).or_insert(next);
                prop_assert_eq!(table.intern(id), number);
            }
            prop_assert_eq!(table.len(), expected.len());
            for (id, number) in &expected {
                prop_assert_eq!(table.get(id), Some(*number));
            }
            let texts = table.into_texts();
            for (id, number) in &expected {
                prop_assert_eq!(texts.get(*number), id.as_str());
            }
        }
    }
}
