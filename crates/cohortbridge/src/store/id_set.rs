//! A compact set of Braze ids in byte order: the bytes of every id in one buffer, and the end
//! offset of each id. A sync run keeps several sets of up to millions of ids (what Braze
//! acknowledged, the pending ids, the adds and the removes). Two allocations per set replace
//! one allocation per id, and the sorted order lets a run diff two sets by binary search.

use std::fmt;

use serde::ser::{Serialize, SerializeSeq, Serializer};

/// Ids in byte order (the order of `str`'s `Ord`), without duplicates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IdSet {
    bytes: String,
    /// End offset in `bytes` of each id; id `i` starts where id `i - 1` ends.
    ends: Vec<u32>,
}

impl IdSet {
    /// Builds a set from ids in any order. Ids that are already in order (as the store
    /// returns them) are copied once; others are sorted first. Duplicates are dropped.
    ///
    /// # Panics
    ///
    /// When the ids take more than 4 GiB in total.
    pub fn from_ids<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = IdSetBuilder::default();
        for id in ids {
            builder.push(id.as_ref());
        }
        builder.finish()
    }

    /// Reserves room for `ids` more ids of `bytes` bytes in total.
    pub(crate) fn reserve(&mut self, ids: usize, bytes: usize) {
        self.ends.reserve(ids);
        self.bytes.reserve(bytes);
    }

    fn push(&mut self, id: &str) {
        self.bytes.push_str(id);
        let end = u32::try_from(self.bytes.len()).expect("an id set is limited to 4 GiB of ids");
        self.ends.push(end);
    }

    /// Appends `id` when it sorts after every id of the set; returns `false`, leaving the set
    /// unchanged, otherwise.
    pub(crate) fn push_ordered(&mut self, id: &str) -> bool {
        if self.last().is_some_and(|last| last >= id) {
            return false;
        }
        self.push(id);
        true
    }

    fn last(&self) -> Option<&str> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Returns id `index`.
    ///
    /// # Panics
    ///
    /// When `index` is not below `len()`.
    pub fn get(&self, index: usize) -> &str {
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1] as usize,
        };
        &self.bytes[start..self.ends[index] as usize]
    }

    pub fn contains(&self, id: &str) -> bool {
        self.position(id).is_ok()
    }

    /// Returns the position of `id`, if the set contains it.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.position(id).ok()
    }

    /// Binary search: `Ok(index)` of `id`, or `Err(index)` where it would be inserted.
    fn position(&self, id: &str) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.get(middle).cmp(id) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(middle),
            }
        }
        Err(low)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Returns the ids at positions `range`, borrowed, for one request's body.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Vec<&str> {
        range.map(|i| self.get(i)).collect()
    }

    /// Returns the ids of `self` and `other`, merged.
    pub fn union(&self, other: &IdSet) -> IdSet {
        let mut merged = IdSet::default();
        let (mut a, mut b) = (self.iter().peekable(), other.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(x), Some(y)) if x > y => b.next(),
                (Some(_), Some(_)) => {
                    b.next();
                    a.next()
                }
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            if let Some(id) = next {
                merged.push(id);
            }
        }
        merged
    }
}

/// Builds an [`IdSet`] one id at a time, for ids read from a database row by row. Ids that
/// arrive in order are copied once; others are sorted in `finish`.
#[derive(Default)]
pub struct IdSetBuilder {
    set: IdSet,
    out_of_order: bool,
}

impl IdSetBuilder {
    /// Adds one id; a repeat of the previous id is dropped.
    pub fn push(&mut self, id: &str) {
        match self.set.last() {
            Some(last) if id == last => return,
            Some(last) if id < last => self.out_of_order = true,
            _ => {}
        }
        self.set.push(id);
    }

    pub fn finish(self) -> IdSet {
        if !self.out_of_order {
            return self.set;
        }
        let mut ids: Vec<&str> = self.set.iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut sorted = IdSet::default();
        for id in ids {
            sorted.push(id);
        }
        sorted
    }
}

impl fmt::Debug for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for IdSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for id in self.iter() {
            seq.serialize_element(id)?;
        }
        seq.end()
    }
}

impl<S: AsRef<str>> FromIterator<S> for IdSet {
    fn from_iter<I: IntoIterator<Item = S>>(ids: I) -> Self {
        IdSet::from_ids(ids)
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for IdSet {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for IdSet {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsorted_input_is_sorted_and_deduplicated() {
        let set = IdSet::from_ids(["b", "a", "c", "a", ""]);
        assert_eq!(set, ["", "a", "b", "c"]);
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn order_is_byte_order() {
        let set = IdSet::from_ids(["é", "Z", "a", " a"]);
        assert_eq!(set, [" a", "Z", "a", "é"]);
    }

    #[test]
    fn contains_finds_every_member_only() {
        let ids: Vec<String> = (0..1000).map(|i| format!("ext-{i}")).collect();
        let set = IdSet::from_ids(&ids);
        assert!(ids.iter().all(|id| set.contains(id)));
        assert!(!set.contains("ext-1000"));
        assert!(!set.contains(""));
        assert!(!IdSet::default().contains("x"));
    }

    #[test]
    fn union_merges_without_duplicates() {
        let a = IdSet::from_ids(["a", "c", "e"]);
        let b = IdSet::from_ids(["b", "c", "f"]);
        assert_eq!(a.union(&b), ["a", "b", "c", "e", "f"]);
        assert_eq!(a.union(&IdSet::default()), a);
    }

    #[test]
    fn slice_and_serialize() {
        let set = IdSet::from_ids(["x", "y", "z"]);
        assert_eq!(set.slice(1..3), ["y", "z"]);
        assert_eq!(serde_json::to_string(&set).unwrap(), r#"["x","y","z"]"#);
    }
}
